//! Liveness and readiness probes (no token: load balancers call them).

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::error::ApiError;

/// The process is up.
#[utoipa::path(
    get,
    operation_id = "health_healthz",
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The process is up", body = crate::api::openapi::Status),
    ),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// The database answers.
#[utoipa::path(
    get,
    operation_id = "health_readyz",
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "The database answers", body = crate::api::openapi::Status),
        (status = 503, description = "The database is unreachable", body = crate::api::openapi::ErrorBody),
    ),
)]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.store.ping().await.map_err(|err| {
        tracing::warn!(%err, "readiness check failed");
        ApiError::Unavailable("database unreachable".into())
    })?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}
