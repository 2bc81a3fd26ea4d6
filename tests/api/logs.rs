use gatehouse::sim::tm20::{SimConfig, SimTerminal};
use sea_orm::ConnectionTrait;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, RawTerminal};

fn punch(enrollid: i64, time: &str) -> Value {
    json!({"enrollid": enrollid, "time": time, "mode": 8, "inout": 0, "event": 0, "temp": 365, "verifymode": 1})
}

#[actix_rt::test]
async fn sendlog_is_committed_before_the_ack_and_a_resent_batch_adds_nothing() {
    let app = spawn_app().await;
    let sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "LOG0001"))
        .await
        .unwrap();
    let batch = vec![
        punch(1, "2024-05-01 08:00:00"),
        punch(2, "2024-05-01 08:01:00"),
        punch(1, "2024-05-01 17:00:00"),
    ];
    let ack = sim.send_logs_with_index(7, batch.clone()).await.unwrap();
    assert_eq!(ack["ret"], "sendlog");
    assert_eq!(ack["result"], true);
    assert_eq!(ack["count"], 3);
    assert_eq!(ack["logindex"], 7);
    assert!(ack["cloudtime"].is_string());

    // Immediately after the ack (no polling): the rows are already committed.
    let (status, body) = app.get("/api/terminals/LOG0001/logs").await;
    assert_eq!(status, 200);
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    // Newest first.
    assert_eq!(items[0]["time"], "2024-05-01 17:00:00");
    assert_eq!(items[0]["temp"], 365.0);
    assert_eq!(body["next_before"], Value::Null);

    // The terminal lost our ack and re-sends the same batch (plus one new record).
    let mut again = batch.clone();
    again.push(punch(3, "2024-05-01 18:00:00"));
    let ack = sim.send_logs_with_index(7, again).await.unwrap();
    assert_eq!(ack["result"], true);
    let (_, body) = app.get("/api/terminals/LOG0001/logs?limit=1000").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 4);
}

#[actix_rt::test]
async fn logs_are_keyset_paginated_newest_first_and_filtered_by_since() {
    let app = spawn_app().await;
    let sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "LOG0002"))
        .await
        .unwrap();
    let batch: Vec<Value> = (0..25)
        .map(|i| punch(i + 1, &format!("2024-05-01 08:{i:02}:00")))
        .collect();
    sim.send_logs(batch).await.unwrap();

    let mut seen = Vec::new();
    let mut path = "/api/terminals/LOG0002/logs?limit=10".to_string();
    loop {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, 200, "{body}");
        for item in body["items"].as_array().unwrap() {
            seen.push(item["time"].as_str().unwrap().to_owned());
        }
        match body["next_before"].as_str() {
            Some(cursor) => path = format!("/api/terminals/LOG0002/logs?limit=10&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(
        seen, sorted,
        "pages are newest first without gaps or repeats"
    );

    let (_, body) = app
        .get("/api/terminals/LOG0002/logs?since=2024-05-01%2008:20:00")
        .await;
    assert_eq!(body["items"].as_array().unwrap().len(), 5);
    for bad in [
        "limit=0",
        "limit=abc",
        "limit=5000",
        "before=garbage",
        "since=yesterday",
    ] {
        let (status, body) = app.get(&format!("/api/terminals/LOG0002/logs?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_params");
    }
    let (status, _) = app.get("/api/terminals/NOPE/logs").await;
    assert_eq!(status, 404);
}

/// Punches of one second (a burst at the door, or a terminal whose clock is stuck) are paged by id within
/// that second: every one once, newest first.
#[actix_rt::test]
async fn punches_of_the_same_time_are_paged_without_gaps_or_repeats() {
    let app = spawn_app().await;
    let sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "LOG0005"))
        .await
        .unwrap();
    let mut batch: Vec<Value> = (0..25)
        .map(|i| punch(i + 1, "2024-05-01 08:00:00"))
        .collect();
    batch.push(punch(100, "2024-05-01 09:00:00"));
    batch.push(punch(101, "2024-05-01 07:00:00"));
    sim.send_logs(batch).await.unwrap();

    let mut seen: Vec<(String, i64)> = Vec::new();
    let mut path = "/api/terminals/LOG0005/logs?limit=10".to_string();
    loop {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, 200, "{body}");
        for item in body["items"].as_array().unwrap() {
            seen.push((
                item["time"].as_str().unwrap().to_owned(),
                item["id"].as_i64().unwrap(),
            ));
        }
        match body["next_before"].as_str() {
            Some(cursor) => path = format!("/api/terminals/LOG0005/logs?limit=10&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 27, "{seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    sorted.dedup();
    assert_eq!(
        seen, sorted,
        "newest first, by id within a second, none twice"
    );
}

#[actix_rt::test]
async fn a_failed_database_write_answers_result_false_and_the_resend_is_stored() {
    let app = spawn_app().await;
    let sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "LOG0003"))
        .await
        .unwrap();
    let db = app.db().await;
    // A real failure inside the real database: a trigger that aborts every insert of punches.
    if app.is_postgres() {
        db.execute_unprepared(
            "CREATE FUNCTION refuse_logs() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql;
             CREATE TRIGGER refuse_logs BEFORE INSERT ON attendance_logs FOR EACH ROW EXECUTE FUNCTION refuse_logs();",
        )
        .await
        .unwrap();
    } else {
        db.execute_unprepared(
            "CREATE TRIGGER refuse_logs BEFORE INSERT ON attendance_logs BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .await
        .unwrap();
    }
    let batch = vec![
        punch(1, "2024-06-01 09:00:00"),
        punch(2, "2024-06-01 09:05:00"),
    ];
    let ack = sim.send_logs_with_index(3, batch.clone()).await.unwrap();
    assert_eq!(ack["ret"], "sendlog");
    assert_eq!(ack["result"], false, "{ack}");
    let (_, body) = app.get("/api/terminals/LOG0003/logs").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 0);

    db.execute_unprepared("DROP TRIGGER refuse_logs ON attendance_logs")
        .await
        .or(db.execute_unprepared("DROP TRIGGER refuse_logs").await)
        .unwrap();
    let ack = sim.send_logs_with_index(3, batch).await.unwrap();
    assert_eq!(ack["result"], true);
    let (_, body) = app.get("/api/terminals/LOG0003/logs").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
}

#[actix_rt::test]
async fn senduser_upserts_the_user_and_its_credential_slot() {
    let app = spawn_app().await;
    let sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "USR0001"))
        .await
        .unwrap();
    let ack = sim
        .send_user(42, "Ana", 0, json!("c52d54aa"))
        .await
        .unwrap();
    assert_eq!(ack["ret"], "senduser");
    assert_eq!(ack["result"], true);
    assert_eq!(ack["enrollid"], 42);
    assert_eq!(ack["backupnum"], 0);
    sim.send_user(42, "Ana B", 11, json!(2352253))
        .await
        .unwrap();
    sim.send_user(42, "Ana B", 0, json!("ffff")).await.unwrap();

    let (_, body) = app.get("/api/terminals/USR0001/users").await;
    let users = body["items"].as_array().unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["name"], "Ana B");
    let slots = users[0]["credentials"].as_array().unwrap();
    assert_eq!(slots.len(), 2);
    assert!(slots[0].get("record").is_none(), "records only on request");
    let (_, body) = app.get("/api/terminals/USR0001/users?records=true").await;
    let slots = body["items"][0]["credentials"].as_array().unwrap().clone();
    assert_eq!(slots[0]["backupnum"], 0);
    assert_eq!(slots[0]["record"], "ffff");
    assert_eq!(slots[1]["kind"], "card");
    assert_eq!(slots[1]["record"], "2352253");
}

#[actix_rt::test]
async fn restart_keeps_terminals_users_and_logs() {
    let app = spawn_app().await;
    let mut raw = RawTerminal::register(&app.ws_url("/pub/chat"), "RST0001").await;
    raw.send(
        &json!({"cmd":"sendlog","sn":"RST0001","count":2,"logindex":1,
        "record":[punch(5, "2024-07-01 10:00:00"), punch(6, "2024-07-01 10:01:00")]})
        .to_string(),
    )
    .await;
    assert_eq!(raw.recv_json().await["result"], true);
    raw.send(r#"{"cmd":"senduser","sn":"RST0001","enrollid":5,"name":"Eve","backupnum":11,"admin":1,"record":777}"#).await;
    assert_eq!(raw.recv_json().await["result"], true);
    drop(raw);

    let app = app.restart().await;
    let (status, body) = app.get("/api/terminals/RST0001").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["online"], false);
    let (_, logs) = app.get("/api/terminals/RST0001/logs").await;
    assert_eq!(logs["items"].as_array().unwrap().len(), 2);
    let (_, users) = app.get("/api/terminals/RST0001/users").await;
    assert_eq!(users["items"][0]["name"], "Eve");
    assert_eq!(users["items"][0]["admin"], 1);

    // And the terminal comes back to the new node.
    let _again = RawTerminal::register(&app.ws_url("/pub/chat"), "RST0001").await;
    app.eventually("back online", || app.is_online("RST0001"))
        .await;
}
