//! The REST API: one route table ([`configure`]), one file per resource. Every `/api/` route needs the bearer
//! token (`/api/accounts/rfid-login` takes the kiosk's `RFID_LOGIN_TOKEN` as well); every answer is JSON,
//! errors included.

use std::sync::Arc;

use actix::Addr;
use actix_web::{
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    middleware::{from_fn, Next},
    web, HttpRequest, HttpResponse,
};

use crate::config::Settings;
use crate::devices::tm20::session::SessionDeps;
use crate::error::ApiError;
use crate::registry::Registry;
use crate::store::Store;

mod accounts;
mod billing;
mod chargers;
pub mod commands;
mod echo;
mod events;
mod extract;
mod health;
mod id_tags;
mod nodes;
pub mod openapi;
pub mod panels;
pub mod request_id;
mod subscriptions;
mod terminals;
pub mod websocket;

/// Everything a handler needs; built once by `startup`, shared by every worker.
pub struct AppState {
    pub store: Store,
    pub registry: Addr<Registry>,
    pub settings: Arc<Settings>,
    pub api_token: String,
    pub session_deps: Arc<SessionDeps>,
    /// `Some` in cluster mode (`REDIS_URL` set).
    pub cluster: Option<crate::cluster::Cluster>,
    /// This node's id (the cluster's, or a fresh one when running alone).
    pub node_id: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Signing key and lifetimes of the appliance endpoints' JWTs (rooms, appliances and payments).
    pub billing: crate::billing::Billing,
}

/// The route table.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(dashboard))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/pub/chat", web::get().to(websocket::tm20))
        .route("/ws/tm20", web::get().to(websocket::tm20))
        .route("/ws/events", web::get().to(events::subscribe))
        .route("/metrics", web::get().to(metrics_with_token))
        .route("/ws/echo", web::get().to(echo::echo))
        .configure(configure_sxdm_api)
        // Before the `/api` scope: the document needs no token.
        .route("/api/openapi.json", web::get().to(openapi::serve))
        // Before the `/api` scope, whose admin-token guard would refuse a kiosk's RFID_LOGIN_TOKEN.
        .service(
            web::resource("/api/accounts/rfid-login")
                .wrap(from_fn(accounts::require_login_token))
                .route(web::post().to(accounts::rfid_login))
                .default_service(web::to(method_not_allowed)),
        )
        // The appliance endpoints' calls carry their own JWTs, so they too come before the `/api` scope. The
        // firmware adds a trailing slash, which `NormalizePath::trim` removes before routing.
        .service(billing_resource("/api/auth/challenge", billing::challenge))
        .service(billing_resource("/api/auth/verify", billing::verify))
        .service(billing_resource("/api/appliance/start", billing::start))
        .service(billing_resource("/api/appliance/finish", billing::finish))
        .service(
            web::scope("/api")
                .wrap(from_fn(concrete_paths_first))
                .wrap(from_fn(require_token))
                // The busiest route first: every templated route tried before the matching one costs a regex
                // match per request (actix-router), and no other route matches `/terminals/{sn}/command`.
                .route("/terminals/{sn}/command", web::post().to(commands::send))
                .route("/terminals", web::get().to(terminals::list))
                .route("/terminals/{sn}", web::get().to(terminals::detail))
                .route("/terminals/{sn}", web::patch().to(terminals::patch))
                .route("/terminals/{sn}", web::put().to(terminals::put))
                .route("/terminals/{sn}/users", web::get().to(terminals::users))
                .route("/terminals/{sn}/logs", web::get().to(terminals::logs))
                .route("/commands", web::get().to(commands::list))
                .route("/commands/{id}", web::get().to(commands::get))
                .route("/commands/{id}", web::delete().to(commands::cancel))
                .route("/connected", web::get().to(terminals::connected))
                .route("/nodes", web::get().to(nodes::list))
                .route("/events/publish", web::post().to(events::publish))
                .route("/chargers", web::get().to(chargers::list))
                .route("/chargers/{id}", web::get().to(chargers::detail))
                .route("/chargers/{id}", web::patch().to(chargers::patch))
                .route("/chargers/{id}", web::put().to(chargers::put))
                .route("/chargers/{id}/action", web::post().to(chargers::action))
                .route("/chargers/{id}/messages", web::get().to(chargers::messages))
                .route(
                    "/chargers/{id}/transactions",
                    web::get().to(chargers::transactions_of),
                )
                .route("/transactions", web::get().to(chargers::transactions))
                .route("/transactions/{id}", web::get().to(chargers::transaction))
                .route("/id-tags", web::get().to(id_tags::list))
                .route("/id-tags", web::post().to(id_tags::create))
                .route("/id-tags/lookup", web::post().to(id_tags::lookup))
                .route("/id-tags/{tag}", web::get().to(id_tags::get))
                .route("/id-tags/{tag}", web::patch().to(id_tags::patch))
                .route("/id-tags/{tag}", web::delete().to(id_tags::delete))
                .route("/accounts", web::get().to(accounts::list))
                .route("/accounts", web::post().to(accounts::create))
                .route("/accounts/{id}", web::get().to(accounts::get))
                .route("/accounts/{id}", web::patch().to(accounts::patch))
                .route("/accounts/{id}", web::delete().to(accounts::delete))
                // `products` and `subscribe` before `{id}`, which they would otherwise match.
                .route(
                    "/subscriptions/products",
                    web::get().to(subscriptions::list_products),
                )
                .route(
                    "/subscriptions/products",
                    web::post().to(subscriptions::create_product),
                )
                .route(
                    "/subscriptions/products/{id}",
                    web::get().to(subscriptions::get_product),
                )
                .route(
                    "/subscriptions/products/{id}",
                    web::patch().to(subscriptions::patch_product),
                )
                .route(
                    "/subscriptions/products/{id}",
                    web::delete().to(subscriptions::delete_product),
                )
                .route(
                    "/subscriptions/subscribe",
                    web::post().to(subscriptions::subscribe),
                )
                .route("/panels", web::get().to(panels::list))
                .route("/panels/{sn}", web::get().to(panels::detail))
                .route("/panels/{sn}", web::put().to(panels::put))
                .route("/panels/{sn}/request", web::post().to(panels::request))
                .route("/subscriptions", web::get().to(subscriptions::list))
                .route("/subscriptions/{id}", web::get().to(subscriptions::get))
                .route(
                    "/subscriptions/{id}/cancel",
                    web::post().to(subscriptions::cancel),
                )
                .route("/rooms", web::get().to(billing::list_rooms))
                .route("/rooms", web::post().to(billing::create_room))
                .route("/rooms/{key}", web::get().to(billing::get_room))
                .route("/rooms/{key}", web::patch().to(billing::patch_room))
                .route("/rooms/{key}", web::delete().to(billing::delete_room))
                .route(
                    "/rooms/{key}/adjustments",
                    web::get().to(billing::list_adjustments),
                )
                .route(
                    "/rooms/{key}/adjustments",
                    web::post().to(billing::create_adjustment),
                )
                .route("/rooms/{key}/totp", web::post().to(billing::rotate_totp))
                .route("/endpoints", web::get().to(billing::list_endpoints))
                .route("/endpoints", web::post().to(billing::create_endpoint))
                .route("/endpoints/{id}", web::get().to(billing::get_endpoint))
                .route("/endpoints/{id}", web::patch().to(billing::patch_endpoint))
                .route(
                    "/endpoints/{id}",
                    web::delete().to(billing::delete_endpoint),
                )
                .route("/appliances", web::get().to(billing::list_appliances))
                .route("/appliances", web::post().to(billing::create_appliance))
                .route("/appliances/{name}", web::get().to(billing::get_appliance))
                .route(
                    "/appliances/{name}",
                    web::patch().to(billing::patch_appliance),
                )
                .route(
                    "/appliances/{name}",
                    web::delete().to(billing::delete_appliance),
                )
                .route("/runs", web::get().to(billing::list_runs))
                .route("/runs/{id}/abort", web::post().to(billing::abort_run))
                .route("/payments", web::get().to(billing::list_payments))
                .service(
                    web::resource("/payments/import")
                        // Bank statements outgrow the default 256 KiB body limit.
                        .app_data(web::PayloadConfig::new(MAX_BANK_FILE_BYTES))
                        .route(web::post().to(billing::import_payments)),
                )
                .default_service(web::to(not_found)),
        )
        // Templated routes outside `/api` after the `/api` scope, whose static prefix is checked without a regex:
        // before it, each was a regex match on every REST call. No `/api` path can match them.
        .route("/ocpp/{id}", web::get().to(websocket::ocpp))
        .route("/ws/ocpp/{id}", web::get().to(websocket::ocpp))
        .configure(configure_sxdm_outside_api)
        .default_service(web::to(fallback));
}

/// The routes of the panels' manager (SxDeviceManager): the panel WebSocket and the status endpoints, with
/// `sxdmToken` instead of the admin token. Served on the dedicated `SXDM_BIND` listener, and on the main port
/// (there, those under `/api` before the `/api` scope, whose token guard would refuse them; the others after
/// it). Third-party calls (`sxdmSn`) are caught earlier, by [`panels::intercept`].
pub fn configure_sxdm(cfg: &mut web::ServiceConfig) {
    configure_sxdm_api(cfg);
    configure_sxdm_outside_api(cfg);
}

/// The manager's routes under `/api`: on the main port they must come before the `/api` scope.
fn configure_sxdm_api(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/websocket", web::get().to(panels::websocket))
        .route("/api/device/status", web::get().to(panels::status_list))
        .route("/api/device/status/{sn}", web::get().to(panels::status_one));
}

fn configure_sxdm_outside_api(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws/api/websocket", web::get().to(panels::websocket))
        .route(
            "/openapi/manager/status",
            web::get().to(panels::status_list),
        )
        .route(
            "/openapi/manager/status/{sn}",
            web::get().to(panels::status_one),
        );
}

/// The built-in dashboard (`/`): one static page, no build step. A WebSocket upgrade at `/` is still a terminal
/// (some are configured with the bare host).
#[utoipa::path(
    get,
    operation_id = "dashboard",
    path = "/",
    tag = "operations",
    responses(
        (status = 200, description = "The dashboard page", content_type = "text/html", body = String),
        (status = 101, description = "Switching Protocols: a WebSocket upgrade here is a TM20 terminal"),
    ),
)]
async fn dashboard(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if is_websocket_upgrade(&req) {
        return websocket::tm20(req, body, state).await;
    }
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // The page talks to this origin only; nothing else may frame or script it.
        .insert_header((
            "Content-Security-Policy",
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:; frame-ancestors 'none'",
        ))
        .body(include_str!("static/dashboard.html")))
}

fn is_websocket_upgrade(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Largest bank transaction file `POST /api/payments/import` takes.
const MAX_BANK_FILE_BYTES: usize = 16 * 1024 * 1024;

/// A POST-only resource of the appliance endpoints' API.
fn billing_resource<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::post().to(handler))
        .default_service(web::to(method_not_allowed))
}

/// Terminals let people type any path in their menu: a WebSocket upgrade on a path nobody else claims is a
/// terminal; anything else is a JSON 404.
async fn fallback(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if is_websocket_upgrade(&req) && req.method() == actix_web::http::Method::GET {
        return websocket::tm20(req, body, state).await;
    }
    Ok(no_route(&req))
}

/// `GET /metrics` on the main port: Prometheus text, behind the admin token.
#[utoipa::path(
    get,
    operation_id = "metrics_with_token",
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "Missing or invalid token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = []), ("token_query" = [])),
)]
async fn metrics_with_token(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if !token_ok(&req, &state.api_token) {
        return Err(ApiError::Unauthorized);
    }
    Ok(metrics_response())
}

/// The Prometheus text answer.
pub fn metrics_response() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::telemetry_metrics::render())
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    no_route(&req)
}

/// The default of a resource: its path is routed, for other methods.
async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    no_route(&req)
}

/// No route for this method and path: 405 with `Allow` when the path is routed for other methods, else the
/// JSON 404. (Each `.route` of the table is its own resource guarded by its method, so an unknown method on a
/// known path reaches the default service, which alone cannot tell a wrong method from a wrong path.)
fn no_route(req: &HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    let allowed = openapi::allowed_methods(req.path());
    if allowed.is_empty() || allowed.contains(&req.method().as_str()) {
        return not_found_error(req).error_response();
    }
    method_not_allowed_answer(&allowed)
}

/// 405 with the `Allow` header RFC 9110 requires.
fn method_not_allowed_answer(allowed: &[&str]) -> HttpResponse {
    use actix_web::ResponseError;
    let mut response = ApiError::MethodNotAllowed.error_response();
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allowed.join(", ")) {
        response
            .headers_mut()
            .insert(actix_web::http::header::ALLOW, value);
    }
    response
}

fn not_found_error(req: &HttpRequest) -> ApiError {
    ApiError::NotFound(format!("no route for {} {}", req.method(), req.path()))
}

/// A middleware's refusal as an answer (not an `Err`), so the outer middleware (request id) still sees it.
fn refuse<B>(req: ServiceRequest, err: ApiError) -> ServiceResponse<EitherBody<B>> {
    use actix_web::ResponseError;
    req.into_response(err.error_response())
        .map_into_right_body()
}

async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let expected = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.api_token.clone())
        .ok_or_else(|| ApiError::Internal("application state missing".into()))?;
    let gate = AuthGate::of(req.request());
    if let Err(err) = gate.open() {
        return Ok(refuse(req, err));
    }
    let ok = bearer_token(req.headers())
        .is_some_and(|token| constant_time_eq(token.as_bytes(), expected.as_bytes()));
    if gate.record(ok) {
        next.call(req)
            .await
            .map(ServiceResponse::map_into_left_body)
    } else {
        Ok(refuse(req, ApiError::Unauthorized))
    }
}

/// The wrong-token back-off around one credential check (see [`crate::limits::Limits::auth_failed`]).
pub(crate) struct AuthGate {
    limits: Option<web::Data<crate::limits::Limits>>,
    ip: Option<std::net::IpAddr>,
}

impl AuthGate {
    pub(crate) fn of(req: &HttpRequest) -> AuthGate {
        let limits = req.app_data::<web::Data<crate::limits::Limits>>().cloned();
        let ip = limits.as_ref().and_then(|l| l.client_ip(req));
        AuthGate { limits, ip }
    }

    /// `Err(429)` while this address must wait; no token is even compared then.
    pub(crate) fn open(&self) -> Result<(), ApiError> {
        match self.limits.as_ref().and_then(|l| l.auth_banned(self.ip)) {
            Some(wait) => Err(ApiError::RateLimited {
                message: "too many wrong tokens from this address; wait before trying again".into(),
                retry_after: wait.as_secs().max(1),
            }),
            None => Ok(()),
        }
    }

    /// Records the check's outcome and passes it on.
    pub(crate) fn record(&self, ok: bool) -> bool {
        if let Some(limits) = &self.limits {
            if ok {
                limits.auth_succeeded(self.ip);
            } else {
                limits.auth_failed(self.ip);
            }
        }
        ok
    }
}

/// Inside the token guard: a concrete path is not a value of a neighbour's parameter. Without this,
/// `GET /api/subscriptions/subscribe` reached `GET /api/subscriptions/{id}` and failed to parse `subscribe` as
/// an id (400), where the document (and OpenAPI's matching rules) make it a 405 (found by schemathesis).
async fn concrete_paths_first(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    match openapi::concrete_methods(req.path()) {
        Some(methods) if !methods.contains(&req.method().as_str()) => {
            let answer = method_not_allowed_answer(&methods);
            Ok(req.into_response(answer).map_into_right_body())
        }
        _ => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
    }
}

/// The token of an `Authorization: Bearer …` header.
fn bearer_token(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    headers
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

/// The admin token from `Authorization: Bearer …` or `?token=` (for browsers' WebSocket API, which cannot
/// set headers).
pub(crate) fn token_ok(req: &HttpRequest, expected: &str) -> bool {
    let gate = AuthGate::of(req);
    if gate.open().is_err() {
        return false;
    }
    gate.record(presented_token_ok(req, expected))
}

fn presented_token_ok(req: &HttpRequest, expected: &str) -> bool {
    let from_query =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("token").cloned());
    bearer_token(req.headers())
        .map(str::to_owned)
        .or(from_query)
        .is_some_and(|token| constant_time_eq(token.as_bytes(), expected.as_bytes()))
}

/// Token comparison whose time does not depend on where the bytes differ (a length mismatch is
/// still visible, as with any comparison; the length of a token is no secret).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
