//! The server under test: a `gatehouse serve` process we start (fresh SQLite file, free port, our token), or one
//! the user started and names with `--server-url` (+ `--server-pid` to measure it).

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::http::{HttpConn, HttpTarget};
use crate::procfs;
use crate::Common;

/// How long a spawned server may take to migrate and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval of `GET /api/connected` polls.
const LIST_POLL: Duration = Duration::from_millis(100);
/// How long a spawned server may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Environment of a spawned server; `--server-env KEY=VALUE` overrides any of it.
const SPAWN_ENV: &[(&str, &str)] = &[
    ("RUST_LOG", "warn"),
    ("GATEHOUSE_LOG_FORMAT", "json"),
    // Idle terminals are not pinged during a run, and never time out.
    ("TM20_HEARTBEAT_INTERVAL", "3600"),
    ("TM20_CONNECTION_TIMEOUT", "7200"),
    ("GATEHOUSE_SHUTDOWN_GRACE", "1"),
    // Several servers may run at once; none needs the panels' fixed port.
    ("SXDM_BIND", "off"),
    // Load generators are one abusive-looking client by design: measure the server, not its abuse limits.
    ("GATEHOUSE_MAX_DEVICES", "0"),
    ("IP_MAX_SOCKETS", "0"),
    ("IP_CONNECT_RATE", "0"),
    ("DEVICE_FRAME_RATE", "0"),
    ("REST_RATE", "0"),
    ("REST_TOKEN_RATE", "0"),
];
/// Variables of the caller's environment that would change what a spawned server is (cluster mode, …).
const SCRUBBED_ENV: &[&str] = &[
    "REDIS_URL",
    "REDIS_PREFIX",
    "GATEHOUSE_NODE_ID",
    "GATEHOUSE_NODE_NAME",
    "GATEHOUSE_ADVERTISE_ADDR",
    "TM20_REQUIRE_WHITELIST",
    "COMMAND_TIMEOUT",
    "COMMAND_QUEUE_SIZE",
    "TM20_MAX_FRAME_BYTES",
];

pub struct Server {
    /// Where terminals connect (`ws://…/pub/chat`).
    pub ws_url: String,
    /// Where REST calls go: `--admin`, else the server itself.
    pub api: Arc<HttpTarget>,
    /// The pid whose RSS and CPU time are measured, if known.
    pub pid: Option<u32>,
    /// Terminals connect to an IPv4 loopback address, so their sources can be spread over 127.0.0.2, ….
    pub ws_loopback_v4: bool,
    /// `spawned` or `attached`.
    pub mode: &'static str,
    /// `sqlite` or `postgres` (or `unknown` when attached without `--database-url`).
    pub database: String,
    request_timeout: Duration,
    child: Option<Child>,
    log_path: Option<PathBuf>,
    /// Holds the SQLite file and the log; removed on drop.
    _dir: Option<tempfile::TempDir>,
}

/// What a spawned server logged (it runs with `RUST_LOG=warn`, so every line is a warning or an error; panics
/// are plain text on stderr).
#[derive(Debug, Default)]
pub struct ServerLog {
    pub warnings: u64,
    pub errors: u64,
    pub panics: u64,
    /// The first few messages, for the human table.
    pub samples: Vec<String>,
}

const LOG_SAMPLES: usize = 5;

impl ServerLog {
    /// Adds another node's log (a cluster run reports its nodes' logs as one).
    pub fn merge(&mut self, other: ServerLog) {
        self.warnings += other.warnings;
        self.errors += other.errors;
        self.panics += other.panics;
        for sample in other.samples {
            self.sample(sample);
        }
    }

    fn sample(&mut self, text: String) {
        if self.samples.len() < LOG_SAMPLES {
            self.samples.push(text.chars().take(300).collect());
        }
    }

    /// Counts the lines of `text` (JSON lines by level; `thread '…' panicked at …` plus its message line).
    fn parse(text: &str) -> ServerLog {
        let mut log = ServerLog::default();
        let mut panic_at: Option<&str> = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(at) = panic_at.take() {
                log.sample(format!("PANIC {line} ({at})"));
                continue;
            }
            let Ok(parsed) = serde_json::from_str::<LogLine>(line) else {
                if line.starts_with("thread '") && line.contains("panicked") {
                    log.panics += 1;
                    panic_at = Some(line);
                }
                continue;
            };
            let level = parsed.level.unwrap_or_default();
            if level.eq_ignore_ascii_case("ERROR") {
                log.errors += 1;
            } else {
                log.warnings += 1;
            }
            let detail = parsed.error.as_ref().or(parsed.err.as_ref());
            match (parsed.message, detail) {
                (Some(m), Some(d)) => log.sample(format!("{level} {m}: {d}")),
                (Some(m), None) => log.sample(format!("{level} {m}")),
                _ => log.sample(line.to_owned()),
            }
        }
        if let Some(at) = panic_at {
            log.sample(format!("PANIC {at}"));
        }
        log
    }
}

#[derive(Deserialize)]
struct LogLine {
    level: Option<String>,
    message: Option<String>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    err: Option<serde_json::Value>,
}

impl Server {
    pub async fn start_or_attach(common: &Common) -> Result<Server, String> {
        match &common.server_url {
            Some(url) => Self::attach(common, url).await,
            None => Self::spawn(common).await,
        }
    }

    async fn attach(common: &Common, url: &str) -> Result<Server, String> {
        let token = common
            .api_token
            .clone()
            .ok_or("--server-url needs --api-token (or GATEHOUSE_API_TOKEN)")?;
        if let Some(pid) = common.server_pid {
            if !procfs::process_exists(pid) {
                return Err(format!("--server-pid {pid}: no such process"));
            }
        }
        let node = HttpTarget::parse(url, &token).await?;
        let api = match &common.admin {
            Some(admin) => HttpTarget::parse(admin, &token).await?,
            None => HttpTarget::parse(url, &token).await?,
        };
        let server = Server {
            ws_url: format!("ws://{}{}{}", node.authority, node.base, common.ws_path),
            api: Arc::new(api),
            pid: common.server_pid,
            ws_loopback_v4: matches!(node.addr.ip(), std::net::IpAddr::V4(ip) if ip.is_loopback()),
            mode: "attached",
            database: database_kind(common.database_url.as_deref()),
            request_timeout: common.request_timeout(),
            child: None,
            log_path: None,
            _dir: None,
        };
        let node = Arc::new(node);
        if !healthy(&node, server.request_timeout).await {
            return Err(format!("{url}/healthz does not answer 200"));
        }
        if !healthy(&server.api, server.request_timeout).await {
            return Err(format!("{}/healthz does not answer 200", server.api.url()));
        }
        Ok(server)
    }

    async fn spawn(common: &Common) -> Result<Server, String> {
        if common.admin.is_some() {
            return Err(
                "--admin needs --server-url: start both nodes of the cluster yourself".into(),
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-bench-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let database_url = match &common.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}/bench.db?mode=rwc", dir.path().display()),
        };
        let token = common.api_token.clone().unwrap_or_else(random_token);
        let spec = NodeSpec {
            dir: dir.path().to_owned(),
            name: "server".into(),
            database_url,
            token,
            env: Vec::new(),
        };
        let mut server = Self::spawn_node(common, &spec).await?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// Starts one `gatehouse serve` as `spec` says, and waits until it answers `/healthz`.
    pub async fn spawn_node(common: &Common, spec: &NodeSpec) -> Result<Server, String> {
        let bin = server_bin(common)?;
        let port = free_port()?;
        let bind = format!("127.0.0.1:{port}");
        let log_path = spec.dir.join(format!("{}.log", spec.name));
        let log =
            File::create(&log_path).map_err(|e| format!("cannot create the server log: {e}"))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot share the server log: {e}"))?;

        let mut command = Command::new(&bin);
        command
            .arg("serve")
            // Its working directory holds no `.env`, so only what we set here applies.
            .current_dir(&spec.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for name in SCRUBBED_ENV {
            command.env_remove(name);
        }
        command.envs(SPAWN_ENV.iter().copied());
        command
            .env("GATEHOUSE_BIND", &bind)
            .env("DATABASE_URL", &spec.database_url)
            .env("GATEHOUSE_API_TOKEN", &spec.token);
        command.envs(spec.env.iter().map(|(k, v)| (k, v)));
        for (key, value) in parse_env_pairs(&common.server_env)? {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let url = format!("http://{bind}");
        let api = Arc::new(HttpTarget::parse(&url, &spec.token).await?);
        let mut server = Server {
            ws_url: format!("ws://{bind}{}", common.ws_path),
            api,
            pid: Some(child.id()),
            ws_loopback_v4: true,
            mode: "spawned",
            database: database_kind(Some(&spec.database_url)),
            request_timeout: common.request_timeout(),
            child: Some(child),
            log_path: Some(log_path),
            _dir: None,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "the server exited at start ({status}); its log:\n{}",
                        self.log_tail(20)
                    ));
                }
            }
            if healthy(&self.api, Duration::from_secs(2)).await {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "the server did not answer /healthz within {} s; its log:\n{}",
                    START_TIMEOUT.as_secs(),
                    self.log_tail(20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new keep-alive connection to the REST API.
    pub fn http(&self) -> HttpConn {
        HttpConn::new(Arc::clone(&self.api), self.request_timeout)
    }

    pub fn rss_kib(&self) -> Option<u64> {
        self.pid.and_then(|pid| procfs::rss_kib(pid).ok())
    }

    /// CPU time (user + system) in seconds.
    pub fn cpu_secs(&self) -> Option<f64> {
        let ticks = procfs::cpu_ticks(self.pid?).ok()?;
        Some(ticks as f64 / procfs::clock_ticks_per_sec() as f64)
    }

    pub fn max_open_files(&self) -> Option<u64> {
        self.pid.and_then(procfs::max_open_files)
    }

    /// `GET /api/connected`: how many devices the server (cluster) holds.
    pub async fn connected_count(&self, http: &mut HttpConn) -> Result<usize, String> {
        self.connected_since(http, None).await.map(|(all, _)| all)
    }

    /// `GET /api/connected?scope=local`: how many devices this node itself holds.
    pub async fn local_count(&self, http: &mut HttpConn) -> Result<usize, String> {
        let items: Vec<serde::de::IgnoredAny> =
            connected_items(http, "/api/connected?scope=local").await?;
        Ok(items.len())
    }

    /// `GET /api/connected`: (all devices listed, those whose connection started at or after `since`).
    pub async fn connected_since(
        &self,
        http: &mut HttpConn,
        since: Option<DateTime<Utc>>,
    ) -> Result<(usize, usize), String> {
        #[derive(Deserialize)]
        struct Item {
            connected_at: Option<DateTime<Utc>>,
        }
        let items: Vec<Item> = connected_items(http, "/api/connected").await?;
        let fresh = match since {
            Some(since) => items
                .iter()
                .filter(|i| i.connected_at.is_some_and(|at| at >= since))
                .count(),
            None => items.len(),
        };
        Ok((items.len(), fresh))
    }

    /// Polls `GET /api/connected` until it lists `expected` devices (connected since `since`, if given);
    /// returns how long that took, or an error saying how many were listed when `timeout` ran out.
    pub async fn wait_listed(
        &self,
        expected: usize,
        since: Option<DateTime<Utc>>,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        let mut http = self.http();
        loop {
            let last = match self.connected_since(&mut http, since).await {
                Ok((_, fresh)) if fresh >= expected => return Ok(started.elapsed()),
                Ok((all, fresh)) => format!("{fresh} of {expected} listed ({all} in all)"),
                Err(e) => e,
            };
            if started.elapsed() > timeout {
                return Err(format!("after {:.1} s: {last}", timeout.as_secs_f64()));
            }
            tokio::time::sleep(LIST_POLL).await;
        }
    }

    /// What a spawned server has logged from byte `from` on, and where the log ends now.
    pub fn read_log(&self, from: u64) -> Option<(ServerLog, u64)> {
        let path = self.log_path.as_ref()?;
        let bytes = std::fs::read(path).ok()?;
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
        let text = String::from_utf8_lossy(&bytes[start..]);
        Some((ServerLog::parse(&text), bytes.len() as u64))
    }

    /// Stops a spawned server (SIGTERM, then SIGKILL) and returns what it logged from byte `from` on (its
    /// shutdown); nothing for an attached one.
    pub async fn stop(mut self, from: u64) -> Option<ServerLog> {
        let mut child = self.child.take()?;
        let _ = procfs::signal(child.id(), libc::SIGTERM);
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if started.elapsed() < STOP_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => {
                    eprintln!("the server did not stop after SIGTERM; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        self.read_log(from).map(|(log, _)| log)
    }

    fn log_tail(&self, lines: usize) -> String {
        let Some(path) = &self.log_path else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Never leave a server behind, whatever path we leave by.
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `items` of a `GET /api/connected…` answer; any other status or body is an error naming `path`.
async fn connected_items<T: serde::de::DeserializeOwned>(
    http: &mut HttpConn,
    path: &str,
) -> Result<Vec<T>, String> {
    #[derive(Deserialize)]
    struct Items<T> {
        items: Vec<T>,
    }
    let response = http
        .get(path)
        .await
        .map_err(|e| format!("{}: {}", e.kind(), e.message()))?;
    if response.status != 200 {
        return Err(format!("GET {path} answered {}", response.status));
    }
    serde_json::from_slice::<Items<T>>(&response.body)
        .map(|i| i.items)
        .map_err(|e| format!("GET {path}: bad body: {e}"))
}

async fn healthy(target: &Arc<HttpTarget>, timeout: Duration) -> bool {
    let mut http = HttpConn::new(Arc::clone(target), timeout);
    matches!(http.get("/healthz").await, Ok(r) if r.status == 200)
}

/// How to start one node: its directory (working directory and log), log name, database, token and extra
/// environment (cluster settings). `--server-env` pairs apply on top.
pub struct NodeSpec {
    pub dir: PathBuf,
    pub name: String,
    pub database_url: String,
    pub token: String,
    pub env: Vec<(String, String)>,
}

/// `--server-bin`, or `gatehouse` next to this executable; an error saying how to build it when missing.
pub fn server_bin(common: &Common) -> Result<PathBuf, String> {
    let bin = match &common.server_bin {
        Some(bin) => bin.clone(),
        None => default_server_bin()?,
    };
    if !bin.is_file() {
        return Err(format!(
            "server binary {} not found: build it with `cargo build --release -p gatehouse --bin gatehouse`, \
             or pass --server-bin PATH (or --server-url to attach to a running node)",
            bin.display()
        ));
    }
    Ok(bin)
}

fn parse_env_pairs(pairs: &[String]) -> Result<Vec<(&str, &str)>, String> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .ok_or_else(|| format!("--server-env {pair}: expected KEY=VALUE"))
        })
        .collect()
}

/// `gatehouse` next to our own executable (`target/release/gatehouse`).
fn default_server_bin() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find our own executable: {e}"))?;
    let dir = me.parent().ok_or("our executable has no directory")?;
    Ok(dir.join("gatehouse"))
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

pub fn random_token() -> String {
    format!("bench-{:032x}", rand::random::<u128>())
}

/// The database kind only (a URL may carry a password).
fn database_kind(url: Option<&str>) -> String {
    match url {
        Some(u) if u.starts_with("sqlite:") => "sqlite".into(),
        Some(u) if u.starts_with("postgres") => "postgres".into(),
        Some(_) => "other".into(),
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_counted_by_level_and_panics_found() {
        let text = concat!(
            r#"{"level":"WARN","message":"unusable attendance record skipped","sn":"X"}"#,
            "\n",
            r#"{"level":"ERROR","message":"attendance batch not stored","err":"database is locked"}"#,
            "\n\nthread 'actix-rt|system:0|arbiter:0' (7) panicked at src/x.rs:1:1:\n",
            "this functionality requires a Tokio context\n",
            "note: run with `RUST_BACKTRACE=1`\n",
        );
        let log = ServerLog::parse(text);
        assert_eq!((log.warnings, log.errors, log.panics), (1, 1, 1));
        assert_eq!(
            log.samples[1],
            "ERROR attendance batch not stored: \"database is locked\""
        );
        assert!(log.samples[2].starts_with("PANIC this functionality requires a Tokio context"));
        assert_eq!(database_kind(Some("postgres://u:secret@h/db")), "postgres");
    }
}
