//! `/metrics`: the Prometheus text moves as devices register, upload and answer commands.

use gatehouse::sim::tm20::{SimConfig, SimTerminal};
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, TestApp, TOKEN};

async fn scrape(app: &TestApp) -> String {
    let mut response = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    String::from_utf8(response.body().await.unwrap().to_vec()).unwrap()
}

/// The value of the sample whose name and labels start with `series` (e.g. `gatehouse_x{kind="tm20"`).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[actix_rt::test]
async fn metrics_move_when_a_terminal_registers_uploads_and_answers() {
    let app = spawn_app().await;
    let unauthorized = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401);

    // The recorder is process-wide and other tests run concurrently: compare before and after.
    let before = scrape(&app).await;
    let sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "MET0001"))
        .await
        .unwrap();
    app.eventually("online", || app.is_online("MET0001")).await;
    let records: Vec<_> = (0..7)
        .map(|i| json!({"enrollid": 1, "time": format!("2024-04-01 10:00:{i:02}"), "mode": 0, "inout": 0, "event": 0}))
        .collect();
    sim.send_logs(records).await.unwrap();
    let (status, _) = app.command("MET0001", "opendoor", json!({})).await;
    assert_eq!(status, 200);
    let after = scrape(&app).await;

    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert!(delta("gatehouse_registrations_total{kind=\"tm20\"}") >= 1.0);
    // A gauge is per process, and other tests' nodes set it too: only its presence is certain here.
    assert!(after.contains("gatehouse_devices_connected{kind=\"tm20\"}"));
    assert!(delta("gatehouse_attendance_records_total") >= 7.0);
    assert!(
        delta("gatehouse_commands_total{kind=\"tm20\",command=\"opendoor\",outcome=\"succeeded\"}")
            >= 1.0,
        "{after}"
    );
    assert!(delta("gatehouse_frames_in_total{kind=\"tm20\"}") >= 3.0);
    assert!(delta("gatehouse_db_write_duration_seconds_count{op=\"attendance_logs\"}") >= 1.0);
    assert!(after.contains("# TYPE gatehouse_command_duration_seconds histogram"));
    // Never a serial number in a label.
    assert!(!after.contains("MET0001"));
}

#[actix_rt::test]
async fn a_separate_metrics_listener_needs_no_token() {
    let port = crate::helpers::free_port();
    let _app = spawn_app_with(|s| s.metrics_bind = Some(format!("127.0.0.1:{port}"))).await;
    let mut response = awc::Client::new()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body = String::from_utf8(response.body().await.unwrap().to_vec()).unwrap();
    assert!(body.contains("gatehouse_"), "{body}");
}
