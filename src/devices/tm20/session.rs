//! One actor per terminal socket.
//!
//! Lifecycle: the socket connects → only `reg` is accepted until it succeeds → the session registers with the
//! [`Registry`] under the terminal's serial number → frames are answered, commands run one at a time → the
//! socket closes (peer close, timeout, replacement, bad input) → the session unregisters with its own
//! connection id and fails whatever commands it still held.
//!
//! Frames are handled strictly in order: device data is written inside `ctx.wait`, which pauses the frame
//! stream until the database has committed, so an ack is never sent for data that is not stored, and a flood
//! of frames pushes back on the socket instead of piling up in memory.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_ws::CloseCode;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::commands::{Exchange, ReplyStep};
use super::protocol::{self, Inbound, Reg, SendLog, SendUser};
use crate::config::Settings;
use crate::devices::transport::{OutFrame, Outbox, WsEvent, WsFailure};
use crate::devices::{CloseSession, Drain};
use crate::registry::{ConnId, ConnectionInfo, DeviceAddr, Entry, Register, Registry, Unregister};
use crate::store::{Store, UserUpsert};

/// Malformed frames in a row after which the socket is closed: a terminal that keeps sending garbage is
/// broken or hostile, and answering it forever only costs us.
const MAX_CONSECUTIVE_BAD_FRAMES: u32 = 50;

/// What every session needs from the node; shared, lives as long as the server.
pub struct SessionDeps {
    pub store: Store,
    pub registry: Addr<Registry>,
    /// The registry's read side: a device's session without a message to the registry.
    pub sessions: crate::registry::Sessions,
    pub settings: Arc<Settings>,
    pub events: crate::events::EventBus,
}

enum Phase {
    AwaitingReg,
    Registered {
        sn: String,
        /// `None` only when the terminal's row could not be written at `reg`; retried before the next write.
        terminal_id: Option<i32>,
    },
}

pub struct Tm20Session {
    /// Every log line of this socket carries its kind, node and (once known) serial number.
    span: tracing::Span,
    conn_id: ConnId,
    remote_addr: String,
    connected_at: DateTime<Utc>,
    outbox: Outbox,
    deps: Arc<SessionDeps>,
    phase: Phase,
    last_frame: Instant,
    /// Set on every frame, cleared when `last_seen` is written (on the heartbeat tick, not per frame).
    seen_since_persist: bool,
    bad_frames: u32,
    queue: VecDeque<QueuedCommand>,
    in_flight: Option<InFlight>,
    /// Set by a graceful shutdown: no new commands, close once idle.
    draining: bool,
    /// The close frame is queued; nothing more is sent.
    closing: bool,
    /// Why the socket ended, for `gatehouse_disconnects_total` (the peer closed it unless we did).
    disconnect_reason: &'static str,
}

/// A command waiting for its turn or in flight; `progress` reports it to the dispatcher.
pub struct QueuedCommand {
    pub id: Uuid,
    pub exchange: Exchange,
    pub progress: super::dispatch::Progress,
}

struct InFlight {
    command: QueuedCommand,
    timer: SpawnHandle,
}

pub use crate::devices::{CommandEvent, CommandOutcome};

impl QueuedCommand {
    fn report(&mut self, event: CommandEvent) {
        self.progress.report(event);
    }
}

/// Queues a command on this terminal; answers the terminal's row id when the session knows it (saves the
/// REST path a database read or another message per command).
#[derive(Message)]
#[rtype(result = "Result<Option<i32>, CommandRejected>")]
pub struct SendCommand(pub QueuedCommand);

#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum CommandRejected {
    #[error("the terminal's command queue is full")]
    QueueFull,
    #[error("the terminal is not registered")]
    NotRegistered,
}

impl Tm20Session {
    pub fn new(deps: Arc<SessionDeps>, outbox: Outbox, remote_addr: String) -> Self {
        Tm20Session {
            span: tracing::info_span!("device", kind = super::DEVICE_KIND, sn = tracing::field::Empty, node = %deps.events.node()),
            conn_id: crate::devices::next_conn_id(),
            remote_addr,
            connected_at: Utc::now(),
            outbox,
            deps,
            phase: Phase::AwaitingReg,
            last_frame: Instant::now(),
            seen_since_persist: false,
            bad_frames: 0,
            queue: VecDeque::new(),
            in_flight: None,
            draining: false,
            closing: false,
            disconnect_reason: "closed",
        }
    }

    fn sn(&self) -> Option<&str> {
        match &self.phase {
            Phase::Registered { sn, .. } => Some(sn),
            Phase::AwaitingReg => None,
        }
    }

    /// Queues a text frame; a device too slow to read its answers is closed rather than buffered.
    fn send_text(&mut self, text: String, ctx: &mut Context<Self>) -> bool {
        match self.outbox.text(text) {
            Ok(()) => {
                metrics::counter!("gatehouse_frames_out_total", "kind" => super::DEVICE_KIND)
                    .increment(1);
                true
            }
            Err(err) => {
                tracing::warn!(sn = ?self.sn(), conn_id = self.conn_id, %err, "closing a terminal that does not read");
                ctx.stop();
                false
            }
        }
    }

    fn close(&mut self, ctx: &mut Context<Self>, code: CloseCode, reason: &str) {
        if std::mem::replace(&mut self.closing, true) {
            return;
        }
        self.disconnect_reason = crate::devices::disconnect_reason(code, reason);
        tracing::info!(sn = ?self.sn(), conn_id = self.conn_id, reason, "closing terminal socket");
        let _ = self.outbox.send(OutFrame::Close(code, reason.to_owned()));
        ctx.stop();
    }

    fn on_text(&mut self, text: String, ctx: &mut Context<Self>) {
        let frame = match protocol::parse_frame(&text) {
            Ok(frame) => {
                self.bad_frames = 0;
                frame
            }
            Err(err) => {
                self.bad_frames += 1;
                metrics::counter!("gatehouse_bad_frames_total", "kind" => super::DEVICE_KIND)
                    .increment(1);
                let cmd = err.cmd().map(str::to_owned).or_else(|| sniff_cmd(&text));
                tracing::warn!(sn = ?self.sn(), conn_id = self.conn_id, %err, cmd = ?cmd, bytes = text.len(), "malformed terminal frame");
                if let Some(cmd) = cmd {
                    // The terminal keeps (and later re-sends) whatever we answer `result:false` to.
                    let answer = protocol::result_false(&cmd, reason_for(&cmd, &err.to_string()));
                    self.send_text(answer, ctx);
                }
                if self.bad_frames >= MAX_CONSECUTIVE_BAD_FRAMES {
                    self.close(ctx, CloseCode::Policy, "too many malformed frames");
                }
                return;
            }
        };
        match (&self.phase, frame) {
            (_, Inbound::Reg(reg)) => self.on_reg(reg, ctx),
            (Phase::AwaitingReg, Inbound::Reply { ret, .. }) => {
                tracing::debug!(conn_id = self.conn_id, ret, "reply before reg dropped");
            }
            (Phase::AwaitingReg, other) => {
                let cmd = inbound_cmd(&other).unwrap_or("unknown").to_owned();
                self.send_text(
                    protocol::result_false(&cmd, "not registered: send reg first"),
                    ctx,
                );
            }
            (Phase::Registered { .. }, Inbound::SendLog(batch)) => self.on_sendlog(batch, ctx),
            (Phase::Registered { .. }, Inbound::SendUser(user)) => self.on_senduser(user, ctx),
            (Phase::Registered { .. }, Inbound::SendQrCode(qr)) => {
                // Gatehouse keeps no QR rules yet: deny politely so the terminal shows a message, not a hang.
                tracing::info!(sn = ?self.sn(), code = %qr.record, "QR code scanned; no rule grants access");
                let answer = serde_json::json!({
                    "ret": "sendqrcode", "result": true, "access": 0, "message": "access denied"
                });
                self.send_text(answer.to_string(), ctx);
            }
            (Phase::Registered { .. }, Inbound::OtherCmd { cmd, .. }) => {
                self.send_text(protocol::result_true(&cmd), ctx);
            }
            (Phase::Registered { .. }, Inbound::Reply { ret, body }) => {
                self.on_reply(ret, body, ctx)
            }
        }
    }

    fn on_reg(&mut self, reg: Reg, ctx: &mut Context<Self>) {
        if let Phase::Registered { sn, .. } = &self.phase {
            if *sn == reg.sn {
                // Some firmware re-sends reg on a live socket (tm20.md §1.2): answer it again.
                let answer = protocol::reg_accepted(self.deps.settings.device_now());
                self.send_text(answer, ctx);
            } else {
                self.close(
                    ctx,
                    CloseCode::Policy,
                    "serial number changed on a live socket",
                );
            }
            return;
        }
        let deps = Arc::clone(&self.deps);
        let outbox = self.outbox.clone();
        let sn = reg.sn.clone();
        let work = async move {
            let existing = deps.store.terminal_by_sn(&reg.sn).await?;
            if existing.as_ref().is_some_and(|t| !t.is_active) {
                return Ok(RegDecision::Rejected("terminal is disabled"));
            }
            if deps.settings.tm20_require_whitelist
                && !existing.as_ref().is_some_and(|t| t.is_whitelisted)
            {
                return Ok(RegDecision::Rejected("terminal is not whitelisted"));
            }
            // Answer before writing, as terminals expect (tm20.md §1.7): a slow database must not make the
            // terminal give up on the registration.
            let _ = outbox.text(protocol::reg_accepted(deps.settings.device_now()));
            if let Some(known) = existing {
                // A known terminal is reachable at once; refreshing its model, firmware and devinfo need
                // not hold up commands (under write load that took seconds).
                let store = deps.store.clone();
                actix_rt::spawn(async move {
                    let (model, firmware) = (reg.model(), reg.firmware());
                    if let Err(err) = store
                        .record_registration(&reg.sn, model, firmware, reg.devinfo)
                        .await
                    {
                        tracing::warn!(sn = %reg.sn, %err, "could not refresh the terminal's registration data");
                    }
                });
                return Ok(RegDecision::Accepted(Some(known.id)));
            }
            // The devinfo moves into the row (a terminal's is a map of a few dozen entries: cloning it was a
            // measurable part of a registration).
            let (model, firmware) = (reg.model(), reg.firmware());
            let row = deps
                .store
                .record_registration(&reg.sn, model, firmware, reg.devinfo)
                .await;
            Ok::<_, crate::store::StoreError>(match row {
                Ok(id) => RegDecision::Accepted(Some(id)),
                Err(err) => {
                    tracing::error!(sn = %reg.sn, %err, "could not record a registration; will retry on the next write");
                    RegDecision::Accepted(None)
                }
            })
        };
        ctx.wait(work.into_actor(self).map(move |decision, act, ctx| match decision {
            Ok(RegDecision::Accepted(terminal_id)) => {
                act.span.record("sn", sn.as_str());
                let _span = act.span.clone().entered();
                tracing::info!(sn = %sn, conn_id = act.conn_id, remote = %act.remote_addr, "terminal registered");
                act.phase = Phase::Registered {
                    sn: sn.clone(),
                    terminal_id,
                };
                act.deps.registry.do_send(Register(Entry {
                    conn_id: act.conn_id,
                    addr: DeviceAddr::Tm20(ctx.address()),
                    info: ConnectionInfo {
                        protocol: "tm20",
                        sn: sn.clone(),
                        remote_addr: act.remote_addr.clone(),
                        connected_at: act.connected_at,
                    },
                }));
                act.deps.events.publish(
                    "online",
                    Some(&sn),
                    Some(super::DEVICE_KIND),
                    serde_json::json!({"remote_addr": act.remote_addr}),
                );
                // Commands queued while the terminal was away go out now (tm20.md §1.2: after the new reg).
                if let Some(terminal_id) = terminal_id {
                    let target = crate::delivery::Target::Tm20 {
                        addr: ctx.address(),
                        terminal_id,
                    };
                    actix_rt::spawn(crate::delivery::deliver(Arc::clone(&act.deps), sn, target));
                }
            }
            Ok(RegDecision::Rejected(reason)) => {
                tracing::info!(sn = %sn, reason, "registration rejected");
                act.send_text(protocol::reg_rejected(reason), ctx);
                act.close(ctx, CloseCode::Policy, reason);
            }
            Err(err) => {
                tracing::error!(sn = %sn, %err, "registration failed on the database");
                act.send_text(protocol::reg_rejected("server busy, retry later"), ctx);
                act.close(ctx, CloseCode::Error, "server error");
            }
        }));
    }

    /// The terminal's row id, creating the row if `reg` could not.
    fn terminal_id_future(
        &self,
    ) -> impl std::future::Future<Output = Result<i32, crate::store::StoreError>> + 'static {
        let deps = Arc::clone(&self.deps);
        let (sn, known) = match &self.phase {
            Phase::Registered { sn, terminal_id } => (sn.clone(), *terminal_id),
            Phase::AwaitingReg => (String::new(), None),
        };
        async move {
            match known {
                Some(id) => Ok(id),
                None => Ok(deps
                    .store
                    .record_registration(&sn, None, None, None)
                    .await?),
            }
        }
    }

    fn remember_terminal_id(&mut self, id: i32) {
        if let Phase::Registered { terminal_id, .. } = &mut self.phase {
            *terminal_id = Some(id);
        }
    }

    fn on_sendlog(&mut self, batch: SendLog, ctx: &mut Context<Self>) {
        for rejected in &batch.rejected {
            tracing::warn!(sn = ?self.sn(), index = rejected.index, reason = %rejected.reason, raw = %rejected.raw, "unusable attendance record skipped");
        }
        if batch.rejected_more > 0 {
            tracing::warn!(sn = ?self.sn(), count = batch.rejected_more, "more unusable attendance records skipped");
        }
        let terminal_id = self.terminal_id_future();
        let store = self.deps.store.clone();
        let (count, logindex) = (Some(batch.ack_count()), batch.logindex);
        let records = batch.records;
        let work = async move {
            let id = terminal_id.await?;
            let inserted = crate::telemetry_metrics::db_write(
                "attendance_logs",
                store.insert_logs(id, &records),
            )
            .await?;
            metrics::counter!("gatehouse_attendance_records_total").increment(inserted);
            Ok::<_, crate::store::StoreError>((id, inserted, records))
        };
        ctx.wait(work.into_actor(self).map(move |result, act, ctx| {
            let answer = match result {
                Ok((id, inserted, records)) => {
                    act.remember_terminal_id(id);
                    tracing::debug!(sn = ?act.sn(), received = records.len(), inserted, logindex, "attendance batch committed");
                    act.publish_attendance(&records);
                    protocol::sendlog_ack(count, logindex, act.deps.settings.device_now())
                }
                Err(err) => {
                    // Not stored, so not acknowledged: the terminal keeps the batch and re-sends it.
                    tracing::error!(sn = ?act.sn(), %err, "attendance batch not stored");
                    protocol::result_false("sendlog", 1)
                }
            };
            act.send_text(answer, ctx);
        }));
    }

    /// One `attendance` event per committed record (without the snapshot photo, which can be 150 KB).
    fn publish_attendance(&self, records: &[super::protocol::LogRecord]) {
        let Some(sn) = self.sn() else {
            return;
        };
        for record in records {
            self.deps
                .events
                .publish_with("attendance", Some(sn), Some(super::DEVICE_KIND), || {
                    let mut data = record.raw.clone();
                    if let Some(fields) = data.as_object_mut() {
                        fields.remove("image");
                    }
                    data
                });
        }
    }

    fn on_senduser(&mut self, user: SendUser, ctx: &mut Context<Self>) {
        let terminal_id = self.terminal_id_future();
        let store = self.deps.store.clone();
        let (enrollid, backupnum, name) = (user.enrollid, user.backupnum, user.name.clone());
        let upsert = UserUpsert {
            enrollid: user.enrollid,
            name: user.name,
            admin: i32::try_from(user.admin).ok(),
            backupnum: i32::try_from(user.backupnum).ok(),
            record: user.record,
        };
        let work = async move {
            let id = terminal_id.await?;
            store.upsert_user_credential(id, upsert).await?;
            Ok::<_, crate::store::StoreError>(id)
        };
        ctx.wait(work.into_actor(self).map(move |result, act, ctx| {
            let answer = match result {
                Ok(id) => {
                    act.remember_terminal_id(id);
                    if let Some(sn) = act.sn() {
                        act.deps.events.publish(
                            "enrollment",
                            Some(sn),
                            Some(super::DEVICE_KIND),
                            serde_json::json!({"enrollid": enrollid, "backupnum": backupnum, "name": name}),
                        );
                    }
                    protocol::senduser_ack(enrollid, backupnum, act.deps.settings.device_now())
                }
                Err(err) => {
                    tracing::error!(sn = ?act.sn(), %err, enrollid, "enrolment not stored");
                    protocol::result_false("senduser", 1)
                }
            };
            act.send_text(answer, ctx);
        }));
    }

    fn on_reply(&mut self, ret: String, body: Value, ctx: &mut Context<Self>) {
        let matches = self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.command.exchange.command().name() == ret);
        if !matches {
            // No request id in the protocol: a reply is matched by name only, so a late or unsolicited one
            // cannot be attributed to anything.
            tracing::info!(sn = ?self.sn(), ret, "reply matches no command in flight; dropped");
            return;
        }
        let Some(mut flight) = self.in_flight.take() else {
            return;
        };
        ctx.cancel_future(flight.timer);
        match flight.command.exchange.on_reply(body) {
            ReplyStep::Send(next) => {
                if self.send_text(next.to_string(), ctx) {
                    flight.timer = self.arm_timeout(ctx);
                    self.in_flight = Some(flight);
                } else {
                    flight
                        .command
                        .report(CommandEvent::Finished(CommandOutcome::Disconnected));
                }
            }
            ReplyStep::Done(reply) => {
                flight
                    .command
                    .report(CommandEvent::Finished(CommandOutcome::Replied(reply)));
                self.pump(ctx);
            }
        }
    }

    fn arm_timeout(&self, ctx: &mut Context<Self>) -> SpawnHandle {
        ctx.run_later(self.deps.settings.command_timeout, |act, ctx| {
            if let Some(mut flight) = act.in_flight.take() {
                tracing::warn!(sn = ?act.sn(), command = flight.command.exchange.command().name(), "terminal did not answer in time");
                flight
                    .command
                    .report(CommandEvent::Finished(CommandOutcome::TimedOut));
            }
            act.pump(ctx);
        })
    }

    /// Starts the next queued command when none is in flight (the protocol has no request id, so only one
    /// may be outstanding per terminal).
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while self.in_flight.is_none() {
            let Some(mut command) = self.queue.pop_front() else {
                self.close_if_drained(ctx);
                return;
            };
            let frame = command.exchange.first_frame().to_string();
            if !self.send_text(frame, ctx) {
                command.report(CommandEvent::Finished(CommandOutcome::Disconnected));
                return;
            }
            command.report(CommandEvent::Sent(Utc::now()));
            if command.exchange.command().expects_reply() {
                let timer = self.arm_timeout(ctx);
                self.in_flight = Some(InFlight { command, timer });
            } else {
                command.report(CommandEvent::Finished(CommandOutcome::Delivered));
            }
        }
    }

    fn close_if_drained(&mut self, ctx: &mut Context<Self>) {
        if self.draining && self.in_flight.is_none() && self.queue.is_empty() {
            self.close(ctx, CloseCode::Away, "server shutting down");
        }
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.last_frame.elapsed() > self.deps.settings.tm20_connection_timeout {
            self.close(ctx, CloseCode::Normal, "connection timeout: no traffic");
            return;
        }
        let _ = self.outbox.send(OutFrame::Ping);
        self.persist_last_seen();
    }

    fn persist_last_seen(&mut self) {
        let Phase::Registered {
            terminal_id: Some(id),
            ..
        } = self.phase
        else {
            return;
        };
        if !std::mem::take(&mut self.seen_since_persist) {
            return;
        }
        let seen =
            Utc::now() - chrono::Duration::from_std(self.last_frame.elapsed()).unwrap_or_default();
        let store = self.deps.store.clone();
        actix_rt::spawn(async move {
            if let Err(err) = store.touch_terminal(id, seen).await {
                tracing::warn!(terminal_id = id, %err, "could not update last_seen");
            }
        });
    }
}

enum RegDecision {
    Accepted(Option<i32>),
    Rejected(&'static str),
}

impl Actor for Tm20Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        let settings = &self.deps.settings;
        ctx.run_interval(settings.tm20_heartbeat_interval, |act, ctx| {
            act.heartbeat(ctx)
        });
        // A socket that never registers is closed even if it keeps talking.
        ctx.run_later(settings.tm20_connection_timeout, |act, ctx| {
            if matches!(act.phase, Phase::AwaitingReg) {
                act.close(ctx, CloseCode::Policy, "no reg received");
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        if matches!(self.phase, Phase::Registered { .. }) {
            metrics::counter!("gatehouse_disconnects_total", "kind" => super::DEVICE_KIND, "reason" => self.disconnect_reason)
                .increment(1);
        }
        if let Phase::Registered { sn, .. } = &self.phase {
            tracing::info!(sn = %sn, conn_id = self.conn_id, "terminal disconnected");
            self.deps.events.publish(
                "offline",
                Some(sn),
                Some(super::DEVICE_KIND),
                serde_json::json!({}),
            );
            self.deps.registry.do_send(Unregister {
                sn: sn.clone(),
                conn_id: self.conn_id,
            });
        }
        if let Some(mut flight) = self.in_flight.take() {
            flight
                .command
                .report(CommandEvent::Finished(CommandOutcome::Disconnected));
        }
        for mut command in self.queue.drain(..) {
            command.report(CommandEvent::Finished(CommandOutcome::Disconnected));
        }
        self.seen_since_persist = true;
        self.persist_last_seen();
    }
}

impl StreamHandler<WsEvent> for Tm20Session {
    fn handle(&mut self, event: WsEvent, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.last_frame = Instant::now();
        self.seen_since_persist = true;
        metrics::counter!("gatehouse_frames_in_total", "kind" => super::DEVICE_KIND).increment(1);
        match event {
            WsEvent::Text(text) => self.on_text(text, ctx),
            WsEvent::Binary(bytes) => {
                tracing::warn!(sn = ?self.sn(), len = bytes.len(), "binary frame ignored: the protocol is JSON text");
            }
            WsEvent::Ping(bytes) => {
                let _ = self.outbox.send(OutFrame::Pong(bytes));
            }
            WsEvent::Pong => {}
            WsEvent::Close(reason) => {
                tracing::debug!(sn = ?self.sn(), ?reason, "terminal closed its socket");
                ctx.stop();
            }
            WsEvent::Error(WsFailure::TooLarge) => self.close(
                ctx,
                CloseCode::Size,
                "frame larger than TM20_MAX_FRAME_BYTES",
            ),
            WsEvent::Error(WsFailure::Protocol) => {
                self.close(ctx, CloseCode::Protocol, "websocket protocol error")
            }
            WsEvent::Limited(text) => {
                // Not processed; a terminal re-sends what we answered `result:false` to.
                if let Some(cmd) = sniff_cmd(&text) {
                    let answer = protocol::result_false(
                        &cmd,
                        "rate limit exceeded (DEVICE_FRAME_RATE); slow down",
                    );
                    self.send_text(answer, ctx);
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

impl Handler<SendCommand> for Tm20Session {
    type Result = Result<Option<i32>, CommandRejected>;

    /// Queues a command (bounded) and starts it when the terminal is free.
    fn handle(
        &mut self,
        SendCommand(mut command): SendCommand,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        let _span = self.span.clone().entered();
        if matches!(self.phase, Phase::AwaitingReg) || self.draining {
            command.progress.refuse(CommandRejected::NotRegistered);
            return Err(CommandRejected::NotRegistered);
        }
        if self.queue.len() >= self.deps.settings.command_queue_size {
            command.progress.refuse(CommandRejected::QueueFull);
            return Err(CommandRejected::QueueFull);
        }
        command.progress.arm();
        self.queue.push_back(command);
        self.pump(ctx);
        Ok(match &self.phase {
            Phase::Registered { terminal_id, .. } => *terminal_id,
            Phase::AwaitingReg => None,
        })
    }
}

impl Handler<CloseSession> for Tm20Session {
    type Result = ();

    /// Closes the socket; used when a newer connection replaces this one.
    fn handle(&mut self, msg: CloseSession, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.close(ctx, msg.code, &msg.reason);
    }
}

impl Handler<Drain> for Tm20Session {
    type Result = ();

    /// Closes with 1001 once no command is queued or in flight, or when the grace period ends.
    fn handle(&mut self, msg: Drain, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.draining = true;
        self.close_if_drained(ctx);
        ctx.run_later(msg.grace, |act, ctx| {
            act.close(ctx, CloseCode::Away, "server shutting down");
        });
    }
}

fn inbound_cmd(frame: &Inbound) -> Option<&str> {
    match frame {
        Inbound::Reg(_) => Some("reg"),
        Inbound::SendLog(_) => Some("sendlog"),
        Inbound::SendUser(_) => Some("senduser"),
        Inbound::SendQrCode(_) => Some("sendqrcode"),
        Inbound::OtherCmd { cmd, .. } => Some(cmd),
        Inbound::Reply { .. } => None,
    }
}

/// The vendor answers `sendlog`/`senduser` failures with a numeric reason (tm20.md §1.3.2); others get text.
fn reason_for(cmd: &str, message: &str) -> Value {
    match cmd {
        "sendlog" | "senduser" => Value::from(1),
        _ => Value::from(message),
    }
}

/// Finds `"cmd":"name"` in a frame that is not valid JSON (truncated or broken), so that a broken `sendlog`
/// still gets its `result:false` and is re-sent instead of waiting for an answer that never comes.
pub fn sniff_cmd(text: &str) -> Option<String> {
    let start = text.find("\"cmd\"")? + 5;
    let rest = text[start..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    let name = rest[..end].trim().to_ascii_lowercase();
    let plausible = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    plausible.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::sniff_cmd;

    #[test]
    fn sniffs_the_command_of_broken_frames() {
        let cases = [
            (
                r#"{"cmd":"sendlog","sn":"X","record":[{"enrollid":1,"#,
                Some("sendlog"),
            ),
            (r#"{ "cmd" : "SendUser" , "#, Some("senduser")),
            (r#"{"ret":"getuserlist","#, None),
            (r#"{"cmd":"#, None),
            (r#"{"cmd":"a b"}"#, None),
            (r#"{"cmd":""}"#, None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(sniff_cmd(text).as_deref(), expected, "{text}");
        }
    }
}
