//! `GET /ws/echo`: the installer's echo socket. Every text (and binary) frame comes back unchanged, so a site's
//! proxy and WebSocket path can be checked with any client before devices are pointed at it. No token (an
//! installer has none), which is why it is bounded: `ECHO_MAX_FRAME_BYTES` per frame (1009 beyond), at most
//! [`OUTBOX_CAPACITY`](crate::devices::transport::OUTBOX_CAPACITY) frames waiting per socket, and closed after
//! `ECHO_IDLE_TIMEOUT` of silence. `ECHO_ENABLED=0` turns it off (404).
//!
//! One small task per socket, no actor: there is no state, nobody sends it messages, and it has to answer each
//! frame in order at the pace the client reads.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::CloseCode;
use futures_util::StreamExt;

use super::AppState;
use crate::devices::transport::{self, OutFrame, Outbox, WsEvent, WsEvents, WsFailure};
use crate::error::ApiError;

/// `GET /ws/echo`
#[utoipa::path(
    get,
    operation_id = "echo_echo",
    path = "/ws/echo",
    tag = "websocket",
    responses(
        (status = 101, description = "Switching Protocols: every frame is sent back"),
        (status = 400, description = "Not a WebSocket upgrade", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "ECHO_ENABLED=0", body = crate::api::openapi::ErrorBody),
    ),
)]
pub async fn echo(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if !state.settings.echo_enabled {
        return Err(
            ApiError::NotFound("the echo socket is turned off (ECHO_ENABLED=0)".into()).into(),
        );
    }
    let is_upgrade = req
        .headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return Err(ApiError::BadRequest(
            "/ws/echo is a WebSocket: connect with a WebSocket client (websocat ws://HOST/ws/echo)"
                .into(),
        )
        .into());
    }
    let (response, events, outbox) =
        transport::accept(&req, body, state.settings.echo_max_frame_bytes)?;
    let remote = req
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    tracing::debug!(%remote, "echo socket opened");
    actix_rt::spawn(run(events, outbox, state.settings.echo_idle_timeout));
    Ok(response)
}

/// What to do with one inbound event.
#[derive(Debug, PartialEq)]
enum Step {
    Reply(OutFrame),
    Ignore,
    /// Send this close frame and stop.
    Close(CloseCode, &'static str),
}

fn step(event: WsEvent) -> Step {
    match event {
        WsEvent::Text(text) => Step::Reply(OutFrame::Text(text)),
        WsEvent::Binary(bytes) => Step::Reply(OutFrame::Binary(bytes)),
        WsEvent::Ping(bytes) => Step::Reply(OutFrame::Pong(bytes)),
        WsEvent::Pong => Step::Ignore,
        WsEvent::Close(_) => Step::Close(CloseCode::Normal, ""),
        WsEvent::Error(WsFailure::TooLarge) => {
            Step::Close(CloseCode::Size, "frame larger than ECHO_MAX_FRAME_BYTES")
        }
        WsEvent::Error(WsFailure::Protocol) => {
            Step::Close(CloseCode::Protocol, "websocket protocol error")
        }
        WsEvent::Limited(_) => Step::Ignore,
        WsEvent::Error(WsFailure::Flood) => {
            Step::Close(CloseCode::Policy, "rate limit exceeded: too many frames")
        }
    }
}

/// Echoes until the peer closes, breaks a rule, or stays idle for `idle`. Waiting for room in the outbox
/// (instead of closing when it is full) makes a client that sends faster than it reads slow down, and a
/// client that stops reading is dropped after `idle` like a silent one.
async fn run(mut events: WsEvents, outbox: Outbox, idle: Duration) {
    loop {
        let event = match tokio::time::timeout(idle, events.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(_) => {
                let _ = outbox.send(OutFrame::Close(CloseCode::Normal, "idle".into()));
                return;
            }
        };
        match step(event) {
            Step::Reply(frame) => {
                if !matches!(
                    tokio::time::timeout(idle, outbox.send_wait(frame)).await,
                    Ok(Ok(()))
                ) {
                    // Dropping the outbox lets the writer send what is queued, then close.
                    return;
                }
            }
            Step::Ignore => {}
            Step::Close(code, reason) => {
                let _ = outbox.send(OutFrame::Close(code, reason.into()));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::web::Bytes;

    #[test]
    fn every_event_has_its_answer() {
        assert_eq!(
            step(WsEvent::Text("hi".into())),
            Step::Reply(OutFrame::Text("hi".into()))
        );
        assert_eq!(
            step(WsEvent::Binary(Bytes::from_static(b"\x00\x01"))),
            Step::Reply(OutFrame::Binary(Bytes::from_static(b"\x00\x01")))
        );
        assert_eq!(
            step(WsEvent::Ping(b"p".to_vec())),
            Step::Reply(OutFrame::Pong(b"p".to_vec()))
        );
        assert_eq!(step(WsEvent::Pong), Step::Ignore);
        assert_eq!(
            step(WsEvent::Close(None)),
            Step::Close(CloseCode::Normal, "")
        );
        assert!(matches!(
            step(WsEvent::Error(WsFailure::TooLarge)),
            Step::Close(CloseCode::Size, _)
        ));
        assert!(matches!(
            step(WsEvent::Error(WsFailure::Protocol)),
            Step::Close(CloseCode::Protocol, _)
        ));
    }
}
