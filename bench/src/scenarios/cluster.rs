//! `cluster`: N terminals held by K node processes of one cluster (one Redis, one database). The terminals are
//! spread over K worker processes of the bench, one per node, because one process may hold at most its
//! RLIMIT_NOFILE of sockets (20,000 here). Reports the time to register all, that every node lists its share
//! and the cluster lists everyone, the nodes' RSS per connection and idle CPU, cross-node commands (REST call to
//! node i+1 → Redis → terminal on node i; every answer must come from the terminal it was sent to), and that no
//! terminal lost its socket.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::{command_path, per_sec, percent, secs, send_command, Outcome};
use crate::fleet::run_prefix;
use crate::report::Report;
use crate::server::{random_token, server_bin, NodeSpec, Server, ServerLog};
use crate::stats::{ErrorCounts, Latency};
use crate::Common;

/// Lets the nodes' allocators settle before RSS is read.
const SETTLE: Duration = Duration::from_millis(1500);
/// How long the workers may take to register their terminals.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the nodes may take to list every registered terminal.
const LIST_TIMEOUT: Duration = Duration::from_secs(300);
const LIST_POLL: Duration = Duration::from_millis(500);

pub struct ClusterArgs {
    pub nodes: usize,
    pub devices: usize,
    pub idle_secs: f64,
    pub commands: usize,
    pub callers: usize,
    pub retries: u32,
    pub redis_url: String,
}

/// A worker process and its share of the terminals.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    prefix: String,
    share: usize,
    registered: usize,
    /// 1-based indices of this worker's serial numbers that never registered.
    failed: std::collections::HashSet<usize>,
}

impl Worker {
    async fn read(&mut self, timeout: Duration) -> Result<Value, String> {
        match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
            Ok(Err(e)) => Err(format!("cannot read its output: {e}")),
            Ok(Ok(None)) => Err("it exited".into()),
            Ok(Ok(Some(line))) => {
                serde_json::from_str(&line).map_err(|e| format!("bad line {line:?}: {e}"))
            }
        }
    }

    async fn ask(&mut self, line: &str) -> Result<Value, String> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| format!("cannot write to it: {e}"))?;
        self.stdin.flush().await.map_err(|e| e.to_string())?;
        self.read(Duration::from_secs(60)).await
    }
}

pub async fn run(common: &Common, args: &ClusterArgs) -> Result<Report, String> {
    if common.server_url.is_some() {
        return Err("cluster starts its own nodes: drop --server-url".into());
    }
    let nodes = args.nodes.max(1);
    let mut report = Report::new(
        "cluster",
        format!(
            "cluster: {} terminals on {nodes} nodes (one bench worker process per node)",
            args.devices
        ),
    );
    let dir = tempfile::Builder::new()
        .prefix("gatehouse-bench-cluster-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let database_url = match &common.database_url {
        Some(url) => url.clone(),
        None => format!("sqlite://{}/cluster.db?mode=rwc", dir.path().display()),
    };
    // The nodes would all migrate at start; one migration first, so they never race on the schema.
    let bin = server_bin(common)?;
    let migrated = tokio::process::Command::new(&bin)
        .arg("migrate")
        .current_dir(dir.path())
        .env("DATABASE_URL", &database_url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .map_err(|e| format!("cannot run {} migrate: {e}", bin.display()))?;
    if !migrated.status.success() {
        return Err(format!(
            "migrate failed: {}",
            String::from_utf8_lossy(&migrated.stderr)
        ));
    }

    let run = run_prefix('K');
    let token = common.api_token.clone().unwrap_or_else(random_token);
    let mut servers = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let spec = NodeSpec {
            dir: dir.path().to_owned(),
            name: format!("node-{}", i + 1),
            database_url: database_url.clone(),
            token: token.clone(),
            env: vec![
                ("REDIS_URL".into(), args.redis_url.clone()),
                // A prefix of its own, so the run never sees another cluster's routes in a shared Redis.
                ("REDIS_PREFIX".into(), format!("bench-{run}")),
                ("GATEHOUSE_NODE_ID".into(), format!("node-{}", i + 1)),
            ],
        };
        servers.push(Server::spawn_node(common, &spec).await?);
    }
    report.figure("nodes", "nodes", nodes as u64, "");
    report.figure("database", "database", servers[0].database.as_str(), "");
    tokio::time::sleep(SETTLE).await;
    let rss_0: Vec<Option<u64>> = servers.iter().map(Server::rss_kib).collect();

    // Each worker gets a disjoint range of source addresses.
    let per_addr = common.sockets_per_addr.max(1) as usize;
    let mut workers = Vec::with_capacity(nodes);
    let mut addr_offset = 0u32;
    let started = Instant::now();
    for (i, server) in servers.iter().enumerate() {
        let share = args.devices / nodes + usize::from(i < args.devices % nodes);
        let prefix = format!("{run}{i:X}");
        workers.push(spawn_worker(
            common,
            args,
            &server.ws_url,
            &prefix,
            share,
            addr_offset,
        )?);
        addr_offset += u32::try_from(share.div_ceil(per_addr)).unwrap_or(u32::MAX / 2) + 1;
    }

    let mut latency = Latency::new()?;
    let firsts = futures_util::future::join_all(
        workers
            .iter_mut()
            .map(|w| async { w.read(REGISTER_TIMEOUT).await }),
    )
    .await;
    let register_secs = started.elapsed();
    let mut registered = 0usize;
    let mut retried = 0u64;
    let mut retry_errors = ErrorCounts::default();
    for (i, (worker, first)) in workers.iter_mut().zip(firsts).enumerate() {
        match first {
            Ok(v) => {
                worker.registered = v["registered"].as_u64().unwrap_or(0) as usize;
                registered += worker.registered;
                retried += v["retried"].as_u64().unwrap_or(0);
                retry_errors.merge(&ErrorCounts::from_wire(&v["retry_errors"]));
                worker.failed = v["failed"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|i| i.as_u64().map(|i| i as usize))
                    .collect();
                report.errors.merge(&ErrorCounts::from_wire(&v["errors"]));
                let bad = latency.add_wire(&v["latency"]);
                report.errors.add_n("worker_bad_latency", bad as u64);
            }
            Err(e) => report
                .errors
                .add_with("worker_failed", format!("worker {}: {e}", i + 1)),
        }
    }

    // Every node lists its own share, then the cluster (node 1's view, through Redis) lists everyone.
    let list_started = Instant::now();
    let mut local_counts = vec![0usize; nodes];
    for (i, (server, worker)) in servers.iter().zip(&workers).enumerate() {
        let mut http = server.http();
        loop {
            match server.local_count(&mut http).await {
                Ok(n) => local_counts[i] = n,
                Err(e) => report.errors.add_with("list_failed", e),
            }
            if local_counts[i] >= worker.registered || list_started.elapsed() > LIST_TIMEOUT {
                break;
            }
            tokio::time::sleep(LIST_POLL).await;
        }
        if local_counts[i] != worker.registered {
            report.errors.add_with(
                "node_list_mismatch",
                format!(
                    "node {} lists {} connected, {} registered there",
                    i + 1,
                    local_counts[i],
                    worker.registered
                ),
            );
        }
    }
    let cluster_listed = {
        let mut http = servers[0].http();
        loop {
            let n = servers[0].connected_count(&mut http).await;
            match n {
                Ok(n) if n >= registered => break Some(n),
                Ok(n) if list_started.elapsed() > LIST_TIMEOUT => {
                    report.errors.add_with(
                        "cluster_list_mismatch",
                        format!("the cluster lists {n} connected, {registered} registered"),
                    );
                    break Some(n);
                }
                Err(e) if list_started.elapsed() > LIST_TIMEOUT => {
                    report.errors.add_with("cluster_list_failed", e);
                    break None;
                }
                _ => tokio::time::sleep(LIST_POLL).await,
            }
        }
    };
    let listed_secs = list_started.elapsed();

    tokio::time::sleep(SETTLE).await;
    let rss_n: Vec<Option<u64>> = servers.iter().map(Server::rss_kib).collect();
    let cpu_0: Vec<Option<f64>> = servers.iter().map(Server::cpu_secs).collect();
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.idle_secs.max(0.1))).await;
    let idle_wall = idle_started.elapsed().as_secs_f64();
    let idle_cpu: Option<f64> = servers
        .iter()
        .zip(&cpu_0)
        .map(|(s, a)| Some(s.cpu_secs()? - (*a)?))
        .sum();

    let cross = if nodes > 1 && registered > 0 {
        Some(cross_node_commands(&servers, &workers, args, &mut report).await?)
    } else {
        None
    };

    let mut dropped = 0usize;
    for (i, worker) in workers.iter_mut().enumerate() {
        match worker.ask("stop").await {
            Ok(v) => dropped += v["dropped"].as_u64().unwrap_or(0) as usize,
            Err(e) => report
                .errors
                .add_with("worker_failed", format!("worker {}: {e}", i + 1)),
        }
    }
    report.errors.add_n_with(
        "dropped_while_idle",
        dropped as u64,
        format!("{dropped} terminals lost their socket"),
    );
    for worker in &mut workers {
        if tokio::time::timeout(Duration::from_secs(60), worker.child.wait())
            .await
            .is_err()
        {
            let _ = worker.child.kill().await;
        }
    }

    report.figure("devices", "devices", args.devices as u64, "");
    report.figure("registered", "registered", registered as u64, "");
    report.figure(
        "register_secs",
        "time to register all",
        secs(register_secs),
        "s",
    );
    report.figure(
        "registrations_per_sec",
        "registrations",
        per_sec(registered as u64, register_secs.as_secs_f64()),
        "/s",
    );
    report.figure("reg_latency_ms", "", latency.to_json(), "");
    report.figure("", "registration latency", latency.summary(), "");
    report.figure("reg_retried", "registrations dialled again", retried, "");
    report.figure("reg_retry_errors", "", retry_errors.to_json(), "");
    for line in retry_errors.lines() {
        report.note(format!("failed before a retry: {line}"));
    }
    report.figure(
        "listed_local",
        "listed by their nodes",
        local_counts.iter().sum::<usize>() as u64,
        "",
    );
    report.figure(
        "listed_per_node",
        "",
        Value::from(local_counts.iter().map(|&n| n as u64).collect::<Vec<_>>()),
        "",
    );
    report.figure(
        "listed_cluster",
        "listed by the cluster",
        cluster_listed.map(|n| n as u64),
        "",
    );
    report.figure(
        "listed_secs",
        "registered → all listed",
        secs(listed_secs),
        "s",
    );
    let sum = |v: &[Option<u64>]| v.iter().copied().sum::<Option<u64>>();
    report.figure("rss_kib_0", "nodes' RSS at 0 (sum)", sum(&rss_0), "KiB");
    report.figure("rss_kib_n", "nodes' RSS at N (sum)", sum(&rss_n), "KiB");
    report.figure(
        "rss_kib_n_per_node",
        "",
        Value::from(rss_n.iter().map(|v| Value::from(*v)).collect::<Vec<_>>()),
        "",
    );
    let per_conn = match (sum(&rss_0), sum(&rss_n)) {
        (Some(a), Some(b)) if registered > 0 => Some((b as f64 - a as f64) / registered as f64),
        _ => None,
    };
    report.maybe(
        "rss_kib_per_conn",
        "nodes' RSS per connection",
        per_conn,
        "KiB",
    );
    report.figure(
        "idle_secs",
        "idle window",
        crate::stats::round3(idle_wall),
        "s",
    );
    report.maybe(
        "idle_cpu_percent",
        "nodes' CPU while idle (sum)",
        percent(idle_cpu, idle_wall),
        "% of a core",
    );
    if let Some(cross) = cross {
        report.figure(
            "cross_node_sent",
            "cross-node commands sent",
            cross.sent,
            "",
        );
        report.figure("cross_node_ok", "cross-node commands ok", cross.ok, "");
        report.figure("misrouted", "misrouted answers", cross.misrouted, "");
        report.figure(
            "cross_node_per_sec",
            "cross-node command rate",
            per_sec(cross.ok, cross.wall),
            "/s",
        );
        report.figure("cross_node_latency_ms", "", cross.latency.to_json(), "");
        report.figure("", "cross-node latency", cross.latency.summary(), "");
    }
    report.figure("dropped", "terminals dropped", dropped as u64, "");

    let mut log = ServerLog::default();
    let mut shutdown = ServerLog::default();
    for server in servers {
        let during = server.read_log(0);
        let end = during.as_ref().map_or(0, |(_, end)| *end);
        if let Some((during, _)) = during {
            log.merge(during);
        }
        if let Some(after) = server.stop(end).await {
            shutdown.merge(after);
        }
    }
    report.set_server_log(log, Some(shutdown));
    drop(dir);
    Ok(report)
}

fn spawn_worker(
    common: &Common,
    args: &ClusterArgs,
    ws_url: &str,
    prefix: &str,
    share: usize,
    addr_offset: u32,
) -> Result<Worker, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find our own executable: {e}"))?;
    let mut command = tokio::process::Command::new(me);
    // --concurrency is the whole run's: split over the workers, so K workers do not dial K times as many.
    let concurrency = (common.concurrency / args.nodes.max(1)).max(16);
    command
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .arg("--sockets-per-addr")
        .arg(common.sockets_per_addr.to_string());
    if common.no_source_spread {
        command.arg("--no-source-spread");
    }
    command
        .arg("hold")
        .arg("--ws-url")
        .arg(ws_url)
        .arg("--prefix")
        .arg(prefix)
        .arg("--count")
        .arg(share.to_string())
        .arg("--addr-offset")
        .arg(addr_offset.to_string())
        .arg("--retries")
        .arg(args.retries.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start a worker: {e}"))?;
    let stdin = child.stdin.take().ok_or("worker without stdin")?;
    let stdout = child.stdout.take().ok_or("worker without stdout")?;
    Ok(Worker {
        child,
        stdin,
        lines: BufReader::new(stdout).lines(),
        prefix: prefix.to_owned(),
        share,
        registered: 0,
        failed: Default::default(),
    })
}

struct Cross {
    sent: u64,
    ok: u64,
    misrouted: u64,
    wall: f64,
    latency: Latency,
}

/// `args.commands` commands from `args.callers` callers, each to a random terminal of node i sent through
/// node i+1's REST API.
async fn cross_node_commands(
    servers: &[Server],
    workers: &[Worker],
    args: &ClusterArgs,
    report: &mut Report,
) -> Result<Cross, String> {
    let callers = args.callers.max(1);
    let per_caller = args.commands.div_ceil(callers);
    // Only terminals that registered (a failed registration is already counted).
    let shares: Vec<(String, Vec<usize>)> = workers
        .iter()
        .map(|w| {
            let live = (1..=w.share).filter(|i| !w.failed.contains(i)).collect();
            (w.prefix.clone(), live)
        })
        .collect();
    let shares = std::sync::Arc::new(shares);
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let shares = std::sync::Arc::clone(&shares);
            let mut conns: Vec<_> = servers.iter().map(Server::http).collect();
            tokio::spawn(async move {
                let mut errors = ErrorCounts::default();
                let mut latency = Latency::new()?;
                let (mut sent, mut ok, mut misrouted) = (0u64, 0u64, 0u64);
                for _ in 0..per_caller {
                    let node = rand::random_range(0..shares.len());
                    let (prefix, live) = &shares[node];
                    if live.is_empty() {
                        continue;
                    }
                    let index = live[rand::random_range(0..live.len())];
                    let sn = format!("{prefix}{index:06}");
                    let via = (node + 1) % conns.len();
                    let began = Instant::now();
                    sent += 1;
                    match send_command(&mut conns[via], &command_path(&sn), &sn).await {
                        Outcome::Ok => {
                            ok += 1;
                            latency.record(began.elapsed());
                        }
                        Outcome::NotConnected(m) => errors.add_with("cross_node_http_409", m),
                        Outcome::Failed(kind, m) => {
                            if kind == "misrouted" {
                                misrouted += 1;
                            }
                            errors.add_with(format!("cross_node_{kind}"), m);
                        }
                    }
                }
                Ok::<_, String>((sent, ok, misrouted, errors, latency))
            })
        })
        .collect();
    let mut cross = Cross {
        sent: 0,
        ok: 0,
        misrouted: 0,
        wall: 0.0,
        latency: Latency::new()?,
    };
    for task in tasks {
        match task.await {
            Ok(Ok((sent, ok, misrouted, errors, latency))) => {
                cross.sent += sent;
                cross.ok += ok;
                cross.misrouted += misrouted;
                report.errors.merge(&errors);
                cross.latency.merge(&latency)?;
            }
            Ok(Err(e)) => report.errors.add_with("cross_node_failed", e),
            Err(e) => report.errors.add_with("cross_node_panic", e.to_string()),
        }
    }
    cross.wall = started.elapsed().as_secs_f64();
    Ok(cross)
}
