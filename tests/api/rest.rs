use serde_json::json;

use crate::helpers::{read, spawn_app};

#[actix_rt::test]
async fn api_needs_the_bearer_token() {
    let app = spawn_app().await;
    for path in [
        "/api/terminals",
        "/api/connected",
        "/api/terminals/X",
        "/api/commands/x",
    ] {
        let (status, body) = read(app.http.get(app.url(path)).send().await).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"], "unauthorized");
        let (status, _) = read(
            app.http
                .get(app.url(path))
                .bearer_auth("wrong")
                .send()
                .await,
        )
        .await;
        assert_eq!(status, 401, "{path}");
    }
    let (status, _) = read(
        app.http
            .post(app.url("/api/terminals/X/command"))
            .send_json(&json!({"command":"opendoor"}))
            .await,
    )
    .await;
    assert_eq!(status, 401);
}

#[actix_rt::test]
async fn probes_trailing_slashes_and_json_errors() {
    let app = spawn_app().await;
    let (status, body) = read(app.http.get(app.url("/healthz")).send().await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = read(app.http.get(app.url("/readyz/")).send().await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    let (status, body) = app.get("/api/terminals/").await;
    assert_eq!(status, 200);
    assert!(body["items"].is_array());
    let (status, body) = app.get("/api/nothing/here").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) = read(app.http.get(app.url("/no/such/page")).send().await).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    // Broken JSON body
    let (status, body) = read(
        app.http
            .post(app.url("/api/terminals/X/command"))
            .bearer_auth(crate::helpers::TOKEN)
            .insert_header(("content-type", "application/json"))
            .send_body("{\"command\":")
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
}

#[actix_rt::test]
async fn terminals_are_created_patched_and_looked_up() {
    let app = spawn_app().await;
    let (status, _) = app.get("/api/terminals/ADM0001").await;
    assert_eq!(status, 404);
    let (status, body) = app
        .patch("/api/terminals/ADM0001", json!({"name": "x"}))
        .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));

    let (status, body) = app
        .put(
            "/api/terminals/ADM0001",
            json!({"name": "Gate", "is_whitelisted": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .put("/api/terminals/ADM0001", json!({"name": "Gate 2"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["is_whitelisted"], false, "PUT replaces the entry");
    let (status, body) = app
        .patch("/api/terminals/ADM0001/", json!({"is_active": false}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["is_active"].as_bool(), body["name"].as_str()),
        (Some(false), Some("Gate 2"))
    );
    let (status, body) = app
        .patch("/api/terminals/ADM0001", json!({"is_active": "nope"}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app
        .patch("/api/terminals/ADM0001", json!({"colour": "red"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("colour"));
    let (status, _) = app.put("/api/terminals/bad%20sn", json!({})).await;
    assert_eq!(status, 400);

    let (_, list) = app.get("/api/terminals").await;
    let item = &list["items"][0];
    assert_eq!(item["sn"], "ADM0001");
    assert_eq!(item["online"], false);
    for key in [
        "sn",
        "model",
        "firmware",
        "is_active",
        "is_whitelisted",
        "online",
        "last_seen",
    ] {
        assert!(item.get(key).is_some(), "missing {key}");
    }
}
