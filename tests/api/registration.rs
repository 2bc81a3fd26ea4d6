use std::time::Duration;

use gatehouse::sim::tm20::{SimConfig, SimError, SimTerminal};
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, RawTerminal};

#[actix_rt::test]
async fn reg_is_answered_with_cloudtime_and_the_terminal_is_listed_online() {
    let app = spawn_app().await;
    let sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "REG0001"))
        .await
        .unwrap();
    let reply = sim.state().reg_reply.unwrap();
    assert_eq!(reply["ret"], "reg");
    assert_eq!(reply["result"], true);
    let cloudtime = reply["cloudtime"].as_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(cloudtime, "%Y-%m-%d %H:%M:%S").is_ok(),
        "{cloudtime}"
    );

    app.eventually("terminal online", || app.is_online("REG0001"))
        .await;
    let (status, body) = app.get("/api/terminals").await;
    assert_eq!(status, 200);
    let item = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sn"] == "REG0001")
        .cloned()
        .unwrap();
    assert_eq!(item["online"], true);
    assert_eq!(item["is_active"], true);
    assert_eq!(item["is_whitelisted"], false);
    assert!(
        item["model"].is_string() && item["firmware"].is_string(),
        "{item}"
    );
    assert!(item["last_seen"].is_string());

    let (status, detail) = app.get("/api/terminals/REG0001").await;
    assert_eq!(status, 200);
    assert!(detail["devinfo"].is_object(), "{detail}");
    assert_eq!(detail["connection"]["protocol"], "tm20");

    sim.close().await;
    app.eventually("terminal offline", || async {
        !app.is_online("REG0001").await
    })
    .await;
    let (_, detail) = app.get("/api/terminals/REG0001").await;
    assert_eq!(detail["online"], false);
}

#[actix_rt::test]
async fn every_path_accepts_terminals_including_trailing_slashes() {
    let app = spawn_app().await;
    for (i, path) in [
        "/pub/chat",
        "/ws/tm20/",
        "/ws/tm20",
        "/some/custom/path",
        "/",
    ]
    .iter()
    .enumerate()
    {
        let sn = format!("PATH{i}");
        let mut terminal = RawTerminal::register(&app.ws_url(path), &sn).await;
        terminal.send(r#"{"cmd":"heartbeat"}"#).await;
        assert_eq!(
            terminal.recv_json().await,
            json!({"ret":"heartbeat","result":true}),
            "{path}"
        );
    }
}

#[actix_rt::test]
async fn duplicate_sn_replaces_the_old_socket() {
    let app = spawn_app().await;
    let url = app.ws_url("/pub/chat");
    let mut old = RawTerminal::register(&url, "DUP0001").await;
    app.eventually("first online", || app.is_online("DUP0001"))
        .await;
    let mut new = RawTerminal::register(&url, "DUP0001").await;

    let closed = old.expect_closed().await;
    let (_, reason) = closed.expect("close frame with a reason");
    assert!(reason.contains("replaced"), "{reason}");

    // The late unregister of the old session must not remove the new one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, connected) = app.get("/api/connected").await;
    let entries: Vec<_> = connected["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["sn"] == "DUP0001")
        .collect();
    assert_eq!(entries.len(), 1);

    // Commands reach the new socket.
    let call = actix_rt::spawn({
        let url = app.url("/api/terminals/DUP0001/command");
        async move {
            let client = awc::Client::new();
            crate::helpers::read(
                client
                    .post(url)
                    .bearer_auth(crate::helpers::TOKEN)
                    .send_json(&json!({"command":"opendoor"}))
                    .await,
            )
            .await
        }
    });
    let command = new.recv_json().await;
    assert_eq!(command["cmd"], "opendoor");
    new.send(r#"{"ret":"opendoor","sn":"DUP0001","result":true}"#)
        .await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], true);
}

#[actix_rt::test]
async fn frames_before_reg_are_refused_and_a_silent_socket_is_closed() {
    let app = spawn_app_with(|s| s.tm20_connection_timeout = Duration::from_millis(600)).await;
    let mut early = RawTerminal::connect(&app.ws_url("/pub/chat")).await;
    early
        .send(r#"{"cmd":"sendlog","sn":"X","count":0,"record":[]}"#)
        .await;
    let answer = early.recv_json().await;
    assert_eq!(answer["ret"], "sendlog");
    assert_eq!(answer["result"], false);
    // Never registers: closed after the connection timeout.
    let (_, reason) = early.expect_closed().await.expect("close reason");
    assert!(reason.contains("reg"), "{reason}");
}

#[actix_rt::test]
async fn idle_terminals_get_pings_and_are_closed_after_the_connection_timeout() {
    let app = spawn_app_with(|s| {
        s.tm20_heartbeat_interval = Duration::from_millis(100);
        s.tm20_connection_timeout = Duration::from_secs(30);
    })
    .await;
    let sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "PING001"))
        .await
        .unwrap();
    app.eventually("pings arrive", || async { sim.state().pings_received >= 3 })
        .await;
    assert!(sim.is_connected());

    let app = spawn_app_with(|s| {
        s.tm20_heartbeat_interval = Duration::from_millis(100);
        s.tm20_connection_timeout = Duration::from_millis(400);
    })
    .await;
    // A raw socket that registers and then is not polled (so it answers no ping) is closed. The close
    // frame waits in the socket buffer until we read.
    let mut quiet = RawTerminal::register(&app.ws_url("/pub/chat"), "QUIET01").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Our pongs to the queued pings may hit the closed socket first, so the reason is not always readable.
    if let Some((_, reason)) = quiet.expect_closed().await {
        assert!(reason.contains("timeout"), "{reason}");
    }
    app.eventually("quiet terminal offline", || async {
        !app.is_online("QUIET01").await
    })
    .await;
    drop(sim);
}

#[actix_rt::test]
async fn whitelist_and_is_active_decide_who_may_register() {
    let app = spawn_app_with(|s| s.tm20_require_whitelist = true).await;
    let url = app.ws_url("/pub/chat");
    match SimTerminal::connect(SimConfig::new(url.clone(), "WL00001")).await {
        Err(SimError::Rejected(reason)) => assert!(reason.contains("whitelist"), "{reason}"),
        Err(other) => panic!("expected a rejection, got {other}"),
        Ok(_) => panic!("a terminal that is not whitelisted registered"),
    }
    let (status, body) = app
        .put(
            "/api/terminals/WL00001",
            json!({"is_whitelisted": true, "name": "Front door"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "Front door");
    let sim = SimTerminal::connect(SimConfig::new(url.clone(), "WL00001"))
        .await
        .unwrap();
    sim.close().await;

    let (status, _) = app
        .patch("/api/terminals/WL00001", json!({"is_active": false}))
        .await;
    assert_eq!(status, 200);
    let mut raw = RawTerminal::connect(&url).await;
    raw.send(r#"{"cmd":"reg","sn":"WL00001"}"#).await;
    let answer = raw.recv_json().await;
    assert_eq!(answer["result"], false);
    assert!(
        answer["reason"].as_str().unwrap().contains("disabled"),
        "{answer}"
    );
    assert!(raw.expect_closed().await.is_some());
}

#[actix_rt::test]
async fn graceful_stop_finishes_the_command_in_flight_then_closes_with_1001() {
    let app = spawn_app().await;
    let mut terminal = RawTerminal::register(&app.ws_url("/pub/chat"), "STOP001").await;
    app.eventually("online", || app.is_online("STOP001")).await;
    let url = app.url("/api/terminals/STOP001/command");
    let call = actix_rt::spawn(async move {
        crate::helpers::read(
            awc::Client::new()
                .post(url)
                .bearer_auth(crate::helpers::TOKEN)
                .send_json(&json!({"command":"gettime"}))
                .await,
        )
        .await
    });
    assert_eq!(terminal.recv_json().await["cmd"], "gettime");
    let stopper = app.stopper.clone();
    let stopping = actix_rt::spawn(async move { stopper.stop().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Still open while the command is in flight; the answer completes the REST call.
    terminal
        .send(r#"{"ret":"gettime","result":true,"time":"2024-01-01 00:00:00"}"#)
        .await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (code, reason) = terminal.expect_closed().await.expect("close frame");
    assert_eq!(code, 1001, "{reason}");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
    // Its row, written behind the answer, was committed before the node let go of the database.
    use sea_orm::EntityTrait;
    let id = uuid::Uuid::parse_str(body["id"].as_str().unwrap()).unwrap();
    let stored = entity::command::Entity::find_by_id(id)
        .one(&app.db().await)
        .await
        .unwrap()
        .expect("the command answered during the stop is stored");
    assert_eq!(stored.state, "succeeded");
}

/// `last_seen` follows the terminal's traffic: when its socket closes, the time of its last frame is stored
/// (through the `last_seen` writer, which many disconnects share).
#[actix_rt::test]
async fn last_seen_is_the_last_frame_once_the_terminal_is_gone() {
    let app = spawn_app().await;
    let sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "SEEN0001"))
        .await
        .unwrap();
    app.eventually("terminal online", || app.is_online("SEEN0001"))
        .await;
    let seen = |detail: &serde_json::Value| {
        detail["last_seen"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let (_, detail) = app.get("/api/terminals/SEEN0001").await;
    let at_reg = seen(&detail).expect("last_seen set at reg");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answer = sim
        .send_logs(vec![json!({"enrollid": 7, "time": "2026-12-06 08:00:00",
            "mode": 1, "inout": 0, "event": 0})])
        .await
        .unwrap();
    assert_eq!(answer["result"], true, "{answer}");
    sim.close().await;
    app.eventually("last_seen moved to the last frame", || async {
        let (_, detail) = app.get("/api/terminals/SEEN0001").await;
        detail["online"] == false
            && seen(&detail).is_some_and(|t| t - at_reg >= chrono::Duration::seconds(1))
    })
    .await;
}
