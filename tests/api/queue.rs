//! Commands for offline devices (`deliver=queued`): durable, ordered, expiring, cancellable, re-delivered
//! after a drop when safe, delivered exactly once in a cluster.

use std::time::Duration;

use gatehouse::sim::tm20::{SimConfig, SimTerminal};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, RawTerminal, TestApp};

async fn queue(app: &TestApp, sn: &str, body: Value) -> (u16, Value) {
    app.post(&format!("/api/terminals/{sn}/command?deliver=queued"), body)
        .await
}

async fn state_of(app: &TestApp, id: &str) -> String {
    app.get(&format!("/api/commands/{id}")).await.1["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn wait_state(app: &TestApp, id: &str, wanted: &str) {
    app.eventually(&format!("command {id} {wanted}"), || async {
        state_of(app, id).await == wanted
    })
    .await;
}

fn received(sim: &SimTerminal, cmd: &str) -> Vec<Value> {
    sim.state()
        .commands_received
        .into_iter()
        .filter(|c| c["cmd"] == cmd)
        .collect()
}

#[actix_rt::test]
async fn queued_commands_survive_a_restart_and_arrive_in_order() {
    let app = spawn_app().await;
    app.put("/api/terminals/QUE0001", json!({})).await;
    // Without deliver=queued an offline terminal is still a 409.
    let (status, _) = app
        .command("QUE0001", "getusername", json!({"enrollid": 1}))
        .await;
    assert_eq!(status, 409);
    let mut ids = Vec::new();
    for enrollid in 1..=3 {
        let (status, body) = queue(
            &app,
            "QUE0001",
            json!({"command": "getusername", "params": {"enrollid": enrollid}}),
        )
        .await;
        assert_eq!(
            (status, body["state"].as_str()),
            (202, Some("queued")),
            "{body}"
        );
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (_, listed) = app.get("/api/commands?device=QUE0001&state=queued").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);
    assert_eq!(listed["items"][0]["deliver"], "queued");

    let app = app.restart().await;
    let sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "QUE0001"))
        .await
        .unwrap();
    for id in &ids {
        wait_state(&app, id, "succeeded").await;
    }
    let order: Vec<i64> = received(&sim, "getusername")
        .iter()
        .map(|c| c["enrollid"].as_i64().unwrap())
        .collect();
    assert_eq!(
        order,
        vec![1, 2, 3],
        "delivered once each, in the order queued"
    );
    let (_, row) = app.get(&format!("/api/commands/{}", ids[0])).await;
    assert_eq!(row["reply"]["ret"], "getusername");
}

#[actix_rt::test]
async fn expired_and_cancelled_commands_are_never_sent() {
    let app = spawn_app().await;
    app.put("/api/terminals/QUE0002", json!({})).await;
    let (_, expiring) = queue(
        &app,
        "QUE0002",
        json!({"command": "opendoor", "expires_in": 0.2}),
    )
    .await;
    let (_, cancelled) = queue(&app, "QUE0002", json!({"command": "getdevinfo"})).await;
    let (_, kept) = queue(&app, "QUE0002", json!({"command": "gettime"})).await;
    let cancelled_id = cancelled["id"].as_str().unwrap();
    let path = format!("/api/commands/{cancelled_id}");
    let delete = |path: String| {
        let app = &app;
        async move {
            app.http
                .delete(app.url(&path))
                .bearer_auth(crate::helpers::TOKEN)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(delete(path.clone()).await, 204);
    assert_eq!(
        delete(path).await,
        409,
        "only queued commands can be cancelled"
    );
    assert_eq!(
        delete(format!("/api/commands/{}", uuid::Uuid::new_v4())).await,
        404
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "QUE0002"))
        .await
        .unwrap();
    wait_state(&app, kept["id"].as_str().unwrap(), "succeeded").await;
    assert_eq!(
        state_of(&app, expiring["id"].as_str().unwrap()).await,
        "expired"
    );
    assert_eq!(state_of(&app, cancelled_id).await, "cancelled");
    assert!(received(&sim, "opendoor").is_empty());
    assert!(received(&sim, "getdevinfo").is_empty());
    assert_eq!(sim.state().door_opened, 0);
    for bad in [
        json!({"command": "gettime", "expires_in": -1}),
        json!({"command": "gettime", "expires_in": "soon"}),
    ] {
        let (status, body) = queue(&app, "QUE0002", bad).await;
        assert_eq!(
            (status, body["field"].as_str()),
            (400, Some("expires_in")),
            "{body}"
        );
    }
    let (status, _) = app
        .post(
            "/api/terminals/QUE0002/command?deliver=later",
            json!({"command": "gettime"}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = queue(&app, "NOBODY", json!({"command": "gettime"})).await;
    assert_eq!(status, 404);
}

#[actix_rt::test]
async fn a_drop_mid_command_redelivers_once_unless_unsafe_to_repeat() {
    let app = spawn_app().await;
    let url = app.ws_url("/pub/chat");
    let mut terminal = RawTerminal::register(&url, "QUE0003").await;
    app.eventually("online", || app.is_online("QUE0003")).await;
    let (status, safe) = app
        .post(
            "/api/terminals/QUE0003/command?deliver=queued&wait=false",
            json!({"command": "getusername", "params": {"enrollid": 7}}),
        )
        .await;
    assert_eq!(status, 202);
    let safe_id = safe["id"].as_str().unwrap().to_owned();
    assert_eq!(terminal.recv_json().await["cmd"], "getusername");
    wait_state(&app, &safe_id, "sent").await;
    drop(terminal);
    wait_state(&app, &safe_id, "queued").await;

    let mut terminal = RawTerminal::register(&url, "QUE0003").await;
    let again = terminal.recv_json().await;
    assert_eq!(
        (again["cmd"].as_str(), again["enrollid"].as_i64()),
        (Some("getusername"), Some(7))
    );
    terminal
        .send(r#"{"ret":"getusername","result":true,"record":"Seven"}"#)
        .await;
    wait_state(&app, &safe_id, "succeeded").await;

    // initsys erases users and logs: interrupted after sending, it fails instead of running twice.
    let (_, unsafe_cmd) = app
        .post(
            "/api/terminals/QUE0003/command?deliver=queued&wait=false",
            json!({"command": "initsys"}),
        )
        .await;
    let unsafe_id = unsafe_cmd["id"].as_str().unwrap().to_owned();
    assert_eq!(terminal.recv_json().await["cmd"], "initsys");
    wait_state(&app, &unsafe_id, "sent").await;
    drop(terminal);
    wait_state(&app, &unsafe_id, "failed").await;
    let (_, row) = app.get(&format!("/api/commands/{unsafe_id}")).await;
    assert!(row["error"].as_str().unwrap().contains("not safe"), "{row}");
    let mut terminal = RawTerminal::register(&url, "QUE0003").await;
    terminal.send(r#"{"cmd":"heartbeat"}"#).await;
    assert_eq!(
        terminal.recv_json().await["ret"],
        "heartbeat",
        "initsys was not sent again"
    );
}

#[actix_rt::test]
async fn the_queue_of_one_device_is_bounded() {
    let app = spawn_app_with(|s| s.command_queue_max = 2).await;
    app.put("/api/terminals/QUE0004", json!({})).await;
    for _ in 0..2 {
        assert_eq!(
            queue(&app, "QUE0004", json!({"command": "gettime"}))
                .await
                .0,
            202
        );
    }
    let (status, body) = queue(&app, "QUE0004", json!({"command": "gettime"})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("queue_full")),
        "{body}"
    );
}

#[actix_rt::test]
async fn charge_point_actions_can_be_queued_too() {
    let app = spawn_app().await;
    app.put("/api/chargers/QCP001", json!({})).await;
    let (status, body) = app
        .post("/api/chargers/QCP001/action?deliver=queued", json!({"action": "ChangeConfiguration", "params": {"key": "HeartbeatInterval", "value": "90"}}))
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (202, Some("queued")),
        "{body}"
    );
    let id = body["id"].as_str().unwrap().to_owned();
    let sim = gatehouse::sim::ocpp::OcppSim::connect(gatehouse::sim::ocpp::OcppSimConfig::new(
        app.ws_url("/ocpp"),
        "QCP001",
    ))
    .await
    .unwrap();
    wait_state(&app, &id, "succeeded").await;
    assert_eq!(
        sim.state()
            .configuration
            .get("HeartbeatInterval")
            .map(|v| v.0.as_str()),
        Some("90")
    );
}
