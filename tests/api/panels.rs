//! Shenxing panels: login over the panel socket, the SxDeviceManager-compatible third-party API (`sxdmSn`),
//! its error answers, the status endpoints, the admin view, queued calls, and a call across two nodes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gatehouse::devices::sxdm::envelope::{self, Body, Envelope};
use gatehouse::sim::sxdm::{PanelConfig, PanelError, SimPanel};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    fresh_database, shared_redis, spawn_app_on, spawn_app_with, unique_prefix, TestApp,
    READ_TIMEOUT,
};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn panel_url(app: &TestApp) -> String {
    app.ws_url("/api/websocket/")
}

async fn panel(app: &TestApp, sn: &str) -> SimPanel {
    let panel = SimPanel::connect(PanelConfig::new(panel_url(app), sn))
        .await
        .expect("panel logs in");
    wait_online(app, sn).await;
    panel
}

async fn wait_online(app: &TestApp, sn: &str) {
    app.eventually(&format!("{sn} online"), || async {
        app.is_online(sn).await
    })
    .await;
}

/// A third-party call as SxDeviceManager clients make it: the panel's own path, `sxdmSn` (and `sxdmToken`).
async fn call(
    app: &TestApp,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app.http.request(method, url);
    for (name, value) in headers {
        request = request.insert_header((*name, *value));
    }
    let response = match body {
        Some(body) => request.send_json(&body).await,
        None => request.send().await,
    };
    let mut response = response.expect("the node answers");
    let status = response.status().as_u16();
    let bytes = response.body().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
    };
    (status, body)
}

/// A panel socket driven frame by frame, for the login rules and bad input.
struct RawPanel {
    ws: Ws,
}

impl RawPanel {
    async fn connect(app: &TestApp) -> RawPanel {
        let (ws, _) = tokio_tungstenite::connect_async(panel_url(app))
            .await
            .unwrap();
        RawPanel { ws }
    }

    async fn send(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next text frame, parsed.
    async fn recv(&mut self) -> Envelope {
        loop {
            let frame = tokio::time::timeout(READ_TIMEOUT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("socket open")
                .expect("frame");
            if let Message::Text(text) = frame {
                return envelope::parse(&text).expect("the server sends valid envelopes");
            }
        }
    }

    async fn request(&mut self, id: &str, path: &str, body: Value) -> (u16, Value) {
        self.send(envelope::render_request(id, "POST", path, Some(&body)))
            .await;
        match self.recv().await {
            Envelope::Response(r) => {
                assert_eq!(r.id, id, "the answer echoes the request id");
                let body = match r.body {
                    Body::Json(v) => v,
                    other => panic!("JSON answer expected, got {other:?}"),
                };
                (r.status, body)
            }
            other => panic!("response expected, got {other:?}"),
        }
    }

    async fn random(&mut self, sn: &str) -> String {
        let (status, body) = self
            .request("1", "/api/auth/random", json!({"serial_no": sn}))
            .await;
        assert_eq!(status, 200);
        let random = body["random"].as_str().unwrap().to_owned();
        assert_eq!(random.len(), 6);
        assert!(random.chars().all(|c| c.is_ascii_digit()));
        random
    }

    /// Waits for the server to close the socket; returns the close reason.
    async fn expect_closed(&mut self) -> String {
        loop {
            match tokio::time::timeout(READ_TIMEOUT, self.ws.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| f.reason.to_string()).unwrap_or_default()
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return String::new(),
            }
        }
    }
}

#[actix_rt::test]
async fn a_logged_in_panel_answers_third_party_calls_with_its_own_status_and_body() {
    let app = spawn_app_with(|_| {}).await;
    let sim = panel(&app, "SXP-A1").await;
    let sn = [("sxdmSn", "SXP-A1")];

    let (status, body) = call(&app, app.port, "GET", "/api/devices/status", &sn, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["serial_no"], "SXP-A1");

    // Method, path with its query, and the JSON body reach the panel exactly as sent.
    let door = json!({"door_open_stat": "open", "open_duration": 3000});
    let (status, _) = call(
        &app,
        app.port,
        "PUT",
        "/api/devices/door",
        &sn,
        Some(door.clone()),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call(&app, app.port, "GET", "/api/devices/door", &sn, None).await;
    assert_eq!((status, body["open_duration"].clone()), (200, json!(3000)));
    let (status, body) = call(
        &app,
        app.port,
        "GET",
        "/api/auth/login/challenge?username=admin",
        &sn,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(body["challenge"].is_string());
    let received = sim.received();
    assert!(received.contains(&("PUT".into(), "/api/devices/door".into(), door)));
    assert!(received
        .iter()
        .any(|(m, p, _)| m == "GET" && p == "/api/auth/login/challenge?username=admin"));

    // The panel's own errors come back as they are.
    let (status, body) = call(&app, app.port, "DELETE", "/api/persons/item/999", &sn, None).await;
    assert_eq!(status, 404);
    assert_eq!(body["msg"], "person not found");

    // Every call is in the audit trail with its status and time, never its body.
    let (_, commands) = app.get("/api/commands?device=SXP-A1").await;
    let items = commands["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "{commands}");
    let put = items
        .iter()
        .find(|c| c["command"] == "PUT /api/devices/door")
        .expect("the PUT is recorded");
    assert_eq!(put["device_kind"], "sxdm");
    assert_eq!(put["state"], "succeeded");
    assert_eq!(put["reply"]["status"], 200);
    assert!(put["reply"]["elapsed_ms"].is_u64());
    assert!(put["params"].get("body").is_none(), "{put}");
    let failed = items
        .iter()
        .find(|c| c["command"] == "DELETE /api/persons/item/999")
        .unwrap();
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["reply"]["status"], 404);

    // The admin view lists it online.
    let (status, list) = app.get("/api/panels").await;
    assert_eq!(status, 200);
    let entry = &list["items"][0];
    assert_eq!(
        (entry["sn"].clone(), entry["online"].clone()),
        (json!("SXP-A1"), json!(true))
    );
    let (_, connected) = app.get("/api/connected").await;
    assert_eq!(connected["items"][0]["protocol"], "sxdm");
    sim.close().await;
}

#[actix_rt::test]
async fn a_wrong_random_closes_the_socket_and_the_panel_never_comes_online() {
    let app = spawn_app_with(|_| {}).await;
    let mut config = PanelConfig::new(panel_url(&app), "SXP-W1");
    config.wrong_random = true;
    match SimPanel::connect(config).await {
        Err(PanelError::Closed(reason)) => {
            assert!(reason.unwrap_or_default().contains("wrong random"))
        }
        other => panic!("the socket must be closed, got {other:?}"),
    }
    assert!(!app.is_online("SXP-W1").await);
    let (status, body) = call(
        &app,
        app.port,
        "GET",
        "/api/devices/status",
        &[("sxdmSn", "SXP-W1")],
        None,
    )
    .await;
    assert_eq!((status, body["msg"].clone()), (403, json!("设备离线")));
}

#[actix_rt::test]
async fn before_login_a_panel_gets_401_answers_and_receives_no_calls() {
    let app = spawn_app_with(|_| {}).await;
    let mut raw = RawPanel::connect(&app).await;
    let (status, _) = raw
        .request("7", "/api/persons/query", json!({"limit": 1}))
        .await;
    assert_eq!(status, 401);
    let random = raw.random("SXP-R1").await;
    // Random issued but no login yet: still offline for third parties.
    let (status, _) = call(
        &app,
        app.port,
        "GET",
        "/api/devices/status",
        &[("sxdmSn", "SXP-R1")],
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = raw
        .request(
            "8",
            "/api/auth/login",
            json!({"serial_no": "SXP-R1", "random": random, "password": "anything"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], 200);
    assert!(body["session_id"].as_str().is_some_and(|s| !s.is_empty()));
    wait_online(&app, "SXP-R1").await;

    // A malformed frame gets a 400 answer with its id; the panel stays connected.
    raw.send("9&this is not an envelope\r\n\r\n{broken".into())
        .await;
    match raw.recv().await {
        Envelope::Response(r) => assert_eq!((r.id.as_str(), r.status), ("9", 400)),
        other => panic!("response expected, got {other:?}"),
    }
    assert!(app.is_online("SXP-R1").await);
}

#[actix_rt::test]
async fn a_login_with_a_random_for_another_serial_number_is_refused() {
    let app = spawn_app_with(|_| {}).await;
    let mut raw = RawPanel::connect(&app).await;
    let random = raw.random("SXP-X1").await;
    raw.send(envelope::render_request(
        "2",
        "POST",
        "/api/auth/login",
        Some(&json!({"serial_no": "SXP-X2", "random": random})),
    ))
    .await;
    assert!(raw.expect_closed().await.contains("serial_no"));
    assert!(!app.is_online("SXP-X1").await && !app.is_online("SXP-X2").await);
}

#[actix_rt::test]
async fn manager_errors_token_timeout_and_the_dedicated_listener() {
    let app = spawn_app_with(|s| {
        s.sxdm_bind = "127.0.0.1:0".into();
        s.sxdm_auth_token = Some("third-party-token".into());
        s.sxdm_timeout = Duration::from_secs(1);
    })
    .await;
    let sxdm_port = app.sxdm_port.expect("the dedicated listener is on");
    let sim = SimPanel::connect(PanelConfig::new(
        format!("ws://127.0.0.1:{sxdm_port}/api/websocket/"),
        "SXP-E1",
    ))
    .await
    .expect("a panel logs in on the dedicated port");
    wait_online(&app, "SXP-E1").await;
    let good = [("sxdmSn", "SXP-E1"), ("sxdmToken", "third-party-token")];

    for port in [app.port, sxdm_port] {
        let (status, body) = call(&app, port, "GET", "/api/devices/status", &good, None).await;
        assert_eq!((status, body["serial_no"].clone()), (200, json!("SXP-E1")));
        let (status, body) = call(&app, port, "GET", "/api/devices/status", &good[..1], None).await;
        assert_eq!(
            (status, body),
            (401, json!({"status": 401, "msg": "请求认证失败"}))
        );
        let wrong = [("sxdmSn", "SXP-E1"), ("sxdmToken", "nope")];
        assert_eq!(
            call(&app, port, "GET", "/api/devices/status", &wrong, None)
                .await
                .0,
            401
        );
        let offline = [("sxdmSn", "SXP-NONE"), ("sxdmToken", "third-party-token")];
        let (status, body) = call(&app, port, "GET", "/api/devices/status", &offline, None).await;
        assert_eq!(
            (status, body),
            (403, json!({"status": 403, "msg": "设备离线"}))
        );
        // Not JSON: refused before it reaches the panel.
        let mut response = app
            .http
            .post(format!("http://127.0.0.1:{port}/api/persons/item"))
            .insert_header(good[0])
            .insert_header(good[1])
            .send_body("name=Ada")
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let refused: Value = response.json().await.unwrap();
        assert_eq!(refused["status"], 400);
    }
    // Without `sxdmSn` the dedicated listener has nothing to offer but the manager's 400.
    let (status, body) = call(&app, sxdm_port, "GET", "/api/devices/status", &[], None).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"status": 400, "msg": "header中没有设置[sxdmSn]字段(设备SN号)"})
        )
    );

    // Status endpoints: token required, online panels listed with their last heartbeat.
    let (status, _) = call(
        &app,
        sxdm_port,
        "GET",
        "/api/device/status/SXP-E1/",
        &[],
        None,
    )
    .await;
    assert_eq!(status, 401);
    let token = [("sxdmToken", "third-party-token")];
    let (status, one) = call(
        &app,
        sxdm_port,
        "GET",
        "/api/device/status/SXP-E1/",
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (one["online"].clone(), one["sn"].clone()),
        (json!(true), json!("SXP-E1"))
    );
    let now_ms = chrono::Utc::now().timestamp_millis();
    let last = one["lastHeartBeatTime"].as_i64().expect("epoch ms");
    assert!(now_ms - last < 60_000 && last <= now_ms + 1000, "{one}");
    let (status, list) = call(
        &app,
        app.port,
        "GET",
        "/openapi/manager/status/",
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["sn"], "SXP-E1");
    let (_, unknown) = call(
        &app,
        app.port,
        "GET",
        "/api/device/status/NOPE/",
        &token,
        None,
    )
    .await;
    assert_eq!(unknown["online"], false);

    // A panel that does not answer: 408 after SXDM_TIMEOUT, recorded as timed out.
    sim.close().await;
    let mut silent = PanelConfig::new(panel_url(&app), "SXP-E2");
    silent.silent = true;
    let _silent = SimPanel::connect(silent).await.unwrap();
    wait_online(&app, "SXP-E2").await;
    let quiet = [("sxdmSn", "SXP-E2"), ("sxdmToken", "third-party-token")];
    let (status, body) = call(&app, app.port, "GET", "/api/devices/status", &quiet, None).await;
    assert_eq!((status, body), (408, json!({"error": "Timeout"})));
    let (_, commands) = app.get("/api/commands?device=SXP-E2").await;
    assert_eq!(commands["items"][0]["state"], "timed_out");
}

#[actix_rt::test]
async fn a_secret_and_the_whitelist_decide_who_may_log_in() {
    let app = spawn_app_with(|s| s.sxdm_require_whitelist = true).await;
    // Not registered: refused.
    let refused = SimPanel::connect(PanelConfig::new(panel_url(&app), "SXP-S1")).await;
    assert!(
        matches!(
            refused,
            Err(PanelError::Refused { status: 403, .. }) | Err(PanelError::Closed(_))
        ),
        "{refused:?}"
    );
    let (status, body) = app
        .put(
            "/api/panels/SXP-S1",
            json!({"name": "Lobby", "secret": "s3cret"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["has_secret"], true);
    assert!(body.get("secret").is_none(), "the secret is never shown");
    // Wrong password: refused; the secret itself: in.
    let mut wrong = PanelConfig::new(panel_url(&app), "SXP-S1");
    wrong.password = "guess".into();
    assert!(SimPanel::connect(wrong).await.is_err());
    assert!(!app.is_online("SXP-S1").await);
    let mut right = PanelConfig::new(panel_url(&app), "SXP-S1");
    right.password = "s3cret".into();
    let sim = SimPanel::connect(right)
        .await
        .expect("the right secret logs in");
    wait_online(&app, "SXP-S1").await;
    // Deactivating a panel closes its socket now.
    let (status, _) = app
        .put(
            "/api/panels/SXP-S1",
            json!({"secret": "s3cret", "is_active": false}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(sim
        .closed()
        .await
        .unwrap_or_default()
        .contains("deactivated"));
    let (_, detail) = app.get("/api/panels/SXP-S1").await;
    assert_eq!(
        (detail["online"].clone(), detail["is_active"].clone()),
        (json!(false), json!(false))
    );
    assert_eq!(app.get("/api/panels/NOPE").await.0, 404);
}

#[actix_rt::test]
async fn a_silent_panel_is_closed_after_the_session_timeout() {
    let app = spawn_app_with(|s| {
        s.sxdm_session_timeout = Duration::from_secs(1);
        s.sxdm_ping_interval = Duration::from_millis(300);
    })
    .await;
    let mut raw = RawPanel::connect(&app).await;
    let random = raw.random("SXP-T1").await;
    raw.request(
        "2",
        "/api/auth/login",
        json!({"serial_no": "SXP-T1", "random": random}),
    )
    .await;
    wait_online(&app, "SXP-T1").await;
    // Not reading means not answering pings: the server hears nothing and gives up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The close frame may be lost if our queued pong hits the already closed socket first.
    let reason = raw.expect_closed().await;
    assert!(reason.is_empty() || reason.contains("timeout"), "{reason}");
    app.eventually("the panel is gone", || async {
        !app.is_online("SXP-T1").await
    })
    .await;
}

#[actix_rt::test]
async fn a_call_queued_for_an_offline_panel_is_delivered_when_it_logs_in() {
    let app = spawn_app_with(|_| {}).await;
    let (status, _) = app.put("/api/panels/SXP-Q1", json!({})).await;
    assert_eq!(status, 201);
    let body =
        json!({"method": "PUT", "path": "/api/devices/profile", "body": {"voice_volume": 2}});
    assert_eq!(
        app.post("/api/panels/SXP-Q1/request", body.clone()).await.0,
        409
    );
    let (status, queued) = app
        .post("/api/panels/SXP-Q1/request?deliver=queued", body)
        .await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["id"].as_str().unwrap().to_owned();
    let sim = panel(&app, "SXP-Q1").await;
    app.eventually("the queued call succeeded", || async {
        app.get(&format!("/api/commands/{id}")).await.1["state"] == "succeeded"
    })
    .await;
    assert!(sim.received().contains(&(
        "PUT".into(),
        "/api/devices/profile".into(),
        json!({"voice_volume": 2})
    )));
    // The admin call of an online panel answers with the panel's status and body.
    let (status, answer) = app
        .post(
            "/api/panels/SXP-Q1/request",
            json!({"method": "get", "path": "/api/devices/profile"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], 200);
    assert_eq!(answer["body"]["voice_volume"], 2);
    let (status, _) = app
        .post("/api/panels/SXP-Q1/request", json!({"method": "GET"}))
        .await;
    assert_eq!(status, 400);
}

#[actix_rt::test]
async fn a_third_party_call_on_node_b_reaches_the_panel_on_node_a() {
    let (redis, _own) = shared_redis().await;
    let prefix = unique_prefix();
    let (db, dir) = fresh_database().await;
    let cluster = |node: &'static str| {
        let (redis, prefix) = (redis.clone(), prefix.clone());
        move |s: &mut gatehouse::config::Settings| {
            s.redis_url = Some(redis);
            s.redis_prefix = prefix;
            s.node_id = Some(node.into());
            s.cluster_heartbeat_interval = Duration::from_millis(200);
            s.cluster_route_ttl = Duration::from_secs(3);
        }
    };
    let a = spawn_app_on(db.clone(), dir, cluster("node-a")).await;
    let b = spawn_app_on(db, None, cluster("node-b")).await;
    let sim = panel(&a, "SXP-C1").await;
    b.eventually("node b sees the panel", || async {
        b.is_online("SXP-C1").await
    })
    .await;
    let sn = [("sxdmSn", "SXP-C1")];
    let (status, body) = call(&b, b.port, "GET", "/api/devices/status", &sn, None).await;
    assert_eq!((status, body["serial_no"].clone()), (200, json!("SXP-C1")));
    let person = json!({"id": 1001, "person_name": "Ada", "recognition_type": "staff"});
    let (status, body) = call(&b, b.port, "POST", "/api/persons/item", &sn, Some(person)).await;
    assert_eq!((status, body["id"].clone()), (200, json!(1001)));
    let (status, body) = call(&b, b.port, "DELETE", "/api/persons/item/5", &sn, None).await;
    assert_eq!(
        status, 404,
        "the panel's error crosses nodes unchanged: {body}"
    );
    let (status, list) = call(&b, b.port, "GET", "/api/device/status/", &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["sn"], "SXP-C1");
    assert_eq!(sim.received().len(), 3);
}

#[actix_rt::test]
async fn a_second_login_with_the_same_serial_number_replaces_the_first() {
    let app = spawn_app_with(|_| {}).await;
    let first = panel(&app, "SXP-D1").await;
    let second = SimPanel::connect(PanelConfig::new(panel_url(&app), "SXP-D1"))
        .await
        .unwrap();
    assert!(first
        .closed()
        .await
        .unwrap_or_default()
        .contains("replaced"));
    let (status, _) = call(
        &app,
        app.port,
        "GET",
        "/api/devices/status",
        &[("sxdmSn", "SXP-D1")],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(second.is_connected());
}
