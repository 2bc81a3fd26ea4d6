//! Test harness: a real node on a random port with a fresh database (an SQLite file in a temp dir, or a new
//! PostgreSQL database when `TEST_DATABASE_URL` points at a server), plus HTTP and raw WebSocket clients.

use std::time::Duration;

use actix_web::dev::ServerHandle;
use futures_util::{SinkExt, StreamExt};
use gatehouse::config::Settings;
use gatehouse::startup::Application;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// Every socket read in a test waits at most this long, so a broken test fails instead of hanging.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub const TOKEN: &str = "test-token";

pub struct TestApp {
    pub port: u16,
    /// The dedicated panel listener's port, when the test turned it on.
    pub sxdm_port: Option<u16>,
    pub settings: Settings,
    pub handle: ServerHandle,
    pub stopper: gatehouse::startup::Stopper,
    pub http: awc::Client,
    /// Keeps the SQLite file alive for the test's duration (and across a restart).
    _dir: Option<tempfile::TempDir>,
}

/// Where this run's databases live.
enum Backend {
    Sqlite,
    Postgres(String),
}

fn backend() -> Backend {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => Backend::Postgres(url),
        _ => Backend::Sqlite,
    }
}

/// A node with test defaults (short timings) adjusted by `tweak`.
/// A fresh, empty database for one test: its URL and (for SQLite) the directory holding the file.
pub async fn fresh_database() -> (String, Option<tempfile::TempDir>) {
    match backend() {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("gatehouse.db").display()
            );
            (url, Some(dir))
        }
        Backend::Postgres(base) => (fresh_postgres_database(&base).await, None),
    }
}

/// A node with test defaults (short timings) adjusted by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let (database_url, dir) = fresh_database().await;
    spawn_app_on(database_url, dir, tweak).await
}

/// A node on an existing database (the nodes of a cluster share one).
pub async fn spawn_app_on(
    database_url: String,
    dir: Option<tempfile::TempDir>,
    tweak: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = Settings {
        bind: "127.0.0.1:0".into(),
        database_url,
        api_token: Some(TOKEN.into()),
        tm20_heartbeat_interval: Duration::from_secs(5),
        tm20_connection_timeout: Duration::from_secs(30),
        command_timeout: Duration::from_secs(5),
        // Tests run in parallel: the manager's fixed port is off unless a test asks for `127.0.0.1:0`.
        sxdm_bind: "off".into(),
        // Floods and bursts are part of several tests; the abuse limits have their own tests (limits.rs).
        device_frame_rate: 0.0,
        ip_connect_rate: 0.0,
        rest_rate: 0,
        rest_token_rate: 0,
        ..Settings::default()
    };
    tweak(&mut settings);
    start(settings, dir).await
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

async fn start(settings: Settings, dir: Option<tempfile::TempDir>) -> TestApp {
    let app = Application::build(settings.clone())
        .await
        .expect("node builds");
    let port = app.port();
    let sxdm_port = app.sxdm_port();
    let handle = app.handle();
    let stopper = app.stopper();
    actix_rt::spawn(app.run_until_stopped());
    TestApp {
        port,
        sxdm_port,
        settings,
        handle,
        stopper,
        http: awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish(),
        _dir: dir,
    }
}

/// Creates an empty database on the PostgreSQL server of `base` and returns its URL.
async fn fresh_postgres_database(base: &str) -> String {
    let name = format!("gatehouse_test_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(base).await.expect("postgres reachable");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    admin.close().await.ok();
    let (prefix, _) = base.rsplit_once('/').expect("postgres url has a database");
    format!("{prefix}/{name}")
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    /// Stops this node and starts a new one on the same database (a restart).
    pub async fn restart(self) -> TestApp {
        self.handle.stop(true).await;
        let mut settings = self.settings.clone();
        settings.bind = "127.0.0.1:0".into();
        start(settings, self._dir).await
    }

    /// A direct connection to the node's database, for inspecting rows and injecting failures.
    pub async fn db(&self) -> DatabaseConnection {
        Database::connect(&self.settings.database_url)
            .await
            .expect("db connects")
    }

    pub fn is_postgres(&self) -> bool {
        self.settings.database_url.starts_with("postgres")
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await;
        read(response).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .send_json(&body)
            .await;
        read(response).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .put(self.url(path))
            .bearer_auth(TOKEN)
            .send_json(&body)
            .await;
        read(response).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .patch(self.url(path))
            .bearer_auth(TOKEN)
            .send_json(&body)
            .await;
        read(response).await
    }

    pub async fn command(&self, sn: &str, command: &str, params: Value) -> (u16, Value) {
        self.post(
            &format!("/api/terminals/{sn}/command"),
            serde_json::json!({"command": command, "params": params}),
        )
        .await
    }

    /// Polls `check` until it holds (or fails the test after the read timeout).
    pub async fn eventually<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting for: {what}");
    }

    pub async fn is_online(&self, sn: &str) -> bool {
        let (_, body) = self.get("/api/connected").await;
        body["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i["sn"] == sn))
    }
}

pub async fn read(
    response: Result<
        awc::ClientResponse<
            impl futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>>
                + Unpin,
        >,
        awc::error::SendRequestError,
    >,
) -> (u16, Value) {
    let mut response = response.expect("request sent");
    let status = response.status().as_u16();
    let bytes = response
        .body()
        .limit(64 * 1024 * 1024)
        .await
        .expect("body read");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "non-JSON body with status {status}: {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, body)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A hand-driven terminal socket, for the frames a well-behaved simulator would never send.
pub struct RawTerminal {
    pub ws: Ws,
}

/// What the next read of a raw socket saw.
#[derive(Debug)]
pub enum Received {
    Json(Value),
    Closed(Option<(u16, String)>),
}

impl RawTerminal {
    pub async fn connect(url: &str) -> RawTerminal {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        RawTerminal { ws }
    }

    /// Connects and registers as `sn`, asserting the reg answer.
    pub async fn register(url: &str, sn: &str) -> RawTerminal {
        let mut terminal = RawTerminal::connect(url).await;
        terminal
            .send(&serde_json::json!({"cmd":"reg","sn":sn,"devinfo":{"modelname":"raw","firmware":"raw-1"}}).to_string())
            .await;
        let answer = terminal.recv_json().await;
        assert_eq!(answer["ret"], "reg");
        assert_eq!(answer["result"], true, "{answer}");
        terminal
    }

    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("frame sent");
    }

    /// The next JSON text frame or the close, skipping pings.
    pub async fn recv(&mut self) -> Received {
        loop {
            let next = tokio::time::timeout(READ_TIMEOUT, self.ws.next())
                .await
                .expect("a frame within the read timeout");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Received::Json(serde_json::from_str(&text).expect("server sends JSON"))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Received::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    )
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Received::Closed(None),
            }
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Received::Json(value) => value,
            Received::Closed(reason) => {
                panic!("socket closed ({reason:?}) while a frame was expected")
            }
        }
    }

    /// Waits for the server to close the socket, returning the close code and reason.
    pub async fn expect_closed(&mut self) -> Option<(u16, String)> {
        loop {
            match self.recv().await {
                Received::Closed(reason) => return reason,
                Received::Json(_) => continue,
            }
        }
    }
}

/// A `redis-server` of the test's own on a free port (for tests that stop or restart Redis, or when no shared
/// Redis runs). Killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port,
            child: None,
            _dir: dir,
        };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        let url = self.url();
        let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if redis_ping(&url).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub async fn redis_ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let connected = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await;
    match connected {
        Ok(Ok(mut conn)) => redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok(),
        _ => false,
    }
}

/// The shared Redis (`TEST_REDIS_URL`, default the local service), or a private one when none answers.
pub async fn shared_redis() -> (String, Option<RedisServer>) {
    let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    if redis_ping(&url).await {
        return (url, None);
    }
    let server = RedisServer::start().await;
    (server.url(), Some(server))
}

/// A port that was free a moment ago (for node processes, which must be told their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A unique key prefix, so tests sharing one Redis never see each other's keys.
pub fn unique_prefix() -> String {
    format!("gh-test-{}", uuid::Uuid::new_v4().simple())
}
