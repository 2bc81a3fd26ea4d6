//! Prometheus metrics. One process-wide recorder (the `metrics` crate's facade); `GET /metrics` renders it.
//!
//! Labels never carry a serial number or any other unbounded value: device kinds, command names (a fixed
//! set per protocol), outcomes and reasons only.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder once per process (tests start many nodes in one process) and returns its handle.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0,
                    ],
                )
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "gatehouse_devices_connected",
        "Device sockets held by this node, by kind"
    );
    describe_counter!(
        "gatehouse_registrations_total",
        "Successful device registrations, by kind"
    );
    describe_counter!(
        "gatehouse_disconnects_total",
        "Device sockets closed, by kind and reason"
    );
    describe_counter!(
        "gatehouse_frames_in_total",
        "Frames received from devices, by kind"
    );
    describe_counter!(
        "gatehouse_frames_out_total",
        "Frames sent to devices, by kind"
    );
    describe_counter!(
        "gatehouse_bad_frames_total",
        "Malformed frames received from devices, by kind"
    );
    describe_counter!(
        "gatehouse_commands_total",
        "Commands finished, by kind, command and outcome"
    );
    describe_histogram!(
        "gatehouse_command_duration_seconds",
        Unit::Seconds,
        "Command latency from queueing to outcome, by kind"
    );
    describe_histogram!(
        "gatehouse_db_write_duration_seconds",
        Unit::Seconds,
        "Database write latency, by operation"
    );
    describe_histogram!(
        "gatehouse_group_commit_writes",
        "Writes that shared one transaction, by writer"
    );
    describe_histogram!(
        "gatehouse_batched_read_keys",
        "Look-ups that shared one query, by reader"
    );
    describe_counter!(
        "gatehouse_db_write_failures_total",
        "Failed database writes, by operation"
    );
    describe_counter!(
        "gatehouse_attendance_records_total",
        "Attendance records committed (new rows)"
    );
    describe_counter!(
        "gatehouse_ocpp_messages_total",
        "OCPP CALLs received from charge points, by action"
    );
    describe_counter!(
        "gatehouse_meter_values_total",
        "Meter values stored (one per sampled value)"
    );
    describe_counter!(
        "gatehouse_forwarded_commands_total",
        "Commands forwarded to another node, by outcome"
    );
    describe_histogram!(
        "gatehouse_forward_duration_seconds",
        Unit::Seconds,
        "Latency of forwarded commands"
    );
    describe_counter!(
        "gatehouse_redis_reconnects_total",
        "Times the cluster subscription to Redis was (re)established"
    );
    describe_gauge!(
        "gatehouse_sqlite_wal_frames",
        "Pages in the SQLite write-ahead log after the last checkpoint (SQLite only)"
    );
    describe_gauge!(
        "gatehouse_cluster_nodes",
        "Live nodes seen at the last heartbeat"
    );
    describe_gauge!(
        "gatehouse_event_subscribers",
        "Live-event subscribers connected to this node"
    );
    describe_counter!(
        "gatehouse_events_sent_total",
        "Events queued to subscribers"
    );
    describe_counter!(
        "gatehouse_events_dropped_total",
        "Events dropped for lagging subscribers"
    );
}

/// Renders the Prometheus text format (empty when no recorder could be installed).
pub fn render() -> String {
    install().map(|h| h.render()).unwrap_or_default()
}

/// Times a database write and counts its failure.
pub async fn db_write<T, E>(
    op: &'static str,
    write: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = std::time::Instant::now();
    let result = write.await;
    metrics::histogram!("gatehouse_db_write_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!("gatehouse_db_write_failures_total", "op" => op).increment(1);
    }
    result
}
