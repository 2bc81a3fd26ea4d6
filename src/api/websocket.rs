//! WebSocket entry points: the upgrade becomes a session actor fed by the socket's frame stream.

use std::sync::Arc;

use actix::{Actor, AsyncContext};
use actix_web::{web, HttpRequest, HttpResponse};

use super::AppState;
use crate::devices::tm20::session::Tm20Session;
use crate::devices::transport;

/// A TM20 terminal connects (`/pub/chat`, `/ws/tm20/`, or any unclaimed path).
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
