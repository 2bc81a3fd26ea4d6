//! Simulated Shenxing panel: the WebSocket client side of the SxDeviceManager protocol (notes §2.2–2.5).
//!
//! Used by the integration tests (through [`SimPanel`]), by `gatehouse simulate sxdm` (through
//! [`run_fleet`]) and by load runs. It shares only the envelope codec with the server side; the login flow and
//! the panel's REST answers are written from the notes, so a misreading of the notes on the server side shows
//! up as a failing test instead of being mirrored here.
//!
//! Design:
//! - [`SimPanel::connect`] logs in on the socket directly (two request/response exchanges), then hands the
//!   socket to one tokio task. That task owns it until it closes, and `select!`s over inbound frames, commands
//!   from the [`SimPanel`] handle, and answers held back by [`PanelConfig::answer_delay`].
//! - The answer to every forwarded request is a pure function over the panel state ([`handle`]), so it is
//!   unit-tested without sockets.
//! - The panel state lives behind a `std::sync::Mutex` shared by the task (writer) and the handle (readers); it
//!   is never held across an await.
//! - WebSocket pings are answered by tokio-tungstenite as long as the task keeps reading; the panel sends
//!   nothing unprompted, because the notes know of no JSON keep-alive (§2.4).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::devices::sxdm::envelope::{self, Envelope};

/// The socket type [`connect_raw`] returns.
pub type PanelSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The panel credential a default SxDeviceManager accepts (it ignores the value, notes §2.3).
pub const DEFAULT_PASSWORD: &str = "123456";
/// What `GET /api/devices/status` reports as `model_spec`.
pub const MODEL_SPEC: &str = "SX-SIM-1";

/// Bound on every wait for the manager: handshake, each login answer, [`SimPanel::send_raw`].
const WAIT: Duration = Duration::from_secs(10);
/// How long a closing socket is read for the peer's half of the close handshake.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);
/// Requests kept for [`SimPanel::received`]; the oldest are dropped so a long fleet run stays bounded.
const MAX_RECEIVED: usize = 10_000;
/// Handle → task commands; the handle waits when the task is busy, which is the backpressure we want.
const COMMAND_QUEUE: usize = 16;
/// Small read buffer: a fleet of thousands of panels must not cost 128 KiB each (tungstenite's default).
const READ_BUFFER: usize = 4 * 1024;
/// Person records carry base64 face images, so frames can be a few MiB; larger ones are refused.
const MAX_MESSAGE: usize = 16 << 20;
/// Limit applied by `POST /api/persons/query` when the body gives none.
const DEFAULT_QUERY_LIMIT: usize = 10;
/// Pause before a fleet panel reconnects after its socket closed.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// Longest back-off between failed fleet logins.
const MAX_RETRY_PAUSE_SECS: u64 = 30;

/// Where to connect and how to behave.
#[derive(Clone, Debug)]
pub struct PanelConfig {
    /// The manager's full WebSocket URL, e.g. `ws://127.0.0.1:8888/api/websocket/`; used as given.
    pub url: String,
    pub sn: String,
    /// Sent as `password` in the login body, verbatim (how a real panel derives it is unknown, §2.3).
    pub password: String,
    /// Log in with a 6-digit random other than the one the manager issued (the manager must close).
    pub wrong_random: bool,
    /// Hold every answer to a forwarded request this long (to test the server's waiting).
    pub answer_delay: Option<Duration>,
    /// Record forwarded requests but never answer them (to test the server's time-outs).
    pub silent: bool,
    /// Print one line per answered request on stdout (`gatehouse simulate sxdm`).
    pub print_answers: bool,
}

impl PanelConfig {
    /// A well-behaved panel with the default password.
    pub fn new(url: impl Into<String>, sn: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            sn: sn.into(),
            password: DEFAULT_PASSWORD.to_owned(),
            wrong_random: false,
            answer_delay: None,
            silent: false,
            print_answers: false,
        }
    }
}

/// Why a panel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PanelError {
    /// The URL is invalid, or the TCP connection or WebSocket handshake failed; a refused handshake reads
    /// `HTTP <status>`.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The socket is gone; carries the reason from the manager's close frame, if it gave one.
    #[error("connection closed{}", close_suffix(.0))]
    Closed(Option<String>),
    /// The manager sent something the login flow cannot use.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The manager answered a login step with a non-200 status (HTTP status, or `status` in the body).
    #[error("refused with status {status}: {body}")]
    Refused { status: u16, body: Value },
    /// No answer within 10 s.
    #[error("timed out")]
    Timeout,
}

fn close_suffix(reason: &Option<String>) -> String {
    reason
        .as_deref()
        .map(|reason| format!(": {reason}"))
        .unwrap_or_default()
}

/// What the panel knows. Written only by the panel's task (and by `handle` in unit tests).
#[derive(Debug)]
pub struct PanelState {
    sn: String,
    profile: Map<String, Value>,
    time: Map<String, Value>,
    door: Map<String, Value>,
    recognition: Map<String, Value>,
    persons: BTreeMap<i64, Value>,
    door_opens: u64,
    /// Every request received, oldest first, capped at [`MAX_RECEIVED`].
    received: VecDeque<(String, String, Value)>,
}

impl PanelState {
    /// Factory settings for panel `sn`.
    pub fn new(sn: &str) -> Self {
        Self {
            sn: sn.to_owned(),
            profile: object(json!({"voice_volume": 6})),
            // A fixed clock: nothing in the gateway reads the panel's time back except to show it.
            time: object(json!({
                "local_time": "2024-01-26T11:59:00+04:00",
                "ntp": {"mode": false, "time_zone": "GMT+04:00:00", "server_port": 123,
                        "sync_interval": 60, "server_address": "cn.pool.ntp.org"}
            })),
            door: object(json!({
                "door_open_stat": "close", "open_duration": 5000, "verification_mode": "face_or_card"
            })),
            recognition: object(json!({"recognition_mode": "face"})),
            persons: BTreeMap::new(),
            door_opens: 0,
            received: VecDeque::new(),
        }
    }

    fn settings_mut(&mut self, route: &str) -> Option<&mut Map<String, Value>> {
        match route {
            "/api/devices/profile" => Some(&mut self.profile),
            "/api/devices/time" => Some(&mut self.time),
            "/api/devices/door" => Some(&mut self.door),
            "/api/devices/recognition" => Some(&mut self.recognition),
            _ => None,
        }
    }

    fn record(&mut self, method: &str, path: &str, body: Value) {
        if self.received.len() == MAX_RECEIVED {
            self.received.pop_front();
        }
        self.received
            .push_back((method.to_owned(), path.to_owned(), body));
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The panel's answer to one forwarded request (notes §2.5): `(status, body)`. `path` may carry a query
/// string; routing ignores it. `body` is `null` for an empty body.
pub fn handle(state: &mut PanelState, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let route = envelope::path_without_query(path);
    if let Some(settings) = state.settings_mut(route) {
        return match method {
            "GET" => (200, Value::Object(settings.clone())),
            "PUT" => match body {
                // A shallow merge: the clients send whole sub-objects (e.g. all of `ntp`), never fragments.
                Value::Object(changes) => {
                    for (key, value) in changes {
                        settings.insert(key.clone(), value.clone());
                    }
                    ok()
                }
                _ => bad_request("body must be a JSON object"),
            },
            _ => not_found(),
        };
    }
    if let Some(id) = route.strip_prefix("/api/persons/item/") {
        return person_item(state, method, id, body);
    }
    match (method, route) {
        ("GET", "/api/devices/status") => (
            200,
            json!({"serial_no": state.sn, "model_spec": MODEL_SPEC, "firmware": "sim"}),
        ),
        ("POST", "/api/devices/io") => {
            state.door_opens += 1;
            ok()
        }
        ("GET", "/api/devices/reboot") => ok(),
        ("POST", "/api/persons/item") => add_person(state, body),
        ("POST", "/api/persons/query") => query_persons(state, body),
        ("GET", "/api/auth/login/challenge") => {
            let mut rng = rand::rng();
            (
                200,
                json!({
                    "session_id": format!("{:016x}", rng.random::<u64>()),
                    "challenge": format!("{:016x}", rng.random::<u64>()),
                    "salt": format!("{:08x}", rng.random::<u32>()),
                }),
            )
        }
        _ => not_found(),
    }
}

fn ok() -> (u16, Value) {
    (200, json!({"status": 200}))
}

fn bad_request(msg: &str) -> (u16, Value) {
    (400, json!({"status": 400, "msg": msg}))
}

fn not_found() -> (u16, Value) {
    (404, json!({"status": 404, "msg": "not found"}))
}

fn person_not_found() -> (u16, Value) {
    (404, json!({"status": 404, "msg": "person not found"}))
}

fn add_person(state: &mut PanelState, body: &Value) -> (u16, Value) {
    let Some(id) = body.get("id").and_then(Value::as_i64) else {
        return bad_request("id required");
    };
    // Re-adding an id replaces the record: enrolment retries from the gateway must not fail.
    state.persons.insert(id, body.clone());
    (200, json!({"id": id}))
}

fn person_item(state: &mut PanelState, method: &str, id: &str, body: &Value) -> (u16, Value) {
    let Ok(id) = id.parse::<i64>() else {
        return person_not_found();
    };
    match method {
        "GET" => match state.persons.get(&id) {
            Some(person) => (200, person.clone()),
            None => person_not_found(),
        },
        "PUT" => {
            let Value::Object(changes) = body else {
                return bad_request("body must be a JSON object");
            };
            let Some(Value::Object(person)) = state.persons.get_mut(&id) else {
                return person_not_found();
            };
            for (key, value) in changes {
                person.insert(key.clone(), value.clone());
            }
            // The path names the record; a different `id` in the body must not move it.
            person.insert("id".to_owned(), json!(id));
            ok()
        }
        "DELETE" => match state.persons.remove(&id) {
            Some(_) => ok(),
            None => person_not_found(),
        },
        _ => not_found(),
    }
}

fn query_persons(state: &PanelState, body: &Value) -> (u16, Value) {
    let number = |key: &str, default: usize| {
        body.get(key)
            .and_then(Value::as_u64)
            .map_or(default, |n| usize::try_from(n).unwrap_or(usize::MAX))
    };
    let limit = number("limit", DEFAULT_QUERY_LIMIT);
    let offset = number("offset", 0);
    let query = match body.get("query_string") {
        Some(Value::String(text)) => text.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let descending = body.get("sort").and_then(Value::as_str) == Some("desc");

    let mut matches: Vec<&Value> = state
        .persons
        .iter()
        .filter(|(id, person)| query.is_empty() || person_matches(**id, person, &query))
        .map(|(_, person)| person)
        .collect();
    if descending {
        matches.reverse();
    }
    let total = matches.len();
    let page: Vec<Value> = matches
        .into_iter()
        .skip(offset)
        .take(limit)
        .cloned()
        .collect();
    (
        200,
        json!({"data": page, "paging": {"total": total, "offset": offset, "limit": limit}}),
    )
}

/// `query_string` matches an id, person code or card number exactly, or part of a name.
fn person_matches(id: i64, person: &Value, query: &str) -> bool {
    let field = |key: &str| match person.get(key) {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    id.to_string() == query
        || field("person_code").as_deref() == Some(query)
        || field("card_number").as_deref() == Some(query)
        || field("person_name").is_some_and(|name| name.contains(query))
}

/// A connected, logged-in simulated panel. Dropping it closes the socket.
pub struct SimPanel {
    sn: String,
    session_id: String,
    state: Arc<Mutex<PanelState>>,
    commands: mpsc::Sender<Command>,
    /// `None` while connected; `Some(reason)` once the socket is gone. Written by the task only.
    closed: watch::Receiver<Option<Option<String>>>,
    task: JoinHandle<()>,
}

impl fmt::Debug for SimPanel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimPanel")
            .field("sn", &self.sn)
            .field("session_id", &self.session_id)
            .field("connected", &self.is_connected())
            .finish()
    }
}

enum Command {
    /// Send `text`; answer `reply` with the matching frame (see [`SimPanel::send_raw`]).
    Raw {
        text: String,
        id: Option<String>,
        reply: oneshot::Sender<Result<String, PanelError>>,
    },
    Close,
}

struct RawWaiter {
    id: Option<String>,
    reply: oneshot::Sender<Result<String, PanelError>>,
}

impl SimPanel {
    /// Connects to `cfg.url`, logs in (random, then login; notes §2.3) and starts answering forwarded
    /// requests in a background task.
    ///
    /// # Errors
    /// [`PanelError::Connect`] when the handshake fails; [`PanelError::Closed`] with the manager's close
    /// reason when it closes the socket (as it must for `wrong_random`); [`PanelError::Refused`] for a
    /// non-200 answer; [`PanelError::Protocol`] for an answer without `random`/`session_id`;
    /// [`PanelError::Timeout`] when an answer takes more than 10 s.
    #[tracing::instrument(skip_all, fields(sn = %cfg.sn))]
    pub async fn connect(cfg: PanelConfig) -> Result<SimPanel, PanelError> {
        let mut ws = connect_raw(&cfg.url).await?;
        let session_id = match login(&mut ws, &cfg).await {
            Ok(session_id) => session_id,
            Err(e) => {
                if !matches!(e, PanelError::Closed(_)) {
                    close_quietly(&mut ws).await;
                }
                return Err(e);
            }
        };
        tracing::debug!(%session_id, "logged in");

        let state = Arc::new(Mutex::new(PanelState::new(&cfg.sn)));
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (closed_tx, closed) = watch::channel(None);
        let task = tokio::spawn(run_panel(
            ws,
            cfg.clone(),
            Arc::clone(&state),
            command_rx,
            closed_tx,
        ));
        Ok(SimPanel {
            sn: cfg.sn,
            session_id,
            state,
            commands,
            closed,
            task,
        })
    }

    pub fn sn(&self) -> &str {
        &self.sn
    }

    /// The session id the manager gave in the login answer.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Requests received from the server so far, oldest first: `(method, path with query, body)`, the body
    /// `null` when empty and a JSON string when not JSON.
    pub fn received(&self) -> Vec<(String, String, Value)> {
        lock(&self.state).received.iter().cloned().collect()
    }

    /// How many `POST /api/devices/io` (door open) requests were answered.
    pub fn door_opens(&self) -> u64 {
        lock(&self.state).door_opens
    }

    /// A stored person record, as the last `POST`/`PUT` left it.
    pub fn person(&self, id: i64) -> Option<Value> {
        lock(&self.state).persons.get(&id).cloned()
    }

    /// Sends `text` as a text frame as it is, and returns the answer: the next response frame with the same
    /// request id if `text` has one (see [`envelope::peek_id`]), otherwise the next frame the server sends.
    /// Forwarded requests keep being answered meanwhile.
    ///
    /// # Errors
    /// [`PanelError::Closed`] when the socket closes first, [`PanelError::Timeout`] after 10 s.
    pub async fn send_raw(&self, text: String) -> Result<String, PanelError> {
        let id = envelope::peek_id(&text).map(str::to_owned);
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Raw { text, id, reply })
            .await
            .is_err()
        {
            return Err(self.closed_error());
        }
        match tokio::time::timeout(WAIT, answer).await {
            Err(_) => Err(PanelError::Timeout),
            Ok(Err(_)) => Err(self.closed_error()),
            Ok(Ok(result)) => result,
        }
    }

    /// Resolves when the socket is gone, with the reason from the server's close frame if it gave one.
    pub async fn closed(&self) -> Option<String> {
        let mut closed = self.closed.clone();
        let reason = match closed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().flatten(),
            // The task ended without reporting, which only happens if it panicked.
            Err(_) => None,
        };
        reason
    }

    pub fn is_connected(&self) -> bool {
        self.closed.borrow().is_none() && !self.task.is_finished()
    }

    /// Closes the socket with a close handshake and waits (bounded) for the task to end.
    pub async fn close(self) {
        // A send error means the task already ended; either way we only wait for it below.
        let _ = self.commands.send(Command::Close).await;
        let task = self.task;
        let abort = task.abort_handle();
        if tokio::time::timeout(CLOSE_DRAIN + Duration::from_secs(1), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    fn closed_error(&self) -> PanelError {
        PanelError::Closed(self.closed.borrow().clone().flatten())
    }
}

fn lock(state: &Mutex<PanelState>) -> MutexGuard<'_, PanelState> {
    // A panic while holding the lock leaves the state usable (every update is a single insert or counter
    // bump), so poisoning is ignored rather than propagated into every test that reads it.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens the WebSocket only, sending nothing, so a test can drive the login itself.
///
/// # Errors
/// [`PanelError::Connect`] for an invalid URL or a failed handshake, [`PanelError::Timeout`] after 10 s.
pub async fn connect_raw(url: &str) -> Result<PanelSocket, PanelError> {
    let request = url
        .into_client_request()
        .map_err(|e| PanelError::Connect(format!("{url}: {e}")))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    match tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await
    {
        Err(_) => Err(PanelError::Timeout),
        Ok(Err(tungstenite::Error::Http(response))) => {
            Err(PanelError::Connect(format!("HTTP {}", response.status())))
        }
        Ok(Err(e)) => Err(PanelError::Connect(e.to_string())),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// Opens the WebSocket and runs login step 1 (`POST /api/auth/random`), returning the socket and the random
/// the manager issued, so a test can send its own step 2.
///
/// # Errors
/// As [`connect_raw`], plus [`PanelError::Closed`], [`PanelError::Refused`], [`PanelError::Protocol`] and
/// [`PanelError::Timeout`] for the exchange.
pub async fn connect_with_random(url: &str, sn: &str) -> Result<(PanelSocket, String), PanelError> {
    let mut ws = connect_raw(url).await?;
    let random = request_random(&mut ws, &epoch_ms().to_string(), sn).await?;
    Ok((ws, random))
}

/// Runs `count` panels with serial numbers `<sn_prefix>0001`, `<sn_prefix>0002`, …, each reconnecting
/// whenever its socket closes or its login fails, and prints one line per answered request. It never
/// returns for a non-empty fleet: the process is stopped with Ctrl-C, whose default action ends it (there is
/// no state to save).
///
/// # Errors
/// [`PanelError::Connect`] when `url` is not a WebSocket URL.
pub async fn run_fleet(
    url: &str,
    count: u32,
    sn_prefix: &str,
    password: &str,
) -> Result<(), PanelError> {
    url.into_client_request()
        .map_err(|e| PanelError::Connect(format!("{url}: {e}")))?;
    let mut members = FuturesUnordered::new();
    for n in 1..=count {
        let mut cfg = PanelConfig::new(url, format!("{sn_prefix}{n:04}"));
        cfg.password = password.to_owned();
        cfg.print_answers = true;
        members.push(fleet_member(cfg));
    }
    tokio::select! {
        _ = async { while members.next().await.is_some() {} } => {}
        _ = tokio::signal::ctrl_c() => println!("stopping the panels"),
    }
    Ok(())
}

async fn fleet_member(cfg: PanelConfig) {
    let mut failures: u64 = 0;
    loop {
        match SimPanel::connect(cfg.clone()).await {
            Ok(panel) => {
                failures = 0;
                println!("{} logged in (session {})", cfg.sn, panel.session_id());
                let reason = panel.closed().await;
                println!(
                    "{} disconnected{}; reconnecting",
                    cfg.sn,
                    close_suffix(&reason)
                );
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let pause = Duration::from_secs(failures.min(MAX_RETRY_PAUSE_SECS));
                println!("{} login failed: {e}; retry in {pause:?}", cfg.sn);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Both login steps; returns the session id.
async fn login(ws: &mut PanelSocket, cfg: &PanelConfig) -> Result<String, PanelError> {
    // Our own request ids, like the manager's, start at the current epoch milliseconds (notes §2.2).
    let first_id = epoch_ms();
    let random = request_random(ws, &first_id.to_string(), &cfg.sn).await?;
    let random = if cfg.wrong_random {
        different_random(&random)
    } else {
        random
    };
    let body = json!({"serial_no": cfg.sn, "random": random, "password": cfg.password});
    let answer = exchange(
        ws,
        &(first_id + 1).to_string(),
        "POST",
        "/api/auth/login",
        &body,
    )
    .await?;
    let body = answer.body.to_value();
    // The manager answers 200 with the outcome in the body's `status` (notes §2.3), so check both.
    let body_status = body.get("status").and_then(Value::as_u64);
    match (answer.status, body_status) {
        (200, None | Some(200)) => {}
        (200, Some(status)) => {
            return Err(PanelError::Refused {
                status: u16::try_from(status).unwrap_or(u16::MAX),
                body,
            })
        }
        (status, _) => return Err(PanelError::Refused { status, body }),
    }
    match body.get("session_id") {
        Some(Value::String(session_id)) => Ok(session_id.clone()),
        Some(Value::Number(session_id)) => Ok(session_id.to_string()),
        _ => Err(PanelError::Protocol(format!(
            "login answer has no session_id: {body}"
        ))),
    }
}

/// Login step 1; returns the manager's random.
async fn request_random(ws: &mut PanelSocket, id: &str, sn: &str) -> Result<String, PanelError> {
    let answer = exchange(
        ws,
        id,
        "POST",
        "/api/auth/random",
        &json!({"serial_no": sn}),
    )
    .await?;
    let body = answer.body.to_value();
    if answer.status != 200 {
        return Err(PanelError::Refused {
            status: answer.status,
            body,
        });
    }
    match body.get("random") {
        Some(Value::String(random)) => Ok(random.clone()),
        // Accept a number too: a port that stores the random as an int would serialise it that way.
        Some(Value::Number(random)) => Ok(random.to_string()),
        _ => Err(PanelError::Protocol(format!(
            "random answer has no random: {body}"
        ))),
    }
}

/// A 6-digit value in the manager's range (100000–999999) that differs from `random`.
fn different_random(random: &str) -> String {
    match random.parse::<u32>() {
        Ok(n) if (100_000..=999_999).contains(&n) => {
            ((n - 100_000 + 1) % 900_000 + 100_000).to_string()
        }
        _ => "100000".to_owned(),
    }
}

/// Sends one request and waits for the response with its id, ignoring anything else (the manager forwards
/// nothing before login, so there is nothing to answer yet).
async fn exchange(
    ws: &mut PanelSocket,
    id: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> Result<envelope::Response, PanelError> {
    let frame = envelope::render_request(id, method, path, Some(body));
    ws.send(Message::text(frame)).await.map_err(ws_error)?;
    let deadline = Instant::now() + WAIT;
    loop {
        let incoming = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| PanelError::Timeout)?;
        match incoming {
            Some(Ok(Message::Text(text))) => match envelope::parse(text.as_str()) {
                Ok(Envelope::Response(response)) if response.id == id => return Ok(response),
                Ok(other) => tracing::debug!(id = other.id(), "ignored frame during login"),
                Err(e) if envelope::peek_id(text.as_str()) == Some(id) => {
                    return Err(PanelError::Protocol(format!(
                        "unparseable answer to {path}: {e}"
                    )))
                }
                Err(e) => tracing::debug!(error = %e, "ignored unparseable frame during login"),
            },
            Some(Ok(Message::Close(frame))) => {
                drain(ws).await;
                return Err(PanelError::Closed(close_reason(frame)));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ws_error(e)),
            None => return Err(PanelError::Closed(None)),
        }
    }
}

/// The panel task: owns the socket until it closes, then reports the close reason to the handle.
async fn run_panel(
    mut ws: PanelSocket,
    cfg: PanelConfig,
    state: Arc<Mutex<PanelState>>,
    mut commands: mpsc::Receiver<Command>,
    closed: watch::Sender<Option<Option<String>>>,
) {
    let mut waiters: Vec<RawWaiter> = Vec::new();
    let mut delayed = FuturesUnordered::new();
    let reason = loop {
        tokio::select! {
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    let parsed = envelope::parse(text);
                    deliver_to_waiter(&mut waiters, text, &parsed);
                    let Some(answer) = answer_frame(&cfg, &state, parsed) else {
                        continue;
                    };
                    match cfg.answer_delay {
                        Some(delay) => delayed.push(after(delay, answer)),
                        None => {
                            if let Err(e) = ws.send(Message::text(answer)).await {
                                tracing::debug!(error = %e, "answer not sent");
                                break None;
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    drain(&mut ws).await;
                    break close_reason(frame);
                }
                // Pings are answered inside tokio-tungstenite while we keep reading; binary frames have no
                // meaning in this protocol.
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "socket failed");
                    break None;
                }
                None => break None,
            },
            command = commands.recv() => match command {
                Some(Command::Raw { text, id, reply }) => {
                    waiters.retain(|waiter| !waiter.reply.is_closed());
                    if let Err(e) = ws.send(Message::text(text)).await {
                        // The receiver may have timed out already; nothing to do then.
                        let _ = reply.send(Err(ws_error(e)));
                        break None;
                    }
                    waiters.push(RawWaiter { id, reply });
                }
                // `None`: the handle was dropped, which closes the panel too.
                Some(Command::Close) | None => {
                    close_quietly(&mut ws).await;
                    break None;
                }
            },
            Some(answer) = delayed.next() => {
                if let Err(e) = ws.send(Message::text(answer)).await {
                    tracing::debug!(error = %e, "delayed answer not sent");
                    break None;
                }
            }
        }
    };
    tracing::debug!(sn = %cfg.sn, ?reason, "panel closed");
    closed.send_replace(Some(reason.clone()));
    for waiter in waiters {
        // The receiver may have timed out already; nothing to do then.
        let _ = waiter.reply.send(Err(PanelError::Closed(reason.clone())));
    }
}

async fn after(delay: Duration, answer: String) -> String {
    tokio::time::sleep(delay).await;
    answer
}

/// Hands `text` to the oldest [`SimPanel::send_raw`] waiting for it: a waiter with an id takes only a
/// non-request frame with that id, a waiter without one takes any frame.
fn deliver_to_waiter(
    waiters: &mut Vec<RawWaiter>,
    text: &str,
    parsed: &Result<Envelope, envelope::EnvelopeError>,
) {
    let is_request = matches!(parsed, Ok(Envelope::Request(_)));
    let frame_id = envelope::peek_id(text);
    let position = waiters.iter().position(|waiter| match &waiter.id {
        Some(id) => !is_request && frame_id == Some(id.as_str()),
        None => true,
    });
    if let Some(position) = position {
        let waiter = waiters.remove(position);
        // The receiver may have timed out already; nothing to do then.
        let _ = waiter.reply.send(Ok(text.to_owned()));
    }
}

/// Records a forwarded request and renders the answer, unless the panel is silent. Responses and
/// unparseable frames get no answer: answering a frame we cannot read could start an error ping-pong.
fn answer_frame(
    cfg: &PanelConfig,
    state: &Mutex<PanelState>,
    parsed: Result<Envelope, envelope::EnvelopeError>,
) -> Option<String> {
    let request = match parsed {
        Ok(Envelope::Request(request)) => request,
        Ok(Envelope::Response(response)) => {
            tracing::debug!(id = %response.id, status = response.status, "response to no pending request");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "unparseable frame ignored");
            return None;
        }
    };
    let body = request.body.to_value();
    let (status, answer) = {
        let mut state = lock(state);
        state.record(&request.method, &request.path, body.clone());
        if cfg.silent {
            return None;
        }
        handle(&mut state, &request.method, &request.path, &body)
    };
    if cfg.print_answers {
        println!(
            "{} {} {} {} -> {status}",
            cfg.sn, request.id, request.method, request.path
        );
    }
    Some(envelope::render_response(&request.id, status, &answer))
}

/// Sends our half of the close handshake and waits (bounded) for the peer's.
async fn close_quietly(ws: &mut PanelSocket) {
    // Failing to close a socket that is already broken changes nothing.
    let _ = ws.close(None).await;
    drain(ws).await;
}

/// Reads until the stream ends, so tungstenite flushes its automatic close reply; bounded.
async fn drain(ws: &mut PanelSocket) {
    let _ = tokio::time::timeout(CLOSE_DRAIN, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// The close frame's reason; an empty reason counts as none.
fn close_reason(frame: Option<CloseFrame>) -> Option<String> {
    frame
        .map(|frame| frame.reason.to_string())
        .filter(|reason| !reason.is_empty())
}

fn ws_error(e: tungstenite::Error) -> PanelError {
    match e {
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Io(_)
        | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            PanelError::Closed(None)
        }
        other => PanelError::Protocol(other.to_string()),
    }
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel() -> PanelState {
        PanelState::new("M0140001")
    }

    #[test]
    fn status_reports_serial_and_model() {
        let (status, body) = handle(&mut panel(), "GET", "/api/devices/status", &Value::Null);
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"serial_no": "M0140001", "model_spec": "SX-SIM-1", "firmware": "sim"})
        );
    }

    #[test]
    fn profile_defaults_then_put_merges() {
        let mut state = panel();
        assert_eq!(
            handle(&mut state, "GET", "/api/devices/profile", &Value::Null),
            (200, json!({"voice_volume": 6}))
        );
        assert_eq!(
            handle(
                &mut state,
                "PUT",
                "/api/devices/profile",
                &json!({"language": "en"})
            ),
            (200, json!({"status": 200}))
        );
        assert_eq!(
            handle(
                &mut state,
                "PUT",
                "/api/devices/profile",
                &json!({"voice_volume": 2})
            ),
            (200, json!({"status": 200}))
        );
        assert_eq!(
            handle(&mut state, "GET", "/api/devices/profile", &Value::Null),
            (200, json!({"voice_volume": 2, "language": "en"}))
        );
    }

    #[test]
    fn door_time_and_recognition_have_defaults_and_merge() {
        let mut state = panel();
        let (_, door) = handle(&mut state, "GET", "/api/devices/door", &Value::Null);
        assert_eq!(
            door,
            json!({"door_open_stat": "close", "open_duration": 5000, "verification_mode": "face_or_card"})
        );
        handle(
            &mut state,
            "PUT",
            "/api/devices/door",
            &json!({"door_open_stat": "open"}),
        );
        let (_, door) = handle(&mut state, "GET", "/api/devices/door", &Value::Null);
        assert_eq!(door["door_open_stat"], "open");
        assert_eq!(door["open_duration"], 5000);

        let (status, time) = handle(&mut state, "GET", "/api/devices/time", &Value::Null);
        assert_eq!(status, 200);
        assert_eq!(time["ntp"]["server_port"], 123);
        handle(
            &mut state,
            "PUT",
            "/api/devices/time",
            &json!({"local_time": "2025-01-01T00:00:00+00:00"}),
        );
        let (_, time) = handle(&mut state, "GET", "/api/devices/time", &Value::Null);
        assert_eq!(time["local_time"], "2025-01-01T00:00:00+00:00");

        handle(
            &mut state,
            "PUT",
            "/api/devices/recognition",
            &json!({"recognition_mode": "card"}),
        );
        let (_, recognition) = handle(&mut state, "GET", "/api/devices/recognition", &Value::Null);
        assert_eq!(recognition, json!({"recognition_mode": "card"}));
    }

    #[test]
    fn put_settings_without_an_object_is_a_bad_request() {
        let (status, body) = handle(&mut panel(), "PUT", "/api/devices/profile", &json!([1]));
        assert_eq!(status, 400);
        assert_eq!(body["status"], 400);
    }

    #[test]
    fn query_string_is_ignored_for_routing() {
        let (status, _) = handle(
            &mut panel(),
            "GET",
            "/api/devices/profile?x=1&y=2",
            &Value::Null,
        );
        assert_eq!(status, 200);
    }

    #[test]
    fn io_opens_the_door_and_counts() {
        let mut state = panel();
        let tips = json!({"tips": {"text": "Door Open", "person_type": "staff"}});
        assert_eq!(
            handle(&mut state, "POST", "/api/devices/io", &tips),
            (200, json!({"status": 200}))
        );
        handle(&mut state, "POST", "/api/devices/io", &Value::Null);
        assert_eq!(state.door_opens, 2);
    }

    #[test]
    fn reboot_answers_ok() {
        assert_eq!(
            handle(&mut panel(), "GET", "/api/devices/reboot", &Value::Null),
            (200, json!({"status": 200}))
        );
    }

    #[test]
    fn adding_a_person_needs_a_numeric_id() {
        let mut state = panel();
        let missing = (400, json!({"status": 400, "msg": "id required"}));
        assert_eq!(
            handle(
                &mut state,
                "POST",
                "/api/persons/item",
                &json!({"person_name": "A"})
            ),
            missing
        );
        assert_eq!(
            handle(
                &mut state,
                "POST",
                "/api/persons/item",
                &json!({"id": "1001"})
            ),
            missing
        );
        assert_eq!(
            handle(&mut state, "POST", "/api/persons/item", &Value::Null),
            missing
        );
        assert_eq!(
            handle(
                &mut state,
                "POST",
                "/api/persons/item",
                &json!({"id": 1001, "person_name": "Ann"})
            ),
            (200, json!({"id": 1001}))
        );
        assert_eq!(state.persons[&1001]["person_name"], "Ann");
    }

    #[test]
    fn person_update_and_delete() {
        let mut state = panel();
        handle(
            &mut state,
            "POST",
            "/api/persons/item",
            &json!({"id": 7, "person_name": "Ann", "card_number": "C1"}),
        );
        assert_eq!(
            handle(
                &mut state,
                "PUT",
                "/api/persons/item/7",
                &json!({"person_name": "Bea", "id": 8})
            ),
            (200, json!({"status": 200}))
        );
        assert_eq!(
            handle(&mut state, "GET", "/api/persons/item/7", &Value::Null),
            (
                200,
                json!({"id": 7, "person_name": "Bea", "card_number": "C1"})
            )
        );
        assert_eq!(
            handle(&mut state, "DELETE", "/api/persons/item/7", &Value::Null),
            (200, json!({"status": 200}))
        );
        let absent = (404, json!({"status": 404, "msg": "person not found"}));
        assert_eq!(
            handle(&mut state, "DELETE", "/api/persons/item/7", &Value::Null),
            absent
        );
        assert_eq!(
            handle(&mut state, "PUT", "/api/persons/item/7", &json!({"a": 1})),
            absent
        );
        assert_eq!(
            handle(&mut state, "DELETE", "/api/persons/item/abc", &Value::Null),
            absent
        );
    }

    #[test]
    fn person_query_filters_and_pages() {
        let mut state = panel();
        for id in 1..=25 {
            let name = if id % 2 == 0 {
                format!("Even {id}")
            } else {
                format!("Odd {id}")
            };
            handle(
                &mut state,
                "POST",
                "/api/persons/item",
                &json!({"id": id, "person_name": name, "person_code": id + 1000}),
            );
        }
        let (status, page) = handle(
            &mut state,
            "POST",
            "/api/persons/query",
            &json!({"limit": 10, "offset": 20, "query_string": ""}),
        );
        assert_eq!(status, 200);
        assert_eq!(
            page["paging"],
            json!({"total": 25, "offset": 20, "limit": 10})
        );
        let ids: Vec<i64> = page["data"]
            .as_array()
            .map(|d| d.iter().filter_map(|p| p["id"].as_i64()).collect())
            .unwrap_or_default();
        assert_eq!(ids, vec![21, 22, 23, 24, 25]);

        let (_, by_id) = handle(
            &mut state,
            "POST",
            "/api/persons/query",
            &json!({"limit": 10, "offset": 0, "query_string": "12"}),
        );
        // Id 12 (named "Even 12"); person code 1012 needs the whole code, so it does not match.
        assert_eq!(by_id["paging"]["total"], 1, "{by_id}");

        let (_, by_code) = handle(
            &mut state,
            "POST",
            "/api/persons/query",
            &json!({"query_string": "1003"}),
        );
        assert_eq!(by_code["data"][0]["id"], 3);

        let (_, odd) = handle(
            &mut state,
            "POST",
            "/api/persons/query",
            &json!({"query_string": "Odd", "sort": "desc", "limit": 2}),
        );
        assert_eq!(odd["paging"]["total"], 13);
        assert_eq!(odd["data"][0]["id"], 25);
        assert_eq!(odd["data"].as_array().map(Vec::len), Some(2));

        let (_, defaults) = handle(&mut state, "POST", "/api/persons/query", &Value::Null);
        assert_eq!(
            defaults["paging"],
            json!({"total": 25, "offset": 0, "limit": 10})
        );
    }

    #[test]
    fn admin_challenge_has_session_challenge_and_salt() {
        let (status, body) = handle(
            &mut panel(),
            "GET",
            "/api/auth/login/challenge?username=admin",
            &Value::Null,
        );
        assert_eq!(status, 200);
        for key in ["session_id", "challenge", "salt"] {
            assert!(
                body[key].as_str().is_some_and(|v| !v.is_empty()),
                "{key} in {body}"
            );
        }
    }

    #[test]
    fn unknown_paths_and_methods_are_not_found() {
        let not_found = (404, json!({"status": 404, "msg": "not found"}));
        assert_eq!(
            handle(&mut panel(), "GET", "/api/nope", &Value::Null),
            not_found
        );
        assert_eq!(
            handle(&mut panel(), "POST", "/api/devices/status", &Value::Null),
            not_found
        );
        assert_eq!(
            handle(&mut panel(), "DELETE", "/api/devices/profile", &Value::Null),
            not_found
        );
        assert_eq!(
            handle(&mut panel(), "GET", "/api/persons/item", &Value::Null),
            not_found
        );
    }

    fn config() -> PanelConfig {
        PanelConfig::new("ws://127.0.0.1:1/api/websocket/", "M0140001")
    }

    #[test]
    fn answers_echo_the_request_id_and_requests_are_recorded() {
        let state = Mutex::new(panel());
        let frame =
            envelope::render_request("1718000000123", "GET", "/api/devices/status?x=1", None);
        let answer = answer_frame(&config(), &state, envelope::parse(&frame));
        let answer = answer.map(|a| envelope::parse(&a));
        match answer {
            Some(Ok(Envelope::Response(r))) => {
                assert_eq!((r.id.as_str(), r.status), ("1718000000123", 200));
                assert_eq!(
                    r.body.as_json().map(|b| b["serial_no"].clone()),
                    Some(json!("M0140001"))
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            lock(&state).received.iter().cloned().collect::<Vec<_>>(),
            vec![(
                "GET".to_owned(),
                "/api/devices/status?x=1".to_owned(),
                Value::Null
            )]
        );
    }

    #[test]
    fn silent_panel_records_but_does_not_answer() {
        let state = Mutex::new(panel());
        let cfg = PanelConfig {
            silent: true,
            ..config()
        };
        let frame =
            envelope::render_request("5", "POST", "/api/devices/io", Some(&json!({"tips": {}})));
        assert_eq!(answer_frame(&cfg, &state, envelope::parse(&frame)), None);
        assert_eq!(lock(&state).received.len(), 1);
        assert_eq!(lock(&state).door_opens, 0);
    }

    #[test]
    fn responses_and_garbage_get_no_answer() {
        let state = Mutex::new(panel());
        let response = envelope::render_response("5", 200, &json!({}));
        assert_eq!(
            answer_frame(&config(), &state, envelope::parse(&response)),
            None
        );
        assert_eq!(
            answer_frame(&config(), &state, envelope::parse("garbage")),
            None
        );
        assert!(lock(&state).received.is_empty());
    }

    #[test]
    fn received_is_capped() {
        let mut state = panel();
        for n in 0..MAX_RECEIVED + 5 {
            state.record("GET", &format!("/{n}"), Value::Null);
        }
        assert_eq!(state.received.len(), MAX_RECEIVED);
        assert_eq!(state.received.front().map(|r| r.1.as_str()), Some("/5"));
    }

    #[test]
    fn raw_waiters_match_by_id_or_take_the_next_frame() {
        let (tx_id, mut rx_id) = oneshot::channel();
        let (tx_any, mut rx_any) = oneshot::channel();
        let mut waiters = vec![
            RawWaiter {
                id: Some("9".to_owned()),
                reply: tx_id,
            },
            RawWaiter {
                id: None,
                reply: tx_any,
            },
        ];
        // A request with id 9 from the server is not the answer to our frame 9.
        let request = "9&GET /api/devices/status HTTP/1.1\r\n\r\n";
        deliver_to_waiter(&mut waiters, request, &envelope::parse(request));
        assert_eq!(
            rx_any.try_recv().ok().and_then(Result::ok).as_deref(),
            Some(request)
        );
        let response = "9&HTTP/1.1 400 Bad Request\r\n\r\n{}";
        deliver_to_waiter(&mut waiters, response, &envelope::parse(response));
        assert_eq!(
            rx_id.try_recv().ok().and_then(Result::ok).as_deref(),
            Some(response)
        );
        assert!(waiters.is_empty());
    }

    #[test]
    fn wrong_random_differs_and_stays_six_digits() {
        for random in ["583920", "100000", "999999", "x", ""] {
            let other = different_random(random);
            assert_ne!(other, random);
            assert_eq!(other.len(), 6);
            assert!(other.bytes().all(|b| b.is_ascii_digit()));
        }
        assert_eq!(different_random("999999"), "100000");
    }

    #[test]
    fn close_reason_treats_empty_as_none() {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        assert_eq!(close_reason(None), None);
        assert_eq!(
            close_reason(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into()
            })),
            None
        );
        assert_eq!(
            close_reason(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: "random mismatch".into()
            })),
            Some("random mismatch".to_owned())
        );
    }

    #[test]
    fn closed_error_shows_the_reason() {
        assert_eq!(
            PanelError::Closed(Some("bye".to_owned())).to_string(),
            "connection closed: bye"
        );
        assert_eq!(PanelError::Closed(None).to_string(), "connection closed");
    }
}
