//! `/api/terminals…` and `/api/connected`.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use entity::terminal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::extract::JsonObject;
use super::AppState;
use crate::error::ApiError;
use crate::registry::{ConnectionInfo, ListConnected};
use crate::store::{LogCursor, TerminalEntry, TerminalPatch};

const DEFAULT_LOG_LIMIT: u64 = 50;
const MAX_LOG_LIMIT: u64 = 1000;

#[derive(Serialize)]
struct TerminalItem {
    sn: String,
    /// Node holding the terminal's socket, when online.
    node: Option<String>,
    name: Option<String>,
    model: Option<String>,
    firmware: Option<String>,
    is_active: bool,
    is_whitelisted: bool,
    online: bool,
    last_seen: Option<DateTime<Utc>>,
}

impl TerminalItem {
    fn new(row: &terminal::Model, node: Option<String>) -> Self {
        TerminalItem {
            online: node.is_some(),
            node,
            sn: row.sn.clone(),
            name: row.name.clone(),
            model: row.model.clone(),
            firmware: row.firmware.clone(),
            is_active: row.is_active,
            is_whitelisted: row.is_whitelisted,
            last_seen: row.last_seen,
        }
    }
}

#[derive(Serialize)]
struct TerminalDetail {
    #[serde(flatten)]
    item: TerminalItem,
    devinfo: Option<Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    connection: Option<Connected>,
}

/// One connected device and the node holding it.
#[derive(Clone, Serialize)]
pub struct Connected {
    #[serde(flatten)]
    pub info: ConnectionInfo,
    pub node: String,
}

impl Connected {
    pub fn is_ocpp(&self) -> bool {
        self.info.protocol == crate::devices::ocpp::PROTOCOL
    }
}

async fn local_connections(state: &AppState) -> Result<Vec<Connected>, ApiError> {
    let list = state
        .registry
        .send(ListConnected)
        .await
        .map_err(|err| ApiError::Internal(format!("registry unavailable: {err}")))?;
    Ok(list
        .into_iter()
        .map(|info| Connected {
            info,
            node: state.node_id.clone(),
        })
        .collect())
}

/// Every connected device: the whole cluster's (from the directory) in cluster mode, else this node's.
/// When Redis is unreachable, this node's own sockets are still listed.
pub(crate) async fn connected_by_sn(
    state: &AppState,
) -> Result<HashMap<String, Connected>, ApiError> {
    let mut all: HashMap<String, Connected> = local_connections(state)
        .await?
        .into_iter()
        .map(|c| (c.info.sn.clone(), c))
        .collect();
    if let Some(cluster) = &state.cluster {
        match cluster.connected().await {
            Ok(routes) => {
                for (sn, route) in routes {
                    all.entry(sn.clone()).or_insert_with(|| Connected {
                        info: ConnectionInfo {
                            protocol: crate::devices::protocol_name(&route.protocol),
                            sn,
                            remote_addr: route.remote_addr,
                            connected_at: route.connected_at,
                        },
                        node: route.node,
                    });
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cluster directory unreachable; listing local devices only")
            }
        }
    }
    Ok(all)
}

/// `GET /api/terminals`
#[utoipa::path(
    get,
    operation_id = "terminals_list",
    path = "/api/terminals",
    tag = "terminals",
    responses(
        (status = 200, description = "All known terminals", body = crate::api::openapi::TerminalList),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rows = state.store.list_terminals().await?;
    let online = connected_by_sn(&state).await?;
    let items: Vec<TerminalItem> = rows
        .iter()
        .map(|row| {
            let node = online
                .get(&row.sn)
                .filter(|c| !c.is_ocpp())
                .map(|c| c.node.clone());
            TerminalItem::new(row, node)
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

async fn known_terminal(state: &AppState, sn: &str) -> Result<terminal::Model, ApiError> {
    state
        .store
        .terminal_by_sn(sn)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("terminal {sn} is unknown")))
}

fn detail_of(row: terminal::Model, connection: Option<Connected>) -> TerminalDetail {
    TerminalDetail {
        item: TerminalItem::new(&row, connection.as_ref().map(|c| c.node.clone())),
        devinfo: row.devinfo,
        created_at: row.created_at,
        updated_at: row.updated_at,
        connection,
    }
}

/// `GET /api/terminals/{sn}`
#[utoipa::path(
    get,
    operation_id = "terminals_detail",
    path = "/api/terminals/{sn}",
    tag = "terminals",
    params(
        ("sn" = String, Path, description = "Terminal serial number"),
    ),
    responses(
        (status = 200, description = "The terminal", body = crate::api::openapi::TerminalDetail),
        (status = 404, description = "Unknown terminal", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn detail(
    state: web::Data<AppState>,
    sn: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = known_terminal(&state, &sn).await?;
    let connection = connected_by_sn(&state).await?.remove(&row.sn);
    Ok(HttpResponse::Ok().json(detail_of(row, connection)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TerminalPatch)]
pub struct PatchBody {
    is_active: Option<bool>,
    is_whitelisted: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    name: Option<Option<String>>,
}

/// Distinguishes `"name": null` (clear it) from an absent `name` (keep it).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `PATCH /api/terminals/{sn}`
#[utoipa::path(
    patch,
    operation_id = "terminals_patch",
    path = "/api/terminals/{sn}",
    tag = "terminals",
    params(
        ("sn" = String, Path, description = "Terminal serial number"),
    ),
    request_body = PatchBody,
    responses(
        (status = 200, description = "The terminal, changed", body = crate::api::openapi::TerminalDetail),
        (status = 400, description = "Malformed JSON body, or an invalid field (`field` names it)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown terminal", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn patch(
    state: web::Data<AppState>,
    sn: web::Path<String>,
    body: JsonObject<PatchBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let patch = TerminalPatch {
        is_active: body.is_active,
        is_whitelisted: body.is_whitelisted,
        name: body.name,
    };
    let row = state
        .store
        .patch_terminal(&sn, patch)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("terminal {sn} is unknown")))?;
    let connection = connected_by_sn(&state).await?.remove(&row.sn);
    Ok(HttpResponse::Ok().json(detail_of(row, connection)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TerminalPut)]
pub struct PutBody {
    name: Option<String>,
    #[serde(default = "default_true")]
    is_active: bool,
    #[serde(default)]
    is_whitelisted: bool,
}

fn default_true() -> bool {
    true
}

/// `PUT /api/terminals/{sn}`: 201 when created, 200 when replaced.
#[utoipa::path(
    put,
    operation_id = "terminals_put",
    path = "/api/terminals/{sn}",
    tag = "terminals",
    params(
        ("sn" = String, Path, description = "Terminal serial number"),
    ),
    request_body = PutBody,
    responses(
        (status = 200, description = "Replaced", body = crate::api::openapi::TerminalDetail),
        (status = 201, description = "Created", body = crate::api::openapi::TerminalDetail),
        (status = 400, description = "Malformed body, or a serial number no terminal can send", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn put(
    state: web::Data<AppState>,
    sn: web::Path<String>,
    body: JsonObject<PutBody>,
) -> Result<HttpResponse, ApiError> {
    let sn = sn.into_inner();
    validate_sn(&sn)?;
    let body = body.into_inner();
    let (row, created) = state
        .store
        .put_terminal(
            &sn,
            TerminalEntry {
                name: body.name,
                is_active: body.is_active,
                is_whitelisted: body.is_whitelisted,
            },
        )
        .await?;
    let connection = connected_by_sn(&state).await?.remove(&row.sn);
    let mut response = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(detail_of(row, connection)))
}

/// Same rule the `reg` parser applies, so an admin cannot whitelist a serial number no terminal can send.
fn validate_sn(sn: &str) -> Result<(), ApiError> {
    let ok = !sn.is_empty()
        && sn.len() <= crate::devices::tm20::protocol::MAX_SN_LEN
        && sn.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidParams {
            field: "sn".into(),
            message: "serial numbers are 1-64 printable ASCII characters without spaces".into(),
        })
    }
}

#[derive(Deserialize)]
pub struct UsersQuery {
    #[serde(default)]
    records: Option<String>,
}

/// `GET /api/terminals/{sn}/users[?records=true]`
#[utoipa::path(
    get,
    operation_id = "terminals_users",
    path = "/api/terminals/{sn}/users",
    tag = "terminals",
    params(
        ("sn" = String, Path, description = "Terminal serial number"),
        ("records" = Option<bool>, Query, description = "true: include the template / card data of each slot"),
    ),
    responses(
        (status = 200, description = "Stored users with their credential slots", body = crate::api::openapi::UserList),
        (status = 400, description = "Invalid `records` flag", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown terminal", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn users(
    state: web::Data<AppState>,
    sn: web::Path<String>,
    query: web::Query<UsersQuery>,
) -> Result<HttpResponse, ApiError> {
    let with_records = parse_flag("records", query.records.as_deref(), false)?;
    let terminal = known_terminal(&state, &sn).await?;
    let users = state.store.users_with_credentials(terminal.id).await?;
    let items: Vec<Value> = users
        .into_iter()
        .map(|(user, credentials)| {
            let credentials: Vec<Value> = credentials
                .into_iter()
                .map(|c| {
                    let mut slot = json!({
                        "backupnum": c.backupnum,
                        "kind": credential_kind(c.backupnum),
                        "has_record": c.record.is_some(),
                        "updated_at": c.updated_at,
                    });
                    if with_records {
                        slot["record"] = json!(c.record);
                    }
                    slot
                })
                .collect();
            json!({
                "enrollid": user.enrollid,
                "name": user.name,
                "admin": user.admin,
                "is_enabled": user.is_enabled,
                "updated_at": user.updated_at,
                "credentials": credentials,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// Names of the `backupnum` slots (tm20.md §1.4).
fn credential_kind(backupnum: i32) -> &'static str {
    match backupnum {
        0..=9 => "fingerprint",
        10 => "password",
        11 => "card",
        20..=27 => "face",
        30..=37 => "palm",
        50 => "photo",
        _ => "other",
    }
}

#[derive(Deserialize)]
pub struct LogsQuery {
    limit: Option<String>,
    before: Option<String>,
    since: Option<String>,
}

/// `GET /api/terminals/{sn}/logs?limit=50&before=<cursor>&since=<time>`: newest first.
#[utoipa::path(
    get,
    operation_id = "terminals_logs",
    path = "/api/terminals/{sn}/logs",
    tag = "terminals",
    params(
        ("sn" = String, Path, description = "Terminal serial number"),
        ("limit" = Option<u32>, Query, description = "Page size, 1-1000 (default 50)", minimum = 1, maximum = 1000),
        ("before" = Option<String>, Query, description = "The `next_before` of the previous page"),
        ("since" = Option<String>, Query, description = "A device-local time (`2024-05-01 08:00:00`) or date (`2024-05-01`)"),
    ),
    responses(
        (status = 200, description = "Attendance logs, newest first by device time", body = crate::api::openapi::LogPage),
        (status = 400, description = "Invalid `limit`, `before` or `since`", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown terminal", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn logs(
    state: web::Data<AppState>,
    sn: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LOG_LIMIT,
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_LOG_LIMIT).contains(n))
            .ok_or_else(|| ApiError::InvalidParams {
                field: "limit".into(),
                message: format!("limit must be an integer from 1 to {MAX_LOG_LIMIT}"),
            })?,
    };
    let before = query
        .before
        .as_deref()
        .map(|text| {
            LogCursor::decode(text).ok_or_else(|| ApiError::InvalidParams {
                field: "before".into(),
                message: "before must be a next_before value from an earlier page".into(),
            })
        })
        .transpose()?;
    let since = query
        .since
        .as_deref()
        .map(|text| {
            parse_since(text).ok_or_else(|| ApiError::InvalidParams {
                field: "since".into(),
                message: "since must be a time like 2024-05-01 08:00:00 or a date like 2024-05-01"
                    .into(),
            })
        })
        .transpose()?;
    let terminal = known_terminal(&state, &sn).await?;
    let (rows, next) = state
        .store
        .logs_page(terminal.id, limit, before, since)
        .await?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|row| {
            json!({
                "id": row.id,
                "enrollid": row.enrollid,
                "time": row.time.format("%Y-%m-%d %H:%M:%S").to_string(),
                "mode": row.mode,
                "inout": row.inout,
                "event": row.event,
                "temp": row.temp,
                "verifymode": row.verifymode,
                "name": row.raw.get("name"),
                "received_at": row.received_at,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "items": items,
        "next_before": next.map(|c| c.encode()),
    })))
}

fn parse_since(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    crate::devices::tm20::protocol::parse_device_time(text).or_else(|| {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    })
}

/// `true/false/1/0` query flags; anything else is a 400 naming the flag.
pub(crate) fn parse_flag(name: &str, value: Option<&str>, default: bool) -> Result<bool, ApiError> {
    match value.map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v == "true" || v == "1" => Ok(true),
        Some(v) if v == "false" || v == "0" => Ok(false),
        Some(_) => Err(ApiError::InvalidParams {
            field: name.into(),
            message: format!("{name} must be true or false"),
        }),
    }
}

#[derive(Deserialize)]
pub struct ConnectedQuery {
    scope: Option<String>,
}

/// `GET /api/connected[?scope=local|cluster]`
#[utoipa::path(
    get,
    operation_id = "terminals_connected",
    path = "/api/connected",
    tag = "cluster",
    params(
        ("scope" = Option<crate::api::openapi::Scope>, Query, description = "local: only this node's sockets; cluster (default): every node's"),
    ),
    responses(
        (status = 200, description = "Connected devices", body = crate::api::openapi::ConnectedList),
        (status = 400, description = "Invalid `scope`", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn connected(
    state: web::Data<AppState>,
    query: web::Query<ConnectedQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut items: Vec<Connected> = match query.scope.as_deref() {
        Some("local") => local_connections(&state).await?,
        None | Some("cluster") => connected_by_sn(&state).await?.into_values().collect(),
        Some(_) => {
            return Err(ApiError::InvalidParams {
                field: "scope".into(),
                message: "scope must be local or cluster".into(),
            })
        }
    };
    items.sort_by(|a, b| a.info.sn.cmp(&b.info.sn));
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}
