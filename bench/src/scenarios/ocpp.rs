//! `ocpp`: D charge points boot, then send MeterValues (and every tenth message a StatusNotification) as fast
//! as the answers come back, for S seconds. Messages persisted per second: the server stores each before it
//! answers, so a CALLRESULT is a committed message; a CALLERROR or a time-out is an error.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gatehouse::sim::ocpp::{CallOutcome, OcppSim, OcppSimConfig, OcppSimError};
use serde_json::{json, Value};

use super::{per_sec, percent, CpuWindow, Ctx};
use crate::fleet::run_prefix;
use crate::report::Report;
use crate::stats::{ErrorCounts, Latency};

struct PointStats {
    meter_values: u64,
    status_notifications: u64,
    latency: Latency,
    errors: ErrorCounts,
}

/// `ws://host:port/ocpp`, from the terminals' URL (`ws://host:port{base}{ws_path}`).
fn ocpp_base(ws_url: &str, ws_path: &str) -> String {
    let base = ws_url.strip_suffix(ws_path).unwrap_or(ws_url);
    format!("{}/ocpp", base.trim_end_matches('/'))
}

pub async fn run(ctx: &Ctx<'_>, points: usize, secs: f64) -> Result<Report, String> {
    let server = ctx.server;
    let mut report = Report::new(
        "ocpp",
        format!("ocpp: {points} charge points, MeterValues + StatusNotification, {secs} s"),
    );
    ctx.describe(&mut report, points);
    let url = ocpp_base(&server.ws_url, &ctx.common.ws_path);
    let prefix = run_prefix('O');
    let started = Instant::now();
    let mut booted: Vec<OcppSim> = Vec::with_capacity(points);
    let mut connecting = futures_util::stream::iter(0..points)
        .map(|i| {
            let mut cfg = OcppSimConfig::new(url.clone(), format!("{prefix}{i:06}"));
            cfg.connectors = 1;
            // Heartbeats would be extra messages of their own; this scenario counts only what it sends.
            cfg.heartbeat = false;
            cfg.local_addr = ctx.pool.next();
            tokio::spawn(OcppSim::connect(cfg))
        })
        .buffer_unordered(ctx.common.concurrency.max(1));
    while let Some(joined) = connecting.next().await {
        match joined {
            Ok(Ok(sim)) => booted.push(sim),
            Ok(Err(e)) => report
                .errors
                .add_with(format!("boot_{}", kind(&e)), e.to_string()),
            Err(e) => report.errors.add_with("boot_panic", e.to_string()),
        }
    }
    let boot_secs = started.elapsed().as_secs_f64();
    if booted.is_empty() {
        return Err(format!(
            "no charge point booted: {:?}",
            report.errors.lines()
        ));
    }

    let window = CpuWindow::start(server);
    let deadline = Instant::now() + Duration::from_secs_f64(secs.max(0.1));
    let tasks: Vec<_> = booted
        .into_iter()
        .map(|sim| tokio::spawn(send_readings(sim, deadline)))
        .collect();
    let mut meter_values = 0;
    let mut statuses = 0;
    let mut latency = Latency::new()?;
    let mut sims = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok((sim, Ok(stats))) => {
                sims.push(sim);
                meter_values += stats.meter_values;
                statuses += stats.status_notifications;
                latency.merge(&stats.latency)?;
                report.errors.merge(&stats.errors);
            }
            Ok((sim, Err(e))) => {
                sims.push(sim);
                report.errors.add_with("sender_failed", e);
            }
            Err(e) => report.errors.add_with("sender_panic", e.to_string()),
        }
    }
    let (wall, server_cpu, bench_cpu) = window.stop(server);
    let messages = meter_values + statuses;

    report.figure("charge_points", "charge points", points as u64, "");
    report.figure("booted", "booted", sims.len() as u64, "");
    report.figure(
        "boot_secs",
        "time to boot all",
        crate::stats::round3(boot_secs),
        "s",
    );
    report.figure("secs", "window", crate::stats::round3(wall), "s");
    report.figure("meter_values", "MeterValues answered", meter_values, "");
    report.figure(
        "status_notifications",
        "StatusNotification answered",
        statuses,
        "",
    );
    report.figure(
        "messages_per_sec",
        "messages persisted",
        per_sec(messages, wall),
        "/s",
    );
    report.figure("answer_latency_ms", "", latency.to_json(), "");
    report.figure("", "answer latency", latency.summary(), "");
    report.maybe(
        "cpu_us_per_message",
        "server CPU per message",
        server_cpu
            .filter(|_| messages > 0)
            .map(|c| c * 1e6 / messages as f64),
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
    for sim in sims {
        sim.close().await;
    }
    Ok(report)
}

fn kind(err: &OcppSimError) -> &'static str {
    match err {
        OcppSimError::Connect(_) => "connect",
        OcppSimError::Rejected(_) => "rejected",
        OcppSimError::Closed => "closed",
        OcppSimError::Timeout => "timeout",
        OcppSimError::Protocol(_) => "protocol",
    }
}

fn meter_values(k: u64) -> Value {
    json!({
        "connectorId": 1,
        "meterValue": [{
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "sampledValue": [
                {"value": (k * 10).to_string(), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"}
            ]
        }]
    })
}

fn status(k: u64) -> Value {
    json!({
        "connectorId": 1,
        "errorCode": "NoError",
        "status": if k.is_multiple_of(2) { "Available" } else { "Preparing" },
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

async fn send_readings(sim: OcppSim, deadline: Instant) -> (OcppSim, Result<PointStats, String>) {
    let mut stats = match Latency::new() {
        Ok(latency) => PointStats {
            meter_values: 0,
            status_notifications: 0,
            latency,
            errors: ErrorCounts::default(),
        },
        Err(e) => return (sim, Err(e)),
    };
    let mut k: u64 = 0;
    while Instant::now() < deadline {
        k += 1;
        let (action, payload) = if k.is_multiple_of(10) {
            ("StatusNotification", status(k / 10))
        } else {
            ("MeterValues", meter_values(k))
        };
        let sent = Instant::now();
        match sim.call(action, payload).await {
            Ok(CallOutcome::Result(_)) => {
                stats.latency.record(sent.elapsed());
                if action == "MeterValues" {
                    stats.meter_values += 1;
                } else {
                    stats.status_notifications += 1;
                }
            }
            Ok(CallOutcome::Error {
                code, description, ..
            }) => stats.errors.add_with(
                format!("callerror_{code}"),
                format!("{action}: {description}"),
            ),
            Err(e) => {
                let gone = matches!(e, OcppSimError::Closed);
                stats
                    .errors
                    .add_with(format!("{}_{}", action, kind(&e)), e.to_string());
                if gone {
                    break;
                }
            }
        }
    }
    (sim, Ok(stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ocpp_url_sits_beside_the_terminals_path() {
        assert_eq!(
            ocpp_base("ws://127.0.0.1:7788/pub/chat", "/pub/chat"),
            "ws://127.0.0.1:7788/ocpp"
        );
        assert_eq!(
            ocpp_base("ws://h:1/base/pub/chat", "/pub/chat"),
            "ws://h:1/base/ocpp"
        );
    }

    #[test]
    fn readings_are_well_formed() {
        let mv = meter_values(3);
        assert_eq!(mv["meterValue"][0]["sampledValue"][0]["value"], "30");
        assert_eq!(status(1)["status"], "Preparing");
    }
}
