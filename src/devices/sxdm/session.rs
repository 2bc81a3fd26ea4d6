//! One actor per panel socket.
//!
//! A new socket is anonymous: it may only ask for a login random (`/api/auth/random`) and log in
//! (`/api/auth/login`). A wrong random closes the socket; a right one (and, when the operator set one, the
//! right credential) marks the panel authenticated, and only then is it registered with the supervisor, shown
//! online and given calls. Calls from third parties are request envelopes with ids from a counter that starts
//! at the current epoch milliseconds (as the vendor manager's); several may be in flight, each answered by the
//! response with its id or timed out after `SXDM_TIMEOUT`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_ws::CloseCode;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::envelope::{self, Body, Envelope, Request, Response};
use super::{PanelAnswer, PanelCall};
use crate::devices::tm20::session::SessionDeps;
use crate::devices::transport::{OutFrame, Outbox, WsEvent, WsFailure};
use crate::devices::{CloseSession, CommandEvent, CommandOutcome, Drain};
use crate::registry::{ConnId, ConnectionInfo, DeviceAddr, Entry, Register, Unregister};

/// A call for this panel, with the channel its progress is reported on.
pub struct QueuedCall {
    pub call: PanelCall,
    pub events: mpsc::Sender<CommandEvent>,
}

impl QueuedCall {
    fn report(&self, event: CommandEvent) {
        let _ = self.events.try_send(event);
    }
}

struct Pending {
    call: QueuedCall,
    timer: SpawnHandle,
}

/// Sends a call to this panel now.
#[derive(Message)]
#[rtype(result = "Result<(), CallRejected>")]
pub struct SendCall(pub QueuedCall);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallRejected {
    #[error("the panel has too many calls in flight")]
    QueueFull,
    /// Not logged in (yet), or going away.
    #[error("the panel is offline or not authenticated")]
    NotReady,
}

/// The panel's serial number and the time of its last frame (for the status endpoints).
#[derive(Message)]
#[rtype(result = "Option<PanelStatus>")]
pub struct GetStatus;

#[derive(Debug, Clone)]
pub struct PanelStatus {
    pub sn: String,
    /// Milliseconds since the epoch of the panel's last frame (a pong counts).
    pub last_heartbeat_ms: i64,
}

/// The login a panel is in the middle of.
struct Challenge {
    sn: String,
    random: String,
}

pub struct PanelSession {
    /// Every log line of this socket carries its kind, node and (once known) serial number.
    span: tracing::Span,
    conn_id: ConnId,
    remote_addr: String,
    connected_at: DateTime<Utc>,
    outbox: Outbox,
    deps: Arc<SessionDeps>,
    challenge: Option<Challenge>,
    /// Set once the login succeeded (and stays for the life of the socket).
    sn: Option<String>,
    session_id: String,
    /// A login's credential check is running; a second login waits for its answer.
    logging_in: bool,
    last_frame: Instant,
    last_frame_at: DateTime<Utc>,
    seen_since_persist: bool,
    next_request_id: u64,
    pending: HashMap<String, Pending>,
    draining: bool,
    closing: bool,
    disconnect_reason: &'static str,
}

impl PanelSession {
    pub fn new(deps: Arc<SessionDeps>, outbox: Outbox, remote_addr: String) -> Self {
        let now = Utc::now();
        PanelSession {
            span: tracing::info_span!("device", kind = super::DEVICE_KIND, sn = tracing::field::Empty, node = %deps.events.node()),
            conn_id: crate::devices::next_conn_id(),
            remote_addr,
            connected_at: now,
            outbox,
            deps,
            challenge: None,
            sn: None,
            session_id: uuid::Uuid::new_v4().simple().to_string(),
            logging_in: false,
            last_frame: Instant::now(),
            last_frame_at: now,
            seen_since_persist: false,
            next_request_id: u64::try_from(now.timestamp_millis()).unwrap_or(1),
            pending: HashMap::new(),
            draining: false,
            closing: false,
            disconnect_reason: "closed",
        }
    }

    fn label(&self) -> &str {
        self.sn.as_deref().unwrap_or("(not logged in)")
    }

    fn send_text(&mut self, text: String, ctx: &mut Context<Self>) -> bool {
        match self.outbox.text(text) {
            Ok(()) => {
                metrics::counter!("gatehouse_frames_out_total", "kind" => super::DEVICE_KIND)
                    .increment(1);
                true
            }
            Err(err) => {
                tracing::warn!(sn = %self.label(), kind = super::DEVICE_KIND, %err, "closing a panel that does not read");
                ctx.stop();
                false
            }
        }
    }

    fn answer(&mut self, id: &str, status: u16, body: Value, ctx: &mut Context<Self>) {
        self.send_text(envelope::render_response(id, status, &body), ctx);
    }

    fn close(&mut self, ctx: &mut Context<Self>, code: CloseCode, reason: &str) {
        if std::mem::replace(&mut self.closing, true) {
            return;
        }
        self.disconnect_reason = crate::devices::disconnect_reason(code, reason);
        tracing::info!(sn = %self.label(), kind = super::DEVICE_KIND, reason, "closing panel socket");
        let _ = self.outbox.send(OutFrame::Close(code, reason.to_owned()));
        ctx.stop();
    }

    fn on_text(&mut self, text: String, ctx: &mut Context<Self>) {
        match envelope::parse(&text) {
            Ok(Envelope::Request(request)) => self.on_request(request, ctx),
            Ok(Envelope::Response(response)) => self.on_response(response, ctx),
            Err(err) => {
                metrics::counter!("gatehouse_bad_frames_total", "kind" => super::DEVICE_KIND)
                    .increment(1);
                tracing::warn!(sn = %self.label(), kind = super::DEVICE_KIND, %err, "malformed panel frame");
                // Answer with the frame's id when one can be read, so the panel can match the error.
                let id = envelope::peek_id(&text).unwrap_or("0").to_owned();
                self.answer(
                    &id,
                    400,
                    json!({"status": 400, "msg": format!("malformed frame: {err}")}),
                    ctx,
                );
            }
        }
    }

    fn on_request(&mut self, request: Request, ctx: &mut Context<Self>) {
        let path = request
            .path
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        match path.trim_end_matches('/') {
            "/api/auth/random" => self.on_random(request, ctx),
            "/api/auth/login" => self.on_login(request, ctx),
            _ if self.sn.is_none() => self.answer(
                &request.id,
                401,
                json!({"status": 401, "msg": "log in first (/api/auth/random, /api/auth/login)"}),
                ctx,
            ),
            _ => {
                tracing::info!(sn = %self.label(), kind = super::DEVICE_KIND, method = %request.method, path, "panel request for an unknown path");
                self.answer(
                    &request.id,
                    404,
                    json!({"status": 404, "msg": format!("no handler for {path}")}),
                    ctx,
                );
            }
        }
    }

    /// `/api/auth/random {"serial_no"}` → `{"random":"NNNNNN"}`, bound to this socket and serial number.
    fn on_random(&mut self, request: Request, ctx: &mut Context<Self>) {
        let Some(sn) = serial_of(&request.body) else {
            self.answer(
                &request.id,
                400,
                json!({"status": 400, "msg": "serial_no is required (a string of at most 64 printable characters)"}),
                ctx,
            );
            return;
        };
        if let Some(current) = &self.sn {
            if *current != sn {
                self.answer(
                    &request.id,
                    400,
                    json!({"status": 400, "msg": format!("this socket is logged in as {current}")}),
                    ctx,
                );
                return;
            }
        }
        let random = format!("{}", rand::random_range(100_000..1_000_000u32));
        self.challenge = Some(Challenge {
            sn,
            random: random.clone(),
        });
        self.answer(&request.id, 200, json!({"random": random}), ctx);
    }

    /// `/api/auth/login {"serial_no","random","password"}`.
    fn on_login(&mut self, request: Request, ctx: &mut Context<Self>) {
        if self.sn.is_some() {
            // Already logged in: the vendor manager ignores a repeated login; we confirm it instead of leaving
            // the panel waiting.
            let session_id = self.session_id.clone();
            self.answer(
                &request.id,
                200,
                json!({"status": 200, "session_id": session_id}),
                ctx,
            );
            return;
        }
        if self.logging_in {
            self.answer(
                &request.id,
                409,
                json!({"status": 409, "msg": "a login is already being checked"}),
                ctx,
            );
            return;
        }
        let body = match &request.body {
            Body::Json(body) => body.clone(),
            _ => Value::Null,
        };
        let random = body.get("random").and_then(random_text);
        let sn = serial_of(&request.body);
        let Some(challenge) = self.challenge.take() else {
            self.close(
                ctx,
                CloseCode::Policy,
                "login failed: no random was issued on this socket",
            );
            return;
        };
        if random.as_deref() != Some(challenge.random.as_str()) {
            tracing::warn!(sn = %challenge.sn, kind = super::DEVICE_KIND, remote = %self.remote_addr, "panel login with a wrong random");
            self.close(ctx, CloseCode::Policy, "login failed: wrong random");
            return;
        }
        if sn.as_deref().is_some_and(|sn| sn != challenge.sn) {
            self.close(
                ctx,
                CloseCode::Policy,
                "login failed: serial_no differs from the one the random was issued for",
            );
            return;
        }
        let password = body
            .get("password")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        self.logging_in = true;
        let deps = Arc::clone(&self.deps);
        let Challenge { sn, random } = challenge;
        let check = async move {
            let verdict = check_login(&deps, &sn, &random, &password).await;
            (sn, verdict)
        };
        let id = request.id;
        ctx.wait(
            check
                .into_actor(self)
                .map(move |(sn, verdict), act, ctx| {
                    act.logging_in = false;
                    match verdict {
                        Ok(()) => act.logged_in(sn, &id, ctx),
                        Err(LoginRefused::Store(err)) => {
                            tracing::error!(sn = %sn, kind = super::DEVICE_KIND, %err, "could not record a panel login");
                            act.answer(
                                &id,
                                500,
                                json!({"status": 500, "msg": "could not record the login; retry"}),
                                ctx,
                            );
                        }
                        Err(refused) => {
                            tracing::warn!(sn = %sn, kind = super::DEVICE_KIND, reason = %refused, "panel login refused");
                            let (status, reason) = match refused {
                                LoginRefused::NotAllowed => (403, "login refused: panel not allowed"),
                                _ => (401, "login refused: bad credentials"),
                            };
                            act.answer(&id, status, json!({"status": status, "msg": reason}), ctx);
                            act.close(ctx, CloseCode::Policy, reason);
                        }
                    }
                }),
        );
    }

    fn logged_in(&mut self, sn: String, request_id: &str, ctx: &mut Context<Self>) {
        self.span.record("sn", sn.as_str());
        let _span = self.span.clone().entered();
        tracing::info!(sn = %sn, kind = super::DEVICE_KIND, conn_id = self.conn_id, remote = %self.remote_addr, "panel logged in");
        self.sn = Some(sn.clone());
        self.last_frame_at = Utc::now();
        self.deps.registry.do_send(Register(Entry {
            conn_id: self.conn_id,
            addr: DeviceAddr::Sxdm(ctx.address()),
            info: ConnectionInfo {
                protocol: super::PROTOCOL,
                sn: sn.clone(),
                remote_addr: self.remote_addr.clone(),
                connected_at: self.connected_at,
            },
        }));
        self.deps.events.publish(
            "online",
            Some(&sn),
            Some(super::DEVICE_KIND),
            json!({"remote_addr": self.remote_addr}),
        );
        let session_id = self.session_id.clone();
        self.answer(
            request_id,
            200,
            json!({"status": 200, "session_id": session_id}),
            ctx,
        );
        let target = crate::delivery::Target::Sxdm {
            addr: ctx.address(),
        };
        actix_rt::spawn(crate::delivery::deliver(Arc::clone(&self.deps), sn, target));
    }

    fn on_response(&mut self, response: Response, ctx: &mut Context<Self>) {
        let Some(pending) = self.pending.remove(&response.id) else {
            tracing::info!(sn = %self.label(), kind = super::DEVICE_KIND, id = %response.id, "answer matches no call in flight; dropped");
            return;
        };
        ctx.cancel_future(pending.timer);
        let body = match response.body {
            Body::Empty => Value::Null,
            Body::Json(value) => value,
            Body::Text(text) => Value::String(text),
        };
        let answer = PanelAnswer {
            status: response.status,
            body,
        };
        pending
            .call
            .report(CommandEvent::Finished(CommandOutcome::Replied(
                answer_json(&answer),
            )));
        self.close_if_drained(ctx);
    }

    fn close_if_drained(&mut self, ctx: &mut Context<Self>) {
        if self.draining && self.pending.is_empty() {
            self.close(ctx, CloseCode::Away, "server shutting down");
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.last_frame.elapsed() > self.deps.settings.sxdm_session_timeout {
            self.close(ctx, CloseCode::Normal, "session timeout: no traffic");
            return;
        }
        let _ = self.outbox.send(OutFrame::Ping);
        self.persist_last_seen();
    }

    fn persist_last_seen(&mut self) {
        let Some(sn) = self.sn.clone() else {
            return;
        };
        if !std::mem::take(&mut self.seen_since_persist) {
            return;
        }
        let store = self.deps.store.clone();
        let seen = self.last_frame_at;
        actix_rt::spawn(async move {
            if let Err(err) = store.touch_panel(&sn, seen).await {
                tracing::warn!(sn = %sn, kind = super::DEVICE_KIND, %err, "could not update last_seen");
            }
        });
    }
}

/// The JSON a panel's answer is recorded and forwarded as.
pub fn answer_json(answer: &PanelAnswer) -> Value {
    json!({"status": answer.status, "body": answer.body})
}

/// The reverse of [`answer_json`].
pub fn answer_from_json(value: &Value) -> Option<PanelAnswer> {
    let status = u16::try_from(value.get("status")?.as_u64()?).ok()?;
    Some(PanelAnswer {
        status,
        body: value.get("body").cloned().unwrap_or(Value::Null),
    })
}

fn serial_of(body: &Body) -> Option<String> {
    let Body::Json(body) = body else {
        return None;
    };
    body.get("serial_no")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|sn| super::valid_sn(sn))
        .map(str::to_owned)
}

/// The random as a string, whether the panel sent `"583920"` or `583920`.
fn random_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
enum LoginRefused {
    #[error("the panel is not registered, or is deactivated")]
    NotAllowed,
    #[error("the password does not match the panel's secret")]
    BadCredentials,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The credential check (the vendor's `checkClientLogin`).
///
/// - `SXDM_REQUIRE_WHITELIST=1`: the panel must have an admin entry (`PUT /api/panels/{sn}`).
/// - A deactivated panel (`is_active=false`) is refused.
/// - When an admin set a `secret` for the panel, `password` must be either the secret itself or the
///   lower-case hex SHA-256 of `secret ‖ random` (the random this login answers); without a secret any
///   password is accepted, as the vendor manager does.
async fn check_login(
    deps: &SessionDeps,
    sn: &str,
    random: &str,
    password: &str,
) -> Result<(), LoginRefused> {
    let row = deps.store.panel_by_sn(sn).await?;
    let allowed = match &row {
        Some(row) => row.is_active && (row.is_whitelisted || !deps.settings.sxdm_require_whitelist),
        None => !deps.settings.sxdm_require_whitelist,
    };
    if !allowed {
        return Err(LoginRefused::NotAllowed);
    }
    if let Some(secret) = row.as_ref().and_then(|r| r.secret.as_deref()) {
        if !password_matches(secret, random, password) {
            return Err(LoginRefused::BadCredentials);
        }
    }
    deps.store.record_panel_login(sn).await?;
    Ok(())
}

/// See [`check_login`]: the secret itself, or hex(SHA-256(secret ‖ random)). Compared without an early exit.
pub fn password_matches(secret: &str, random: &str, password: &str) -> bool {
    let digest = hex::encode(Sha256::digest(format!("{secret}{random}").as_bytes()));
    let password = password.trim();
    crate::api::constant_time_eq(password.as_bytes(), secret.as_bytes())
        | crate::api::constant_time_eq(password.to_ascii_lowercase().as_bytes(), digest.as_bytes())
}

impl Actor for PanelSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        tracing::info!(kind = super::DEVICE_KIND, conn_id = self.conn_id, remote = %self.remote_addr, "panel socket opened");
        let interval = self
            .deps
            .settings
            .sxdm_ping_interval
            .min(self.deps.settings.sxdm_session_timeout);
        ctx.run_interval(interval, |act, ctx| act.tick(ctx));
        ctx.run_later(self.deps.settings.sxdm_login_timeout, |act, ctx| {
            if act.sn.is_none() {
                act.close(ctx, CloseCode::Policy, "login timeout: no login");
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        metrics::counter!("gatehouse_disconnects_total", "kind" => super::DEVICE_KIND, "reason" => self.disconnect_reason)
            .increment(1);
        for (_, pending) in self.pending.drain() {
            pending
                .call
                .report(CommandEvent::Finished(CommandOutcome::Disconnected));
        }
        let Some(sn) = self.sn.clone() else {
            return;
        };
        tracing::info!(sn = %sn, kind = super::DEVICE_KIND, conn_id = self.conn_id, "panel disconnected");
        self.deps
            .events
            .publish("offline", Some(&sn), Some(super::DEVICE_KIND), json!({}));
        self.deps.registry.do_send(Unregister {
            sn,
            conn_id: self.conn_id,
        });
        self.seen_since_persist = true;
        self.persist_last_seen();
    }
}

impl StreamHandler<WsEvent> for PanelSession {
    fn handle(&mut self, event: WsEvent, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.last_frame = Instant::now();
        self.last_frame_at = Utc::now();
        self.seen_since_persist = true;
        metrics::counter!("gatehouse_frames_in_total", "kind" => super::DEVICE_KIND).increment(1);
        match event {
            WsEvent::Text(text) => self.on_text(text, ctx),
            WsEvent::Binary(_) => {
                metrics::counter!("gatehouse_bad_frames_total", "kind" => super::DEVICE_KIND)
                    .increment(1);
                self.answer(
                    "0",
                    400,
                    json!({"status": 400, "msg": "panel frames are text"}),
                    ctx,
                );
            }
            WsEvent::Ping(bytes) => {
                let _ = self.outbox.send(OutFrame::Pong(bytes));
            }
            WsEvent::Pong => {}
            WsEvent::Close(_) => ctx.stop(),
            WsEvent::Error(WsFailure::TooLarge) => self.close(
                ctx,
                CloseCode::Size,
                "frame larger than SXDM_MAX_FRAME_BYTES",
            ),
            WsEvent::Error(WsFailure::Protocol) => {
                self.close(ctx, CloseCode::Protocol, "websocket protocol error")
            }
            WsEvent::Limited(text) => {
                if let Ok(Envelope::Request(request)) = envelope::parse(&text) {
                    self.answer(
                        &request.id,
                        429,
                        json!({"status": 429, "msg": "rate limit exceeded (DEVICE_FRAME_RATE); slow down"}),
                        ctx,
                    );
                }
            }
            WsEvent::Error(WsFailure::Flood) => self.close(
                ctx,
                CloseCode::Policy,
                "rate limit exceeded: too many frames",
            ),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<SendCall> for PanelSession {
    type Result = Result<(), CallRejected>;

    fn handle(&mut self, SendCall(queued): SendCall, ctx: &mut Context<Self>) -> Self::Result {
        let _span = self.span.clone().entered();
        if self.sn.is_none() || self.draining || self.closing {
            return Err(CallRejected::NotReady);
        }
        if self.pending.len() >= self.deps.settings.command_queue_size {
            return Err(CallRejected::QueueFull);
        }
        let id = self.next_request_id.to_string();
        self.next_request_id += 1;
        let frame = envelope::render_request(
            &id,
            &queued.call.method,
            &queued.call.path,
            queued.call.body.as_ref(),
        );
        if !self.send_text(frame, ctx) {
            return Err(CallRejected::NotReady);
        }
        queued.report(CommandEvent::Sent(Utc::now()));
        let timer_id = id.clone();
        let timer = ctx.run_later(self.deps.settings.sxdm_timeout, move |act, ctx| {
            if let Some(pending) = act.pending.remove(&timer_id) {
                tracing::warn!(sn = %act.label(), kind = super::DEVICE_KIND, call = %pending.call.call.name(), "panel did not answer in time");
                pending
                    .call
                    .report(CommandEvent::Finished(CommandOutcome::TimedOut));
            }
            act.close_if_drained(ctx);
        });
        self.pending.insert(
            id,
            Pending {
                call: queued,
                timer,
            },
        );
        Ok(())
    }
}

impl Handler<GetStatus> for PanelSession {
    type Result = Option<PanelStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let _span = self.span.clone().entered();
        self.sn.clone().map(|sn| PanelStatus {
            sn,
            last_heartbeat_ms: self.last_frame_at.timestamp_millis(),
        })
    }
}

impl Handler<CloseSession> for PanelSession {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.close(ctx, msg.code, &msg.reason);
    }
}

impl Handler<Drain> for PanelSession {
    type Result = ();

    fn handle(&mut self, msg: Drain, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.draining = true;
        self.close_if_drained(ctx);
        ctx.run_later(msg.grace, |act, ctx| {
            act.close(ctx, CloseCode::Away, "server shutting down")
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_the_secret_or_its_hash_with_the_random() {
        let digest = hex::encode(Sha256::digest(b"s3cret583920"));
        assert!(password_matches("s3cret", "583920", "s3cret"));
        assert!(password_matches("s3cret", "583920", &digest));
        assert!(password_matches(
            "s3cret",
            "583920",
            &digest.to_ascii_uppercase()
        ));
        assert!(!password_matches("s3cret", "583921", &digest));
        assert!(!password_matches("s3cret", "583920", "wrong"));
        assert!(!password_matches("s3cret", "583920", ""));
    }

    #[test]
    fn answers_round_trip() {
        let answer = PanelAnswer {
            status: 404,
            body: json!({"msg": "x"}),
        };
        assert_eq!(answer_from_json(&answer_json(&answer)), Some(answer));
    }
}
