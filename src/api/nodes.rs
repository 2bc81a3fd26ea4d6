//! `GET /api/nodes`: the live nodes of the cluster (just this one when running alone).

use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde_json::json;

use super::AppState;
use crate::cluster::NodeInfo;
use crate::error::ApiError;
use crate::registry::ListConnected;

/// `GET /api/nodes`
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
