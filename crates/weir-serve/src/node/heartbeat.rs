//! The heartbeat: every `serve.heartbeat_ms` a node writes when it was last
//! alive (the database's clock, so nodes' clocks need not agree) and what
//! it runs with its partitions, and renews its leases. A lease it failed to
//! renew, or could not for nearly `serve.lease_ms`, stops its pipeline
//! here: by then another node may have taken it.

use std::sync::Arc;

use crate::AppState;
use crate::cluster::Cluster;
use crate::database::DatabaseError;
use crate::telemetry;

pub async fn run(state: Arc<AppState>, cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(cluster.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        beat(&state, &cluster).await;
    }
}

/// What this node runs, for its row in `weir_nodes`.
fn running(state: &AppState, cluster: &Cluster) -> serde_json::Value {
    let mut keys: Vec<_> = cluster.deployed.lock().keys().cloned().collect();
    keys.sort();
    keys.iter()
        .filter(|(t, n)| state.pipelines.is_running(t, n))
        .map(|(tenant, name)| {
            let status = state.pipelines.status(tenant, name);
            serde_json::json!({
                "tenant": tenant,
                "pipeline": name,
                "state": status.state,
                "partitions": status.partitions,
                "records_in": status.records_in,
            })
        })
        .collect()
}

async fn beat(state: &Arc<AppState>, cluster: &Arc<Cluster>) {
    let pipelines = running(state, cluster).to_string();
    let (node, address, started_at) = (
        cluster.node.clone(),
        cluster.address.clone(),
        cluster.started_at,
    );
    let lease_secs = cluster.lease.as_secs_f64();
    let alive_secs = 3.0 * cluster.heartbeat.as_secs_f64();
    let db = cluster.db.clone();
    let answer = tokio::task::spawn_blocking(move || {
        db.run(move |c| {
            c.execute(
                "INSERT INTO weir_nodes VALUES ($1, $2, $3, now(), $4)
                 ON CONFLICT (node) DO UPDATE SET address = $2, started_at = $3,
                     heartbeat_at = now(), pipelines = $4",
                &[&node, &address, &started_at, &pipelines],
            )?;
            let renewed = c.query(
                "UPDATE weir_leases SET expires_at = now() + make_interval(secs => $2::float8)
                 WHERE node = $1 RETURNING tenant, name",
                &[&node, &lease_secs],
            )?;
            // Nodes gone for an hour are forgotten.
            c.execute(
                "DELETE FROM weir_nodes WHERE heartbeat_at < now() - interval '1 hour'",
                &[],
            )?;
            let alive: i64 = c
                .query_one(
                    "SELECT count(*) FROM weir_nodes
                     WHERE heartbeat_at > now() - make_interval(secs => $1::float8)",
                    &[&alive_secs],
                )?
                .try_get(0)?;
            let renewed = renewed
                .iter()
                .map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?)))
                .collect::<Result<std::collections::HashSet<_>, postgres::Error>>()?;
            Ok((renewed, alive))
        })
    })
    .await
    .unwrap_or_else(|e| Err(DatabaseError::Unavailable(e.to_string())));
    let lost: Vec<_> = match answer {
        Ok((renewed, alive)) => {
            if !cluster.database_up() {
                tracing::info!(node = %cluster.node, "cluster: the database answers again");
            }
            cluster.set_up(true);
            telemetry::gauge(telemetry::CLUSTER_NODES, &vec![]).set(alive as f64);
            let s = state.clone();
            match tokio::task::spawn_blocking(move || s.audit.flush_spool()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!("audit: {n} spooled records moved to the database"),
                Ok(Err(e)) => tracing::warn!("audit: spool not moved yet: {e}"),
                Err(e) => tracing::warn!("audit: {e}"),
            }
            let held = cluster.leases.lock().clone();
            held.into_iter().filter(|k| !renewed.contains(k)).collect()
        }
        Err(e) => {
            if cluster.database_up() {
                tracing::warn!(node = %cluster.node, "cluster: heartbeat failed: {e}");
            }
            cluster.set_up(false);
            // Stop before the lease can expire in the database.
            let margin = cluster.heartbeat * 2;
            if cluster.last_ok.lock().elapsed() + margin >= cluster.lease {
                cluster.leases.lock().iter().cloned().collect()
            } else {
                Vec::new()
            }
        }
    };
    for (tenant, name) in lost {
        tracing::warn!(
            tenant,
            pipeline = name,
            "cluster: lost the lease (not renewed within serve.lease_ms); stopping here"
        );
        let _turn = cluster.ops.lock().await;
        state.pipelines.stop(&tenant, &name).await;
        cluster
            .leases
            .lock()
            .remove(&(tenant.clone(), name.clone()));
        cluster.deployed.lock().remove(&(tenant, name));
    }
    telemetry::gauge(telemetry::CLUSTER_LEASES_HELD, &vec![])
        .set(cluster.leases.lock().len() as f64);
}
