//! `POST /api/terminals/{sn}/command` and `GET /api/commands/{id}`.

use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::terminals::parse_flag;
use super::AppState;
use crate::devices::tm20::commands::{self, CommandError};
use crate::devices::tm20::dispatch::{self, DispatchError, Finished};
use crate::error::ApiError;
use crate::registry::{DeviceAddr, Lookup};

/// Ceiling on how long a waiting REST call may hang if a session misbehaves; the session's own per-exchange
/// time-out (`COMMAND_TIMEOUT`) normally answers long before.
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

#[derive(Deserialize)]
pub struct SendQuery {
    wait: Option<String>,
}

/// Body keys of a command request; anything else is rejected by name.
const BODY_KEYS: &[&str] = &["command", "params"];

/// `POST /api/terminals/{sn}/command[?wait=false]`
pub async fn send(
    state: web::Data<AppState>,
    sn: web::Path<String>,
    query: web::Query<SendQuery>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let wait = parse_flag("wait", query.wait.as_deref(), true)?;
    let body = body.into_inner();
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
    let validated = commands::parse_command(name, params, state.settings.device_now()).map_err(
        |err| match err {
            CommandError::UnknownCommand(name) => ApiError::UnknownCommand(name),
            CommandError::InvalidParams { field, message } => ApiError::InvalidParams {
                message: format!("invalid params: {field}: {message}"),
                field,
            },
        },
    )?;

    let terminal = state
        .store
        .terminal_by_sn(&sn)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("terminal {sn} is unknown")))?;
    let not_connected = || ApiError::NotConnected(format!("terminal {sn} is not connected"));
    let session = match state.registry.send(Lookup(terminal.sn.clone())).await {
        Ok(Some(DeviceAddr::Tm20(addr))) => addr,
        Ok(None) | Err(_) => return Err(not_connected()),
    };
    let command_name = validated.command.name();
    let (id, outcome) = dispatch::dispatch(
        &state.store,
        &session,
        &terminal.sn,
        terminal.id,
        validated.command,
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
        return Ok(HttpResponse::Accepted().json(json!({"id": id, "state": "queued"})));
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
        Finished::Replied { result, reply } => Ok(HttpResponse::Ok().json(json!({
            "id": id,
            "command": command_name,
            "result": result,
            "reply": reply,
            "ignored": validated.ignored,
            "elapsed_ms": started.elapsed().as_millis() as u64,
        }))),
        Finished::TimedOut => Err(ApiError::DeviceTimeout(format!(
            "terminal {sn} did not answer `{command_name}` within {:.1} s (command {id})",
            state.settings.command_timeout.as_secs_f64()
        ))),
        Finished::Disconnected => Err(ApiError::NotConnected(format!(
            "terminal {sn} disconnected before answering `{command_name}` (command {id})"
        ))),
    }
}

/// `GET /api/commands/{id}`
pub async fn get(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::parse_str(id.trim()).map_err(|_| ApiError::InvalidParams {
        field: "id".into(),
        message: "command ids are UUIDs".into(),
    })?;
    let row = state
        .store
        .command(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("command {id} is unknown")))?;
    Ok(HttpResponse::Ok().json(json!({
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
    })))
}
