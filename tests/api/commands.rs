use std::time::Duration;

use gatehouse::sim::tm20::{SimConfig, SimTerminal};
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

async fn sim(app: &TestApp, sn: &str, tweak: impl FnOnce(&mut SimConfig)) -> SimTerminal {
    let mut config = SimConfig::new(app.ws_url("/pub/chat"), sn);
    tweak(&mut config);
    let sim = SimTerminal::connect(config).await.unwrap();
    app.eventually("terminal online", || app.is_online(sn))
        .await;
    sim
}

#[actix_rt::test]
async fn opendoor_reaches_the_terminal_with_aliases_and_ignored_params() {
    let app = spawn_app().await;
    let terminal = sim(&app, "CMD0001", |_| {}).await;
    let (status, body) = app
        .command("CMD0001", "opendoor", json!({"door": 1, "delay": 5}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["command"], "opendoor");
    assert_eq!(body["result"], true);
    assert_eq!(body["reply"]["ret"], "opendoor");
    assert_eq!(body["ignored"], json!(["delay"]));
    assert!(body["elapsed_ms"].is_u64());
    assert!(uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok());
    let state = terminal.state();
    assert_eq!(state.door_opened, 1);
    assert_eq!(
        state.commands_received.last().unwrap(),
        &json!({"cmd":"opendoor","doornum":1})
    );

    // The audit trail.
    let (status, row) = app
        .get(&format!("/api/commands/{}", body["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200);
    assert_eq!(row["state"], "succeeded");
    assert_eq!(row["device"], "CMD0001");
    assert_eq!(row["reply"]["ret"], "opendoor");
    assert!(row["finished_at"].is_string() && row["requested_at"].is_string());
}

#[actix_rt::test]
async fn settime_defaults_to_the_server_clock_and_gettime_reads_it_back() {
    let app = spawn_app().await;
    let terminal = sim(&app, "CMD0002", |_| {}).await;
    let (status, body) = app.command("CMD0002", "settime", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let sent = terminal.state().commands_received.last().cloned().unwrap();
    let cloudtime = sent["cloudtime"].as_str().unwrap().to_owned();
    let parsed = chrono::NaiveDateTime::parse_from_str(&cloudtime, "%Y-%m-%d %H:%M:%S").unwrap();
    let now = chrono::Local::now().naive_local();
    assert!(
        (now - parsed).num_seconds().abs() < 60,
        "{cloudtime} vs {now}"
    );

    app.command(
        "CMD0002",
        "settime",
        json!({"cloudtime": "2030-01-02 03:04:05"}),
    )
    .await;
    let (status, body) = app.command("CMD0002", "gettime", json!(null)).await;
    assert_eq!(status, 200);
    assert_eq!(body["reply"]["time"], "2030-01-02 03:04:05");
}

#[actix_rt::test]
async fn paged_getuserlist_is_followed_to_the_end_merged_and_stored() {
    let app = spawn_app().await;
    let terminal = sim(&app, "CMD0003", |c| {
        c.users = 25;
        c.page_size = 10;
    })
    .await;
    let expected_records: usize = terminal
        .state()
        .users
        .values()
        .map(|u| u.credentials.len())
        .sum();
    let (status, body) = app.command("CMD0003", "getuserlist", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let records = body["reply"]["record"].as_array().unwrap();
    assert_eq!(records.len(), expected_records);
    assert!(
        body["reply"]["pages"].as_u64().unwrap() >= 3,
        "{}",
        body["reply"]["pages"]
    );
    let stn: Vec<_> = terminal
        .state()
        .commands_received
        .iter()
        .map(|c| c["stn"].clone())
        .collect();
    assert_eq!(stn[0], true);
    assert!(stn[1..].iter().all(|s| *s == false));

    let (_, users) = app.get("/api/terminals/CMD0003/users").await;
    assert_eq!(users["items"].as_array().unwrap().len(), 25);
}

#[actix_rt::test]
async fn getnewlog_pages_are_merged_and_stored_as_attendance_logs() {
    let app = spawn_app().await;
    let _terminal = sim(&app, "CMD0004", |c| {
        c.logs = 45;
        c.page_size = 20;
    })
    .await;
    let (status, body) = app.command("CMD0004", "getnewlog", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["record"].as_array().unwrap().len(), 45);
    let (_, logs) = app.get("/api/terminals/CMD0004/logs?limit=1000").await;
    assert_eq!(logs["items"].as_array().unwrap().len(), 45);
    // Read again: the terminal has no new logs, and nothing is duplicated.
    app.command("CMD0004", "getalllog", json!({})).await;
    let (_, logs) = app.get("/api/terminals/CMD0004/logs?limit=1000").await;
    assert_eq!(logs["items"].as_array().unwrap().len(), 45);
}

#[actix_rt::test]
async fn command_status_codes() {
    let app = spawn_app_with(|s| {
        s.command_timeout = Duration::from_millis(300);
        s.command_queue_size = 1;
    })
    .await;
    let _ok = sim(&app, "CODE001", |_| {}).await;

    // 404 unknown terminal
    let (status, body) = app.command("NOSUCH", "opendoor", json!({})).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    // 400 unknown command
    let (status, body) = app.command("CODE001", "fly", json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unknown_command")),
        "{body}"
    );
    // 400 invalid params, naming the field
    let (status, body) = app
        .command("CODE001", "opendoor", json!({"doornum": "x"}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "doornum");
    assert!(
        body["message"].as_str().unwrap().contains("doornum"),
        "{body}"
    );
    let (status, body) = app
        .command("CODE001", "opendoor", json!({"colour": "red"}))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("colour"),
        "{body}"
    );
    let (status, body) = app
        .post("/api/terminals/CODE001/command", json!({"params": {}}))
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("command")),
        "{body}"
    );
    let (status, body) = app
        .post(
            "/api/terminals/CODE001/command",
            json!({"command":"opendoor","extra":1}),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("extra")),
        "{body}"
    );

    // 409 known but not connected
    app.put("/api/terminals/OFFLINE1", json!({})).await;
    let (status, body) = app.command("OFFLINE1", "opendoor", json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("not_connected")),
        "{body}"
    );

    // 504 when the terminal does not answer; 429 when its queue is full.
    let silent = sim(&app, "SILENT1", |c| c.answer_commands = false).await;
    let (status, body) = app.command("SILENT1", "getdevinfo", json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (504, Some("device_timeout")),
        "{body}"
    );
    let (s1, q1) = app
        .post(
            "/api/terminals/SILENT1/command?wait=false",
            json!({"command":"opendoor"}),
        )
        .await;
    let (s2, q2) = app
        .post(
            "/api/terminals/SILENT1/command?wait=false",
            json!({"command":"opendoor"}),
        )
        .await;
    let (s3, b3) = app
        .post(
            "/api/terminals/SILENT1/command?wait=false",
            json!({"command":"opendoor"}),
        )
        .await;
    assert_eq!((s1, s2), (202, 202), "{q1} {q2}");
    assert_eq!(
        (s3, b3["error"].as_str()),
        (429, Some("queue_full")),
        "{b3}"
    );
    // A caller that waits (a live command, settled by the session itself) is refused the same way.
    let (s4, b4) = app.command("SILENT1", "opendoor", json!({})).await;
    assert_eq!(
        (s4, b4["error"].as_str()),
        (429, Some("queue_full")),
        "{b4}"
    );
    // Both refused commands' rows say why, whichever path refused them.
    let (_, failed) = app.get("/api/commands?device=SILENT1&state=failed").await;
    let errors: Vec<&str> = failed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["error"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        errors, ["SILENT1 has too many commands waiting"; 2],
        "{failed}"
    );
    let id = q1["id"].as_str().unwrap().to_owned();
    app.eventually("first queued command times out", || {
        let app = &app;
        let id = id.clone();
        async move { app.get(&format!("/api/commands/{id}")).await.1["state"] == "timed_out" }
    })
    .await;
    assert!(silent.state().commands_received.len() >= 2);

    // 404 unknown command id, 400 malformed id
    let (status, _) = app
        .get(&format!("/api/commands/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/api/commands/not-a-uuid").await;
    assert_eq!(status, 400);
}

#[actix_rt::test]
async fn wait_false_queues_and_the_command_record_follows_the_terminal() {
    let app = spawn_app().await;
    let terminal = sim(&app, "CMD0005", |c| {
        c.reply_delay = Duration::from_millis(300)
    })
    .await;
    let (status, body) = app
        .post(
            "/api/terminals/CMD0005/command?wait=false",
            json!({"command":"getdevinfo"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "queued");
    let id = body["id"].as_str().unwrap().to_owned();
    let (_, row) = app.get(&format!("/api/commands/{id}")).await;
    assert!(
        ["queued", "sent"].contains(&row["state"].as_str().unwrap()),
        "{row}"
    );
    assert_eq!(row["command"], "getdevinfo");
    app.eventually("command succeeds", || {
        let app = &app;
        let id = id.clone();
        async move { app.get(&format!("/api/commands/{id}")).await.1["state"] == "succeeded" }
    })
    .await;
    let (_, row) = app.get(&format!("/api/commands/{id}")).await;
    assert_eq!(row["reply"]["ret"], "getdevinfo");
    assert!(row["sent_at"].is_string());
    // getdevinfo's answer is kept as the terminal's devinfo, next to what reg reported.
    let (_, detail) = app.get("/api/terminals/CMD0005").await;
    assert!(
        detail["devinfo"].get("volume").is_some(),
        "{}",
        detail["devinfo"]
    );
    assert!(
        detail["devinfo"].get("modelname").is_some(),
        "{}",
        detail["devinfo"]
    );
    drop(terminal);
}

#[actix_rt::test]
async fn reset_is_reboot_never_initsys_and_expects_no_reply() {
    let app = spawn_app().await;
    let terminal = sim(&app, "CMD0006", |c| c.users = 3).await;
    let (status, body) = app.command("CMD0006", "reset", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["command"], "reboot");
    assert_eq!(body["result"], true);
    assert_eq!(body["reply"], serde_json::Value::Null);
    // 200 comes as soon as the frame is sent (no reply exists), so the terminal may still be reading it.
    app.eventually("terminal saw reboot", || async {
        terminal
            .state()
            .commands_received
            .iter()
            .any(|c| c["cmd"] == "reboot")
    })
    .await;
    // Users survive (it was not initsys) and the terminal comes back.
    assert_eq!(terminal.state().users.len(), 3);
    app.eventually("terminal re-registers", || async {
        terminal.is_connected() && app.is_online("CMD0006").await
    })
    .await;
}

#[actix_rt::test]
async fn commands_to_one_terminal_run_one_at_a_time_in_order() {
    let app = spawn_app().await;
    let mut terminal =
        crate::helpers::RawTerminal::register(&app.ws_url("/pub/chat"), "CMD0007").await;
    app.eventually("terminal online", || app.is_online("CMD0007"))
        .await;
    // Queued one after the other (each 202 means "in the queue"), so their order is defined.
    let mut ids = Vec::new();
    for enrollid in 1..=5 {
        let (status, body) = app
            .post(
                "/api/terminals/CMD0007/command?wait=false",
                json!({"command":"getusername","params":{"enrollid": enrollid}}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    for enrollid in 1..=5 {
        let command = terminal.recv_json().await;
        assert_eq!(command["cmd"], "getusername");
        assert_eq!(command["enrollid"], enrollid, "FIFO order");
        // Nothing else is sent while this one is unanswered.
        let next = tokio::time::timeout(
            Duration::from_millis(200),
            futures_util::StreamExt::next(&mut terminal.ws),
        )
        .await;
        assert!(
            next.is_err(),
            "a second command was sent before the first was answered: {next:?}"
        );
        terminal
            .send(
                &json!({"ret":"getusername","result":true,"record":format!("N{enrollid}")})
                    .to_string(),
            )
            .await;
    }
    for (i, id) in ids.iter().enumerate() {
        app.eventually("command finished", || {
            let (app, id) = (&app, id.clone());
            async move { app.get(&format!("/api/commands/{id}")).await.1["state"] == "succeeded" }
        })
        .await;
        let (_, row) = app.get(&format!("/api/commands/{id}")).await;
        assert_eq!(
            row["reply"]["record"],
            format!("N{}", i + 1),
            "each reply matched to its own command"
        );
    }
}

/// A waiting caller's command is written once, when it finishes (behind the answer): while the terminal has
/// not answered it is listed and readable from memory as `sent`, and once answered its whole row reaches the
/// database.
#[actix_rt::test]
async fn a_live_command_is_visible_in_flight_and_stored_once_answered() {
    let app = spawn_app().await;
    let mut terminal =
        crate::helpers::RawTerminal::register(&app.ws_url("/pub/chat"), "LIVE001").await;
    app.eventually("terminal online", || app.is_online("LIVE001"))
        .await;
    let caller = app.post(
        "/api/terminals/LIVE001/command",
        json!({"command":"getusername","params":{"enrollid": 7}}),
    );
    let device = async {
        let sent = terminal.recv_json().await;
        assert_eq!(sent["cmd"], "getusername");

        let (status, listed) = app.get("/api/commands?device=LIVE001").await;
        assert_eq!(status, 200, "{listed}");
        let items = listed["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{listed}");
        assert_eq!(items[0]["state"], "sent", "{listed}");
        let id = items[0]["id"].as_str().unwrap().to_owned();
        let (status, row) = app.get(&format!("/api/commands/{id}")).await;
        assert_eq!(
            (status, row["state"].as_str()),
            (200, Some("sent")),
            "{row}"
        );
        let (_, succeeded) = app
            .get("/api/commands?device=LIVE001&state=succeeded")
            .await;
        assert_eq!(succeeded["items"], json!([]), "{succeeded}");

        terminal
            .send(&json!({"ret":"getusername","result":true,"record":"Seven"}).to_string())
            .await;
        id
    };
    let ((status, answer), id) = futures_util::join!(caller, device);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], id.as_str());

    // Read from the database itself, not through the node's memory: the row is written behind the answer.
    use sea_orm::EntityTrait;
    let db = app.db().await;
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    app.eventually("the finished command is stored", || {
        let db = &db;
        async move {
            entity::command::Entity::find_by_id(uuid)
                .one(db)
                .await
                .unwrap()
                .is_some()
        }
    })
    .await;
    let stored = entity::command::Entity::find_by_id(uuid)
        .one(&db)
        .await
        .unwrap()
        .expect("the finished command is stored");
    assert_eq!(stored.state, "succeeded");
    assert_eq!(stored.command, "getusername");
    assert_eq!(stored.params["enrollid"], 7);
    assert_eq!(stored.reply.as_ref().unwrap()["record"], "Seven");
    assert!(stored.sent_at.is_some() && stored.finished_at.is_some());
    let (_, listed) = app
        .get("/api/commands?device=LIVE001&state=succeeded")
        .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
}
