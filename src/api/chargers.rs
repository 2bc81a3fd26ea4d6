//! `/api/chargers…`: charge points, their actions (central system → charge point), message log and
//! transactions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use entity::{charger, connector, meter_value, transaction};
use serde::Deserialize;
use serde_json::{json, Value};

use super::commands::{
    enqueue_offline, forward, parse_deliver, parse_expiry, remote_route, Answer, Ran,
};
use super::extract::JsonObject;
use super::terminals::{connected_by_sn, parse_flag, Connected};
use super::AppState;
use crate::cluster::ForwardRequest;
use crate::devices::ocpp::actions::{self, ActionError};
use crate::devices::ocpp::dispatch::{self, DispatchError, Finished};
use crate::devices::ocpp::handshake;
use crate::devices::Origin;
use crate::error::ApiError;
use crate::registry::DeviceAddr;
use crate::store::ocpp::{ChargerPatch, MessageFilter};

const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

fn connector_json(c: &connector::Model) -> Value {
    json!({
        "connector_id": c.connector_id,
        "status": c.status,
        "error_code": c.error_code,
        "info": c.info,
        "vendor_error_code": c.vendor_error_code,
        "status_at": c.status_at,
        "updated_at": c.updated_at,
    })
}

pub(crate) fn transaction_json(t: &transaction::Model, charge_point_id: Option<&str>) -> Value {
    json!({
        "id": t.id,
        "charger": charge_point_id,
        "connector_id": t.connector_id,
        "id_tag": t.id_tag,
        "start_status": t.start_status,
        "meter_start": t.meter_start,
        "started_at": t.started_at,
        "reservation_id": t.reservation_id,
        "meter_stop": t.meter_stop,
        "stopped_at": t.stopped_at,
        "stop_id_tag": t.stop_id_tag,
        "stop_reason": t.stop_reason,
        "energy_wh": t.meter_stop.map(|stop| stop - t.meter_start),
        "active": t.stopped_at.is_none(),
    })
}

pub(crate) fn meter_value_json(m: &meter_value::Model) -> Value {
    json!({
        "connector_id": m.connector_id,
        "transaction_id": m.transaction_id,
        "timestamp": m.timestamp,
        "value": m.value,
        "numeric": m.numeric,
        "measurand": m.measurand,
        "phase": if m.phase.is_empty() { Value::Null } else { json!(m.phase) },
        "unit": m.unit,
        "context": m.context,
        "location": m.location,
        "format": m.format,
    })
}

fn item_json(
    row: &charger::Model,
    connectors: &[connector::Model],
    online: Option<&Connected>,
) -> Value {
    json!({
        "id": row.charge_point_id,
        "vendor": row.vendor,
        "model": row.model,
        "firmware": row.firmware,
        "online": online.is_some(),
        "node": online.map(|c| c.node.clone()),
        "last_seen": row.last_seen,
        "connectors": connectors.iter().filter(|c| c.charger_id == row.id).map(connector_json).collect::<Vec<_>>(),
    })
}

/// `GET /api/chargers`
#[utoipa::path(
    get,
    operation_id = "chargers_list",
    path = "/api/chargers",
    tag = "chargers",
    responses(
        (status = 200, description = "All known charge points", body = crate::api::openapi::ChargerList),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rows = state.store.list_chargers().await?;
    let ids: Vec<i32> = rows.iter().map(|r| r.id).collect();
    let connectors = state.store.connectors_of(&ids).await?;
    let online = connected_by_sn(&state).await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|row| {
            item_json(
                row,
                &connectors,
                online.get(&row.charge_point_id).filter(|c| c.is_ocpp()),
            )
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

async fn known(state: &AppState, id: &str) -> Result<charger::Model, ApiError> {
    state
        .store
        .charger(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("charge point {id} is unknown")))
}

async fn detail_json(state: &AppState, row: charger::Model) -> Result<Value, ApiError> {
    let connectors = state.store.connectors_of(&[row.id]).await?;
    let active = state.store.active_transactions_of(row.id).await?;
    let meter = state.store.latest_meter_values(row.id, 200).await?;
    let online = connected_by_sn(state)
        .await?
        .remove(&row.charge_point_id)
        .filter(|c| c.is_ocpp());
    let mut body = item_json(&row, &connectors, online.as_ref());
    body["boot_info"] = json!(row.boot_info);
    body["last_boot_at"] = json!(row.last_boot_at);
    body["registration_status"] = json!(row.registration_status);
    body["security_profile"] = json!(row.security_profile);
    body["has_password"] = json!(row.password_hash.is_some());
    body["blocked"] = json!(row.blocked);
    body["notes"] = json!(row.notes);
    body["serial_number"] = json!(row.serial_number);
    body["active_transactions"] = json!(active
        .iter()
        .map(|t| transaction_json(t, Some(&row.charge_point_id)))
        .collect::<Vec<_>>());
    body["active_transaction"] = active
        .first()
        .map(|t| transaction_json(t, Some(&row.charge_point_id)))
        .unwrap_or(Value::Null);
    body["last_meter_values"] = json!(meter.iter().map(meter_value_json).collect::<Vec<_>>());
    body["configuration"] = json!(row.configuration);
    body["configuration_read_at"] = json!(row.configuration_read_at);
    body["diagnostics_status"] = json!(row.diagnostics_status);
    body["firmware_status"] = json!(row.firmware_status);
    body["connection"] = json!(online);
    body["created_at"] = json!(row.created_at);
    Ok(body)
}

/// `GET /api/chargers/{id}`
#[utoipa::path(
    get,
    operation_id = "chargers_detail",
    path = "/api/chargers/{id}",
    tag = "chargers",
    params(
        ("id" = String, Path, description = "Charge point id"),
    ),
    responses(
        (status = 200, description = "The charge point", body = crate::api::openapi::ChargerDetail),
        (status = 404, description = "Unknown charge point", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn detail(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = known(&state, &id).await?;
    Ok(HttpResponse::Ok().json(detail_json(&state, row).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ChargerPatch)]
pub struct PatchBody {
    #[schema(minimum = 0, maximum = 2)]
    security_profile: Option<i32>,
    /// 8 to 40 characters; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(max_length = 40)]
    password: Option<Option<String>>,
    blocked: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    notes: Option<Option<String>>,
    #[schema(value_type = Option<crate::api::openapi::RegistrationStatus>)]
    registration_status: Option<String>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn charger_patch(body: PatchBody) -> Result<ChargerPatch, ApiError> {
    if let Some(profile) = body.security_profile {
        if !(0..=2).contains(&profile) {
            return Err(ApiError::InvalidParams {
                field: "security_profile".into(),
                message:
                    "security_profile is 0 (none), 1 (Basic auth) or 2 (Basic auth behind TLS)"
                        .into(),
            });
        }
    }
    if let Some(status) = &body.registration_status {
        if !["Accepted", "Pending", "Rejected"].contains(&status.as_str()) {
            return Err(ApiError::InvalidParams {
                field: "registration_status".into(),
                message: "registration_status is Accepted, Pending or Rejected".into(),
            });
        }
    }
    let password_hash = match body.password {
        None => None,
        Some(None) => Some(None),
        Some(Some(password)) => {
            if password.len() < 8 || password.len() > 40 {
                return Err(ApiError::InvalidParams {
                    field: "password".into(),
                    message: "OCPP passwords are 8 to 40 characters (16-40 recommended)".into(),
                });
            }
            Some(Some(
                handshake::hash_password(&password).map_err(ApiError::Internal)?,
            ))
        }
    };
    Ok(ChargerPatch {
        security_profile: body.security_profile,
        password_hash,
        blocked: body.blocked,
        notes: body.notes,
        registration_status: body.registration_status,
    })
}

/// `PATCH /api/chargers/{id}`: security profile, password (stored as an Argon2id hash), blocked, notes,
/// registration status.
#[utoipa::path(
    patch,
    operation_id = "chargers_patch",
    path = "/api/chargers/{id}",
    tag = "chargers",
    params(
        ("id" = String, Path, description = "Charge point id"),
    ),
    request_body = PatchBody,
    responses(
        (status = 200, description = "The charge point, changed", body = crate::api::openapi::ChargerDetail),
        (status = 400, description = "Malformed JSON body, or an invalid field (`field` names it)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown charge point", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn patch(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonObject<PatchBody>,
) -> Result<HttpResponse, ApiError> {
    let patch = charger_patch(body.into_inner())?;
    let row = state
        .store
        .patch_charger(&id, patch)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("charge point {id} is unknown")))?;
    Ok(HttpResponse::Ok().json(detail_json(&state, row).await?))
}

/// `PUT /api/chargers/{id}`: create (201) or update (200) an entry, e.g. before it first connects when
/// `OCPP_AUTO_REGISTER=0`. Same fields as PATCH.
#[utoipa::path(
    put,
    operation_id = "chargers_put",
    path = "/api/chargers/{id}",
    tag = "chargers",
    params(
        ("id" = String, Path, description = "Charge point id"),
    ),
    request_body = PatchBody,
    responses(
        (status = 200, description = "Updated", body = crate::api::openapi::ChargerDetail),
        (status = 201, description = "Created", body = crate::api::openapi::ChargerDetail),
        (status = 400, description = "Malformed body, an invalid field or an invalid charge point id", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn put(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonObject<PatchBody>,
) -> Result<HttpResponse, ApiError> {
    if !handshake::valid_id(&id) {
        return Err(ApiError::InvalidParams {
            field: "id".into(),
            message: handshake::Refusal::BadId.to_string(),
        });
    }
    let patch = charger_patch(body.into_inner())?;
    let created = state.store.charger(&id).await?.is_none();
    state.store.ensure_charger(&id).await?;
    let row = state
        .store
        .patch_charger(&id, patch)
        .await?
        .ok_or_else(|| ApiError::Internal("charger vanished".into()))?;
    let body = detail_json(&state, row).await?;
    Ok(if created {
        HttpResponse::Created().json(body)
    } else {
        HttpResponse::Ok().json(body)
    })
}

#[derive(Deserialize)]
pub struct ActionQuery {
    wait: Option<String>,
    deliver: Option<String>,
}

const ACTION_BODY_KEYS: &[&str] = &["action", "params", "expires_in"];

/// `POST /api/chargers/{id}/action[?wait=false]`
#[utoipa::path(
    post,
    operation_id = "chargers_action",
    path = "/api/chargers/{id}/action",
    tag = "chargers",
    params(
        ("id" = String, Path, description = "Charge point id"),
        ("wait" = Option<bool>, Query, description = "false: answer 202 with a command id at once instead of waiting for the device"),
        ("deliver" = Option<crate::api::openapi::Deliver>, Query, description = "queued: store the call for an offline device (202) and deliver it when it next connects"),
    ),
    request_body = crate::api::openapi::ActionRequest,
    responses(
        (status = 200, description = "The charge point answered (a CALLRESULT or a CALLERROR)", body = crate::api::openapi::ActionAnswer),
        (status = 202, description = "Queued (`wait=false` or `deliver=queued`)", body = crate::api::openapi::Queued),
        (status = 400, description = "Unknown action, or params the OCPP schema refuses (`field` names the culprit)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown charge point", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The charge point is not connected (or disconnected before answering)", body = crate::api::openapi::ErrorBody),
        (status = 429, description = "The charge point's queue is full", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "The cluster directory or the node holding the device is unreachable", body = crate::api::openapi::ErrorBody),
        (status = 504, description = "No answer from the charge point in time", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn action(
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<ActionQuery>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let id = id.into_inner();
    let wait = parse_flag("wait", query.wait.as_deref(), true)?;
    let queued = parse_deliver(query.deliver.as_deref())?;
    let body = body.into_inner();
    let Value::Object(fields) = &body else {
        return Err(ApiError::BadRequest(
            "body must be a JSON object like {\"action\":\"Reset\",\"params\":{\"type\":\"Soft\"}}"
                .into(),
        ));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !ACTION_BODY_KEYS.contains(&k.as_str()))
    {
        return Err(ApiError::InvalidParams {
            field: unknown.clone(),
            message: format!("unknown field `{unknown}`; the body has `action` and `params`"),
        });
    }
    let name = fields
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::InvalidParams {
            field: "action".into(),
            message: "`action` must be a string naming an OCPP action".into(),
        })?;
    let params = fields.get("params").unwrap_or(&Value::Null);
    let expires_at = parse_expiry(fields)?;
    let parsed = parse(name, params)?;
    let action_name = parsed.action();
    let origin = Origin::New {
        deliver_queued: queued,
        expires_at,
    };
    let ran = match state.session_deps.sessions.lookup(&id) {
        Some(DeviceAddr::Ocpp(_)) => run_local(&state, &id, parsed, wait, origin).await,
        _ => match remote_route(&state, &id).await? {
            Some(route) => {
                let request = ForwardRequest {
                    correlation: uuid::Uuid::new_v4(),
                    from: String::new(),
                    kind: "ocpp".into(),
                    sn: id.clone(),
                    command: action_name.to_owned(),
                    params: parsed.payload(),
                    wait,
                    queued,
                    expires_at,
                    deadline_ms: 0,
                };
                forward(&state, &id, &route, request).await
            }
            None if queued => match known(&state, &id).await {
                Ok(_) => {
                    let payload = parsed.payload();
                    enqueue_offline(
                        &state,
                        crate::devices::ocpp::DEVICE_KIND,
                        &id,
                        action_name,
                        payload,
                        expires_at,
                    )
                    .await
                }
                Err(err) => Err(err.into()),
            },
            None => Err(match known(&state, &id).await {
                Ok(_) => {
                    ApiError::NotConnected(format!("charge point {id} is not connected")).into()
                }
                Err(err) => err.into(),
            }),
        },
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match ran {
        Ok(Ran::Queued(command_id)) => Ok(HttpResponse::Accepted().json(json!({"id": command_id, "state": "queued"}))),
        Ok(Ran::Finished { id: command_id, result: true, reply }) => Ok(HttpResponse::Ok().json(json!({
            "id": command_id, "action": action_name, "outcome": "result", "payload": reply, "elapsed_ms": elapsed_ms,
        }))),
        Ok(Ran::Finished { id: command_id, result: false, reply }) => Ok(HttpResponse::Ok().json(json!({
            "id": command_id, "action": action_name, "outcome": "error", "error": reply, "elapsed_ms": elapsed_ms,
        }))),
        Err(Answer::Api(err)) => Err(err),
        Err(Answer::Raw { status, body }) => Ok(HttpResponse::build(status).json(body)),
    }
}

fn parse(name: &str, params: &Value) -> Result<actions::CsAction, ApiError> {
    actions::parse_action(name, params).map_err(|err| match err {
        ActionError::UnknownAction(name) => ApiError::UnknownCommand(name),
        ActionError::InvalidParams { field, message } => ApiError::InvalidParams {
            message: format!("invalid params: {field}: {message}"),
            field,
        },
    })
}

/// Runs an action on a charge point connected to this node.
async fn run_local(
    state: &AppState,
    id: &str,
    action: actions::CsAction,
    wait: bool,
    origin: Origin,
) -> Result<Ran, Answer> {
    let not_connected = || ApiError::NotConnected(format!("charge point {id} is not connected"));
    let session = match state.session_deps.sessions.lookup(id) {
        Some(DeviceAddr::Ocpp(addr)) => addr,
        _ => return Err(not_connected().into()),
    };
    let charger = known(state, id).await?;
    let action_name = action.action();
    let (command_id, outcome) = dispatch::dispatch(
        &state.store,
        &state.session_deps.events,
        &session,
        id,
        charger.id,
        action,
        origin.for_caller(wait),
    )
    .await
    .map_err(|err| match err {
        DispatchError::NotConnected(_) => not_connected(),
        DispatchError::QueueFull(_) => {
            ApiError::QueueFull(format!("charge point {id} has too many calls waiting"))
        }
        DispatchError::Store(err) => err.into(),
    })?;
    if !wait {
        return Ok(Ran::Queued(command_id));
    }
    let finished = tokio::time::timeout(MAX_WAIT, outcome)
        .await
        .map_err(|_| {
            ApiError::DeviceTimeout(format!("charge point {id} did not answer {action_name}"))
        })?
        .map_err(|_| ApiError::Internal(format!("command {command_id} lost its tracker")))?;
    match finished {
        Finished::Result(payload) => Ok(Ran::Finished {
            id: command_id,
            result: true,
            reply: payload,
        }),
        Finished::Error(error) => Ok(Ran::Finished {
            id: command_id,
            result: false,
            reply: error,
        }),
        Finished::TimedOut => Err(ApiError::DeviceTimeout(format!(
            "charge point {id} did not answer {action_name} within {:.1} s (command {command_id})",
            state.settings.ocpp_call_timeout.as_secs_f64()
        ))
        .into()),
        Finished::Disconnected => Err(ApiError::NotConnected(format!(
            "charge point {id} disconnected before answering {action_name} (command {command_id})"
        ))
        .into()),
    }
}

/// Runs an action another node forwarded to us.
pub(crate) async fn run_forwarded(
    state: &AppState,
    request: &ForwardRequest,
) -> Result<Ran, Answer> {
    let action = parse(&request.command, &request.params)?;
    let origin = Origin::forwarded(request.queued, request.expires_at, request.wait);
    run_local(state, &request.sn, action, request.wait, origin).await
}

#[derive(Deserialize)]
pub struct MessagesQuery {
    direction: Option<String>,
    action: Option<String>,
    limit: Option<String>,
    before: Option<String>,
}

/// `GET /api/chargers/{id}/messages?direction=in|out&action=&limit=&before=`: newest first, each request with
/// its response (and each response with its request).
#[utoipa::path(
    get,
    operation_id = "chargers_messages",
    path = "/api/chargers/{id}/messages",
    tag = "chargers",
    params(
        ("id" = String, Path, description = "Charge point id"),
        ("direction" = Option<crate::api::openapi::Direction>, Query, description = "in (from the charge point) or out"),
        ("action" = Option<String>, Query, description = "Only this OCPP action"),
        ("limit" = Option<u32>, Query, description = "Page size, 1-1000 (default 50)", minimum = 1, maximum = 1000),
        ("before" = Option<i64>, Query, description = "The `next_before` of the previous page"),
    ),
    responses(
        (status = 200, description = "The message log, newest first", body = crate::api::openapi::MessagePage),
        (status = 400, description = "Invalid `direction`, `limit` or `before`", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown charge point", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn messages(
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<MessagesQuery>,
) -> Result<HttpResponse, ApiError> {
    let direction = match query.direction.as_deref() {
        None => None,
        Some(d @ ("in" | "out")) => Some(d.to_owned()),
        Some(_) => {
            return Err(ApiError::InvalidParams {
                field: "direction".into(),
                message: "direction is in or out".into(),
            })
        }
    };
    let limit = parse_limit(query.limit.as_deref())?;
    let before = query
        .before
        .as_deref()
        .map(|b| {
            b.parse::<i64>().map_err(|_| ApiError::InvalidParams {
                field: "before".into(),
                message: "before must be a next_before value from an earlier page".into(),
            })
        })
        .transpose()?;
    let charger = known(&state, &id).await?;
    let (rows, next) = state
        .store
        .ocpp_messages(
            charger.id,
            MessageFilter {
                direction,
                action: query.action.clone(),
                before,
                limit,
            },
        )
        .await?;
    // Pair: calls with their answers, answers with their calls.
    let call_ids: Vec<i64> = rows
        .iter()
        .filter(|r| r.message_type == "call")
        .map(|r| r.id)
        .collect();
    let answers = state.store.ocpp_responses_to(&call_ids).await?;
    let request_ids: Vec<i64> = rows.iter().filter_map(|r| r.request_id).collect();
    let requests = state.store.ocpp_messages_by_id(&request_ids).await?;
    let answer_of: HashMap<i64, &entity::ocpp_message::Model> = answers
        .iter()
        .filter_map(|a| a.request_id.map(|r| (r, a)))
        .collect();
    let request_of: HashMap<i64, &entity::ocpp_message::Model> =
        requests.iter().map(|r| (r.id, r)).collect();
    let brief = |m: &entity::ocpp_message::Model| {
        json!({"id": m.id, "direction": m.direction, "type": m.message_type, "action": m.action,
               "message_id": m.message_id, "payload": m.payload, "at": m.at})
    };
    let items: Vec<Value> = rows
        .iter()
        .map(|m| {
            let mut item = brief(m);
            if m.message_type == "call" {
                item["response"] = answer_of
                    .get(&m.id)
                    .map(|a| brief(a))
                    .unwrap_or(Value::Null);
            } else {
                item["request"] = m
                    .request_id
                    .and_then(|r| request_of.get(&r))
                    .map(|r| brief(r))
                    .unwrap_or(Value::Null);
            }
            item
        })
        .collect();
    Ok(
        HttpResponse::Ok()
            .json(json!({"items": items, "next_before": next.map(|n| n.to_string())})),
    )
}

fn parse_limit(text: Option<&str>) -> Result<u64, ApiError> {
    match text {
        None => Ok(50),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::InvalidParams {
                field: "limit".into(),
                message: "limit must be an integer from 1 to 1000".into(),
            }),
    }
}

#[derive(Deserialize)]
pub struct TransactionsQuery {
    active: Option<String>,
    limit: Option<String>,
}

/// `GET /api/chargers/{id}/transactions`
#[utoipa::path(
    get,
    operation_id = "chargers_transactions_of",
    path = "/api/chargers/{id}/transactions",
    tag = "chargers",
    params(
        ("id" = String, Path, description = "Charge point id"),
        ("active" = Option<bool>, Query, description = "true: running transactions only; false: finished ones only"),
        ("limit" = Option<u32>, Query, description = "Page size, 1-1000 (default 50)", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "The charge point's transactions, newest first", body = crate::api::openapi::TransactionList),
        (status = 400, description = "Invalid `active` or `limit`", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown charge point", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn transactions_of(
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<TransactionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let charger = known(&state, &id).await?;
    let active = query
        .active
        .as_deref()
        .map(|v| parse_flag("active", Some(v), false))
        .transpose()?;
    let rows = state
        .store
        .transactions(
            Some(charger.id),
            active,
            parse_limit(query.limit.as_deref())?,
        )
        .await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|t| transaction_json(t, Some(&id)))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `GET /api/transactions?active=true`
#[utoipa::path(
    get,
    operation_id = "chargers_transactions",
    path = "/api/transactions",
    tag = "chargers",
    params(
        ("active" = Option<bool>, Query, description = "true: running transactions only; false: finished ones only"),
        ("limit" = Option<u32>, Query, description = "Page size, 1-1000 (default 50)", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "Transactions, newest first", body = crate::api::openapi::TransactionList),
        (status = 400, description = "Invalid `active` or `limit`", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn transactions(
    state: web::Data<AppState>,
    query: web::Query<TransactionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let active = query
        .active
        .as_deref()
        .map(|v| parse_flag("active", Some(v), false))
        .transpose()?;
    let rows = state
        .store
        .transactions(None, active, parse_limit(query.limit.as_deref())?)
        .await?;
    let names = charger_names(&state).await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|t| transaction_json(t, names.get(&t.charger_id).map(String::as_str)))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

async fn charger_names(state: &AppState) -> Result<HashMap<i32, String>, ApiError> {
    Ok(state
        .store
        .list_chargers()
        .await?
        .into_iter()
        .map(|c| (c.id, c.charge_point_id))
        .collect())
}

/// `GET /api/transactions/{id}` with its meter values.
#[utoipa::path(
    get,
    operation_id = "chargers_transaction",
    path = "/api/transactions/{id}",
    tag = "chargers",
    params(
        ("id" = i32, Path, description = "Transaction id"),
    ),
    responses(
        (status = 200, description = "The transaction with its meter values", body = crate::api::openapi::Transaction),
        (status = 400, description = "The id is not an integer", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown transaction", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn transaction(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tx_id: i32 = id.parse().map_err(|_| ApiError::InvalidParams {
        field: "id".into(),
        message: "transaction ids are integers".into(),
    })?;
    let row = state
        .store
        .transaction(tx_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("transaction {tx_id} is unknown")))?;
    let names = charger_names(&state).await?;
    let mut body = transaction_json(&row, names.get(&row.charger_id).map(String::as_str));
    let values = state.store.meter_values_of_transaction(tx_id).await?;
    body["meter_values"] = json!(values.iter().map(meter_value_json).collect::<Vec<_>>());
    Ok(HttpResponse::Ok().json(body))
}

/// Parses an RFC 3339 time from a REST body field.
pub(crate) fn parse_time(field: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::InvalidParams {
            field: field.into(),
            message: format!("{field} must be an RFC 3339 time like 2030-01-01T00:00:00Z"),
        })
}
