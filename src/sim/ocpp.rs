//! OCPP 1.6J charge point simulator.
//!
//! An independent, self-contained implementation of the charge point side of OCPP 1.6J, used to drive the
//! gateway's central system in integration tests and load runs (`run_fleet`). It deliberately shares no code
//! with the server: a protocol bug mirrored on both sides would otherwise pass every test.
//!
//! Design:
//! - One tokio task per simulated charger owns the WebSocket. It multiplexes handle commands, inbound frames
//!   and a small timer list, so the charger's own CALLs and CALLs from the central system are served
//!   concurrently without extra tasks or locks held across awaits.
//! - Outbound CALLs go through a queue with at most one in flight, as OCPP-J asks of a charge point; answers
//!   to central-system CALLs bypass that queue because they must never wait for our own CALLs.
//! - The answer to every central-system CALL is a pure function over the charger state (`answer_call`), so
//!   the unit tests can validate each answer against the official `…Response` schema.
//! - The charger state (`OcppSim::state` returns a snapshot) lives behind a `std::sync::Mutex` that is
//!   never held across an await.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// The subprotocol OCPP 1.6J is negotiated under.
pub const SUBPROTOCOL: &str = "ocpp1.6";

/// Bound on every wait for the other side (handshake, CALLRESULT, boot attempt).
const WAIT: Duration = Duration::from_secs(10);
/// How many times a Pending BootNotification is retried before `connect` gives up.
const BOOT_PENDING_RETRIES: u32 = 3;
/// Pause between closing the socket for a Reset and reconnecting, like a short reboot.
const REBOOT_PAUSE: Duration = Duration::from_millis(200);
/// Longest a Reset waits for the StopTransactions it queued before closing anyway.
const RESET_DRAIN: Duration = Duration::from_secs(2);
/// Reconnect attempts after a Reset before the simulator gives up and reports itself closed.
const RECONNECT_ATTEMPTS: u32 = 10;
/// Energy added to the register per simulated meter sample; samples are 10 ms apart in real time, so the
/// simulator runs "fast forward" to produce plausible, clearly increasing registers.
const WH_PER_SAMPLE: i64 = 150;
/// Simulated charging power and voltage reported in MeterValues.
const POWER_W: i64 = 11_000;
const VOLTAGE_V: &str = "230.0";
/// Small read buffer: a fleet of thousands of chargers must not cost 128 KiB each (tungstenite's default).
const READ_BUFFER: usize = 4 * 1024;
/// OCPP frames are small; refusing huge ones keeps a misbehaving server from ballooning the simulator.
const MAX_MESSAGE: usize = 1 << 20;

type Ws = WebSocketStream<TcpStream>;

/// How to reach the central system and what kind of charge point to pretend to be.
#[derive(Clone, Debug)]
pub struct OcppSimConfig {
    /// Base URL, e.g. `ws://127.0.0.1:7788/ocpp`; the id is appended as the last path segment.
    pub url: String,
    /// Charge point id (also the HTTP Basic username).
    pub id: String,
    /// HTTP Basic password (security profile 1); `None` sends no Authorization header.
    pub password: Option<String>,
    /// Number of connectors (1-based); connector 0 is the charge point itself.
    pub connectors: u32,
    pub vendor: String,
    pub model: String,
    pub firmware: String,
    /// `false`: record central-system CALLs but never answer them (to test the server's time-outs).
    pub answer_calls: bool,
    /// Delay before answering a central-system CALL (to test the server's waiting and queueing).
    pub reply_delay: Duration,
    /// Send Heartbeat at the interval the BootNotification response gives.
    pub heartbeat: bool,
    /// Bind the TCP socket to this source address (many chargers from distinct loopback addresses).
    pub local_addr: Option<IpAddr>,
}

impl OcppSimConfig {
    /// A two-connector charger with sensible defaults.
    pub fn new(url: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            id: id.into(),
            password: None,
            connectors: 2,
            vendor: "GatehouseSim".to_owned(),
            model: "SimCharger-22".to_owned(),
            firmware: "1.0.0".to_owned(),
            answer_calls: true,
            reply_delay: Duration::ZERO,
            heartbeat: true,
            local_addr: None,
        }
    }
}

/// Why a simulator operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OcppSimError {
    /// TCP or WebSocket handshake failed; for a refused handshake the message starts with `HTTP <status>`.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The central system rejected us (BootNotification Rejected, Authorize not Accepted, …).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The connection is gone (closed by the server, or the simulator was closed).
    #[error("connection closed")]
    Closed,
    /// No answer within the bounded wait.
    #[error("timed out")]
    Timeout,
    /// The server sent something that is not valid OCPP-J, or answered with a CALLERROR where a result was
    /// needed.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// The central system's answer to one of our CALLs.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    Result(Value),
    Error {
        code: String,
        description: String,
        details: Value,
    },
}

/// What `OcppSim::charge` did.
#[derive(Clone, Debug)]
pub struct ChargeSummary {
    pub transaction_id: i64,
    /// `idTagInfo.status` of the StartTransaction response.
    pub id_tag_status: String,
    pub meter_start: i64,
    pub meter_stop: i64,
}

/// Observable charger state; `OcppSim::state` returns a snapshot.
#[derive(Clone, Debug, Default)]
pub struct OcppSimState {
    /// Completed boot sequences (initial connect plus one per Reset); a triggered BootNotification does not
    /// count because the charger does not reboot for it.
    pub boots: u32,
    /// The last BootNotification response payload.
    pub boot_response: Option<Value>,
    /// Every central-system CALL (action, payload), in arrival order, answered or not.
    pub calls_received: Vec<(String, Value)>,
    /// key → (value, readonly)
    pub configuration: BTreeMap<String, (String, bool)>,
    /// connector → "Operative" | "Inoperative" (connector 0 = whole charge point)
    pub availability: BTreeMap<u32, String>,
    /// connector → transactionId
    pub active_transactions: BTreeMap<u32, i64>,
    /// reservationId → connector
    pub reservations: BTreeMap<i64, u32>,
    pub local_list_version: i64,
    /// The `csChargingProfiles` objects of accepted SetChargingProfile CALLs.
    pub charging_profiles: Vec<Value>,
    /// The energy register (Wh), shared by all connectors.
    pub meter_wh: i64,
    pub pings_received: u32,
}

// ---------------------------------------------------------------------------------------------------------
// Small pure helpers
// ---------------------------------------------------------------------------------------------------------

/// RFC 3339, UTC, `Z`, milliseconds: the one timestamp format the simulator sends.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn now_ts() -> String {
    ts(Utc::now())
}

/// Truncates to a schema `maxLength` (counted in characters, as JSON Schema does) so configured names can
/// never make our own requests schema-invalid.
fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// `{base}/{id}` with the id percent-encoded as one path segment, so odd ids cannot change the path.
fn charge_point_url(base: &str, id: &str) -> String {
    let mut out = String::with_capacity(base.len() + id.len() + 1);
    out.push_str(base.trim_end_matches('/'));
    out.push('/');
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn basic_auth(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn new_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// One parsed OCPP-J frame.
#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Call {
        id: String,
        action: String,
        payload: Value,
    },
    Result {
        id: String,
        payload: Value,
    },
    Error {
        id: String,
        code: String,
        description: String,
        details: Value,
    },
}

fn parse_frame(v: &Value) -> Result<Frame, String> {
    let arr = v.as_array().ok_or("frame is not a JSON array")?;
    let kind = arr
        .first()
        .and_then(Value::as_u64)
        .ok_or("frame has no numeric message type")?;
    let id = arr
        .get(1)
        .and_then(Value::as_str)
        .ok_or("frame has no string messageId")?
        .to_owned();
    let text = |i: usize| arr.get(i).and_then(Value::as_str).map(str::to_owned);
    match (kind, arr.len()) {
        (2, 4) => Ok(Frame::Call {
            id,
            action: text(2).ok_or("CALL action is not a string")?,
            payload: arr[3].clone(),
        }),
        (3, 3) => Ok(Frame::Result {
            id,
            payload: arr[2].clone(),
        }),
        (4, 5) => Ok(Frame::Error {
            id,
            code: text(2).ok_or("CALLERROR code is not a string")?,
            description: text(3).ok_or("CALLERROR description is not a string")?,
            details: arr[4].clone(),
        }),
        (k, n) => Err(format!("unexpected frame: type {k} with {n} elements")),
    }
}

fn call_frame(id: &str, action: &str, payload: &Value) -> String {
    json!([2, id, action, payload]).to_string()
}

fn result_frame(id: &str, payload: &Value) -> String {
    json!([3, id, payload]).to_string()
}

fn error_frame(id: &str, code: &str, description: &str) -> String {
    json!([4, id, code, description, {}]).to_string()
}

// ---------------------------------------------------------------------------------------------------------
// Requests the charge point sends (pure builders, validated against the request schemas in the tests)
// ---------------------------------------------------------------------------------------------------------

fn boot_request(cfg: &OcppSimConfig) -> Value {
    json!({
        "chargePointVendor": clip(&cfg.vendor, 20),
        "chargePointModel": clip(&cfg.model, 20),
        "chargePointSerialNumber": clip(&cfg.id, 25),
        "firmwareVersion": clip(&cfg.firmware, 50),
        "meterType": "SimMeter",
    })
}

fn status_request(connector: u32, status: &str) -> Value {
    json!({
        "connectorId": connector,
        "errorCode": "NoError",
        "status": status,
        "timestamp": now_ts(),
    })
}

fn authorize_request(id_tag: &str) -> Value {
    json!({ "idTag": clip(id_tag, 20) })
}

fn start_request(
    connector: u32,
    id_tag: &str,
    meter_start: i64,
    reservation: Option<i64>,
) -> Value {
    let mut v = json!({
        "connectorId": connector,
        "idTag": clip(id_tag, 20),
        "meterStart": meter_start,
        "timestamp": now_ts(),
    });
    if let (Some(r), Some(obj)) = (reservation, v.as_object_mut()) {
        obj.insert("reservationId".to_owned(), json!(r));
    }
    v
}

/// One meter sample: energy register, power and L1 voltage. Only the energy register carries a reading
/// context; that is the value servers key periodic samples on.
fn sample(at: &str, energy_wh: i64, power_w: i64, context: &str) -> Value {
    json!({
        "timestamp": at,
        "sampledValue": [
            {
                "value": energy_wh.to_string(),
                "context": context,
                "measurand": "Energy.Active.Import.Register",
                "unit": "Wh",
            },
            { "value": power_w.to_string(), "measurand": "Power.Active.Import", "unit": "W" },
            { "value": VOLTAGE_V, "measurand": "Voltage", "phase": "L1", "unit": "V" },
        ],
    })
}

fn meter_values_request(connector: u32, transaction: Option<i64>, meter_value: Value) -> Value {
    let mut v = json!({ "connectorId": connector, "meterValue": [meter_value] });
    if let (Some(tx), Some(obj)) = (transaction, v.as_object_mut()) {
        obj.insert("transactionId".to_owned(), json!(tx));
    }
    v
}

/// The register at a point in time, as used in StopTransaction's transactionData.
fn register_reading(at: &str, energy_wh: i64, context: &str) -> Value {
    json!({
        "timestamp": at,
        "sampledValue": [{
            "value": energy_wh.to_string(),
            "context": context,
            "measurand": "Energy.Active.Import.Register",
            "unit": "Wh",
        }],
    })
}

struct StopInfo<'a> {
    transaction_id: i64,
    id_tag: Option<&'a str>,
    meter_start: i64,
    started_at: Option<&'a str>,
    meter_stop: i64,
    reason: &'a str,
}

fn stop_request(s: &StopInfo<'_>) -> Value {
    let at = now_ts();
    let mut data = Vec::with_capacity(2);
    if let Some(start) = s.started_at {
        data.push(register_reading(start, s.meter_start, "Transaction.Begin"));
    }
    data.push(register_reading(&at, s.meter_stop, "Transaction.End"));
    let mut v = json!({
        "transactionId": s.transaction_id,
        "meterStop": s.meter_stop,
        "timestamp": at,
        "reason": s.reason,
        "transactionData": data,
    });
    if let (Some(tag), Some(obj)) = (s.id_tag, v.as_object_mut()) {
        obj.insert("idTag".to_owned(), json!(clip(tag, 20)));
    }
    v
}

fn firmware_status_request(status: &str) -> Value {
    json!({ "status": status })
}

fn diagnostics_status_request(status: &str) -> Value {
    json!({ "status": status })
}

// ---------------------------------------------------------------------------------------------------------
// Charger state and the answers to central-system CALLs (pure: state in, answer + follow-up work out)
// ---------------------------------------------------------------------------------------------------------

/// What the charger remembers about a running transaction beyond its id, to build StopTransaction.
#[derive(Debug, Clone, PartialEq)]
struct TxMeta {
    id_tag: String,
    meter_start: i64,
    started_at: String,
}

/// The public state plus bookkeeping the public snapshot does not expose.
#[derive(Debug, Default)]
struct Inner {
    state: OcppSimState,
    connectors: u32,
    vendor: String,
    tx_meta: BTreeMap<u32, TxMeta>,
    /// Connectors claimed by a RemoteStartTransaction whose StartTransaction is not answered yet, so a
    /// second remote start cannot pick the same connector.
    starting: BTreeSet<u32>,
    /// Connector of each entry in `state.charging_profiles` (same index).
    profile_connectors: Vec<u32>,
    /// reservationId → idTag
    reservation_tags: BTreeMap<i64, String>,
    /// ChangeAvailability answered "Scheduled": applied when the connector's transaction ends.
    scheduled_availability: BTreeMap<u32, String>,
}

/// Integer-valued configuration keys: ChangeConfiguration rejects values that do not parse, as chargers do.
const INT_KEYS: &[&str] = &[
    "HeartbeatInterval",
    "MeterValueSampleInterval",
    "ConnectionTimeOut",
    "ClockAlignedDataInterval",
    "ResetRetries",
    "TransactionMessageAttempts",
    "TransactionMessageRetryInterval",
    "WebSocketPingInterval",
];
const BOOL_KEYS: &[&str] = &[
    "AuthorizeRemoteTxRequests",
    "LocalAuthListEnabled",
    "LocalAuthorizeOffline",
    "LocalPreAuthorize",
    "AllowOfflineTxForUnknownId",
    "AuthorizationCacheEnabled",
    "StopTransactionOnEVSideDisconnect",
    "UnlockConnectorOnEVSideDisconnect",
];

impl Inner {
    fn new(cfg: &OcppSimConfig) -> Self {
        let n = cfg.connectors;
        let mut configuration = BTreeMap::new();
        let mut put = |k: &str, v: &str, ro: bool| {
            configuration.insert(k.to_owned(), (v.to_owned(), ro));
        };
        put("HeartbeatInterval", "300", false);
        put("MeterValueSampleInterval", "60", false);
        put("ConnectionTimeOut", "60", false);
        put("NumberOfConnectors", &n.to_string(), true);
        put("AuthorizeRemoteTxRequests", "false", false);
        put("LocalAuthListEnabled", "true", false);
        put("LocalAuthListMaxLength", "100", true);
        put("SendLocalListMaxLength", "100", true);
        put("LocalAuthorizeOffline", "true", false);
        put("LocalPreAuthorize", "false", false);
        put("AllowOfflineTxForUnknownId", "false", false);
        put("AuthorizationCacheEnabled", "false", false);
        put("ClockAlignedDataInterval", "0", false);
        put(
            "MeterValuesSampledData",
            "Energy.Active.Import.Register,Power.Active.Import,Voltage",
            false,
        );
        put(
            "MeterValuesAlignedData",
            "Energy.Active.Import.Register",
            false,
        );
        put("StopTxnSampledData", "Energy.Active.Import.Register", false);
        put("StopTxnAlignedData", "", false);
        put("StopTransactionOnEVSideDisconnect", "true", false);
        put("UnlockConnectorOnEVSideDisconnect", "true", false);
        put("ResetRetries", "3", false);
        put("TransactionMessageAttempts", "3", false);
        put("TransactionMessageRetryInterval", "60", false);
        put("WebSocketPingInterval", "60", false);
        put("GetConfigurationMaxKeys", "100", true);
        put("ReserveConnectorZeroSupported", "true", true);
        put("ChargeProfileMaxStackLevel", "10", true);
        put(
            "ChargingScheduleAllowedChargingRateUnit",
            "Current,Power",
            true,
        );
        put("ChargingScheduleMaxPeriods", "24", true);
        put("MaxChargingProfilesInstalled", "16", true);
        put(
            "SupportedFeatureProfiles",
            "Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger",
            true,
        );
        let availability = (0..=n).map(|c| (c, "Operative".to_owned())).collect();
        Self {
            state: OcppSimState {
                configuration,
                availability,
                ..OcppSimState::default()
            },
            connectors: n,
            vendor: cfg.vendor.clone(),
            ..Self::default()
        }
    }

    fn config_value(&self, key: &str) -> Option<&str> {
        self.state.configuration.get(key).map(|(v, _)| v.as_str())
    }

    fn operative(&self, connector: u32) -> bool {
        let op = |c: u32| {
            self.state
                .availability
                .get(&c)
                .is_none_or(|a| a == "Operative")
        };
        op(connector) && op(0)
    }

    fn reservation_on(&self, connector: u32) -> Option<i64> {
        self.state
            .reservations
            .iter()
            .find(|(_, c)| **c == connector)
            .map(|(id, _)| *id)
    }

    fn is_free(&self, connector: u32) -> bool {
        (1..=self.connectors).contains(&connector)
            && !self.state.active_transactions.contains_key(&connector)
            && !self.starting.contains(&connector)
            && self.operative(connector)
    }

    /// The StatusNotification status that describes a connector right now.
    fn status_of(&self, connector: u32) -> &'static str {
        if !self.operative(connector) {
            "Unavailable"
        } else if self.state.active_transactions.contains_key(&connector) {
            "Charging"
        } else if connector > 0 && self.reservation_on(connector).is_some() {
            "Reserved"
        } else {
            "Available"
        }
    }

    /// Takes a reservation for `id_tag` on `connector` (consumed by the StartTransaction that uses it).
    fn take_reservation(&mut self, connector: u32, id_tag: &str) -> Option<i64> {
        let id = self.reservation_on(connector)?;
        if self.reservation_tags.get(&id).map(String::as_str) != Some(id_tag) {
            return None;
        }
        self.state.reservations.remove(&id);
        self.reservation_tags.remove(&id);
        Some(id)
    }

    fn begin_transaction(&mut self, connector: u32, transaction_id: i64, meta: TxMeta) {
        self.starting.remove(&connector);
        self.state
            .active_transactions
            .insert(connector, transaction_id);
        self.tx_meta.insert(connector, meta);
    }

    /// Removes a transaction and applies a ChangeAvailability that was waiting for it.
    fn end_transaction(&mut self, connector: u32) -> Option<(i64, Option<TxMeta>)> {
        let tx = self.state.active_transactions.remove(&connector)?;
        let meta = self.tx_meta.remove(&connector);
        if let Some(kind) = self.scheduled_availability.remove(&connector) {
            self.state.availability.insert(connector, kind);
        }
        if !self.state.active_transactions.is_empty() {
            return Some((tx, meta));
        }
        if let Some(kind) = self.scheduled_availability.remove(&0) {
            self.state.availability.insert(0, kind);
        }
        Some((tx, meta))
    }
}

/// The error half of an answer: sent as a CALLERROR.
#[derive(Debug, Clone, PartialEq)]
struct CallErr {
    code: &'static str,
    description: String,
}

impl CallErr {
    fn new(code: &'static str, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }
}

/// Work done after the answer is on the wire: a charger confirms first, then acts.
#[derive(Debug, Clone, PartialEq)]
enum FollowUp {
    Reset {
        hard: bool,
    },
    RemoteStart {
        connector: u32,
        id_tag: String,
    },
    /// A transaction that already left `active_transactions`; send its StopTransaction.
    Stop {
        connector: u32,
        transaction_id: i64,
        meta: Option<TxMeta>,
        reason: &'static str,
    },
    Trigger {
        message: String,
        connector: Option<u32>,
    },
    FirmwareUpdate,
    Status {
        connector: u32,
        status: &'static str,
    },
    HeartbeatInterval(u64),
}

type Answer = Result<(Value, Vec<FollowUp>), CallErr>;

fn missing(name: &str) -> CallErr {
    CallErr::new(
        "OccurenceConstraintViolation",
        format!("required field {name} is missing"),
    )
}

fn wrong_type(name: &str, want: &str) -> CallErr {
    CallErr::new(
        "TypeConstraintViolation",
        format!("field {name} must be {want}"),
    )
}

fn opt_str<'a>(p: &'a Value, name: &str) -> Result<Option<&'a str>, CallErr> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| wrong_type(name, "a string")),
    }
}

fn req_str<'a>(p: &'a Value, name: &str) -> Result<&'a str, CallErr> {
    opt_str(p, name)?.ok_or_else(|| missing(name))
}

fn opt_int(p: &Value, name: &str) -> Result<Option<i64>, CallErr> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| wrong_type(name, "an integer")),
    }
}

fn req_int(p: &Value, name: &str) -> Result<i64, CallErr> {
    opt_int(p, name)?.ok_or_else(|| missing(name))
}

/// A connector id that must be ≥ 0 and fit u32; range checks against the connector count are the caller's.
fn req_connector(p: &Value, name: &str) -> Result<u32, CallErr> {
    u32::try_from(req_int(p, name)?)
        .map_err(|_| CallErr::new("PropertyConstraintViolation", format!("{name} must be ≥ 0")))
}

fn one_of<'a>(value: &'a str, allowed: &[&str], name: &str) -> Result<&'a str, CallErr> {
    if allowed.contains(&value) {
        Ok(value)
    } else {
        Err(CallErr::new(
            "PropertyConstraintViolation",
            format!("{name} must be one of {allowed:?}"),
        ))
    }
}

fn status(s: &str) -> Value {
    json!({ "status": s })
}

fn plain(s: &str) -> Answer {
    Ok((status(s), Vec::new()))
}

/// The answer to one central-system CALL, and the work to do once it is sent. Mutates `inner` right away
/// so the next CALL sees the effect even while the answer is still delayed by `reply_delay`.
fn answer_call(inner: &mut Inner, action: &str, payload: &Value) -> Answer {
    if !payload.is_object() {
        return Err(CallErr::new(
            "FormationViolation",
            "payload must be a JSON object",
        ));
    }
    match action {
        "Reset" => {
            let kind = one_of(req_str(payload, "type")?, &["Hard", "Soft"], "type")?;
            Ok((
                status("Accepted"),
                vec![FollowUp::Reset {
                    hard: kind == "Hard",
                }],
            ))
        }
        "RemoteStartTransaction" => answer_remote_start(inner, payload),
        "RemoteStopTransaction" => {
            let tx = req_int(payload, "transactionId")?;
            let connector = inner
                .state
                .active_transactions
                .iter()
                .find(|(_, t)| **t == tx)
                .map(|(c, _)| *c);
            match connector.and_then(|c| inner.end_transaction(c).map(|(_, m)| (c, m))) {
                Some((connector, meta)) => Ok((
                    status("Accepted"),
                    vec![FollowUp::Stop {
                        connector,
                        transaction_id: tx,
                        meta,
                        reason: "Remote",
                    }],
                )),
                None => plain("Rejected"),
            }
        }
        "ChangeConfiguration" => answer_change_configuration(inner, payload),
        "GetConfiguration" => answer_get_configuration(inner, payload),
        "ChangeAvailability" => answer_change_availability(inner, payload),
        "UnlockConnector" => {
            let c = req_connector(payload, "connectorId")?;
            if c == 0 || c > inner.connectors {
                return plain("NotSupported");
            }
            // Unlocking the cable ends a running transaction, as on a real charger.
            let follow = match inner.end_transaction(c) {
                Some((transaction_id, meta)) => vec![FollowUp::Stop {
                    connector: c,
                    transaction_id,
                    meta,
                    reason: "UnlockCommand",
                }],
                None => Vec::new(),
            };
            Ok((status("Unlocked"), follow))
        }
        "ClearCache" => plain("Accepted"),
        "TriggerMessage" => {
            let message = req_str(payload, "requestedMessage")?;
            let connector = match opt_int(payload, "connectorId")? {
                None => None,
                Some(c) => match u32::try_from(c) {
                    Ok(c) if c <= inner.connectors => Some(c),
                    _ => return plain("Rejected"),
                },
            };
            const KNOWN: &[&str] = &[
                "BootNotification",
                "DiagnosticsStatusNotification",
                "FirmwareStatusNotification",
                "Heartbeat",
                "MeterValues",
                "StatusNotification",
            ];
            if !KNOWN.contains(&message) {
                return plain("NotImplemented");
            }
            Ok((
                status("Accepted"),
                vec![FollowUp::Trigger {
                    message: message.to_owned(),
                    connector,
                }],
            ))
        }
        "DataTransfer" => {
            let vendor = req_str(payload, "vendorId")?;
            let data = opt_str(payload, "data")?;
            if vendor != inner.vendor {
                return plain("UnknownVendorId");
            }
            let mut v = status("Accepted");
            if let (Some(d), Some(obj)) = (data, v.as_object_mut()) {
                obj.insert("data".to_owned(), json!(d));
            }
            Ok((v, Vec::new()))
        }
        "GetDiagnostics" => {
            req_str(payload, "location")?;
            Ok((json!({ "fileName": "diag.log" }), Vec::new()))
        }
        "UpdateFirmware" => {
            req_str(payload, "location")?;
            req_str(payload, "retrieveDate")?;
            Ok((json!({}), vec![FollowUp::FirmwareUpdate]))
        }
        "GetLocalListVersion" => Ok((
            json!({ "listVersion": inner.state.local_list_version }),
            Vec::new(),
        )),
        "SendLocalList" => {
            let version = req_int(payload, "listVersion")?;
            let kind = one_of(
                req_str(payload, "updateType")?,
                &["Differential", "Full"],
                "updateType",
            )?;
            if kind == "Differential" && version <= inner.state.local_list_version {
                return plain("VersionMismatch");
            }
            inner.state.local_list_version = version;
            plain("Accepted")
        }
        "ReserveNow" => answer_reserve_now(inner, payload),
        "CancelReservation" => {
            let id = req_int(payload, "reservationId")?;
            let Some(connector) = inner.state.reservations.remove(&id) else {
                return plain("Rejected");
            };
            inner.reservation_tags.remove(&id);
            let follow = if connector > 0 {
                vec![FollowUp::Status {
                    connector,
                    status: inner.status_of(connector),
                }]
            } else {
                Vec::new()
            };
            Ok((status("Accepted"), follow))
        }
        "SetChargingProfile" => answer_set_charging_profile(inner, payload),
        "ClearChargingProfile" => answer_clear_charging_profile(inner, payload),
        "GetCompositeSchedule" => answer_composite_schedule(inner, payload),
        other => Err(CallErr::new(
            "NotImplemented",
            format!("action {other} is not implemented by this charge point"),
        )),
    }
}

fn answer_remote_start(inner: &mut Inner, payload: &Value) -> Answer {
    let id_tag = req_str(payload, "idTag")?;
    let requested = opt_int(payload, "connectorId")?;
    let connector = match requested {
        Some(c) => u32::try_from(c).ok().filter(|c| inner.is_free(*c)),
        None => (1..=inner.connectors).find(|c| inner.is_free(*c)),
    };
    let Some(connector) = connector else {
        return plain("Rejected");
    };
    if let Some(profile) = payload.get("chargingProfile").filter(|p| p.is_object()) {
        // The profile of a remote start applies to the transaction about to begin.
        store_profile(inner, connector, profile.clone());
    }
    inner.starting.insert(connector);
    Ok((
        status("Accepted"),
        vec![FollowUp::RemoteStart {
            connector,
            id_tag: id_tag.to_owned(),
        }],
    ))
}

fn answer_change_configuration(inner: &mut Inner, payload: &Value) -> Answer {
    let key = req_str(payload, "key")?;
    let value = req_str(payload, "value")?;
    let Some((current, readonly)) = inner.state.configuration.get_mut(key) else {
        return plain("NotSupported");
    };
    if *readonly {
        return plain("Rejected");
    }
    let valid = if INT_KEYS.contains(&key) {
        value.trim().parse::<u64>().is_ok()
    } else if BOOL_KEYS.contains(&key) {
        matches!(value.to_ascii_lowercase().as_str(), "true" | "false")
    } else {
        true
    };
    if !valid {
        return plain("Rejected");
    }
    *current = value.trim().to_owned();
    let follow = match (key, value.trim().parse::<u64>()) {
        ("HeartbeatInterval", Ok(secs)) => vec![FollowUp::HeartbeatInterval(secs)],
        _ => Vec::new(),
    };
    Ok((status("Accepted"), follow))
}

fn answer_get_configuration(inner: &Inner, payload: &Value) -> Answer {
    let entry = |k: &str, (v, ro): &(String, bool)| json!({ "key": clip(k, 50), "readonly": ro, "value": clip(v, 500) });
    let requested = match payload.get("key") {
        None | Some(Value::Null) => None,
        Some(Value::Array(keys)) => Some(
            keys.iter()
                .map(|k| {
                    k.as_str()
                        .ok_or_else(|| wrong_type("key", "an array of strings"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(wrong_type("key", "an array of strings")),
    };
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    match requested {
        // An empty key list means "all keys", like no list at all (OCPP 1.6 §5.8).
        Some(keys) if !keys.is_empty() => {
            for k in keys {
                match inner.state.configuration.get(k) {
                    Some(e) => known.push(entry(k, e)),
                    None => unknown.push(json!(clip(k, 50))),
                }
            }
        }
        _ => {
            for (k, e) in &inner.state.configuration {
                known.push(entry(k, e));
            }
        }
    }
    let mut out = json!({ "configurationKey": known });
    if let (false, Some(obj)) = (unknown.is_empty(), out.as_object_mut()) {
        obj.insert("unknownKey".to_owned(), Value::Array(unknown));
    }
    Ok((out, Vec::new()))
}

fn answer_change_availability(inner: &mut Inner, payload: &Value) -> Answer {
    let connector = req_connector(payload, "connectorId")?;
    let kind = one_of(
        req_str(payload, "type")?,
        &["Inoperative", "Operative"],
        "type",
    )?;
    if connector > inner.connectors {
        return plain("Rejected");
    }
    let busy = if connector == 0 {
        !inner.state.active_transactions.is_empty()
    } else {
        inner.state.active_transactions.contains_key(&connector)
    };
    if busy {
        inner
            .scheduled_availability
            .insert(connector, kind.to_owned());
        return plain("Scheduled");
    }
    inner.state.availability.insert(connector, kind.to_owned());
    let affected: Vec<u32> = if connector == 0 {
        (0..=inner.connectors).collect()
    } else {
        vec![connector]
    };
    let follow = affected
        .into_iter()
        .map(|c| FollowUp::Status {
            connector: c,
            status: inner.status_of(c),
        })
        .collect();
    Ok((status("Accepted"), follow))
}

fn answer_reserve_now(inner: &mut Inner, payload: &Value) -> Answer {
    let connector = req_connector(payload, "connectorId")?;
    req_str(payload, "expiryDate")?;
    let id_tag = req_str(payload, "idTag")?;
    let reservation = req_int(payload, "reservationId")?;
    if connector > inner.connectors {
        return plain("Rejected");
    }
    if !inner.operative(connector) {
        return plain("Unavailable");
    }
    let occupied = if connector == 0 {
        (1..=inner.connectors).all(|c| !inner.is_free(c))
    } else {
        inner.state.active_transactions.contains_key(&connector)
            || inner.starting.contains(&connector)
            || inner
                .reservation_on(connector)
                .is_some_and(|other| other != reservation)
    };
    if occupied {
        return plain("Occupied");
    }
    // The same reservationId replaces an earlier reservation (OCPP 1.6 §5.13).
    inner.state.reservations.insert(reservation, connector);
    inner
        .reservation_tags
        .insert(reservation, id_tag.to_owned());
    let follow = if connector > 0 {
        vec![FollowUp::Status {
            connector,
            status: "Reserved",
        }]
    } else {
        Vec::new()
    };
    Ok((status("Accepted"), follow))
}

const PURPOSES: &[&str] = &["ChargePointMaxProfile", "TxDefaultProfile", "TxProfile"];

fn store_profile(inner: &mut Inner, connector: u32, profile: Value) {
    let id = profile.get("chargingProfileId").and_then(Value::as_i64);
    let stack = profile.get("stackLevel").and_then(Value::as_i64);
    let purpose = profile
        .get("chargingProfilePurpose")
        .and_then(Value::as_str)
        .map(str::to_owned);
    // A profile with the same id, or the same stack level and purpose on the same connector, replaces the
    // old one (OCPP 1.6 §3.13.2).
    let mut i = 0;
    while i < inner.state.charging_profiles.len() {
        let old = &inner.state.charging_profiles[i];
        let same_id = id.is_some() && old.get("chargingProfileId").and_then(Value::as_i64) == id;
        let same_slot = inner.profile_connectors.get(i) == Some(&connector)
            && old.get("stackLevel").and_then(Value::as_i64) == stack
            && old.get("chargingProfilePurpose").and_then(Value::as_str) == purpose.as_deref();
        if same_id || same_slot {
            inner.state.charging_profiles.remove(i);
            inner.profile_connectors.remove(i);
        } else {
            i += 1;
        }
    }
    inner.state.charging_profiles.push(profile);
    inner.profile_connectors.push(connector);
}

fn answer_set_charging_profile(inner: &mut Inner, payload: &Value) -> Answer {
    let connector = req_connector(payload, "connectorId")?;
    let profile = payload
        .get("csChargingProfiles")
        .ok_or_else(|| missing("csChargingProfiles"))?;
    if !profile.is_object() {
        return Err(wrong_type("csChargingProfiles", "an object"));
    }
    req_int(profile, "chargingProfileId")?;
    req_int(profile, "stackLevel")?;
    one_of(
        req_str(profile, "chargingProfilePurpose")?,
        PURPOSES,
        "chargingProfilePurpose",
    )?;
    req_str(profile, "chargingProfileKind")?;
    let schedule = profile
        .get("chargingSchedule")
        .filter(|s| s.is_object())
        .ok_or_else(|| missing("chargingSchedule"))?;
    req_str(schedule, "chargingRateUnit")?;
    if connector > inner.connectors {
        return plain("Rejected");
    }
    // Lenient on purpose: OCPP 1.6 lets a charger reject a TxProfile outside a transaction, but the
    // simulator is a test driver and accepts it, so server tests can exercise the call at any time.
    store_profile(inner, connector, profile.clone());
    plain("Accepted")
}

fn answer_clear_charging_profile(inner: &mut Inner, payload: &Value) -> Answer {
    let id = opt_int(payload, "id")?;
    let connector = opt_int(payload, "connectorId")?;
    let purpose = opt_str(payload, "chargingProfilePurpose")?;
    let stack = opt_int(payload, "stackLevel")?;
    let before = inner.state.charging_profiles.len();
    let mut i = 0;
    while i < inner.state.charging_profiles.len() {
        let p = &inner.state.charging_profiles[i];
        let c = inner.profile_connectors.get(i).copied().map(i64::from);
        // An id identifies the profile on its own; the other criteria combine (OCPP 1.6 §5.5).
        let matches = match id {
            Some(id) => p.get("chargingProfileId").and_then(Value::as_i64) == Some(id),
            None => {
                connector.is_none_or(|want| c == Some(want))
                    && purpose.is_none_or(|want| {
                        p.get("chargingProfilePurpose").and_then(Value::as_str) == Some(want)
                    })
                    && stack.is_none_or(|want| {
                        p.get("stackLevel").and_then(Value::as_i64) == Some(want)
                    })
            }
        };
        if matches {
            inner.state.charging_profiles.remove(i);
            inner.profile_connectors.remove(i);
        } else {
            i += 1;
        }
    }
    plain(if inner.state.charging_profiles.len() < before {
        "Accepted"
    } else {
        "Unknown"
    })
}

/// Rounds to one decimal so `limit` satisfies the schema's `multipleOf: 0.1`.
fn round_tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The composite schedule is the stored profile that takes precedence on the connector (TxProfile over
/// TxDefaultProfile over ChargePointMaxProfile, higher stack level first), cut to the requested duration
/// and converted to the requested unit at 230 V per phase.
fn answer_composite_schedule(inner: &Inner, payload: &Value) -> Answer {
    let connector = req_connector(payload, "connectorId")?;
    let duration = req_int(payload, "duration")?;
    let unit = match opt_str(payload, "chargingRateUnit")? {
        Some(u) => Some(one_of(u, &["A", "W"], "chargingRateUnit")?),
        None => None,
    };
    if connector > inner.connectors {
        return plain("Rejected");
    }
    let rank = |p: &Value| {
        let purpose = p.get("chargingProfilePurpose").and_then(Value::as_str);
        let order = PURPOSES
            .iter()
            .position(|x| Some(*x) == purpose)
            .unwrap_or(0);
        (
            order,
            p.get("stackLevel").and_then(Value::as_i64).unwrap_or(0),
        )
    };
    let best = inner
        .state
        .charging_profiles
        .iter()
        .zip(&inner.profile_connectors)
        .filter(|(_, c)| **c == connector || **c == 0)
        .map(|(p, _)| p)
        .filter(|p| p.get("chargingSchedule").is_some_and(Value::is_object))
        .max_by_key(|p| rank(p));
    let Some(profile) = best else {
        return plain("Rejected");
    };
    let schedule = &profile["chargingSchedule"];
    let own_unit = schedule
        .get("chargingRateUnit")
        .and_then(Value::as_str)
        .unwrap_or("A");
    let out_unit = unit.unwrap_or(own_unit);
    let convert = |limit: f64, phases: f64| match (own_unit, out_unit) {
        ("A", "W") => limit * 230.0 * phases,
        ("W", "A") => limit / (230.0 * phases),
        _ => limit,
    };
    let periods = schedule
        .get("chargingSchedulePeriod")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out_periods = Vec::new();
    for p in periods {
        let start = p.get("startPeriod").and_then(Value::as_i64).unwrap_or(0);
        if start >= duration && !out_periods.is_empty() {
            continue;
        }
        let phases = p.get("numberPhases").and_then(Value::as_i64);
        let limit = p.get("limit").and_then(Value::as_f64).unwrap_or(0.0);
        let mut period = json!({
            "startPeriod": start,
            "limit": round_tenth(convert(limit, phases.unwrap_or(3) as f64)),
        });
        if let (Some(n), Some(obj)) = (phases, period.as_object_mut()) {
            obj.insert("numberPhases".to_owned(), json!(n));
        }
        out_periods.push(period);
    }
    let now = now_ts();
    Ok((
        json!({
            "status": "Accepted",
            "connectorId": connector,
            "scheduleStart": now,
            "chargingSchedule": {
                "duration": duration,
                "startSchedule": now,
                "chargingRateUnit": out_unit,
                "chargingSchedulePeriod": out_periods,
            },
        }),
        Vec::new(),
    ))
}

// ---------------------------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------------------------

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Write each frame straight away: OCPP is request/response, buffering only adds latency.
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Host and port of a `ws://` URI; TLS is out of scope for the simulator (no TLS dependency).
fn target(uri: &Uri) -> Result<(String, u16), OcppSimError> {
    match uri.scheme_str() {
        Some("ws") => {}
        other => {
            return Err(OcppSimError::Connect(format!(
                "unsupported scheme {other:?}: only ws:// is supported"
            )))
        }
    }
    let host = uri
        .host()
        .ok_or_else(|| OcppSimError::Connect(format!("no host in {uri}")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(80)))
}

async fn tcp_connect(
    host: &str,
    port: u16,
    local: Option<IpAddr>,
) -> Result<TcpStream, OcppSimError> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| OcppSimError::Connect(format!("resolve {host}: {e}")))?;
    let mut last_error = None;
    for addr in addrs {
        let attempt = match local {
            None => TcpStream::connect(addr).await,
            // A source address of the other family can never reach this peer address.
            Some(ip) if ip.is_ipv4() != addr.is_ipv4() => continue,
            Some(ip) => {
                let socket = if addr.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                };
                match socket.and_then(|s| s.bind(SocketAddr::new(ip, 0)).map(|()| s)) {
                    Ok(s) => s.connect(addr).await,
                    Err(e) => Err(e),
                }
            }
        };
        match attempt {
            Ok(stream) => {
                // Small request/response frames: Nagle's algorithm would only delay them.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!("set_nodelay failed: {e}");
                }
                return Ok(stream);
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(OcppSimError::Connect(match last_error {
        Some(e) => format!("tcp connect to {host}:{port}: {e}"),
        None => format!("no usable address for {host}:{port}"),
    }))
}

fn handshake_error(e: tungstenite::Error) -> OcppSimError {
    match e {
        tungstenite::Error::Http(resp) => {
            let s = resp.status();
            OcppSimError::Connect(
                format!("HTTP {} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
                    .trim_end()
                    .to_owned(),
            )
        }
        other => OcppSimError::Connect(format!("websocket handshake: {other}")),
    }
}

fn header(value: &str) -> Result<HeaderValue, OcppSimError> {
    HeaderValue::from_str(value)
        .map_err(|e| OcppSimError::Connect(format!("bad header value: {e}")))
}

/// TCP connect plus WebSocket handshake, bounded by `WAIT`. tungstenite checks that the server selected one
/// of the offered subprotocols, so a server that does not echo `ocpp1.6` fails here.
async fn open_socket(cfg: &OcppSimConfig) -> Result<Ws, OcppSimError> {
    let url = charge_point_url(&cfg.url, &cfg.id);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| OcppSimError::Connect(format!("bad url {url}: {e}")))?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", header(SUBPROTOCOL)?);
    if let Some(pw) = &cfg.password {
        request
            .headers_mut()
            .insert("Authorization", header(&basic_auth(&cfg.id, pw))?);
    }
    let (host, port) = target(request.uri())?;
    let handshake = async {
        let tcp = tcp_connect(&host, port, cfg.local_addr).await?;
        tokio_tungstenite::client_async_with_config(request, tcp, Some(ws_config()))
            .await
            .map_err(handshake_error)
    };
    let (ws, _response) = tokio::time::timeout(WAIT, handshake)
        .await
        .map_err(|_| OcppSimError::Timeout)??;
    Ok(ws)
}

/// Sends a close frame and waits briefly for the server's, so the server sees an orderly close rather than
/// a vanished charger.
async fn close_politely(ws: &mut Ws) {
    if let Err(e) = ws.close(None).await {
        tracing::debug!("close: {e}");
        return;
    }
    let drain = async { while let Some(Ok(_)) = ws.next().await {} };
    if tokio::time::timeout(Duration::from_secs(1), drain)
        .await
        .is_err()
    {
        tracing::debug!("server did not finish the close handshake in time");
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The handshake written by hand rather than through tungstenite, because tungstenite refuses responses
/// whose subprotocol does not match the offer, and those are exactly what this probe must report.
async fn raw_handshake(
    url: &str,
    id: &str,
    protocols: Option<&str>,
    password: Option<&str>,
) -> Result<Option<String>, OcppSimError> {
    let full = charge_point_url(url, id);
    let uri: Uri = full
        .parse()
        .map_err(|e| OcppSimError::Connect(format!("bad url {full}: {e}")))?;
    let (host, port) = target(&uri)?;
    let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
        tungstenite::handshake::client::generate_key()
    );
    if let Some(p) = protocols {
        request.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    if let Some(pw) = password {
        request.push_str(&format!("Authorization: {}\r\n", basic_auth(id, pw)));
    }
    request.push_str("\r\n");

    let io = |e: std::io::Error| OcppSimError::Connect(format!("handshake i/o: {e}"));
    let mut tcp = tcp_connect(&host, port, None).await?;
    tcp.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > 16 * 1024 {
            return Err(OcppSimError::Protocol(
                "HTTP response head too large".into(),
            ));
        }
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(OcppSimError::Connect(
                "connection closed during handshake".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| OcppSimError::Protocol(format!("bad HTTP status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().trim();
    if code != 101 {
        return Err(OcppSimError::Connect(
            format!("HTTP {code} {reason}").trim_end().to_owned(),
        ));
    }
    let negotiated = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-protocol"))
        .map(|(_, v)| v.trim().to_owned());
    let leftover = buf[head_end..].to_vec();
    let mut ws =
        WebSocketStream::from_partially_read(tcp, leftover, Role::Client, Some(ws_config())).await;
    close_politely(&mut ws).await;
    Ok(negotiated)
}

// ---------------------------------------------------------------------------------------------------------
// The per-charger task
// ---------------------------------------------------------------------------------------------------------

type CallReply = oneshot::Sender<Result<CallOutcome, OcppSimError>>;
type RawReply = oneshot::Sender<Result<Value, OcppSimError>>;

/// Requests from the handle to its task.
enum Command {
    Call {
        action: String,
        payload: Value,
        reply: CallReply,
    },
    Raw {
        text: String,
        reply: RawReply,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// Who gets the answer to one of our CALLs.
enum Waiter {
    External(CallReply),
    Boot,
    /// A BootNotification sent because of TriggerMessage: the charger does not reboot.
    TriggeredBoot,
    /// One of the StatusNotifications that complete a boot.
    Startup,
    StartTx {
        connector: u32,
        meta: TxMeta,
    },
    Ignore,
}

struct Outgoing {
    id: String,
    action: String,
    payload: Value,
    waiter: Waiter,
}

struct InFlight {
    id: String,
    action: String,
    waiter: Waiter,
    deadline: Instant,
}

enum Timer {
    BootRetry,
    Heartbeat,
    Reconnect,
    /// An answer held back by `reply_delay`, with the work that follows it.
    Answer {
        frame: String,
        follow: Vec<FollowUp>,
    },
}

enum Phase {
    /// BootNotification sent or waiting for a Pending retry; handle CALLs wait.
    Booting {
        pending_retries: u32,
    },
    /// Boot accepted; the StatusNotifications that finish the boot are outstanding.
    Starting {
        outstanding: usize,
    },
    Accepted,
    /// Reset accepted: the queued StopTransactions drain, then the socket closes.
    Resetting {
        deadline: Instant,
    },
    /// Socket closed for the reboot; a Reconnect timer runs.
    Rebooting {
        attempt: u32,
    },
}

struct Shared {
    inner: Mutex<Inner>,
    connected: AtomicBool,
    /// `Some(close frame)` once the connection is over for good.
    closed: watch::Sender<Option<Option<(u16, String)>>>,
}

impl Shared {
    /// Poisoning cannot leave the state half-updated in a way that matters to a simulator, so a poisoned
    /// lock is used as is rather than turned into a panic.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mark_closed(&self, info: Option<(u16, String)>) {
        self.connected.store(false, Ordering::SeqCst);
        self.closed.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(info);
                true
            } else {
                false
            }
        });
    }
}

enum Event {
    Command(Option<Command>),
    Socket(Option<Result<Message, tungstenite::Error>>),
    Tick,
}

async fn next_message(ws: &mut Option<Ws>) -> Option<Result<Message, tungstenite::Error>> {
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

struct Runner {
    cfg: OcppSimConfig,
    shared: Arc<Shared>,
    cmds: mpsc::Receiver<Command>,
    ws: Option<Ws>,
    phase: Phase,
    outbox: VecDeque<Outgoing>,
    in_flight: Option<InFlight>,
    raw_waiters: VecDeque<RawReply>,
    /// Handle commands that arrived while the charger was (re)booting.
    deferred: VecDeque<Command>,
    timers: Vec<(Instant, Timer)>,
    /// `connect` waits on this for the first boot.
    boot_reply: Option<oneshot::Sender<Result<(), OcppSimError>>>,
    close_info: Option<(u16, String)>,
    close_ack: Option<oneshot::Sender<()>>,
    done: bool,
}

impl Runner {
    async fn run(mut self) {
        self.start_boot();
        self.pump().await;
        while !self.done {
            let deadline = self.next_deadline();
            let event = tokio::select! {
                cmd = self.cmds.recv() => Event::Command(cmd),
                msg = next_message(&mut self.ws) => Event::Socket(msg),
                () = sleep_until_opt(deadline) => Event::Tick,
            };
            match event {
                Event::Command(Some(cmd)) => self.on_command(cmd).await,
                // The handle was dropped: nobody can observe the charger any more.
                Event::Command(None) => self.done = true,
                Event::Socket(msg) => self.on_socket(msg).await,
                Event::Tick => self.on_tick().await,
            }
            self.pump().await;
        }
        self.shutdown().await;
    }

    fn next_deadline(&self) -> Option<Instant> {
        let timers = self.timers.iter().map(|(t, _)| *t);
        let flight = self.in_flight.as_ref().map(|f| f.deadline);
        let reset = match self.phase {
            Phase::Resetting { deadline } => Some(deadline),
            _ => None,
        };
        timers.chain(flight).chain(reset).min()
    }

    fn enqueue(&mut self, action: &str, payload: Value, waiter: Waiter) {
        self.outbox.push_back(Outgoing {
            id: new_message_id(),
            action: action.to_owned(),
            payload,
            waiter,
        });
    }

    async fn send_text(&mut self, text: String) -> bool {
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        match ws.send(Message::text(text)).await {
            Ok(()) => true,
            Err(e) => {
                // The read side reports the broken connection; nothing else to do here.
                tracing::debug!(id = %self.cfg.id, "send failed: {e}");
                false
            }
        }
    }

    /// Sends the next queued CALL when none is in flight (OCPP-J: one outstanding CALL per direction).
    async fn pump(&mut self) {
        if matches!(self.phase, Phase::Accepted) {
            while let Some(cmd) = self.deferred.pop_front() {
                self.on_command(cmd).await;
            }
        }
        while self.in_flight.is_none() && self.ws.is_some() {
            let booting = matches!(self.phase, Phase::Booting { .. });
            let Some(next) = self.outbox.front() else {
                break;
            };
            // Nothing but BootNotification goes out before the central system accepted us.
            if booting && !matches!(next.waiter, Waiter::Boot) {
                break;
            }
            let Some(out) = self.outbox.pop_front() else {
                break;
            };
            let frame = call_frame(&out.id, &out.action, &out.payload);
            if self.send_text(frame).await {
                self.in_flight = Some(InFlight {
                    id: out.id,
                    action: out.action,
                    waiter: out.waiter,
                    deadline: Instant::now() + WAIT,
                });
            } else {
                self.outbox.push_front(out);
                break;
            }
        }
        if let Phase::Resetting { .. } = self.phase {
            if self.in_flight.is_none() && self.outbox.is_empty() {
                self.finish_reset().await;
            }
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Close { done } => {
                self.close_ack = Some(done);
                self.done = true;
            }
            cmd if !matches!(self.phase, Phase::Accepted) => self.deferred.push_back(cmd),
            Command::Call {
                action,
                payload,
                reply,
            } => self.enqueue(&action, payload, Waiter::External(reply)),
            Command::Raw { text, reply } => {
                if self.send_text(text).await {
                    self.raw_waiters.push_back(reply);
                } else {
                    let _ = reply.send(Err(OcppSimError::Closed));
                }
            }
        }
    }

    async fn on_socket(&mut self, msg: Option<Result<Message, tungstenite::Error>>) {
        match msg {
            Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
            Some(Ok(Message::Ping(_))) => {
                // tungstenite queues the Pong itself and flushes it on the next read.
                self.shared.lock().state.pings_received += 1;
            }
            Some(Ok(Message::Close(frame))) => {
                self.close_info = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(id = %self.cfg.id, "socket error: {e}");
                self.on_disconnected();
            }
            None => self.on_disconnected(),
        }
    }

    /// The server ended the connection. The simulator does not reconnect on its own: a server that closed
    /// us on purpose (duplicate id, bad auth) must not be fought with a reconnect loop.
    fn on_disconnected(&mut self) {
        self.ws = None;
        self.fail_all();
        if let Some(reply) = self.boot_reply.take() {
            let _ = reply.send(Err(OcppSimError::Closed));
        }
        self.shared.mark_closed(self.close_info.take());
        self.done = true;
    }

    /// Fails everything that waits for the connection.
    fn fail_all(&mut self) {
        self.shared.connected.store(false, Ordering::SeqCst);
        if let Some(f) = self.in_flight.take() {
            self.fail_waiter(f.waiter, OcppSimError::Closed);
        }
        while let Some(out) = self.outbox.pop_front() {
            self.fail_waiter(out.waiter, OcppSimError::Closed);
        }
        for w in self.raw_waiters.drain(..) {
            let _ = w.send(Err(OcppSimError::Closed));
        }
    }

    fn fail_waiter(&mut self, waiter: Waiter, err: OcppSimError) {
        match waiter {
            Waiter::External(reply) => {
                let _ = reply.send(Err(err));
            }
            Waiter::Boot => self.fail_boot(err),
            Waiter::Startup => self.startup_done(),
            Waiter::StartTx { connector, .. } => {
                self.shared.lock().starting.remove(&connector);
            }
            Waiter::TriggeredBoot | Waiter::Ignore => {}
        }
    }

    async fn on_text(&mut self, text: &str) {
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(id = %self.cfg.id, "unparseable frame from server: {e}");
                if let Some(w) = self.raw_waiters.pop_front() {
                    let _ = w.send(Err(OcppSimError::Protocol(format!("invalid JSON: {e}"))));
                }
                return;
            }
        };
        match parse_frame(&value) {
            Ok(Frame::Call {
                id,
                action,
                payload,
            }) => self.on_call(&id, &action, payload).await,
            Ok(Frame::Result { id, payload }) if self.is_in_flight(&id) => {
                self.complete(CallOutcome::Result(payload));
            }
            Ok(Frame::Error {
                id,
                code,
                description,
                details,
            }) if self.is_in_flight(&id) => self.complete(CallOutcome::Error {
                code,
                description,
                details,
            }),
            // Any other non-CALL frame answers something sent with `send_raw` (or nothing at all).
            _ => match self.raw_waiters.pop_front() {
                Some(w) => {
                    let _ = w.send(Ok(value));
                }
                None => tracing::warn!(id = %self.cfg.id, "unsolicited frame: {text}"),
            },
        }
    }

    fn is_in_flight(&self, id: &str) -> bool {
        self.in_flight.as_ref().is_some_and(|f| f.id == id)
    }

    async fn on_call(&mut self, id: &str, action: &str, payload: Value) {
        let answer = {
            let mut inner = self.shared.lock();
            inner
                .state
                .calls_received
                .push((action.to_owned(), payload.clone()));
            if !self.cfg.answer_calls {
                return;
            }
            answer_call(&mut inner, action, &payload)
        };
        let (frame, follow) = match answer {
            Ok((v, follow)) => (result_frame(id, &v), follow),
            Err(e) => (error_frame(id, e.code, &e.description), Vec::new()),
        };
        if self.cfg.reply_delay.is_zero() {
            self.send_answer(frame, follow).await;
        } else {
            let at = Instant::now() + self.cfg.reply_delay;
            self.timers.push((at, Timer::Answer { frame, follow }));
        }
    }

    async fn send_answer(&mut self, frame: String, follow: Vec<FollowUp>) {
        if !self.send_text(frame).await {
            return;
        }
        for f in follow {
            self.follow_up(f);
        }
    }
}

impl Runner {
    fn start_boot(&mut self) {
        if !matches!(self.phase, Phase::Booting { .. }) {
            self.phase = Phase::Booting { pending_retries: 0 };
        }
        self.outbox.push_front(Outgoing {
            id: new_message_id(),
            action: "BootNotification".to_owned(),
            payload: boot_request(&self.cfg),
            waiter: Waiter::Boot,
        });
    }

    fn complete(&mut self, outcome: CallOutcome) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        if let CallOutcome::Error {
            code, description, ..
        } = &outcome
        {
            tracing::debug!(id = %self.cfg.id, action = %f.action, "CALLERROR {code}: {description}");
        }
        match f.waiter {
            Waiter::External(reply) => {
                let _ = reply.send(Ok(outcome));
            }
            Waiter::Boot => self.on_boot_answer(outcome),
            Waiter::TriggeredBoot => {
                if let CallOutcome::Result(p) = outcome {
                    self.shared.lock().state.boot_response = Some(p);
                }
            }
            Waiter::Startup => self.startup_done(),
            Waiter::StartTx { connector, meta } => self.on_start_answer(connector, meta, outcome),
            Waiter::Ignore => {}
        }
    }

    fn on_boot_answer(&mut self, outcome: CallOutcome) {
        let p = match outcome {
            CallOutcome::Result(p) => p,
            CallOutcome::Error {
                code, description, ..
            } => {
                return self.fail_boot(OcppSimError::Protocol(format!(
                    "BootNotification answered with CALLERROR {code}: {description}"
                )))
            }
        };
        let status = p
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let interval = p.get("interval").and_then(Value::as_u64).unwrap_or(0);
        self.shared.lock().state.boot_response = Some(p);
        match status.as_str() {
            "Accepted" => {
                let statuses: Vec<Value> = {
                    let mut inner = self.shared.lock();
                    inner.state.boots += 1;
                    if interval > 0 {
                        if let Some(entry) = inner.state.configuration.get_mut("HeartbeatInterval")
                        {
                            entry.0 = interval.to_string();
                        }
                    }
                    (0..=self.cfg.connectors)
                        .map(|c| status_request(c, inner.status_of(c)))
                        .collect()
                };
                self.schedule_heartbeat();
                self.phase = Phase::Starting {
                    outstanding: statuses.len(),
                };
                // Ahead of anything queued during the boot, so the server learns the connectors first.
                for payload in statuses.into_iter().rev() {
                    self.outbox.push_front(Outgoing {
                        id: new_message_id(),
                        action: "StatusNotification".to_owned(),
                        payload,
                        waiter: Waiter::Startup,
                    });
                }
            }
            "Pending" => {
                let retries = match self.phase {
                    Phase::Booting { pending_retries } => pending_retries,
                    _ => 0,
                };
                if retries >= BOOT_PENDING_RETRIES {
                    return self.fail_boot(OcppSimError::Rejected(format!(
                        "BootNotification still Pending after {BOOT_PENDING_RETRIES} retries"
                    )));
                }
                self.phase = Phase::Booting {
                    pending_retries: retries + 1,
                };
                let wait = Duration::from_secs(interval.clamp(1, 60));
                self.timers.push((Instant::now() + wait, Timer::BootRetry));
            }
            other => self.fail_boot(OcppSimError::Rejected(format!("BootNotification {other}"))),
        }
    }

    fn fail_boot(&mut self, err: OcppSimError) {
        match self.boot_reply.take() {
            Some(reply) => {
                let _ = reply.send(Err(err));
            }
            None => tracing::warn!(id = %self.cfg.id, "boot after reset failed: {err}"),
        }
        self.done = true;
    }

    fn startup_done(&mut self) {
        if let Phase::Starting { outstanding } = &mut self.phase {
            *outstanding = outstanding.saturating_sub(1);
            if *outstanding == 0 {
                self.phase = Phase::Accepted;
                if let Some(reply) = self.boot_reply.take() {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    fn on_start_answer(&mut self, connector: u32, meta: TxMeta, outcome: CallOutcome) {
        let answer = match outcome {
            CallOutcome::Result(p) => p
                .get("transactionId")
                .and_then(Value::as_i64)
                .map(|tx| (tx, p["idTagInfo"]["status"] == "Accepted")),
            CallOutcome::Error { .. } => None,
        };
        let Some((tx, accepted)) = answer else {
            let status = {
                let mut inner = self.shared.lock();
                inner.starting.remove(&connector);
                inner.status_of(connector)
            };
            self.enqueue(
                "StatusNotification",
                status_request(connector, status),
                Waiter::Ignore,
            );
            return;
        };
        let ended = {
            let mut inner = self.shared.lock();
            inner.begin_transaction(connector, tx, meta);
            // A charger stops a transaction whose idTag the central system did not accept.
            if accepted {
                None
            } else {
                inner.end_transaction(connector)
            }
        };
        match ended {
            None => self.enqueue(
                "StatusNotification",
                status_request(connector, "Charging"),
                Waiter::Ignore,
            ),
            Some((transaction_id, meta)) => self.follow_up(FollowUp::Stop {
                connector,
                transaction_id,
                meta,
                reason: "DeAuthorized",
            }),
        }
    }

    fn follow_up(&mut self, f: FollowUp) {
        match f {
            FollowUp::Reset { hard } => self.begin_reset(hard),
            FollowUp::RemoteStart { connector, id_tag } => {
                let (authorize, meter_start, reservation) = {
                    let mut inner = self.shared.lock();
                    let authorize = inner
                        .config_value("AuthorizeRemoteTxRequests")
                        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
                    let reservation = inner.take_reservation(connector, &id_tag);
                    (authorize, inner.state.meter_wh, reservation)
                };
                if authorize {
                    // Sent for the central system's records; the simulator starts regardless of the answer.
                    self.enqueue("Authorize", authorize_request(&id_tag), Waiter::Ignore);
                }
                self.enqueue(
                    "StatusNotification",
                    status_request(connector, "Preparing"),
                    Waiter::Ignore,
                );
                let payload = start_request(connector, &id_tag, meter_start, reservation);
                let meta = TxMeta {
                    id_tag,
                    meter_start,
                    started_at: payload["timestamp"].as_str().unwrap_or_default().to_owned(),
                };
                self.enqueue(
                    "StartTransaction",
                    payload,
                    Waiter::StartTx { connector, meta },
                );
            }
            FollowUp::Stop {
                connector,
                transaction_id,
                meta,
                reason,
            } => {
                let (meter_stop, after) = {
                    let inner = self.shared.lock();
                    (inner.state.meter_wh, inner.status_of(connector))
                };
                let payload = stop_request(&StopInfo {
                    transaction_id,
                    id_tag: meta.as_ref().map(|m| m.id_tag.as_str()),
                    meter_start: meta.as_ref().map_or(meter_stop, |m| m.meter_start),
                    started_at: meta.as_ref().map(|m| m.started_at.as_str()),
                    meter_stop,
                    reason,
                });
                self.enqueue("StopTransaction", payload, Waiter::Ignore);
                // A charger about to reboot does not report connector states; the next boot does.
                if !matches!(self.phase, Phase::Resetting { .. }) {
                    self.enqueue(
                        "StatusNotification",
                        status_request(connector, "Finishing"),
                        Waiter::Ignore,
                    );
                    self.enqueue(
                        "StatusNotification",
                        status_request(connector, after),
                        Waiter::Ignore,
                    );
                }
            }
            FollowUp::Trigger { message, connector } => self.triggered(&message, connector),
            FollowUp::FirmwareUpdate => {
                for s in ["Downloading", "Downloaded", "Installing", "Installed"] {
                    self.enqueue(
                        "FirmwareStatusNotification",
                        firmware_status_request(s),
                        Waiter::Ignore,
                    );
                }
            }
            FollowUp::Status { connector, status } => {
                self.enqueue(
                    "StatusNotification",
                    status_request(connector, status),
                    Waiter::Ignore,
                );
            }
            FollowUp::HeartbeatInterval(_) => self.schedule_heartbeat(),
        }
    }

    /// Sends what TriggerMessage asked for (already answered Accepted).
    fn triggered(&mut self, message: &str, connector: Option<u32>) {
        let all = |from: u32| (from..=self.cfg.connectors).collect::<Vec<u32>>();
        match message {
            "BootNotification" => {
                self.enqueue(
                    "BootNotification",
                    boot_request(&self.cfg),
                    Waiter::TriggeredBoot,
                );
            }
            "Heartbeat" => self.enqueue("Heartbeat", json!({}), Waiter::Ignore),
            "DiagnosticsStatusNotification" => self.enqueue(
                "DiagnosticsStatusNotification",
                diagnostics_status_request("Idle"),
                Waiter::Ignore,
            ),
            "FirmwareStatusNotification" => self.enqueue(
                "FirmwareStatusNotification",
                firmware_status_request("Idle"),
                Waiter::Ignore,
            ),
            "MeterValues" => {
                let at = now_ts();
                let payloads: Vec<Value> = {
                    let inner = self.shared.lock();
                    connector
                        .map_or_else(|| all(1), |c| vec![c])
                        .into_iter()
                        .map(|c| {
                            let tx = inner.state.active_transactions.get(&c).copied();
                            let power = if tx.is_some() { POWER_W } else { 0 };
                            let mv = sample(&at, inner.state.meter_wh, power, "Trigger");
                            meter_values_request(c, tx, mv)
                        })
                        .collect()
                };
                for p in payloads {
                    self.enqueue("MeterValues", p, Waiter::Ignore);
                }
            }
            "StatusNotification" => {
                let payloads: Vec<Value> = {
                    let inner = self.shared.lock();
                    connector
                        .map_or_else(|| all(0), |c| vec![c])
                        .into_iter()
                        .map(|c| status_request(c, inner.status_of(c)))
                        .collect()
                };
                for p in payloads {
                    self.enqueue("StatusNotification", p, Waiter::Ignore);
                }
            }
            other => tracing::debug!("trigger {other} not supported"),
        }
    }

    fn begin_reset(&mut self, hard: bool) {
        if matches!(
            self.phase,
            Phase::Resetting { .. } | Phase::Rebooting { .. }
        ) {
            return;
        }
        let reason = if hard { "HardReset" } else { "SoftReset" };
        let ended: Vec<(u32, i64, Option<TxMeta>)> = {
            let mut inner = self.shared.lock();
            inner.starting.clear();
            let connectors: Vec<u32> = inner.state.active_transactions.keys().copied().collect();
            connectors
                .into_iter()
                .filter_map(|c| inner.end_transaction(c).map(|(tx, meta)| (c, tx, meta)))
                .collect()
        };
        self.phase = Phase::Resetting {
            deadline: Instant::now() + RESET_DRAIN,
        };
        for (connector, transaction_id, meta) in ended {
            self.follow_up(FollowUp::Stop {
                connector,
                transaction_id,
                meta,
                reason,
            });
        }
    }

    async fn finish_reset(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            close_politely(&mut ws).await;
        }
        // A BootNotification still pending belongs to the old connection; the reboot sends a fresh one,
        // so it must not count as a failed boot.
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| matches!(f.waiter, Waiter::Boot))
        {
            self.in_flight = None;
        }
        self.outbox.retain(|o| !matches!(o.waiter, Waiter::Boot));
        self.fail_all();
        self.timers
            .retain(|(_, t)| !matches!(t, Timer::Heartbeat | Timer::BootRetry));
        self.phase = Phase::Rebooting { attempt: 0 };
        self.timers
            .push((Instant::now() + REBOOT_PAUSE, Timer::Reconnect));
    }

    async fn reconnect(&mut self) {
        let Phase::Rebooting { attempt } = self.phase else {
            return;
        };
        match open_socket(&self.cfg).await {
            Ok(ws) => {
                self.ws = Some(ws);
                self.close_info = None;
                self.shared.connected.store(true, Ordering::SeqCst);
                self.phase = Phase::Booting { pending_retries: 0 };
                self.start_boot();
            }
            Err(e) => {
                let attempt = attempt + 1;
                if attempt >= RECONNECT_ATTEMPTS {
                    tracing::warn!(id = %self.cfg.id, "giving up reconnecting after reset: {e}");
                    self.done = true;
                    return;
                }
                tracing::debug!(id = %self.cfg.id, "reconnect attempt {attempt} failed: {e}");
                self.phase = Phase::Rebooting { attempt };
                let backoff = Duration::from_secs(u64::from(attempt.min(5)));
                self.timers
                    .push((Instant::now() + backoff, Timer::Reconnect));
            }
        }
    }

    fn schedule_heartbeat(&mut self) {
        self.timers.retain(|(_, t)| !matches!(t, Timer::Heartbeat));
        if !self.cfg.heartbeat {
            return;
        }
        let secs = self
            .shared
            .lock()
            .config_value("HeartbeatInterval")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if secs > 0 {
            let at = Instant::now() + Duration::from_secs(secs);
            self.timers.push((at, Timer::Heartbeat));
        }
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        if self.in_flight.as_ref().is_some_and(|f| f.deadline <= now) {
            if let Some(f) = self.in_flight.take() {
                tracing::warn!(id = %self.cfg.id, action = %f.action, "no answer within {WAIT:?}");
                self.fail_waiter(f.waiter, OcppSimError::Timeout);
            }
        }
        if let Phase::Resetting { deadline } = self.phase {
            if deadline <= now {
                self.finish_reset().await;
            }
        }
        let (mut due, rest): (Vec<_>, Vec<_>) = self.timers.drain(..).partition(|(t, _)| *t <= now);
        self.timers = rest;
        // Stable sort: answers delayed by the same amount keep their arrival order.
        due.sort_by_key(|(t, _)| *t);
        for (_, timer) in due {
            match timer {
                Timer::BootRetry => self.start_boot(),
                Timer::Heartbeat => {
                    let queued = self.outbox.iter().any(|o| o.action == "Heartbeat");
                    if matches!(self.phase, Phase::Accepted) && !queued {
                        self.enqueue("Heartbeat", json!({}), Waiter::Ignore);
                    }
                    self.schedule_heartbeat();
                }
                Timer::Reconnect => self.reconnect().await,
                Timer::Answer { frame, follow } => self.send_answer(frame, follow).await,
            }
        }
    }

    async fn shutdown(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            close_politely(&mut ws).await;
        }
        self.fail_all();
        if let Some(reply) = self.boot_reply.take() {
            let _ = reply.send(Err(OcppSimError::Closed));
        }
        self.cmds.close();
        let mut leftover: Vec<Command> = self.deferred.drain(..).collect();
        while let Ok(cmd) = self.cmds.try_recv() {
            leftover.push(cmd);
        }
        for cmd in leftover {
            match cmd {
                Command::Call { reply, .. } => {
                    let _ = reply.send(Err(OcppSimError::Closed));
                }
                Command::Raw { reply, .. } => {
                    let _ = reply.send(Err(OcppSimError::Closed));
                }
                Command::Close { done } => {
                    let _ = done.send(());
                }
            }
        }
        self.shared.mark_closed(self.close_info.take());
        if let Some(ack) = self.close_ack.take() {
            let _ = ack.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Public handle
// ---------------------------------------------------------------------------------------------------------

/// A connected, booted charge point. Dropping it (or `close`) closes the socket and ends its task.
pub struct OcppSim {
    id: String,
    cmds: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for OcppSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OcppSim")
            .field("id", &self.id)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl OcppSim {
    /// Connects (offering subprotocol `ocpp1.6`, Basic auth when configured), sends BootNotification and
    /// waits (≤ 10 s per attempt) for Accepted; Pending is retried after the returned interval at most three
    /// times; Rejected → `Err(Rejected)`. Then sends one StatusNotification for connector 0 and each
    /// connector and returns once they are answered.
    pub async fn connect(cfg: OcppSimConfig) -> Result<OcppSim, OcppSimError> {
        let ws = open_socket(&cfg).await?;
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (closed, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::new(&cfg)),
            connected: AtomicBool::new(true),
            closed,
        });
        let (boot_tx, boot_rx) = oneshot::channel();
        let id = cfg.id.clone();
        let runner = Runner {
            cfg,
            shared: Arc::clone(&shared),
            cmds: cmd_rx,
            ws: Some(ws),
            phase: Phase::Booting { pending_retries: 0 },
            outbox: VecDeque::new(),
            in_flight: None,
            raw_waiters: VecDeque::new(),
            deferred: VecDeque::new(),
            timers: Vec::new(),
            boot_reply: Some(boot_tx),
            close_info: None,
            close_ack: None,
            done: false,
        };
        tokio::spawn(runner.run());
        let sim = OcppSim {
            id,
            cmds: cmd_tx,
            shared,
        };
        match boot_rx.await {
            Ok(Ok(())) => Ok(sim),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(OcppSimError::Closed),
        }
    }

    /// Only the WebSocket handshake to `{url}/{id}` with an explicit `Sec-WebSocket-Protocol` value (`None`:
    /// header absent) and optional Basic password (username = id); no boot; closes right after.
    /// `Ok(subprotocol the server selected, None if absent)`, or `Err(Connect("HTTP <status> …"))` when
    /// refused.
    pub async fn handshake_only(
        url: &str,
        id: &str,
        protocols: Option<&str>,
        password: Option<&str>,
    ) -> Result<Option<String>, OcppSimError> {
        tokio::time::timeout(WAIT, raw_handshake(url, id, protocols, password))
            .await
            .map_err(|_| OcppSimError::Timeout)?
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends a CALL with a fresh unique messageId and waits ≤ 10 s for its CALLRESULT/CALLERROR.
    pub async fn call(&self, action: &str, payload: Value) -> Result<CallOutcome, OcppSimError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Call {
            action: action.to_owned(),
            payload,
            reply,
        };
        self.request(cmd, rx).await
    }

    /// Sends raw text and returns the next frame from the server that is not a CALL and does not answer one
    /// of the simulator's own CALLs (a CALLRESULT or CALLERROR array), within 10 s.
    pub async fn send_raw(&self, text: String) -> Result<Value, OcppSimError> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::Raw { text, reply }, rx).await
    }

    async fn request<T>(
        &self,
        cmd: Command,
        rx: oneshot::Receiver<Result<T, OcppSimError>>,
    ) -> Result<T, OcppSimError> {
        let work = async {
            self.cmds
                .send(cmd)
                .await
                .map_err(|_| OcppSimError::Closed)?;
            rx.await.map_err(|_| OcppSimError::Closed)?
        };
        tokio::time::timeout(WAIT, work)
            .await
            .map_err(|_| OcppSimError::Timeout)?
    }

    /// `call` for the simulator's own flows, where a CALLERROR means the flow cannot continue.
    async fn call_ok(&self, action: &str, payload: Value) -> Result<Value, OcppSimError> {
        match self.call(action, payload).await? {
            CallOutcome::Result(v) => Ok(v),
            CallOutcome::Error {
                code, description, ..
            } => Err(OcppSimError::Protocol(format!(
                "{action} answered with CALLERROR {code}: {description}"
            ))),
        }
    }

    async fn status(&self, connector: u32, status: &str) -> Result<(), OcppSimError> {
        self.call_ok("StatusNotification", status_request(connector, status))
            .await
            .map(drop)
    }

    /// A full charging session on `connector`: Authorize, StatusNotification Preparing, StartTransaction,
    /// StatusNotification Charging, `samples` MeterValues 10 ms apart, StopTransaction (reason Local, with
    /// transactionData), StatusNotification Finishing then Available.
    ///
    /// Authorize not Accepted → `Err(Rejected)`. A StartTransaction whose idTag is not Accepted is stopped
    /// at once (reason DeAuthorized) and reported through `id_tag_status`. A transaction the central system
    /// stops meanwhile (RemoteStopTransaction) ends the sampling early without a second StopTransaction.
    pub async fn charge(
        &self,
        connector: u32,
        id_tag: &str,
        samples: u32,
    ) -> Result<ChargeSummary, OcppSimError> {
        {
            let mut inner = self.shared.lock();
            if !inner.is_free(connector) {
                return Err(OcppSimError::Rejected(format!(
                    "connector {connector} is not free"
                )));
            }
            // Claimed like a remote start, so a RemoteStartTransaction cannot pick it meanwhile.
            inner.starting.insert(connector);
        }
        let result = self.run_session(connector, id_tag, samples).await;
        self.shared.lock().starting.remove(&connector);
        result
    }

    async fn run_session(
        &self,
        connector: u32,
        id_tag: &str,
        samples: u32,
    ) -> Result<ChargeSummary, OcppSimError> {
        let auth = self.call_ok("Authorize", authorize_request(id_tag)).await?;
        let auth_status = auth["idTagInfo"]["status"].as_str().unwrap_or("Invalid");
        if auth_status != "Accepted" {
            return Err(OcppSimError::Rejected(format!(
                "Authorize {id_tag}: {auth_status}"
            )));
        }
        self.status(connector, "Preparing").await?;

        let (meter_start, reservation) = {
            let mut inner = self.shared.lock();
            (
                inner.state.meter_wh,
                inner.take_reservation(connector, id_tag),
            )
        };
        let start = start_request(connector, id_tag, meter_start, reservation);
        let started_at = start["timestamp"].as_str().unwrap_or_default().to_owned();
        let answer = self.call_ok("StartTransaction", start).await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                // Leave the connector usable for the next session.
                let _ = self.status(connector, "Available").await;
                return Err(e);
            }
        };
        let transaction_id = answer["transactionId"].as_i64().ok_or_else(|| {
            OcppSimError::Protocol(format!(
                "StartTransaction answer without transactionId: {answer}"
            ))
        })?;
        let id_tag_status = answer["idTagInfo"]["status"]
            .as_str()
            .unwrap_or("Invalid")
            .to_owned();
        let meta = TxMeta {
            id_tag: id_tag.to_owned(),
            meter_start,
            started_at: started_at.clone(),
        };
        self.shared
            .lock()
            .begin_transaction(connector, transaction_id, meta);

        let mut reason = "Local";
        if id_tag_status == "Accepted" {
            self.status(connector, "Charging").await?;
            self.sample_loop(connector, transaction_id, samples).await?;
        } else {
            reason = "DeAuthorized";
        }

        let ended = self.shared.lock().end_transaction(connector);
        let meter_stop = self.shared.lock().state.meter_wh;
        if ended.is_some() {
            let stop = stop_request(&StopInfo {
                transaction_id,
                id_tag: Some(id_tag),
                meter_start,
                started_at: Some(&started_at),
                meter_stop,
                reason,
            });
            self.call_ok("StopTransaction", stop).await?;
            self.status(connector, "Finishing").await?;
            let after = self.shared.lock().status_of(connector);
            self.status(connector, after).await?;
        }
        Ok(ChargeSummary {
            transaction_id,
            id_tag_status,
            meter_start,
            meter_stop,
        })
    }

    async fn sample_loop(
        &self,
        connector: u32,
        transaction_id: i64,
        samples: u32,
    ) -> Result<(), OcppSimError> {
        let mut last: Option<DateTime<Utc>> = None;
        for i in 0..samples {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let energy = {
                let mut inner = self.shared.lock();
                if inner.state.active_transactions.get(&connector) != Some(&transaction_id) {
                    // Stopped by the central system meanwhile.
                    return Ok(());
                }
                inner.state.meter_wh += WH_PER_SAMPLE;
                inner.state.meter_wh
            };
            // Millisecond timestamps must be distinct even if the timer fires early or the clock is coarse.
            let mut at = Utc::now();
            if let Some(prev) = last {
                if at <= prev {
                    at = prev + chrono::Duration::milliseconds(1);
                }
            }
            last = Some(at);
            let mv = sample(&ts(at), energy, POWER_W, "Sample.Periodic");
            self.call_ok(
                "MeterValues",
                meter_values_request(connector, Some(transaction_id), mv),
            )
            .await?;
        }
        Ok(())
    }

    /// A snapshot of the charger state.
    pub fn state(&self) -> OcppSimState {
        self.shared.lock().state.clone()
    }

    /// Whether the WebSocket is open (false during the reconnect after a Reset).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Resolves when the server closes the socket (or the simulator ends for good); the close code and
    /// reason if the server sent a close frame.
    pub async fn closed(&self) -> Option<(u16, String)> {
        let mut rx = self.shared.closed.subscribe();
        let info = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().flatten(),
            Err(_) => None,
        };
        info
    }

    /// Closes the socket politely and ends the task.
    pub async fn close(self) {
        let (done, rx) = oneshot::channel();
        if self.cmds.send(Command::Close { done }).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(3), rx).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Fleet
// ---------------------------------------------------------------------------------------------------------

/// Runs `count` chargers `{prefix}{index:05}` against `base_url`, each booting and then, every
/// `session_every` (if `Some`), running a short charge; prints a line per boot; until ctrl-c.
///
/// All members are driven by this one task (plus each charger's own task); a charger the server
/// disconnects reconnects after a pause, which is how a fleet behaves after a server deploy.
pub async fn run_fleet(
    base_url: &str,
    count: u32,
    prefix: &str,
    session_every: Option<Duration>,
) -> Result<(), OcppSimError> {
    use futures_util::stream::FuturesUnordered;

    let booted = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut members = FuturesUnordered::new();
    for index in 0..count {
        let cfg = OcppSimConfig::new(base_url, format!("{prefix}{index:05}"));
        // Spread the first sessions over the period instead of starting them all at once.
        let offset =
            session_every.map(|every| every.mul_f64(f64::from(index) / f64::from(count.max(1))));
        members.push(fleet_member(
            cfg,
            count,
            Arc::clone(&booted),
            session_every,
            offset,
        ));
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            r = &mut ctrl_c => {
                return r.map_err(|e| OcppSimError::Protocol(format!("ctrl-c handler: {e}")));
            }
            next = members.next() => {
                if next.is_none() {
                    return Ok(());
                }
            }
        }
    }
}

async fn fleet_member(
    cfg: OcppSimConfig,
    count: u32,
    booted: Arc<std::sync::atomic::AtomicU32>,
    session_every: Option<Duration>,
    first_offset: Option<Duration>,
) {
    let mut failures: u32 = 0;
    loop {
        let sim = match OcppSim::connect(cfg.clone()).await {
            Ok(sim) => {
                failures = 0;
                let n = booted.fetch_add(1, Ordering::SeqCst) + 1;
                println!("{} booted ({n} boots, fleet of {count})", cfg.id);
                sim
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let pause = Duration::from_secs(u64::from(failures.min(30)));
                println!("{} connect failed: {e}; retry in {pause:?}", cfg.id);
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let mut next_session =
            session_every.map(|every| Instant::now() + first_offset.unwrap_or(every));
        loop {
            let wait = sleep_until_opt(next_session);
            tokio::select! {
                info = sim.closed() => {
                    println!("{} disconnected ({info:?}); reconnecting", cfg.id);
                    break;
                }
                () = wait => {
                    if let Err(e) = sim.charge(1, "FLEET", 3).await {
                        println!("{} session failed: {e}", cfg.id);
                    }
                    next_session = session_every.map(|every| Instant::now() + every);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::OnceLock;

    const SCHEMA_DIR: &str = "/work/shared/protocols/ocpp16-schemas";

    /// Compiled once per test binary: the schemas are read-only reference data.
    fn validators() -> &'static HashMap<String, jsonschema::Validator> {
        static CELL: OnceLock<HashMap<String, jsonschema::Validator>> = OnceLock::new();
        CELL.get_or_init(|| {
            let mut out = HashMap::new();
            for entry in std::fs::read_dir(SCHEMA_DIR).expect("schema dir") {
                let path = entry.expect("dir entry").path();
                let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                let text = std::fs::read_to_string(&path).expect("schema file");
                let schema: Value = serde_json::from_str(&text).expect("schema json");
                let validator = jsonschema::draft4::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .expect("schema compiles");
                out.insert(name.to_owned(), validator);
            }
            out
        })
    }

    /// Schema errors of `payload` against `{schema}.json`, as text (empty = valid).
    fn schema_errors(schema: &str, payload: &Value) -> Vec<String> {
        let Some(v) = validators().get(schema) else {
            return vec![format!("no schema {schema}")];
        };
        v.iter_errors(payload).map(|e| e.to_string()).collect()
    }

    #[track_caller]
    fn assert_valid(schema: &str, payload: &Value) {
        let errors = schema_errors(schema, payload);
        assert!(
            errors.is_empty(),
            "{schema} invalid: {errors:?}\n{payload:#}"
        );
    }

    fn inner() -> Inner {
        Inner::new(&OcppSimConfig::new("ws://127.0.0.1:1/ocpp", "CP-1"))
    }

    /// Answers a schema-valid request and checks the answer against the `…Response` schema.
    #[track_caller]
    fn answer(inner: &mut Inner, action: &str, payload: Value) -> (Value, Vec<FollowUp>) {
        assert_valid(action, &payload);
        let (v, follow) = answer_call(inner, action, &payload).expect("CALLRESULT expected");
        assert_valid(&format!("{action}Response"), &v);
        (v, follow)
    }

    #[track_caller]
    fn answer_status(inner: &mut Inner, action: &str, payload: Value) -> String {
        let (v, _) = answer(inner, action, payload);
        v["status"].as_str().expect("status").to_owned()
    }

    fn start_tx(inner: &mut Inner, connector: u32, tx: i64) {
        inner.begin_transaction(
            connector,
            tx,
            TxMeta {
                id_tag: "TAG".into(),
                meter_start: 0,
                started_at: now_ts(),
            },
        );
    }

    #[test]
    fn all_schemas_load() {
        assert!(validators().len() >= 70, "{}", validators().len());
        // Guards the guard: format checks must be on, or timestamp bugs would pass unnoticed.
        assert!(
            !schema_errors("HeartbeatResponse", &json!({"currentTime": "yesterday"})).is_empty()
        );
        assert!(schema_errors("HeartbeatResponse", &json!({"currentTime": now_ts()})).is_empty());
    }

    #[test]
    fn frames_parse() {
        let call = parse_frame(&json!([2, "a", "Reset", {"type": "Soft"}])).unwrap();
        assert_eq!(
            call,
            Frame::Call {
                id: "a".into(),
                action: "Reset".into(),
                payload: json!({"type": "Soft"})
            }
        );
        assert!(matches!(
            parse_frame(&json!([3, "b", {}])).unwrap(),
            Frame::Result { .. }
        ));
        assert!(matches!(
            parse_frame(&json!([4, "c", "GenericError", "x", {}])).unwrap(),
            Frame::Error { .. }
        ));
        assert!(parse_frame(&json!({"a": 1})).is_err());
        assert!(parse_frame(&json!([2, "a", "Reset"])).is_err());
        assert!(parse_frame(&json!([9, "a", {}])).is_err());
        assert!(parse_frame(&json!([3, 5, {}])).is_err());
    }

    #[test]
    fn urls_and_auth() {
        assert_eq!(
            charge_point_url("ws://h:1/ocpp/", "CP 1/x"),
            "ws://h:1/ocpp/CP%201%2Fx"
        );
        assert_eq!(
            charge_point_url("ws://h:1/ocpp", "CP-1"),
            "ws://h:1/ocpp/CP-1"
        );
        assert_eq!(basic_auth("CP-1", "pw"), "Basic Q1AtMTpwdw==");
        let uri: Uri = "ws://[::1]:9000/ocpp".parse().unwrap();
        assert_eq!(target(&uri).unwrap(), ("::1".to_owned(), 9000));
        let tls: Uri = "wss://example.com/ocpp".parse().unwrap();
        assert!(matches!(target(&tls), Err(OcppSimError::Connect(_))));
    }

    #[test]
    fn timestamps_are_utc_millis() {
        let t = now_ts();
        assert!(t.ends_with('Z'), "{t}");
        assert_eq!(t.len(), "2024-01-01T00:00:00.000Z".len(), "{t}");
        assert_eq!(&t[19..20], ".");
        assert!(DateTime::parse_from_rfc3339(&t).is_ok());
    }

    #[test]
    fn requests_match_schemas() {
        let mut cfg = OcppSimConfig::new("ws://x/ocpp", "A-VERY-LONG-CHARGE-POINT-IDENTIFIER-0001");
        cfg.vendor = "A vendor name longer than twenty".into();
        assert_valid("BootNotification", &boot_request(&cfg));
        for s in [
            "Available",
            "Preparing",
            "Charging",
            "Finishing",
            "Reserved",
            "Unavailable",
        ] {
            assert_valid("StatusNotification", &status_request(1, s));
        }
        assert_valid("Authorize", &authorize_request("TAG-1"));
        assert_valid(
            "Authorize",
            &authorize_request("AN-ID-TAG-LONGER-THAN-TWENTY"),
        );
        assert_valid("StartTransaction", &start_request(1, "TAG", 10, None));
        let with_reservation = start_request(2, "TAG", 10, Some(5));
        assert_eq!(with_reservation["reservationId"], 5);
        assert_valid("StartTransaction", &with_reservation);
        let mv = sample(&now_ts(), 1500, POWER_W, "Sample.Periodic");
        let req = meter_values_request(1, Some(7), mv);
        assert_valid("MeterValues", &req);
        let values = req["meterValue"][0]["sampledValue"].as_array().unwrap();
        assert_eq!(values.len(), 3);
        assert_eq!(values[0]["measurand"], "Energy.Active.Import.Register");
        assert_eq!(values[0]["context"], "Sample.Periodic");
        assert_eq!(values[2]["phase"], "L1");
        assert_valid(
            "MeterValues",
            &meter_values_request(0, None, sample(&now_ts(), 0, 0, "Trigger")),
        );
        let stop = stop_request(&StopInfo {
            transaction_id: 7,
            id_tag: Some("TAG"),
            meter_start: 0,
            started_at: Some(&now_ts()),
            meter_stop: 450,
            reason: "Local",
        });
        assert_valid("StopTransaction", &stop);
        assert_eq!(stop["transactionData"].as_array().unwrap().len(), 2);
        let bare = stop_request(&StopInfo {
            transaction_id: 7,
            id_tag: None,
            meter_start: 0,
            started_at: None,
            meter_stop: 0,
            reason: "Remote",
        });
        assert_valid("StopTransaction", &bare);
        assert!(bare.get("idTag").is_none());
        for s in [
            "Downloading",
            "Downloaded",
            "Installing",
            "Installed",
            "Idle",
        ] {
            assert_valid("FirmwareStatusNotification", &firmware_status_request(s));
        }
        assert_valid(
            "DiagnosticsStatusNotification",
            &diagnostics_status_request("Idle"),
        );
        assert_valid("Heartbeat", &json!({}));
    }

    #[test]
    fn reset_and_clear_cache() {
        let mut i = inner();
        let (v, follow) = answer(&mut i, "Reset", json!({"type": "Hard"}));
        assert_eq!(v["status"], "Accepted");
        assert_eq!(follow, vec![FollowUp::Reset { hard: true }]);
        assert_eq!(answer_status(&mut i, "ClearCache", json!({})), "Accepted");
    }

    #[test]
    fn remote_start_and_stop() {
        let mut i = inner();
        let (v, follow) = answer(&mut i, "RemoteStartTransaction", json!({"idTag": "T1"}));
        assert_eq!(v["status"], "Accepted");
        assert_eq!(
            follow,
            vec![FollowUp::RemoteStart {
                connector: 1,
                id_tag: "T1".into()
            }]
        );
        // Connector 1 is claimed, so the next remote start takes connector 2, then none is left.
        let (_, follow) = answer(&mut i, "RemoteStartTransaction", json!({"idTag": "T2"}));
        assert!(matches!(
            follow[0],
            FollowUp::RemoteStart { connector: 2, .. }
        ));
        assert_eq!(
            answer_status(&mut i, "RemoteStartTransaction", json!({"idTag": "T3"})),
            "Rejected"
        );
        i.starting.clear();
        start_tx(&mut i, 2, 42);
        assert_eq!(
            answer_status(
                &mut i,
                "RemoteStartTransaction",
                json!({"idTag": "T4", "connectorId": 2})
            ),
            "Rejected"
        );
        assert_eq!(
            answer_status(
                &mut i,
                "RemoteStartTransaction",
                json!({"idTag": "T4", "connectorId": 9})
            ),
            "Rejected"
        );
        let (v, follow) = answer(
            &mut i,
            "RemoteStopTransaction",
            json!({"transactionId": 42}),
        );
        assert_eq!(v["status"], "Accepted");
        assert!(matches!(
            &follow[..],
            [FollowUp::Stop {
                connector: 2,
                transaction_id: 42,
                reason: "Remote",
                ..
            }]
        ));
        assert!(i.state.active_transactions.is_empty());
        assert_eq!(
            answer_status(
                &mut i,
                "RemoteStopTransaction",
                json!({"transactionId": 42})
            ),
            "Rejected"
        );
    }

    #[test]
    fn remote_start_with_profile_stores_it() {
        let mut i = inner();
        let payload = json!({
            "idTag": "T1",
            "connectorId": 1,
            "chargingProfile": {
                "chargingProfileId": 3,
                "stackLevel": 0,
                "chargingProfilePurpose": "TxProfile",
                "chargingProfileKind": "Relative",
                "chargingSchedule": {
                    "chargingRateUnit": "A",
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}]
                }
            }
        });
        assert_eq!(
            answer_status(&mut i, "RemoteStartTransaction", payload),
            "Accepted"
        );
        assert_eq!(i.state.charging_profiles.len(), 1);
    }

    #[test]
    fn configuration() {
        let mut i = inner();
        let set = |i: &mut Inner, k: &str, v: &str| {
            answer_status(i, "ChangeConfiguration", json!({"key": k, "value": v}))
        };
        assert_eq!(set(&mut i, "MeterValueSampleInterval", "30"), "Accepted");
        assert_eq!(i.state.configuration["MeterValueSampleInterval"].0, "30");
        assert_eq!(set(&mut i, "NumberOfConnectors", "5"), "Rejected");
        assert_eq!(set(&mut i, "NoSuchKey", "1"), "NotSupported");
        assert_eq!(set(&mut i, "HeartbeatInterval", "soon"), "Rejected");
        assert_eq!(
            set(&mut i, "AuthorizeRemoteTxRequests", "maybe"),
            "Rejected"
        );
        let (_, follow) = answer(
            &mut i,
            "ChangeConfiguration",
            json!({"key": "HeartbeatInterval", "value": "60"}),
        );
        assert_eq!(follow, vec![FollowUp::HeartbeatInterval(60)]);

        let (all, _) = answer(&mut i, "GetConfiguration", json!({}));
        let keys = all["configurationKey"].as_array().unwrap();
        assert_eq!(keys.len(), i.state.configuration.len());
        assert!(all.get("unknownKey").is_none());
        let (empty_list, _) = answer(&mut i, "GetConfiguration", json!({"key": []}));
        assert_eq!(
            empty_list["configurationKey"].as_array().unwrap().len(),
            keys.len()
        );

        let (some, _) = answer(
            &mut i,
            "GetConfiguration",
            json!({"key": ["NumberOfConnectors", "Bogus", "HeartbeatInterval"]}),
        );
        assert_eq!(
            some["configurationKey"],
            json!([
                {"key": "NumberOfConnectors", "readonly": true, "value": "2"},
                {"key": "HeartbeatInterval", "readonly": false, "value": "60"}
            ])
        );
        assert_eq!(some["unknownKey"], json!(["Bogus"]));
        for seeded in [
            "HeartbeatInterval",
            "MeterValueSampleInterval",
            "ConnectionTimeOut",
            "NumberOfConnectors",
            "AuthorizeRemoteTxRequests",
            "LocalAuthListEnabled",
        ] {
            assert!(i.state.configuration.contains_key(seeded), "{seeded}");
        }
    }

    #[test]
    fn availability() {
        let mut i = inner();
        let (v, follow) = answer(
            &mut i,
            "ChangeAvailability",
            json!({"connectorId": 1, "type": "Inoperative"}),
        );
        assert_eq!(v["status"], "Accepted");
        assert_eq!(
            follow,
            vec![FollowUp::Status {
                connector: 1,
                status: "Unavailable"
            }]
        );
        assert_eq!(i.state.availability[&1], "Inoperative");
        assert!(!i.is_free(1));

        start_tx(&mut i, 2, 9);
        assert_eq!(
            answer_status(
                &mut i,
                "ChangeAvailability",
                json!({"connectorId": 2, "type": "Inoperative"})
            ),
            "Scheduled"
        );
        assert_eq!(i.state.availability[&2], "Operative");
        i.end_transaction(2);
        assert_eq!(i.state.availability[&2], "Inoperative");

        let (_, follow) = answer(
            &mut i,
            "ChangeAvailability",
            json!({"connectorId": 0, "type": "Operative"}),
        );
        assert_eq!(follow.len(), 3);
        assert_eq!(
            answer_status(
                &mut i,
                "ChangeAvailability",
                json!({"connectorId": 7, "type": "Operative"})
            ),
            "Rejected"
        );
    }

    #[test]
    fn unlock() {
        let mut i = inner();
        assert_eq!(
            answer_status(&mut i, "UnlockConnector", json!({"connectorId": 1})),
            "Unlocked"
        );
        assert_eq!(
            answer_status(&mut i, "UnlockConnector", json!({"connectorId": 0})),
            "NotSupported"
        );
        start_tx(&mut i, 1, 5);
        let (_, follow) = answer(&mut i, "UnlockConnector", json!({"connectorId": 1}));
        assert!(matches!(
            &follow[..],
            [FollowUp::Stop {
                transaction_id: 5,
                reason: "UnlockCommand",
                ..
            }]
        ));
    }

    #[test]
    fn trigger_message() {
        let mut i = inner();
        for m in [
            "BootNotification",
            "Heartbeat",
            "MeterValues",
            "StatusNotification",
            "DiagnosticsStatusNotification",
            "FirmwareStatusNotification",
        ] {
            let (v, follow) = answer(&mut i, "TriggerMessage", json!({"requestedMessage": m}));
            assert_eq!(v["status"], "Accepted");
            assert_eq!(
                follow,
                vec![FollowUp::Trigger {
                    message: m.into(),
                    connector: None
                }]
            );
        }
        assert_eq!(
            answer_status(
                &mut i,
                "TriggerMessage",
                json!({"requestedMessage": "StatusNotification", "connectorId": 5})
            ),
            "Rejected"
        );
        // Not in the 1.6 enum, so not schema-valid as a request, but a charger must still answer it.
        let (v, _) = answer_call(
            &mut i,
            "TriggerMessage",
            &json!({"requestedMessage": "SignCertificate"}),
        )
        .unwrap();
        assert_eq!(v["status"], "NotImplemented");
        assert_valid("TriggerMessageResponse", &v);
    }

    #[test]
    fn data_transfer_diagnostics_firmware() {
        let mut i = inner();
        let (v, _) = answer(
            &mut i,
            "DataTransfer",
            json!({"vendorId": "GatehouseSim", "messageId": "m", "data": "hello"}),
        );
        assert_eq!(v, json!({"status": "Accepted", "data": "hello"}));
        let (v, _) = answer(&mut i, "DataTransfer", json!({"vendorId": "Other"}));
        assert_eq!(v, json!({"status": "UnknownVendorId"}));
        let (v, _) = answer(
            &mut i,
            "GetDiagnostics",
            json!({"location": "ftp://example.com/upload"}),
        );
        assert_eq!(v, json!({"fileName": "diag.log"}));
        let (v, follow) = answer(
            &mut i,
            "UpdateFirmware",
            json!({"location": "https://example.com/fw.bin", "retrieveDate": now_ts()}),
        );
        assert_eq!(v, json!({}));
        assert_eq!(follow, vec![FollowUp::FirmwareUpdate]);
    }

    #[test]
    fn local_list() {
        let mut i = inner();
        let (v, _) = answer(&mut i, "GetLocalListVersion", json!({}));
        assert_eq!(v, json!({"listVersion": 0}));
        let list = json!([{"idTag": "T1", "idTagInfo": {"status": "Accepted"}}]);
        let send = |i: &mut Inner, version: i64, kind: &str| {
            answer_status(
                i,
                "SendLocalList",
                json!({"listVersion": version, "updateType": kind, "localAuthorizationList": list}),
            )
        };
        assert_eq!(send(&mut i, 3, "Full"), "Accepted");
        assert_eq!(send(&mut i, 3, "Differential"), "VersionMismatch");
        assert_eq!(send(&mut i, 2, "Differential"), "VersionMismatch");
        assert_eq!(send(&mut i, 4, "Differential"), "Accepted");
        let (v, _) = answer(&mut i, "GetLocalListVersion", json!({}));
        assert_eq!(v, json!({"listVersion": 4}));
    }

    #[test]
    fn reservations() {
        let mut i = inner();
        let reserve = |i: &mut Inner, id: i64, c: u32| {
            answer_status(
                i,
                "ReserveNow",
                json!({"connectorId": c, "expiryDate": now_ts(), "idTag": "T1", "reservationId": id}),
            )
        };
        assert_eq!(reserve(&mut i, 1, 1), "Accepted");
        assert_eq!(i.state.reservations[&1], 1);
        assert_eq!(i.status_of(1), "Reserved");
        assert_eq!(reserve(&mut i, 2, 1), "Occupied");
        start_tx(&mut i, 2, 8);
        assert_eq!(reserve(&mut i, 3, 2), "Occupied");
        assert_eq!(reserve(&mut i, 4, 9), "Rejected");
        // The reservation is consumed by a start with the same idTag only.
        assert_eq!(i.take_reservation(1, "OTHER"), None);
        assert_eq!(
            answer_status(&mut i, "CancelReservation", json!({"reservationId": 1})),
            "Accepted"
        );
        assert_eq!(
            answer_status(&mut i, "CancelReservation", json!({"reservationId": 1})),
            "Rejected"
        );
        assert!(i.state.reservations.is_empty());
    }

    fn profile(id: i64, purpose: &str, stack: i64, unit: &str, limit: f64) -> Value {
        json!({
            "chargingProfileId": id,
            "stackLevel": stack,
            "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "chargingRateUnit": unit,
                "startSchedule": now_ts(),
                "chargingSchedulePeriod": [
                    {"startPeriod": 0, "limit": limit},
                    {"startPeriod": 3600, "limit": limit / 2.0, "numberPhases": 1}
                ]
            }
        })
    }

    #[test]
    fn charging_profiles() {
        let mut i = inner();
        let composite = |i: &mut Inner, c: u32, unit: Option<&str>| {
            let mut req = json!({"connectorId": c, "duration": 7200});
            if let Some(u) = unit {
                req["chargingRateUnit"] = json!(u);
            }
            answer(i, "GetCompositeSchedule", req).0
        };
        assert_eq!(composite(&mut i, 1, None), json!({"status": "Rejected"}));

        let set = |i: &mut Inner, c: u32, p: Value| {
            answer_status(
                i,
                "SetChargingProfile",
                json!({"connectorId": c, "csChargingProfiles": p}),
            )
        };
        assert_eq!(
            set(&mut i, 0, profile(1, "ChargePointMaxProfile", 0, "A", 32.0)),
            "Accepted"
        );
        assert_eq!(
            set(&mut i, 1, profile(2, "TxDefaultProfile", 1, "A", 16.0)),
            "Accepted"
        );
        // Accepted even without a transaction (see answer_set_charging_profile).
        assert_eq!(
            set(&mut i, 1, profile(3, "TxProfile", 0, "A", 10.0)),
            "Accepted"
        );
        assert_eq!(
            answer_status(&mut i, "ClearChargingProfile", json!({"id": 3})),
            "Accepted"
        );
        // Same id replaces.
        assert_eq!(
            set(&mut i, 1, profile(2, "TxDefaultProfile", 1, "A", 20.0)),
            "Accepted"
        );
        assert_eq!(i.state.charging_profiles.len(), 2);

        let c = composite(&mut i, 1, None);
        assert_eq!(c["status"], "Accepted");
        assert_eq!(c["connectorId"], 1);
        assert_eq!(c["chargingSchedule"]["chargingRateUnit"], "A");
        assert_eq!(
            c["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"],
            20.0
        );
        let w = composite(&mut i, 1, Some("W"));
        let periods = w["chargingSchedule"]["chargingSchedulePeriod"]
            .as_array()
            .unwrap();
        assert_eq!(periods[0]["limit"], 20.0 * 230.0 * 3.0);
        assert_eq!(periods[1]["limit"], 10.0 * 230.0);
        // Connector 2 only sees the charge-point-wide profile.
        let c2 = composite(&mut i, 2, Some("A"));
        assert_eq!(
            c2["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"],
            32.0
        );
        let odd = composite(&mut i, 2, Some("W"));
        assert_valid("GetCompositeScheduleResponse", &odd);

        assert_eq!(
            answer_status(&mut i, "ClearChargingProfile", json!({"id": 2})),
            "Accepted"
        );
        assert_eq!(
            answer_status(&mut i, "ClearChargingProfile", json!({"id": 2})),
            "Unknown"
        );
        assert_eq!(
            answer_status(
                &mut i,
                "ClearChargingProfile",
                json!({"chargingProfilePurpose": "TxDefaultProfile"})
            ),
            "Unknown"
        );
        assert_eq!(
            answer_status(&mut i, "ClearChargingProfile", json!({})),
            "Accepted"
        );
        assert!(i.state.charging_profiles.is_empty());
        assert_eq!(composite(&mut i, 1, None), json!({"status": "Rejected"}));
    }

    #[test]
    fn errors_for_bad_calls() {
        let mut i = inner();
        let err = answer_call(&mut i, "FlyToTheMoon", &json!({})).unwrap_err();
        assert_eq!(err.code, "NotImplemented");
        let err = answer_call(
            &mut i,
            "CertificateSigned",
            &json!({"certificateChain": "x"}),
        )
        .unwrap_err();
        assert_eq!(err.code, "NotImplemented");
        let err = answer_call(&mut i, "Reset", &json!({})).unwrap_err();
        assert_eq!(err.code, "OccurenceConstraintViolation");
        let err = answer_call(&mut i, "Reset", &json!({"type": 1})).unwrap_err();
        assert_eq!(err.code, "TypeConstraintViolation");
        let err = answer_call(&mut i, "Reset", &json!({"type": "Warm"})).unwrap_err();
        assert_eq!(err.code, "PropertyConstraintViolation");
        let err = answer_call(&mut i, "Reset", &json!([1])).unwrap_err();
        assert_eq!(err.code, "FormationViolation");
        let frame: Value =
            serde_json::from_str(&error_frame("id", err.code, &err.description)).unwrap();
        assert!(matches!(parse_frame(&frame), Ok(Frame::Error { .. })));
    }

    // -----------------------------------------------------------------------------------------------------
    // Integration: a tiny central system inside the test
    // -----------------------------------------------------------------------------------------------------

    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{
        ErrorResponse, Request as HsRequest, Response as HsResponse,
    };
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    /// The test central system demands this password from this id.
    const AUTH_ID: &str = "CP-AUTH";
    const EVENT_WAIT: Duration = Duration::from_secs(5);

    #[derive(Debug)]
    enum Ev {
        Connected {
            path: String,
            protocol: Option<String>,
            peer: IpAddr,
        },
        FromCp(Value),
        Pong,
        Closed,
    }

    struct TestCs {
        base: String,
        events: mpsc::UnboundedReceiver<Ev>,
        out: mpsc::UnboundedSender<Message>,
        /// CALLs from the charge point skipped while waiting for something else.
        backlog: VecDeque<(String, Value)>,
        task: tokio::task::JoinHandle<()>,
    }

    fn refuse(status: u16) -> ErrorResponse {
        tungstenite::http::Response::builder()
            .status(status)
            .body(None)
            .unwrap()
    }

    /// Answers the charge point's CALLs like a minimal central system.
    /// Boots of `CP-PENDING` are Pending on the first attempt of a connection, `CP-REJECT` is Rejected.
    fn cs_answer(call: &Value, path: &str, boots: &mut u32) -> Value {
        let id = call[1].clone();
        let now = now_ts();
        let payload = match call[2].as_str().unwrap_or_default() {
            "BootNotification" => {
                *boots += 1;
                let status = match path.rsplit('/').next() {
                    Some("CP-REJECT") => "Rejected",
                    Some("CP-PENDING") if *boots == 1 => "Pending",
                    _ => "Accepted",
                };
                let interval = if status == "Accepted" { 300 } else { 1 };
                json!({"status": status, "currentTime": now, "interval": interval})
            }
            "Authorize" | "StopTransaction" => json!({"idTagInfo": {"status": "Accepted"}}),
            "StartTransaction" => json!({"transactionId": 7, "idTagInfo": {"status": "Accepted"}}),
            "Heartbeat" => json!({"currentTime": now}),
            "StatusNotification"
            | "MeterValues"
            | "FirmwareStatusNotification"
            | "DiagnosticsStatusNotification" => json!({}),
            _ => {
                return json!(
                    [4, id, "NotImplemented", "not in the test central system", {
                    }]
                )
            }
        };
        json!([3, id, payload])
    }

    async fn serve(
        mut ws: WebSocketStream<TcpStream>,
        path: &str,
        events: &mpsc::UnboundedSender<Ev>,
        out: &mut mpsc::UnboundedReceiver<Message>,
    ) {
        let mut boots = 0;
        loop {
            tokio::select! {
                msg = tokio::time::timeout(Duration::from_secs(30), ws.next()) => {
                    let Ok(Some(Ok(msg))) = msg else { return };
                    match msg {
                        Message::Text(t) => {
                            let v: Value = serde_json::from_str(t.as_str()).unwrap();
                            let _ = events.send(Ev::FromCp(v.clone()));
                            if v[0] == 2 && ws.send(Message::text(cs_answer(&v, path, &mut boots).to_string())).await.is_err() {
                                return;
                            }
                        }
                        Message::Pong(_) => {
                            let _ = events.send(Ev::Pong);
                        }
                        _ => {}
                    }
                }
                m = out.recv() => {
                    let Some(m) = m else { return };
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// One connection at a time is all these tests need (a Reset closes before it reconnects).
    async fn start_cs() -> TestCs {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("ws://{}/ocpp", listener.local_addr().unwrap());
        let (ev_tx, events) = mpsc::unbounded_channel();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let task = tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let hs_events = ev_tx.clone();
                let path_slot = Arc::new(Mutex::new(String::new()));
                let hs_path = Arc::clone(&path_slot);
                // The error type is tungstenite's, fixed by its callback signature.
                #[allow(clippy::result_large_err)]
                let callback = move |req: &HsRequest, mut resp: HsResponse| {
                    let offered = req
                        .headers()
                        .get("sec-websocket-protocol")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let ok = offered
                        .as_deref()
                        .is_some_and(|p| p.split(',').any(|p| p.trim() == SUBPROTOCOL));
                    if !ok {
                        return Err(refuse(400));
                    }
                    let path = req.uri().path().to_owned();
                    *hs_path.lock().unwrap() = path.clone();
                    if path.ends_with(AUTH_ID) {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok());
                        if auth != Some(basic_auth(AUTH_ID, "secret").as_str()) {
                            return Err(refuse(401));
                        }
                    }
                    resp.headers_mut().insert(
                        "sec-websocket-protocol",
                        HeaderValue::from_static(SUBPROTOCOL),
                    );
                    let _ = hs_events.send(Ev::Connected {
                        path,
                        protocol: offered,
                        peer: peer.ip(),
                    });
                    Ok(resp)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    continue;
                };
                let path = path_slot.lock().unwrap().clone();
                serve(ws, &path, &ev_tx, &mut out_rx).await;
                let _ = ev_tx.send(Ev::Closed);
            }
        });
        TestCs {
            base,
            events,
            out,
            backlog: VecDeque::new(),
            task,
        }
    }

    impl TestCs {
        /// The next event; every CALL the simulator sends is checked against its request schema here.
        async fn next(&mut self) -> Ev {
            let ev = tokio::time::timeout(EVENT_WAIT, self.events.recv())
                .await
                .expect("central system event within 5 s")
                .expect("central system alive");
            if let Ev::FromCp(v) = &ev {
                if v[0] == 2 {
                    assert_valid(v[2].as_str().unwrap(), &v[3]);
                }
            }
            ev
        }

        async fn call_from_cp(&mut self) -> (String, Value) {
            if let Some(c) = self.backlog.pop_front() {
                return c;
            }
            loop {
                if let Ev::FromCp(v) = self.next().await {
                    if v[0] == 2 {
                        return (v[2].as_str().unwrap().to_owned(), v[3].clone());
                    }
                }
            }
        }

        /// The next CALLs from the charge point must be exactly these actions; returns their payloads.
        async fn expect_calls(&mut self, actions: &[&str]) -> Vec<Value> {
            let mut out = Vec::new();
            for want in actions {
                let (action, payload) = self.call_from_cp().await;
                assert_eq!(&action, want, "{payload}");
                out.push(payload);
            }
            out
        }

        /// Sends a CALL to the charge point and returns its CALLRESULT payload (schema-checked).
        async fn call_cp(&mut self, id: &str, action: &str, payload: Value) -> Value {
            assert_valid(action, &payload);
            let frame = json!([2, id, action, payload]).to_string();
            self.out.send(Message::text(frame)).unwrap();
            loop {
                if let Ev::FromCp(v) = self.next().await {
                    if v[0] == 3 && v[1] == id {
                        assert_valid(&format!("{action}Response"), &v[2]);
                        return v[2].clone();
                    }
                    if v[0] == 2 {
                        self.backlog
                            .push_back((v[2].as_str().unwrap().to_owned(), v[3].clone()));
                    }
                }
            }
        }

        async fn expect_connected(&mut self, want_path: &str) {
            match self.next().await {
                Ev::Connected { path, protocol, .. } => {
                    assert_eq!(path, want_path);
                    assert_eq!(protocol.as_deref(), Some(SUBPROTOCOL));
                }
                other => panic!("expected a connection, got {other:?}"),
            }
        }
    }

    async fn wait_until(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + EVENT_WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "condition not met within 5 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    const BOOT_SEQUENCE: &[&str] = &[
        "BootNotification",
        "StatusNotification",
        "StatusNotification",
        "StatusNotification",
    ];

    #[tokio::test]
    async fn full_session_against_test_central_system() {
        let mut cs = start_cs().await;
        let cfg = OcppSimConfig::new(cs.base.clone(), "CP-TEST-1");
        let sim = tokio::time::timeout(WAIT, OcppSim::connect(cfg))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sim.id(), "CP-TEST-1");
        cs.expect_connected("/ocpp/CP-TEST-1").await;
        let boot = cs.expect_calls(BOOT_SEQUENCE).await;
        assert_eq!(boot[0]["chargePointVendor"], "GatehouseSim");
        for (connector, p) in boot[1..].iter().enumerate() {
            assert_eq!(p["connectorId"], connector);
            assert_eq!(p["status"], "Available");
        }
        let st = sim.state();
        assert_eq!(st.boots, 1);
        assert_eq!(st.boot_response.unwrap()["status"], "Accepted");
        assert_eq!(st.configuration["HeartbeatInterval"].0, "300");
        assert!(sim.is_connected());

        // WebSocket ping: answered by the simulator and counted.
        cs.out.send(Message::Ping(vec![1, 2, 3].into())).unwrap();
        while !matches!(cs.next().await, Ev::Pong) {}
        assert_eq!(sim.state().pings_received, 1);

        // A full local session.
        let summary = tokio::time::timeout(WAIT, sim.charge(1, "TAG-1", 3))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(summary.transaction_id, 7);
        assert_eq!(summary.id_tag_status, "Accepted");
        assert_eq!(summary.meter_start, 0);
        assert_eq!(summary.meter_stop, 3 * WH_PER_SAMPLE);
        let c = cs
            .expect_calls(&[
                "Authorize",
                "StatusNotification",
                "StartTransaction",
                "StatusNotification",
                "MeterValues",
                "MeterValues",
                "MeterValues",
                "StopTransaction",
                "StatusNotification",
                "StatusNotification",
            ])
            .await;
        assert_eq!(c[0]["idTag"], "TAG-1");
        assert_eq!(c[1]["status"], "Preparing");
        assert_eq!(c[2]["connectorId"], 1);
        assert_eq!(c[2]["meterStart"], 0);
        assert_eq!(c[3]["status"], "Charging");
        let mut stamps = BTreeSet::new();
        for (n, mv) in c[4..7].iter().enumerate() {
            assert_eq!(mv["transactionId"], 7);
            let reading = &mv["meterValue"][0];
            stamps.insert(reading["timestamp"].as_str().unwrap().to_owned());
            let values = reading["sampledValue"].as_array().unwrap();
            assert_eq!(values.len(), 3);
            assert_eq!(
                values[0]["value"],
                ((n as i64 + 1) * WH_PER_SAMPLE).to_string()
            );
            assert_eq!(values[1]["measurand"], "Power.Active.Import");
            assert_eq!(values[2]["unit"], "V");
        }
        assert_eq!(stamps.len(), 3, "distinct timestamps: {stamps:?}");
        assert_eq!(c[7]["reason"], "Local");
        assert_eq!(c[7]["idTag"], "TAG-1");
        assert_eq!(c[7]["transactionId"], 7);
        assert_eq!(c[7]["meterStop"], 3 * WH_PER_SAMPLE);
        assert!(!c[7]["transactionData"].as_array().unwrap().is_empty());
        assert_eq!(c[8]["status"], "Finishing");
        assert_eq!(c[9]["status"], "Available");
        assert!(sim.state().active_transactions.is_empty());

        // A CALLERROR answer, and raw frames.
        let out = sim
            .call("SignCertificate", json!({"csr": "x"}))
            .await
            .unwrap();
        assert!(
            matches!(&out, CallOutcome::Error { code, .. } if code == "NotImplemented"),
            "{out:?}"
        );
        cs.expect_calls(&["SignCertificate"]).await;
        let raw = sim
            .send_raw(json!([2, "raw-1", "Heartbeat", {}]).to_string())
            .await
            .unwrap();
        assert_eq!(raw[0], 3);
        assert_eq!(raw[1], "raw-1");
        cs.expect_calls(&["Heartbeat"]).await;

        // Remote start and stop.
        let r = cs
            .call_cp(
                "cs-1",
                "RemoteStartTransaction",
                json!({"idTag": "TAG-2", "connectorId": 2}),
            )
            .await;
        assert_eq!(r["status"], "Accepted");
        let c = cs
            .expect_calls(&[
                "StatusNotification",
                "StartTransaction",
                "StatusNotification",
            ])
            .await;
        assert_eq!(c[0]["status"], "Preparing");
        assert_eq!(c[1]["connectorId"], 2);
        assert_eq!(c[1]["idTag"], "TAG-2");
        assert_eq!(c[2]["status"], "Charging");
        wait_until(|| sim.state().active_transactions.get(&2) == Some(&7)).await;
        let r = cs
            .call_cp("cs-2", "RemoteStopTransaction", json!({"transactionId": 7}))
            .await;
        assert_eq!(r["status"], "Accepted");
        let c = cs
            .expect_calls(&[
                "StopTransaction",
                "StatusNotification",
                "StatusNotification",
            ])
            .await;
        assert_eq!(c[0]["reason"], "Remote");
        assert_eq!(c[0]["idTag"], "TAG-2");
        assert_eq!(c[1]["status"], "Finishing");
        assert_eq!(c[2]["status"], "Available");
        assert!(sim.state().active_transactions.is_empty());
        let r = cs
            .call_cp("cs-3", "RemoteStopTransaction", json!({"transactionId": 7}))
            .await;
        assert_eq!(r["status"], "Rejected");
        let r = cs
            .call_cp(
                "cs-4",
                "GetConfiguration",
                json!({"key": ["NumberOfConnectors"]}),
            )
            .await;
        assert_eq!(r["configurationKey"][0]["value"], "2");

        // Reset: answer, close, reconnect, boot again; the handle keeps working.
        let r = cs.call_cp("cs-5", "Reset", json!({"type": "Soft"})).await;
        assert_eq!(r["status"], "Accepted");
        loop {
            match cs.next().await {
                Ev::Closed => break,
                Ev::FromCp(v) => panic!("unexpected frame before the reboot: {v}"),
                _ => {}
            }
        }
        cs.expect_connected("/ocpp/CP-TEST-1").await;
        cs.expect_calls(BOOT_SEQUENCE).await;
        wait_until(|| sim.state().boots == 2).await;
        assert!(sim.is_connected());
        let hb = sim.call("Heartbeat", json!({})).await.unwrap();
        assert!(matches!(hb, CallOutcome::Result(_)), "{hb:?}");
        cs.expect_calls(&["Heartbeat"]).await;
        let received: Vec<String> = sim
            .state()
            .calls_received
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        assert_eq!(
            received,
            [
                "RemoteStartTransaction",
                "RemoteStopTransaction",
                "RemoteStopTransaction",
                "GetConfiguration",
                "Reset"
            ]
        );

        // The server closes: `closed` reports its code and reason, and the handle says so.
        let bye = CloseFrame {
            code: CloseCode::from(4000),
            reason: "bye".into(),
        };
        cs.out.send(Message::Close(Some(bye))).unwrap();
        let info = tokio::time::timeout(EVENT_WAIT, sim.closed())
            .await
            .unwrap();
        assert_eq!(info, Some((4000, "bye".to_owned())));
        assert!(!sim.is_connected());
        assert!(matches!(
            sim.call("Heartbeat", json!({})).await,
            Err(OcppSimError::Closed)
        ));
        cs.task.abort();
    }

    #[tokio::test]
    async fn handshakes_auth_and_silent_mode() {
        let mut cs = start_cs().await;
        let probe = |id: &'static str, proto: Option<&'static str>, pw: Option<&'static str>| {
            let base = cs.base.clone();
            async move { OcppSim::handshake_only(&base, id, proto, pw).await }
        };
        assert_eq!(
            probe("CP-PROBE", Some("ocpp1.6"), None)
                .await
                .unwrap()
                .as_deref(),
            Some("ocpp1.6")
        );
        let err = probe("CP-PROBE", None, None).await.unwrap_err();
        assert!(
            matches!(&err, OcppSimError::Connect(m) if m.starts_with("HTTP 400")),
            "{err}"
        );
        assert_eq!(
            probe(AUTH_ID, Some("ocpp2.0.1, ocpp1.6"), Some("secret"))
                .await
                .unwrap()
                .as_deref(),
            Some("ocpp1.6")
        );
        let err = probe(AUTH_ID, Some("ocpp1.6"), Some("wrong"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, OcppSimError::Connect(m) if m.starts_with("HTTP 401")),
            "{err}"
        );

        let mut cfg = OcppSimConfig::new(cs.base.clone(), AUTH_ID);
        cfg.password = Some("wrong".into());
        let err = OcppSim::connect(cfg.clone()).await.unwrap_err();
        assert!(
            matches!(&err, OcppSimError::Connect(m) if m == "HTTP 401 Unauthorized"),
            "{err}"
        );

        // With the right password, and in silent mode: CALLs are recorded but never answered.
        cfg.password = Some("secret".into());
        cfg.answer_calls = false;
        cfg.connectors = 1;
        // Linux routes all of 127/8 to loopback, so a second source address needs no setup.
        let source: IpAddr = "127.0.0.2".parse().unwrap();
        cfg.local_addr = Some(source);
        let sim = tokio::time::timeout(WAIT, OcppSim::connect(cfg))
            .await
            .unwrap()
            .unwrap();
        cs.out
            .send(Message::text(
                json!([2, "q-1", "ClearCache", {}]).to_string(),
            ))
            .unwrap();
        wait_until(|| sim.state().calls_received.len() == 1).await;
        assert_eq!(
            sim.state().calls_received[0],
            ("ClearCache".to_owned(), json!({}))
        );
        sim.close().await;
        // Everything up to the close: two probes that upgraded, the boot, and no answer to q-1.
        // The last upgrade for this id is the simulator's (the probe before it came from 127.0.0.1).
        let mut last_peer = None;
        loop {
            match cs.next().await {
                Ev::FromCp(v) => assert_ne!(v[0], 3, "silent charger answered: {v}"),
                Ev::Connected { path, peer, .. } if path.ends_with(AUTH_ID) => {
                    last_peer = Some(peer)
                }
                Ev::Closed if cs.events.is_empty() => break,
                _ => {}
            }
        }
        assert_eq!(last_peer, Some(source), "local_addr honoured");
        cs.task.abort();
    }

    #[tokio::test]
    async fn boot_outcomes_triggers_firmware_and_delayed_answers() {
        let mut cs = start_cs().await;
        let err = OcppSim::connect(OcppSimConfig::new(cs.base.clone(), "CP-REJECT"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, OcppSimError::Rejected(m) if m.contains("Rejected")),
            "{err}"
        );
        cs.expect_connected("/ocpp/CP-REJECT").await;
        cs.expect_calls(&["BootNotification"]).await;
        while !matches!(cs.next().await, Ev::Closed) {}

        let mut cfg = OcppSimConfig::new(cs.base.clone(), "CP-PENDING");
        cfg.connectors = 1;
        cfg.reply_delay = Duration::from_millis(200);
        let started = Instant::now();
        let sim = tokio::time::timeout(WAIT, OcppSim::connect(cfg))
            .await
            .unwrap()
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "retried after the Pending interval"
        );
        cs.expect_connected("/ocpp/CP-PENDING").await;
        cs.expect_calls(&[
            "BootNotification",
            "BootNotification",
            "StatusNotification",
            "StatusNotification",
        ])
        .await;
        assert_eq!(sim.state().boots, 1);

        let asked = Instant::now();
        let r = cs
            .call_cp(
                "t-1",
                "TriggerMessage",
                json!({"requestedMessage": "StatusNotification", "connectorId": 1}),
            )
            .await;
        assert_eq!(r["status"], "Accepted");
        assert!(
            asked.elapsed() >= Duration::from_millis(200),
            "reply_delay honoured"
        );
        let c = cs.expect_calls(&["StatusNotification"]).await;
        assert_eq!(c[0]["connectorId"], 1);
        assert_eq!(c[0]["status"], "Available");
        for (n, message) in [
            "MeterValues",
            "Heartbeat",
            "BootNotification",
            "DiagnosticsStatusNotification",
            "FirmwareStatusNotification",
        ]
        .into_iter()
        .enumerate()
        {
            let id = format!("t-{}", n + 2);
            let r = cs
                .call_cp(&id, "TriggerMessage", json!({"requestedMessage": message}))
                .await;
            assert_eq!(r["status"], "Accepted");
            let c = cs.expect_calls(&[message]).await;
            if message == "MeterValues" {
                assert_eq!(
                    c[0]["meterValue"][0]["sampledValue"][0]["context"],
                    "Trigger"
                );
            }
        }
        // A triggered BootNotification is not a reboot.
        assert_eq!(sim.state().boots, 1);

        let r = cs
            .call_cp(
                "f-1",
                "UpdateFirmware",
                json!({"location": "https://example.com/fw.bin", "retrieveDate": now_ts()}),
            )
            .await;
        assert_eq!(r, json!({}));
        let c = cs.expect_calls(&["FirmwareStatusNotification"; 4]).await;
        let statuses: Vec<&str> = c.iter().map(|p| p["status"].as_str().unwrap()).collect();
        assert_eq!(
            statuses,
            ["Downloading", "Downloaded", "Installing", "Installed"]
        );

        let r = cs
            .call_cp(
                "a-1",
                "ChangeAvailability",
                json!({"connectorId": 1, "type": "Inoperative"}),
            )
            .await;
        assert_eq!(r["status"], "Accepted");
        let c = cs.expect_calls(&["StatusNotification"]).await;
        assert_eq!(c[0]["status"], "Unavailable");
        let err = sim.charge(1, "TAG", 1).await.unwrap_err();
        assert!(matches!(err, OcppSimError::Rejected(_)), "{err}");
        sim.close().await;
        while !matches!(cs.next().await, Ev::Closed) {}
        cs.task.abort();
    }
}
