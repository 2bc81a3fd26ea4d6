//! The scenarios. Each takes a [`Ctx`] (the server under test and the common options) and returns a
//! [`Report`]; failures are counted in the report, an `Err` means the scenario could not run at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;

use crate::fleet::AddrPool;
use crate::http::HttpConn;
use crate::procfs;
use crate::report::Report;
use crate::server::Server;
use crate::Common;

pub mod cluster;
pub mod commands;
pub mod conns;
pub mod ingest;
pub mod ocpp;
pub mod storm;

/// How long the server may take to list every registered terminal in `GET /api/connected`.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(120);
/// File descriptors a process needs besides one per terminal (REST callers are added separately).
const FD_MARGIN: u64 = 64;

pub struct Ctx<'a> {
    pub server: &'a Server,
    pub common: &'a Common,
    pub pool: Arc<AddrPool>,
}

impl<'a> Ctx<'a> {
    pub fn new(server: &'a Server, common: &'a Common) -> Ctx<'a> {
        let pool = Arc::new(AddrPool::new(
            server.ws_loopback_v4 && !common.no_source_spread,
            common.sockets_per_addr,
        ));
        Ctx {
            server,
            common,
            pool,
        }
    }

    /// Where the numbers come from, and a warning when either process would run out of file descriptors.
    pub fn describe(&self, report: &mut Report, sockets: usize) {
        report.figure("server", "server", self.server.mode, "");
        report.figure("database", "database", self.server.database.as_str(), "");
        let needed = sockets as u64 + FD_MARGIN;
        let ours = procfs::max_open_files(std::process::id());
        let theirs = self.server.max_open_files();
        report.figure("bench_max_open_files", "bench fd limit", ours, "");
        report.figure("server_max_open_files", "server fd limit", theirs, "");
        if ours.is_some_and(|limit| limit < needed) {
            report.note(format!(
                "this run needs ~{needed} file descriptors but the bench may open {}: expect connect errors",
                ours.unwrap_or(0)
            ));
        }
        if theirs.is_some_and(|limit| limit < needed) {
            report.note(format!(
                "the server may open {} file descriptors, fewer than the ~{needed} this run needs: it will refuse \
                 sockets (a spawned server inherits the bench's raised limit; beyond the hard limit, run \
                 several server processes)",
                theirs.unwrap_or(0)
            ));
        }
    }

    /// Waits until the server lists `registered` terminals. A terminal gets its `reg` reply before the server
    /// has stored it and entered it in its registry, and commands sent in between fail (404 or 409), so the
    /// command windows start only once the server lists every terminal. Returns the wait; a time-out is
    /// counted as `not_all_listed`.
    pub async fn wait_listed(&self, report: &mut Report, registered: usize) -> Option<Duration> {
        match self
            .server
            .wait_listed(registered, None, LIST_TIMEOUT)
            .await
        {
            Ok(waited) => Some(waited),
            Err(e) => {
                report.errors.add_with("not_all_listed", e);
                None
            }
        }
    }

    /// Figures every scenario ends with.
    pub fn finish(&self, report: &mut Report) {
        report.figure(
            "source_addresses",
            "client source addresses",
            self.pool.addresses_used(),
            "",
        );
    }
}

/// A CPU meter over a window: the server's (if its pid is known) and our own.
pub struct CpuWindow {
    started: Instant,
    server: Option<f64>,
    bench: Option<f64>,
}

impl CpuWindow {
    pub fn start(server: &Server) -> CpuWindow {
        CpuWindow {
            started: Instant::now(),
            server: server.cpu_secs(),
            bench: own_cpu_secs(),
        }
    }

    /// (wall seconds, server CPU seconds, bench CPU seconds) since `start`.
    pub fn stop(&self, server: &Server) -> (f64, Option<f64>, Option<f64>) {
        let wall = self.started.elapsed().as_secs_f64();
        let server = match (self.server, server.cpu_secs()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let bench = match (self.bench, own_cpu_secs()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        (wall, server, bench)
    }
}

fn own_cpu_secs() -> Option<f64> {
    let ticks = procfs::cpu_ticks(std::process::id()).ok()?;
    Some(ticks as f64 / procfs::clock_ticks_per_sec() as f64)
}

/// CPU seconds over wall seconds, in % of one core.
pub fn percent(cpu: Option<f64>, wall: f64) -> Option<f64> {
    cpu.filter(|_| wall > 0.0).map(|c| c / wall * 100.0)
}

pub fn secs(d: Duration) -> f64 {
    crate::stats::round3(d.as_secs_f64())
}

pub fn per_sec(count: u64, wall: f64) -> f64 {
    if wall > 0.0 {
        crate::stats::round3(count as f64 / wall)
    } else {
        0.0
    }
}

/// The body every scenario sends.
pub const OPENDOOR: &[u8] = br#"{"command":"opendoor"}"#;

pub fn opendoor() -> Bytes {
    Bytes::from_static(OPENDOOR)
}

pub fn command_path(sn: &str) -> String {
    format!("/api/terminals/{sn}/command")
}

/// How one `POST /api/terminals/{sn}/command` ended.
pub enum Outcome {
    /// 200, `result:true`, and the reply came from the device it was sent to.
    Ok,
    /// 409: not connected, or disconnected before answering.
    NotConnected(String),
    /// Anything else, with the key it is counted under and a message.
    Failed(String, String),
}

#[derive(Deserialize)]
struct CommandAnswer {
    result: bool,
    reply: Option<Reply>,
}

#[derive(Deserialize)]
struct Reply {
    sn: Option<String>,
}

pub async fn send_command(http: &mut HttpConn, path: &str, sn: &str) -> Outcome {
    let response = match http.post(path, opendoor()).await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e.kind().into(), e.message()),
    };
    let text = || {
        String::from_utf8_lossy(&response.body)
            .chars()
            .take(200)
            .collect::<String>()
    };
    match response.status {
        200 => match serde_json::from_slice::<CommandAnswer>(&response.body) {
            Err(e) => Outcome::Failed("bad_body".into(), format!("{e}: {}", text())),
            Ok(answer) => match answer.reply.and_then(|r| r.sn) {
                None => Outcome::Failed("reply_without_sn".into(), text()),
                Some(got) if got != sn => Outcome::Failed(
                    "misrouted".into(),
                    format!("sent to {sn}, answered by {got}"),
                ),
                Some(_) if !answer.result => Outcome::Failed("result_false".into(), text()),
                Some(_) => Outcome::Ok,
            },
        },
        409 => Outcome::NotConnected(text()),
        status => Outcome::Failed(format!("http_{status}"), text()),
    }
}
