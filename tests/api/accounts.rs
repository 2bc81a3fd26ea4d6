//! Accounts with RFID cards, subscription products and subscriptions, the subscription requirement of OCPP
//! authorization, and the installer's echo socket.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use gatehouse::sim::ocpp::{CallOutcome, OcppSim, OcppSimConfig};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{read, spawn_app, spawn_app_with, TestApp, READ_TIMEOUT, TOKEN};

const KIOSK_TOKEN: &str = "kiosk-token";

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

/// `POST /api/accounts/rfid-login` with `token` (none: no Authorization header).
async fn rfid_login(app: &TestApp, token: Option<&str>, uid: &str) -> (u16, Value) {
    let mut request = app.http.post(app.url("/api/accounts/rfid-login"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    read(request.send_json(&json!({ "uid": uid })).await).await
}

async fn create_account(app: &TestApp, name: &str, email: &str) -> i64 {
    let (status, body) = app
        .post("/api/accounts", json!({"name": name, "email": email}))
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_i64().unwrap()
}

async fn create_product(app: &TestApp, name: &str, price_cents: i64, period_days: i64) -> i64 {
    let (status, body) = app
        .post(
            "/api/subscriptions/products",
            json!({"name": name, "price_cents": price_cents, "period_days": period_days}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_i64().unwrap()
}

async fn subscribe(app: &TestApp, account_id: i64, product_id: i64) -> (u16, Value) {
    app.post(
        "/api/subscriptions/subscribe",
        json!({"account_id": account_id, "product_id": product_id}),
    )
    .await
}

async fn create_tag(app: &TestApp, tag: &str, account_id: Option<i64>) {
    let (status, body) = app
        .post(
            "/api/id-tags",
            json!({"tag": tag, "account_id": account_id}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

fn items(body: &Value) -> &Vec<Value> {
    body["items"].as_array().unwrap()
}

/// Moves a subscription's end into the past without touching its written state, as time passing would.
async fn let_subscription_end(app: &TestApp, id: i64) {
    let db = app.db().await;
    let result = entity::subscription::Entity::update_many()
        .col_expr(
            entity::subscription::Column::EndsAt,
            Expr::value(Utc::now() - chrono::Duration::hours(1)),
        )
        .filter(entity::subscription::Column::Id.eq(id as i32))
        .exec(&db)
        .await
        .unwrap();
    assert_eq!(result.rows_affected, 1);
}

#[actix_rt::test]
async fn accounts_are_created_listed_changed_and_deleted() {
    let app = spawn_app().await;
    let (status, ana) = app
        .post(
            "/api/accounts",
            json!({"name": " Ana ", "email": " Ana@Example.COM"}),
        )
        .await;
    assert_eq!(status, 201, "{ana}");
    assert_eq!(ana["name"], "Ana");
    assert_eq!(ana["email"], "ana@example.com");
    assert_eq!(ana["is_active"], true);
    assert_eq!(ana["id_tags"], json!([]));
    assert_eq!(ana["active_subscriptions"], json!([]));
    time(&ana["created_at"]);
    let ana_id = ana["id"].as_i64().unwrap();

    // Emails are unique, compared case-insensitively.
    let (status, body) = app
        .post(
            "/api/accounts",
            json!({"name": "Other", "email": "ANA@example.com"}),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));
    for (body, field) in [
        (json!({"name": "Bo"}), "email"),
        (json!({"email": "bo@example.com"}), "name"),
        (json!({"name": "Bo", "email": "not-an-email"}), "email"),
        (json!({"name": "   ", "email": "bo@example.com"}), "name"),
    ] {
        let (status, answer) = app.post("/api/accounts", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "invalid_params");
        assert_eq!(answer["field"], field, "{body}");
    }
    let (status, answer) = app
        .post(
            "/api/accounts",
            json!({"name": "Bo", "email": "bo@example.com", "colour": "red"}),
        )
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("bad_request"))
    );
    let bo_id = create_account(&app, "Bo", "bo@example.com").await;

    let (status, list) = app.get("/api/accounts").await;
    assert_eq!(status, 200);
    let ids: Vec<i64> = items(&list)
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![ana_id, bo_id]);

    let (status, one) = app.get(&format!("/api/accounts/{bo_id}")).await;
    assert_eq!(
        (status, one["email"].as_str()),
        (200, Some("bo@example.com"))
    );
    let (status, body) = app.get("/api/accounts/999999").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, _) = app.get("/api/accounts/abc").await;
    assert_eq!(status, 400);

    let (status, patched) = app
        .patch(
            &format!("/api/accounts/{ana_id}"),
            json!({"name": "Ana Maria", "is_active": false}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["name"], "Ana Maria");
    assert_eq!(patched["is_active"], false);
    assert_eq!(patched["email"], "ana@example.com");
    let (status, body) = app
        .patch(
            &format!("/api/accounts/{ana_id}"),
            json!({"email": "BO@example.com"}),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));
    let (status, body) = app
        .patch(&format!("/api/accounts/{ana_id}"), json!({"email": "x"}))
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("email")));
    let (status, _) = app
        .patch("/api/accounts/999999", json!({"name": "Nobody"}))
        .await;
    assert_eq!(status, 404);
    let (_, again) = app.get(&format!("/api/accounts/{ana_id}")).await;
    assert_eq!(again["name"], "Ana Maria");

    let (status, _) = delete(&app, &format!("/api/accounts/{ana_id}")).await;
    assert_eq!(status, 204);
    let (status, _) = app.get(&format!("/api/accounts/{ana_id}")).await;
    assert_eq!(status, 404);
    let (status, _) = delete(&app, &format!("/api/accounts/{ana_id}")).await;
    assert_eq!(status, 404);
    let (_, list) = app.get("/api/accounts").await;
    assert_eq!(items(&list).len(), 1);

    // The admin token is required.
    let (status, body) = read(app.http.get(app.url("/api/accounts")).send().await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
}

#[actix_rt::test]
async fn id_tags_belong_to_accounts() {
    let app = spawn_app().await;
    let ana = create_account(&app, "Ana", "ana@example.com").await;
    create_tag(&app, "04A2B3C4", None).await;
    let (_, tag) = app.get("/api/id-tags/04A2B3C4").await;
    assert_eq!(tag["account_id"], Value::Null);

    let (status, tag) = app
        .patch("/api/id-tags/04A2B3C4", json!({"account_id": ana}))
        .await;
    assert_eq!(status, 200, "{tag}");
    assert_eq!(tag["account_id"], ana);
    assert_eq!(tag["status"], "Accepted");
    let (status, body) = app
        .patch("/api/id-tags/04A2B3C4", json!({"account_id": 999999}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "account_id");
    let (status, body) = app
        .post("/api/id-tags", json!({"tag": "X1", "account_id": 999999}))
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("account_id")));
    let (status, _) = app
        .patch("/api/id-tags/NOSUCHTAG", json!({"account_id": ana}))
        .await;
    assert_eq!(status, 404);
    create_tag(&app, "CARD2", Some(ana)).await;

    let (_, account) = app.get(&format!("/api/accounts/{ana}")).await;
    assert_eq!(account["id_tags"], json!(["04A2B3C4", "CARD2"]));
    let (_, list) = app.get("/api/id-tags").await;
    assert!(
        items(&list).iter().all(|t| t["account_id"] == ana),
        "{list}"
    );

    // null detaches; other fields are left alone.
    let (status, tag) = app
        .patch("/api/id-tags/CARD2", json!({"account_id": null}))
        .await;
    assert_eq!((status, tag["account_id"].clone()), (200, Value::Null));
    let (_, tag) = app
        .patch("/api/id-tags/04A2B3C4", json!({"owner": "front desk"}))
        .await;
    assert_eq!(tag["account_id"], ana);

    // Deleting the account keeps its tags, without an account.
    let (status, _) = delete(&app, &format!("/api/accounts/{ana}")).await;
    assert_eq!(status, 204);
    let (status, tag) = app.get("/api/id-tags/04A2B3C4").await;
    assert_eq!((status, tag["account_id"].clone()), (200, Value::Null));
}

#[actix_rt::test]
async fn rfid_login_answers_for_accepted_cards_of_active_accounts() {
    let app = spawn_app_with(|s| s.rfid_login_token = Some(KIOSK_TOKEN.into())).await;
    let ana = create_account(&app, "Ana", "ana@example.com").await;
    let monthly = create_product(&app, "Monthly", 1990, 30).await;
    let (status, sub) = subscribe(&app, ana, monthly).await;
    assert_eq!(status, 201, "{sub}");
    create_tag(&app, "04A2B3C4", Some(ana)).await;

    // The kiosk token and the admin token both work; the UID is compared case-insensitively.
    for token in [KIOSK_TOKEN, TOKEN] {
        let (status, body) = rfid_login(&app, Some(token), " 04a2b3c4 ").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], ana);
        assert_eq!(body["name"], "Ana");
        assert_eq!(body["email"], "ana@example.com");
        assert_eq!(body["tag"], "04A2B3C4");
        let subs = body["active_subscriptions"].as_array().unwrap();
        assert_eq!(subs.len(), 1, "{body}");
        assert_eq!(subs[0]["id"], sub["id"]);
        assert_eq!(subs[0]["product_name"], "Monthly");
        assert_eq!(subs[0]["state"], "active");
    }
    // Without a token, with a wrong one: 401. The kiosk token opens nothing else.
    for token in [None, Some("wrong")] {
        let (status, body) = rfid_login(&app, token, "04A2B3C4").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized"))
        );
    }
    let (status, _) = read(
        app.http
            .get(app.url("/api/accounts"))
            .bearer_auth(KIOSK_TOKEN)
            .send()
            .await,
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = read(
        app.http
            .get(app.url("/api/accounts/rfid-login"))
            .bearer_auth(KIOSK_TOKEN)
            .send()
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );

    // Unknown card, card of no account: 404. Empty uid: 400.
    let (status, body) = rfid_login(&app, Some(KIOSK_TOKEN), "DEADBEEF").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    create_tag(&app, "LOOSE01", None).await;
    let (status, _) = rfid_login(&app, Some(KIOSK_TOKEN), "loose01").await;
    assert_eq!(status, 404);
    let (status, body) = rfid_login(&app, Some(KIOSK_TOKEN), "  ").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("uid")));

    // Blocked card, expired card, inactive account: 403.
    let (status, _) = app
        .patch("/api/id-tags/04A2B3C4", json!({"status": "Blocked"}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = rfid_login(&app, Some(KIOSK_TOKEN), "04A2B3C4").await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    assert!(
        body["message"].as_str().unwrap().contains("Blocked"),
        "{body}"
    );
    app.patch(
        "/api/id-tags/04A2B3C4",
        json!({"status": "Accepted", "expires_at": "2001-01-01T00:00:00Z"}),
    )
    .await;
    let (status, body) = rfid_login(&app, Some(KIOSK_TOKEN), "04A2B3C4").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    app.patch("/api/id-tags/04A2B3C4", json!({"expires_at": null}))
        .await;
    let (status, _) = rfid_login(&app, Some(KIOSK_TOKEN), "04A2B3C4").await;
    assert_eq!(status, 200);
    app.patch(&format!("/api/accounts/{ana}"), json!({"is_active": false}))
        .await;
    let (status, body) = rfid_login(&app, Some(KIOSK_TOKEN), "04A2B3C4").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("inactive"),
        "{body}"
    );

    // A node without RFID_LOGIN_TOKEN takes only the admin token.
    let app = spawn_app().await;
    let (status, _) = rfid_login(&app, Some(KIOSK_TOKEN), "04A2B3C4").await;
    assert_eq!(status, 401);
    let (status, _) = rfid_login(&app, Some(TOKEN), "04A2B3C4").await;
    assert_eq!(status, 404);
}

#[actix_rt::test]
async fn products_are_managed_and_only_active_ones_are_on_sale() {
    let app = spawn_app().await;
    let (status, monthly) = app
        .post(
            "/api/subscriptions/products",
            json!({"name": "Monthly", "description": "Unlimited charging", "price_cents": 1990, "period_days": 30}),
        )
        .await;
    assert_eq!(status, 201, "{monthly}");
    assert_eq!(monthly["price_cents"], 1990);
    assert_eq!(monthly["period_days"], 30);
    assert_eq!(monthly["is_active"], true);
    assert_eq!(monthly["description"], "Unlimited charging");
    let monthly_id = monthly["id"].as_i64().unwrap();
    let (status, legacy) = app
        .post(
            "/api/subscriptions/products",
            json!({"name": "Legacy", "price_cents": 0, "period_days": 365, "is_active": false}),
        )
        .await;
    assert_eq!((status, legacy["is_active"].clone()), (201, json!(false)));
    let legacy_id = legacy["id"].as_i64().unwrap();
    for (body, field) in [
        (json!({"price_cents": 1, "period_days": 1}), "name"),
        (json!({"name": "X", "period_days": 1}), "price_cents"),
        (json!({"name": "X", "price_cents": 1}), "period_days"),
        (
            json!({"name": "X", "price_cents": -1, "period_days": 1}),
            "price_cents",
        ),
        (
            json!({"name": "X", "price_cents": 1, "period_days": 0}),
            "period_days",
        ),
    ] {
        let (status, answer) = app.post("/api/subscriptions/products", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{body}");
    }

    let (status, on_sale) = app.get("/api/subscriptions/products").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = items(&on_sale)
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Monthly"]);
    let (_, all) = app
        .get("/api/subscriptions/products?include_inactive=true")
        .await;
    assert_eq!(items(&all).len(), 2);
    let (status, _) = app
        .get("/api/subscriptions/products?include_inactive=maybe")
        .await;
    assert_eq!(status, 400);

    let (status, one) = app
        .get(&format!("/api/subscriptions/products/{legacy_id}"))
        .await;
    assert_eq!((status, one["name"].as_str()), (200, Some("Legacy")));
    let (status, _) = app.get("/api/subscriptions/products/999999").await;
    assert_eq!(status, 404);

    let (status, patched) = app
        .patch(
            &format!("/api/subscriptions/products/{monthly_id}"),
            json!({"price_cents": 2490, "description": null}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["price_cents"], 2490);
    assert_eq!(patched["description"], Value::Null);
    assert_eq!(patched["name"], "Monthly");
    let (status, _) = app
        .patch(
            &format!("/api/subscriptions/products/{monthly_id}"),
            json!({"period_days": 100000}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .patch("/api/subscriptions/products/999999", json!({"name": "X"}))
        .await;
    assert_eq!(status, 404);
    let (status, legacy) = app
        .patch(
            &format!("/api/subscriptions/products/{legacy_id}"),
            json!({"is_active": true}),
        )
        .await;
    assert_eq!((status, legacy["is_active"].clone()), (200, json!(true)));
    let (_, on_sale) = app.get("/api/subscriptions/products").await;
    assert_eq!(items(&on_sale).len(), 2);

    // A product nobody bought can go; a sold one stays (409).
    let ana = create_account(&app, "Ana", "ana@example.com").await;
    let (status, _) = subscribe(&app, ana, monthly_id).await;
    assert_eq!(status, 201);
    let (status, body) = delete(&app, &format!("/api/subscriptions/products/{monthly_id}")).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));
    let (status, _) = delete(&app, &format!("/api/subscriptions/products/{legacy_id}")).await;
    assert_eq!(status, 204);
    let (status, _) = delete(&app, &format!("/api/subscriptions/products/{legacy_id}")).await;
    assert_eq!(status, 404);
}

#[actix_rt::test]
async fn subscriptions_are_sold_listed_and_cancelled() {
    let app = spawn_app().await;
    let ana = create_account(&app, "Ana", "ana@example.com").await;
    let bo = create_account(&app, "Bo", "bo@example.com").await;
    let monthly = create_product(&app, "Monthly", 1990, 30).await;
    let yearly = create_product(&app, "Yearly", 19900, 365).await;
    let retired = create_product(&app, "Retired", 100, 7).await;
    app.patch(
        &format!("/api/subscriptions/products/{retired}"),
        json!({"is_active": false}),
    )
    .await;

    let before = Utc::now();
    let (status, sub) = subscribe(&app, ana, monthly).await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["account_id"], ana);
    assert_eq!(sub["product_id"], monthly);
    assert_eq!(sub["product_name"], "Monthly");
    assert_eq!(sub["price_cents"], 1990);
    assert_eq!(sub["state"], "active");
    assert_eq!(sub["cancelled_at"], Value::Null);
    let (starts, ends) = (time(&sub["starts_at"]), time(&sub["ends_at"]));
    assert!(starts >= before - chrono::Duration::seconds(1) && starts <= Utc::now());
    assert_eq!(ends - starts, chrono::Duration::days(30));
    let sub_id = sub["id"].as_i64().unwrap();

    // The same product twice: 409; another product: fine.
    let (status, body) = subscribe(&app, ana, monthly).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));
    let (status, yearly_sub) = subscribe(&app, ana, yearly).await;
    assert_eq!(status, 201, "{yearly_sub}");
    let (status, _) = subscribe(&app, bo, monthly).await;
    assert_eq!(status, 201);
    for (account, product, expected, field) in [
        (999999, monthly, 404, None),
        (ana, 999999, 404, None),
        (ana, retired, 400, Some("product_id")),
    ] {
        let (status, body) = subscribe(&app, account, product).await;
        assert_eq!(status, expected, "{account}/{product}: {body}");
        assert_eq!(body["field"].as_str(), field, "{body}");
    }
    let (status, body) = app
        .post("/api/subscriptions/subscribe", json!({"account_id": ana}))
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("product_id")));
    let carl = create_account(&app, "Carl", "carl@example.com").await;
    app.patch(
        &format!("/api/accounts/{carl}"),
        json!({"is_active": false}),
    )
    .await;
    let (status, body) = subscribe(&app, carl, monthly).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("account_id")));

    // A later price change does not touch what was sold.
    app.patch(
        &format!("/api/subscriptions/products/{monthly}"),
        json!({"price_cents": 2990}),
    )
    .await;

    let (status, list) = app
        .get(&format!("/api/subscriptions?account_id={ana}"))
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&Value> = items(&list).iter().map(|s| &s["id"]).collect();
    assert_eq!(ids, vec![&yearly_sub["id"], &sub["id"]], "newest first");
    assert_eq!(items(&list)[1]["price_cents"], 1990);
    let (_, everyone) = app.get("/api/subscriptions").await;
    assert_eq!(items(&everyone).len(), 3);
    let (status, _) = app.get("/api/subscriptions?account_id=999999").await;
    assert_eq!(status, 404);
    for query in ["account_id=abc", "state=paused"] {
        let (status, body) = app.get(&format!("/api/subscriptions?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["field"], query.split('=').next().unwrap());
    }
    let (status, one) = app.get(&format!("/api/subscriptions/{sub_id}")).await;
    assert_eq!((status, one["state"].as_str()), (200, Some("active")));
    let (status, _) = app.get("/api/subscriptions/999999").await;
    assert_eq!(status, 404);
    let (_, account) = app.get(&format!("/api/accounts/{ana}")).await;
    assert_eq!(account["active_subscriptions"].as_array().unwrap().len(), 2);

    // Cancel: at once, once.
    let (status, cancelled) = app
        .post(&format!("/api/subscriptions/{sub_id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert!(time(&cancelled["cancelled_at"]) <= Utc::now());
    let (status, body) = app
        .post(&format!("/api/subscriptions/{sub_id}/cancel"), json!({}))
        .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));
    let (status, _) = app
        .post("/api/subscriptions/999999/cancel", json!({}))
        .await;
    assert_eq!(status, 404);
    let (_, active) = app
        .get(&format!("/api/subscriptions?account_id={ana}&state=active"))
        .await;
    assert_eq!(items(&active).len(), 1);
    assert_eq!(items(&active)[0]["id"], yearly_sub["id"]);
    let (_, cancelled_list) = app.get("/api/subscriptions?state=cancelled").await;
    assert_eq!(items(&cancelled_list).len(), 1);
    // Once cancelled, the product can be bought again (at today's price).
    let (status, again) = subscribe(&app, ana, monthly).await;
    assert_eq!((status, again["price_cents"].clone()), (201, json!(2990)));

    // Deleting an account deletes its subscriptions.
    let (status, _) = delete(&app, &format!("/api/accounts/{bo}")).await;
    assert_eq!(status, 204);
    let (_, everyone) = app.get("/api/subscriptions").await;
    assert!(
        items(&everyone).iter().all(|s| s["account_id"] == ana),
        "{everyone}"
    );
}

#[actix_rt::test]
async fn concurrent_purchases_of_one_product_sell_it_once() {
    let app = spawn_app().await;
    let ana = create_account(&app, "Ana", "ana@example.com").await;
    let monthly = create_product(&app, "Monthly", 1990, 30).await;
    let answers =
        futures_util::future::join_all((0..8).map(|_| subscribe(&app, ana, monthly))).await;
    let mut statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        vec![201, 409, 409, 409, 409, 409, 409, 409],
        "{answers:?}"
    );
    let (_, list) = app
        .get(&format!("/api/subscriptions?account_id={ana}"))
        .await;
    assert_eq!(items(&list).len(), 1);
}

#[actix_rt::test]
async fn expiry_is_evaluated_when_read() {
    let app = spawn_app().await;
    let ana = create_account(&app, "Ana", "ana@example.com").await;
    let monthly = create_product(&app, "Monthly", 1990, 30).await;
    let (_, sub) = subscribe(&app, ana, monthly).await;
    let sub_id = sub["id"].as_i64().unwrap();
    let_subscription_end(&app, sub_id).await;

    // The row still says active; every reader says expired.
    let (_, one) = app.get(&format!("/api/subscriptions/{sub_id}")).await;
    assert_eq!(one["state"], "expired");
    let (_, expired) = app.get("/api/subscriptions?state=expired").await;
    assert_eq!(items(&expired).len(), 1);
    let (_, active) = app.get("/api/subscriptions?state=active").await;
    assert_eq!(items(&active).len(), 0);
    let (_, account) = app.get(&format!("/api/accounts/{ana}")).await;
    assert_eq!(account["active_subscriptions"], json!([]));
    // Nothing to cancel; the product can be bought again.
    let (status, _) = app
        .post(&format!("/api/subscriptions/{sub_id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409);
    let (status, renewed) = subscribe(&app, ana, monthly).await;
    assert_eq!((status, renewed["state"].as_str()), (201, Some("active")));
}

async fn authorize(sim: &OcppSim, tag: &str) -> String {
    match sim.call("Authorize", json!({"idTag": tag})).await.unwrap() {
        CallOutcome::Result(answer) => {
            crate::ocpp::assert_schema("AuthorizeResponse", &answer);
            answer["idTagInfo"]["status"].as_str().unwrap().to_owned()
        }
        CallOutcome::Error { code, .. } => panic!("Authorize answered {code}"),
    }
}

async fn ocpp_charger(app: &TestApp, id: &str) -> OcppSim {
    let sim = OcppSim::connect(OcppSimConfig::new(app.ws_url("/ocpp"), id))
        .await
        .unwrap();
    app.eventually("charger online", || async {
        app.get(&format!("/api/chargers/{id}")).await.1["online"] == true
    })
    .await;
    sim
}

#[actix_rt::test]
async fn ocpp_authorization_requires_an_active_subscription_when_configured() {
    let app = spawn_app_with(|s| s.ocpp_require_subscription = true).await;
    let paid = create_account(&app, "Paid", "paid@example.com").await;
    let unpaid = create_account(&app, "Unpaid", "unpaid@example.com").await;
    let lapsed = create_account(&app, "Lapsed", "lapsed@example.com").await;
    let monthly = create_product(&app, "Monthly", 1990, 30).await;
    let (_, paid_sub) = subscribe(&app, paid, monthly).await;
    let (_, lapsed_sub) = subscribe(&app, lapsed, monthly).await;
    let_subscription_end(&app, lapsed_sub["id"].as_i64().unwrap()).await;
    create_tag(&app, "PAIDTAG", Some(paid)).await;
    create_tag(&app, "UNPAIDTAG", Some(unpaid)).await;
    create_tag(&app, "LAPSEDTAG", Some(lapsed)).await;
    create_tag(&app, "LONELY", None).await;
    let (status, _) = app
        .post(
            "/api/id-tags",
            json!({"tag": "PAIDBLOCK", "status": "Blocked", "account_id": paid}),
        )
        .await;
    assert_eq!(status, 201);

    let sim = ocpp_charger(&app, "CPSUB01").await;
    for (tag, expected) in [
        ("PAIDTAG", "Accepted"),
        ("UNPAIDTAG", "Blocked"),
        ("LAPSEDTAG", "Blocked"),
        ("LONELY", "Blocked"),
        ("PAIDBLOCK", "Blocked"),
        ("NOBODY", "Invalid"),
    ] {
        assert_eq!(authorize(&sim, tag).await, expected, "{tag}");
    }
    // StartTransaction answers the same.
    for (connector, tag, expected) in [(1, "UNPAIDTAG", "Blocked"), (2, "PAIDTAG", "Accepted")] {
        let start = json!({"connectorId": connector, "idTag": tag, "meterStart": 0, "timestamp": "2030-01-01T10:00:00Z"});
        match sim.call("StartTransaction", start).await.unwrap() {
            CallOutcome::Result(answer) => {
                crate::ocpp::assert_schema("StartTransactionResponse", &answer);
                assert_eq!(answer["idTagInfo"]["status"], expected, "{tag}");
            }
            CallOutcome::Error { code, .. } => panic!("StartTransaction answered {code}"),
        }
    }
    // Buying a subscription opens the charger; cancelling it closes it again.
    let (status, _) = subscribe(&app, unpaid, monthly).await;
    assert_eq!(status, 201);
    assert_eq!(authorize(&sim, "UNPAIDTAG").await, "Accepted");
    let (status, _) = app
        .post(
            &format!("/api/subscriptions/{}/cancel", paid_sub["id"]),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(authorize(&sim, "PAIDTAG").await, "Blocked");

    // Without OCPP_REQUIRE_SUBSCRIPTION (the default), the id-tag table alone decides.
    let app = spawn_app().await;
    create_tag(&app, "LONELY", None).await;
    let sim = ocpp_charger(&app, "CPSUB02").await;
    assert_eq!(authorize(&sim, "LONELY").await, "Accepted");
}

// ---- echo ---------------------------------------------------------------------------------------------

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn echo_socket(app: &TestApp) -> Ws {
    tokio_tungstenite::connect_async(app.ws_url("/ws/echo"))
        .await
        .expect("echo socket connects")
        .0
}

/// The next data frame (text, binary or pong), or the close code.
async fn next_frame(ws: &mut Ws) -> Result<Message, Option<u16>> {
    loop {
        let frame = tokio::time::timeout(READ_TIMEOUT, ws.next())
            .await
            .expect("a frame within the read timeout");
        match frame {
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(Message::Ping(_))) | Some(Ok(Message::Frame(_))) => continue,
            Some(Ok(message)) => return Ok(message),
            Some(Err(_)) | None => return Err(None),
        }
    }
}

#[actix_rt::test]
async fn the_echo_socket_sends_every_frame_back_in_order() {
    let app = spawn_app().await;
    let mut ws = echo_socket(&app).await;
    ws.send(Message::text("hello gatehouse")).await.unwrap();
    assert_eq!(
        next_frame(&mut ws).await,
        Ok(Message::text("hello gatehouse"))
    );
    let bytes = vec![0u8, 1, 2, 254, 255];
    ws.send(Message::binary(bytes.clone())).await.unwrap();
    assert_eq!(next_frame(&mut ws).await, Ok(Message::binary(bytes)));
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut ws).await,
        Ok(Message::Pong(b"are you there".to_vec().into()))
    );
    // A burst far longer than a socket's outbox: nothing is dropped, nothing reordered.
    const BURST: usize = 500;
    for i in 0..BURST {
        ws.feed(Message::text(format!("frame {i}"))).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..BURST {
        assert_eq!(
            next_frame(&mut ws).await,
            Ok(Message::text(format!("frame {i}")))
        );
    }
    ws.send(Message::Close(None)).await.unwrap();
    assert_eq!(next_frame(&mut ws).await, Err(Some(1000)));
}

#[actix_rt::test]
async fn an_oversized_frame_closes_the_echo_socket_with_1009() {
    let app = spawn_app_with(|s| s.echo_max_frame_bytes = 1024).await;
    let mut ws = echo_socket(&app).await;
    let fits = "a".repeat(1000);
    ws.send(Message::text(fits.clone())).await.unwrap();
    assert_eq!(next_frame(&mut ws).await, Ok(Message::text(fits)));
    ws.send(Message::text("b".repeat(4096))).await.unwrap();
    assert_eq!(next_frame(&mut ws).await, Err(Some(1009)));
    // Only that socket: the next one echoes.
    let mut ws = echo_socket(&app).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_frame(&mut ws).await, Ok(Message::text("still here")));
}

#[actix_rt::test]
async fn a_silent_echo_socket_is_closed() {
    let app = spawn_app_with(|s| s.echo_idle_timeout = Duration::from_millis(300)).await;
    let mut ws = echo_socket(&app).await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next_frame(&mut ws).await, Ok(Message::text("one")));
    let started = std::time::Instant::now();
    assert_eq!(next_frame(&mut ws).await, Err(Some(1000)));
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[actix_rt::test]
async fn the_echo_socket_can_be_turned_off() {
    let app = spawn_app_with(|s| s.echo_enabled = false).await;
    match tokio_tungstenite::connect_async(app.ws_url("/ws/echo")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 404)
        }
        other => panic!("expected a 404 refusal, got {:?}", other.map(|(_, r)| r)),
    }
    let (status, body) = read(app.http.get(app.url("/ws/echo")).send().await).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));

    // On (the default), a plain GET is told to upgrade.
    let app = spawn_app().await;
    let (status, body) = read(app.http.get(app.url("/ws/echo")).send().await).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
}
