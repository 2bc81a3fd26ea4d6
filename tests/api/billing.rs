//! Rooms, appliances and payments: the endpoint devices' TOTP login and pay-per-use runs, the money rules
//! (reservation, capped refund, no double finish, no overdraft under concurrency), bank payment imports (REST,
//! CLI, periodic fetch) and the admin API.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gatehouse::billing::totp;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{read, spawn_app, spawn_app_with, TestApp, READ_TIMEOUT, TOKEN};

const BILLING_SECRET: &str = "test-billing-secret";
const ROOM: i64 = 12345;
const ENDPOINT: i64 = 1;

async fn billing_app() -> TestApp {
    spawn_app_with(|s| s.billing.jwt_secret = Some(BILLING_SECRET.into())).await
}

/// An endpoint device's call: no admin token.
async fn device_post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    read(app.http.post(app.url(path)).send_json(&body).await).await
}

async fn delete(app: &TestApp, path: &str) -> (u16, Value) {
    read(
        app.http
            .delete(app.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await,
    )
    .await
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn create_room(app: &TestApp, key: i64, balance: i64) {
    let (status, body) = app
        .post("/api/rooms", json!({"key": key, "balance": balance}))
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn create_endpoint(app: &TestApp, id: i64) {
    let (status, body) = app
        .post(
            "/api/endpoints",
            json!({"id": id, "name": format!("laundry {id}")}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn create_appliance(app: &TestApp, name: &str, price_per_unit: i64) {
    let (status, body) = app
        .post(
            "/api/appliances",
            json!({"name": name, "price_per_unit": price_per_unit}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Rotates the room's TOTP secret and returns it.
async fn totp_secret(app: &TestApp, room: i64) -> String {
    let (status, body) = app
        .post(&format!("/api/rooms/{room}/totp"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["secret"].as_str().unwrap().to_owned()
}

async fn balance(app: &TestApp, room: i64) -> i64 {
    let (status, body) = app.get(&format!("/api/rooms/{room}")).await;
    assert_eq!(status, 200, "{body}");
    body["balance"].as_i64().unwrap()
}

async fn challenge(app: &TestApp, room: i64, endpoint: i64) -> String {
    let (status, body) = device_post(
        app,
        "/api/auth/challenge/",
        json!({"room_num": room, "endpoint_id": endpoint}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn verify(app: &TestApp, token: &str, code: u32) -> (u16, Value) {
    device_post(
        app,
        "/api/auth/verify/",
        json!({"token": token, "auth_code": code}),
    )
    .await
}

/// Challenge and verify with the room's code `steps_ahead` 30 s steps from now (0: the current one; a second
/// login of one room within a step needs 1, as the current code was used): the access token.
async fn login(app: &TestApp, room: i64, endpoint: i64, secret: &str, steps_ahead: u64) -> String {
    let challenge = challenge(app, room, endpoint).await;
    let code = totp::code_at(secret, unix_now() + 30 * steps_ahead).unwrap();
    let (status, body) = verify(app, &challenge, code).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn start(
    app: &TestApp,
    access: &str,
    appliance: &str,
    units: i64,
    price: Value,
) -> (u16, Value) {
    device_post(
        app,
        "/api/appliance/start/",
        json!({"token": access, "appliance_name": appliance, "units": units, "price": price}),
    )
    .await
}

async fn finish(
    app: &TestApp,
    token: &str,
    units: i64,
    price: Value,
    aborted: bool,
) -> (u16, Value) {
    device_post(
        app,
        "/api/appliance/finish/",
        json!({"token": token, "units": units, "price": price, "aborted": aborted}),
    )
    .await
}

/// A billing node with room `ROOM` holding `balance` cents, endpoint `ENDPOINT`, a washer and a dryer, and
/// the room's TOTP secret.
async fn laundry(balance: i64) -> (TestApp, String) {
    let app = billing_app().await;
    create_room(&app, ROOM, balance).await;
    create_endpoint(&app, ENDPOINT).await;
    create_appliance(&app, "washer", 25).await;
    create_appliance(&app, "dryer", 15).await;
    let secret = totp_secret(&app, ROOM).await;
    (app, secret)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe(app: &TestApp, topics: &[&str]) -> Ws {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(app.ws_url(&format!("/ws/events?token={TOKEN}")))
            .await
            .unwrap();
    assert_eq!(next_frame(&mut ws).await["op"], "welcome");
    ws.send(Message::text(
        json!({"op": "subscribe", "topics": topics}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_frame(&mut ws).await["op"], "subscribed");
    ws
}

async fn next_frame(ws: &mut Ws) -> Value {
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

#[actix_rt::test]
async fn a_resident_logs_in_starts_and_finishes_a_run() {
    let (app, secret) = laundry(5000).await;
    let mut events = subscribe(&app, &["run"]).await;

    let challenge_token = challenge(&app, ROOM, ENDPOINT).await;
    let code = totp::code_at(&secret, unix_now()).unwrap();
    let (status, verified) = verify(&app, &challenge_token, code).await;
    assert_eq!(status, 200, "{verified}");
    assert_eq!(verified["balance"], 5000);
    assert_eq!(
        verified["appliances"],
        json!([{"name": "dryer", "value": 15}, {"name": "washer", "value": 25}])
    );
    let access = verified["token"].as_str().unwrap();

    // The old contract: price in currency units, multiplied by 100.
    let (status, started) = start(&app, access, "washer", 300, json!(20)).await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["newbalance"], 3000);
    assert_eq!(balance(&app, ROOM).await, 3000);
    let event = next_frame(&mut events).await;
    assert_eq!(
        (event["type"].as_str(), event["kind"].as_str()),
        (Some("run"), Some("billing"))
    );
    assert_eq!(event["data"]["state"], "running");
    assert_eq!(event["data"]["initial_price"], 2000);

    let (_, running) = app
        .get(&format!("/api/runs?room={ROOM}&state=running"))
        .await;
    assert_eq!(running["items"].as_array().unwrap().len(), 1);

    // Without the firmware's trailing slash too.
    let (status, finished) = device_post(
        &app,
        "/api/appliance/finish",
        json!({"token": started["token"], "units": 250, "price": 15, "aborted": false}),
    )
    .await;
    assert_eq!(status, 200, "{finished}");
    assert_eq!(finished, json!({"status": "finished"}));
    assert_eq!(balance(&app, ROOM).await, 3500);
    let event = next_frame(&mut events).await;
    assert_eq!(event["data"]["state"], "finished");
    assert_eq!(event["data"]["refund"], 500);

    let (_, runs) = app.get(&format!("/api/runs?room={ROOM}")).await;
    let run = &runs["items"][0];
    assert_eq!(
        (
            run["state"].as_str(),
            run["initial_units"].as_i64(),
            run["initial_price"].as_i64(),
            run["final_units"].as_i64(),
            run["final_price"].as_i64(),
            run["refund"].as_i64()
        ),
        (
            Some("finished"),
            Some(300),
            Some(2000),
            Some(250),
            Some(1500),
            Some(500)
        )
    );
    assert!(run["finished_at"].is_string());

    // The appliance is free again (for a new session: the current code was used, the next one works).
    let access = login(&app, ROOM, ENDPOINT, &secret, 1).await;
    let (status, body) = start(&app, &access, "washer", 10, json!("0.5")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["newbalance"], 3450);
}

#[actix_rt::test]
async fn wrong_old_and_replayed_codes_are_refused() {
    let (app, secret) = laundry(1000).await;
    let now = unix_now();
    let near: Vec<u32> = [now - 30, now, now + 30]
        .iter()
        .map(|t| totp::code_at(&secret, *t).unwrap())
        .collect();
    let wrong = (0..1_000_000u32)
        .map(|i| (near[1] + 1 + i) % 1_000_000)
        .find(|c| !near.contains(c))
        .unwrap();
    let token = challenge(&app, ROOM, ENDPOINT).await;
    let (status, body) = verify(&app, &token, wrong).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_token");

    // Three steps old: outside the ±1 step window (unless it happens to equal a current code, 1 in 300,000).
    let old = totp::code_at(&secret, now - 90).unwrap();
    let (status, body) = verify(&app, &token, old).await;
    assert_eq!(
        status,
        if near.contains(&old) { 200 } else { 401 },
        "{body}"
    );

    // The right code works once (the challenge token itself may be reused until it expires) …
    let code = totp::code_at(&secret, unix_now()).unwrap();
    let (status, body) = verify(&app, &token, code).await;
    assert_eq!(status, 200, "{body}");
    // … and never again, not even through a fresh challenge.
    let fresh = challenge(&app, ROOM, ENDPOINT).await;
    let (status, body) = verify(&app, &fresh, code).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["message"], "this code was used already");

    // A room without a secret cannot log in at all.
    create_room(&app, 777, 0).await;
    let token = challenge(&app, 777, ENDPOINT).await;
    let (status, _) = verify(&app, &token, code).await;
    assert_eq!(status, 401);

    // Unknown rooms and endpoints get no challenge.
    let (status, _) = device_post(
        &app,
        "/api/auth/challenge/",
        json!({"room_num": 999, "endpoint_id": ENDPOINT}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = device_post(
        &app,
        "/api/auth/challenge",
        json!({"room_num": ROOM, "endpoint_id": 99}),
    )
    .await;
    assert_eq!(status, 404);
}

/// A code that is none of the room's codes around now.
fn wrong_code(secret: &str) -> u32 {
    let now = unix_now();
    let near: Vec<u32> = [now - 30, now, now + 30, now + 60]
        .iter()
        .map(|t| totp::code_at(secret, *t).unwrap())
        .collect();
    (0..1_000_000u32).find(|c| !near.contains(c)).unwrap()
}

#[actix_rt::test]
async fn guessing_codes_locks_the_room_login_for_a_while() {
    let (app, secret) = laundry(1000).await;
    // The failure count lives in 10-minute windows; do not start right before one ends.
    let into_window = unix_now() % 600;
    if into_window > 590 {
        tokio::time::sleep(Duration::from_secs(601 - into_window)).await;
    }
    let token = challenge(&app, ROOM, ENDPOINT).await;
    // Ten wrong codes at once: parallel guesses count like sequential ones.
    let guesses = (0..10).map(|_| verify(&app, &token, wrong_code(&secret)));
    for (status, body) in futures_util::future::join_all(guesses).await {
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["message"], "wrong or expired code");
    }
    // Now even the right code is refused, for this room only.
    let code = totp::code_at(&secret, unix_now()).unwrap();
    let (status, body) = verify(&app, &token, code).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("too many"),
        "{body}"
    );
    create_room(&app, 777, 0).await;
    let other_secret = totp_secret(&app, 777).await;
    login(&app, 777, ENDPOINT, &other_secret, 0).await;
    // Rotating the secret (an admin's act) starts the count afresh.
    let rotated = totp_secret(&app, ROOM).await;
    login(&app, ROOM, ENDPOINT, &rotated, 0).await;
}

#[actix_rt::test]
async fn expired_challenge_and_access_tokens_are_refused() {
    let app = spawn_app_with(|s| {
        s.billing.jwt_secret = Some(BILLING_SECRET.into());
        s.billing.challenge_ttl = Duration::from_secs(1);
        s.billing.access_ttl = Duration::from_secs(1);
    })
    .await;
    create_room(&app, ROOM, 5000).await;
    create_endpoint(&app, ENDPOINT).await;
    create_appliance(&app, "washer", 25).await;
    let secret = totp_secret(&app, ROOM).await;

    let token = challenge(&app, ROOM, ENDPOINT).await;
    let access = login(&app, ROOM, ENDPOINT, &secret, 0).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let code = totp::code_at(&secret, unix_now() + 30).unwrap();
    let (status, body) = verify(&app, &token, code).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    let (status, body) = start(&app, &access, "washer", 1, json!(1)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(balance(&app, ROOM).await, 5000);
}

#[actix_rt::test]
async fn tokens_are_refused_for_any_other_purpose() {
    let (app, secret) = laundry(5000).await;
    let challenge_token = challenge(&app, ROOM, ENDPOINT).await;
    let access = login(&app, ROOM, ENDPOINT, &secret, 0).await;
    let (status, started) = start(&app, &access, "washer", 10, json!(1)).await;
    assert_eq!(status, 201, "{started}");
    let start_token = started["token"].as_str().unwrap();

    // A challenge token cannot start or finish; an access token cannot verify or finish; a start token
    // cannot verify or start.
    let (status, body) = start(&app, &challenge_token, "dryer", 1, json!(1)).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("challenge"),
        "{body}"
    );
    let (status, _) = finish(&app, &challenge_token, 1, json!(1), false).await;
    assert_eq!(status, 401);
    let code = totp::code_at(&secret, unix_now() + 30).unwrap();
    let (status, _) = verify(&app, &access, code).await;
    assert_eq!(status, 401);
    let (status, _) = finish(&app, &access, 1, json!(1), false).await;
    assert_eq!(status, 401);
    let (status, _) = verify(&app, start_token, code).await;
    assert_eq!(status, 401);
    let (status, _) = start(&app, start_token, "dryer", 1, json!(1)).await;
    assert_eq!(status, 401);

    // Garbage, and a token signed with another key.
    let (status, _) = start(&app, "not-a-token", "dryer", 1, json!(1)).await;
    assert_eq!(status, 401);
    let forged = gatehouse::billing::jwt::TokenKeys::new(b"another key")
        .issue(
            gatehouse::billing::jwt::Purpose::Access,
            ROOM,
            ENDPOINT as i32,
            1,
            None,
            Duration::from_secs(60),
        )
        .unwrap();
    let (status, _) = start(&app, &forged, "dryer", 1, json!(1)).await;
    assert_eq!(status, 401);
    assert_eq!(balance(&app, ROOM).await, 4900);

    // Bumping the endpoint's token version revokes what it holds.
    let (status, endpoint) = app
        .patch(
            &format!("/api/endpoints/{ENDPOINT}"),
            json!({"bump_token_version": true}),
        )
        .await;
    assert_eq!(status, 200, "{endpoint}");
    assert_eq!(endpoint["token_version"], 2);
    let (status, body) = start(&app, &access, "dryer", 1, json!(1)).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    let (status, _) = finish(&app, start_token, 1, json!(1), false).await;
    assert_eq!(status, 401);

    // The run its endpoint can no longer finish is ended by an admin, charging 0.40 of the 1.00 reserved.
    let (_, runs) = app.get("/api/runs?state=running").await;
    let run_id = runs["items"][0]["id"].as_i64().unwrap();
    let (status, aborted) = app
        .post(
            &format!("/api/runs/{run_id}/abort"),
            json!({"final_price": 40}),
        )
        .await;
    assert_eq!(status, 200, "{aborted}");
    assert_eq!(
        (aborted["state"].as_str(), aborted["refund"].as_i64()),
        (Some("aborted"), Some(60))
    );
    assert_eq!(balance(&app, ROOM).await, 4960);
    let (status, _) = app
        .post(&format!("/api/runs/{run_id}/abort"), json!({}))
        .await;
    assert_eq!(status, 409);
}

#[actix_rt::test]
async fn bad_start_input_is_400_and_moves_no_money() {
    let (app, secret) = laundry(5000).await;
    let access = login(&app, ROOM, ENDPOINT, &secret, 0).await;
    for (appliance, units, price) in [
        ("laundromat", 10, json!(1)),
        ("washer", -1, json!(1)),
        ("washer", 10, json!(-1)),
        ("washer", 10, json!("abc")),
        ("washer", 10, json!(1.001)),
        ("washer", 10, json!(null)),
    ] {
        let (status, body) = start(&app, &access, appliance, units, price.clone()).await;
        assert_eq!(status, 400, "{appliance} {units} {price}: {body}");
    }
    let (status, body) = device_post(
        &app,
        "/api/appliance/start/",
        json!({"token": access, "units": 1}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = read(app.http.get(app.url("/api/appliance/start/")).send().await).await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(balance(&app, ROOM).await, 5000);
}

#[actix_rt::test]
async fn an_occupied_appliance_answers_409() {
    let (app, secret) = laundry(5000).await;
    let access = login(&app, ROOM, ENDPOINT, &secret, 0).await;
    let (status, _) = start(&app, &access, "washer", 10, json!(10)).await;
    assert_eq!(status, 201);
    let (status, body) = start(&app, &access, "washer", 10, json!(10)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "conflict");
    assert_eq!(balance(&app, ROOM).await, 4000);
    // Another appliance on the same endpoint, and the same appliance on another endpoint, are free.
    let (status, _) = start(&app, &access, "dryer", 10, json!(10)).await;
    assert_eq!(status, 201);
    create_endpoint(&app, 2).await;
    let challenge_token = challenge(&app, ROOM, 2).await;
    let code = totp::code_at(&secret, unix_now() + 30).unwrap();
    let (status, verified) = verify(&app, &challenge_token, code).await;
    assert_eq!(status, 200, "{verified}");
    let (status, body) = start(
        &app,
        verified["token"].as_str().unwrap(),
        "washer",
        1,
        json!(5),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["newbalance"], 2500);
}

#[actix_rt::test]
async fn a_balance_too_low_answers_402_and_keeps_the_appliance_free() {
    let (app, secret) = laundry(1999).await;
    let access = login(&app, ROOM, ENDPOINT, &secret, 0).await;
    let (status, body) = start(&app, &access, "washer", 300, json!(20)).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"], "payment_required");
    assert_eq!(balance(&app, ROOM).await, 1999);
    let (_, runs) = app.get("/api/runs").await;
    assert_eq!(runs["items"], json!([]));
    // The refused start claimed nothing: the exact balance still buys the washer.
    let (status, body) = start(&app, &access, "washer", 300, json!("19.99")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["newbalance"], 0);
}

#[actix_rt::test]
async fn finishing_refunds_the_difference_but_never_more_than_was_reserved() {
    let (app, secret) = laundry(10_000).await;
    let access = login(&app, ROOM, ENDPOINT, &secret, 0).await;
    let (_, washer) = start(&app, &access, "washer", 300, json!(20)).await;
    let (_, dryer) = start(&app, &access, "dryer", 100, json!(10)).await;
    assert_eq!(balance(&app, ROOM).await, 7000);

    // Lower final price: the difference comes back.
    let (status, _) = finish(
        &app,
        washer["token"].as_str().unwrap(),
        200,
        json!("12.50"),
        false,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(balance(&app, ROOM).await, 7750);
    // Higher final price: nothing comes back, nothing more is taken.
    let (status, _) = finish(
        &app,
        dryer["token"].as_str().unwrap(),
        150,
        json!(15),
        false,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(balance(&app, ROOM).await, 7750);
    let (_, runs) = app
        .get(&format!("/api/runs?room={ROOM}&state=finished"))
        .await;
    let refunds: Vec<i64> = runs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["refund"].as_i64().unwrap())
        .collect();
    assert_eq!(refunds, vec![0, 750]);
}

#[actix_rt::test]
async fn an_aborted_run_refunds_and_frees_the_appliance() {
    let (app, secret) = laundry(5000).await;
    let access = login(&app, ROOM, ENDPOINT, &secret, 0).await;
    let (_, started) = start(&app, &access, "washer", 300, json!(20)).await;
    let (status, body) = finish(&app, started["token"].as_str().unwrap(), 0, json!(0), true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "aborted"}));
    assert_eq!(balance(&app, ROOM).await, 5000);
    let (_, runs) = app.get("/api/runs?state=aborted").await;
    assert_eq!(runs["items"][0]["refund"], 2000);
    let (status, _) = start(&app, &access, "washer", 300, json!(20)).await;
    assert_eq!(status, 201, "the aborted run freed the washer");
}

#[actix_rt::test]
async fn a_second_finish_is_409_and_changes_nothing() {
    let (app, secret) = laundry(5000).await;
    let access = login(&app, ROOM, ENDPOINT, &secret, 0).await;
    let (_, started) = start(&app, &access, "washer", 300, json!(20)).await;
    let token = started["token"].as_str().unwrap();
    let (status, _) = finish(&app, token, 250, json!(15), false).await;
    assert_eq!(status, 200);
    assert_eq!(balance(&app, ROOM).await, 3500);
    for (price, aborted) in [(json!(15), false), (json!(0), true)] {
        let (status, body) = finish(&app, token, 0, price, aborted).await;
        assert_eq!(status, 409, "{body}");
    }
    assert_eq!(balance(&app, ROOM).await, 3500);
    let (_, runs) = app.get("/api/runs").await;
    assert_eq!(runs["items"][0]["state"], "finished");
    assert_eq!(runs["items"][0]["refund"], 500);
}

#[actix_rt::test]
async fn concurrent_finishes_of_one_run_refund_once() {
    let (app, secret) = laundry(5000).await;
    let access = login(&app, ROOM, ENDPOINT, &secret, 0).await;
    let (_, started) = start(&app, &access, "washer", 300, json!(20)).await;
    let token = started["token"].as_str().unwrap().to_owned();
    let finishes = (0..8).map(|i| {
        let (app, token) = (&app, token.clone());
        async move { finish(app, &token, 0, json!(0), i % 2 == 0).await.0 }
    });
    let mut statuses = futures_util::future::join_all(finishes).await;
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 409, 409, 409, 409, 409, 409, 409]);
    assert_eq!(balance(&app, ROOM).await, 5000);
}

#[actix_rt::test]
async fn concurrent_starts_for_the_last_funds_let_exactly_one_win() {
    const STARTS: usize = 10;
    let (app, secret) = laundry(2000).await;
    for i in 0..STARTS {
        create_appliance(&app, &format!("machine-{i}"), 20).await;
    }
    let access = login(&app, ROOM, ENDPOINT, &secret, 0).await;
    // Different appliances, so occupancy plays no part: only the money decides.
    let requests = (0..STARTS).map(|i| {
        let app = &app;
        let access = access.clone();
        async move { start(app, &access, &format!("machine-{i}"), 100, json!(20)).await }
    });
    let results = futures_util::future::join_all(requests).await;
    let mut statuses: Vec<u16> = results.iter().map(|(status, _)| *status).collect();
    statuses.sort_unstable();
    let mut expected = vec![402; STARTS - 1];
    expected.insert(0, 201);
    assert_eq!(statuses, expected, "{results:?}");
    assert_eq!(balance(&app, ROOM).await, 0);
    let (_, runs) = app.get("/api/runs").await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 1);
}

const BANK_FILE: &str = r#"[
    {"id": "T-1", "amount": "50.00", "currency": "CZK", "vs": "12345"},
    {"id": "T-2", "amount": 0.29, "currency": "CZK", "vs": 12345},
    {"id": "T-1", "amount": "50.00", "currency": "CZK", "vs": "12345"},
    {"id": "T-3", "amount": "10.00", "currency": "CZK", "vs": "99999"},
    {"id": "T-4", "amount": "10.00", "currency": "EUR", "vs": "12345"},
    {"id": "T-5", "amount": "1,50", "currency": "CZK", "vs": "12345"},
    {"id": 6, "amount": "20", "currency": "czk", "vs": "54321"}
]"#;

async fn import(app: &TestApp, body: &str) -> (u16, Value) {
    read(
        app.http
            .post(app.url("/api/payments/import"))
            .bearer_auth(TOKEN)
            .insert_header(("Content-Type", "application/json"))
            .send_body(body.to_owned())
            .await,
    )
    .await
}

#[actix_rt::test]
async fn payments_are_imported_once_with_unknown_rooms_and_foreign_currencies_kept_aside() {
    let app = billing_app().await;
    create_room(&app, ROOM, 100).await;
    create_room(&app, 54321, 0).await;
    let mut events = subscribe(&app, &["payment"]).await;

    let (status, summary) = import(&app, BANK_FILE).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(
        summary,
        json!({"imported": 3, "duplicates": 1, "invalid": 3})
    );
    assert_eq!(balance(&app, ROOM).await, 100 + 5000 + 29);
    assert_eq!(balance(&app, 54321).await, 2000);
    let event = next_frame(&mut events).await;
    assert_eq!(
        (event["type"].as_str(), event["kind"].as_str()),
        (Some("payment"), Some("billing"))
    );
    assert_eq!(event["data"]["transaction_id"], "T-1");

    let (_, invalid) = app.get("/api/payments?valid=false").await;
    let reasons: Vec<(String, String)> = invalid["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["transaction_id"].as_str().unwrap().to_owned(),
                p["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("T-5".to_owned(), "invalid_amount".to_owned()),
            ("T-4".to_owned(), "foreign_currency".to_owned()),
            ("T-3".to_owned(), "unknown_room".to_owned()),
        ]
    );
    let (_, valid) = app.get("/api/payments?valid=true").await;
    assert_eq!(valid["items"].as_array().unwrap().len(), 3);
    let (_, all) = app.get("/api/payments").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 6);

    // The same file again changes nothing, even once the unknown room exists.
    create_room(&app, 99999, 0).await;
    let (status, summary) = import(&app, BANK_FILE).await;
    assert_eq!(status, 200);
    assert_eq!(
        summary,
        json!({"imported": 0, "duplicates": 7, "invalid": 0})
    );
    assert_eq!(balance(&app, ROOM).await, 5129);
    assert_eq!(balance(&app, 99999).await, 0);

    // Two imports at once of a new statement: each transaction is credited by exactly one of them.
    let second = r#"[{"id": "T-7", "amount": "1.00", "currency": "CZK", "vs": "12345"},
                     {"id": "T-8", "amount": "2.00", "currency": "CZK", "vs": "12345"}]"#;
    let (a, b) = futures_util::join!(import(&app, second), import(&app, second));
    assert_eq!((a.0, b.0), (200, 200));
    assert_eq!(
        a.1["imported"].as_u64().unwrap() + b.1["imported"].as_u64().unwrap(),
        2,
        "{a:?} {b:?}"
    );
    assert_eq!(balance(&app, ROOM).await, 5429);

    // A malformed file imports nothing.
    let (status, body) = import(
        &app,
        r#"[{"id": "T-9", "amount": "1", "currency": "CZK", "vs": "12345"}, {"amount": "1"}]"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(balance(&app, ROOM).await, 5429);
    // The admin token is required.
    let (status, _) = read(
        app.http
            .post(app.url("/api/payments/import"))
            .send_body(BANK_FILE)
            .await,
    )
    .await;
    assert_eq!(status, 401);
}

#[actix_rt::test]
async fn the_cli_imports_payments_with_the_same_rules() {
    let app = billing_app().await;
    create_room(&app, ROOM, 0).await;
    create_room(&app, 54321, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bank.json");
    std::fs::write(&file, BANK_FILE).unwrap();
    let run = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["payments", "import"])
            .arg(&file)
            .env("DATABASE_URL", &app.settings.database_url)
            .env("PAYMENTS_CURRENCY", "CZK")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // Logs share stdout; the summary is the last line.
        let stdout = String::from_utf8(output.stdout).unwrap();
        serde_json::from_str::<Value>(stdout.lines().last().unwrap()).unwrap()
    };
    assert_eq!(run(), json!({"imported": 3, "duplicates": 1, "invalid": 3}));
    assert_eq!(run(), json!({"imported": 0, "duplicates": 7, "invalid": 0}));
    assert_eq!(balance(&app, ROOM).await, 5029);
    assert_eq!(balance(&app, 54321).await, 2000);
}

#[actix_rt::test]
async fn payments_are_fetched_from_the_bank_periodically() {
    use actix_web::{web, App, HttpResponse, HttpServer};
    use std::sync::{Arc, Mutex};
    // The bank's statement: empty until the test "receives" the transfers.
    let statement = Arc::new(Mutex::new("[]".to_owned()));
    let served = Arc::clone(&statement);
    let bank = HttpServer::new(move || {
        let served = Arc::clone(&served);
        App::new().route(
            "/transactions",
            web::get().to(move || {
                let body = served.lock().unwrap().clone();
                async move {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let bank_port = bank.addrs()[0].port();
    let bank = bank.run();
    let bank_handle = bank.handle();
    actix_rt::spawn(bank);

    let app = spawn_app_with(|s| {
        s.billing.jwt_secret = Some(BILLING_SECRET.into());
        s.billing.payments_fetch_url = Some(format!("http://127.0.0.1:{bank_port}/transactions"));
        s.billing.payments_fetch_interval = Duration::from_millis(200);
    })
    .await;
    create_room(&app, ROOM, 0).await;
    create_room(&app, 54321, 0).await;
    *statement.lock().unwrap() = BANK_FILE.to_owned();
    app.eventually("the bank's payments are imported", || async {
        balance(&app, ROOM).await > 0
    })
    .await;
    assert_eq!(balance(&app, ROOM).await, 5029);
    // Several more polls of the same statement credit nothing twice.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(balance(&app, ROOM).await, 5029);
    assert_eq!(balance(&app, 54321).await, 2000);
    let (_, all) = app.get("/api/payments").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 6);
    bank_handle.stop(false).await;
}

#[actix_rt::test]
async fn without_a_signing_key_the_endpoint_calls_answer_503() {
    let app = spawn_app().await;
    create_room(&app, ROOM, 0).await;
    create_endpoint(&app, ENDPOINT).await;
    let (status, body) = device_post(
        &app,
        "/api/auth/challenge/",
        json!({"room_num": ROOM, "endpoint_id": ENDPOINT}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("BILLING_JWT_SECRET"));

    // Dev mode signs with a key of its own.
    let dev = spawn_app_with(|s| s.billing.dev_mode = true).await;
    create_room(&dev, ROOM, 0).await;
    create_endpoint(&dev, ENDPOINT).await;
    let token = challenge(&dev, ROOM, ENDPOINT).await;
    assert_eq!(token.split('.').count(), 3);
}

#[actix_rt::test]
async fn rooms_endpoints_and_appliances_are_managed_by_admins() {
    let app = billing_app().await;
    // Rooms.
    create_room(&app, ROOM, 1000).await;
    let (status, _) = app.post("/api/rooms", json!({"key": ROOM})).await;
    assert_eq!(status, 409);
    for bad in [
        json!({"key": 0}),
        json!({"key": 1, "balance": -1}),
        json!({}),
        // PATCH-only fields are refused, not silently dropped.
        json!({"key": 2, "reason": "opening balance"}),
    ] {
        let (status, body) = app.post("/api/rooms", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = app
        .post(
            "/api/endpoints",
            json!({"id": 77, "name": "new", "bump_token_version": true}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "bump_token_version", "{body}");
    let (status, _) = app.get("/api/rooms/2").await;
    assert_eq!(status, 404, "the refused room was not created");
    let (status, _) = read(app.http.get(app.url("/api/rooms")).send().await).await;
    assert_eq!(status, 401, "admin token required");
    let (_, rooms) = app.get("/api/rooms").await;
    assert_eq!(rooms["items"][0]["key"], ROOM);
    assert_eq!(rooms["items"][0]["balance"], 1000);

    let (status, adjusted) = app
        .post(
            &format!("/api/rooms/{ROOM}/adjustments"),
            json!({"amount": -300, "reason": "broken coin slot"}),
        )
        .await;
    assert_eq!(status, 201, "{adjusted}");
    assert_eq!(adjusted["room"]["balance"], 700);
    let (status, body) = app
        .post(
            &format!("/api/rooms/{ROOM}/adjustments"),
            json!({"amount": -701, "reason": "too much"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, patched) = app
        .patch(&format!("/api/rooms/{ROOM}"), json!({"balance": 2500}))
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["balance"], 2500);
    let (_, adjustments) = app.get(&format!("/api/rooms/{ROOM}/adjustments")).await;
    let amounts: Vec<i64> = adjustments["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, vec![1800, -300, 1000], "every change is recorded");

    // The TOTP secret is shown once, by the rotation, and nowhere else.
    let (status, rotated) = app
        .post(&format!("/api/rooms/{ROOM}/totp"), json!({}))
        .await;
    assert_eq!(status, 200);
    let secret = rotated["secret"].as_str().unwrap();
    assert!(rotated["uri"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/Gatehouse:room-12345?secret="));
    for path in [
        "/api/rooms",
        "/api/rooms/12345",
        "/api/rooms/12345/adjustments",
    ] {
        let (_, body) = app.get(path).await;
        assert!(
            !body.to_string().contains(secret),
            "{path} leaks the secret"
        );
    }
    let (status, _) = app.post("/api/rooms/1/totp", json!({})).await;
    assert_eq!(status, 404);

    // Endpoints.
    create_endpoint(&app, 7).await;
    let (status, _) = app
        .post("/api/endpoints", json!({"id": 7, "name": "again"}))
        .await;
    assert_eq!(status, 409);
    let (status, renamed) = app
        .patch("/api/endpoints/7", json!({"name": "basement"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (renamed["name"].as_str(), renamed["token_version"].as_i64()),
        (Some("basement"), Some(1))
    );
    let (_, endpoints) = app.get("/api/endpoints").await;
    assert_eq!(endpoints["items"].as_array().unwrap().len(), 1);
    assert_eq!(delete(&app, "/api/endpoints/7").await.0, 204);
    assert_eq!(app.get("/api/endpoints/7").await.0, 404);

    // Appliances.
    create_appliance(&app, "washer", 25).await;
    let (status, body) = app
        .post(
            "/api/appliances",
            json!({"name": "dryer", "price_per_unit": -1}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, patched) = app
        .patch("/api/appliances/washer", json!({"price_per_unit": 30}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(patched["price_per_unit"], 30);
    assert_eq!(
        app.get("/api/appliances/washer").await.1["price_per_unit"],
        30
    );
    assert_eq!(delete(&app, "/api/appliances/washer").await.0, 204);
    assert_eq!(app.get("/api/appliances").await.1["items"], json!([]));

    // Deleting a room keeps its money history.
    assert_eq!(delete(&app, &format!("/api/rooms/{ROOM}")).await.0, 204);
    assert_eq!(app.get(&format!("/api/rooms/{ROOM}")).await.0, 404);
    let (status, _) = app.get("/api/runs?state=bogus").await;
    assert_eq!(status, 400);
}
