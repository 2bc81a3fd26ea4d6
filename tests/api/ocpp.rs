//! Charge points over real sockets: the OCPP simulator and hand-driven OCPP-J clients. Every payload the
//! server sends in these tests is validated against the official OCPP 1.6 JSON schemas.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gatehouse::sim::ocpp::{CallOutcome, OcppSim, OcppSimConfig, OcppSimError};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

use crate::helpers::{spawn_app, spawn_app_with, TestApp, READ_TIMEOUT};

fn schema_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemas/ocpp16")
}

/// Fails the test unless `payload` is valid for the official schema `name` (e.g. "Reset", "ResetResponse").
pub fn assert_schema(name: &str, payload: &Value) {
    let path = schema_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("schema {name} exists"));
    let schema: Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::draft4::new(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(payload)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{name} payload {payload} violates its schema: {errors:?}"
    );
}

fn base(app: &TestApp) -> String {
    app.ws_url("/ocpp")
}

async fn connect(app: &TestApp, id: &str) -> OcppSim {
    let sim = OcppSim::connect(OcppSimConfig::new(base(app), id))
        .await
        .unwrap();
    app.eventually("charger online", || async {
        app.get(&format!("/api/chargers/{id}")).await.1["online"] == true
    })
    .await;
    sim
}

/// Sends a CALL from the simulator and checks the server's answer against the response schema.
async fn call_ok(sim: &OcppSim, action: &str, payload: Value) -> Value {
    assert_schema(action, &payload);
    match sim.call(action, payload).await.unwrap() {
        CallOutcome::Result(answer) => {
            assert_schema(&format!("{action}Response"), &answer);
            answer
        }
        CallOutcome::Error {
            code, description, ..
        } => panic!("{action} answered {code}: {description}"),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A hand-driven charge point socket.
async fn raw(app: &TestApp, id: &str) -> Ws {
    let mut request = format!("{}/{id}", base(app)).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "ocpp1.6".parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "ocpp1.6"
    );
    ws
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(READ_TIMEOUT, ws.next())
            .await
            .expect("frame in time");
        match frame {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_owned())).await.unwrap();
}

#[actix_rt::test]
async fn the_handshake_needs_the_ocpp16_subprotocol_and_a_valid_id() {
    let app = spawn_app().await;
    let url = base(&app);
    assert_eq!(
        OcppSim::handshake_only(&url, "HS001", Some("ocpp1.6"), None)
            .await
            .unwrap(),
        Some("ocpp1.6".into())
    );
    assert_eq!(
        OcppSim::handshake_only(&url, "HS001", Some("ocpp2.0.1, ocpp1.6"), None)
            .await
            .unwrap(),
        Some("ocpp1.6".into())
    );
    for (protocols, id) in [
        (None, "HS002"),
        (Some("ocpp2.0.1"), "HS003"),
        (Some("ocpp1.6"), "bad%20id"),
    ] {
        match OcppSim::handshake_only(&url, id, protocols, None).await {
            Err(OcppSimError::Connect(message)) => assert!(message.contains("400"), "{message}"),
            other => panic!("{protocols:?} {id}: expected a 400 refusal, got {other:?}"),
        }
    }
    // The /ws/ocpp/ path works too.
    assert!(
        OcppSim::handshake_only(&app.ws_url("/ws/ocpp"), "HS004", Some("ocpp1.6"), None)
            .await
            .is_ok()
    );
}

#[actix_rt::test]
async fn basic_auth_and_auto_registration_decide_at_the_handshake() {
    let app = spawn_app_with(|s| s.ocpp_auto_register = false).await;
    let url = base(&app);
    match OcppSim::handshake_only(&url, "AUTH01", Some("ocpp1.6"), None).await {
        Err(OcppSimError::Connect(message)) => assert!(message.contains("404"), "{message}"),
        other => panic!("unknown charger accepted: {other:?}"),
    }
    let (status, body) = app
        .put(
            "/api/chargers/AUTH01",
            json!({"security_profile": 1, "password": "correct-horse-1"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["has_password"], true);
    assert!(body.get("password_hash").is_none());
    for (password, expected) in [(None, "401"), (Some("wrong-password"), "401")] {
        match OcppSim::handshake_only(&url, "AUTH01", Some("ocpp1.6"), password).await {
            Err(OcppSimError::Connect(message)) => assert!(message.contains(expected), "{message}"),
            other => panic!("{password:?}: expected 401, got {other:?}"),
        }
    }
    let mut config = OcppSimConfig::new(url.clone(), "AUTH01");
    config.password = Some("correct-horse-1".into());
    let sim = OcppSim::connect(config).await.unwrap();
    assert_eq!(sim.state().boot_response.unwrap()["status"], "Accepted");
    sim.close().await;

    let (status, _) = app
        .patch("/api/chargers/AUTH01", json!({"blocked": true}))
        .await;
    assert_eq!(status, 200);
    match OcppSim::handshake_only(&url, "AUTH01", Some("ocpp1.6"), Some("correct-horse-1")).await {
        Err(OcppSimError::Connect(message)) => assert!(message.contains("403"), "{message}"),
        other => panic!("blocked charger accepted: {other:?}"),
    }
    // With auto-registration on (the default), unknown ids are created.
    let app = spawn_app().await;
    let _sim = connect(&app, "AUTO01").await;
    let (status, _) = app.get("/api/chargers/AUTO01").await;
    assert_eq!(status, 200);
}

#[actix_rt::test]
async fn a_charging_session_is_persisted_and_visible_over_rest() {
    let app = spawn_app().await;
    let (status, _) = app
        .post("/api/id-tags", json!({"tag": "TAG0001", "owner": "Ana"}))
        .await;
    assert_eq!(status, 201);
    let sim = connect(&app, "CP0001").await;
    let boot = sim.state().boot_response.unwrap();
    assert_schema("BootNotificationResponse", &boot);
    assert_eq!(boot["status"], "Accepted");

    let summary = sim.charge(1, "TAG0001", 3).await.unwrap();
    assert_eq!(summary.id_tag_status, "Accepted");
    let (status, tx) = app
        .get(&format!("/api/transactions/{}", summary.transaction_id))
        .await;
    assert_eq!(status, 200, "{tx}");
    assert_eq!(tx["charger"], "CP0001");
    assert_eq!(tx["id_tag"], "TAG0001");
    assert_eq!(tx["meter_start"], summary.meter_start);
    assert_eq!(tx["meter_stop"], summary.meter_stop);
    assert_eq!(tx["active"], false);
    let values = tx["meter_values"].as_array().unwrap();
    // 3 samples × 3 measurands, one row per sampled value.
    assert!(values.len() >= 9, "{}", values.len());
    assert!(values
        .iter()
        .any(|v| v["measurand"] == "Power.Active.Import" && v["unit"] == "W"));
    assert!(values.iter().any(|v| v["phase"] == "L1"));

    let (_, detail) = app.get("/api/chargers/CP0001").await;
    assert_eq!(detail["online"], true);
    assert!(detail["vendor"].is_string() && detail["model"].is_string());
    let connector = detail["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["connector_id"] == 1)
        .cloned()
        .unwrap();
    assert_eq!(connector["status"], "Available");
    assert_eq!(detail["active_transaction"], Value::Null);
    assert!(!detail["last_meter_values"].as_array().unwrap().is_empty());

    let (_, list) = app.get("/api/transactions?active=false").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, list) = app.get("/api/chargers/CP0001/transactions").await;
    assert_eq!(list["items"][0]["id"], summary.transaction_id);

    // The message log pairs each request with its response, newest first.
    let (status, log) = app
        .get("/api/chargers/CP0001/messages?direction=in&action=StartTransaction")
        .await;
    assert_eq!(status, 200);
    let start = &log["items"][0];
    assert_eq!(start["type"], "call");
    assert_eq!(
        start["response"]["payload"]["transactionId"],
        summary.transaction_id
    );
    let (_, page) = app.get("/api/chargers/CP0001/messages?limit=2").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_before"].as_str().unwrap().to_owned();
    let (_, older) = app
        .get(&format!(
            "/api/chargers/CP0001/messages?limit=2&before={cursor}"
        ))
        .await;
    assert!(older["items"][0]["id"].as_i64().unwrap() < page["items"][1]["id"].as_i64().unwrap());

    // Chargers are listed and appear among connected devices.
    let (_, chargers) = app.get("/api/chargers").await;
    assert_eq!(chargers["items"][0]["id"], "CP0001");
    let (_, connected) = app.get("/api/connected").await;
    assert!(connected["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["sn"] == "CP0001" && c["protocol"] == "ocpp1.6"));
}

#[actix_rt::test]
async fn id_tags_decide_authorization() {
    let app = spawn_app().await;
    for (tag, body) in [
        ("GOOD", json!({"tag": "GOOD"})),
        ("BLOCKED", json!({"tag": "BLOCKED", "status": "Blocked"})),
        (
            "OLD",
            json!({"tag": "OLD", "expires_at": "2001-01-01T00:00:00Z"}),
        ),
    ] {
        let (status, created) = app.post("/api/id-tags", body).await;
        assert_eq!(status, 201, "{tag}: {created}");
    }
    let (status, _) = app.post("/api/id-tags", json!({"tag": "GOOD"})).await;
    assert_eq!(status, 409);
    let (status, body) = app
        .post("/api/id-tags", json!({"tag": "X", "status": "Maybe"}))
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("status")));
    let sim = connect(&app, "CP0002").await;
    for (tag, expected) in [
        ("GOOD", "Accepted"),
        ("BLOCKED", "Blocked"),
        ("OLD", "Expired"),
        ("NOBODY", "Invalid"),
    ] {
        let answer = call_ok(&sim, "Authorize", json!({"idTag": tag})).await;
        assert_eq!(answer["idTagInfo"]["status"], expected, "{tag}");
    }
    // A second start with a tag already charging is ConcurrentTx.
    let start = json!({"connectorId": 1, "idTag": "GOOD", "meterStart": 0, "timestamp": "2030-01-01T10:00:00Z"});
    let first = call_ok(&sim, "StartTransaction", start).await;
    assert_eq!(first["idTagInfo"]["status"], "Accepted");
    let second = call_ok(
        &sim,
        "StartTransaction",
        json!({"connectorId": 2, "idTag": "GOOD", "meterStart": 0, "timestamp": "2030-01-01T10:01:00Z"}),
    )
    .await;
    assert_eq!(second["idTagInfo"]["status"], "ConcurrentTx");
    assert_ne!(first["transactionId"], second["transactionId"]);
    let (_, active) = app.get("/api/transactions?active=true").await;
    assert_eq!(active["items"].as_array().unwrap().len(), 2);

    // CRUD and lookup by card UID, case-insensitively.
    let (status, tag) = app
        .patch(
            "/api/id-tags/GOOD",
            json!({"owner": "Bo", "status": "Blocked"}),
        )
        .await;
    assert_eq!((status, tag["owner"].as_str()), (200, Some("Bo")));
    let (status, found) = app
        .post("/api/id-tags/lookup", json!({"uid": "good"}))
        .await;
    assert_eq!((status, found["tag"].as_str()), (200, Some("GOOD")));
    let (status, _) = app
        .post("/api/id-tags/lookup", json!({"uid": "nothing"}))
        .await;
    assert_eq!(status, 404);
    let response = app
        .http
        .delete(app.url("/api/id-tags/OLD"))
        .bearer_auth(crate::helpers::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let (_, list) = app.get("/api/id-tags").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // Unknown tags can be accepted by configuration.
    let app = spawn_app_with(|s| s.ocpp_accept_unknown_tags = true).await;
    let sim = connect(&app, "CP0003").await;
    let answer = call_ok(&sim, "Authorize", json!({"idTag": "STRANGER"})).await;
    assert_eq!(answer["idTagInfo"]["status"], "Accepted");
}

/// Realistic params for every central system → charge point action.
fn every_action() -> Vec<(&'static str, Value)> {
    vec![
        ("Reset", json!({"type": "Soft"})),
        (
            "RemoteStartTransaction",
            json!({"idTag": "TAG0001", "connectorId": 1}),
        ),
        (
            "ChangeConfiguration",
            json!({"key": "HeartbeatInterval", "value": "120"}),
        ),
        (
            "GetConfiguration",
            json!({"key": ["HeartbeatInterval", "NoSuchKey"]}),
        ),
        (
            "ChangeAvailability",
            json!({"connectorId": 2, "type": "Inoperative"}),
        ),
        ("UnlockConnector", json!({"connectorId": 2})),
        ("ClearCache", json!({})),
        ("TriggerMessage", json!({"requestedMessage": "Heartbeat"})),
        (
            "DataTransfer",
            json!({"vendorId": "com.example", "messageId": "x", "data": "hello"}),
        ),
        (
            "GetDiagnostics",
            json!({"location": "ftp://example.com/diag"}),
        ),
        (
            "UpdateFirmware",
            json!({"location": "https://example.com/fw.bin", "retrieveDate": "2030-01-01T00:00:00Z"}),
        ),
        ("GetLocalListVersion", json!({})),
        (
            "SendLocalList",
            json!({"listVersion": 2, "updateType": "Full", "localAuthorizationList": [{"idTag": "TAG0001", "idTagInfo": {"status": "Accepted"}}]}),
        ),
        (
            "ReserveNow",
            json!({"connectorId": 2, "expiryDate": "2030-01-01T00:00:00Z", "idTag": "TAG0001", "reservationId": 7}),
        ),
        ("CancelReservation", json!({"reservationId": 7})),
        (
            "SetChargingProfile",
            json!({"connectorId": 1, "csChargingProfiles": {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute", "chargingSchedule": {"chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7400.0}]}}}),
        ),
        (
            "GetCompositeSchedule",
            json!({"connectorId": 1, "duration": 3600}),
        ),
        ("ClearChargingProfile", json!({"id": 1})),
        ("RemoteStopTransaction", json!({"transactionId": 999_999})),
    ]
}

#[actix_rt::test]
async fn every_central_system_action_is_sent_over_rest_and_answered() {
    let app = spawn_app().await;
    app.post("/api/id-tags", json!({"tag": "TAG0001"})).await;
    let sim = connect(&app, "CP0004").await;
    for (action, params) in every_action() {
        let (status, body) = app
            .post(
                "/api/chargers/CP0004/action",
                json!({"action": action, "params": params}),
            )
            .await;
        assert_eq!(status, 200, "{action}: {body}");
        assert_eq!(body["action"], action);
        assert_eq!(body["outcome"], "result", "{action}: {body}");
        assert_schema(&format!("{action}Response"), &body["payload"]);
        assert!(body["elapsed_ms"].is_u64());
        if action == "Reset" {
            app.eventually("charger boots again after Reset", || async {
                sim.state().boots >= 2 && app.get("/api/chargers/CP0004").await.1["online"] == true
            })
            .await;
        }
    }
    // What the charge point received is exactly what the schemas allow.
    let received = sim.state().calls_received;
    assert!(received.len() >= every_action().len());
    for (action, payload) in &received {
        assert_schema(action, payload);
    }
    // GetConfiguration's answer is kept on the charger.
    let (_, detail) = app.get("/api/chargers/CP0004").await;
    assert!(
        detail["configuration"]["configurationKey"].is_array(),
        "{}",
        detail["configuration"]
    );
    // Snake-case aliases with OCPP's own params.
    let (status, body) = app
        .post(
            "/api/chargers/CP0004/action",
            json!({"action": "unlock_connector", "params": {"connectorId": 1}}),
        )
        .await;
    assert_eq!(
        (status, body["action"].as_str()),
        (200, Some("UnlockConnector")),
        "{body}"
    );
}

#[actix_rt::test]
async fn action_errors_time_outs_and_status_codes() {
    let app = spawn_app_with(|s| s.ocpp_call_timeout = Duration::from_millis(300)).await;
    let (status, body) = app
        .post(
            "/api/chargers/NOPE/action",
            json!({"action": "Reset", "params": {"type": "Soft"}}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    app.put("/api/chargers/OFF001", json!({})).await;
    let (status, body) = app
        .post(
            "/api/chargers/OFF001/action",
            json!({"action": "Reset", "params": {"type": "Soft"}}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("not_connected")),
        "{body}"
    );
    let (status, body) = app
        .post(
            "/api/chargers/OFF001/action",
            json!({"action": "Reset", "params": {"type": "Hard!"}}),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("type")),
        "{body}"
    );
    let (status, body) = app
        .post("/api/chargers/OFF001/action", json!({"action": "Explode"}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unknown_command")),
        "{body}"
    );

    // A charge point that never answers: 504.
    let mut config = OcppSimConfig::new(base(&app), "MUTE01");
    config.answer_calls = false;
    let _mute = OcppSim::connect(config).await.unwrap();
    app.eventually("online", || async {
        app.get("/api/chargers/MUTE01").await.1["online"] == true
    })
    .await;
    let (status, body) = app
        .post(
            "/api/chargers/MUTE01/action",
            json!({"action": "ClearCache"}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (504, Some("device_timeout")),
        "{body}"
    );

    // A CALLERROR from the charge point is an answer, surfaced as outcome: error.
    let mut ws = raw(&app, "RAW001").await;
    app.eventually("online", || async {
        app.get("/api/chargers/RAW001").await.1["online"] == true
    })
    .await;
    let url = app.url("/api/chargers/RAW001/action");
    let call = actix_rt::spawn(async move {
        crate::helpers::read(
            awc::Client::new()
                .post(url)
                .bearer_auth(crate::helpers::TOKEN)
                .send_json(&json!({"action": "reset", "params": {"type": "Hard"}}))
                .await,
        )
        .await
    });
    let frame = next_json(&mut ws).await;
    assert_eq!(
        (frame[0].as_i64(), frame[2].as_str()),
        (Some(2), Some("Reset"))
    );
    assert_schema("Reset", &frame[3]);
    let id = frame[1].as_str().unwrap().to_owned();
    send(
        &mut ws,
        &json!([4, id, "NotSupported", "no hard resets here", {"why": "test"}]).to_string(),
    )
    .await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "error");
    assert_eq!(body["error"]["code"], "NotSupported");
    assert_eq!(body["error"]["details"]["why"], "test");
    // wait=false gives a command id to look up.
    let (status, queued) = app
        .post(
            "/api/chargers/RAW001/action?wait=false",
            json!({"action": "ClearCache"}),
        )
        .await;
    assert_eq!(status, 202);
    let frame = next_json(&mut ws).await;
    send(
        &mut ws,
        &json!([3, frame[1], {"status": "Accepted"}]).to_string(),
    )
    .await;
    let id = queued["id"].as_str().unwrap().to_owned();
    app.eventually("command succeeded", || {
        let (app, id) = (&app, id.clone());
        async move { app.get(&format!("/api/commands/{id}")).await.1["state"] == "succeeded" }
    })
    .await;
}

#[actix_rt::test]
async fn malformed_frames_get_the_right_callerror() {
    let app = spawn_app().await;
    let mut ws = raw(&app, "BAD001").await;
    let cases: Vec<(String, &str, &str)> = vec![
        ("not json".into(), "", "FormationViolation"),
        ("{\"a\":1}".into(), "", "FormationViolation"),
        ("[2, \"m1\"]".into(), "m1", "FormationViolation"),
        (json!([2, "m2", "Explode", {}]).to_string(), "m2", "NotImplemented"),
        (json!([2, "m3", "Heartbeat", []]).to_string(), "m3", "FormationViolation"),
        (json!([2, "m4", "Authorize", {"idTag": {"uid": 5}}]).to_string(), "m4", "TypeConstraintViolation"),
        (json!([2, "m4b", "StartTransaction", {"connectorId": "one", "idTag": "T", "meterStart": 0, "timestamp": "2030-01-01T00:00:00Z"}]).to_string(), "m4b", "TypeConstraintViolation"),
        (json!([2, "m5", "Authorize", {}]).to_string(), "m5", "OccurenceConstraintViolation"),
        (json!([2, "m6", "Authorize", {"idTag": "x".repeat(21)}]).to_string(), "m6", "PropertyConstraintViolation"),
        (json!([2, "m7", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Dancing"}]).to_string(), "m7", "PropertyConstraintViolation"),
    ];
    for (frame, id, code) in cases {
        send(&mut ws, &frame).await;
        let answer = next_json(&mut ws).await;
        assert_eq!(answer[0], 4, "{frame} -> {answer}");
        assert_eq!(answer[1], id, "{frame} -> {answer}");
        assert_eq!(answer[2], code, "{frame} -> {answer}");
    }
    // A repeated messageId in one session is refused, not processed twice.
    let heartbeat = json!([2, "dup-1", "Heartbeat", {}]).to_string();
    send(&mut ws, &heartbeat).await;
    let first = next_json(&mut ws).await;
    assert_eq!(first[0], 3);
    assert_schema("HeartbeatResponse", &first[2]);
    send(&mut ws, &heartbeat).await;
    let again = next_json(&mut ws).await;
    assert_eq!(
        (again[0].as_i64(), again[1].as_str()),
        (Some(4), Some("dup-1")),
        "{again}"
    );
    // A CALLRESULT for an unknown id is dropped; the socket keeps working.
    send(&mut ws, &json!([3, "nobody-asked", {}]).to_string()).await;
    send(&mut ws, &json!([2, "hb-2", "Heartbeat", {}]).to_string()).await;
    let answer = next_json(&mut ws).await;
    assert_eq!(
        (answer[0].as_i64(), answer[1].as_str()),
        (Some(3), Some("hb-2"))
    );
}

#[actix_rt::test]
async fn lenient_quirks_are_accepted_unless_strict() {
    let quirky = json!([2, "q1", "MeterValues", {"connectorId": "1", "meterValue": {"timestamp": "2030-01-01T10:00:00", "sampledValue": {"value": "21.5", "measurand": "Temperature", "unit": "Celcius"}}}]).to_string();
    let app = spawn_app().await;
    let mut ws = raw(&app, "LEN001").await;
    send(&mut ws, &quirky).await;
    let answer = next_json(&mut ws).await;
    assert_eq!(answer[0], 3, "{answer}");
    let (_, detail) = app.get("/api/chargers/LEN001").await;
    let values = detail["last_meter_values"].as_array().unwrap();
    assert!(
        values
            .iter()
            .any(|v| v["unit"] == "Celsius" && v["numeric"] == 21.5),
        "{values:?}"
    );

    let app = spawn_app_with(|s| s.ocpp_strict = true).await;
    let mut ws = raw(&app, "LEN002").await;
    send(&mut ws, &quirky).await;
    let answer = next_json(&mut ws).await;
    assert_eq!(answer[0], 4, "{answer}");
    // Strict: a number where the schema wants a string is a type error.
    send(
        &mut ws,
        &json!([2, "s2", "Authorize", {"idTag": 5}]).to_string(),
    )
    .await;
    let answer = next_json(&mut ws).await;
    assert_eq!(
        (answer[0].as_i64(), answer[2].as_str()),
        (Some(4), Some("TypeConstraintViolation")),
        "{answer}"
    );
}

#[actix_rt::test]
async fn the_newest_connection_of_a_charge_point_wins() {
    let app = spawn_app().await;
    let mut old = raw(&app, "DUP001").await;
    app.eventually("online", || async {
        app.get("/api/chargers/DUP001").await.1["online"] == true
    })
    .await;
    let new = connect(&app, "DUP001").await;
    let closed = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            match old.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.reason.to_string()),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert!(closed.is_some_and(|r| r.contains("replaced")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = app
        .post(
            "/api/chargers/DUP001/action",
            json!({"action": "ClearCache"}),
        )
        .await;
    assert_eq!(
        status, 200,
        "the registration survived the old socket's cleanup: {body}"
    );
    assert!(new
        .state()
        .calls_received
        .iter()
        .any(|(a, _)| a == "ClearCache"));
}
