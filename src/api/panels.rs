//! Shenxing panels: the panel WebSocket, the SxDeviceManager-compatible third-party API (any request with an
//! `sxdmSn` header is the panel's own REST API, forwarded over its socket), the manager's status endpoints,
//! and the admin view (`/api/panels`).
//!
//! Third-party answers copy the vendor manager's, errors included (`{"status":403,"msg":"设备离线"}` …), so
//! existing clients keep working; the admin routes answer like the rest of our API.

use std::time::{Duration, Instant};

use actix::{Actor, AsyncContext};
use actix_web::{
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::StatusCode,
    middleware::Next,
    web, HttpRequest, HttpResponse,
};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::commands::{
    enqueue_offline, forward, parse_deliver, parse_expiry, remote_route, Answer, Ran,
};
use super::extract::JsonObject;
use super::terminals::{connected_by_sn, parse_flag};
use super::AppState;
use crate::cluster::{ForwardRequest, Route};
use crate::devices::sxdm::dispatch::{self, DispatchError, Finished};
use crate::devices::sxdm::session::{answer_from_json, answer_json, GetStatus, PanelSession};
use crate::devices::sxdm::{self as sxdm, PanelAnswer, PanelCall};
use crate::devices::{transport, Origin};
use crate::error::ApiError;
use crate::registry::DeviceAddr;
use crate::store::panels::PanelEntry;

/// The request header naming the panel.
const SN_HEADER: &str = "sxdmsn";
/// The request header carrying `SXDM_AUTH_TOKEN`.
const TOKEN_HEADER: &str = "sxdmtoken";

/// Ceiling on a waiting call if a session misbehaves; the session's own `SXDM_TIMEOUT` answers first.
const BACKSTOP: Duration = Duration::from_secs(5);

/// The vendor manager's error answers.
fn manager_error(status: u16) -> HttpResponse {
    let body = match status {
        400 => json!({"status": 400, "msg": "header中没有设置[sxdmSn]字段(设备SN号)"}),
        401 => json!({"status": 401, "msg": "请求认证失败"}),
        403 => json!({"status": 403, "msg": "设备离线"}),
        _ => json!({"status": status, "msg": "error"}),
    };
    raw(status, body)
}

fn raw(status: u16, body: Value) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY)).json(body)
}

fn timeout() -> HttpResponse {
    raw(408, json!({"error": "Timeout"}))
}

fn gone() -> HttpResponse {
    raw(408, json!({"error": "Device offline or not authed"}))
}

/// Whether the `sxdmToken` header is right (always, when no `SXDM_AUTH_TOKEN` is configured).
fn sxdm_token_ok(req: &HttpRequest, state: &AppState) -> bool {
    let Some(expected) = state
        .settings
        .sxdm_auth_token
        .as_deref()
        .filter(|t| !t.is_empty())
    else {
        return true;
    };
    let gate = super::AuthGate::of(req);
    if gate.open().is_err() {
        return false;
    }
    gate.record(
        req.headers()
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|token| {
                super::constant_time_eq(token.trim().as_bytes(), expected.as_bytes())
            }),
    )
}

/// Outermost middleware on both listeners: a request carrying `sxdmSn` is a call to that panel's API, whatever
/// its path. It runs before path normalisation so the panel gets the path exactly as the caller wrote it.
pub async fn intercept(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if !req.headers().contains_key(SN_HEADER) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Err(ApiError::Internal("application state missing".into()).into());
    };
    let body = req.extract::<web::Bytes>().await;
    let response = third_party(&state, req.request(), body).await;
    Ok(req.into_response(response).map_into_right_body())
}

/// One third-party call (`sxdmSn` header): checks, forwards to the panel wherever it is connected, answers
/// with the panel's status and body.
async fn third_party(
    state: &AppState,
    req: &HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
) -> HttpResponse {
    let sn = req
        .headers()
        .get(SN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    if sn.is_empty() {
        return manager_error(400);
    }
    if !sxdm_token_ok(req, state) {
        return manager_error(401);
    }
    let body = match body {
        Ok(bytes) => bytes,
        Err(err) => {
            let status = err.as_response_error().status_code().as_u16();
            return raw(
                status,
                json!({"status": status, "msg": format!("request body refused: {err}")}),
            );
        }
    };
    let body = match parse_body(&body) {
        Ok(body) => body,
        Err(msg) => return raw(400, json!({"status": 400, "msg": msg})),
    };
    let method = req.method().as_str().to_ascii_uppercase();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    if !sxdm::valid_sn(&sn) || !sxdm::valid_method(&method) {
        return manager_error(403);
    }
    let call = PanelCall { method, path, body };
    match call_anywhere(state, &sn, call, Origin::now()).await {
        Ok((_, answer)) => panel_response(answer),
        Err(response) => response,
    }
}

/// A JSON body, or none. Panels only speak JSON; anything else is refused here rather than by the panel.
fn parse_body(bytes: &[u8]) -> Result<Option<Value>, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(bytes)
        .map(Some)
        .map_err(|err| format!("request body is not JSON: {err}"))
}

/// The panel's answer as our HTTP answer: its status, its body (none when it sent none).
fn panel_response(answer: PanelAnswer) -> HttpResponse {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = HttpResponse::build(status);
    if answer.body.is_null() {
        response.finish()
    } else {
        response.json(answer.body)
    }
}

/// Runs a call on the panel, on this node or the one holding it. Errors are finished HTTP answers in the
/// manager's style.
async fn call_anywhere(
    state: &AppState,
    sn: &str,
    call: PanelCall,
    origin: Origin,
) -> Result<(Uuid, PanelAnswer), HttpResponse> {
    if let Some(DeviceAddr::Sxdm(_)) = state.session_deps.sessions.lookup(sn) {
        return call_local(state, sn, call, origin).await;
    }
    let route = remote_route(state, sn).await.map_err(api_error)?;
    match route {
        Some(route) if route.protocol == sxdm::PROTOCOL => {
            call_remote(state, sn, &route, call, origin).await
        }
        _ => Err(manager_error(403)),
    }
}

fn api_error(err: ApiError) -> HttpResponse {
    let (status, body) = err.parts();
    HttpResponse::build(status).json(body)
}

/// Runs a call on a panel connected to this node.
async fn call_local(
    state: &AppState,
    sn: &str,
    call: PanelCall,
    origin: Origin,
) -> Result<(Uuid, PanelAnswer), HttpResponse> {
    let Some(DeviceAddr::Sxdm(session)) = state.session_deps.sessions.lookup(sn) else {
        return Err(manager_error(403));
    };
    // The caller always waits for a panel's answer.
    let (id, outcome) = dispatch::dispatch(
        &state.store,
        &state.session_deps.events,
        &session,
        sn,
        call,
        origin.for_caller(true),
    )
    .await
    .map_err(|err| match err {
        DispatchError::NotConnected(_) => manager_error(403),
        DispatchError::QueueFull(_) => raw(
            429,
            json!({"status": 429, "msg": format!("panel {sn} has {} calls in flight; retry later", state.settings.command_queue_size)}),
        ),
        DispatchError::Store(err) => api_error(err.into()),
    })?;
    let patience = state.settings.sxdm_timeout + BACKSTOP;
    match tokio::time::timeout(patience, outcome).await {
        Ok(Ok(Finished::Answered(answer))) => Ok((id, answer)),
        Ok(Ok(Finished::TimedOut)) | Err(_) => Err(timeout()),
        Ok(Ok(Finished::Disconnected)) | Ok(Err(_)) => Err(gone()),
    }
}

/// Sends a call to the node holding the panel and relays its answer.
async fn call_remote(
    state: &AppState,
    sn: &str,
    route: &Route,
    call: PanelCall,
    origin: Origin,
) -> Result<(Uuid, PanelAnswer), HttpResponse> {
    let (queued, expires_at) = match origin {
        Origin::New {
            deliver_queued,
            expires_at,
        } => (deliver_queued, expires_at),
        Origin::Claimed { .. } => (true, None),
        Origin::Live { .. } => (false, None),
    };
    let request = ForwardRequest {
        correlation: Uuid::new_v4(),
        from: String::new(),
        kind: sxdm::DEVICE_KIND.into(),
        sn: sn.to_owned(),
        command: call.method.clone(),
        params: json!({"method": call.method, "path": call.path, "body": call.body}),
        wait: true,
        queued,
        expires_at,
        deadline_ms: 0,
    };
    match forward(state, sn, route, request).await {
        Ok(Ran::Finished { id, reply, .. }) => match answer_from_json(&reply) {
            Some(answer) => Ok((id, answer)),
            None => Err(api_error(ApiError::Internal(format!(
                "node {} sent an unreadable panel answer",
                route.node
            )))),
        },
        Ok(Ran::Queued(_)) => Err(api_error(ApiError::Internal(
            "a waiting panel call came back queued".into(),
        ))),
        Err(Answer::Raw { status, body }) => Err(HttpResponse::build(status).json(body)),
        Err(Answer::Api(err)) => Err(api_error(err)),
    }
}

/// Runs a panel call another node forwarded to us; errors keep the status and body a local call would give.
pub(crate) async fn run_forwarded(
    state: &AppState,
    request: &ForwardRequest,
) -> Result<Ran, Answer> {
    let Some(call) = PanelCall::from_params(&request.params) else {
        return Err(ApiError::BadRequest("malformed forwarded panel call".into()).into());
    };
    // A panel call always waits.
    let origin = Origin::forwarded(request.queued, request.expires_at, true);
    match call_local(state, &request.sn, call, origin).await {
        Ok((id, answer)) => Ok(Ran::Finished {
            id,
            result: answer.status < 400,
            reply: answer_json(&answer),
        }),
        Err(response) => Err(answer_of(response).await),
    }
}

/// Turns a finished error answer back into status + JSON, for the cluster reply.
async fn answer_of(response: HttpResponse) -> Answer {
    let status = response.status();
    let bytes = actix_web::body::to_bytes(response.into_body())
        .await
        .unwrap_or_default();
    Answer::Raw {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// A panel connects (`/api/websocket/` or `/ws/api/websocket/`).
#[utoipa::path(
    get,
    operation_id = "panels_websocket",
    path = "/api/websocket",
    tag = "websocket",
    responses(
        (status = 101, description = "Switching Protocols: the socket of a Shenxing panel (it logs in with its challenge)"),
    ),
)]
pub async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, events, outbox) =
        transport::accept(&req, body, state.settings.sxdm_max_frame_bytes)?;
    let remote = req
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    let session = PanelSession::new(std::sync::Arc::clone(&state.session_deps), outbox, remote);
    PanelSession::create(move |ctx| {
        ctx.add_stream(events);
        session
    });
    Ok(response)
}

/// One panel's status as the manager reports it.
async fn status_of(state: &AppState, sn: &str, node: &str) -> Value {
    let mut last = None;
    if node == state.node_id {
        if let Some(DeviceAddr::Sxdm(addr)) = state.session_deps.sessions.lookup(sn) {
            last = addr
                .send(GetStatus)
                .await
                .ok()
                .flatten()
                .map(|s| s.last_heartbeat_ms);
        }
    }
    if last.is_none() {
        // On another node: the last time that node recorded (it writes `last_seen` every ping interval).
        last = state
            .store
            .panel_by_sn(sn)
            .await
            .ok()
            .flatten()
            .and_then(|row| row.last_seen)
            .map(|at| at.timestamp_millis());
    }
    json!({"online": true, "sn": sn, "lastHeartBeatTime": last})
}

/// `GET /api/device/status/{sn}/` (also `/openapi/manager/status/{sn}/`).
#[utoipa::path(
    get,
    operation_id = "panels_status_one",
    path = "/api/device/status/{sn}",
    tag = "sxdm-manager",
    params(
        ("sn" = String, Path, description = "Panel serial number"),
    ),
    responses(
        (status = 200, description = "The panel's status (`online:false` when it is not connected)", body = crate::api::openapi::PanelStatus),
        (status = 401, description = "SXDM_AUTH_TOKEN is set and `sxdmToken` is missing or wrong", body = crate::api::openapi::ManagerError),
    ),
    security(("sxdm_token" = []), ()),
)]
pub async fn status_one(
    req: HttpRequest,
    state: web::Data<AppState>,
    sn: web::Path<String>,
) -> HttpResponse {
    if !sxdm_token_ok(&req, &state) {
        return manager_error(401);
    }
    let sn = sn.into_inner();
    let connected = match connected_by_sn(&state).await {
        Ok(all) => all,
        Err(err) => return api_error(err),
    };
    match connected
        .get(&sn)
        .filter(|c| c.info.protocol == sxdm::PROTOCOL)
    {
        Some(panel) => HttpResponse::Ok().json(status_of(&state, &sn, &panel.node).await),
        None => {
            let last = state
                .store
                .panel_by_sn(&sn)
                .await
                .ok()
                .flatten()
                .and_then(|row| row.last_seen)
                .map(|at| at.timestamp_millis());
            HttpResponse::Ok().json(json!({"online": false, "sn": sn, "lastHeartBeatTime": last}))
        }
    }
}

/// `GET /api/device/status/` (also `/openapi/manager/status/`): every logged-in panel.
#[utoipa::path(
    get,
    operation_id = "panels_status_list",
    path = "/api/device/status",
    tag = "sxdm-manager",
    responses(
        (status = 200, description = "Every logged-in panel", body = crate::api::openapi::PanelStatusList),
        (status = 401, description = "SXDM_AUTH_TOKEN is set and `sxdmToken` is missing or wrong", body = crate::api::openapi::ManagerError),
    ),
    security(("sxdm_token" = []), ()),
)]
pub async fn status_list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !sxdm_token_ok(&req, &state) {
        return manager_error(401);
    }
    let connected = match connected_by_sn(&state).await {
        Ok(all) => all,
        Err(err) => return api_error(err),
    };
    let mut panels: Vec<_> = connected
        .into_values()
        .filter(|c| c.info.protocol == sxdm::PROTOCOL)
        .collect();
    panels.sort_by(|a, b| a.info.sn.cmp(&b.info.sn));
    let mut items = Vec::with_capacity(panels.len());
    for panel in panels {
        items.push(status_of(&state, &panel.info.sn, &panel.node).await);
    }
    HttpResponse::Ok().json(items)
}

/// The dedicated listener (`SXDM_BIND`) has nothing but panel routes: anything else lacks `sxdmSn`.
pub async fn missing_sn() -> HttpResponse {
    manager_error(400)
}

// ---- admin -------------------------------------------------------------------------------------------------

fn panel_json(row: &entity::panel::Model, online: Option<&super::terminals::Connected>) -> Value {
    json!({
        "sn": row.sn,
        "name": row.name,
        "is_active": row.is_active,
        "is_whitelisted": row.is_whitelisted,
        "has_secret": row.secret.is_some(),
        "online": online.is_some(),
        "node": online.map(|c| c.node.clone()),
        "remote_addr": online.map(|c| c.info.remote_addr.clone()),
        "last_login_at": row.last_login_at,
        "last_seen": row.last_seen,
        "created_at": row.created_at,
    })
}

/// `GET /api/panels`: every known panel (logged in once, or registered by an admin), with its online state.
#[utoipa::path(
    get,
    operation_id = "panels_list",
    path = "/api/panels",
    tag = "panels",
    responses(
        (status = 200, description = "Every known panel", body = crate::api::openapi::PanelList),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rows = state.store.list_panels().await?;
    let connected = connected_by_sn(&state).await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|row| {
            let online = connected
                .get(&row.sn)
                .filter(|c| c.info.protocol == sxdm::PROTOCOL);
            panel_json(row, online)
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"items": items})))
}

async fn known_panel(state: &AppState, sn: &str) -> Result<entity::panel::Model, ApiError> {
    state
        .store
        .panel_by_sn(sn)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("panel {sn} is unknown")))
}

/// `GET /api/panels/{sn}`
#[utoipa::path(
    get,
    operation_id = "panels_detail",
    path = "/api/panels/{sn}",
    tag = "panels",
    params(
        ("sn" = String, Path, description = "Panel serial number"),
    ),
    responses(
        (status = 200, description = "The panel", body = crate::api::openapi::Panel),
        (status = 404, description = "Unknown panel", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn detail(
    state: web::Data<AppState>,
    sn: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = known_panel(&state, &sn).await?;
    let connected = connected_by_sn(&state).await?;
    let online = connected
        .get(&row.sn)
        .filter(|c| c.info.protocol == sxdm::PROTOCOL);
    Ok(HttpResponse::Ok().json(panel_json(&row, online)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PanelPut)]
pub struct PutPanel {
    name: Option<String>,
    /// The panel's login secret (at most 256 bytes); empty or absent: none.
    #[schema(max_length = 256)]
    secret: Option<String>,
    #[serde(default = "yes")]
    is_active: bool,
}

fn yes() -> bool {
    true
}

/// `PUT /api/panels/{sn}` `{"name"?, "secret"?, "is_active"?}`: registers (whitelists) a panel and sets its
/// login secret; the whole entry is replaced. 201 when created, 200 when replaced. The secret is never shown.
#[utoipa::path(
    put,
    operation_id = "panels_put",
    path = "/api/panels/{sn}",
    tag = "panels",
    params(
        ("sn" = String, Path, description = "Panel serial number"),
    ),
    request_body = PutPanel,
    responses(
        (status = 200, description = "Replaced", body = crate::api::openapi::Panel),
        (status = 201, description = "Created", body = crate::api::openapi::Panel),
        (status = 400, description = "Malformed body, an invalid serial number or a secret over 256 bytes", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn put(
    state: web::Data<AppState>,
    sn: web::Path<String>,
    body: JsonObject<PutPanel>,
) -> Result<HttpResponse, ApiError> {
    let sn = sn.into_inner();
    if !sxdm::valid_sn(&sn) {
        return Err(ApiError::InvalidParams {
            field: "sn".into(),
            message: "a serial number is 1-64 printable characters without spaces".into(),
        });
    }
    let body = body.into_inner();
    let secret = body.secret.filter(|s| !s.is_empty());
    if secret.as_ref().is_some_and(|s| s.len() > 256) {
        return Err(ApiError::InvalidParams {
            field: "secret".into(),
            message: "secret is at most 256 bytes".into(),
        });
    }
    let (row, created) = state
        .store
        .put_panel(
            &sn,
            PanelEntry {
                name: body
                    .name
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty()),
                secret,
                is_active: body.is_active,
            },
        )
        .await?;
    if !row.is_active {
        // Deactivating a panel takes effect now, not at its next login.
        if let Some(DeviceAddr::Sxdm(addr)) = state.session_deps.sessions.lookup(&sn) {
            addr.do_send(crate::devices::CloseSession {
                code: actix_ws::CloseCode::Policy,
                reason: "panel deactivated".into(),
            });
        }
    }
    let connected = connected_by_sn(&state).await?;
    let online = connected
        .get(&row.sn)
        .filter(|c| c.info.protocol == sxdm::PROTOCOL);
    let body = panel_json(&row, online);
    Ok(if created {
        HttpResponse::Created().json(body)
    } else {
        HttpResponse::Ok().json(body)
    })
}

#[derive(Deserialize)]
pub struct RequestQuery {
    deliver: Option<String>,
    wait: Option<String>,
}

const REQUEST_KEYS: &[&str] = &["method", "path", "body", "expires_in"];

/// `POST /api/panels/{sn}/request[?deliver=queued]` `{"method","path","body"?,"expires_in"?}`: the admin's
/// way to call a panel (with the bearer token, and with the offline queue). Answers
/// `{"id","status","body","elapsed_ms"}` with the panel's status and body.
#[utoipa::path(
    post,
    operation_id = "panels_request",
    path = "/api/panels/{sn}/request",
    tag = "panels",
    params(
        ("sn" = String, Path, description = "Panel serial number"),
        ("deliver" = Option<crate::api::openapi::Deliver>, Query, description = "queued: store the call for an offline device (202) and deliver it when it next connects"),
        ("wait" = Option<bool>, Query, description = "false: answer 202 with a command id at once instead of waiting for the device"),
    ),
    request_body = crate::api::openapi::PanelRequest,
    responses(
        (status = 200, description = "The panel answered (its status and body)", body = crate::api::openapi::PanelAnswer),
        (status = 202, description = "Queued (`deliver=queued`, panel offline)", body = crate::api::openapi::Queued),
        (status = 400, description = "Malformed body or query, or an invalid method or path (`field`)", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "The panel went offline or did not log in", body = crate::api::openapi::ManagerError),
        (status = 404, description = "Unknown panel", body = crate::api::openapi::ErrorBody),
        (status = 408, description = "The panel did not answer within SXDM_TIMEOUT, or disconnected", body = crate::api::openapi::PanelTimeout),
        (status = 409, description = "The panel is not connected (without `deliver=queued`)", body = crate::api::openapi::ErrorBody),
        (status = 429, description = "Too many calls in flight to the panel, or its queue is full", body = crate::api::openapi::AnyError),
        (status = 503, description = "The node holding the panel is unreachable", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn request(
    state: web::Data<AppState>,
    sn: web::Path<String>,
    query: web::Query<RequestQuery>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let sn = sn.into_inner();
    let queued = parse_deliver(query.deliver.as_deref())?;
    // Accepted for symmetry with the other device kinds; a panel call always waits for the panel's answer.
    parse_flag("wait", query.wait.as_deref(), true)?;
    let Value::Object(fields) = body.into_inner() else {
        return Err(ApiError::BadRequest(
            "body must be a JSON object like {\"method\":\"GET\",\"path\":\"/api/devices/status\"}"
                .into(),
        ));
    };
    if let Some(unknown) = fields.keys().find(|k| !REQUEST_KEYS.contains(&k.as_str())) {
        return Err(ApiError::InvalidParams {
            field: unknown.clone(),
            message: format!(
                "unknown field `{unknown}`; the body has method, path, body and expires_in"
            ),
        });
    }
    let method = fields
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_ascii_uppercase)
        .filter(|m| sxdm::valid_method(m))
        .ok_or_else(|| ApiError::InvalidParams {
            field: "method".into(),
            message: "method is GET, POST, PUT, DELETE, PATCH, HEAD or OPTIONS".into(),
        })?;
    let path = fields
        .get("path")
        .and_then(Value::as_str)
        .filter(|p| p.starts_with('/') && !p.chars().any(char::is_whitespace) && p.len() <= 2048)
        .ok_or_else(|| ApiError::InvalidParams {
            field: "path".into(),
            message: "path is the panel API path, starting with / and without spaces".into(),
        })?
        .to_owned();
    let call_body = fields.get("body").filter(|b| !b.is_null()).cloned();
    let expires_at = parse_expiry(&fields)?;
    let call = PanelCall {
        method,
        path,
        body: call_body,
    };
    let name = call.name();
    let origin = Origin::New {
        deliver_queued: queued,
        expires_at,
    };
    let online = matches!(
        state.session_deps.sessions.lookup(&sn),
        Some(DeviceAddr::Sxdm(_))
    ) || remote_route(&state, &sn)
        .await?
        .is_some_and(|r| r.protocol == sxdm::PROTOCOL);
    if !online {
        known_panel(&state, &sn).await?;
        if !queued {
            return Err(ApiError::NotConnected(format!(
                "panel {sn} is not connected"
            )));
        }
        let params = dispatch::params_of(&call, true);
        return match enqueue_offline(&state, sxdm::DEVICE_KIND, &sn, &name, params, expires_at)
            .await
        {
            Ok(Ran::Queued(id)) => {
                Ok(HttpResponse::Accepted().json(json!({"id": id, "state": "queued"})))
            }
            Ok(Ran::Finished { .. }) => {
                Err(ApiError::Internal("a queued call finished at once".into()))
            }
            Err(Answer::Api(err)) => Err(err),
            Err(Answer::Raw { status, body }) => Ok(HttpResponse::build(status).json(body)),
        };
    }
    match call_anywhere(&state, &sn, call, origin).await {
        Ok((id, answer)) => Ok(HttpResponse::Ok().json(json!({
            "id": id,
            "command": name,
            "status": answer.status,
            "body": answer.body,
            "elapsed_ms": started.elapsed().as_millis() as u64,
        }))),
        Err(response) => Ok(response),
    }
}
