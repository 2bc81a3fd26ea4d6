//! The OpenAPI document against the route table: every route of `src/api/mod.rs` is documented, and every
//! documented operation is routed. The routes are read from the source, so a new `.route(…)` without its
//! `#[utoipa::path]` annotation (and its entry in `ApiDoc`) fails here.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::{read, spawn_app};

const ROUTE_TABLE: &str = include_str!("../../src/api/mod.rs");
const METHODS: &[&str] = &["get", "post", "put", "patch", "delete", "head", "options"];

/// `(METHOD, path)` of every route in the route table's source: `.route("PATH", web::METHOD()…)` calls and
/// `web::resource("PATH")…​.route(web::METHOD()…)` forms (both with the `/api` prefix when inside
/// `web::scope("/api")`, up to that scope's `.default_service(`), and `billing_resource("PATH", handler)` calls
/// (POST; see [`BILLING_RESOURCE`]).
/// `mod.rs`'s helper for the appliance endpoints' POST-only resources: `billing_resource("PATH", handler)` routes
/// `POST PATH`. Special-cased by name: its own `web::resource(path).route(web::post()…)` has no literal path,
/// so its calls are read instead (a new helper of this kind needs the same here).
const BILLING_RESOURCE: &str = "billing_resource";

fn routes_in_source(source: &str) -> BTreeSet<(String, String)> {
    // Only the code, not the unit tests at the bottom.
    let source = source.split("#[cfg(test)]").next().unwrap();
    let scope_start = source
        .find("web::scope(\"/api\")")
        .expect("the route table has an /api scope");
    let scope_end = scope_start
        + source[scope_start..]
            .find(".default_service(")
            .expect("the /api scope ends with .default_service(");
    let inside_api = |at: usize| at > scope_start && at < scope_end;
    let prefixed = |at: usize, path: &str| {
        if inside_api(at) {
            format!("/api{path}")
        } else {
            path.to_owned()
        }
    };
    let mut routes = BTreeSet::new();
    let helper_call = format!("{BILLING_RESOURCE}(\"");
    for (at, _) in source.match_indices(&helper_call) {
        let literal = &source[at + helper_call.len()..];
        let path = &literal[..literal.find('"').unwrap()];
        routes.insert(("POST".to_owned(), prefixed(at, path)));
    }
    for (at, _) in source.match_indices(".route(") {
        let rest = source[at + ".route(".len()..].trim_start();
        if let Some(literal) = rest.strip_prefix('"') {
            // `.route("PATH", web::METHOD()…)`
            let path = &literal[..literal.find('"').unwrap()];
            let after = literal[path.len() + 1..].trim_start();
            let after = after.strip_prefix(',').unwrap().trim_start();
            let method = method_of(after).unwrap_or_else(|| panic!("no method for {path}"));
            routes.insert((method, prefixed(at, path)));
        } else if let Some(method) = method_of(rest) {
            // `web::resource("PATH")….route(web::METHOD()…)`: the nearest resource before it.
            let resource = source[..at]
                .rfind("web::resource(")
                .unwrap_or_else(|| panic!("a .route(web::{method}()) outside a resource"));
            let argument = &source[resource + "web::resource(".len()..];
            let Some(literal) = argument.strip_prefix('"') else {
                // Only the helper's own body builds a resource from a variable; its calls were read above.
                let in_helper = source[..resource]
                    .rfind("fn ")
                    .is_some_and(|f| source[f + "fn ".len()..].starts_with(BILLING_RESOURCE));
                assert!(
                    in_helper,
                    "a resource without a literal path: {}",
                    &argument[..argument.len().min(80)]
                );
                continue;
            };
            let path = &literal[..literal.find('"').unwrap()];
            routes.insert((method, prefixed(resource, path)));
        } else {
            panic!("cannot read the route at: {}", &rest[..rest.len().min(80)]);
        }
    }
    routes
}

/// `web::get()` → `GET`.
fn method_of(text: &str) -> Option<String> {
    let name = text.strip_prefix("web::")?;
    let name = &name[..name.find("()")?];
    METHODS.contains(&name).then(|| name.to_ascii_uppercase())
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.as_str()) {
                operations.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    operations
}

#[test]
fn the_route_parser_reads_every_form() {
    let source = r#"
        cfg.route("/", web::get().to(a))
            .route(
                "/ws/{id}",
                web::get().to(b),
            )
            .service(
                web::resource("/api/x")
                    .route(web::post().to(c))
                    .default_service(web::to(d)),
            )
            .service(billing_resource("/api/dev/start", h))
            .service(
                web::scope("/api")
                    .route("/t/{sn}", web::patch().to(e))
                    .service(
                        web::resource("/r/import")
                            .app_data(web::PayloadConfig::new(1))
                            .route(web::post().to(i)),
                    )
                    .default_service(web::to(f)),
            )
            .route("/after", web::delete().to(g));
        fn billing_resource<F>(path: &str, handler: F) -> actix_web::Resource {
            web::resource(path)
                .route(web::post().to(handler))
                .default_service(web::to(method_not_allowed))
        }
        #[cfg(test)]
        .route("/ignored", web::get())
    "#;
    let found: Vec<(String, String)> = routes_in_source(source).into_iter().collect();
    let want: Vec<(String, String)> = [
        ("DELETE", "/after"),
        ("GET", "/"),
        ("GET", "/ws/{id}"),
        ("PATCH", "/api/t/{sn}"),
        ("POST", "/api/dev/start"),
        ("POST", "/api/r/import"),
        ("POST", "/api/x"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(found, want);
}

#[actix_rt::test]
async fn every_route_is_documented_and_every_documented_path_is_routed() {
    let app = spawn_app().await;
    // No token: the document is public.
    let (status, doc) = read(app.http.get(app.url("/api/openapi.json")).send().await).await;
    assert_eq!(status, 200, "{doc}");

    let routes = routes_in_source(ROUTE_TABLE);
    // Sanity: the parser found the table (both route functions, the scope and the resource).
    assert!(routes.len() > 60, "only {} routes read", routes.len());
    for expected in [
        ("GET", "/"),
        ("GET", "/api/terminals"),
        ("POST", "/api/accounts/rfid-login"),
        ("GET", "/openapi/manager/status/{sn}"),
        ("GET", "/api/openapi.json"),
        ("POST", "/api/payments/import"),
        ("POST", "/api/auth/challenge"),
        ("POST", "/api/appliance/finish"),
    ] {
        assert!(
            routes.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "the parser missed {expected:?}"
        );
    }

    let operations = documented(&doc);
    let undocumented: Vec<_> = routes.difference(&operations).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from /api/openapi.json: {undocumented:?}"
    );
    let unrouted: Vec<_> = operations.difference(&routes).collect();
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
}

#[actix_rt::test]
async fn the_document_is_openapi_3_1_with_the_bearer_scheme() {
    let app = spawn_app().await;
    let (status, doc) = read(app.http.get(app.url("/api/openapi.json")).send().await).await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");
    assert_eq!(
        doc["components"]["securitySchemes"]["sxdm_token"]["name"],
        "sxdmToken"
    );
    // Every /api operation names its credentials: the bearer token, except the panels' manager routes
    // (`sxdmToken`), the panel socket, this document and the appliance endpoints' calls (JWTs in the body).
    for (method, path) in documented(&doc) {
        let op = &doc["paths"][&path][method.to_ascii_lowercase()];
        let schemes: BTreeSet<&str> = op["security"]
            .as_array()
            .map(|alternatives| {
                alternatives
                    .iter()
                    .flat_map(|a| a.as_object().unwrap().keys().map(String::as_str))
                    .collect()
            })
            .unwrap_or_default();
        let expected: &[&str] = match path.as_str() {
            "/api/openapi.json"
            | "/api/websocket"
            | "/api/auth/challenge"
            | "/api/auth/verify"
            | "/api/appliance/start"
            | "/api/appliance/finish" => &[],
            "/api/accounts/rfid-login" => &["bearer", "rfid_login_token"],
            p if p.starts_with("/api/device/status") => &["sxdm_token"],
            p if p.starts_with("/api/") => &["bearer"],
            _ => continue,
        };
        assert_eq!(
            schemes,
            expected.iter().copied().collect(),
            "{method} {path}"
        );
        assert!(
            !op["responses"].as_object().unwrap().is_empty(),
            "{method} {path}"
        );
    }
    // Every error answer of the REST API shares one schema.
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["error", "message"]));
}
