//! Several nodes against a real Redis: in-process nodes (each with its own Redis connections) and, where a
//! process must die or get a signal, real `gatehouse serve` processes.

use std::time::{Duration, Instant};

use gatehouse::config::Settings;
use gatehouse::sim::tm20::{SimConfig, SimTerminal};
use serde_json::{json, Value};

use crate::helpers::{
    free_port, fresh_database, shared_redis, spawn_app_on, unique_prefix, RawTerminal, RedisServer,
    TestApp, TOKEN,
};

fn cluster_settings(redis_url: &str, prefix: &str, node: &str) -> impl FnOnce(&mut Settings) {
    let (redis_url, prefix, node) = (redis_url.to_owned(), prefix.to_owned(), node.to_owned());
    move |s: &mut Settings| {
        s.redis_url = Some(redis_url);
        s.redis_prefix = prefix;
        s.node_id = Some(node);
        s.cluster_heartbeat_interval = Duration::from_millis(200);
        s.cluster_route_ttl = Duration::from_secs(3);
    }
}

/// Two nodes on one database and one Redis prefix.
async fn two_nodes(redis_url: &str) -> (TestApp, TestApp) {
    let prefix = unique_prefix();
    let (db, dir) = fresh_database().await;
    let a = spawn_app_on(
        db.clone(),
        dir,
        cluster_settings(redis_url, &prefix, "node-a"),
    )
    .await;
    let b = spawn_app_on(db, None, cluster_settings(redis_url, &prefix, "node-b")).await;
    wait_for_nodes(&a, 2).await;
    (a, b)
}

async fn wait_for_nodes(app: &TestApp, count: usize) {
    app.eventually("nodes see each other", || async {
        app.get("/api/nodes").await.1["items"]
            .as_array()
            .is_some_and(|n| n.len() == count)
    })
    .await;
}

async fn node_of(app: &TestApp, sn: &str) -> Option<String> {
    let (_, body) = app.get("/api/connected").await;
    body["items"]
        .as_array()?
        .iter()
        .find(|i| i["sn"] == sn)
        .and_then(|i| i["node"].as_str().map(str::to_owned))
}

async fn wait_route(app: &TestApp, sn: &str, node: &str) {
    app.eventually(&format!("{sn} routed to {node}"), || async {
        node_of(app, sn).await.as_deref() == Some(node)
    })
    .await;
}

#[actix_rt::test]
async fn command_via_node_b_reaches_device_on_node_a() {
    let (redis, _own) = shared_redis().await;
    let (a, b) = two_nodes(&redis).await;
    let sim = SimTerminal::connect(SimConfig::new(a.ws_url("/pub/chat"), "CL00001"))
        .await
        .unwrap();
    wait_route(&b, "CL00001", "node-a").await;

    let (status, body) = b
        .command("CL00001", "opendoor", json!({"door": 2, "delay": 3}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], true);
    assert_eq!(body["reply"]["ret"], "opendoor");
    assert_eq!(body["ignored"], json!(["delay"]));
    assert_eq!(sim.state().door_opened, 1);
    assert_eq!(sim.state().commands_received.last().unwrap()["doornum"], 2);
    // The owner commits the row before answering a forwarded call: the caller's node reads it at once.
    let (status, row) = b
        .get(&format!("/api/commands/{}", body["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (status, row["state"].as_str()),
        (200, Some("succeeded")),
        "{row}"
    );

    // A paged read across nodes comes back merged, exactly as locally.
    let (status, body) = b.command("CL00001", "getuserlist", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body["reply"]["record"].as_array().unwrap().is_empty());

    // wait=false, then the record is visible from either node (shared database).
    let (status, queued) = b
        .post(
            "/api/terminals/CL00001/command?wait=false",
            json!({"command": "gettime"}),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["id"].as_str().unwrap().to_owned();
    b.eventually("forwarded command succeeds", || {
        let (b, id) = (&b, id.clone());
        async move { b.get(&format!("/api/commands/{id}")).await.1["state"] == "succeeded" }
    })
    .await;

    // Errors look the same as on a single node.
    let (status, body) = b
        .command("CL00001", "opendoor", json!({"doornum": 7}))
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("doornum")),
        "{body}"
    );
    let (status, _) = b.command("NOWHERE", "opendoor", json!({})).await;
    assert_eq!(status, 404);
    // Both nodes list the device with its node; scope=local only shows a node's own sockets.
    assert_eq!(node_of(&a, "CL00001").await.as_deref(), Some("node-a"));
    let (_, local_b) = b.get("/api/connected?scope=local").await;
    assert_eq!(local_b["items"].as_array().unwrap().len(), 0);
    let (_, terminals) = b.get("/api/terminals").await;
    let item = terminals["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sn"] == "CL00001")
        .cloned()
        .unwrap();
    assert_eq!(
        (item["online"].as_bool(), item["node"].as_str()),
        (Some(true), Some("node-a"))
    );
}

#[actix_rt::test]
async fn forwarding_needs_no_row_in_the_requesting_nodes_database() {
    let (redis, _own) = shared_redis().await;
    let prefix = unique_prefix();
    let (db_a, dir_a) = fresh_database().await;
    let (db_b, dir_b) = fresh_database().await;
    let a = spawn_app_on(db_a, dir_a, cluster_settings(&redis, &prefix, "node-a")).await;
    let b = spawn_app_on(db_b, dir_b, cluster_settings(&redis, &prefix, "node-b")).await;
    let _sim = SimTerminal::connect(SimConfig::new(a.ws_url("/pub/chat"), "CL00002"))
        .await
        .unwrap();
    wait_route(&b, "CL00002", "node-a").await;
    let (status, body) = b.command("CL00002", "opendoor", json!({})).await;
    assert_eq!(status, 200, "{body}");
}

#[actix_rt::test]
async fn nodes_are_listed_with_their_devices() {
    let (redis, _own) = shared_redis().await;
    let (a, b) = two_nodes(&redis).await;
    let _one = RawTerminal::register(&a.ws_url("/pub/chat"), "CL00003").await;
    let _two = RawTerminal::register(&b.ws_url("/pub/chat"), "CL00004").await;
    wait_route(&a, "CL00004", "node-b").await;
    wait_route(&b, "CL00003", "node-a").await;
    a.eventually("device counts announced", || async {
        let (_, nodes) = a.get("/api/nodes").await;
        nodes["items"]
            .as_array()
            .is_some_and(|items| items.iter().all(|n| n["devices"] == 1))
    })
    .await;
    let (status, nodes) = b.get("/api/nodes").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert_eq!(ids, vec!["node-a", "node-b"]);
    for node in nodes["items"].as_array().unwrap() {
        for key in ["name", "address", "started_at", "devices", "last_seen"] {
            assert!(node.get(key).is_some(), "{key} missing in {node}");
        }
    }
    let (_, connected) = a.get("/api/connected").await;
    assert_eq!(connected["items"].as_array().unwrap().len(), 2);
}

#[actix_rt::test]
async fn same_sn_on_another_node_takes_over_and_the_late_disconnect_keeps_the_new_route() {
    let (redis, _own) = shared_redis().await;
    let (a, b) = two_nodes(&redis).await;
    let mut old = RawTerminal::register(&a.ws_url("/pub/chat"), "CL00005").await;
    wait_route(&b, "CL00005", "node-a").await;
    let mut new = RawTerminal::register(&b.ws_url("/pub/chat"), "CL00005").await;

    let (_, reason) = old
        .expect_closed()
        .await
        .expect("the old socket gets a close reason");
    assert!(reason.contains("replaced"), "{reason}");
    // After the old socket's disconnect has been processed on A, the route is still B's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node_of(&a, "CL00005").await.as_deref(), Some("node-b"));
    let (_, local_a) = a.get("/api/connected?scope=local").await;
    assert!(local_a["items"].as_array().unwrap().is_empty(), "{local_a}");

    // And a command via A reaches the new socket on B.
    let url = a.url("/api/terminals/CL00005/command");
    let call = actix_rt::spawn(async move {
        crate::helpers::read(
            awc::Client::new()
                .post(url)
                .bearer_auth(TOKEN)
                .send_json(&json!({"command": "opendoor"}))
                .await,
        )
        .await
    });
    let command = new.recv_json().await;
    assert_eq!(command["cmd"], "opendoor");
    new.send(r#"{"ret":"opendoor","result":true}"#).await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 200, "{body}");
}

#[actix_rt::test]
async fn redis_restart_keeps_local_commands_working_and_remote_ones_resume() {
    let mut redis = RedisServer::start().await;
    let (a, b) = two_nodes(&redis.url()).await;
    let _sim = SimTerminal::connect(SimConfig::new(a.ws_url("/pub/chat"), "CL00006"))
        .await
        .unwrap();
    wait_route(&b, "CL00006", "node-a").await;
    assert_eq!(b.command("CL00006", "opendoor", json!({})).await.0, 200);

    redis.stop();
    // Local: unaffected.
    let (status, body) = a.command("CL00006", "opendoor", json!({})).await;
    assert_eq!(status, 200, "{body}");
    // Remote: a clear 503.
    let (status, body) = b.command("CL00006", "opendoor", json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );

    redis.restart().await;
    // The nodes re-subscribe and re-publish their routes by themselves.
    b.eventually("remote commands resume", || async {
        b.command("CL00006", "opendoor", json!({})).await.0 == 200
    })
    .await;
    // Nothing was lost from the database.
    let (status, _) = b.get("/api/terminals/CL00006").await;
    assert_eq!(status, 200);
}

/// A `gatehouse serve` process of its own, on a port of its own.
struct NodeProcess {
    child: std::process::Child,
    port: u16,
}

impl NodeProcess {
    async fn start(database_url: &str, redis_url: &str, prefix: &str, node: &str) -> NodeProcess {
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("serve")
            .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", database_url)
            .env("GATEHOUSE_API_TOKEN", TOKEN)
            .env("REDIS_URL", redis_url)
            .env("REDIS_PREFIX", prefix)
            .env("GATEHOUSE_NODE_ID", node)
            .env("SXDM_BIND", "off")
            .env("DEVICE_FRAME_RATE", "0")
            .env("CLUSTER_HEARTBEAT_INTERVAL", "0.2")
            .env("CLUSTER_ROUTE_TTL", "3")
            .env("COMMAND_TIMEOUT", "30")
            .env("GATEHOUSE_SHUTDOWN_GRACE", "1")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("node process starts");
        let node = NodeProcess { child, port };
        let client = awc::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(response) = client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
            {
                if response.status().is_success() {
                    return node;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node process on port {port} did not become ready");
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/pub/chat", self.port)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[actix_rt::test]
async fn a_killed_node_makes_its_devices_unreachable_with_503_not_504() {
    let (redis, _own) = shared_redis().await;
    let prefix = unique_prefix();
    let (db, dir) = fresh_database().await;
    let doomed = NodeProcess::start(&db, &redis, &prefix, "node-doomed").await;
    let b = spawn_app_on(db, dir, |s| {
        cluster_settings(&redis, &prefix, "node-b")(s);
        s.command_timeout = Duration::from_secs(30);
    })
    .await;
    // A raw terminal that never answers, so a command is in flight when the node dies.
    let _terminal = RawTerminal::register(&doomed.ws_url(), "CL00007").await;
    wait_route(&b, "CL00007", "node-doomed").await;

    let url = b.url("/api/terminals/CL00007/command");
    let started = Instant::now();
    let pending = actix_rt::spawn(async move {
        crate::helpers::read(
            awc::Client::builder()
                .timeout(Duration::from_secs(60))
                .finish()
                .post(url)
                .bearer_auth(TOKEN)
                .send_json(&json!({"command": "gettime"}))
                .await,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    doomed.signal("-KILL");
    let (status, body) = pending.await.unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed fast, not after the 30 s time-out"
    );

    // New calls fail fast too, and the dead node's route goes away.
    let started = Instant::now();
    let (status, _) = b.command("CL00007", "opendoor", json!({})).await;
    assert!(status == 503 || status == 409, "{status}");
    assert!(started.elapsed() < Duration::from_secs(5));
    b.eventually("dead node's route dropped", || async {
        node_of(&b, "CL00007").await.is_none()
    })
    .await;
    wait_for_nodes(&b, 1).await;
}

#[actix_rt::test]
async fn sigterm_closes_device_sockets_with_1001_and_removes_routes() {
    let (redis, _own) = shared_redis().await;
    let prefix = unique_prefix();
    let (db, dir) = fresh_database().await;
    let leaving = NodeProcess::start(&db, &redis, &prefix, "node-leaving").await;
    let b = spawn_app_on(db, dir, cluster_settings(&redis, &prefix, "node-b")).await;
    let mut terminal = RawTerminal::register(&leaving.ws_url(), "CL00008").await;
    wait_route(&b, "CL00008", "node-leaving").await;

    leaving.signal("-TERM");
    let closed = terminal.expect_closed().await.expect("a close frame");
    assert_eq!(closed.0, 1001, "{closed:?}");
    // Its route is gone at once (not after the TTL), and the node left the listing.
    b.eventually("route removed", || async {
        node_of(&b, "CL00008").await.is_none()
    })
    .await;
    wait_for_nodes(&b, 1).await;
    let mut leaving = leaving;
    let exited = tokio::task::spawn_blocking(move || {
        let status = leaving.child.wait();
        (leaving, status)
    });
    let (_leaving, status) = tokio::time::timeout(Duration::from_secs(15), exited)
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.unwrap().success(),
        "the node exits cleanly after SIGTERM"
    );
    let _: Value = json!(null);
}

#[actix_rt::test]
async fn the_local_cluster_script_runs_three_nodes_behind_one_address() {
    let run_dir = tempfile::tempdir().unwrap();
    // Node ports are base, base+1, base+2: free a moment ago, like every port the tests pick.
    let base = free_port();
    let (lb, redis) = (free_port(), free_port());
    let script = |verb: &str| {
        std::process::Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/local-cluster.sh"
            ))
            .arg(verb)
            .env("GATEHOUSE_BIN", env!("CARGO_BIN_EXE_gatehouse"))
            .env("RUN_DIR", run_dir.path())
            .env("BASE_PORT", base.to_string())
            .env("LB_PORT", lb.to_string())
            .env("REDIS_PORT", redis.to_string())
            .env("GATEHOUSE_API_TOKEN", TOKEN)
            .output()
            .expect("script runs")
    };
    let up = script("up");
    let stdout = String::from_utf8_lossy(&up.stdout).to_string();
    assert!(
        up.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&up.stderr)
    );
    struct Down<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Down<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let _down = Down(|| {
        let _ = script("down");
    });
    // Devices enter through the balancer when nginx is installed, else through node 1; admins use node 3.
    let entry = if stdout.contains("load balancer") {
        lb
    } else {
        base
    };
    let sim = SimTerminal::connect(SimConfig::new(
        format!("ws://127.0.0.1:{entry}/pub/chat"),
        "SCRIPT1",
    ))
    .await
    .unwrap();
    let admin = format!(
        "http://127.0.0.1:{}/api/terminals/SCRIPT1/command",
        base + 2
    );
    let client = awc::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = crate::helpers::read(
            client
                .post(&admin)
                .bearer_auth(TOKEN)
                .send_json(&json!({"command": "opendoor"}))
                .await,
        )
        .await;
        if status == 200 {
            assert_eq!(body["result"], true);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no route to SCRIPT1 via node 3: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sim.state().door_opened, 1);
    let nodes: Value = crate::helpers::read(
        client
            .get(format!("http://127.0.0.1:{base}/api/nodes"))
            .bearer_auth(TOKEN)
            .send()
            .await,
    )
    .await
    .1;
    assert_eq!(nodes["items"].as_array().unwrap().len(), 3, "{nodes}");
}

#[actix_rt::test]
async fn an_ocpp_action_via_node_b_reaches_the_charger_on_node_a() {
    let (redis, _own) = shared_redis().await;
    let (a, b) = two_nodes(&redis).await;
    let sim = gatehouse::sim::ocpp::OcppSim::connect(gatehouse::sim::ocpp::OcppSimConfig::new(
        a.ws_url("/ocpp"),
        "CLCP01",
    ))
    .await
    .unwrap();
    wait_route(&b, "CLCP01", "node-a").await;
    let (status, body) = b
        .post(
            "/api/chargers/CLCP01/action",
            json!({"action": "GetConfiguration", "params": {"key": ["HeartbeatInterval"]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "result");
    assert!(body["payload"]["configurationKey"].is_array(), "{body}");
    assert!(sim
        .state()
        .calls_received
        .iter()
        .any(|(a, _)| a == "GetConfiguration"));
    let (status, body) = b
        .post(
            "/api/chargers/CLCP01/action",
            json!({"action": "Reset", "params": {"type": "Nope"}}),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("type")),
        "{body}"
    );
}

#[actix_rt::test]
async fn a_command_queued_via_node_a_is_delivered_once_when_the_terminal_registers_on_node_b() {
    let (redis, _own) = shared_redis().await;
    let (a, b) = two_nodes(&redis).await;
    a.put("/api/terminals/CLQ0001", json!({})).await;
    let (status, body) = a
        .post(
            "/api/terminals/CLQ0001/command?deliver=queued",
            json!({"command": "getusername", "params": {"enrollid": 3}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let sim = SimTerminal::connect(SimConfig::new(b.ws_url("/pub/chat"), "CLQ0001"))
        .await
        .unwrap();
    a.eventually("delivered", || {
        let (a, id) = (&a, id.clone());
        async move { a.get(&format!("/api/commands/{id}")).await.1["state"] == "succeeded" }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deliveries = sim
        .state()
        .commands_received
        .iter()
        .filter(|c| c["cmd"] == "getusername")
        .count();
    assert_eq!(deliveries, 1, "exactly once");
}

/// A device whose first route claim fails is claimed again within seconds, not at the next route refresh
/// (CLUSTER_ROUTE_TTL / 3: 10 s here): until then no other node can reach it.
#[actix_rt::test]
async fn a_failed_first_route_claim_is_retried_within_seconds() {
    let (redis, _own) = shared_redis().await;
    let prefix = unique_prefix();
    let (db, dir) = fresh_database().await;
    let a = spawn_app_on(db, dir, |s| {
        cluster_settings(&redis, &prefix, "node-a")(s);
        s.cluster_route_ttl = Duration::from_secs(30);
    })
    .await;
    let client = redis::Client::open(redis.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // A key of the wrong type where the route goes makes the claim script fail (WRONGTYPE).
    let route_key = format!("{prefix}:route:CL00011");
    let _: i64 = redis::cmd("RPUSH")
        .arg(&route_key)
        .arg("not a route")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _terminal = RawTerminal::register(&a.ws_url("/pub/chat"), "CL00011").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _: i64 = redis::cmd("DEL")
        .arg(&route_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let route: Option<String> = redis::cmd("GET")
            .arg(&route_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(route) = route {
            let route: Value = serde_json::from_str(&route).unwrap();
            assert_eq!(route["node"], "node-a", "{route}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the route was not claimed again within 6 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
