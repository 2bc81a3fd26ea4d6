use std::time::Duration;

use gatehouse::sim::tm20::{SimConfig, SimTerminal};
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, RawTerminal};

#[actix_rt::test]
async fn broken_frames_get_result_false_and_nothing_else_is_disturbed() {
    let app = spawn_app().await;
    let bystander = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "GOOD001"))
        .await
        .unwrap();
    // The reg reply comes before the terminal is recorded and listed (tm20.md §1.7): wait for it.
    app.eventually("bystander online", || app.is_online("GOOD001"))
        .await;
    let mut bad = RawTerminal::register(&app.ws_url("/pub/chat"), "BAD0001").await;

    // Truncated sendlog (as real loggers and flaky Wi-Fi produce): result:false so it is re-sent.
    bad.send(
        r#"{"cmd":"sendlog","sn":"BAD0001","count":1,"logindex":0,"record":[{"enrollid":1,"ti"#,
    )
    .await;
    assert_eq!(
        bad.recv_json().await,
        json!({"ret":"sendlog","result":false,"reason":1})
    );
    // Wrong field types on a known command.
    bad.send(r#"{"cmd":"sendlog","sn":"BAD0001","record":"not an array"}"#)
        .await;
    let answer = bad.recv_json().await;
    assert_eq!(
        (answer["ret"].as_str(), answer["result"].as_bool()),
        (Some("sendlog"), Some(false))
    );
    bad.send(r#"{"cmd":"senduser","enrollid":"abc","backupnum":0}"#)
        .await;
    let answer = bad.recv_json().await;
    assert_eq!(
        (answer["ret"].as_str(), answer["result"].as_bool()),
        (Some("senduser"), Some(false))
    );
    // Trailing commas are repaired, strings as numbers accepted.
    bad.send(r#"{"cmd":"sendlog","sn":"BAD0001","count":"1","logindex":"4","record":[{"enrollid":"9","time":"2024-01-01 10:00:00","mode":"1","inout":0,"event":0},]}"#).await;
    let answer = bad.recv_json().await;
    assert_eq!(answer["result"], true, "{answer}");
    assert_eq!(answer["logindex"], 4);
    // Unknown command: answered true so the terminal does not loop.
    bad.send(r#"{"cmd":"sendpin","pin":"1234"}"#).await;
    assert_eq!(
        bad.recv_json().await,
        json!({"ret":"sendpin","result":true})
    );
    // Garbage without a command name: nothing to answer, the socket stays usable.
    for garbage in [
        "",
        "null",
        "[]",
        "{}",
        "{\"ret\":",
        "\u{0}\u{1}",
        "{\"a\":[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]}",
    ] {
        bad.send(garbage).await;
    }
    bad.send(r#"{"cmd":"heartbeat"}"#).await;
    assert_eq!(
        bad.recv_json().await,
        json!({"ret":"heartbeat","result":true})
    );

    // The stored record, and the bystander still works.
    let (_, logs) = app.get("/api/terminals/BAD0001/logs").await;
    assert_eq!(logs["items"].as_array().unwrap().len(), 1);
    let (status, body) = app.command("GOOD001", "opendoor", json!({})).await;
    assert_eq!(status, 200, "{body}");
    drop(bystander);
}

#[actix_rt::test]
async fn an_oversized_frame_closes_only_that_socket() {
    let app = spawn_app_with(|s| s.tm20_max_frame_bytes = 64 * 1024).await;
    let bystander = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "GOOD002"))
        .await
        .unwrap();
    // The reg reply comes before the terminal is recorded and listed (tm20.md §1.7): wait for it.
    app.eventually("bystander online", || app.is_online("GOOD002"))
        .await;
    let mut big = RawTerminal::register(&app.ws_url("/pub/chat"), "BIG0001").await;
    let photo = "A".repeat(100 * 1024);
    big.send(&json!({"cmd":"senduser","enrollid":1,"backupnum":50,"record":photo}).to_string())
        .await;
    let closed = big.expect_closed().await;
    if let Some((code, _)) = closed {
        assert_eq!(code, 1009, "message too big");
    }
    app.eventually("big terminal gone", || async {
        !app.is_online("BIG0001").await
    })
    .await;
    // A photo under the limit is fine.
    let photo = "B".repeat(40 * 1024);
    let ack = bystander
        .send_user(2, "Photo", 50, json!(photo))
        .await
        .unwrap();
    assert_eq!(ack["result"], true);
    let (status, _) = app.command("GOOD002", "opendoor", json!({})).await;
    assert_eq!(status, 200);
}

#[actix_rt::test]
async fn a_flood_of_frames_is_answered_in_order_and_others_carry_on() {
    let app = spawn_app().await;
    let bystander = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "GOOD003"))
        .await
        .unwrap();
    // The reg reply comes before the terminal is recorded and listed (tm20.md §1.7): wait for it.
    app.eventually("bystander online", || app.is_online("GOOD003"))
        .await;
    let mut flood = RawTerminal::register(&app.ws_url("/pub/chat"), "FLOOD01").await;
    const N: i64 = 400;
    let writer = async {
        for i in 0..N {
            let frame = json!({"cmd":"sendlog","sn":"FLOOD01","count":1,"logindex":i,
                "record":[{"enrollid":1,"time":format!("2024-02-01 10:{:02}:{:02}", i / 60, i % 60),"mode":0,"inout":0,"event":0}]});
            flood.send(&frame.to_string()).await;
        }
        flood
    };
    let mut flood = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("flood written");
    for i in 0..N {
        let ack = flood.recv_json().await;
        assert_eq!(
            (ack["logindex"].as_i64(), ack["result"].as_bool()),
            (Some(i), Some(true))
        );
    }
    let (status, _) = app.command("GOOD003", "opendoor", json!({})).await;
    assert_eq!(status, 200);
    let (_, logs) = app.get("/api/terminals/FLOOD01/logs?limit=1000").await;
    assert_eq!(logs["items"].as_array().unwrap().len() as i64, N);
    drop(bystander);
}

#[actix_rt::test]
async fn a_terminal_sending_only_garbage_is_closed() {
    let app = spawn_app().await;
    let mut bad = RawTerminal::register(&app.ws_url("/pub/chat"), "JUNK001").await;
    for _ in 0..60 {
        bad.send("}{").await;
    }
    let (_, reason) = bad.expect_closed().await.expect("close reason");
    assert!(reason.contains("malformed"), "{reason}");
}

#[actix_rt::test]
async fn a_bad_reg_gets_result_false() {
    let app = spawn_app().await;
    let mut raw = RawTerminal::connect(&app.ws_url("/pub/chat")).await;
    raw.send(r#"{"cmd":"reg","sn":""}"#).await;
    let answer = raw.recv_json().await;
    assert_eq!(
        (answer["ret"].as_str(), answer["result"].as_bool()),
        (Some("reg"), Some(false))
    );
    raw.send(r#"{"cmd":"reg","sn":{"nested":true}}"#).await;
    assert_eq!(raw.recv_json().await["result"], false);
    // It may still register properly afterwards.
    raw.send(r#"{"cmd":"reg","sn":"LATE001"}"#).await;
    assert_eq!(raw.recv_json().await["result"], true);
}
