//! `GET /api/nodes`: the live nodes of the cluster (just this one when running alone).

use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde_json::json;

use super::AppState;
use crate::cluster::NodeInfo;
use crate::error::ApiError;
use crate::registry::ListConnected;

/// `GET /api/nodes`
#[utoipa::path(
    get,
    operation_id = "nodes_list",
    path = "/api/nodes",
    tag = "cluster",
    responses(
        (status = 200, description = "Live nodes (just this one when alone)", body = crate::api::openapi::NodeList),
        (status = 503, description = "The cluster directory is unreachable", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items = match &state.cluster {
        Some(cluster) => cluster.nodes().await.map_err(|err| {
            ApiError::Unavailable(format!("the cluster directory is unreachable: {err}"))
        })?,
        None => {
            let devices = state
                .registry
                .send(ListConnected)
                .await
                .map(|list| list.len())
                .unwrap_or(0);
            vec![NodeInfo {
                node: state.node_id.clone(),
                name: state.node_id.clone(),
                address: state.settings.bind.clone(),
                started_at: state.started_at,
                devices,
                last_seen: Utc::now(),
            }]
        }
    };
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}
