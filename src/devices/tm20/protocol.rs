//! TM20 / AiFace "WebSocket + JSON" protocol: terminal → server frames and the
//! server's replies to terminal-initiated commands.
//!
//! Section numbers (§1.x) refer to the protocol notes in
//! `shared/protocols/tm20.md`; the real-traffic corpus next to them
//! (`tm20-corpus/`) is what the leniency rules were checked against.
//!
//! * [`parse_frame`] turns one text frame into an [`Inbound`]. A frame with
//!   `cmd` is a terminal request, a frame with `ret` is the terminal's reply to
//!   a server command (§1.1 "Message kinds").
//! * The `*_ack` / `reg_*` / `result_*` functions build the JSON text the
//!   server sends back. Every terminal `cmd` expects a `ret`, otherwise the
//!   terminal re-sends it in a loop (§1.2 step 5), so the server should answer
//!   every [`Inbound`] that is not a `Reply`, also on [`FrameError::BadField`].
//!
//! Parsing is deliberately lenient ("be lenient in what you accept and exact in
//! what you send", notes preamble; §1.1 "Device JSON can be malformed"; §1.7
//! item 2): trailing commas are repaired, integers may arrive as strings, key
//! and command names are matched case-insensitively, and one bad record in a
//! `sendlog` batch does not sink the rest of the batch. The parser never
//! panics; `serde_json` bounds recursion depth, and all numeric conversions are
//! checked.

use std::borrow::Cow;

use chrono::NaiveDateTime;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// Format of `cloudtime` and of device timestamps (§1.3.1): device-local time,
/// no zone, no fraction.
pub const CLOUDTIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Longest `sn` accepted in `reg`. Real SNs are 7–15 characters (corpus
/// README, "Devices"); the cap only keeps garbage out of the device registry.
pub const MAX_SN_LEN: usize = 64;

/// Unusable `sendlog` records kept per batch with their detail ([`SendLog::rejected`]); the rest are only
/// counted. Keeping every one let a 16 KB frame of `[0,0,…]` records cost 2.4 MB (150x, found by the
/// allocation property of the tm20_frame fuzz target) and one warning line each in the session.
pub const MAX_REJECTED_KEPT: usize = 100;

/// Terminal-initiated commands that have a typed representation. When a frame
/// carries both `cmd` and `ret`, one of these names wins over `ret`, because
/// an unanswered `reg`/`sendlog`/`senduser` makes the terminal loop (§1.2
/// step 5) while a misread reply only costs a command retry.
const TYPED_COMMANDS: [&str; 4] = ["reg", "sendlog", "senduser", "sendqrcode"];

/// Formats accepted by [`parse_device_time`]. The protocol format comes first;
/// the other two are defensive: the C# demo died on "The string was not
/// recognized as a valid DateTime" for some ZX firmware (corpus README,
/// "Retransmission and timing"), so other separators are plausible.
const DEVICE_TIME_FORMATS: [&str; 3] = [CLOUDTIME_FORMAT, "%Y-%m-%dT%H:%M:%S", "%Y/%m/%d %H:%M:%S"];

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

/// One parsed terminal → server frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// `cmd:"reg"` (§1.3.1); answer with [`reg_accepted`] or [`reg_rejected`].
    Reg(Reg),
    /// `cmd:"sendlog"` (§1.3.2); answer with [`sendlog_ack`].
    SendLog(SendLog),
    /// `cmd:"senduser"` (§1.3.3); answer with [`senduser_ack`].
    SendUser(SendUser),
    /// `cmd:"sendqrcode"` (§1.3.4); the server decides access.
    SendQrCode(SendQrCode),
    /// any other terminal-initiated `cmd` (heartbeat, sendpin, ...): the server answers {"ret":cmd,"result":true}
    OtherCmd { cmd: String, sn: Option<String> },
    /// a reply to a server command: the whole repaired object, `ret` lower-cased
    Reply {
        ret: String,
        body: serde_json::Value,
    },
}

impl Inbound {
    /// The lower-cased `cmd` or `ret` name of the frame.
    pub fn name(&self) -> &str {
        match self {
            Inbound::Reg(_) => "reg",
            Inbound::SendLog(_) => "sendlog",
            Inbound::SendUser(_) => "senduser",
            Inbound::SendQrCode(_) => "sendqrcode",
            Inbound::OtherCmd { cmd, .. } => cmd,
            Inbound::Reply { ret, .. } => ret,
        }
    }

    /// The `sn` the frame carries, if any (for a `Reply`, read from the body:
    /// newer firmware put `sn` in every `ret`, §1.1).
    pub fn sn(&self) -> Option<&str> {
        match self {
            Inbound::Reg(r) => Some(&r.sn),
            Inbound::SendLog(l) => l.sn.as_deref(),
            Inbound::SendUser(u) => u.sn.as_deref(),
            Inbound::SendQrCode(q) => q.sn.as_deref(),
            Inbound::OtherCmd { sn, .. } => sn.as_deref(),
            Inbound::Reply { body, .. } => body
                .as_object()
                .and_then(|o| field(o, "sn"))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty()),
        }
    }
}

/// Why a frame could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    #[error("frame is not a JSON object")]
    NotObject,
    #[error("frame has neither `cmd` nor `ret`")]
    NoCmdOrRet,
    /// a known cmd with a missing/mistyped field: the server answers {"ret":cmd,"result":false,"reason":...}
    #[error("`{cmd}`: {message}")]
    BadField { cmd: String, message: String },
}

impl FrameError {
    /// The command the error belongs to, when the frame got far enough to
    /// have one; the server then owes the terminal a `result:false` reply.
    pub fn cmd(&self) -> Option<&str> {
        match self {
            FrameError::BadField { cmd, .. } => Some(cmd),
            FrameError::NotJson(_) | FrameError::NotObject | FrameError::NoCmdOrRet => None,
        }
    }

    fn bad(cmd: &str, message: impl Into<String>) -> Self {
        FrameError::BadField {
            cmd: cmd.to_owned(),
            message: message.into(),
        }
    }
}

/// `reg` (§1.3.1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reg {
    /// Trimmed, non-empty, printable ASCII without spaces, at most
    /// [`MAX_SN_LEN`] characters.
    pub sn: String,
    /// Absent on AiFace firmware (corpus README, "Transport-level observations").
    pub cpusn: Option<String>,
    /// Kept as received: the field set grows with firmware (§1.3.1).
    pub devinfo: Option<serde_json::Value>,
}

impl Reg {
    /// `devinfo.modelname`, e.g. `"tfs30"` or `"AiFace"`.
    pub fn model(&self) -> Option<String> {
        self.devinfo_text("modelname")
    }

    /// `devinfo.firmware`, e.g. `"AiFP50V_v4.40"`.
    pub fn firmware(&self) -> Option<String> {
        self.devinfo_text("firmware")
    }

    fn devinfo_text(&self, key: &str) -> Option<String> {
        let devinfo = self.devinfo.as_ref()?.as_object()?;
        text_value(field(devinfo, key)?).filter(|s| !s.trim().is_empty())
    }
}

/// `sendlog` (§1.3.2).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendLog {
    pub sn: Option<String>,
    pub count: Option<i64>,
    /// -1 when absent, like the vendor Java (§1.3.2).
    pub logindex: i64,
    pub records: Vec<LogRecord>,
    /// The first [`MAX_REJECTED_KEPT`] unusable records, with their reasons.
    pub rejected: Vec<RejectedRecord>,
    /// Unusable records beyond [`MAX_REJECTED_KEPT`]: counted (for the ack), not kept.
    pub rejected_more: usize,
}

impl SendLog {
    /// The `count` to echo in the ack: the terminal's own `count`, or the
    /// number of records received (accepted and rejected) when it sent none.
    pub fn ack_count(&self) -> i64 {
        self.count.unwrap_or_else(|| {
            let received = self.records.len() + self.rejected.len() + self.rejected_more;
            i64::try_from(received).unwrap_or(i64::MAX)
        })
    }

    /// The §1.3.2 ack for this batch, see [`sendlog_ack`].
    pub fn ack(&self, cloudtime: NaiveDateTime) -> String {
        sendlog_ack(Some(self.ack_count()), self.logindex, cloudtime)
    }
}

/// One accepted `sendlog` record (§1.3.2 "Record fields").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogRecord {
    /// `0` = door/system event, `99999999` = stranger (§1.3.2).
    pub enrollid: i64,
    pub time: NaiveDateTime,
    pub mode: i64,
    pub inout: i64,
    pub event: i64,
    /// As sent. Real devices send tenths of °C (`365`), the doc shows `36.5`,
    /// and the vendor demos disagree on the divisor (§1.3.2), so no scaling
    /// happens here.
    pub temp: Option<f64>,
    pub verifymode: Option<i64>,
    pub name: Option<String>,
    pub aliasid: Option<String>,
    /// the record object exactly as received
    pub raw: serde_json::Value,
}

/// A `sendlog` record that could not be accepted; the rest of the batch is
/// kept (garbage records were seen in the field, §1.1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectedRecord {
    /// Position in the frame's `record` array.
    pub index: usize,
    pub reason: String,
    pub raw: serde_json::Value,
}

/// `senduser` (§1.3.3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendUser {
    pub sn: Option<String>,
    pub enrollid: i64,
    pub name: Option<String>,
    pub aliasid: Option<String>,
    /// Slot selector (§1.4); undocumented values occur, so any integer passes.
    pub backupnum: i64,
    /// 0 user, 1 admin, 2 super (§1.3.3); 0 when absent.
    pub admin: i64,
    /// Template (hex with `(n)` run-length groups), base64 JPEG, or a card /
    /// password number turned into its decimal string (§1.3.3, §1.4).
    pub record: Option<String>,
}

/// `sendqrcode` (§1.3.4).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendQrCode {
    pub sn: Option<String>,
    pub record: String,
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Removes trailing commas before `]` or `}` that sit outside JSON strings (real getdevlock replies contain `,]`).
/// Borrowed when nothing changed.
///
/// The Java demo's `replaceAll(",]", "]")` (§1.1) would also rewrite string
/// contents and misses `, ]`; this scanner tracks strings and escapes and
/// allows JSON whitespace between the comma and the bracket. Only the comma
/// is dropped, so everything else stays byte-for-byte.
pub fn repair_json(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    // Bytes of `text` before this index are already in `out`.
    let mut copied = 0;
    let mut in_string = false;
    let mut escaped = false;

    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b',' => {
                let next = bytes.get(i + 1..).and_then(|rest| {
                    rest.iter()
                        .find(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
                });
                if matches!(next, Some(b']' | b'}')) {
                    let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
                    // `copied` and `i` both sit on ASCII bytes (start, or just
                    // after / at a comma), so they are char boundaries.
                    buf.push_str(text.get(copied..i).unwrap_or_default());
                    copied = i + 1;
                }
            }
            _ => {}
        }
    }

    match out {
        None => Cow::Borrowed(text),
        Some(mut buf) => {
            buf.push_str(text.get(copied..).unwrap_or_default());
            Cow::Owned(buf)
        }
    }
}

/// Parses one terminal → server text frame.
///
/// Dispatch (§1.1 "Message kinds"): `cmd` → request, `ret` → reply. Names are
/// trimmed and lower-cased. A frame with both is a request only when `cmd`
/// names one of the typed terminal commands (`reg`, `sendlog`, `senduser`,
/// `sendqrcode`): an unanswered one makes the terminal loop (§1.2 step 5).
pub fn parse_frame(text: &str) -> Result<Inbound, FrameError> {
    let repaired = repair_json(text);
    let value: Value =
        serde_json::from_str(&repaired).map_err(|e| FrameError::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(FrameError::NotObject);
    };

    let cmd = name_value(field(&obj, "cmd"));
    let ret = name_value(field(&obj, "ret"));

    if let Some(cmd) = cmd {
        if ret.is_none() || TYPED_COMMANDS.contains(&cmd.as_str()) {
            return parse_request(cmd, &mut obj);
        }
    }
    match ret {
        Some(ret) => Ok(Inbound::Reply {
            ret,
            body: Value::Object(obj),
        }),
        None => Err(FrameError::NoCmdOrRet),
    }
}

fn parse_request(cmd: String, obj: &mut Map<String, Value>) -> Result<Inbound, FrameError> {
    match cmd.as_str() {
        "reg" => parse_reg(obj).map(Inbound::Reg),
        "sendlog" => parse_sendlog(obj).map(Inbound::SendLog),
        "senduser" => parse_senduser(obj).map(Inbound::SendUser),
        "sendqrcode" => parse_sendqrcode(obj).map(Inbound::SendQrCode),
        // §1.3.5: shapes unknown; the server only needs the name to answer.
        _ => Ok(Inbound::OtherCmd {
            sn: optional_sn(obj),
            cmd,
        }),
    }
}

fn parse_reg(obj: &mut Map<String, Value>) -> Result<Reg, FrameError> {
    // Messages are short because `reason` is shown on the device screen
    // (§1.3.1 "Rejecting the device").
    let bad = |message: &str| FrameError::bad("reg", message);
    let raw_sn = field(obj, "sn").ok_or_else(|| bad("sn missing"))?;
    let sn = text_value(raw_sn).ok_or_else(|| bad("sn must be a string"))?;
    let sn = sn.trim();
    if sn.is_empty() {
        // 246 corpus frames come from a unit with no SN set (`"sn":""`);
        // without an SN the server cannot route commands to it (§1.2 step 3).
        return Err(bad("sn empty"));
    }
    if !sn.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("sn must be printable ASCII"));
    }
    if sn.len() > MAX_SN_LEN {
        return Err(bad("sn too long"));
    }
    Ok(Reg {
        sn: sn.to_owned(),
        cpusn: field(obj, "cpusn")
            .and_then(text_value)
            .filter(|s| !s.trim().is_empty()),
        devinfo: take_field(obj, "devinfo"),
    })
}

fn parse_sendlog(obj: &mut Map<String, Value>) -> Result<SendLog, FrameError> {
    const CMD: &str = "sendlog";
    let count = optional_int(obj, CMD, "count")?;
    // §1.3.2: older firmware omits `logindex`; the vendor Java uses -1.
    let logindex = optional_int(obj, CMD, "logindex")?.unwrap_or(-1);
    let sn = optional_sn(obj);

    // Taken, not cloned: a record may carry a 100 KB photo (corpus t0095).
    let items = match take_field(obj, "record") {
        None => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(FrameError::bad(CMD, "record must be an array")),
    };

    // Not pre-sized from `items.len()`: a batch of garbage would reserve a full `LogRecord` per junk byte pair.
    let mut records = Vec::new();
    let mut rejected = Vec::new();
    let mut rejected_more = 0;
    for (index, raw) in items.into_iter().enumerate() {
        let parsed = match &raw {
            Value::Object(rec) => log_fields(rec),
            _ => Err("record is not an object".to_owned()),
        };
        match parsed {
            Ok(f) => records.push(LogRecord {
                enrollid: f.enrollid,
                time: f.time,
                mode: f.mode,
                inout: f.inout,
                event: f.event,
                temp: f.temp,
                verifymode: f.verifymode,
                name: f.name,
                aliasid: f.aliasid,
                raw,
            }),
            Err(_) if rejected.len() >= MAX_REJECTED_KEPT => rejected_more += 1,
            Err(reason) => rejected.push(RejectedRecord { index, reason, raw }),
        }
    }

    Ok(SendLog {
        sn,
        count,
        logindex,
        records,
        rejected,
        rejected_more,
    })
}

/// The typed fields of one log record, before `raw` is attached.
struct LogFields {
    enrollid: i64,
    time: NaiveDateTime,
    mode: i64,
    inout: i64,
    event: i64,
    temp: Option<f64>,
    verifymode: Option<i64>,
    name: Option<String>,
    aliasid: Option<String>,
}

/// Identity fields (enrollid, time, mode, inout, event: the idempotency key
/// of §1.7 item 4 plus direction/event) must be well-formed, or the record is
/// rejected rather than stored with invented values. Descriptive fields
/// (temp, verifymode, name, aliasid) become `None` when unreadable; `raw`
/// still holds them.
fn log_fields(rec: &Map<String, Value>) -> Result<LogFields, String> {
    let [enrollid, time, mode, inout, event, temp, verifymode, name, aliasid] =
        log_record_fields(rec);
    let enrollid = match enrollid {
        None => return Err("enrollid missing".to_owned()),
        Some(v) => int_value(v).ok_or_else(|| "enrollid is not an integer".to_owned())?,
    };
    if enrollid < 0 {
        // Negative ids are memory garbage on one firmware (§1.1; corpus t0070).
        return Err("enrollid is negative".to_owned());
    }
    let time = match time {
        None => return Err("time missing".to_owned()),
        Some(Value::String(s)) => {
            parse_device_time(s).ok_or_else(|| "time is not yyyy-MM-dd HH:mm:ss".to_owned())?
        }
        Some(_) => return Err("time is not a string".to_owned()),
    };
    let small = |value: Option<&Value>, key: &str| -> Result<i64, String> {
        match value {
            None => Ok(0),
            Some(v) => int_value(v).ok_or_else(|| format!("{key} is not an integer")),
        }
    };
    Ok(LogFields {
        enrollid,
        time,
        mode: small(mode, "mode")?,
        inout: small(inout, "inout")?,
        event: small(event, "event")?,
        temp: temp.and_then(float_value),
        verifymode: verifymode.and_then(int_value),
        name: name.and_then(text_value),
        aliasid: aliasid.and_then(text_value),
    })
}

/// The keys of a log record that [`log_fields`] reads, in the order [`log_record_fields`] returns them.
const LOG_RECORD_KEYS: [&str; 9] = [
    "enrollid",
    "time",
    "mode",
    "inout",
    "event",
    "temp",
    "verifymode",
    "name",
    "aliasid",
];

/// [`field`] of each of [`LOG_RECORD_KEYS`], found in one pass over the record's keys: a look-up per key,
/// with a case-insensitive scan of the whole record for each absent one (most records lack four), was a
/// twentieth of a record's cost.
fn log_record_fields(rec: &Map<String, Value>) -> [Option<&Value>; 9] {
    let mut exact: [Option<&Value>; 9] = [None; 9];
    let mut folded: [Option<&Value>; 9] = [None; 9];
    for (key, value) in rec {
        for (slot, name) in LOG_RECORD_KEYS.iter().enumerate() {
            if key == name {
                exact[slot] = Some(value);
                break;
            }
            if key.eq_ignore_ascii_case(name) {
                // The first in the map's order, as `field`'s scan finds it.
                folded[slot] = folded[slot].or(Some(value));
                break;
            }
        }
    }
    std::array::from_fn(|slot| exact[slot].or(folded[slot]).filter(|v| !v.is_null()))
}

fn parse_senduser(obj: &mut Map<String, Value>) -> Result<SendUser, FrameError> {
    const CMD: &str = "senduser";
    let enrollid = required_int(obj, CMD, "enrollid")?;
    if enrollid < 0 {
        return Err(FrameError::bad(CMD, "enrollid is negative"));
    }
    let backupnum = required_int(obj, CMD, "backupnum")?;
    // `admin` arrives as a string on some firmware (§1.1; corpus t0070).
    let admin = optional_int(obj, CMD, "admin")?.unwrap_or(0);
    let record = match take_field(obj, "record") {
        None => None,
        Some(Value::String(s)) => Some(s),
        // Card and password records are JSON numbers (§1.3.3).
        Some(Value::Number(n)) => Some(number_to_decimal(&n)),
        Some(_) => return Err(FrameError::bad(CMD, "record must be a string or number")),
    };
    Ok(SendUser {
        sn: optional_sn(obj),
        enrollid,
        name: field(obj, "name").and_then(text_value),
        aliasid: field(obj, "aliasid").and_then(text_value),
        backupnum,
        admin,
        record,
    })
}

fn parse_sendqrcode(obj: &mut Map<String, Value>) -> Result<SendQrCode, FrameError> {
    const CMD: &str = "sendqrcode";
    let record = match take_field(obj, "record") {
        None => return Err(FrameError::bad(CMD, "record missing")),
        Some(Value::String(s)) => s,
        // Shape only from the doc (§1.3.4); a numeric QR payload is plausible.
        Some(Value::Number(n)) => number_to_decimal(&n),
        Some(_) => return Err(FrameError::bad(CMD, "record must be a string")),
    };
    Ok(SendQrCode {
        sn: optional_sn(obj),
        record,
    })
}

// ---------------------------------------------------------------------------
// Field helpers
// ---------------------------------------------------------------------------

/// Looks `key` up exactly, then ASCII-case-insensitively. Keys are documented
/// lower-case (§1.1) but `InputAlarm` shows firmware does not always comply
/// (§1.5 #20). `null` counts as absent.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key)
        .or_else(|| {
            obj.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

/// Like [`field`], but moves the value out of the object (for large strings).
fn take_field(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    let actual = if obj.contains_key(key) {
        key.to_owned()
    } else {
        obj.keys().find(|k| k.eq_ignore_ascii_case(key))?.clone()
    };
    obj.remove(&actual).filter(|v| !v.is_null())
}

/// A `cmd`/`ret` name: a non-blank string, trimmed and lower-cased.
fn name_value(v: Option<&Value>) -> Option<String> {
    let s = v?.as_str()?.trim();
    (!s.is_empty()).then(|| s.to_lowercase())
}

/// `sn` on frames other than `reg`: informational (the server knows the
/// socket's SN from `reg`), so a blank or mistyped value is just `None`.
fn optional_sn(obj: &Map<String, Value>) -> Option<String> {
    let sn = text_value(field(obj, "sn")?)?;
    let sn = sn.trim();
    (!sn.is_empty()).then(|| sn.to_owned())
}

fn required_int(obj: &Map<String, Value>, cmd: &str, key: &str) -> Result<i64, FrameError> {
    optional_int(obj, cmd, key)?.ok_or_else(|| FrameError::bad(cmd, format!("{key} missing")))
}

/// Absent → `Ok(None)`; present but not an integer → `BadField`.
fn optional_int(obj: &Map<String, Value>, cmd: &str, key: &str) -> Result<Option<i64>, FrameError> {
    match field(obj, key) {
        None => Ok(None),
        Some(v) => int_value(v)
            .map(Some)
            .ok_or_else(|| FrameError::bad(cmd, format!("{key} is not an integer"))),
    }
}

/// An integer given as a JSON number or as a numeric string (§1.7 item 2:
/// "accept numbers given as strings"). Integral floats (`12.0`, `"12"`,
/// `" 12 "`) pass; fractions, overflow, NaN and infinities do not.
fn int_value(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(f64_to_i64)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(f64_to_i64))
        }
        _ => None,
    }
}

fn f64_to_i64(f: f64) -> Option<i64> {
    // `i64::MAX as f64` rounds up to 2^63, which is itself out of range,
    // hence the half-open range.
    let in_range = (i64::MIN as f64..i64::MAX as f64).contains(&f);
    (f.is_finite() && f.fract() == 0.0 && in_range).then_some(f as i64)
}

/// A finite float given as a number or a numeric string.
fn float_value(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    f.is_finite().then_some(f)
}

/// A string, or a number turned into its decimal text.
fn text_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(number_to_decimal(n)),
        _ => None,
    }
}

/// Card and password numbers as decimal text: `2352253`, not `2352253.0`
/// even if a firmware serialised it as a float.
fn number_to_decimal(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    match n.as_f64().and_then(f64_to_i64) {
        Some(i) => i.to_string(),
        None => n.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

/// "yyyy-MM-dd HH:mm:ss"
///
/// Sub-second precision is dropped; `cloudtime` is device-local time and the
/// device sets its clock from it (§1.3.1).
pub fn format_cloudtime(t: chrono::NaiveDateTime) -> String {
    t.format(CLOUDTIME_FORMAT).to_string()
}

/// Parses a device timestamp: "yyyy-MM-dd HH:mm:ss", also "yyyy-MM-ddTHH:mm:ss"
/// and "yyyy/MM/dd HH:mm:ss". Surrounding whitespace is ignored.
pub fn parse_device_time(s: &str) -> Option<chrono::NaiveDateTime> {
    let s = s.trim();
    DEVICE_TIME_ITEMS.iter().find_map(|items| {
        // What `NaiveDateTime::parse_from_str` does, with the format parsed once rather than per call (it was
        // a fifth of parsing a sendlog frame: every record has a time).
        let mut parsed = chrono::format::Parsed::new();
        chrono::format::parse(&mut parsed, s, items.iter()).ok()?;
        parsed.to_naive_datetime_with_offset(0).ok()
    })
}

/// [`DEVICE_TIME_FORMATS`], parsed.
static DEVICE_TIME_ITEMS: std::sync::LazyLock<Vec<Vec<chrono::format::Item<'static>>>> =
    std::sync::LazyLock::new(|| {
        DEVICE_TIME_FORMATS
            .iter()
            .map(|f| {
                chrono::format::StrftimeItems::new(f)
                    .parse_to_owned()
                    .expect("valid time format")
            })
            .collect()
    });

// ---------------------------------------------------------------------------
// Replies (server → terminal)
// ---------------------------------------------------------------------------

/// `{"ret":"reg","result":true,"cloudtime":"…"}`, exactly what the vendor C#
/// demo sends (§1.3.1). Send it before any database work (§1.7 item 3).
pub fn reg_accepted(cloudtime: chrono::NaiveDateTime) -> String {
    json!({"ret": "reg", "result": true, "cloudtime": format_cloudtime(cloudtime)}).to_string()
}

/// `{"ret":"reg","result":false,"reason":"…"}`; the device shows `reason` on
/// its screen (§1.3.1).
pub fn reg_rejected(reason: &str) -> String {
    result_false("reg", reason)
}

/// `{"ret":"sendlog","result":true,"count":N,"logindex":I,"cloudtime":"…"}`
/// (§1.3.2, the most compatible form). Pass the terminal's `count`, or the
/// number of records received ([`SendLog::ack_count`]). With `None` the key is
/// left out, which AiFace firmware accepted (corpus r002).
pub fn sendlog_ack(count: Option<i64>, logindex: i64, cloudtime: chrono::NaiveDateTime) -> String {
    let mut body = Map::new();
    body.insert("ret".into(), "sendlog".into());
    body.insert("result".into(), true.into());
    if let Some(count) = count {
        body.insert("count".into(), count.into());
    }
    body.insert("logindex".into(), logindex.into());
    body.insert("cloudtime".into(), format_cloudtime(cloudtime).into());
    Value::Object(body).to_string()
}

/// `{"ret":"senduser","result":true,"enrollid":E,"backupnum":B,"cloudtime":"…"}`:
/// the union of the plain reply and the later C# echo form (§1.3.3), both
/// accepted by firmware (corpus r006).
pub fn senduser_ack(enrollid: i64, backupnum: i64, cloudtime: chrono::NaiveDateTime) -> String {
    json!({
        "ret": "senduser",
        "result": true,
        "enrollid": enrollid,
        "backupnum": backupnum,
        "cloudtime": format_cloudtime(cloudtime),
    })
    .to_string()
}

/// `{"ret":…,"result":false,"reason":…}`. `reason` is a string for `reg`
/// (§1.3.1) and an integer for `sendlog`/`senduser` (§1.3.2, §1.3.3). A value
/// serde cannot represent as JSON becomes `null`.
pub fn result_false(ret: &str, reason: impl serde::Serialize) -> String {
    let reason = serde_json::to_value(reason).unwrap_or(Value::Null);
    json!({"ret": ret, "result": false, "reason": reason}).to_string()
}

/// `{"ret":…,"result":true}`: the safe answer to any other `cmd`, so the
/// device does not loop (§1.3.5, §1.7 item 5).
pub fn result_true(ret: &str) -> String {
    json!({"ret": ret, "result": true}).to_string()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use std::path::PathBuf;

    // The workspace denies `clippy::unwrap_used` in every target, so the test
    // helpers below panic with context instead of unwrapping.

    fn ok(text: &str) -> Inbound {
        match parse_frame(text) {
            Ok(v) => v,
            Err(e) => panic!("expected Ok for {text:?}, got {e}"),
        }
    }

    fn value(text: &str) -> Value {
        match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => panic!("test JSON {text:?} is invalid: {e}"),
        }
    }

    fn dt(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> NaiveDateTime {
        match NaiveDate::from_ymd_opt(y, mo, d).and_then(|d| d.and_hms_opt(h, mi, s)) {
            Some(t) => t,
            None => panic!("bad test date"),
        }
    }

    fn reg(i: Inbound) -> Reg {
        match i {
            Inbound::Reg(r) => r,
            other => panic!("expected Reg, got {other:?}"),
        }
    }

    fn sendlog(i: Inbound) -> SendLog {
        match i {
            Inbound::SendLog(l) => l,
            other => panic!("expected SendLog, got {other:?}"),
        }
    }

    fn senduser(i: Inbound) -> SendUser {
        match i {
            Inbound::SendUser(u) => u,
            other => panic!("expected SendUser, got {other:?}"),
        }
    }

    /// (variant, cmd) of an error, for table comparisons.
    fn error_tag(text: &str) -> (&'static str, Option<String>) {
        match parse_frame(text) {
            Ok(v) => panic!("expected an error for {text:?}, got {v:?}"),
            Err(e) => {
                let tag = match e {
                    FrameError::NotJson(_) => "NotJson",
                    FrameError::NotObject => "NotObject",
                    FrameError::NoCmdOrRet => "NoCmdOrRet",
                    FrameError::BadField { .. } => "BadField",
                };
                (tag, e.cmd().map(str::to_owned))
            }
        }
    }

    /// One pass over a record finds what a [`field`] look-up per key finds: exact keys first, `null` as
    /// absent, else the first key equal but for ASCII case.
    #[test]
    fn a_log_record_is_read_in_one_pass_as_field_reads_it() {
        let records = [
            json!({"enrollid": 1, "time": "2024-06-01 08:30:05", "mode": 1, "inout": 0, "event": 0}),
            json!({"EnrollId": 2, "TIME": "x", "Mode": null, "temp": 36.5, "Name": "a", "name": "b"}),
            json!({"enrollid": null, "ENROLLID": 3, "Enrollid": 4, "verifyMode": 5, "aliasid": "z"}),
            json!({"enrollid": 5, "eNrollid": 6, "Enrollid": null, "event": null, "EVENT": 7}),
            json!({"other": 1, "temps": 2, "nam": 3, "aliasID": null, "AliasId": "q"}),
            json!({}),
        ];
        for record in records {
            let Value::Object(rec) = &record else {
                unreachable!("objects only")
            };
            let expected: Vec<Option<&Value>> =
                LOG_RECORD_KEYS.iter().map(|key| field(rec, key)).collect();
            assert_eq!(log_record_fields(rec).to_vec(), expected, "{record}");
        }
    }

    #[test]
    fn repair_json_table() {
        // (input, expected, borrowed)
        let cases: &[(&str, &str, bool)] = &[
            ("", "", true),
            (r#"{"a":[1,2]}"#, r#"{"a":[1,2]}"#, true),
            (r#"{"a":[1,2,]}"#, r#"{"a":[1,2]}"#, false),
            (r#"{"a":1,}"#, r#"{"a":1}"#, false),
            ("{\"a\":[1 , \n\t ]}", "{\"a\":[1  \n\t ]}", false),
            (r#"[{"d":0},]"#, r#"[{"d":0}]"#, false),
            // string contents are never touched
            (r#"{"s":",]"}"#, r#"{"s":",]"}"#, true),
            (r#"{"s":",}",}"#, r#"{"s":",}"}"#, false),
            // escaped quote does not end the string
            (r#"{"s":"a\",]"}"#, r#"{"s":"a\",]"}"#, true),
            (r#"{"s":"a\\",}"#, r#"{"s":"a\\"}"#, false),
            // comma followed by something else
            (r#"[1,2,3]"#, r#"[1,2,3]"#, true),
            ("[1,", "[1,", true),
            // multi-byte text around the repair stays intact
            (r#"{"n":"用户1",}"#, r#"{"n":"用户1"}"#, false),
            (
                r#"{"dayzone":[{"day":[{"section":"00:00~00:00"},]},],"x":[{"day":0},]}"#,
                r#"{"dayzone":[{"day":[{"section":"00:00~00:00"}]}],"x":[{"day":0}]}"#,
                false,
            ),
        ];
        for (input, expected, borrowed) in cases {
            let got = repair_json(input);
            assert_eq!(got, *expected, "input {input:?}");
            assert_eq!(
                matches!(got, Cow::Borrowed(_)),
                *borrowed,
                "borrowed? for {input:?}"
            );
        }
    }

    #[test]
    fn reg_variants() {
        let classic = r#"{"cmd":"reg","sn":"ZX0006827500","cpusn":"123456789",
 "devinfo":{"modelname":"tfs30","usersize":3000,"fpsize":3000,"cardsize":3000,"pwdsize":3000,
  "logsize":100000,"useduser":1000,"usedfp":1000,"usedcard":2000,"usedpwd":400,"usedlog":100000,
  "usednewlog":5000,"fpalgo":"thbio3.0","firmware":"th600w v6.1","time":"2016-03-25 13:49:30",
  "mac":"00-01-A9-01-00-01"}}"#;
        let aiface = r#"{"cmd":"reg","sn":"AI07F8242382773","devinfo":{"modelname":"AiFace","usersize":50000,"facesize":50000,"fpsize":100000,"cardsize":50000,"pwdsize":50000,"logsize":500000,"useduser":1,"usedface":1,"usedfp":0,"usedcard":0,"usedpwd":0,"usedlog":34,"usednewlog":34,"netinuse":2,"fpalgo":"thbio3.0","firmware":"AiFP50V_v4.40","time":"2023-01-10 19:30:59","mac":"00-00-5E-00-53-01"}}"#;
        // (input, sn, cpusn, model, firmware)
        type Row<'a> = (
            &'a str,
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
        );
        let cases: &[Row] = &[
            (
                classic,
                "ZX0006827500",
                Some("123456789"),
                Some("tfs30"),
                Some("th600w v6.1"),
            ),
            (
                aiface,
                "AI07F8242382773",
                None,
                Some("AiFace"),
                Some("AiFP50V_v4.40"),
            ),
            (r#"{"cmd":"reg","sn":12345}"#, "12345", None, None, None),
            (
                r#"{"cmd":" REG ","sn":" ZX1 ","cpusn":42}"#,
                "ZX1",
                Some("42"),
                None,
                None,
            ),
            (
                r#"{"Cmd":"Reg","SN":"ZX2","devinfo":[1]}"#,
                "ZX2",
                None,
                None,
                None,
            ),
            (
                r#"{"cmd":"reg","sn":"ZX3","devinfo":null,"cpusn":""}"#,
                "ZX3",
                None,
                None,
                None,
            ),
        ];
        for (input, sn, cpusn, model, firmware) in cases {
            let r = reg(ok(input));
            assert_eq!(r.sn, *sn, "{input}");
            assert_eq!(r.cpusn.as_deref(), *cpusn, "{input}");
            assert_eq!(r.model().as_deref(), *model, "{input}");
            assert_eq!(r.firmware().as_deref(), *firmware, "{input}");
        }
        let r = reg(ok(aiface));
        let usednewlog = r
            .devinfo
            .as_ref()
            .and_then(|d| d.get("usednewlog"))
            .cloned();
        assert_eq!(usednewlog, Some(json!(34)));
    }

    #[test]
    fn sendlog_full_record_example() {
        let text = r#"{"cmd":"sendlog","sn":"AI07F123456789","count":1,"logindex":0,
 "record":[{"enrollid":1,"aliasid":"1","name":"","time":"2023-01-10 16:04:21","mode":8,"inout":0,
            "event":0,"temp":365,"verifymode":13,"note":{},"image":"/9j/4AAQ…(base64 JPEG, no data: prefix)"}]}"#;
        let log = sendlog(ok(text));
        assert_eq!(log.sn.as_deref(), Some("AI07F123456789"));
        assert_eq!(log.count, Some(1));
        assert_eq!(log.logindex, 0);
        assert!(log.rejected.is_empty());
        assert_eq!(log.records.len(), 1);
        let rec = &log.records[0];
        assert_eq!(rec.enrollid, 1);
        assert_eq!(rec.time, dt(2023, 1, 10, 16, 4, 21));
        assert_eq!((rec.mode, rec.inout, rec.event), (8, 0, 0));
        assert_eq!(rec.temp, Some(365.0));
        assert_eq!(rec.verifymode, Some(13));
        assert_eq!(rec.name.as_deref(), Some(""));
        assert_eq!(rec.aliasid.as_deref(), Some("1"));
        let expected_raw = value(
            r#"{"enrollid":1,"aliasid":"1","name":"","time":"2023-01-10 16:04:21","mode":8,"inout":0,
            "event":0,"temp":365,"verifymode":13,"note":{},"image":"/9j/4AAQ…(base64 JPEG, no data: prefix)"}"#,
        );
        assert_eq!(rec.raw, expected_raw);
        assert_eq!(log.ack_count(), 1);
    }

    #[test]
    fn sendlog_record_table() {
        // One record per case: (record JSON, Ok((enrollid, mode, inout, event, temp)) or Err(reason))
        type Expect = Result<(i64, i64, i64, i64, Option<f64>), &'static str>;
        let cases: &[(&str, Expect)] = &[
            (
                r#"{"enrollid":"12","time":"2019-07-12 18:40:45"}"#,
                Ok((12, 0, 0, 0, None)),
            ),
            (
                r#"{"enrollid":0,"time":"2019-07-12 18:40:45","mode":0,"inout":0,"event":6}"#,
                Ok((0, 0, 0, 6, None)),
            ),
            (
                r#"{"enrollid":99999999,"time":"2021-01-30 11:22:59","mode":8,"temp":368}"#,
                Ok((99999999, 8, 0, 0, Some(368.0))),
            ),
            (
                r#"{"enrollid":1,"time":"2021-01-30 11:22:59","temp":36.5}"#,
                Ok((1, 0, 0, 0, Some(36.5))),
            ),
            (
                r#"{"enrollid":1,"time":"2021-01-30 11:22:59","temp":"36.5"}"#,
                Ok((1, 0, 0, 0, Some(36.5))),
            ),
            (
                r#"{"enrollid":1,"time":"2021-01-30 11:22:59","temp":"hot"}"#,
                Ok((1, 0, 0, 0, None)),
            ),
            (
                r#"{"enrollid":1,"time":"2021-01-30 11:22:59","mode":"18","inout":"1","event":"1"}"#,
                Ok((1, 18, 1, 1, None)),
            ),
            (
                r#"{"enrollid":1.0,"time":"2021-01-30T11:22:59"}"#,
                Ok((1, 0, 0, 0, None)),
            ),
            (
                r#"{"ENROLLID":7,"Time":"2021/01/30 11:22:59","mode":null}"#,
                Ok((7, 0, 0, 0, None)),
            ),
            (
                r#"{"enrollid":-2105376126,"time":"2021-01-30 11:22:59"}"#,
                Err("enrollid is negative"),
            ),
            (
                r#"{"enrollid":"-1","time":"2021-01-30 11:22:59"}"#,
                Err("enrollid is negative"),
            ),
            (
                r#"{"enrollid":"abc","time":"2021-01-30 11:22:59"}"#,
                Err("enrollid is not an integer"),
            ),
            (
                r#"{"enrollid":1.5,"time":"2021-01-30 11:22:59"}"#,
                Err("enrollid is not an integer"),
            ),
            (
                r#"{"enrollid":18446744073709551615,"time":"2021-01-30 11:22:59"}"#,
                Err("enrollid is not an integer"),
            ),
            (
                r#"{"enrollid":true,"time":"2021-01-30 11:22:59"}"#,
                Err("enrollid is not an integer"),
            ),
            (r#"{"time":"2021-01-30 11:22:59"}"#, Err("enrollid missing")),
            (r#"{"enrollid":1}"#, Err("time missing")),
            (
                r#"{"enrollid":1,"time":"yesterday"}"#,
                Err("time is not yyyy-MM-dd HH:mm:ss"),
            ),
            (
                r#"{"enrollid":1,"time":"2021-02-30 11:22:59"}"#,
                Err("time is not yyyy-MM-dd HH:mm:ss"),
            ),
            (
                r#"{"enrollid":1,"time":20210130}"#,
                Err("time is not a string"),
            ),
            (
                r#"{"enrollid":1,"time":"2021-01-30 11:22:59","mode":"face"}"#,
                Err("mode is not an integer"),
            ),
            (
                r#"{"enrollid":1,"time":"2021-01-30 11:22:59","event":[]}"#,
                Err("event is not an integer"),
            ),
            (r#"[1,2]"#, Err("record is not an object")),
            (r#""x""#, Err("record is not an object")),
        ];
        for (record, expect) in cases {
            let text = format!(r#"{{"cmd":"sendlog","record":[{record}]}}"#);
            let log = sendlog(ok(&text));
            assert_eq!(log.logindex, -1, "missing logindex -> -1");
            assert_eq!(log.count, None);
            match expect {
                Ok((enrollid, mode, inout, event, temp)) => {
                    assert!(log.rejected.is_empty(), "{record}: {:?}", log.rejected);
                    let r = &log.records[0];
                    assert_eq!(
                        (r.enrollid, r.mode, r.inout, r.event, r.temp),
                        (*enrollid, *mode, *inout, *event, *temp),
                        "{record}"
                    );
                    assert_eq!(r.raw, value(record), "raw kept as received");
                }
                Err(reason) => {
                    assert!(log.records.is_empty(), "{record}");
                    assert_eq!(log.rejected.len(), 1, "{record}");
                    assert_eq!(log.rejected[0].index, 0);
                    assert_eq!(log.rejected[0].reason, *reason, "{record}");
                    assert_eq!(log.rejected[0].raw, value(record));
                }
            }
        }
    }

    #[test]
    fn sendlog_batch_of_garbage_keeps_a_few_rejects_and_counts_the_rest() {
        // Found by the tm20_frame fuzz target's allocation bound (fuzz/regressions/tm20_frame/).
        let zeros = vec!["0"; 1000].join(",");
        let text = format!(
            r#"{{"cmd":"sendlog","record":[{zeros},{{"enrollid":1,"time":"2019-07-12 18:18:42"}}]}}"#
        );
        let log = sendlog(ok(&text));
        assert_eq!(log.records.len(), 1);
        assert_eq!(log.rejected.len(), MAX_REJECTED_KEPT);
        assert_eq!(log.rejected_more, 1000 - MAX_REJECTED_KEPT);
        assert_eq!(
            log.rejected.last().map(|r| r.index),
            Some(MAX_REJECTED_KEPT - 1)
        );
        assert_eq!(
            log.ack_count(),
            1001,
            "the ack still counts every record received"
        );
    }

    #[test]
    fn sendlog_batch_keeps_good_records() {
        let text = r#"{"cmd":"sendlog","sn":"","count":"4","logindex":"50","record":[
            {"enrollid":1,"time":"2019-07-12 18:18:42","mode":1,"inout":0,"event":0},
            {"enrollid":-5,"time":"2019-07-12 18:18:44"},
            {"enrollid":2,"time":"2019-07-12 18:18:46","temp":505},
            {"enrollid":3},
        ]}"#;
        let log = sendlog(ok(text));
        assert_eq!(log.sn, None, "empty sn is treated as absent");
        assert_eq!(log.count, Some(4));
        assert_eq!(log.logindex, 50);
        let ids: Vec<i64> = log.records.iter().map(|r| r.enrollid).collect();
        assert_eq!(ids, [1, 2]);
        let rejected: Vec<(usize, &str)> = log
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        assert_eq!(rejected, [(1, "enrollid is negative"), (3, "time missing")]);

        // no `record` at all: an empty batch, and the ack count falls back to 0
        let empty = sendlog(ok(r#"{"cmd":"sendlog","sn":"ZX1"}"#));
        assert!(empty.records.is_empty() && empty.rejected.is_empty());
        assert_eq!(
            (empty.count, empty.logindex, empty.ack_count()),
            (None, -1, 0)
        );

        // without `count`, the ack echoes everything received, rejected included
        let no_count = sendlog(ok(
            r#"{"cmd":"sendlog","record":[{"enrollid":1,"time":"2019-07-12 18:18:42"},{"enrollid":"x"}]}"#,
        ));
        assert_eq!(no_count.ack_count(), 2);
    }

    #[test]
    fn senduser_variants() {
        // (input, enrollid, backupnum, admin, record, name)
        type Row<'a> = (&'a str, i64, i64, i64, Option<&'a str>, Option<&'a str>);
        let cases: &[Row] = &[
            (
                r#"{"cmd":"senduser","sn":"AI07F123456789","enrollid":1,"aliasid":"1","name":"chingzou","backupnum":50,"admin":0,"record":"/9j/4AAQ"}"#,
                1,
                50,
                0,
                Some("/9j/4AAQ"),
                Some("chingzou"),
            ),
            (
                r#"{"cmd":"senduser","sn":"ZX1369063044","enrollid":1,"name":"用户1","backupnum":21,"admin":0,"record":"0000(2)00(3)0000(2)00"}"#,
                1,
                21,
                0,
                Some("0000(2)00(3)0000(2)00"),
                Some("用户1"),
            ),
            (
                r#"{"cmd":"senduser","enrollid":3,"backupnum":0,"record":"c52d54"}"#,
                3,
                0,
                0,
                Some("c52d54"),
                None,
            ),
            (
                r#"{"cmd":"senduser","enrollid":3,"backupnum":11,"record":2352253}"#,
                3,
                11,
                0,
                Some("2352253"),
                None,
            ),
            (
                r#"{"cmd":"senduser","enrollid":3,"backupnum":10,"record":12345678.0}"#,
                3,
                10,
                0,
                Some("12345678"),
                None,
            ),
            (
                r#"{"cmd":"senduser","enrollid":"8","backupnum":"10","admin":"2","record":18446744073709551615}"#,
                8,
                10,
                2,
                Some("18446744073709551615"),
                None,
            ),
            (
                r#"{"cmd":"senduser","enrollid":9,"backupnum":12}"#,
                9,
                12,
                0,
                None,
                None,
            ),
            (
                r#"{"cmd":"senduser","enrollid":9,"backupnum":130,"admin":"130","record":null,"name":5}"#,
                9,
                130,
                130,
                None,
                Some("5"),
            ),
        ];
        for (input, enrollid, backupnum, admin, record, name) in cases {
            let u = senduser(ok(input));
            assert_eq!(
                (u.enrollid, u.backupnum, u.admin),
                (*enrollid, *backupnum, *admin),
                "{input}"
            );
            assert_eq!(u.record.as_deref(), *record, "{input}");
            assert_eq!(u.name.as_deref(), *name, "{input}");
        }
        let u = senduser(ok(cases[0].0));
        assert_eq!(u.sn.as_deref(), Some("AI07F123456789"));
        assert_eq!(u.aliasid.as_deref(), Some("1"));
    }

    #[test]
    fn other_frames() {
        match ok(r#"{"cmd":"sendqrcode","sn":"AI07F123456","record":"123456"}"#) {
            Inbound::SendQrCode(q) => {
                assert_eq!(q.sn.as_deref(), Some("AI07F123456"));
                assert_eq!(q.record, "123456");
            }
            other => panic!("expected SendQrCode, got {other:?}"),
        }
        match ok(r#"{"cmd":"sendqrcode","record":987654321}"#) {
            Inbound::SendQrCode(q) => assert_eq!((q.sn, q.record.as_str()), (None, "987654321")),
            other => panic!("expected SendQrCode, got {other:?}"),
        }

        // (input, expected name, expected sn, is reply)
        let cases: &[(&str, &str, Option<&str>, bool)] = &[
            (r#"{"cmd":"heartbeat"}"#, "heartbeat", None, false),
            (
                r#"{"cmd":" SendPin ","sn":"ZX1","pin":"1234"}"#,
                "sendpin",
                Some("ZX1"),
                false,
            ),
            (
                r#"{"cmd":"sendimage","sn":{"x":1}}"#,
                "sendimage",
                None,
                false,
            ),
            (
                r#"{"ret":"setuserinfo","sn":"ZX1","result":true}"#,
                "setuserinfo",
                Some("ZX1"),
                true,
            ),
            (
                r#"{"ret":"GetUserInfo","result":false,"msg":"can not find the user"}"#,
                "getuserinfo",
                None,
                true,
            ),
            (
                r#"{"ret":"gettime","time":"2022-11-09 19:31:49"}"#,
                "gettime",
                None,
                true,
            ),
            (
                r#"{"ret":"getallusers","sn":"","result":true,"count":1,"index":0}"#,
                "getallusers",
                None,
                true,
            ),
            // both keys: a typed command wins, anything else is a reply
            (
                r#"{"cmd":"sendlog","ret":"sendlog","record":[]}"#,
                "sendlog",
                None,
                false,
            ),
            (
                r#"{"cmd":"getuserinfo","ret":"getuserinfo","result":true}"#,
                "getuserinfo",
                None,
                true,
            ),
            // a blank or non-string `cmd` falls back to `ret`
            (
                r#"{"cmd":"","ret":"opendoor","result":true}"#,
                "opendoor",
                None,
                true,
            ),
            (
                r#"{"cmd":5,"ret":"opendoor","result":true}"#,
                "opendoor",
                None,
                true,
            ),
        ];
        for (input, name, sn, is_reply) in cases {
            let frame = ok(input);
            assert_eq!(frame.name(), *name, "{input}");
            assert_eq!(frame.sn(), *sn, "{input}");
            assert_eq!(matches!(frame, Inbound::Reply { .. }), *is_reply, "{input}");
            if let Inbound::Reply { body, .. } = &frame {
                assert_eq!(*body, value(input), "reply body is the whole object");
            }
        }
    }

    #[test]
    fn getdevlock_reply_with_trailing_commas() {
        let text = r#"{"ret":"getdevlock","sn":"ZX1369063044","result":true,"opendelay":5,"InputAlarm":0,"dayzone":[{"day":[{"section":"00:00~00:00"},{"section":"00:00~00:00"},]},],"weekzone":[{"week":[{"day":0},{"day":0},]},],"nopentime":[{"day":0},]}"#;
        assert!(
            serde_json::from_str::<Value>(text).is_err(),
            "strict JSON rejects it"
        );
        match ok(text) {
            Inbound::Reply { ret, body } => {
                assert_eq!(ret, "getdevlock");
                assert_eq!(body["InputAlarm"], json!(0));
                assert_eq!(
                    body["dayzone"][0]["day"][1]["section"],
                    json!("00:00~00:00")
                );
                assert_eq!(body["nopentime"], json!([{"day": 0}]));
            }
            other => panic!("expected Reply, got {other:?}"),
        }
        // the string ",]" inside a value survives repair
        match ok(r#"{"ret":"getusername","result":true,"record":"a,]b,}",}"#) {
            Inbound::Reply { body, .. } => assert_eq!(body["record"], json!("a,]b,}")),
            other => panic!("expected Reply, got {other:?}"),
        }
    }

    #[test]
    fn malformed_frames() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_obj = format!(
            r#"{{"cmd":"reg","sn":"ZX1","devinfo":{}{}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        let long_sn = format!(r#"{{"cmd":"reg","sn":"{}"}}"#, "A".repeat(65));
        let cases: Vec<(&str, &str, Option<&str>)> = vec![
            ("", "NotJson", None),
            ("   ", "NotJson", None),
            ("{", "NotJson", None),
            (r#"{"cmd":"reg","sn":"ZX1""#, "NotJson", None),
            (r#"{"cmd":"reg",,"sn":"ZX1"}"#, "NotJson", None),
            (r#"{"cmd":"reg"} trailing"#, "NotJson", None),
            ("{\"cmd\":\"reg\",\"sn\":\"\u{1}\"}", "NotJson", None),
            (deep.as_str(), "NotJson", None),
            (deep_obj.as_str(), "NotJson", None),
            ("null", "NotObject", None),
            ("42", "NotObject", None),
            (r#""reg""#, "NotObject", None),
            (r#"[{"cmd":"reg","sn":"ZX1"}]"#, "NotObject", None),
            ("{}", "NoCmdOrRet", None),
            (r#"{"sn":"ZX1","result":true}"#, "NoCmdOrRet", None),
            (r#"{"cmd":null}"#, "NoCmdOrRet", None),
            (r#"{"cmd":"  "}"#, "NoCmdOrRet", None),
            (r#"{"cmd":["reg"]}"#, "NoCmdOrRet", None),
            (r#"{"cmd":"reg"}"#, "BadField", Some("reg")),
            (r#"{"cmd":"reg","sn":""}"#, "BadField", Some("reg")),
            (r#"{"cmd":"reg","sn":"   "}"#, "BadField", Some("reg")),
            (r#"{"cmd":"reg","sn":null}"#, "BadField", Some("reg")),
            (r#"{"cmd":"reg","sn":true}"#, "BadField", Some("reg")),
            (r#"{"cmd":"reg","sn":{"a":1}}"#, "BadField", Some("reg")),
            (r#"{"cmd":"reg","sn":"ZX 1"}"#, "BadField", Some("reg")),
            (r#"{"cmd":"reg","sn":"用户"}"#, "BadField", Some("reg")),
            (r#"{"cmd":"reg","sn":"ZX\n1"}"#, "BadField", Some("reg")),
            (long_sn.as_str(), "BadField", Some("reg")),
            (
                r#"{"cmd":"sendlog","record":{"enrollid":1}}"#,
                "BadField",
                Some("sendlog"),
            ),
            (
                r#"{"cmd":"sendlog","record":"[]"}"#,
                "BadField",
                Some("sendlog"),
            ),
            (
                r#"{"cmd":"sendlog","logindex":"first","record":[]}"#,
                "BadField",
                Some("sendlog"),
            ),
            (
                r#"{"cmd":"sendlog","count":1.5,"record":[]}"#,
                "BadField",
                Some("sendlog"),
            ),
            (
                r#"{"cmd":"senduser","backupnum":0}"#,
                "BadField",
                Some("senduser"),
            ),
            (
                r#"{"cmd":"senduser","enrollid":1}"#,
                "BadField",
                Some("senduser"),
            ),
            (
                r#"{"cmd":"senduser","enrollid":"one","backupnum":0}"#,
                "BadField",
                Some("senduser"),
            ),
            (
                r#"{"cmd":"senduser","enrollid":-1,"backupnum":0}"#,
                "BadField",
                Some("senduser"),
            ),
            (
                r#"{"cmd":"senduser","enrollid":1,"backupnum":0,"admin":"x"}"#,
                "BadField",
                Some("senduser"),
            ),
            (
                r#"{"cmd":"senduser","enrollid":1,"backupnum":0,"record":[1]}"#,
                "BadField",
                Some("senduser"),
            ),
            (r#"{"cmd":"SendQRCode"}"#, "BadField", Some("sendqrcode")),
            (
                r#"{"cmd":"sendqrcode","record":{}}"#,
                "BadField",
                Some("sendqrcode"),
            ),
        ];
        for (input, tag, cmd) in cases {
            let shown: String = input.chars().take(80).collect();
            assert_eq!(error_tag(input), (tag, cmd.map(str::to_owned)), "{shown}");
        }
        // sn of exactly 64 characters is fine
        let max_sn = "B".repeat(MAX_SN_LEN);
        let r = reg(ok(&format!(r#"{{"cmd":"reg","sn":"{max_sn}"}}"#)));
        assert_eq!(r.sn, max_sn);
    }

    #[test]
    fn error_messages() {
        let e = FrameError::bad("reg", "sn missing");
        assert_eq!(e.to_string(), "`reg`: sn missing");
        assert_eq!(e.cmd(), Some("reg"));
        assert_eq!(FrameError::NotObject.cmd(), None);
        assert_eq!(
            FrameError::NoCmdOrRet.to_string(),
            "frame has neither `cmd` nor `ret`"
        );
        match parse_frame("nope") {
            Err(e @ FrameError::NotJson(_)) => {
                assert!(e.to_string().starts_with("frame is not valid JSON: "))
            }
            other => panic!("expected NotJson, got {other:?}"),
        }
    }

    #[test]
    fn no_panic_on_prefixes_and_odd_input() {
        let frames = [
            r#"{"cmd":"sendlog","sn":"AI07F1","count":2,"logindex":0,"record":[{"enrollid":"1","aliasid":"1","name":"用户1","time":"2023-01-10 16:04:21","mode":8,"inout":0,"event":0,"temp":365,"note":{"msg":"a\"b,]"}},{"enrollid":-1},]}"#,
            r#"{"cmd":"senduser","sn":"AI07F1","enrollid":1,"backupnum":11,"admin":"0","record":2352253}"#,
            r#"{"ret":"getdevlock","result":true,"dayzone":[{"day":[{"section":"00:00~00:00"},]},]}"#,
        ];
        for frame in frames {
            for (i, _) in frame.char_indices() {
                let prefix = frame.get(..i).unwrap_or_default();
                let _ = parse_frame(prefix);
                let _ = repair_json(prefix);
            }
            assert!(parse_frame(frame).is_ok(), "{frame}");
        }
        let odd = [
            "\u{feff}{}",
            "\0",
            r#"{"cmd":"reg","sn":1e308}"#,
            r#"{"cmd":"sendlog","record":[{"enrollid":1e308,"time":"2021-01-01 00:00:00","temp":1e308}]}"#,
            r#"{"cmd":"sendlog","record":[{"enrollid":-9223372036854775808,"time":"2021-01-01 00:00:00"}]}"#,
            r#"{"cmd":"sendlog","record":[{"enrollid":"NaN","time":"2021-01-01 00:00:00","temp":"inf"}]}"#,
            r#"{"cmd":"\ud800"}"#,
            r#"{"cmd":"ＲＥＧ","sn":"x"}"#,
            ",,,,]]]]}}}}",
            // NotJson normally; parses if a dependency turns on serde_json/arbitrary_precision
            r#"{"cmd":"sendlog","count":1e400,"record":[{"enrollid":1e400,"time":"2021-01-01 00:00:00"}]}"#,
        ];
        for text in odd {
            let _ = parse_frame(text);
        }
    }

    #[test]
    fn device_time_table() {
        let t = dt(2023, 1, 10, 16, 4, 21);
        let cases: &[(&str, Option<NaiveDateTime>)] = &[
            ("2023-01-10 16:04:21", Some(t)),
            (" 2023-01-10 16:04:21 ", Some(t)),
            ("2023-01-10T16:04:21", Some(t)),
            ("2023/01/10 16:04:21", Some(t)),
            ("2023-01-10", None),
            ("2023-01-10 16:04", None),
            ("2023-13-10 16:04:21", None),
            ("2023-01-10 25:04:21", None),
            ("10/01/2023 16:04:21", None),
            ("", None),
            ("用户", None),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_device_time(input), *expected, "{input:?}");
        }
        assert_eq!(format_cloudtime(t), "2023-01-10 16:04:21");
        let with_millis = t + chrono::Duration::milliseconds(999);
        assert_eq!(format_cloudtime(with_millis), "2023-01-10 16:04:21");
        assert_eq!(parse_device_time(&format_cloudtime(t)), Some(t));
    }

    #[test]
    fn reply_builders_exact_json() {
        let t = dt(2016, 3, 25, 13, 49, 30);
        let cases: Vec<(String, &str)> = vec![
            (
                reg_accepted(t),
                r#"{"ret":"reg","result":true,"cloudtime":"2016-03-25 13:49:30"}"#,
            ),
            (
                reg_rejected("did not reg"),
                r#"{"ret":"reg","result":false,"reason":"did not reg"}"#,
            ),
            (
                sendlog_ack(Some(43), 0, t),
                r#"{"ret":"sendlog","result":true,"count":43,"logindex":0,"cloudtime":"2016-03-25 13:49:30"}"#,
            ),
            (
                sendlog_ack(None, -1, t),
                r#"{"ret":"sendlog","result":true,"logindex":-1,"cloudtime":"2016-03-25 13:49:30"}"#,
            ),
            (
                senduser_ack(1, 50, t),
                r#"{"ret":"senduser","result":true,"enrollid":1,"backupnum":50,"cloudtime":"2016-03-25 13:49:30"}"#,
            ),
            (
                result_false("sendlog", 1),
                r#"{"ret":"sendlog","result":false,"reason":1}"#,
            ),
            (
                result_false("reg", "Insufficient balance!"),
                r#"{"ret":"reg","result":false,"reason":"Insufficient balance!"}"#,
            ),
            (
                result_false("x", "quote \" and ,]"),
                r#"{"ret":"x","result":false,"reason":"quote \" and ,]"}"#,
            ),
            (
                result_true("heartbeat"),
                r#"{"ret":"heartbeat","result":true}"#,
            ),
            (
                result_true("sendqrcode"),
                r#"{"ret":"sendqrcode","result":true}"#,
            ),
        ];
        for (got, expected) in &cases {
            // Value equality: key order free, but 1 != "1" and true != "true".
            assert_eq!(value(got), value(expected), "{got}");
        }
        // non-string map keys cannot be JSON; the reason degrades to null
        let odd: std::collections::BTreeMap<(i32, i32), i32> = [((1, 2), 3)].into_iter().collect();
        assert_eq!(
            value(&result_false("x", odd)),
            json!({"ret":"x","result":false,"reason":null})
        );

        // SendLog::ack echoes the received count and logindex
        let log = sendlog(ok(
            r#"{"cmd":"sendlog","count":1,"logindex":7,"record":[]}"#,
        ));
        assert_eq!(
            value(&log.ack(t)),
            json!({"ret":"sendlog","result":true,"count":1,"logindex":7,"cloudtime":"2016-03-25 13:49:30"})
        );
    }

    fn corpus_path() -> Option<PathBuf> {
        let relative = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/protocols/tm20-corpus/terminal_frames.jsonl");
        let absolute = PathBuf::from("/work/shared/protocols/tm20-corpus/terminal_frames.jsonl");
        [relative, absolute].into_iter().find(|p| p.is_file())
    }

    #[test]
    fn corpus_frames() {
        let Some(path) = corpus_path() else {
            return; // corpus not checked out: nothing to test
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => panic!("cannot read {}: {e}", path.display()),
        };
        let (mut complete, mut truncated_err, mut truncated_ok) = (0, 0, 0);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let entry = value(line);
            let id = entry["id"].as_str().unwrap_or("?").to_owned();
            let raw = entry["raw"].as_str().unwrap_or_default().to_owned();
            let outcome = match std::panic::catch_unwind(|| parse_frame(&raw)) {
                Ok(outcome) => outcome,
                Err(_) => panic!("{id}: parse_frame panicked"),
            };
            if entry["parses_as_json"] == json!(true) {
                complete += 1;
                let frame = match outcome {
                    Ok(frame) => frame,
                    Err(e) => panic!("{id}: complete frame failed: {e}"),
                };
                assert_eq!(Some(frame.name()), entry["name"].as_str(), "{id}");
                assert_eq!(
                    matches!(frame, Inbound::Reply { .. }),
                    entry["kind"] == json!("ret"),
                    "{id}"
                );
                if let Inbound::SendLog(log) = &frame {
                    assert!(log.rejected.is_empty(), "{id}: {:?}", log.rejected);
                }
            } else if outcome.is_err() {
                truncated_err += 1;
            } else {
                truncated_ok += 1;
            }
        }
        assert!(complete > 0, "corpus has complete frames");
        eprintln!(
            "corpus {}: {complete} complete frames parsed; truncated: {truncated_err} errored, {truncated_ok} parsed",
            path.display()
        );
    }
}
