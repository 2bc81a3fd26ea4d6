//! `storm`: K terminals connected, then all drop at once (close frame, socket closed) and reconnect. Time until
//! all are registered again (by their `reg` replies and by `GET /api/connected`); meanwhile REST callers send
//! commands to random devices and every answer's `reply.sn` must be the device it was sent to.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;

use super::{command_path, percent, send_command, CpuWindow, Ctx, Outcome, LIST_TIMEOUT};
use crate::fleet::{connect_all, run_prefix, serial_numbers};
use crate::http::HttpConn;
use crate::report::Report;
use crate::stats::{ErrorCounts, Latency};

/// Commands flow this long before the drop, and this long after the server lists everyone again.
const STEADY: Duration = Duration::from_secs(1);
/// Devices checked one by one once the storm is over.
const POST_CHECK: usize = 200;

const PHASE_BEFORE: u8 = 0;
const PHASE_STORM: u8 = 1;
const PHASE_AFTER: u8 = 2;
const PHASE_STOP: u8 = 3;

#[derive(Default)]
struct CallerStats {
    sent: u64,
    ok: u64,
    /// 409 while the devices were reconnecting: the expected answer for a device without a socket.
    not_connected: u64,
    misrouted: u64,
    errors: ErrorCounts,
}

pub async fn run(ctx: &Ctx<'_>, devices: usize, callers: usize) -> Result<Report, String> {
    let server = ctx.server;
    let callers = callers.max(1);
    let mut report = Report::new(
        "storm",
        format!("storm: {devices} terminals drop and reconnect, {callers} callers"),
    );
    // Old sockets may still be closing while the new ones open.
    ctx.describe(&mut report, 2 * devices + callers);
    let sns = serial_numbers(&run_prefix('S'), devices);
    let concurrency = ctx.common.concurrency;
    let fleet = connect_all(&server.ws_url, &sns, concurrency, &ctx.pool, "reg").await?;
    report.errors.merge(&fleet.errors);
    let live: Vec<String> = fleet.live().map(|t| t.sn().to_owned()).collect();
    if live.is_empty() {
        return Err(format!(
            "no terminal registered: {:?}",
            report.errors.lines()
        ));
    }
    let targets: Arc<Vec<(String, String)>> = Arc::new(
        live.iter()
            .map(|sn| (sn.clone(), command_path(sn)))
            .collect(),
    );

    ctx.wait_listed(&mut report, live.len()).await;

    let phase = Arc::new(AtomicU8::new(PHASE_BEFORE));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            tokio::spawn(storm_caller(
                server.http(),
                Arc::clone(&targets),
                Arc::clone(&phase),
            ))
        })
        .collect();
    tokio::time::sleep(STEADY).await;

    let window = CpuWindow::start(server);
    let t0 = Instant::now();
    let t0_wall = chrono::Utc::now();
    phase.store(PHASE_STORM, Ordering::SeqCst);
    fleet.close_all().await;
    let drop_secs = t0.elapsed();
    let again = connect_all(&server.ws_url, &live, concurrency, &ctx.pool, "reconnect").await?;
    let reregister_secs = t0.elapsed();
    report.errors.merge(&again.errors);

    // Listed means: connected again since the drop (a stale entry of a closed socket does not count).
    let all_listed = match server
        .wait_listed(again.registered, Some(t0_wall), LIST_TIMEOUT)
        .await
    {
        Ok(_) => Some(t0.elapsed()),
        Err(e) => {
            report.errors.add_with("not_all_listed", e);
            None
        }
    };
    let (wall, server_cpu, _) = window.stop(server);
    phase.store(PHASE_AFTER, Ordering::SeqCst);
    tokio::time::sleep(STEADY).await;
    phase.store(PHASE_STOP, Ordering::SeqCst);

    let mut calls = CallerStats::default();
    for task in tasks {
        match task.await {
            Ok(stats) => {
                calls.sent += stats.sent;
                calls.ok += stats.ok;
                calls.not_connected += stats.not_connected;
                calls.misrouted += stats.misrouted;
                calls.errors.merge(&stats.errors);
            }
            Err(e) => report.errors.add_with("caller_panic", e.to_string()),
        }
    }
    report.errors.merge(&calls.errors);

    let (checked, check_latency) = post_check(ctx, &live, callers, &mut report).await?;

    report.figure("devices", "devices", devices as u64, "");
    report.figure("registered", "registered before", live.len() as u64, "");
    report.figure(
        "reregistered",
        "registered again",
        again.registered as u64,
        "",
    );
    report.figure("drop_secs", "time to drop all", super::secs(drop_secs), "s");
    report.figure(
        "reregister_secs",
        "drop → all reg replies",
        super::secs(reregister_secs),
        "s",
    );
    report.figure(
        "reconnect_only_secs",
        "reconnect alone",
        super::secs(again.elapsed),
        "s",
    );
    report.figure(
        "all_listed_secs",
        "drop → server lists all",
        all_listed.map(super::secs),
        "s",
    );
    report.figure("reg_latency_ms", "", again.latency.to_json(), "");
    report.figure("", "re-registration latency", again.latency.summary(), "");
    report.maybe(
        "server_cpu_percent",
        "server CPU during storm",
        percent(server_cpu, wall),
        "% of a core",
    );
    report.figure("commands_sent", "commands sent", calls.sent, "");
    report.figure("commands_ok", "commands ok", calls.ok, "");
    report.figure(
        "commands_not_connected",
        "409 during the storm (expected)",
        calls.not_connected,
        "",
    );
    report.figure("misrouted", "misrouted answers", calls.misrouted, "");
    report.figure("post_check_ok", "post-storm check ok", checked, "");
    report.figure("post_check_latency_ms", "", check_latency.to_json(), "");
    ctx.finish(&mut report);
    again.close_all().await;
    Ok(report)
}

async fn storm_caller(
    mut http: HttpConn,
    targets: Arc<Vec<(String, String)>>,
    phase: Arc<AtomicU8>,
) -> CallerStats {
    let mut stats = CallerStats::default();
    loop {
        let sent_in = phase.load(Ordering::SeqCst);
        if sent_in == PHASE_STOP {
            break;
        }
        let Some((sn, path)) = targets.get(rand::random_range(0..targets.len())) else {
            break;
        };
        stats.sent += 1;
        let outcome = send_command(&mut http, path, sn).await;
        let answered_in = phase.load(Ordering::SeqCst);
        match outcome {
            Outcome::Ok => stats.ok += 1,
            // A device may have no socket, or lose it before answering, while the storm is on: that is the
            // API's documented answer, for any call that overlapped the storm. A call answered before the drop
            // began, or sent once the server listed everyone again, must not get it.
            Outcome::NotConnected(_) if answered_in >= PHASE_STORM && sent_in <= PHASE_STORM => {
                stats.not_connected += 1;
            }
            Outcome::NotConnected(message) => {
                let when = if sent_in == PHASE_BEFORE {
                    "before_storm"
                } else {
                    "after_reconnect"
                };
                stats.errors.add_with(format!("http_409_{when}"), message);
            }
            Outcome::Failed(kind, message) => {
                if kind == "misrouted" {
                    stats.misrouted += 1;
                }
                let refused = kind == "http_connect";
                stats.errors.add_with(kind, message);
                if refused {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    stats
}

/// After the storm: up to [`POST_CHECK`] random devices, each must answer a command itself.
async fn post_check(
    ctx: &Ctx<'_>,
    live: &[String],
    callers: usize,
    report: &mut Report,
) -> Result<(u64, Latency), String> {
    let mut sample: Vec<String> = live.to_vec();
    sample.shuffle(&mut rand::rng());
    sample.truncate(POST_CHECK);
    let chunk = sample.len().div_ceil(callers).max(1);
    let tasks: Vec<_> = sample
        .chunks(chunk)
        .map(|sns| {
            let sns = sns.to_vec();
            let mut http = ctx.server.http();
            tokio::spawn(async move {
                let mut ok = 0u64;
                let mut errors = ErrorCounts::default();
                let mut latency = Latency::new()?;
                for sn in sns {
                    let started = Instant::now();
                    match send_command(&mut http, &command_path(&sn), &sn).await {
                        Outcome::Ok => {
                            ok += 1;
                            latency.record(started.elapsed());
                        }
                        Outcome::NotConnected(m) => errors.add_with("post_check_http_409", m),
                        Outcome::Failed(kind, m) => {
                            errors.add_with(format!("post_check_{kind}"), m)
                        }
                    }
                }
                Ok::<_, String>((ok, errors, latency))
            })
        })
        .collect();
    let mut ok = 0;
    let mut latency = Latency::new()?;
    for task in tasks {
        match task.await {
            Ok(Ok((n, errors, l))) => {
                ok += n;
                report.errors.merge(&errors);
                latency.merge(&l)?;
            }
            Ok(Err(e)) => report.errors.add_with("post_check_failed", e),
            Err(e) => report.errors.add_with("post_check_panic", e.to_string()),
        }
    }
    Ok((ok, latency))
}
