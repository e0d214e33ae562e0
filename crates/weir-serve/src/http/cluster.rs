//! `GET /v1/cluster`: the nodes sharing this node's database, their last
//! heartbeat, the pipelines each runs with its partitions, and the leases
//! of pipelines that run on one node. A single node shows itself.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::json;

use super::admission::{Admit, ReadCluster};
use crate::AppState;
use crate::error::{ServiceError, ServiceResult};

#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", responses((status = 200, description = "nodes, heartbeats, pipelines and partitions, leases"), (status = 403)))]
pub async fn view(
    State(s): State<Arc<AppState>>,
    _admit: Admit<ReadCluster>,
) -> ServiceResult<Json<serde_json::Value>> {
    let Some(cluster) = s.cluster.clone() else {
        let node = s.config.node_name();
        let pipelines: Vec<_> = s
            .registry
            .pipelines("*")
            .map_err(ServiceError::from)?
            .iter()
            .filter(|p| s.pipelines.is_running(&p.tenant, &p.name))
            .map(|p| {
                let status = s.pipelines.status(&p.tenant, &p.name);
                json!({ "tenant": p.tenant, "pipeline": p.name, "state": status.state, "partitions": status.partitions })
            })
            .collect();
        return Ok(Json(json!({
            "node": node,
            "database": "sqlite (a single node)",
            "nodes": [{ "node": node, "address": s.config.listen, "alive": true, "heartbeat_age_ms": 0, "pipelines": pipelines }],
            "leases": [],
        })));
    };
    tokio::task::spawn_blocking(move || cluster.view())
        .await
        .map_err(ServiceError::internal)?
        .map(Json)
        .map_err(ServiceError::from)
}
