//! Liveness and readiness probes (no token: load balancers call them).

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::error::ApiError;

/// The process is up.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// The database answers.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.store.ping().await.map_err(|err| {
        tracing::warn!(%err, "readiness check failed");
        ApiError::Unavailable("database unreachable".into())
    })?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}
