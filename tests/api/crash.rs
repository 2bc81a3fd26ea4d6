//! Crash safety: a node killed with SIGKILL in the middle of a stream of `sendlog` batches (terminals) and
//! `MeterValues` (charge points) loses nothing it acknowledged, stores nothing twice when the devices re-send
//! after the restart, and holds nothing that was never sent. Queued commands survive a SIGKILL too, and money
//! (room balances against appliance reservations) neither vanishes nor is spent twice.
//! Runs on SQLite, and on PostgreSQL when `TEST_DATABASE_URL` is set.

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sea_orm::{ColumnTrait, Database, EntityTrait, QueryFilter};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{free_port, fresh_database, TOKEN};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const TERMINALS: usize = 6;
const CHARGERS: usize = 3;
const RECORDS_PER_BATCH: u32 = 5;

/// A `gatehouse serve` process on a fixed port, so the restarted node is where the devices reconnect.
struct Node {
    child: Child,
}

impl Node {
    async fn start(port: u16, database_url: &str) -> Node {
        let child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("serve")
            .env("BILLING_JWT_SECRET", "crash-test-secret")
            .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", database_url)
            .env("GATEHOUSE_API_TOKEN", TOKEN)
            .env("SXDM_BIND", "off")
            .env("DEVICE_FRAME_RATE", "0")
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts");
        let node = Node { child };
        let client = awc::Client::new();
        for _ in 0..400 {
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
        panic!("node on {port} did not become ready");
    }

    fn kill_9(&mut self) {
        let status = Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One batch a device sent: its records' natural keys.
#[derive(Clone, Debug)]
struct Batch {
    index: u32,
    keys: Vec<(i64, String)>,
    frame: String,
}

/// What a device knows after the crash: batches acknowledged, and the one in flight (sent, no answer).
#[derive(Default, Debug)]
struct Ledger {
    acked: Vec<Batch>,
    in_flight: Option<Batch>,
}

fn log_batch(sn: &str, index: u32) -> Batch {
    let mut keys = Vec::new();
    let mut records = Vec::new();
    for r in 0..RECORDS_PER_BATCH {
        let n = index * RECORDS_PER_BATCH + r;
        let enrollid = i64::from(n % 50 + 1);
        let time = chrono::NaiveDate::from_ymd_opt(2024, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            + chrono::Duration::seconds(i64::from(n));
        let time = time.format("%Y-%m-%d %H:%M:%S").to_string();
        records
            .push(json!({"enrollid": enrollid, "time": time, "mode": 1, "inout": 0, "event": 0}));
        keys.push((enrollid, time));
    }
    let frame = json!({"cmd": "sendlog", "sn": sn, "count": RECORDS_PER_BATCH, "logindex": index, "record": records})
        .to_string();
    Batch { index, keys, frame }
}

fn meter_batch(index: u32) -> Batch {
    let mut keys = Vec::new();
    let mut values = Vec::new();
    for r in 0..RECORDS_PER_BATCH {
        let n = index * RECORDS_PER_BATCH + r;
        let at = chrono::DateTime::from_timestamp(1_900_000_000 + i64::from(n), 0).unwrap();
        let at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        values.push(json!({"timestamp": at, "sampledValue": [{"value": n.to_string(), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}));
        keys.push((i64::from(n), at));
    }
    let frame =
        json!([2, format!("mv-{index}"), "MeterValues", {"connectorId": 1, "meterValue": values}])
            .to_string();
    Batch { index, keys, frame }
}

async fn connect_terminal(port: u16, sn: &str) -> Option<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/pub/chat"))
        .await
        .ok()?;
    ws.send(Message::text(
        json!({"cmd": "reg", "sn": sn, "devinfo": {"modelname": "crash", "firmware": "1"}})
            .to_string(),
    ))
    .await
    .ok()?;
    let answer = next_json(&mut ws).await?;
    (answer["ret"] == "reg" && answer["result"] == true).then_some(ws)
}

async fn connect_charger(port: u16, id: &str) -> Option<Ws> {
    let mut request = format!("ws://127.0.0.1:{port}/ocpp/{id}")
        .into_client_request()
        .ok()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "ocpp1.6".parse().ok()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.ok()?;
    ws.send(Message::text(
        json!([2, "boot", "BootNotification", {"chargePointVendor": "crash", "chargePointModel": "test"}])
            .to_string(),
    ))
    .await
    .ok()?;
    let answer = next_json(&mut ws).await?;
    (answer[0] == 3).then_some(ws)
}

/// The next JSON text frame; `None` when the socket failed or closed (the node died).
async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .ok()??
            .ok()?;
        match frame {
            Message::Text(text) => return serde_json::from_str(&text).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

fn acknowledges(answer: &Value, batch: &Batch, charger: bool) -> bool {
    if charger {
        answer[0] == 3 && answer[1] == format!("mv-{}", batch.index)
    } else {
        answer["ret"] == "sendlog" && answer["result"] == true && answer["logindex"] == batch.index
    }
}

/// Sends batches one after another (each waits for its answer) until the socket dies.
async fn stream_until_crash(mut ws: Ws, make: impl Fn(u32) -> Batch, charger: bool) -> Ledger {
    let mut ledger = Ledger::default();
    for index in 0.. {
        let batch = make(index);
        ledger.in_flight = Some(batch.clone());
        if ws.send(Message::text(batch.frame.clone())).await.is_err() {
            return ledger;
        }
        match next_json(&mut ws).await {
            Some(answer) => {
                assert!(
                    acknowledges(&answer, &batch, charger),
                    "unexpected answer {answer}"
                );
                ledger.in_flight = None;
                ledger.acked.push(batch);
            }
            None => return ledger,
        }
    }
    ledger
}

/// After the restart: re-send what was in flight and, as a device that lost our ack would, the last acked
/// batch again.
async fn resend(mut ws: Ws, ledger: &Ledger, charger: bool) {
    let again: Vec<&Batch> = ledger
        .acked
        .last()
        .into_iter()
        .chain(&ledger.in_flight)
        .collect();
    for batch in again {
        ws.send(Message::text(batch.frame.clone())).await.unwrap();
        let answer = next_json(&mut ws)
            .await
            .expect("the restarted node answers");
        assert!(acknowledges(&answer, batch, charger), "{answer}");
    }
    let _ = ws.close(None).await;
}

fn keys_of<'a>(batches: impl Iterator<Item = &'a Batch>) -> BTreeSet<(i64, String)> {
    batches.flat_map(|b| b.keys.iter().cloned()).collect()
}

/// The stored natural keys of a terminal's logs / a charger's meter values.
async fn stored(
    db: &sea_orm::DatabaseConnection,
    device: &str,
    charger: bool,
) -> Vec<(i64, String)> {
    if charger {
        let Some(cp) = entity::charger::Entity::find()
            .filter(entity::charger::Column::ChargePointId.eq(device))
            .one(db)
            .await
            .unwrap()
        else {
            return Vec::new();
        };
        entity::meter_value::Entity::find()
            .filter(entity::meter_value::Column::ChargerId.eq(cp.id))
            .all(db)
            .await
            .unwrap()
            .into_iter()
            .map(|m| {
                let n: i64 = m.value.parse().unwrap();
                (
                    n,
                    m.timestamp
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                )
            })
            .collect()
    } else {
        let Some(t) = entity::terminal::Entity::find()
            .filter(entity::terminal::Column::Sn.eq(device))
            .one(db)
            .await
            .unwrap()
        else {
            return Vec::new();
        };
        entity::attendance_log::Entity::find()
            .filter(entity::attendance_log::Column::TerminalId.eq(t.id))
            .all(db)
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.enrollid, l.time.format("%Y-%m-%d %H:%M:%S").to_string()))
            .collect()
    }
}

#[actix_rt::test]
async fn sigkill_during_ingest_loses_nothing_acknowledged_and_duplicates_nothing() {
    let (database_url, _dir) = fresh_database().await;
    let port = free_port();
    let mut node = Node::start(port, &database_url).await;

    let mut devices: Vec<(String, bool)> = (0..TERMINALS)
        .map(|i| (format!("CRASH{i:03}"), false))
        .collect();
    devices.extend((0..CHARGERS).map(|i| (format!("CRASHCP{i:02}"), true)));
    let mut streams = Vec::new();
    for (device, charger) in &devices {
        let ws = if *charger {
            connect_charger(port, device).await
        } else {
            connect_terminal(port, device).await
        }
        .expect("device connects");
        let (device, charger) = (device.clone(), *charger);
        streams.push(tokio::spawn(async move {
            let ledger = if charger {
                stream_until_crash(ws, meter_batch, true).await
            } else {
                let sn = device.clone();
                stream_until_crash(ws, move |i| log_batch(&sn, i), false).await
            };
            (device, charger, ledger)
        }));
    }
    // Let every device get batches acknowledged, then pull the plug mid-stream.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill_9();
    let mut ledgers: HashMap<String, (bool, Ledger)> = HashMap::new();
    for stream in streams {
        let (device, charger, ledger) = stream.await.unwrap();
        assert!(
            !ledger.acked.is_empty(),
            "{device} got no batch acknowledged before the crash"
        );
        ledgers.insert(device, (charger, ledger));
    }

    // Right after the crash: everything acknowledged is there, nothing that was never sent is.
    let db = Database::connect(&database_url).await.unwrap();
    if database_url.starts_with("sqlite") {
        // The durability settings the README documents, as the server's own pool sets them.
        let store = gatehouse::store::Store::connect(&database_url)
            .await
            .unwrap();
        let pragma = |name: &'static str| {
            let conn = store.connection().clone();
            async move {
                let row = sea_orm::ConnectionTrait::query_one_raw(
                    &conn,
                    sea_orm::Statement::from_string(
                        sea_orm::DbBackend::Sqlite,
                        format!("PRAGMA {name}"),
                    ),
                )
                .await
                .unwrap()
                .unwrap();
                row.try_get_by_index::<String>(0)
                    .or_else(|_| row.try_get_by_index::<i64>(0).map(|n| n.to_string()))
                    .unwrap()
            }
        };
        assert_eq!(pragma("journal_mode").await, "wal");
        assert_eq!(pragma("synchronous").await, "2", "synchronous=FULL");
    }
    for (device, (charger, ledger)) in &ledgers {
        let rows = stored(&db, device, *charger).await;
        let set: BTreeSet<_> = rows.iter().cloned().collect();
        assert_eq!(set.len(), rows.len(), "{device}: duplicate rows");
        let acked = keys_of(ledger.acked.iter());
        assert!(acked.is_subset(&set), "{device}: acknowledged records lost");
        let sent = keys_of(ledger.acked.iter().chain(&ledger.in_flight));
        assert!(set.is_subset(&sent), "{device}: rows nobody sent");
    }

    // Restart; each device re-sends what was in flight and its last acknowledged batch.
    let _node = Node::start(port, &database_url).await;
    for (device, (charger, ledger)) in &ledgers {
        let ws = if *charger {
            connect_charger(port, device).await
        } else {
            connect_terminal(port, device).await
        }
        .expect("device reconnects to the restarted node");
        resend(ws, ledger, *charger).await;
    }
    let mut total = 0;
    for (device, (charger, ledger)) in &ledgers {
        let rows = stored(&db, device, *charger).await;
        let set: BTreeSet<_> = rows.iter().cloned().collect();
        let sent = keys_of(ledger.acked.iter().chain(&ledger.in_flight));
        assert_eq!(
            set.len(),
            rows.len(),
            "{device}: duplicate rows after re-sending"
        );
        assert_eq!(
            set, sent,
            "{device}: stored exactly what was sent, each once"
        );
        total += rows.len();
    }
    assert!(total >= (TERMINALS + CHARGERS) * RECORDS_PER_BATCH as usize);
    let in_flight = ledgers
        .values()
        .filter(|(_, l)| l.in_flight.is_some())
        .count();
    eprintln!("crash test: {total} records stored exactly once; {in_flight} devices had a batch in flight at the kill");
}

#[actix_rt::test]
async fn queued_commands_survive_a_sigkill() {
    let (database_url, _dir) = fresh_database().await;
    let port = free_port();
    let mut node = Node::start(port, &database_url).await;
    let client = awc::Client::new();
    // The terminal must be known for its commands to queue.
    let ws = connect_terminal(port, "CRASHQ1").await.unwrap();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids = Vec::new();
    for command in ["gettime", "getdevinfo", "opendoor"] {
        let mut response = client
            .post(format!(
                "http://127.0.0.1:{port}/api/terminals/CRASHQ1/command?deliver=queued"
            ))
            .bearer_auth(TOKEN)
            .send_json(&json!({"command": command, "params": {}}))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let body: Value = response.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    node.kill_9();
    let _node = Node::start(port, &database_url).await;
    let mut ws = connect_terminal(port, "CRASHQ1").await.unwrap();
    // The three arrive in order; the terminal answers each.
    for expected in ["gettime", "getdevinfo", "opendoor"] {
        let frame = next_json(&mut ws).await.expect("a queued command");
        assert_eq!(frame["cmd"], expected);
        let reply = match expected {
            "gettime" => json!({"ret": "gettime", "result": true, "time": "2024-01-01 00:00:00"}),
            "getdevinfo" => json!({"ret": "getdevinfo", "result": true, "deviceid": 1}),
            _ => json!({"ret": expected, "result": true}),
        };
        ws.send(Message::text(reply.to_string())).await.unwrap();
    }
    for id in ids {
        let mut state = String::new();
        for _ in 0..100 {
            let mut response = client
                .get(format!("http://127.0.0.1:{port}/api/commands/{id}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            state = body["state"].as_str().unwrap_or_default().to_owned();
            if state == "succeeded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(state, "succeeded", "command {id}");
    }
}

/// One JSON call to the node; `None` when the node died under it.
async fn call_json(
    client: &awc::Client,
    port: u16,
    method: &str,
    path: &str,
    admin: bool,
    body: Value,
) -> Option<(u16, Value)> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut request = client.request(
        awc::http::Method::from_bytes(method.as_bytes()).unwrap(),
        url,
    );
    if admin {
        request = request.bearer_auth(TOKEN);
    }
    let mut response = if method == "GET" {
        request.send().await.ok()?
    } else {
        request.send_json(&body).await.ok()?
    };
    let status = response.status().as_u16();
    let body = response.json::<Value>().limit(8 << 20).await.ok()?;
    Some((status, body))
}

#[actix_rt::test]
async fn sigkill_between_reservation_and_answer_neither_loses_nor_doubles_a_cent() {
    const INITIAL: i64 = 100_000;
    const APPLIANCES: usize = 24;
    let (database_url, _dir) = fresh_database().await;
    let port = free_port();
    let mut node = Node::start(port, &database_url).await;
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let admin = |method: &'static str, path: String, body: Value| {
        let client = client.clone();
        async move {
            call_json(&client, port, method, &path, true, body)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        admin(
            "POST",
            "/api/rooms".into(),
            json!({"key": 777, "balance": INITIAL})
        )
        .await
        .0,
        201
    );
    assert_eq!(
        admin(
            "POST",
            "/api/endpoints".into(),
            json!({"id": 1, "name": "crash"})
        )
        .await
        .0,
        201
    );
    for i in 0..APPLIANCES {
        let (status, _) = admin(
            "POST",
            "/api/appliances".into(),
            json!({"name": format!("w{i}"), "price_per_unit": 1}),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (_, totp) = admin("POST", "/api/rooms/777/totp".into(), json!({})).await;
    let secret = totp["secret"].as_str().unwrap().to_owned();
    let (_, challenge) = call_json(
        &client,
        port,
        "POST",
        "/api/auth/challenge/",
        false,
        json!({"room_num": 777, "endpoint_id": 1}),
    )
    .await
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let code = gatehouse::billing::totp::code_at(&secret, now).unwrap();
    let (status, access) = call_json(
        &client,
        port,
        "POST",
        "/api/auth/verify/",
        false,
        json!({"token": challenge["token"], "auth_code": code}),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{access}");
    let access = access["token"].as_str().unwrap().to_owned();

    // Many starts at once (each reserves 20.00 = 2000 cents); the node dies while they are being answered.
    let starts = (0..APPLIANCES).map(|i| {
        let client = client.clone();
        let access = access.clone();
        async move {
            call_json(&client, port, "POST", "/api/appliance/start/", false,
                      json!({"token": access, "appliance_name": format!("w{i}"), "units": 300, "price": 20})).await
        }
    });
    let racing = futures_util::future::join_all(starts);
    let killer = async {
        tokio::time::sleep(Duration::from_millis(40)).await;
        node.kill_9();
    };
    let (answers, ()) = tokio::join!(racing, killer);
    let acknowledged: Vec<String> = answers
        .iter()
        .flatten()
        .filter(|(status, _)| *status == 201)
        .map(|(_, body)| body["token"].as_str().unwrap().to_owned())
        .collect();

    let _node = Node::start(port, &database_url).await;
    let (_, room) = admin("GET", "/api/rooms/777".into(), json!(null)).await;
    let (_, runs) = admin("GET", "/api/runs?room=777".into(), json!(null)).await;
    let runs = runs["items"].as_array().unwrap().clone();
    let reserved: i64 = runs
        .iter()
        .filter(|r| r["state"] == "running")
        .map(|r| r["initial_price"].as_i64().unwrap())
        .sum();
    // Every cent is either in the balance or reserved by a run that exists; every acknowledged start has one.
    assert_eq!(
        room["balance"].as_i64().unwrap() + reserved,
        INITIAL,
        "room {room}, runs {runs:?}"
    );
    assert!(runs.len() >= acknowledged.len());
    eprintln!(
        "money crash test: {} starts acknowledged, {} runs committed before the kill",
        acknowledged.len(),
        runs.len()
    );

    // Acknowledged runs finish through the endpoint (free of charge), the others an admin aborts: all back.
    for token in &acknowledged {
        let (status, body) = call_json(
            &client,
            port,
            "POST",
            "/api/appliance/finish/",
            false,
            json!({"token": token, "units": 0, "price": 0, "aborted": true}),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    for run in runs.iter().filter(|r| r["state"] == "running") {
        let (status, _) = admin("POST", format!("/api/runs/{}/abort", run["id"]), json!({})).await;
        assert!(status == 200 || status == 409, "abort answered {status}");
    }
    let (_, room) = admin("GET", "/api/rooms/777".into(), json!(null)).await;
    assert_eq!(
        room["balance"].as_i64().unwrap(),
        INITIAL,
        "every reservation came back exactly once"
    );
}
