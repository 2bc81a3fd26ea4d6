//! `conns`: N terminals register and stay idle. Time to register all, registrations/s, the server's and the
//! bench's CPU per registration (until the last `reg` reply: the rows the server writes after answering are not
//! in it), the server's RSS before and after (per connection), and its CPU while they idle.

use std::time::Duration;

use super::{per_sec, percent, secs, CpuWindow, Ctx};
use crate::fleet::{connect_all, run_prefix, serial_numbers, Fleet};
use crate::procfs;
use crate::report::Report;

/// Lets the server's allocator settle before RSS is read.
const SETTLE: Duration = Duration::from_millis(1000);

pub async fn run(
    ctx: &Ctx<'_>,
    devices: usize,
    idle_secs: f64,
    photo_bytes: usize,
) -> Result<Report, String> {
    let server = ctx.server;
    let mut report = Report::new("conns", format!("conns: {devices} idle terminals"));
    ctx.describe(&mut report, devices);
    tokio::time::sleep(SETTLE).await;
    let rss_0 = server.rss_kib();

    let sns = serial_numbers(&run_prefix('N'), devices);
    let concurrency = ctx.common.concurrency;
    let registering = CpuWindow::start(server);
    let fleet = connect_all(&server.ws_url, &sns, concurrency, &ctx.pool, "reg").await?;
    // Both processes share this box's cores: the bench's own CPU per registration tells when the load
    // generator, not the server, is the bound.
    let (_, reg_server_cpu, reg_bench_cpu) = registering.stop(server);
    report.errors.merge(&fleet.errors);
    let registered = fleet.registered;
    let register_secs = fleet.elapsed.as_secs_f64();
    let listed = ctx.wait_listed(&mut report, registered).await;

    tokio::time::sleep(SETTLE).await;
    let rss_n = server.rss_kib();
    let bench_rss = procfs::rss_kib(std::process::id()).ok();

    let window = CpuWindow::start(server);
    tokio::time::sleep(Duration::from_secs_f64(idle_secs.max(0.1))).await;
    let (wall, server_cpu, _) = window.stop(server);

    let dropped = fleet.dropped();
    report.errors.add_n_with(
        "dropped_while_idle",
        dropped as u64,
        format!("{dropped} terminals lost their socket while idle"),
    );
    let mut http = server.http();
    let held = match server.connected_count(&mut http).await {
        Ok(n) => {
            if n != registered - dropped {
                report.errors.add_with(
                    "connected_mismatch",
                    format!(
                        "the server lists {n} connected, {} are",
                        registered - dropped
                    ),
                );
            }
            Some(n)
        }
        Err(e) => {
            report.errors.add_with("connected_query", e);
            None
        }
    };

    report.figure("devices", "devices", devices as u64, "");
    report.figure("registered", "registered", registered as u64, "");
    report.figure(
        "server_connected",
        "server lists connected",
        held.map(|n| n as u64),
        "",
    );
    report.figure("concurrency", "connect concurrency", concurrency as u64, "");
    report.figure(
        "register_secs",
        "time to register all",
        secs(fleet.elapsed),
        "s",
    );
    report.figure(
        "registrations_per_sec",
        "registrations",
        per_sec(registered as u64, register_secs),
        "/s",
    );
    let per_registration = |cpu: Option<f64>| {
        cpu.filter(|_| registered > 0)
            .map(|c| c * 1e6 / registered as f64)
    };
    report.maybe(
        "server_cpu_us_per_registration",
        "server CPU per registration",
        per_registration(reg_server_cpu),
        "µs",
    );
    report.maybe(
        "bench_cpu_us_per_registration",
        "bench CPU per registration",
        per_registration(reg_bench_cpu),
        "µs",
    );
    report.figure(
        "listed_secs",
        "time until the server lists all",
        listed.map(|w| secs(fleet.elapsed + w)),
        "s",
    );
    report.figure("reg_latency_ms", "", fleet.latency.to_json(), "");
    report.figure("", "registration latency", fleet.latency.summary(), "");
    report.figure("rss_kib_0", "server RSS at 0", rss_0, "KiB");
    report.figure("rss_kib_n", "server RSS at N", rss_n, "KiB");
    let per_conn = match (rss_0, rss_n) {
        (Some(a), Some(b)) if registered > 0 => Some((b as f64 - a as f64) / registered as f64),
        _ => None,
    };
    report.maybe(
        "rss_kib_per_conn",
        "server RSS per connection",
        per_conn,
        "KiB",
    );
    report.figure("idle_secs", "idle window", crate::stats::round3(wall), "s");
    report.maybe(
        "idle_cpu_percent",
        "server CPU while idle",
        percent(server_cpu, wall),
        "% of a core",
    );
    report.figure("bench_rss_kib", "bench RSS at N", bench_rss, "KiB");
    if photo_bytes > 0 {
        send_photos(ctx, &fleet, photo_bytes, &mut report).await;
        tokio::time::sleep(SETTLE).await;
        let rss_photo = server.rss_kib();
        report.figure(
            "photo_bytes",
            "then one sendlog photo per terminal",
            photo_bytes as u64,
            "B",
        );
        report.figure(
            "rss_kib_after_photo",
            "server RSS after the photos",
            rss_photo,
            "KiB",
        );
        let per_conn = match (rss_0, rss_photo) {
            (Some(a), Some(b)) if registered > 0 => Some((b as f64 - a as f64) / registered as f64),
            _ => None,
        };
        report.maybe(
            "rss_kib_per_conn_after_photo",
            "server RSS per connection after the photos",
            per_conn,
            "KiB",
        );
    }
    ctx.finish(&mut report);
    fleet.close_all().await;
    Ok(report)
}

/// Every live terminal sends one `sendlog` with a photo of `bytes` bytes (base64 text), a few at a time; an
/// answer other than `result:true` counts as an error.
async fn send_photos(ctx: &Ctx<'_>, fleet: &Fleet, bytes: usize, report: &mut Report) {
    use futures_util::StreamExt;
    let photo = format!("data:image/jpeg;base64,{}", "A".repeat(bytes));
    let photo = photo.as_str();
    let results: Vec<Result<serde_json::Value, String>> = futures_util::stream::iter(fleet.live())
        .map(|terminal| async move {
            let record = serde_json::json!({"enrollid": 1, "time": "2026-11-22 08:00:00",
                    "mode": 1, "inout": 0, "event": 0, "image": photo});
            terminal
                .send_logs(vec![record])
                .await
                .map_err(|e| e.to_string())
        })
        .buffer_unordered(ctx.common.concurrency.clamp(1, 64))
        .collect()
        .await;
    for result in results {
        match result {
            Ok(answer) if answer["result"] == true => {}
            Ok(answer) => report
                .errors
                .add_with("photo_refused", format!("sendlog with a photo: {answer}")),
            Err(e) => report.errors.add_with("photo_failed", e),
        }
    }
}
