//! Applies what the database says to what this node runs: on each change
//! announced by another node, after the listener reconnects, and every
//! `serve.reconcile_ms`. A pipeline runs here when it is stored as running
//! and either is shared (a Kafka source: every node is a member of its
//! group) or this node holds its lease.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::AppState;
use crate::cluster::Cluster;
use crate::database::listen::Change;
use crate::registry::StoredPipeline;
use crate::services::pipelines;
use crate::telemetry;

pub async fn run(state: Arc<AppState>, mut changes: UnboundedReceiver<Change>) {
    let Some(cluster) = state.cluster.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(cluster.reconcile);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                None => return,
                Some(Change::Resync) => {
                    count("resync");
                    state.pipelines.notify_registry_changed();
                    all(&state, &cluster).await;
                }
                Some(Change::Notified(payload)) => notified(&state, &cluster, &payload).await,
            },
            _ = tick.tick() => all(&state, &cluster).await,
        }
    }
}

fn count(kind: &'static str) {
    telemetry::counter(
        telemetry::CLUSTER_NOTIFICATIONS,
        &vec![("kind", kind.to_string())],
    )
    .increment(1);
}

async fn notified(state: &Arc<AppState>, cluster: &Cluster, payload: &str) {
    let change: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
    let field = |k: &str| change[k].as_str().unwrap_or_default().to_string();
    match field("kind").as_str() {
        "udf" => {
            count("udf");
            // Pipelines following the latest version reload between batches.
            state.pipelines.notify_registry_changed();
        }
        "pipeline" => {
            count("pipeline");
            one(state, cluster, &field("tenant"), &field("name")).await;
        }
        // Tokens are looked up in the database on every request.
        "token" => count("token"),
        other => tracing::debug!("cluster: ignored a change of kind `{other}`"),
    }
}

/// Reconciles one pipeline.
pub async fn one(state: &Arc<AppState>, cluster: &Cluster, tenant: &str, name: &str) {
    let _turn = cluster.ops.lock().await;
    match state.registry.pipeline(tenant, name) {
        Ok(stored) => apply(state, cluster, tenant, name, stored).await,
        Err(e) => tracing::warn!(tenant, pipeline = name, "cluster: cannot reconcile: {e}"),
    }
}

/// Reconciles every stored pipeline and every one running here.
pub async fn all(state: &Arc<AppState>, cluster: &Cluster) {
    let _turn = cluster.ops.lock().await;
    let stored = match state.registry.pipelines("*") {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("cluster: cannot reconcile: {e}");
            return;
        }
    };
    let gone: Vec<_> = {
        let deployed = cluster.deployed.lock();
        deployed
            .keys()
            .filter(|(t, n)| !stored.iter().any(|p| &p.tenant == t && &p.name == n))
            .cloned()
            .collect()
    };
    for (tenant, name) in gone {
        apply(state, cluster, &tenant, &name, None).await;
    }
    for p in stored {
        let (tenant, name) = (p.tenant.clone(), p.name.clone());
        apply(state, cluster, &tenant, &name, Some(p)).await;
    }
}

/// Makes this node run `stored` (or not); the caller holds `cluster.ops`.
async fn apply(
    state: &Arc<AppState>,
    cluster: &Cluster,
    tenant: &str,
    name: &str,
    stored: Option<StoredPipeline>,
) {
    let key = (tenant.to_string(), name.to_string());
    let deleted = stored.is_none();
    let Some(p) = stored.filter(|p| p.running) else {
        let was = cluster.deployed.lock().remove(&key).is_some();
        if was || state.pipelines.is_running(tenant, name) {
            tracing::info!(
                tenant,
                pipeline = name,
                "cluster: stopping (stopped or removed elsewhere)"
            );
            state.pipelines.stop(tenant, name).await;
        }
        cluster.release(tenant, name);
        if deleted {
            state.pipelines.forget(tenant, name);
        }
        return;
    };
    if !pipelines::shared(&p.config) {
        match cluster.acquire(tenant, name) {
            Ok(true) => {}
            Ok(false) => {
                // Another live node holds the lease: not here.
                if cluster.deployed.lock().remove(&key).is_some() {
                    state.pipelines.stop(tenant, name).await;
                }
                return;
            }
            Err(e) => {
                tracing::debug!(tenant, pipeline = name, "cluster: lease: {e}");
                return;
            }
        }
    }
    let current = cluster.deployed.lock().get(&key).copied();
    if current == Some((p.updated_at, true)) {
        return;
    }
    let ok = match pipelines::start(state, tenant, name, &p.config).await {
        Ok(()) => {
            tracing::info!(tenant, pipeline = name, node = %cluster.node, "cluster: running here");
            true
        }
        Err(e) => {
            if current != Some((p.updated_at, false)) {
                tracing::warn!(
                    tenant,
                    pipeline = name,
                    "cluster: cannot start here (retried every serve.reconcile_ms): {e}"
                );
            }
            false
        }
    };
    cluster.deployed.lock().insert(key, (p.updated_at, ok));
}
