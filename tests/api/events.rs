//! Live events over `/ws/events`: subscriptions, device and command events, targeted pushes, stats, lagging
//! subscribers, and delivery across nodes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gatehouse::sim::tm20::{SimConfig, SimTerminal};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    fresh_database, shared_redis, spawn_app, spawn_app_on, unique_prefix, RedisServer, TestApp,
    READ_TIMEOUT, TOKEN,
};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Subscriber {
    ws: Ws,
    id: String,
}

impl Subscriber {
    async fn connect(app: &TestApp) -> Subscriber {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(app.ws_url(&format!("/ws/events?token={TOKEN}")))
                .await
                .unwrap();
        let welcome = next(&mut ws).await;
        assert_eq!(welcome["op"], "welcome");
        let id = welcome["id"].as_str().unwrap().to_owned();
        Subscriber { ws, id }
    }

    async fn send(&mut self, value: Value) -> Value {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .unwrap();
        next(&mut self.ws).await
    }

    async fn subscribe(&mut self, topics: &[&str]) {
        let ack = self
            .send(json!({"op": "subscribe", "topics": topics}))
            .await;
        assert_eq!(ack, json!({"op": "subscribed", "topics": topics}));
    }

    /// The next frame that satisfies `pick`.
    async fn wait_for(&mut self, pick: impl Fn(&Value) -> bool) -> Value {
        loop {
            let frame = next(&mut self.ws).await;
            if pick(&frame) {
                return frame;
            }
        }
    }

    /// Asserts nothing arrives for a while.
    async fn silent_for(&mut self, wait: Duration) {
        if let Ok(frame) = tokio::time::timeout(wait, self.ws.next()).await {
            panic!("unexpected frame: {frame:?}");
        }
    }
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(READ_TIMEOUT, ws.next())
            .await
            .expect("a frame in time");
        match frame {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

fn punch(i: i64) -> Value {
    json!({"enrollid": i % 500 + 1, "time": format!("2024-03-01 {:02}:{:02}:{:02}", i / 3600 % 24, i / 60 % 60, i % 60), "mode": 0, "inout": 0, "event": 0})
}

#[actix_rt::test]
async fn subscribers_get_device_and_command_events_for_their_topics() {
    let app = spawn_app().await;
    let refused = tokio_tungstenite::connect_async(app.ws_url("/ws/events")).await;
    assert!(refused.is_err(), "no token, no socket");
    let mut attendance = Subscriber::connect(&app).await;
    attendance.subscribe(&["attendance"]).await;
    let mut device = Subscriber::connect(&app).await;
    device.subscribe(&["device:EVT0001"]).await;

    let sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "EVT0001"))
        .await
        .unwrap();
    let online = device.wait_for(|f| f["type"] == "online").await;
    assert_eq!(
        (online["device"].as_str(), online["kind"].as_str()),
        (Some("EVT0001"), Some("tm20"))
    );
    sim.send_logs(vec![
        json!({"enrollid": 42, "time": "2024-05-01 08:00:00", "mode": 8, "inout": 0, "event": 0}),
    ])
    .await
    .unwrap();
    let event = attendance.wait_for(|f| f["type"] == "attendance").await;
    assert_eq!(event["device"], "EVT0001");
    assert_eq!(event["data"]["enrollid"], 42);
    assert!(event["node"].is_string() && event["at"].is_string());

    let (status, _) = app.command("EVT0001", "opendoor", json!({})).await;
    assert_eq!(status, 200);
    let command = device
        .wait_for(|f| f["type"] == "command" && f["data"]["state"] != "sent")
        .await;
    assert_eq!(
        (
            command["data"]["command"].as_str(),
            command["data"]["state"].as_str()
        ),
        (Some("opendoor"), Some("succeeded"))
    );

    // Unsubscribe stops them.
    let ack = attendance
        .send(json!({"op": "unsubscribe", "topics": ["attendance"]}))
        .await;
    assert_eq!(ack["op"], "unsubscribed");
    sim.send_logs(vec![
        json!({"enrollid": 43, "time": "2024-05-01 08:01:00", "mode": 8, "inout": 0, "event": 0}),
    ])
    .await
    .unwrap();
    attendance.silent_for(Duration::from_millis(300)).await;
}

#[actix_rt::test]
async fn bad_ops_get_an_error_op() {
    let app = spawn_app().await;
    let mut subscriber = Subscriber::connect(&app).await;
    for (op, code) in [
        (
            json!({"op": "subscribe", "topics": ["weather"]}),
            "invalid_topic",
        ),
        (json!({"op": "dance"}), "unknown_op"),
        (json!("just a string"), "bad_request"),
        (
            json!({"op": "subscribe", "topics": ["stats"], "interval": 0}),
            "invalid_interval",
        ),
    ] {
        let answer = subscriber.send(op.clone()).await;
        assert_eq!(
            (answer["op"].as_str(), answer["error"].as_str()),
            (Some("error"), Some(code)),
            "{op}"
        );
        assert!(answer["message"].is_string());
    }
}

#[actix_rt::test]
async fn targeted_pushes_reach_one_subscriber_or_one_room() {
    let app = spawn_app().await;
    let mut alice = Subscriber::connect(&app).await;
    let mut bob = Subscriber::connect(&app).await;
    bob.subscribe(&["room:lobby"]).await;
    let (status, _) = app
        .post(
            "/api/events/publish",
            json!({"subscriber": alice.id, "data": {"hello": "alice"}}),
        )
        .await;
    assert_eq!(status, 202);
    let message = alice.wait_for(|f| f["type"] == "message").await;
    assert_eq!(message["data"]["hello"], "alice");
    bob.silent_for(Duration::from_millis(300)).await;

    let (status, _) = app
        .post(
            "/api/events/publish",
            json!({"room": "lobby", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        bob.wait_for(|f| f["type"] == "message").await["data"]["n"],
        1
    );
    alice.silent_for(Duration::from_millis(300)).await;

    for bad in [
        json!({"data": {}}),
        json!({"room": "a", "topic": "attendance"}),
        json!({"topic": "nope"}),
    ] {
        let (status, body) = app.post("/api/events/publish", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = app
        .post(
            "/api/events/publish",
            json!({"subscriber": uuid::Uuid::new_v4(), "data": {}}),
        )
        .await;
    assert_eq!(status, 404);
}

#[actix_rt::test]
async fn stats_arrive_at_the_requested_interval() {
    let app = spawn_app().await;
    let _sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "EVT0002"))
        .await
        .unwrap();
    let mut watcher = Subscriber::connect(&app).await;
    let ack = watcher
        .send(json!({"op": "subscribe", "topics": ["stats"], "interval": 0.2}))
        .await;
    assert_eq!(ack["op"], "subscribed");
    let started = std::time::Instant::now();
    let first = watcher.wait_for(|f| f["type"] == "stats").await;
    let second = watcher.wait_for(|f| f["type"] == "stats").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(first["data"]["online"]["tm20"], 1, "{first}");
    assert!(second["data"]["commands_per_second"].is_number());
    let ack = watcher
        .send(json!({"op": "unsubscribe", "topics": ["stats"]}))
        .await;
    // A stats event may already be on its way; after that, silence.
    if ack["op"] != "unsubscribed" {
        assert_eq!(
            watcher.wait_for(|f| f["op"] == "unsubscribed").await["op"],
            "unsubscribed"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(Some(Ok(_))) =
        tokio::time::timeout(Duration::from_millis(50), watcher.ws.next()).await
    {}
    watcher.silent_for(Duration::from_millis(500)).await;
}

#[actix_rt::test]
async fn a_subscriber_that_does_not_read_is_told_it_lagged_and_devices_are_not_slowed() {
    let app = spawn_app().await;
    let mut slow = Subscriber::connect(&app).await;
    slow.subscribe(&["attendance"]).await;
    let sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "EVT0003"))
        .await
        .unwrap();
    // Far more event bytes than the subscriber's queue (1024 events) plus what the sockets can buffer (a few
    // MiB on loopback); the subscriber reads nothing meanwhile, and every batch is still acknowledged.
    let note = "x".repeat(4096);
    for batch in 0..50 {
        let records: Vec<Value> = (0..200)
            .map(|i| {
                let mut record = punch(batch * 200 + i);
                record["note"] = json!({"msg": note});
                record
            })
            .collect();
        let ack = sim.send_logs(records).await.unwrap();
        assert_eq!(ack["result"], true);
    }
    let lagged = slow.wait_for(|f| f["op"] == "lagged").await;
    assert!(lagged["dropped"].as_u64().unwrap() > 0, "{lagged}");
}

/// The Redis two nodes share (kept running while this lives).
struct SharedRedis {
    url: String,
    prefix: String,
    _own: Option<RedisServer>,
}

/// Nodes a and b on one database and one Redis prefix, heartbeat 200 ms.
async fn two_nodes() -> (TestApp, TestApp, SharedRedis) {
    let (url, own) = shared_redis().await;
    let prefix = unique_prefix();
    let (db, dir) = fresh_database().await;
    let settings = |node: &'static str| {
        let (url, prefix) = (url.clone(), prefix.clone());
        move |s: &mut gatehouse::config::Settings| {
            s.redis_url = Some(url);
            s.redis_prefix = prefix;
            s.node_id = Some(node.into());
            s.cluster_heartbeat_interval = Duration::from_millis(200);
        }
    };
    let a = spawn_app_on(db.clone(), dir, settings("node-a")).await;
    let b = spawn_app_on(db, None, settings("node-b")).await;
    (
        a,
        b,
        SharedRedis {
            url,
            prefix,
            _own: own,
        },
    )
}

#[actix_rt::test]
async fn events_and_pushes_cross_nodes() {
    let (a, b, _redis) = two_nodes().await;
    let mut on_b = Subscriber::connect(&b).await;
    on_b.subscribe(&["attendance"]).await;
    // Subscriptions to Redis are asynchronous: wait until both nodes listen.
    a.eventually("nodes listed", || async {
        a.get("/api/nodes").await.1["items"]
            .as_array()
            .is_some_and(|n| n.len() == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sim = SimTerminal::connect(SimConfig::new(a.ws_url("/pub/chat"), "EVT0004"))
        .await
        .unwrap();
    sim.send_logs(vec![punch(1)]).await.unwrap();
    let event = on_b.wait_for(|f| f["type"] == "attendance").await;
    assert_eq!(
        (event["device"].as_str(), event["node"].as_str()),
        (Some("EVT0004"), Some("node-a"))
    );

    let (status, _) = a
        .post(
            "/api/events/publish",
            json!({"subscriber": on_b.id, "data": {"via": "a"}}),
        )
        .await;
    assert_eq!(status, 202);
    let message = on_b.wait_for(|f| f["type"] == "message").await;
    assert_eq!(message["data"]["via"], "a");
    on_b.silent_for(Duration::from_millis(300)).await;
}

/// A node publishes its live events to Redis only while some other node has a subscriber, and a subscriber
/// welcomed on another node misses nothing published after its welcome (no waiting in between).
#[actix_rt::test]
async fn nodes_publish_live_events_only_while_another_node_listens() {
    let (a, b, redis) = two_nodes().await;
    for node in [&a, &b] {
        node.eventually("nodes listed", || async {
            node.get("/api/nodes").await.1["items"]
                .as_array()
                .is_some_and(|n| n.len() == 2)
        })
        .await;
    }
    // What crosses the cluster, seen from Redis itself.
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut live = client.get_async_pubsub().await.unwrap();
    live.subscribe(format!("{}:live", redis.prefix))
        .await
        .unwrap();
    let mut live = live.into_on_message();
    let sim = SimTerminal::connect(SimConfig::new(a.ws_url("/pub/chat"), "EVT0005"))
        .await
        .unwrap();
    let mut punches = 0..;
    // Sends a record on node a; whether its event went out on `{prefix}:live` within `wait`.
    let mut published = async |wait: Duration| {
        let record = punch(punches.next().unwrap());
        let time = record["time"].as_str().unwrap().to_owned();
        sim.send_logs(vec![record]).await.unwrap();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, live.next()).await {
            let payload: String = message.get_payload().unwrap();
            if payload.contains("\"attendance\"") && payload.contains(&time) {
                return true;
            }
        }
        false
    };
    // Until node a has read the others' state it publishes everything; then nothing, as nobody listens.
    let mut quiet = false;
    for _ in 0..20 {
        if !published(Duration::from_millis(300)).await {
            quiet = true;
            break;
        }
    }
    assert!(quiet, "node a kept publishing with no subscriber anywhere");

    let welcomed = std::time::Instant::now();
    let mut on_b = Subscriber::connect(&b).await;
    // Node a answered b's notice: no wait for the 2 s time-out that covers a node that does not answer.
    assert!(
        welcomed.elapsed() < Duration::from_millis(1500),
        "welcomed after {:?}",
        welcomed.elapsed()
    );
    on_b.subscribe(&["attendance"]).await;
    assert!(
        published(READ_TIMEOUT).await,
        "the record right after the welcome went out"
    );
    let event = on_b.wait_for(|f| f["type"] == "attendance").await;
    assert_eq!(
        (event["device"].as_str(), event["node"].as_str()),
        (Some("EVT0005"), Some("node-a"))
    );

    drop(on_b);
    let mut quiet = false;
    for _ in 0..20 {
        if !published(Duration::from_millis(300)).await {
            quiet = true;
            break;
        }
    }
    assert!(
        quiet,
        "node a kept publishing after the last subscriber left"
    );
}

#[actix_rt::test]
async fn command_events_follow_each_state_of_a_queued_command() {
    let app = spawn_app().await;
    app.put("/api/terminals/EVT0005", json!({})).await;
    let mut watcher = Subscriber::connect(&app).await;
    watcher.subscribe(&["command"]).await;
    let (status, body) = app
        .post(
            "/api/terminals/EVT0005/command?deliver=queued",
            json!({"command": "gettime"}),
        )
        .await;
    assert_eq!(status, 202);
    let id = body["id"].clone();
    let mut states = Vec::new();
    let _sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), "EVT0005"))
        .await
        .unwrap();
    while states.last().map(String::as_str) != Some("succeeded") {
        let event = watcher
            .wait_for(|f| f["type"] == "command" && f["data"]["id"] == id)
            .await;
        states.push(event["data"]["state"].as_str().unwrap().to_owned());
    }
    assert_eq!(states, vec!["queued", "sent", "succeeded"]);
}
