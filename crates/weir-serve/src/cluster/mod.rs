//! A cluster of `weir serve` nodes over one PostgreSQL database
//! (`serve.database`): this node's identity, leases and view of the
//! others. The database holds everything stored; a node holds only what
//! it runs. Each node (its tasks are in `crate::node`, above this module
//! and the services they drive):
//! - listens for the changes other nodes commit ([`listen`](crate::database::listen))
//!   and applies them: a publish reloads pipelines between micro-batches,
//!   a deploy or stop starts or stops the pipeline here too;
//! - reconciles every `serve.reconcile_ms` in case a notification was missed;
//! - writes a heartbeat every `serve.heartbeat_ms` with the pipelines and
//!   partitions it runs, and renews its leases.
//!
//! Kafka pipelines run on every node, as members of their consumer group:
//! Kafka spreads the partitions. A pipeline that cannot be shared (a file
//! source) runs where its lease is held (a row with an expiry, renewed by
//! heartbeats, taken over once expired).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::database::{Database, DatabaseError};
use crate::telemetry;

type Key = (String, String);

/// This node's part of the cluster.
pub struct Cluster {
    pub db: Arc<Database>,
    pub node: String,
    pub address: String,
    pub started_at: i64,
    pub heartbeat: Duration,
    pub lease: Duration,
    pub reconcile: Duration,
    /// Pipelines this node started: the stored `updated_at` it started from
    /// and whether the start succeeded (failed starts are retried).
    pub(crate) deployed: parking_lot::Mutex<HashMap<Key, (i64, bool)>>,
    /// Leases this node holds.
    pub(crate) leases: parking_lot::Mutex<HashSet<Key>>,
    /// One change at a time on this node: an API call or a reconcile.
    pub(crate) ops: tokio::sync::Mutex<()>,
    /// The last heartbeat that reached the database.
    pub(crate) last_ok: parking_lot::Mutex<Instant>,
    up: AtomicBool,
}

impl Cluster {
    pub fn new(db: Arc<Database>, config: &crate::ServeConfig) -> Self {
        Cluster {
            db,
            node: config.node_name(),
            address: config.listen.clone(),
            started_at: now_ms(),
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            lease: Duration::from_millis(config.lease_ms),
            reconcile: Duration::from_millis(config.reconcile_ms),
            deployed: Default::default(),
            leases: Default::default(),
            ops: tokio::sync::Mutex::new(()),
            last_ok: parking_lot::Mutex::new(Instant::now()),
            up: AtomicBool::new(true),
        }
    }

    /// Whether the last heartbeat reached the database.
    pub fn database_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        if up {
            *self.last_ok.lock() = Instant::now();
        }
        telemetry::gauge(telemetry::CLUSTER_DATABASE_UP, &vec![]).set(f64::from(u8::from(up)));
    }

    /// Takes (or keeps) the lease of `tenant`/`name`; `false` while another
    /// live node holds it.
    ///
    /// # Errors
    /// The shared database's, when it does not answer or refuses.
    pub fn acquire(&self, tenant: &str, name: &str) -> Result<bool, DatabaseError> {
        let (t, n, node) = (tenant.to_string(), name.to_string(), self.node.clone());
        let secs = self.lease.as_secs_f64();
        let held = self.db.run(move |c| {
            c.query_opt(
                "INSERT INTO weir_leases VALUES ($1, $2, $3, now() + make_interval(secs => $4::float8))
                 ON CONFLICT (tenant, name) DO UPDATE SET node = $3, expires_at = EXCLUDED.expires_at
                 WHERE weir_leases.node = $3 OR weir_leases.expires_at < now()
                 RETURNING node",
                &[&t, &n, &node, &secs],
            )
            .map(|row| row.is_some())
        })?;
        let key = (tenant.to_string(), name.to_string());
        let mut leases = self.leases.lock();
        if held {
            leases.insert(key);
        } else {
            leases.remove(&key);
        }
        telemetry::gauge(telemetry::CLUSTER_LEASES_HELD, &vec![]).set(leases.len() as f64);
        Ok(held)
    }

    /// Gives a lease up (the pipeline stopped here).
    pub fn release(&self, tenant: &str, name: &str) {
        let key = (tenant.to_string(), name.to_string());
        if !self.leases.lock().remove(&key) {
            return;
        }
        let (t, n, node) = (key.0, key.1, self.node.clone());
        if let Err(e) = self.db.run(move |c| {
            c.execute(
                "DELETE FROM weir_leases WHERE tenant = $1 AND name = $2 AND node = $3",
                &[&t, &n, &node],
            )
        }) {
            tracing::warn!("cluster: cannot release the lease of {tenant}/{name}: {e}");
        }
    }

    /// Leaves the cluster (on shutdown, after the pipelines stopped): the
    /// leases go at once, so another node takes them without waiting.
    pub fn leave(&self) {
        let node = self.node.clone();
        match self.db.run(move |c| {
            c.execute("DELETE FROM weir_leases WHERE node = $1", &[&node])?;
            c.execute("DELETE FROM weir_nodes WHERE node = $1", &[&node])
        }) {
            Ok(_) => tracing::info!(node = %self.node, "left the cluster"),
            Err(e) => tracing::warn!("cluster: cannot leave cleanly ({e}); the leases expire"),
        }
    }

    /// The nodes and leases, as `GET /v1/cluster` shows them.
    ///
    /// # Errors
    /// The shared database's, when it does not answer or refuses.
    pub fn view(&self) -> Result<serde_json::Value, DatabaseError> {
        let alive_ms = 3.0 * self.heartbeat.as_millis() as f64;
        let (nodes, leases) = self.db.run(move |c| {
            let nodes = c.query(
                "SELECT node, address, started_at,
                        (EXTRACT(EPOCH FROM now() - heartbeat_at) * 1000)::float8, pipelines
                 FROM weir_nodes ORDER BY node",
                &[],
            )?;
            let leases = c.query(
                "SELECT tenant, name, node, (EXTRACT(EPOCH FROM expires_at - now()) * 1000)::float8
                 FROM weir_leases ORDER BY tenant, name",
                &[],
            )?;
            let mut n = Vec::new();
            for r in &nodes {
                let age: f64 = r.try_get(3)?;
                let pipelines: String = r.try_get(4)?;
                n.push(serde_json::json!({
                    "node": r.try_get::<_, String>(0)?,
                    "address": r.try_get::<_, String>(1)?,
                    "started_at": r.try_get::<_, i64>(2)?,
                    "heartbeat_age_ms": age.max(0.0).round() as i64,
                    "alive": age <= alive_ms,
                    "pipelines": serde_json::from_str::<serde_json::Value>(&pipelines)
                        .unwrap_or(serde_json::Value::Null),
                }));
            }
            let mut l = Vec::new();
            for r in &leases {
                let left: f64 = r.try_get(3)?;
                l.push(serde_json::json!({
                    "tenant": r.try_get::<_, String>(0)?,
                    "pipeline": r.try_get::<_, String>(1)?,
                    "node": r.try_get::<_, String>(2)?,
                    "expires_in_ms": left.round() as i64,
                }));
            }
            Ok((n, l))
        })?;
        Ok(serde_json::json!({
            "node": self.node,
            "database": self.db.shown(),
            "nodes": nodes,
            "leases": leases,
        }))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
