//! `ingest`: D terminals upload `sendlog` batches of B records (each record unique) as fast as the acks come
//! back, for S seconds. Records committed per second (acked with `result:true`); `result:false` acks are errors.

use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveDateTime, TimeDelta};
use gatehouse::sim::tm20::{SimError, SimTerminal};
use serde_json::{json, Value};

use super::{per_sec, percent, CpuWindow, Ctx};
use crate::fleet::{close_all, connect_all, run_prefix, serial_numbers, sim_error_kind};
use crate::report::Report;
use crate::stats::{ErrorCounts, Latency};

struct DeviceStats {
    batches: u64,
    records: u64,
    latency: Latency,
    errors: ErrorCounts,
}

pub async fn run(ctx: &Ctx<'_>, devices: usize, batch: usize, secs: f64) -> Result<Report, String> {
    let server = ctx.server;
    let batch = batch.max(1);
    let mut report = Report::new(
        "ingest",
        format!("ingest: {devices} terminals, batches of {batch}, {secs} s"),
    );
    ctx.describe(&mut report, devices);
    let sns = serial_numbers(&run_prefix('I'), devices);
    let fleet = connect_all(
        &server.ws_url,
        &sns,
        ctx.common.concurrency,
        &ctx.pool,
        "reg",
    )
    .await?;
    report.errors.merge(&fleet.errors);
    let registered = fleet.registered;
    if registered == 0 {
        return Err(format!(
            "no terminal registered: {:?}",
            report.errors.lines()
        ));
    }

    let window = CpuWindow::start(server);
    let deadline = Instant::now() + Duration::from_secs_f64(secs.max(0.1));
    let tasks: Vec<_> = fleet
        .terminals
        .into_iter()
        .flatten()
        .map(|terminal| tokio::spawn(upload(terminal, batch, deadline)))
        .collect();
    let mut batches = 0;
    let mut records = 0;
    let mut latency = Latency::new()?;
    let mut terminals = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok((terminal, Ok(stats))) => {
                terminals.push(terminal);
                batches += stats.batches;
                records += stats.records;
                latency.merge(&stats.latency)?;
                report.errors.merge(&stats.errors);
            }
            Ok((terminal, Err(e))) => {
                terminals.push(terminal);
                report.errors.add_with("uploader_failed", e);
            }
            Err(e) => report.errors.add_with("uploader_panic", e.to_string()),
        }
    }
    let (wall, server_cpu, bench_cpu) = window.stop(server);

    report.figure("devices", "devices", devices as u64, "");
    report.figure("registered", "registered", registered as u64, "");
    report.figure("batch", "records per batch", batch as u64, "");
    report.figure("secs", "window", crate::stats::round3(wall), "s");
    report.figure("batches_acked", "batches committed", batches, "");
    report.figure("records_committed", "records committed", records, "");
    report.figure(
        "records_per_sec",
        "records committed",
        per_sec(records, wall),
        "/s",
    );
    report.figure(
        "batches_per_sec",
        "batches committed",
        per_sec(batches, wall),
        "/s",
    );
    report.figure("ack_latency_ms", "", latency.to_json(), "");
    report.figure("", "ack latency (committed)", latency.summary(), "");
    let per_record = server_cpu
        .filter(|_| records > 0)
        .map(|c| c * 1e6 / records as f64);
    report.maybe(
        "cpu_us_per_record",
        "server CPU per record",
        per_record,
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
    close_all(terminals).await;
    Ok(report)
}

/// First record time; record k of a terminal is this plus k seconds, with enrollid k + 1, so every record of
/// the run is unique (serial numbers are unique per run).
fn base_time() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2024, 6, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or_default()
}

fn record(k: u64, base: NaiveDateTime) -> Value {
    let offset = TimeDelta::seconds(i64::try_from(k).unwrap_or(i64::MAX / 2));
    let time = base.checked_add_signed(offset).unwrap_or(base);
    json!({
        "enrollid": k + 1,
        "time": time.format("%Y-%m-%d %H:%M:%S").to_string(),
        "mode": 0,
        "inout": k % 2,
        "event": 0,
    })
}

async fn upload(
    terminal: SimTerminal,
    batch: usize,
    deadline: Instant,
) -> (SimTerminal, Result<DeviceStats, String>) {
    let mut stats = match Latency::new() {
        Ok(latency) => DeviceStats {
            batches: 0,
            records: 0,
            latency,
            errors: ErrorCounts::default(),
        },
        Err(e) => return (terminal, Err(e)),
    };
    let base = base_time();
    let mut next: u64 = 0;
    while Instant::now() < deadline {
        let records: Vec<Value> = (next..next + batch as u64)
            .map(|k| record(k, base))
            .collect();
        next += batch as u64;
        let started = Instant::now();
        match terminal.send_logs(records).await {
            Ok(ack) if ack.get("result").and_then(Value::as_bool) == Some(true) => {
                stats.latency.record(started.elapsed());
                stats.batches += 1;
                stats.records += batch as u64;
                let count = ack.get("count").and_then(Value::as_u64);
                if count != Some(batch as u64) {
                    stats.errors.add_with(
                        "ack_count_mismatch",
                        format!("sent {batch} records, ack says {count:?}"),
                    );
                }
            }
            Ok(ack) => stats
                .errors
                .add_with("sendlog_result_false", ack.to_string()),
            Err(err) => {
                let gone = matches!(err, SimError::Closed);
                stats
                    .errors
                    .add_with(format!("sendlog_{}", sim_error_kind(&err)), err.to_string());
                if gone {
                    break;
                }
            }
        }
    }
    (terminal, Ok(stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_unique_and_well_formed() {
        let base = base_time();
        let a = record(0, base);
        let b = record(61, base);
        assert_eq!(a["time"], "2024-06-01 00:00:00");
        assert_eq!(b["time"], "2024-06-01 00:01:01");
        assert_eq!(
            (a["enrollid"].clone(), b["enrollid"].clone()),
            (json!(1), json!(62))
        );
    }
}
