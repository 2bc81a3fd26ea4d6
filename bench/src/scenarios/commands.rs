//! `commands`: D terminals connected, C concurrent REST callers send `opendoor` to random devices for S
//! seconds. Commands/s, latency percentiles, errors by status, server CPU per command.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{command_path, per_sec, percent, send_command, CpuWindow, Ctx, Outcome};
use crate::fleet::{connect_all, run_prefix, serial_numbers};
use crate::http::HttpConn;
use crate::report::Report;
use crate::stats::{ErrorCounts, Latency};

struct CallerStats {
    sent: u64,
    ok: u64,
    latency: Latency,
    errors: ErrorCounts,
}

pub async fn run(
    ctx: &Ctx<'_>,
    devices: usize,
    callers: usize,
    secs: f64,
) -> Result<Report, String> {
    let server = ctx.server;
    let callers = callers.max(1);
    let mut report = Report::new(
        "commands",
        format!("commands: {devices} terminals, {callers} callers, {secs} s"),
    );
    ctx.describe(&mut report, devices + callers);
    let sns = serial_numbers(&run_prefix('C'), devices);
    let fleet = connect_all(
        &server.ws_url,
        &sns,
        ctx.common.concurrency,
        &ctx.pool,
        "reg",
    )
    .await?;
    report.errors.merge(&fleet.errors);
    let targets: Arc<Vec<(String, String)>> = Arc::new(
        fleet
            .live()
            .map(|t| (t.sn().to_owned(), command_path(t.sn())))
            .collect(),
    );
    if targets.is_empty() {
        fleet.close_all().await;
        return Err(format!(
            "no terminal registered: {:?}",
            report.errors.lines()
        ));
    }

    ctx.wait_listed(&mut report, targets.len()).await;

    let window = CpuWindow::start(server);
    let deadline = Instant::now() + Duration::from_secs_f64(secs.max(0.1));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let http = server.http();
            let targets = Arc::clone(&targets);
            tokio::spawn(caller(http, targets, deadline))
        })
        .collect();
    let mut sent = 0;
    let mut ok = 0;
    let mut latency = Latency::new()?;
    for task in tasks {
        match task.await {
            Ok(Ok(stats)) => {
                sent += stats.sent;
                ok += stats.ok;
                latency.merge(&stats.latency)?;
                report.errors.merge(&stats.errors);
            }
            Ok(Err(e)) => report.errors.add_with("caller_failed", e),
            Err(e) => report.errors.add_with("caller_panic", e.to_string()),
        }
    }
    let (wall, server_cpu, bench_cpu) = window.stop(server);

    report.figure("devices", "devices", devices as u64, "");
    report.figure("registered", "registered", fleet.registered as u64, "");
    report.figure("callers", "callers", callers as u64, "");
    report.figure("secs", "window", crate::stats::round3(wall), "s");
    report.figure("commands_sent", "commands sent", sent, "");
    report.figure("commands_ok", "commands ok", ok, "");
    report.figure("commands_per_sec", "commands ok", per_sec(ok, wall), "/s");
    report.figure("latency_ms", "", latency.to_json(), "");
    report.figure("", "latency (ok commands)", latency.summary(), "");
    let per_command = server_cpu.filter(|_| ok > 0).map(|c| c * 1e6 / ok as f64);
    report.maybe(
        "cpu_us_per_command",
        "server CPU per command",
        per_command,
        "µs",
    );
    report.maybe(
        "server_cpu_percent",
        "server CPU",
        percent(server_cpu, wall),
        "% of a core",
    );
    report.maybe(
        "bench_cpu_percent",
        "bench CPU",
        percent(bench_cpu, wall),
        "% of a core",
    );
    ctx.finish(&mut report);
    fleet.close_all().await;
    Ok(report)
}

async fn caller(
    mut http: HttpConn,
    targets: Arc<Vec<(String, String)>>,
    deadline: Instant,
) -> Result<CallerStats, String> {
    let mut stats = CallerStats {
        sent: 0,
        ok: 0,
        latency: Latency::new()?,
        errors: ErrorCounts::default(),
    };
    while Instant::now() < deadline {
        let Some((sn, path)) = targets.get(rand::random_range(0..targets.len())) else {
            break;
        };
        let started = Instant::now();
        let outcome = send_command(&mut http, path, sn).await;
        stats.sent += 1;
        match outcome {
            Outcome::Ok => {
                stats.ok += 1;
                stats.latency.record(started.elapsed());
            }
            Outcome::NotConnected(message) => stats.errors.add_with("http_409", message),
            Outcome::Failed(kind, message) => {
                let refused = kind == "http_connect";
                stats.errors.add_with(kind, message);
                if refused {
                    // Do not spin on a refused connection; the failure is counted all the same.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    Ok(stats)
}
