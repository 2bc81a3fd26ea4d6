//! `POST /api/terminals/{sn}/command` and `GET /api/commands/{id}`.
//!
//! A command runs where the terminal's socket is: on this node through the local registry, or, in cluster
//! mode, on the node the directory names, which runs [`execute_forwarded`] and answers with the same JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{http::StatusCode, web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::terminals::parse_flag;
use super::AppState;
use crate::cluster::{Executor, ForwardError, ForwardOutcome, ForwardRequest};
use crate::devices::tm20::commands::{self, CommandError, Tm20Command, ValidatedCommand};
use crate::devices::tm20::dispatch::{self, DispatchError, Finished};
use crate::devices::Origin;
use crate::error::ApiError;
use crate::registry::DeviceAddr;

/// Ceiling on how long a waiting REST call may hang if a session misbehaves; the session's own per-exchange
/// time-out (`COMMAND_TIMEOUT`) normally answers long before.
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

#[derive(Deserialize)]
pub struct SendQuery {
    wait: Option<String>,
    deliver: Option<String>,
}

/// Body keys of a command request; anything else is rejected by name.
const BODY_KEYS: &[&str] = &["command", "params", "expires_in"];

/// `deliver=queued` (keep it for an offline device) or `deliver=now` (the default: 409 when offline).
pub(crate) fn parse_deliver(value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("now") => Ok(false),
        Some("queued") => Ok(true),
        Some(_) => Err(ApiError::InvalidParams {
            field: "deliver".into(),
            message: "deliver is now or queued".into(),
        }),
    }
}

/// `"expires_in": seconds` of a queued command, as an absolute time.
pub(crate) fn parse_expiry(
    fields: &serde_json::Map<String, Value>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    let Some(value) = fields.get("expires_in") else {
        return Ok(None);
    };
    let seconds = value
        .as_f64()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 366.0 * 86_400.0)
        .ok_or_else(|| ApiError::InvalidParams {
            field: "expires_in".into(),
            message: "expires_in is a number of seconds, more than 0 and at most a year".into(),
        })?;
    let delta = chrono::Duration::milliseconds((seconds * 1000.0) as i64);
    Ok(Some(chrono::Utc::now() + delta))
}

/// Stores a command for an offline device (`deliver=queued`), delivered when it next registers.
pub(crate) async fn enqueue_offline(
    state: &AppState,
    device_kind: &'static str,
    device: &str,
    command: &str,
    params: Value,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Ran, Answer> {
    let waiting = state
        .store
        .count_queued(device)
        .await
        .map_err(ApiError::from)?;
    if waiting >= state.settings.command_queue_max {
        return Err(ApiError::QueueFull(format!(
            "{device} already has {waiting} commands queued (COMMAND_QUEUE_MAX)"
        ))
        .into());
    }
    let origin = Origin::New {
        deliver_queued: true,
        expires_at,
    };
    let id =
        crate::devices::command_row(&state.store, origin, device_kind, device, command, params)
            .await
            .map_err(ApiError::from)?;
    state
        .session_deps
        .events
        .command_state(device, device_kind, id, command, "queued");
    // The device may have registered between our look-up and the insert: its delivery pass may have run
    // already, so start one.
    crate::delivery::kick(std::sync::Arc::clone(&state.session_deps), device).await;
    Ok(Ran::Queued(id))
}

/// Where a command ended up, before it is turned into an HTTP answer.
pub(crate) enum Ran {
    Queued(Uuid),
    Finished {
        id: Uuid,
        result: bool,
        reply: Value,
    },
}

/// `POST /api/terminals/{sn}/command[?wait=false]`
#[utoipa::path(
    post,
    operation_id = "commands_send",
    path = "/api/terminals/{sn}/command",
    tag = "terminals",
    params(
        ("sn" = String, Path, description = "Terminal serial number"),
        ("wait" = Option<bool>, Query, description = "false: answer 202 with a command id at once instead of waiting for the device"),
        ("deliver" = Option<crate::api::openapi::Deliver>, Query, description = "queued: store the call for an offline device (202) and deliver it when it next connects"),
    ),
    request_body = crate::api::openapi::CommandRequest,
    responses(
        (status = 200, description = "The terminal answered (`result` is its own verdict)", body = crate::api::openapi::CommandAnswer),
        (status = 202, description = "Queued (`wait=false` or `deliver=queued`)", body = crate::api::openapi::Queued),
        (status = 400, description = "Unknown command, invalid params or query (`field` names the culprit)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown terminal", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The terminal is not connected (or disconnected before answering)", body = crate::api::openapi::ErrorBody),
        (status = 429, description = "The terminal's queue is full", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "The cluster directory or the node holding the device is unreachable", body = crate::api::openapi::ErrorBody),
        (status = 504, description = "No answer from the terminal in time", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn send(
    state: web::Data<AppState>,
    sn: web::Path<String>,
    query: web::Query<SendQuery>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let sn = sn.into_inner();
    let wait = parse_flag("wait", query.wait.as_deref(), true)?;
    let queued = parse_deliver(query.deliver.as_deref())?;
    let (validated, expires_at) = validate_body(&state, body.into_inner())?;
    let command_name = validated.command.name();
    let origin = Origin::New {
        deliver_queued: queued,
        expires_at,
    };

    let ran = match state.session_deps.sessions.lookup(&sn) {
        Some(DeviceAddr::Tm20(session)) => {
            run_local(&state, &sn, Some(session), validated.command, wait, origin).await
        }
        _ => match remote_route(&state, &sn).await? {
            Some(route) => run_remote(&state, &sn, &route, &validated.command, wait, origin).await,
            None if queued => match state.store.terminal_by_sn(&sn).await? {
                Some(_) => {
                    let params = validated.command.params_json();
                    enqueue_offline(
                        &state,
                        crate::devices::tm20::DEVICE_KIND,
                        &sn,
                        command_name,
                        params,
                        expires_at,
                    )
                    .await
                }
                None => Err(ApiError::NotFound(format!("terminal {sn} is unknown")).into()),
            },
            None => Err(offline_or_unknown(&state, &sn).await),
        },
    };
    match ran {
        Ok(Ran::Queued(id)) => {
            Ok(HttpResponse::Accepted().json(json!({"id": id, "state": "queued"})))
        }
        Ok(Ran::Finished { id, result, reply }) => Ok(HttpResponse::Ok().json(Answered {
            command: command_name,
            elapsed_ms: started.elapsed().as_millis() as u64,
            id,
            ignored: &validated.ignored,
            reply: &reply,
            result,
        })),
        Err(Answer::Api(err)) => Err(err),
        // A remote node's error answer, passed through unchanged.
        Err(Answer::Raw { status, body }) => Ok(HttpResponse::build(status).json(body)),
    }
}

/// The 200 answer of a command. Serialized straight from this struct rather than through a `json!` map built
/// and dropped per call; fields in alphabetical order, the order `json!` gave them.
#[derive(Serialize)]
struct Answered<'a> {
    command: &'a str,
    elapsed_ms: u64,
    id: Uuid,
    ignored: &'a [String],
    reply: &'a Value,
    result: bool,
}

/// Either an error of ours or one relayed verbatim from the node that ran the command.
pub(crate) enum Answer {
    Api(ApiError),
    Raw { status: StatusCode, body: Value },
}

impl From<ApiError> for Answer {
    fn from(err: ApiError) -> Self {
        Answer::Api(err)
    }
}

fn validate_body(
    state: &AppState,
    body: Value,
) -> Result<(ValidatedCommand, Option<chrono::DateTime<chrono::Utc>>), ApiError> {
    let Value::Object(fields) = &body else {
        return Err(ApiError::BadRequest(
            "body must be a JSON object like {\"command\":\"opendoor\",\"params\":{}}".into(),
        ));
    };
    if let Some(unknown) = fields.keys().find(|k| !BODY_KEYS.contains(&k.as_str())) {
        return Err(ApiError::InvalidParams {
            field: unknown.clone(),
            message: format!("unknown field `{unknown}`; the body has `command` and `params`"),
        });
    }
    let name = fields
        .get("command")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::InvalidParams {
            field: "command".into(),
            message: "`command` must be a string naming a terminal command".into(),
        })?;
    let params = fields.get("params").unwrap_or(&Value::Null);
    let expires_at = parse_expiry(fields)?;
    Ok((validate(state, name, params)?, expires_at))
}

fn validate(state: &AppState, name: &str, params: &Value) -> Result<ValidatedCommand, ApiError> {
    commands::parse_command(name, params, state.settings.device_now()).map_err(|err| match err {
        CommandError::UnknownCommand(name) => ApiError::UnknownCommand(name),
        CommandError::InvalidParams { field, message } => ApiError::InvalidParams {
            message: format!("invalid params: {field}: {message}"),
            field,
        },
    })
}

/// The directory's route for a device held by *another* node.
pub(crate) async fn remote_route(
    state: &AppState,
    sn: &str,
) -> Result<Option<crate::cluster::Route>, ApiError> {
    let Some(cluster) = &state.cluster else {
        return Ok(None);
    };
    let route = cluster.route(sn).await.map_err(|err| {
        ApiError::Unavailable(format!("the cluster directory is unreachable ({err}); only devices on this node can be reached"))
    })?;
    Ok(route.filter(|route| route.node != cluster.node_id()))
}

async fn offline_or_unknown(state: &AppState, sn: &str) -> Answer {
    match state.store.terminal_by_sn(sn).await {
        Ok(Some(_)) => ApiError::NotConnected(format!("terminal {sn} is not connected")).into(),
        Ok(None) => ApiError::NotFound(format!("terminal {sn} is unknown")).into(),
        Err(err) => ApiError::from(err).into(),
    }
}

/// Runs a command on a terminal connected to this node.
async fn run_local(
    state: &AppState,
    sn: &str,
    session: Option<actix::Addr<crate::devices::tm20::session::Tm20Session>>,
    command: Tm20Command,
    wait: bool,
    origin: Origin,
) -> Result<Ran, Answer> {
    let not_connected = || ApiError::NotConnected(format!("terminal {sn} is not connected"));
    // The caller may have looked the session up already.
    let session = match session {
        Some(addr) => addr,
        None => match state.session_deps.sessions.lookup(sn) {
            Some(DeviceAddr::Tm20(addr)) => addr,
            _ => return Err(not_connected().into()),
        },
    };
    let command_name = command.name();
    let (id, outcome) = dispatch::dispatch(
        &state.store,
        &state.session_deps.events,
        &session,
        sn,
        None,
        command,
        origin.for_caller(wait),
    )
    .await
    .map_err(|err| match err {
        DispatchError::NotConnected(_) => not_connected(),
        DispatchError::QueueFull(_) => ApiError::QueueFull(format!(
            "terminal {sn} already has {} commands waiting; retry later",
            state.settings.command_queue_size
        )),
        DispatchError::Store(err) => err.into(),
    })?;
    if !wait {
        return Ok(Ran::Queued(id));
    }
    let finished = tokio::time::timeout(MAX_WAIT, outcome)
        .await
        .map_err(|_| {
            ApiError::DeviceTimeout(format!(
                "terminal {sn} did not answer `{command_name}` (command {id})"
            ))
        })?
        .map_err(|_| ApiError::Internal(format!("command {id} lost its tracker")))?;
    match finished {
        Finished::Replied { result, reply } => Ok(Ran::Finished { id, result, reply }),
        Finished::TimedOut => Err(ApiError::DeviceTimeout(format!(
            "terminal {sn} did not answer `{command_name}` within {:.1} s (command {id})",
            state.settings.command_timeout.as_secs_f64()
        ))
        .into()),
        Finished::Disconnected => Err(ApiError::NotConnected(format!(
            "terminal {sn} disconnected before answering `{command_name}` (command {id})"
        ))
        .into()),
    }
}

/// Sends a command to the node holding the terminal and relays its answer.
async fn run_remote(
    state: &AppState,
    sn: &str,
    route: &crate::cluster::Route,
    command: &Tm20Command,
    wait: bool,
    origin: Origin,
) -> Result<Ran, Answer> {
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
        kind: "tm20".into(),
        sn: sn.to_owned(),
        command: command.name().to_owned(),
        params: command.params_json(),
        wait,
        queued,
        expires_at,
        deadline_ms: 0,
    };
    forward(state, sn, route, request).await
}

/// Publishes a command for a device on another node and turns the owner's answer into ours.
pub(crate) async fn forward(
    state: &AppState,
    sn: &str,
    route: &crate::cluster::Route,
    request: ForwardRequest,
) -> Result<Ran, Answer> {
    let wait = request.wait;
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::NotConnected(format!("device {sn} is not connected")).into());
    };
    // Queueing is quick; a waiting call is bounded by the owner's own per-exchange time-outs.
    let patience = if wait {
        MAX_WAIT
    } else {
        state.settings.command_timeout * 2
    };
    let started = Instant::now();
    let forwarded = cluster.forward(route, request, patience).await;
    metrics::histogram!("gatehouse_forward_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    let outcome = match &forwarded {
        Ok(_) => "answered",
        Err(ForwardError::NodeDown(_)) => "node_down",
        Err(ForwardError::Cluster(_)) => "redis_error",
        Err(ForwardError::Deadline(_)) => "deadline",
    };
    metrics::counter!("gatehouse_forwarded_commands_total", "outcome" => outcome).increment(1);
    match forwarded {
        Ok(ForwardOutcome::Queued { id }) => Ok(Ran::Queued(id)),
        Ok(ForwardOutcome::Finished { id, result, reply }) => Ok(Ran::Finished { id, result, reply }),
        Ok(ForwardOutcome::Error { status, body }) => Err(Answer::Raw {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            body,
        }),
        Err(ForwardError::NodeDown(node)) => Err(ApiError::Unavailable(format!(
            "terminal {sn} is held by node {node}, which is not responding; it will reconnect elsewhere"
        ))
        .into()),
        Err(ForwardError::Cluster(err)) => {
            Err(ApiError::Unavailable(format!("cannot reach node {} holding terminal {sn}: {err}", route.node)).into())
        }
        Err(ForwardError::Deadline(node)) => Err(ApiError::DeviceTimeout(format!(
            "no answer for terminal {sn} from node {node} in time"
        ))
        .into()),
    }
}

/// Runs a command another node forwarded to us, exactly like a local REST call.
pub fn executor(state: web::Data<AppState>) -> Executor {
    Arc::new(move |request: ForwardRequest| {
        let state = state.clone();
        Box::pin(async move {
            let ran = if request.kind == "ocpp" {
                super::chargers::run_forwarded(&state, &request).await
            } else if request.kind == crate::devices::sxdm::DEVICE_KIND {
                super::panels::run_forwarded(&state, &request).await
            } else {
                let origin = Origin::forwarded(request.queued, request.expires_at, request.wait);
                match validate(&state, &request.command, &request.params) {
                    Ok(validated) => {
                        run_local(
                            &state,
                            &request.sn,
                            None,
                            validated.command,
                            request.wait,
                            origin,
                        )
                        .await
                    }
                    Err(err) => Err(err.into()),
                }
            };
            match ran {
                Ok(Ran::Queued(id)) => ForwardOutcome::Queued { id },
                Ok(Ran::Finished { id, result, reply }) => {
                    ForwardOutcome::Finished { id, result, reply }
                }
                Err(Answer::Api(err)) => {
                    let (status, body) = err.parts();
                    ForwardOutcome::Error {
                        status: status.as_u16(),
                        body,
                    }
                }
                Err(Answer::Raw { status, body }) => ForwardOutcome::Error {
                    status: status.as_u16(),
                    body,
                },
            }
        })
    })
}

/// `GET /api/commands/{id}`
#[utoipa::path(
    get,
    operation_id = "commands_get",
    path = "/api/commands/{id}",
    tag = "commands",
    params(
        ("id" = String, Path, description = "Command id (UUID)", format = Uuid),
    ),
    responses(
        (status = 200, description = "The command", body = crate::api::openapi::Command),
        (status = 400, description = "The id is not a UUID", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown command", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let row = state
        .store
        .command(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("command {id} is unknown")))?;
    Ok(HttpResponse::Ok().json(command_json(&row)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    device: Option<String>,
    state: Option<String>,
    limit: Option<String>,
}

const STATES: &[&str] = &[
    "queued",
    "sent",
    "succeeded",
    "failed",
    "timed_out",
    "expired",
    "cancelled",
];

/// `GET /api/commands?device=&state=&limit=`: newest first.
#[utoipa::path(
    get,
    operation_id = "commands_list",
    path = "/api/commands",
    tag = "commands",
    params(
        ("device" = Option<String>, Query, description = "Only this device's commands"),
        ("state" = Option<crate::api::openapi::CommandState>, Query, description = "Only commands in this state"),
        ("limit" = Option<u32>, Query, description = "Page size, 1-1000 (default 100)", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "Commands, newest first", body = crate::api::openapi::CommandList),
        (status = 400, description = "Invalid `state` or `limit`", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    if let Some(wanted) = query.state.as_deref() {
        if !STATES.contains(&wanted) {
            return Err(ApiError::InvalidParams {
                field: "state".into(),
                message: format!("state is one of {}", STATES.join(", ")),
            });
        }
    }
    let limit = match query.limit.as_deref() {
        None => 100,
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::InvalidParams {
                field: "limit".into(),
                message: "limit must be an integer from 1 to 1000".into(),
            })?,
    };
    let rows = state
        .store
        .list_commands(query.device.as_deref(), query.state.as_deref(), limit)
        .await?;
    let items: Vec<Value> = rows.iter().map(command_json).collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `DELETE /api/commands/{id}`: cancels a command still waiting in the queue (204); 409 otherwise.
#[utoipa::path(
    delete,
    operation_id = "commands_cancel",
    path = "/api/commands/{id}",
    tag = "commands",
    params(
        ("id" = String, Path, description = "Command id (UUID)", format = Uuid),
    ),
    responses(
        (status = 204, description = "Cancelled"),
        (status = 400, description = "The id is not a UUID", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown command", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The command is not queued any more", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn cancel(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    match state.store.cancel_command(id).await? {
        crate::store::queue::Cancel::Cancelled => {
            if let Some(row) = state.store.command(id).await? {
                let kind = if row.device_kind == "ocpp" {
                    "ocpp"
                } else {
                    "tm20"
                };
                state.session_deps.events.command_state(
                    &row.device,
                    kind,
                    id,
                    &row.command,
                    "cancelled",
                );
            }
            Ok(HttpResponse::NoContent().finish())
        }
        crate::store::queue::Cancel::NotQueued(current) => Err(ApiError::Conflict(format!(
            "command {id} is {current}; only queued commands can be cancelled"
        ))),
        crate::store::queue::Cancel::Unknown => {
            Err(ApiError::NotFound(format!("command {id} is unknown")))
        }
    }
}

fn parse_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text.trim()).map_err(|_| ApiError::InvalidParams {
        field: "id".into(),
        message: "command ids are UUIDs".into(),
    })
}

fn command_json(row: &entity::command::Model) -> Value {
    json!({
        "id": row.id,
        "device": row.device,
        "device_kind": row.device_kind,
        "command": row.command,
        "params": row.params,
        "state": row.state,
        "reply": row.reply,
        "error": row.error,
        "requested_at": row.requested_at,
        "sent_at": row.sent_at,
        "finished_at": row.finished_at,
        "deliver": if row.deliver_queued { "queued" } else { "now" },
        "expires_at": row.expires_at,
    })
}
