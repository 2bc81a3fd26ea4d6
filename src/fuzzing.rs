//! Properties of every byte-level entry point, for the `cargo fuzz` targets in `fuzz/` and for
//! `tests/fuzz_corpus.rs`, which replays the committed corpora and crash regressions under `cargo test`.
//!
//! Each `pub fn` takes raw bytes, runs one parser the way the gateway does, and panics only when a property
//! is violated (the fuzzers report a panic as a crash). The properties, beyond "does not panic":
//! - parse → serialize → parse is stable where the format allows it (OCPP `call` / `call_result` /
//!   `call_error`, Shenxing envelopes with JSON bodies, TM20 replies, TM20 command params, OCPP action
//!   payloads, OCPP charge-point payloads);
//! - whatever we answer a peer with (error replies, acks) is itself well-formed and of bounded size;
//! - peak heap use while parsing stays under [`alloc_bound`] of the input size, when the binary runs on
//!   [`CountingAlloc`] (the fuzz targets and the corpus test do).
//!
//! Multi-part inputs (a command name and its params, an OCPP action and its payload) are one line for the
//! name, then the JSON body, as the committed seeds show.
//!
//! Floats are compared with a few ULPs of slack in round trips: the production build of `serde_json` does
//! not enable `float_roundtrip`, so text → `f64` may be off by one ULP on inputs with 17+ significant
//! digits. That is a documented serde_json trade-off, not something these parsers can fix.
#![allow(clippy::panic)] // panicking on a violated property is what a fuzz target is for

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{NaiveDate, NaiveDateTime};
use serde_json::Value;

use crate::devices::ocpp::{actions, framing, messages};
use crate::devices::sxdm::envelope;
use crate::devices::tm20::{commands, protocol};
use crate::events;

// ---------------------------------------------------------------------------------------------------------------
// Allocation accounting
// ---------------------------------------------------------------------------------------------------------------

/// Peak live heap bytes a parser may reach, per input byte. serde_json's `Value` costs up to 32 bytes per
/// 2-byte array element (`0,`), and a growing `Vec` briefly holds its old and new buffers (×3 at worst),
/// hence 48×; the rest is headroom for the parser's own bookkeeping.
pub const ALLOC_FACTOR: usize = 64;
/// Fixed allowance on top of [`ALLOC_FACTOR`] (error strings, small maps, chrono/format buffers).
pub const ALLOC_SLACK: usize = 64 * 1024;

/// The allocation bound for an input of `len` bytes.
pub fn alloc_bound(len: usize) -> usize {
    len.saturating_mul(ALLOC_FACTOR).saturating_add(ALLOC_SLACK)
}

/// Longest error text sent back to a peer for any input: errors quote at most a short excerpt.
pub const MAX_ERROR_TEXT: usize = 2048;

static COUNTING: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Const-initialised `Cell`s: no lazy init and no destructor, so they are safe to touch from inside the
    // allocator. Per thread, so parallel tests do not see each other's allocations.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn record(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().wrapping_add(delta);
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

/// A pass-through to the system allocator that tracks live and peak bytes per thread. Install it with
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc;` to turn on the allocation property.
pub struct CountingAlloc;

fn size_delta(size: usize) -> isize {
    isize::try_from(size).unwrap_or(isize::MAX)
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        COUNTING.store(true, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            record(size_delta(layout.size()));
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        COUNTING.store(true, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            record(size_delta(layout.size()));
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) };
        record(-size_delta(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is the caller's responsibility.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Counted as if old and new buffers coexist for a moment, as they do when realloc moves.
            record(size_delta(new_size));
            record(-size_delta(layout.size()));
        }
        new
    }
}

/// Runs `parse` and, when [`CountingAlloc`] is the global allocator, asserts that its peak heap use
/// (including what it returns) stays within [`alloc_bound`] of `input_len`.
fn bounded<T>(what: &str, input_len: usize, parse: impl FnOnce() -> T) -> T {
    if !COUNTING.load(Ordering::Relaxed) {
        return parse();
    }
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let out = parse();
    let peak = PEAK.with(Cell::get).saturating_sub(start);
    let peak = usize::try_from(peak).unwrap_or(0);
    assert!(
        peak <= alloc_bound(input_len),
        "{what}: {peak} bytes at peak for a {input_len}-byte input (bound {ALLOC_FACTOR}x + {ALLOC_SLACK})"
    );
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

/// WebSocket text frames and REST bodies are UTF-8; the transports reject anything else before a parser
/// sees it. Invalid bytes are replaced rather than skipped so that every input still exercises the parser.
fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// `name\nbody`: the first line and the rest.
fn split_name(data: &[u8]) -> (String, &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (text(&data[..i]).into_owned(), &data[i + 1..]),
        None => (text(data).into_owned(), &[]),
    }
}

/// JSON equality with a few ULPs of slack on floats (see the module docs).
pub fn json_close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    let scale = x.abs().max(y.abs()).max(f64::MIN_POSITIVE);
                    (x - y).abs() <= scale * 4.0 * f64::EPSILON
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w)))
        }
        _ => a == b,
    }
}

fn assert_json_close(what: &str, a: &Value, b: &Value) {
    assert!(json_close(a, b), "{what}: {a} became {b}");
}

fn assert_error_text(what: &str, message: &str) {
    assert!(
        message.len() <= MAX_ERROR_TEXT,
        "{what}: {}-byte error text: {}…",
        message.len(),
        message.chars().take(200).collect::<String>()
    );
}

fn assert_json_text(what: &str, text: &str) {
    if let Err(e) = serde_json::from_str::<Value>(text) {
        panic!("{what}: not JSON ({e}): {text}");
    }
}

/// The server clock given to `parse_command` (settime's default); fixed so runs are reproducible.
fn fixed_now() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 22)
        .and_then(|d| d.and_hms_opt(12, 0, 0))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------------------------
// TM20
// ---------------------------------------------------------------------------------------------------------------

/// One terminal → server frame through `repair_json` and `parse_frame`.
///
/// Properties: the repair only removes commas and never touches valid JSON; a `Reply` re-parses from its
/// serialized body to the same reply; a `reg` SN obeys its documented form; a `sendlog` accounts for every
/// record; the answer the session would send (ack, `result:false`) is JSON; error text is bounded; peak
/// allocation is bounded.
pub fn tm20_frame(data: &[u8]) {
    let text = text(data);
    let text = text.as_ref();

    let repaired = bounded("tm20 repair_json", text.len(), || {
        protocol::repair_json(text)
    });
    assert!(repaired.len() <= text.len(), "repair_json grew the frame");
    let removed = text.len() - repaired.len();
    assert_eq!(
        text.bytes().filter(|&b| b != b',').count(),
        repaired.bytes().filter(|&b| b != b',').count(),
        "repair_json changed something other than commas"
    );
    assert!(
        text.bytes()
            .filter(|&b| b != b',')
            .eq(repaired.bytes().filter(|&b| b != b',')),
        "repair_json reordered bytes"
    );
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        assert_eq!(removed, 0, "repair_json altered valid JSON");
    }

    let parsed = bounded("tm20 parse_frame", text.len(), || {
        protocol::parse_frame(text)
    });
    let cloudtime = fixed_now();
    match parsed {
        Err(e) => {
            assert_error_text("tm20 frame error", &e.to_string());
            if let Some(cmd) = e.cmd() {
                assert_json_text("result_false", &protocol::result_false(cmd, e.to_string()));
            }
        }
        Ok(protocol::Inbound::Reply { ret, body }) => {
            assert!(!ret.is_empty(), "reply with an empty ret");
            let again = protocol::parse_frame(&body.to_string());
            match again {
                Ok(protocol::Inbound::Reply {
                    ret: ret2,
                    body: body2,
                }) => {
                    assert_eq!(ret, ret2, "reply ret changed on re-parse");
                    assert_json_close("reply body re-parse", &body, &body2);
                }
                other => panic!("reply {body} re-parsed as {other:?}"),
            }
        }
        Ok(protocol::Inbound::Reg(reg)) => {
            assert!(
                !reg.sn.is_empty()
                    && reg.sn.len() <= protocol::MAX_SN_LEN
                    && reg.sn.bytes().all(|b| b.is_ascii_graphic()),
                "reg accepted sn {:?}",
                reg.sn
            );
            let _ = (reg.model(), reg.firmware());
            assert_json_text("reg_accepted", &protocol::reg_accepted(cloudtime));
        }
        Ok(protocol::Inbound::SendLog(log)) => {
            for (i, r) in log.rejected.iter().enumerate() {
                assert!(
                    log.rejected.get(i + 1).is_none_or(|n| n.index > r.index),
                    "rejected indexes out of order"
                );
            }
            assert!(log.records.iter().all(|r| r.enrollid >= 0));
            assert_json_text("sendlog ack", &log.ack(cloudtime));
        }
        Ok(other) => {
            assert!(!other.name().is_empty());
            assert_json_text("result_true", &protocol::result_true(other.name()));
        }
    }
}

/// `name\nparams` through `parse_command`, as `POST /terminals/{sn}/commands` does (empty params = absent).
///
/// Properties: an accepted command re-validates from its own `params_json()` under its canonical name,
/// giving the same command and the same `params_json()`; its wire frame names it; errors are bounded;
/// peak allocation is bounded (JSON decoding of the body included).
pub fn tm20_command(data: &[u8]) {
    let (name, body) = split_name(data);
    let now = fixed_now();
    let parsed = bounded("tm20 parse_command", data.len(), || {
        let params = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice::<Value>(body).ok()?
        };
        Some(commands::parse_command(&name, &params, now))
    });
    let Some(parsed) = parsed else { return };
    let validated = match parsed {
        Ok(v) => v,
        Err(e) => {
            // REST errors may quote the caller's own input (an unknown command name), so their bound is
            // relative to the body, which actix already caps; they must not amplify it.
            // Measured against the decoded name: the lossy UTF-8 decoding above turns each invalid byte
            // into a 3-byte U+FFFD, which the REST layer (UTF-8 JSON) would never pass on.
            let message = e.to_string();
            let decoded_len = name.len() + body.len();
            assert!(
                message.len() <= MAX_ERROR_TEXT + 2 * decoded_len,
                "tm20 command: {}-byte error for a {decoded_len}-byte input",
                message.len()
            );
            return;
        }
    };
    let command = &validated.command;
    let params = command.params_json();
    let canonical = command.name();
    assert!(commands::COMMAND_NAMES.contains(&canonical));
    match commands::parse_command(canonical, &params, now) {
        Ok(again) => {
            assert_eq!(
                &again.command, command,
                "{canonical} {params}: command changed"
            );
            assert!(again.ignored.is_empty(), "normalized params still ignored");
            assert_json_close("tm20 params_json", &params, &again.command.params_json());
        }
        Err(e) => panic!("{canonical} {params}: normalized params rejected: {e}"),
    }
    let frame = command.to_frame();
    assert_eq!(
        frame.get("cmd").and_then(Value::as_str),
        Some(canonical),
        "frame names another command"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// OCPP
// ---------------------------------------------------------------------------------------------------------------

/// A decoded charge-point request as its payload again (timestamps in our millisecond form).
fn cp_payload(request: &messages::CpRequest) -> Value {
    use messages::{to_payload, CpRequest as R};
    match request {
        R::Authorize(x) => to_payload(x),
        R::BootNotification(x) => to_payload(x),
        R::DataTransfer(x) => to_payload(x),
        R::DiagnosticsStatusNotification(x) => to_payload(x),
        R::FirmwareStatusNotification(x) => to_payload(x),
        R::Heartbeat => Value::Object(serde_json::Map::new()),
        R::MeterValues(x) => to_payload(x),
        R::StartTransaction(x) => to_payload(x),
        R::StatusNotification(x) => to_payload(x),
        R::StopTransaction(x) => to_payload(x),
        R::SecurityEventNotification(x) => to_payload(x),
        R::SignCertificate(x) => to_payload(x),
        R::SignedFirmwareStatusNotification(x) => to_payload(x),
        R::LogStatusNotification(x) => to_payload(x),
    }
}

/// Decodes one CALL payload in both modes and checks the decoding properties.
fn check_cp_request(action: &str, payload: &Value, input_len: usize) {
    let strict = bounded("ocpp parse_cp_request strict", input_len, || {
        messages::parse_cp_request_with_notes(action, payload, true)
    });
    let lenient = bounded("ocpp parse_cp_request lenient", input_len, || {
        messages::parse_cp_request_with_notes(action, payload, false)
    });
    for (mode, result) in [("strict", &strict), ("lenient", &lenient)] {
        let is_strict = mode == "strict";
        match result {
            Err((_, description)) => {
                assert!(
                    description.len() <= MAX_ERROR_TEXT.max(input_len.saturating_mul(6)),
                    "{action} {mode}: {}-byte description for a {input_len}-byte input",
                    description.len()
                );
            }
            Ok((request, notes)) => {
                assert_eq!(request.action(), action);
                if is_strict {
                    assert!(
                        notes.is_empty(),
                        "strict mode overlooked something: {notes:?}"
                    );
                }
                // Stable after one serialization (timestamps lose sub-millisecond digits once).
                let once = cp_payload(request);
                match messages::parse_cp_request(action, once.clone(), is_strict) {
                    Ok(again) => assert_json_close(
                        &format!("{action} {mode} payload round trip"),
                        &once,
                        &cp_payload(&again),
                    ),
                    Err((code, d)) => {
                        panic!("{action} {mode}: our own payload {once} refused: {code:?} {d}")
                    }
                }
            }
        }
    }
    // Lenient mode accepts a superset of strict mode and reads it the same way.
    if let Ok((strict_request, _)) = &strict {
        match &lenient {
            Ok((lenient_request, _)) => assert_json_close(
                &format!("{action} strict vs lenient"),
                &cp_payload(strict_request),
                &cp_payload(lenient_request),
            ),
            Err((code, d)) => panic!("{action}: strict accepts, lenient refuses: {code:?} {d}"),
        }
    }
}

/// One OCPP-J text frame through `parse_frame`; a CALL's payload is then decoded as the session would.
///
/// Properties: `call` / `call_result` / `call_error` of a parsed frame parse back to the same frame; the
/// CALLERROR we answer a bad frame with is itself a valid frame with an id of at most 36 characters; error
/// text is bounded; peak allocation is bounded.
pub fn ocpp_frame(data: &[u8]) {
    let text = text(data);
    let text = text.as_ref();
    let parsed = bounded("ocpp parse_frame", text.len(), || {
        framing::parse_frame(text)
    });
    match parsed {
        Err(e) => {
            assert_error_text("ocpp frame error", &e.description);
            assert!(e.reply_id().chars().count() <= framing::MAX_MESSAGE_ID_CHARS);
            let answer = framing::call_error(e.reply_id(), e.code, &e.description, &Value::Null);
            match framing::parse_frame(&answer) {
                Ok(framing::Frame::CallError { id, code, .. }) => {
                    assert_eq!(id, e.reply_id());
                    assert_eq!(code, e.code.as_str());
                }
                other => panic!("our CALLERROR {answer} parsed as {other:?}"),
            }
        }
        Ok(frame) => {
            let rendered = match &frame {
                framing::Frame::Call {
                    id,
                    action,
                    payload,
                } => {
                    check_cp_request(action, payload, text.len());
                    framing::call(id, action, payload)
                }
                framing::Frame::CallResult { id, payload } => framing::call_result(id, payload),
                framing::Frame::CallError {
                    id,
                    code,
                    description,
                    details,
                } => match (framing::ErrorCode::parse(code), details) {
                    (Some(code), Value::Object(_)) => {
                        framing::call_error(id, code, description, details)
                    }
                    // Non-standard codes and non-object details are kept as received but cannot be re-sent.
                    _ => return,
                },
            };
            match framing::parse_frame(&rendered) {
                Ok(again) => assert!(
                    frames_close(&frame, &again),
                    "frame {frame:?} re-parsed as {again:?}"
                ),
                Err(e) => panic!("rendered frame {rendered} refused: {e}"),
            }
        }
    }
}

fn frames_close(a: &framing::Frame, b: &framing::Frame) -> bool {
    use framing::Frame as F;
    match (a, b) {
        (
            F::Call {
                id,
                action,
                payload,
            },
            F::Call {
                id: id2,
                action: action2,
                payload: payload2,
            },
        ) => id == id2 && action == action2 && json_close(payload, payload2),
        (
            F::CallResult { id, payload },
            F::CallResult {
                id: id2,
                payload: p2,
            },
        ) => id == id2 && json_close(payload, p2),
        (
            F::CallError {
                id,
                code,
                description,
                details,
            },
            F::CallError {
                id: id2,
                code: code2,
                description: d2,
                details: details2,
            },
        ) => id == id2 && code == code2 && description == d2 && json_close(details, details2),
        _ => false,
    }
}

/// `Action\npayload`: one charge-point CALL payload, decoded strictly and leniently.
///
/// Properties: strict-accepted payloads are accepted leniently with the same meaning; an accepted payload
/// serializes to one that the same mode accepts with the same meaning; strict mode reports no leniency
/// notes; error descriptions stay within a small multiple of the input; peak allocation is bounded.
pub fn ocpp_message(data: &[u8]) {
    let (action, body) = split_name(data);
    let Some(payload) = bounded("ocpp payload JSON", data.len(), || {
        serde_json::from_slice::<Value>(body).ok()
    }) else {
        return;
    };
    check_cp_request(&action, &payload, data.len());
}

/// `name\nparams` through `parse_action`, as `POST /chargers/{id}/actions` does (empty params = absent).
///
/// Properties: an accepted action re-validates from its own `payload()` under its OCPP name, with the same
/// payload; the CALL built from it parses back; errors are bounded; peak allocation is bounded.
pub fn ocpp_action(data: &[u8]) {
    let (name, body) = split_name(data);
    let parsed = bounded("ocpp parse_action", data.len(), || {
        let params = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice::<Value>(body).ok()?
        };
        Some(actions::parse_action(&name, &params))
    });
    let action = match parsed {
        None => return,
        Some(Err(e)) => {
            let message = e.to_string();
            assert!(
                message.len() <= MAX_ERROR_TEXT.max(data.len().saturating_mul(6)),
                "parse_action: {}-byte error for a {}-byte input",
                message.len(),
                data.len()
            );
            return;
        }
        Some(Ok(action)) => action,
    };
    let payload = action.payload();
    assert!(payload.is_object(), "payload is not an object: {payload}");
    match actions::parse_action(action.action(), &payload) {
        Ok(again) => assert_json_close(
            &format!("{} payload round trip", action.action()),
            &payload,
            &again.payload(),
        ),
        Err(e) => panic!(
            "{} {payload}: our own payload refused: {e}",
            action.action()
        ),
    }
    let call = framing::call("fuzz-1", action.action(), &payload);
    match framing::parse_frame(&call) {
        Ok(framing::Frame::Call {
            action: name,
            payload: p,
            ..
        }) => {
            assert_eq!(name, action.action());
            assert_json_close("CALL payload", &payload, &p);
        }
        other => panic!("CALL {call} parsed as {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Shenxing
// ---------------------------------------------------------------------------------------------------------------

/// One Shenxing frame through `envelope::parse`.
///
/// Properties: `peek_id` agrees with a successful parse; a request or response with a JSON (or empty) body
/// renders with `render_request` / `render_response` to a frame that parses to the same id, method, path,
/// status and body; error text is bounded; peak allocation is bounded.
pub fn sxdm_envelope(data: &[u8]) {
    let text = text(data);
    let text = text.as_ref();
    let parsed = bounded("sxdm parse", text.len(), || envelope::parse(text));
    let parsed = match parsed {
        Err(e) => {
            assert_error_text("sxdm error", &e.to_string());
            assert!(!e.code().is_empty());
            return;
        }
        Ok(parsed) => parsed,
    };
    assert_eq!(
        envelope::peek_id(text),
        Some(parsed.id()),
        "peek_id disagrees"
    );
    match &parsed {
        envelope::Envelope::Request(request) => {
            assert!(request.path.starts_with('/'));
            assert!(request.method.bytes().all(|b| b.is_ascii_uppercase()));
            let body = match &request.body {
                envelope::Body::Text(_) => return,
                envelope::Body::Empty => None,
                envelope::Body::Json(value) => Some(value),
            };
            let rendered =
                envelope::render_request(&request.id, &request.method, &request.path, body);
            match envelope::parse(&rendered) {
                Ok(envelope::Envelope::Request(again)) => {
                    assert_eq!(
                        (&again.id, &again.method, &again.path),
                        (&request.id, &request.method, &request.path),
                        "{rendered:?}"
                    );
                    assert!(bodies_close(&request.body, &again.body), "{rendered:?}");
                }
                other => panic!("rendered request {rendered:?} parsed as {other:?}"),
            }
        }
        envelope::Envelope::Response(response) => {
            assert!((100..=599).contains(&response.status));
            if matches!(response.body, envelope::Body::Text(_)) {
                return;
            }
            let rendered =
                envelope::render_response(&response.id, response.status, &response.body.to_value());
            match envelope::parse(&rendered) {
                Ok(envelope::Envelope::Response(again)) => {
                    assert_eq!((&again.id, again.status), (&response.id, response.status));
                    assert_eq!(again.reason, envelope::reason_phrase(response.status));
                    assert!(bodies_close(&response.body, &again.body), "{rendered:?}");
                }
                other => panic!("rendered response {rendered:?} parsed as {other:?}"),
            }
        }
    }
}

fn bodies_close(a: &envelope::Body, b: &envelope::Body) -> bool {
    match (a, b) {
        (envelope::Body::Json(x), envelope::Body::Json(y)) => json_close(x, y),
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------------------------

/// One `/ws/events` text frame through `parse_op`.
///
/// Properties: every topic of an accepted op passes `validate_topic`; the op re-encoded as JSON parses to
/// the same op; errors carry one of the documented codes and bounded text; peak allocation is bounded.
pub fn events_op(data: &[u8]) {
    let text = text(data);
    let text = text.as_ref();
    // validate_topic on the raw text too, since topics are also path and query parameters elsewhere.
    let _ = events::validate_topic(text);
    let parsed = bounded("events parse_op", text.len(), || {
        events::subscriber::parse_op(text)
    });
    match parsed {
        Err(e) => {
            assert!(
                ["bad_request", "unknown_op", "invalid_topic"].contains(&e.code),
                "undocumented code {}",
                e.code
            );
            assert!(
                e.message.len() <= MAX_ERROR_TEXT.max(text.len().saturating_mul(2)),
                "{}-byte message for a {}-byte op",
                e.message.len(),
                text.len()
            );
        }
        Ok(op) => {
            for topic in &op.topics {
                assert!(events::validate_topic(topic).is_ok(), "{topic:?}");
            }
            let mut encoded = serde_json::json!({"op": op.kind.as_str(), "topics": op.topics});
            if let (Some(interval), Some(obj)) = (op.interval, encoded.as_object_mut()) {
                obj.insert("interval".into(), Value::from(interval));
            }
            match events::subscriber::parse_op(&encoded.to_string()) {
                Ok(again) => {
                    assert_eq!((again.kind, &again.topics), (op.kind, &op.topics));
                    let close = match (again.interval, op.interval) {
                        (Some(a), Some(b)) => json_close(&Value::from(a), &Value::from(b)),
                        (a, b) => a == b,
                    };
                    assert!(close, "{encoded}: interval {:?}", again.interval);
                }
                Err(e) => panic!("{encoded} refused: {e}"),
            }
        }
    }
}

/// One fuzz target's property function.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/` file and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("tm20_frame", tm20_frame),
    ("tm20_command", tm20_command),
    ("ocpp_frame", ocpp_frame),
    ("ocpp_message", ocpp_message),
    ("ocpp_action", ocpp_action),
    ("sxdm_envelope", sxdm_envelope),
    ("events_op", events_op),
    ("ws_frames", ws_frames),
];

/// Largest message the `ws_frames` target lets the decoder take (small, so that the size limit is reached).
const WS_MAX_MESSAGE: usize = 4096;

/// `ws_frames`: the lean WebSocket transport's frame decoding (`devices::wire::decode`: headers, masking,
/// control frames, fragments, UTF-8, the size limit), fed the raw bytes a device could send.
/// Properties: at most one failure or close, and only as the last event; every control payload ≤ 125 bytes;
/// every message ≤ the limit; each message, sent again as a single masked frame, decodes to the same event;
/// and the same message split into two fragments with a ping between decodes to the ping and the same event.
pub fn ws_frames(data: &[u8]) {
    use crate::devices::transport::WsEvent;
    use crate::devices::wire::{client_frame, decode};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

    let events = bounded("ws decode", data.len(), || decode(data, WS_MAX_MESSAGE));
    for (i, event) in events.iter().enumerate() {
        let last = i + 1 == events.len();
        match event {
            WsEvent::Error(_) | WsEvent::Close(_) => assert!(last, "{event:?} before the end"),
            WsEvent::Ping(payload) => assert!(payload.len() <= 125),
            WsEvent::Limited(_) => panic!("decode does not police rates"),
            WsEvent::Text(_) | WsEvent::Binary(_) | WsEvent::Pong => {}
        }
        let (opcode, bytes): (OpCode, &[u8]) = match event {
            WsEvent::Text(text) => (OpCode::Data(Data::Text), text.as_bytes()),
            WsEvent::Binary(bytes) => (OpCode::Data(Data::Binary), bytes),
            _ => continue,
        };
        assert!(
            bytes.len() <= WS_MAX_MESSAGE,
            "{}-byte message",
            bytes.len()
        );
        let again = decode(
            &client_frame(opcode, true, bytes, [9, 8, 7, 6]),
            WS_MAX_MESSAGE,
        );
        assert_eq!(format!("{again:?}"), format!("[{event:?}]"), "single frame");
        let cut = bytes.len() / 2;
        let mut split = client_frame(opcode, false, &bytes[..cut], [1, 3, 5, 7]);
        split.extend(client_frame(
            OpCode::Control(Control::Ping),
            true,
            b"p",
            [2, 4, 6, 8],
        ));
        split.extend(client_frame(
            OpCode::Data(Data::Continue),
            true,
            &bytes[cut..],
            [0, 1, 0, 1],
        ));
        let again = decode(&split, WS_MAX_MESSAGE);
        assert_eq!(
            format!("{again:?}"),
            format!("[Ping([112]), {event:?}]"),
            "two fragments around a ping"
        );
    }
}
