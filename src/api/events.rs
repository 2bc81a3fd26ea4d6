//! `GET /ws/events` (subscribe to live events) and `POST /api/events/publish` (targeted pushes).

use actix::{Actor, AsyncContext};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::extract::JsonObject;
use super::AppState;
use crate::devices::transport;
use crate::error::ApiError;
use crate::events::subscriber::EventSubscriber;
use crate::events::{validate_topic, Event};

/// Largest op frame a subscriber may send.
const MAX_OP_BYTES: usize = 64 * 1024;

/// `GET /ws/events` (token in `Authorization` or `?token=`).
#[utoipa::path(
    get,
    operation_id = "events_subscribe",
    path = "/ws/events",
    tag = "websocket",
    responses(
        (status = 101, description = "Switching Protocols: the live event stream"),
        (status = 401, description = "Missing or invalid token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = []), ("token_query" = [])),
)]
pub async fn subscribe(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if !super::token_ok(&req, &state.api_token) {
        return Err(ApiError::Unauthorized.into());
    }
    let (response, frames, outbox) = transport::accept(&req, body, MAX_OP_BYTES)?;
    let subscriber = EventSubscriber::new(
        state.session_deps.events.clone(),
        outbox,
        state.registry.clone(),
    );
    EventSubscriber::create(move |ctx| {
        ctx.add_stream(frames);
        subscriber
    });
    Ok(response)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"room": "lobby", "data": {"text": "hello"}}))]
pub struct PublishBody {
    room: Option<String>,
    topic: Option<String>,
    subscriber: Option<String>,
    #[serde(default)]
    data: Value,
}

/// `POST /api/events/publish`: a `message` event to a room, a topic, or one subscriber. 202.
#[utoipa::path(
    post,
    operation_id = "events_publish",
    path = "/api/events/publish",
    tag = "events",
    request_body = PublishBody,
    responses(
        (status = 202, description = "Published", body = crate::api::openapi::Published),
        (status = 400, description = "Not exactly one of room, topic or subscriber, or an invalid one", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such subscriber is connected", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn publish(
    state: web::Data<AppState>,
    body: JsonObject<PublishBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let chosen = [
        body.room.is_some(),
        body.topic.is_some(),
        body.subscriber.is_some(),
    ]
    .iter()
    .filter(|set| **set)
    .count();
    if chosen != 1 {
        return Err(ApiError::BadRequest(
            "give exactly one of room, topic or subscriber".into(),
        ));
    }
    let bus = &state.session_deps.events;
    let mut event = Event {
        kind_of_event: "message".into(),
        device: None,
        kind: None,
        node: bus.node().to_owned(),
        at: Utc::now(),
        data: body.data,
        target: None,
    };
    if let Some(subscriber) = body.subscriber {
        let id = Uuid::parse_str(subscriber.trim()).map_err(|_| ApiError::InvalidParams {
            field: "subscriber".into(),
            message: "subscriber ids are the UUIDs sent in the welcome".into(),
        })?;
        if bus.deliver_to(id, &event) {
            return Ok(HttpResponse::Accepted().json(json!({"published": true, "subscriber": id})));
        }
        return match &state.cluster {
            Some(cluster) => {
                cluster.publish_live(&event, Some(id));
                Ok(HttpResponse::Accepted().json(json!({"published": true, "subscriber": id})))
            }
            None => Err(ApiError::NotFound(format!(
                "no subscriber {id} is connected"
            ))),
        };
    }
    let target = match (body.room, body.topic) {
        (Some(room), _) => format!("room:{room}"),
        (_, Some(topic)) => topic,
        _ => unreachable_target()?,
    };
    validate_topic(&target).map_err(|message| ApiError::InvalidParams {
        field: "topic".into(),
        message,
    })?;
    event.target = Some(target.clone());
    bus.publish_event(event);
    Ok(HttpResponse::Accepted().json(json!({"published": true, "topic": target})))
}

fn unreachable_target() -> Result<String, ApiError> {
    Err(ApiError::BadRequest(
        "give exactly one of room, topic or subscriber".into(),
    ))
}
