//! WebSocket entry points: the upgrade becomes a session actor fed by the socket's frame stream.

use std::sync::Arc;

use actix::{Actor, AsyncContext};
use actix_web::{web, HttpRequest, HttpResponse};

use super::AppState;
use crate::devices::ocpp::handshake::{self, Refusal};
use crate::devices::ocpp::session::OcppSession;
use crate::devices::tm20::session::Tm20Session;
use crate::devices::transport;
use crate::error::ApiError;

/// A TM20 terminal connects (`/pub/chat`, `/ws/tm20/`, or any unclaimed path).
#[utoipa::path(
    get,
    operation_id = "websocket_tm20",
    path = "/ws/tm20",
    tag = "websocket",
    responses(
        (status = 101, description = "Switching Protocols: the socket of a TM20 terminal"),
    ),
)]
pub async fn tm20(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, events, outbox) =
        transport::accept(&req, body, state.settings.tm20_max_frame_bytes)?;
    let remote = req
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    let session = Tm20Session::new(Arc::clone(&state.session_deps), outbox, remote);
    Tm20Session::create(move |ctx| {
        ctx.add_stream(events);
        session
    });
    Ok(response)
}

/// A charge point connects at `/ocpp/{id}` (or `/ws/ocpp/{id}`). Refusals are HTTP answers at the handshake:
/// 400 bad id or no `ocpp1.6` subprotocol, 404 unknown (when `OCPP_AUTO_REGISTER=0`), 403 blocked, 401 bad
/// credentials.
#[utoipa::path(
    get,
    operation_id = "websocket_ocpp",
    path = "/ocpp/{id}",
    tag = "websocket",
    params(
        ("id" = String, Path, description = "Charge point id (1-48 characters of A-Z a-z 0-9 . _ - : * # @ +)"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: OCPP 1.6J (subprotocol `ocpp1.6`)"),
        (status = 400, description = "Bad id or no `ocpp1.6` subprotocol", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Security profile 1/2: missing or wrong HTTP Basic password", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "The charge point is blocked", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown charge point and OCPP_AUTO_REGISTER=0", body = crate::api::openapi::ErrorBody),
    ),
)]
pub async fn ocpp(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, actix_web::Error> {
    let id = id.into_inner();
    let refuse = |refusal: Refusal| -> actix_web::Error {
        tracing::info!(cp = %id, %refusal, "charge point handshake refused");
        let message = refusal.to_string();
        match refusal {
            Refusal::BadId | Refusal::NoSubprotocol => ApiError::BadRequest(message).into(),
            Refusal::Unknown => ApiError::NotFound(message).into(),
            Refusal::Blocked => ApiError::Forbidden(message).into(),
            Refusal::BadCredentials => ApiError::BasicAuthRequired(message).into(),
        }
    };
    if !handshake::valid_id(&id) {
        return Err(refuse(Refusal::BadId));
    }
    if !handshake::offers_subprotocol(req.headers()) {
        return Err(refuse(Refusal::NoSubprotocol));
    }
    let charger = match state.store.charger(&id).await.map_err(ApiError::from)? {
        Some(row) => row,
        None if state.settings.ocpp_auto_register => state
            .store
            .ensure_charger(&id)
            .await
            .map_err(ApiError::from)?,
        None => return Err(refuse(Refusal::Unknown)),
    };
    if charger.blocked {
        return Err(refuse(Refusal::Blocked));
    }
    handshake::check_credentials(
        &id,
        charger.security_profile,
        charger.password_hash.as_deref(),
        req.headers(),
    )
    .map_err(refuse)?;
    let (response, events, outbox) = transport::accept_with_protocol(
        &req,
        body,
        state.settings.ocpp_max_frame_bytes,
        handshake::SUBPROTOCOL,
    )?;
    let remote = req
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    let session = OcppSession::new(
        Arc::clone(&state.session_deps),
        outbox,
        remote,
        id,
        charger.id,
    );
    OcppSession::create(move |ctx| {
        ctx.add_stream(events);
        session
    });
    Ok(response)
}
