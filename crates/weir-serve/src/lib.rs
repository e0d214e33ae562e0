//! `weir serve`: the control plane over HTTP — the UDF registry, the audit
//! log, health and Prometheus metrics — next to the tenants' policy.

pub mod audit;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod database;
pub mod error;
pub mod exporter;
pub mod flight;
pub mod http;
pub mod node;
pub mod pg;
pub mod registry;
pub mod services;
pub mod tls;

// The layers below, reachable as `crate::sandbox`, … inside this crate.
use weir_core::{sandbox, sql, telemetry, tenant, udf};
use weir_pipeline as pipeline;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::sandbox::{GuestExecutor, Sandbox};
use crate::tenant::Tenants;
pub use auth::{Role, TokenConfig, hash_token};
pub use config::ServeConfig;
pub use error::ServiceError;
pub use http::{openapi, router};
use services::pipelines;

/// Everything the handlers share.
pub struct AppState {
    pub config: ServeConfig,
    pub sandbox: Sandbox,
    /// The threads guest work runs on (queries, pipelines, staged runs,
    /// compiles), apart from the API's.
    pub executor: Arc<GuestExecutor>,
    pub tenants: Arc<Tenants>,
    pub registry: Arc<dyn registry::Registry>,
    pub audit: audit::AuditLog,
    /// This node's part of a cluster (`serve.database` set).
    pub cluster: Option<Arc<cluster::Cluster>>,
    pub pipelines: pipelines::Pipelines,
    /// Per-token request buckets: (tokens left, last refill).
    pub rate: parking_lot::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
    /// Audit records of unauthenticated requests: a bucket of 10, one more
    /// per second (the rest are only counted), so anonymous traffic cannot
    /// grow the audit log without bound.
    pub anonymous_audit: parking_lot::Mutex<(f64, std::time::Instant)>,
    /// The script languages' runtimes are compiling (`serve.warm_languages`).
    pub warming: std::sync::atomic::AtomicBool,
}

impl AppState {
    /// Takes one request from `token`'s bucket; `Err(seconds)` to wait when
    /// it is empty.
    pub fn take_request(&self, token: &str) -> Result<(), f64> {
        let rate = f64::from(self.config.requests_per_s);
        if rate == 0.0 {
            return Ok(());
        }
        let burst = f64::from(self.config.burst_requests.max(1));
        // In a cluster the bucket is shared, whichever node answers; while
        // the database does not answer, each node keeps its own.
        if let Some(cluster) = &self.cluster {
            let key = token.to_string();
            match cluster.db.run(move |c| {
                c.query_one(
                    "SELECT weir_take_request($1, $2, $3)",
                    &[&key, &rate, &burst],
                )?
                .try_get::<_, f64>(0)
            }) {
                Ok(wait) if wait <= 0.0 => return Ok(()),
                Ok(wait) => return Err(wait),
                Err(e) => tracing::debug!("rate limit on this node only: {e}"),
            }
        }
        let now = std::time::Instant::now();
        let mut buckets = self.rate.lock();
        let (left, at) = buckets.entry(token.to_string()).or_insert((burst, now));
        *left = (*left + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *left >= 1.0 {
            *left -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *left) / rate)
        }
    }

    /// Whether an unauthenticated request may still be written to the
    /// audit log (10 at once, 1 per second sustained).
    pub fn audit_anonymous(&self) -> bool {
        let mut bucket = self.anonymous_audit.lock();
        let now = std::time::Instant::now();
        bucket.0 = (bucket.0 + now.duration_since(bucket.1).as_secs_f64()).min(10.0);
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Ready: the registry answers, and every broker of the stored running
    /// pipelines accepts a TCP connection within a second.
    pub async fn readiness(&self) -> Result<(), String> {
        if self.warming.load(std::sync::atomic::Ordering::Acquire) {
            return Err(
                "the JavaScript and Python runtimes are still compiling (serve.warm_languages)"
                    .to_string(),
            );
        }
        let stored = self
            .registry
            .pipelines("*")
            .map_err(|e| format!("registry: {e}"))?;
        for p in stored.iter().filter(|p| p.running) {
            let Ok((config, _)) = pipelines::parse(&p.tenant, &p.name, &p.config) else {
                continue;
            };
            let brokers = match &config.source {
                crate::pipeline::config::SourceConfig::Kafka { brokers, .. } => brokers.clone(),
                _ => continue,
            };
            let mut reachable = false;
            for addr in brokers.split(',').map(str::trim) {
                let connect = tokio::net::TcpStream::connect(addr);
                if let Ok(Ok(_)) =
                    tokio::time::timeout(std::time::Duration::from_secs(1), connect).await
                {
                    reachable = true;
                    break;
                }
            }
            if !reachable {
                return Err(format!(
                    "no broker of pipeline `{}` (tenant `{}`) is reachable: {brokers}",
                    p.name, p.tenant
                ));
            }
        }
        Ok(())
    }

    pub fn open(
        config: ServeConfig,
        sandbox: Sandbox,
        tenants: Arc<Tenants>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)?;
        let (registry, audit, cluster): (Arc<dyn registry::Registry>, _, _) = match &config.database
        {
            None => (
                Arc::new(
                    registry::SqliteRegistry::open(&config.data_dir).map_err(anyhow::Error::msg)?,
                ),
                audit::AuditLog::open(&config.data_dir).map_err(anyhow::Error::msg)?,
                None,
            ),
            Some(url) => {
                config.check_cluster().map_err(anyhow::Error::msg)?;
                let db = Arc::new(database::Database::open(url).map_err(anyhow::Error::msg)?);
                let cluster = Arc::new(cluster::Cluster::new(db.clone(), &config));
                (
                    Arc::new(
                        registry::PostgresRegistry::new(db.clone(), &config.data_dir)
                            .map_err(anyhow::Error::msg)?,
                    ),
                    audit::AuditLog::shared(&config.data_dir, db, cluster.node.clone()),
                    Some(cluster),
                )
            }
        };
        // Pipelines emit through the recorder: install it before any starts;
        // the counters of every tenant the server knows start at zero.
        exporter::handle();
        let mut known: Vec<String> = config
            .tokens
            .iter()
            .map(|t| t.tenant.clone())
            .chain(tenants.all().iter().map(|t| t.name().to_string()))
            .filter(|t| t != "*")
            .collect();
        known.sort();
        known.dedup();
        telemetry::start_series(&known);
        let executor = Arc::new(GuestExecutor::new(sandbox.limits().guest_threads())?);
        Ok(AppState {
            config,
            pipelines: pipelines::Pipelines::on(executor.handle().clone()),
            executor,
            sandbox,
            tenants,
            registry,
            audit,
            cluster,
            rate: Default::default(),
            anonymous_audit: parking_lot::Mutex::new((10.0, std::time::Instant::now())),
            warming: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// Only `/metrics` (for `weir run --metrics-addr`).
pub async fn serve_metrics(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let app = Router::new().route("/metrics", get(http::health::metrics));
    axum::serve(listener, app).await?;
    Ok(())
}

/// Compiles the script languages' runtimes on a thread of their own (under
/// the sandbox's compile gate); `/readyz` waits for them.
fn warm_languages(state: &Arc<AppState>) {
    use std::sync::atomic::Ordering;
    state.warming.store(true, Ordering::Release);
    let warmed = state.clone();
    let started = std::thread::Builder::new()
        .name("weir-warm-languages".into())
        .spawn(move || {
            if let Err(e) = weir_core::lang::warm_runtimes(&warmed.sandbox) {
                tracing::warn!("the script languages' runtimes did not compile ahead: {e}; their first functions compile them");
            }
            warmed.warming.store(false, Ordering::Release);
        });
    if let Err(e) = started {
        tracing::warn!("cannot start the language warm-up: {e}");
        state.warming.store(false, Ordering::Release);
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&state.config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", state.config.listen))?;
    tracing::info!(addr = %state.config.listen, "weir serve: listening");
    if state.config.warm_languages {
        warm_languages(&state);
    }
    if let Some(addr) = &state.config.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr} for metrics (serve.metrics_listen): {e}")
        })?;
        tracing::info!(%addr, "weir serve: /metrics on its own listener");
        tokio::spawn(async move {
            if let Err(e) = serve_metrics(metrics).await {
                tracing::error!("metrics listener: {e:#}");
            }
        });
    }
    let tls = state
        .config
        .tls()
        .map_err(anyhow::Error::msg)?
        .map(std::sync::Arc::new);
    if let Some(addr) = pg::check(&state.config).map_err(anyhow::Error::msg)? {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (serve.postgres_listen): {e}"))?;
        tracing::info!(%addr, "weir serve: PostgreSQL wire protocol");
        tokio::spawn(pg::serve(state.clone(), listener, tls.clone()));
    }
    if let Some(addr) = crate::config::password_listener(
        "serve.flight_sql_listen",
        state.config.flight_sql_listen.as_deref(),
        "127.0.0.1:5434",
        state.config.allow_insecure_password,
        tls.is_some(),
    )
    .map_err(anyhow::Error::msg)?
    {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr} (serve.flight_sql_listen): {e}")
        })?;
        tracing::info!(%addr, "weir serve: Arrow Flight SQL");
        tokio::spawn(flight::serve(state.clone(), listener, tls.clone()));
    }
    // A single node starts what it stored; a cluster node starts what the
    // database says once its listener is connected.
    let tasks = if state.cluster.is_some() {
        node::spawn(&state).map_err(anyhow::Error::msg)?
    } else {
        pipelines::start_stored(&state).await;
        Vec::new()
    };
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    for task in tasks {
        task.abort();
    }
    // Pipelines finish their in-flight batches and commit before exit.
    state.pipelines.stop_all().await;
    if let Some(cluster) = state.cluster.clone() {
        let _ = tokio::task::spawn_blocking(move || cluster.leave()).await;
    }
    Ok(())
}
