//! One actor per charge point socket.
//!
//! Inbound CALLs are answered in order, each after its data is committed (`ctx.wait` holds back the next frame
//! until then), whatever is pending outbound. Outbound CALLs (from REST) run one at a time per charge point:
//! the message id → action pairing is kept for the one in flight, the rest wait in a bounded queue.
//! Every frame in and out goes to the message log (`ocpp_messages`), responses paired with their request.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_ws::CloseCode;
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::actions::CsAction;
use super::framing::{self, ErrorCode, Frame};
use super::messages::{self, CpRequest};
use crate::devices::tm20::session::SessionDeps;
use crate::devices::transport::{OutFrame, Outbox, WsEvent, WsFailure};
use crate::devices::{CloseSession, CommandEvent, CommandOutcome, Drain};
use crate::registry::{ConnId, ConnectionInfo, DeviceAddr, Entry, Register, Unregister};
use crate::store::ocpp::{BootInfo, ChargerField, MeterSample, NewTransaction};
use crate::store::StoreError;

/// Inbound message ids remembered per session to detect a repeated CALL.
const REMEMBERED_IDS: usize = 512;

/// An outbound CALL waiting for its turn or in flight.
pub struct QueuedCall {
    pub id: Uuid,
    pub action: CsAction,
    pub events: mpsc::Sender<CommandEvent>,
}

impl QueuedCall {
    fn report(&self, event: CommandEvent) {
        let _ = self.events.try_send(event);
    }
}

struct InFlight {
    call: QueuedCall,
    message_id: String,
    /// Row of the CALL in the message log, for pairing the answer.
    log_row: Option<i64>,
    timer: SpawnHandle,
}

/// Queues a CALL to this charge point.
#[derive(Message)]
#[rtype(result = "Result<(), CallRejected>")]
pub struct SendCall(pub QueuedCall);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallRejected {
    #[error("the charge point's queue is full")]
    QueueFull,
    #[error("the charge point is going away")]
    Closing,
}

pub struct OcppSession {
    /// Every log line of this socket carries its kind, node and (once known) serial number.
    span: tracing::Span,
    conn_id: ConnId,
    charge_point_id: String,
    charger_id: i32,
    remote_addr: String,
    connected_at: DateTime<Utc>,
    outbox: Outbox,
    deps: Arc<SessionDeps>,
    last_frame: Instant,
    seen_since_persist: bool,
    recent_ids: VecDeque<String>,
    recent_set: HashSet<String>,
    queue: VecDeque<QueuedCall>,
    in_flight: Option<InFlight>,
    /// Registration status last answered to a BootNotification (None before any boot on this socket).
    boot_status: Option<String>,
    draining: bool,
    closing: bool,
    /// Queued actions are delivered once per connection, after the first CALL the charger sent.
    delivery_started: bool,
    /// Why the socket ended, for `gatehouse_disconnects_total`.
    disconnect_reason: &'static str,
}

impl OcppSession {
    pub fn new(
        deps: Arc<SessionDeps>,
        outbox: Outbox,
        remote_addr: String,
        charge_point_id: String,
        charger_id: i32,
    ) -> Self {
        OcppSession {
            span: tracing::info_span!("device", kind = super::DEVICE_KIND, sn = tracing::field::Empty, node = %deps.events.node()),
            conn_id: crate::devices::next_conn_id(),
            charge_point_id,
            charger_id,
            remote_addr,
            connected_at: Utc::now(),
            outbox,
            deps,
            last_frame: Instant::now(),
            seen_since_persist: true,
            recent_ids: VecDeque::new(),
            recent_set: HashSet::new(),
            queue: VecDeque::new(),
            in_flight: None,
            boot_status: None,
            draining: false,
            closing: false,
            delivery_started: false,
            disconnect_reason: "closed",
        }
    }

    fn send_text(&mut self, text: String, ctx: &mut Context<Self>) -> bool {
        match self.outbox.text(text) {
            Ok(()) => {
                metrics::counter!("gatehouse_frames_out_total", "kind" => super::DEVICE_KIND)
                    .increment(1);
                true
            }
            Err(err) => {
                tracing::warn!(cp = %self.charge_point_id, %err, "closing a charge point that does not read");
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
        tracing::info!(cp = %self.charge_point_id, reason, "closing charge point socket");
        let _ = self.outbox.send(OutFrame::Close(code, reason.to_owned()));
        ctx.stop();
    }

    /// Logs a frame in the background (the answer does not wait for the log).
    fn log_later(
        &self,
        direction: &'static str,
        kind: &'static str,
        action: Option<String>,
        id: String,
        payload: Value,
        request: Option<i64>,
    ) {
        let store = self.deps.store.clone();
        let charger_id = self.charger_id;
        actix_rt::spawn(async move {
            if let Err(err) = store
                .log_ocpp_message(
                    charger_id,
                    direction,
                    kind,
                    action.as_deref(),
                    &id,
                    payload,
                    request,
                )
                .await
            {
                tracing::warn!(%err, "could not write the OCPP message log");
            }
        });
    }

    fn remember(&mut self, id: &str) -> bool {
        if self.recent_set.contains(id) {
            return false;
        }
        self.recent_set.insert(id.to_owned());
        self.recent_ids.push_back(id.to_owned());
        if self.recent_ids.len() > REMEMBERED_IDS {
            if let Some(old) = self.recent_ids.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        true
    }

    fn on_text(&mut self, text: String, ctx: &mut Context<Self>) {
        let frame = match framing::parse_frame(&text) {
            Ok(frame) => frame,
            Err(err) => {
                metrics::counter!("gatehouse_bad_frames_total", "kind" => super::DEVICE_KIND)
                    .increment(1);
                tracing::warn!(cp = %self.charge_point_id, code = ?err.code, description = %err.description, "malformed OCPP frame");
                let id = err.id.clone().unwrap_or_default();
                self.send_text(
                    framing::call_error(&id, err.code, &err.description, &json!({})),
                    ctx,
                );
                return;
            }
        };
        match frame {
            Frame::Call {
                id,
                action,
                payload,
            } => self.on_call(id, action, payload, ctx),
            Frame::CallResult { id, payload } => self.on_answer(id, Ok(payload), ctx),
            Frame::CallError {
                id,
                code,
                description,
                details,
            } => self.on_answer(
                id,
                Err(json!({"code": code, "description": description, "details": details})),
                ctx,
            ),
        }
    }

    fn on_call(&mut self, id: String, action: String, payload: Value, ctx: &mut Context<Self>) {
        if !self.remember(&id) {
            // Processing it twice could start two transactions; answering it twice confuses the charger.
            self.send_text(
                framing::call_error(
                    &id,
                    ErrorCode::ProtocolError,
                    "repeated messageId in this session",
                    &json!({}),
                ),
                ctx,
            );
            return;
        }
        if let Some(known) = messages::CP_ACTIONS.iter().find(|a| **a == action) {
            metrics::counter!("gatehouse_ocpp_messages_total", "action" => *known).increment(1);
        } else {
            metrics::counter!("gatehouse_ocpp_messages_total", "action" => "unknown").increment(1);
        }
        let request = match messages::parse_cp_request(
            &action,
            payload.clone(),
            self.deps.settings.ocpp_strict,
        ) {
            Ok(request) => request,
            Err((code, description)) => {
                self.log_later(
                    "in",
                    "call",
                    Some(action.clone()),
                    id.clone(),
                    payload,
                    None,
                );
                let answer = framing::call_error(&id, code, &description, &json!({}));
                self.send_text(answer, ctx);
                return;
            }
        };
        if self.boot_status.as_deref() == Some("Rejected")
            && !matches!(request, CpRequest::BootNotification(_))
        {
            self.send_text(
                framing::call_error(
                    &id,
                    ErrorCode::SecurityError,
                    "BootNotification was rejected",
                    &json!({}),
                ),
                ctx,
            );
            return;
        }
        let deps = Arc::clone(&self.deps);
        let charger_id = self.charger_id;
        let cp = self.charge_point_id.clone();
        let work = async move {
            let request_row = deps
                .store
                .log_ocpp_message(charger_id, "in", "call", Some(&action), &id, payload, None)
                .await
                .ok();
            let answer = handle_request(&deps, charger_id, &cp, request).await;
            (id, action, request_row, answer)
        };
        ctx.wait(work.into_actor(self).map(|(id, action, request_row, answer), act, ctx| {
            let text = match answer {
                Ok(handled) => {
                    if let Some(status) = handled.boot_status {
                        act.boot_status = Some(status);
                    }
                    // The charger is talking to us: deliver what was queued while it was away.
                    if !std::mem::replace(&mut act.delivery_started, true) {
                        let target = crate::delivery::Target::Ocpp {
                            addr: ctx.address(),
                            charger_id: act.charger_id,
                        };
                        let device = act.charge_point_id.clone();
                        actix_rt::spawn(crate::delivery::deliver(Arc::clone(&act.deps), device, target));
                    }
                    act.log_later("out", "result", Some(action), id.clone(), handled.payload.clone(), request_row);
                    framing::call_result(&id, &handled.payload)
                }
                Err(err) => {
                    // Not stored, so not confirmed: the charge point keeps the message and retries.
                    tracing::error!(cp = %act.charge_point_id, %err, action, "could not store a charge point message");
                    framing::call_error(&id, ErrorCode::InternalError, "could not store the message; retry", &json!({}))
                }
            };
            act.send_text(text, ctx);
        }));
    }

    fn on_answer(&mut self, id: String, answer: Result<Value, Value>, ctx: &mut Context<Self>) {
        let matches = self.in_flight.as_ref().is_some_and(|f| f.message_id == id);
        if !matches {
            tracing::info!(cp = %self.charge_point_id, id, "answer matches no CALL in flight; dropped");
            return;
        }
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        ctx.cancel_future(flight.timer);
        let action = flight.call.action.action().to_owned();
        let (kind, payload, outcome) = match answer {
            Ok(payload) => ("result", payload.clone(), CommandOutcome::Replied(payload)),
            Err(error) => ("error", error.clone(), CommandOutcome::DeviceError(error)),
        };
        self.log_later("in", kind, Some(action), id, payload, flight.log_row);
        flight.call.report(CommandEvent::Finished(outcome));
        self.pump(ctx);
    }

    /// Starts the next queued CALL when none is in flight. The CALL is logged (and its pending entry made)
    /// before the frame is sent; if the send fails the entry is rolled back and the command fails.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(call) = self.queue.pop_front() else {
            self.close_if_drained(ctx);
            return;
        };
        let message_id = Uuid::new_v4().simple().to_string();
        let action = call.action.action();
        let payload = call.action.payload();
        let store = self.deps.store.clone();
        let charger_id = self.charger_id;
        let (log_id, log_payload) = (message_id.clone(), payload.clone());
        let logged = async move {
            store
                .log_ocpp_message(
                    charger_id,
                    "out",
                    "call",
                    Some(action),
                    &log_id,
                    log_payload,
                    None,
                )
                .await
                .ok()
        };
        ctx.wait(logged.into_actor(self).map(move |log_row, act, ctx| {
            let timer = act.arm_timeout(ctx);
            act.in_flight = Some(InFlight {
                call,
                message_id: message_id.clone(),
                log_row,
                timer,
            });
            if act.send_text(framing::call(&message_id, action, &payload), ctx) {
                if let Some(flight) = &act.in_flight {
                    flight.call.report(CommandEvent::Sent(Utc::now()));
                }
            } else if let Some(flight) = act.in_flight.take() {
                ctx.cancel_future(flight.timer);
                flight
                    .call
                    .report(CommandEvent::Finished(CommandOutcome::Disconnected));
            }
        }));
    }

    fn arm_timeout(&self, ctx: &mut Context<Self>) -> SpawnHandle {
        ctx.run_later(self.deps.settings.ocpp_call_timeout, |act, ctx| {
            if let Some(flight) = act.in_flight.take() {
                tracing::warn!(cp = %act.charge_point_id, action = flight.call.action.action(), "charge point did not answer in time");
                flight.call.report(CommandEvent::Finished(CommandOutcome::TimedOut));
            }
            act.pump(ctx);
        })
    }

    fn close_if_drained(&mut self, ctx: &mut Context<Self>) {
        if self.draining && self.in_flight.is_none() && self.queue.is_empty() {
            self.close(ctx, CloseCode::Away, "server shutting down");
        }
    }

    fn ping_tick(&mut self, ctx: &mut Context<Self>) {
        // Two intervals without any frame (a pong counts): the charger is gone.
        if self.last_frame.elapsed() > self.deps.settings.ocpp_ping_interval * 2 {
            self.close(ctx, CloseCode::Normal, "connection timeout: no traffic");
            return;
        }
        let _ = self.outbox.send(OutFrame::Ping);
        self.persist_last_seen();
    }

    fn persist_last_seen(&mut self) {
        if !std::mem::take(&mut self.seen_since_persist) {
            return;
        }
        let seen =
            Utc::now() - chrono::Duration::from_std(self.last_frame.elapsed()).unwrap_or_default();
        let store = self.deps.store.clone();
        let id = self.charger_id;
        actix_rt::spawn(async move {
            if let Err(err) = store.touch_charger(id, seen).await {
                tracing::warn!(charger_id = id, %err, "could not update last_seen");
            }
        });
    }
}

/// What handling a request produced.
struct Handled {
    payload: Value,
    /// For BootNotification: the registration status answered.
    boot_status: Option<String>,
}

impl Handled {
    fn plain(payload: Value) -> Self {
        Handled {
            payload,
            boot_status: None,
        }
    }
}

fn now_rfc3339() -> String {
    Utc::now()
        .trunc_subsecs(3)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn enum_text<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn opt_enum_text<T: serde::Serialize>(value: &Option<T>, default: &str) -> String {
    value
        .as_ref()
        .map(enum_text)
        .unwrap_or_else(|| default.to_owned())
}

/// Flattens meter values into one row per sampled value, with the spec's defaults for absent fields.
fn samples(values: &[messages::MeterValue]) -> Vec<MeterSample> {
    values
        .iter()
        .flat_map(|mv| {
            mv.sampled_value.iter().map(move |sv| MeterSample {
                timestamp: mv.timestamp,
                value: sv.value.clone(),
                measurand: opt_enum_text(&sv.measurand, "Energy.Active.Import.Register"),
                phase: opt_enum_text(&sv.phase, ""),
                unit: opt_enum_text(&sv.unit, "Wh"),
                context: opt_enum_text(&sv.context, "Sample.Periodic"),
                location: opt_enum_text(&sv.location, "Outlet"),
                format: opt_enum_text(&sv.format, "Raw"),
            })
        })
        .collect()
}

/// The idTagInfo for `tag`: the id-tag table decides; unknown tags per `OCPP_ACCEPT_UNKNOWN_TAGS`; then
/// `OCPP_REQUIRE_SUBSCRIPTION`.
pub async fn id_tag_info(deps: &SessionDeps, tag: &str) -> Result<Value, StoreError> {
    let mut info = tag_table_info(deps, tag).await?;
    // With OCPP_REQUIRE_SUBSCRIPTION a good tag is not enough: its account must hold an active subscription
    // (a tag without an account, unknown tags included, holds none).
    if deps.settings.ocpp_require_subscription
        && info["status"] == "Accepted"
        && !deps.store.tag_has_active_subscription(tag).await?
    {
        tracing::info!(
            tag,
            "id tag Blocked: its account has no active subscription"
        );
        info["status"] = json!("Blocked");
    }
    Ok(info)
}

/// The idTagInfo the id-tag table alone gives (status, expiry, parent).
async fn tag_table_info(deps: &SessionDeps, tag: &str) -> Result<Value, StoreError> {
    let Some(row) = deps.store.id_tag(tag).await? else {
        let status = if deps.settings.ocpp_accept_unknown_tags {
            "Accepted"
        } else {
            "Invalid"
        };
        return Ok(json!({"status": status}));
    };
    let expired = row.expires_at.is_some_and(|at| at < Utc::now());
    let status = if row.status == "Accepted" && expired {
        "Expired".to_owned()
    } else {
        row.status.clone()
    };
    let mut info = json!({"status": status});
    if let Some(at) = row.expires_at {
        info["expiryDate"] = json!(at
            .trunc_subsecs(3)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    if let Some(parent) = row.parent {
        info["parentIdTag"] = json!(parent);
    }
    Ok(info)
}

async fn handle_request(
    deps: &SessionDeps,
    charger_id: i32,
    cp: &str,
    request: CpRequest,
) -> Result<Handled, StoreError> {
    let store = &deps.store;
    Ok(match request {
        CpRequest::BootNotification(boot) => {
            let raw = serde_json::to_value(&boot).unwrap_or(Value::Null);
            let row = store
                .record_boot(
                    charger_id,
                    BootInfo {
                        vendor: Some(boot.charge_point_vendor.clone()),
                        model: Some(boot.charge_point_model.clone()),
                        serial_number: boot.charge_point_serial_number.clone(),
                        firmware: boot.firmware_version.clone(),
                        raw,
                    },
                )
                .await?;
            let status = match row.registration_status.as_str() {
                "Pending" | "Rejected" => row.registration_status.clone(),
                _ => "Accepted".to_owned(),
            };
            tracing::info!(cp, status, "BootNotification");
            Handled {
                payload: json!({
                    "status": status,
                    "currentTime": now_rfc3339(),
                    "interval": deps.settings.ocpp_heartbeat_interval.as_secs().max(1),
                }),
                boot_status: Some(status),
            }
        }
        CpRequest::Heartbeat => Handled::plain(json!({"currentTime": now_rfc3339()})),
        CpRequest::Authorize(auth) => {
            Handled::plain(json!({"idTagInfo": id_tag_info(deps, &auth.id_tag).await?}))
        }
        CpRequest::StartTransaction(start) => {
            let mut info = id_tag_info(deps, &start.id_tag).await?;
            if info["status"] == "Accepted"
                && store
                    .active_transaction_for_tag(&start.id_tag)
                    .await?
                    .is_some()
            {
                info["status"] = json!("ConcurrentTx");
            }
            let (transaction_id, _) = store
                .start_transaction(NewTransaction {
                    charger_id,
                    connector_id: start.connector_id,
                    id_tag: start.id_tag.clone(),
                    start_status: info["status"].as_str().unwrap_or("Invalid").to_owned(),
                    meter_start: start.meter_start as i64,
                    started_at: start.timestamp,
                    reservation_id: start.reservation_id,
                })
                .await?;
            deps.events.publish(
                "transaction",
                Some(cp),
                Some(super::DEVICE_KIND),
                json!({"event": "started", "transactionId": transaction_id, "connectorId": start.connector_id,
                       "idTag": start.id_tag, "meterStart": start.meter_start, "idTagStatus": info["status"]}),
            );
            Handled::plain(json!({"transactionId": transaction_id, "idTagInfo": info}))
        }
        CpRequest::StopTransaction(stop) => {
            let data = stop
                .transaction_data
                .as_deref()
                .map(samples)
                .unwrap_or_default();
            let stored = store
                .stop_transaction(
                    stop.transaction_id,
                    stop.meter_stop as i64,
                    stop.timestamp,
                    stop.id_tag.clone(),
                    stop.reason.as_ref().map(enum_text),
                    &data,
                )
                .await?;
            match &stored {
                None => tracing::warn!(cp, transaction_id = stop.transaction_id, "StopTransaction for an unknown transaction"),
                Some(tx) => deps.events.publish(
                    "transaction",
                    Some(cp),
                    Some(super::DEVICE_KIND),
                    json!({"event": "stopped", "transactionId": tx.id, "connectorId": tx.connector_id,
                           "meterStart": tx.meter_start, "meterStop": tx.meter_stop, "reason": tx.stop_reason}),
                ),
            }
            match &stop.id_tag {
                Some(tag) => Handled::plain(json!({"idTagInfo": id_tag_info(deps, tag).await?})),
                None => Handled::plain(json!({})),
            }
        }
        CpRequest::MeterValues(values) => {
            let rows = samples(&values.meter_value);
            let stored = crate::telemetry_metrics::db_write(
                "meter_values",
                store.insert_meter_values(
                    charger_id,
                    values.connector_id,
                    values.transaction_id,
                    &rows,
                ),
            )
            .await?;
            metrics::counter!("gatehouse_meter_values_total").increment(stored);
            let sampled: Vec<Value> = rows
                .iter()
                .map(|r| json!({"timestamp": r.timestamp, "measurand": r.measurand, "value": r.value, "unit": r.unit, "phase": r.phase}))
                .collect();
            deps.events.publish(
                "meter",
                Some(cp),
                Some(super::DEVICE_KIND),
                json!({"connectorId": values.connector_id, "transactionId": values.transaction_id, "values": sampled}),
            );
            Handled::plain(json!({}))
        }
        CpRequest::StatusNotification(status) => {
            store
                .record_status(
                    charger_id,
                    status.connector_id,
                    &enum_text(&status.status),
                    &enum_text(&status.error_code),
                    status.info.clone(),
                    status.vendor_error_code.clone(),
                    status.timestamp,
                )
                .await?;
            deps.events.publish(
                "status",
                Some(cp),
                Some(super::DEVICE_KIND),
                json!({"connectorId": status.connector_id, "status": enum_text(&status.status),
                       "errorCode": enum_text(&status.error_code), "info": status.info}),
            );
            Handled::plain(json!({}))
        }
        // No vendor extensions are registered: the spec's answer for that.
        CpRequest::DataTransfer(_) => Handled::plain(json!({"status": "UnknownVendorId"})),
        CpRequest::DiagnosticsStatusNotification(n) => {
            store
                .set_charger_field(
                    charger_id,
                    ChargerField::DiagnosticsStatus,
                    json!(enum_text(&n.status)),
                )
                .await?;
            Handled::plain(json!({}))
        }
        CpRequest::FirmwareStatusNotification(n) => {
            store
                .set_charger_field(
                    charger_id,
                    ChargerField::FirmwareStatus,
                    json!(enum_text(&n.status)),
                )
                .await?;
            Handled::plain(json!({}))
        }
        // Security extension: the frames are kept in the message log; nothing else to do with them here.
        CpRequest::SignCertificate(_) => Handled::plain(json!({"status": "Accepted"})),
        CpRequest::SecurityEventNotification(_)
        | CpRequest::SignedFirmwareStatusNotification(_)
        | CpRequest::LogStatusNotification(_) => Handled::plain(json!({})),
    })
}

impl Actor for OcppSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.span.record("sn", self.charge_point_id.as_str());
        let _span = self.span.clone().entered();
        ctx.run_interval(self.deps.settings.ocpp_ping_interval, |act, ctx| {
            act.ping_tick(ctx)
        });
        tracing::info!(cp = %self.charge_point_id, conn_id = self.conn_id, remote = %self.remote_addr, "charge point connected");
        self.deps.events.publish(
            "online",
            Some(&self.charge_point_id),
            Some(super::DEVICE_KIND),
            json!({"remote_addr": self.remote_addr}),
        );
        self.deps.registry.do_send(Register(Entry {
            conn_id: self.conn_id,
            addr: DeviceAddr::Ocpp(ctx.address()),
            info: ConnectionInfo {
                protocol: super::PROTOCOL,
                sn: self.charge_point_id.clone(),
                remote_addr: self.remote_addr.clone(),
                connected_at: self.connected_at,
            },
        }));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        metrics::counter!("gatehouse_disconnects_total", "kind" => super::DEVICE_KIND, "reason" => self.disconnect_reason)
            .increment(1);
        tracing::info!(cp = %self.charge_point_id, conn_id = self.conn_id, "charge point disconnected");
        self.deps.events.publish(
            "offline",
            Some(&self.charge_point_id),
            Some(super::DEVICE_KIND),
            json!({}),
        );
        self.deps.registry.do_send(Unregister {
            sn: self.charge_point_id.clone(),
            conn_id: self.conn_id,
        });
        if let Some(flight) = self.in_flight.take() {
            flight
                .call
                .report(CommandEvent::Finished(CommandOutcome::Disconnected));
        }
        for call in self.queue.drain(..) {
            call.report(CommandEvent::Finished(CommandOutcome::Disconnected));
        }
        self.seen_since_persist = true;
        self.persist_last_seen();
    }
}

impl StreamHandler<WsEvent> for OcppSession {
    fn handle(&mut self, event: WsEvent, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.last_frame = Instant::now();
        self.seen_since_persist = true;
        metrics::counter!("gatehouse_frames_in_total", "kind" => super::DEVICE_KIND).increment(1);
        match event {
            WsEvent::Text(text) => self.on_text(text, ctx),
            WsEvent::Binary(_) => {
                self.send_text(
                    framing::call_error(
                        "",
                        ErrorCode::FormationViolation,
                        "OCPP-J frames are text",
                        &json!({}),
                    ),
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
                "frame larger than OCPP_MAX_FRAME_BYTES",
            ),
            WsEvent::Error(WsFailure::Protocol) => {
                self.close(ctx, CloseCode::Protocol, "websocket protocol error")
            }
            WsEvent::Limited(text) => {
                // A CALL over the rate gets a CALLERROR (the charger retries it later); anything else is dropped.
                if let Ok(Frame::Call { id, .. }) = framing::parse_frame(&text) {
                    self.send_text(
                        framing::call_error(
                            &id,
                            ErrorCode::GenericError,
                            "rate limit exceeded (DEVICE_FRAME_RATE); slow down",
                            &json!({}),
                        ),
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

impl Handler<SendCall> for OcppSession {
    type Result = Result<(), CallRejected>;

    /// Queues a CALL (bounded) and starts it when the charge point is free.
    fn handle(&mut self, SendCall(call): SendCall, ctx: &mut Context<Self>) -> Self::Result {
        let _span = self.span.clone().entered();
        if self.draining || self.closing {
            return Err(CallRejected::Closing);
        }
        if self.queue.len() >= self.deps.settings.command_queue_size {
            return Err(CallRejected::QueueFull);
        }
        self.queue.push_back(call);
        self.pump(ctx);
        Ok(())
    }
}

impl Handler<CloseSession> for OcppSession {
    type Result = ();

    /// Closes the socket; used when a newer connection replaces this one.
    fn handle(&mut self, msg: CloseSession, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.close(ctx, msg.code, &msg.reason);
    }
}

impl Handler<Drain> for OcppSession {
    type Result = ();

    /// Closes with 1001 once no CALL is queued or in flight, or when the grace period ends.
    fn handle(&mut self, msg: Drain, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.draining = true;
        self.close_if_drained(ctx);
        ctx.run_later(msg.grace, |act, ctx| {
            act.close(ctx, CloseCode::Away, "server shutting down")
        });
    }
}
