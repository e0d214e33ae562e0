//! `weir serve`: the control plane over HTTP — the UDF registry, the audit
//! log, health and Prometheus metrics — next to the tenants' policy.

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod deploy;
pub mod exporter;
pub mod pipelines;
pub mod recent;
pub mod registry;
pub mod query;

// The layers below, reachable as `crate::sandbox`, … inside this crate.
use weir_core::{error, sandbox, sql, telemetry, tenant, udf};
use weir_pipeline as pipeline;


use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;


use crate::sandbox::Sandbox;
use crate::tenant::Tenants;
pub use config::ServeConfig;
pub use auth::{Role, TokenConfig, hash_token};

/// Everything the handlers share.
pub struct AppState {
    pub config: ServeConfig,
    pub sandbox: Sandbox,
    pub tenants: Arc<Tenants>,
    pub registry: registry::Registry,
    pub audit: audit::AuditLog,
    pub pipelines: pipelines::Pipelines,
    /// Per-token request buckets: (tokens left, last refill).
    pub rate: std::sync::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
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
        let now = std::time::Instant::now();
        let mut buckets = self.rate.lock().unwrap_or_else(|p| p.into_inner());
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

    /// Ready: the registry answers, and every broker of the stored running
    /// pipelines accepts a TCP connection within a second.
    pub async fn readiness(&self) -> Result<(), String> {
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
        let registry = registry::Registry::open(&config.data_dir).map_err(anyhow::Error::msg)?;
        let audit = audit::AuditLog::open(&config.data_dir).map_err(anyhow::Error::msg)?;
        // Pipelines emit through the recorder: install it before any starts.
        exporter::handle();
        Ok(AppState {
            config,
            sandbox,
            tenants,
            registry,
            audit,
            pipelines: pipelines::Pipelines::default(),
            rate: Default::default(),
        })
    }
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "weir",
        description = "Sandboxed WebAssembly UDFs over streaming Arrow data: the control plane."
    ),
    paths(
        api::healthz,
        api::readyz,
        api::metrics,
        api::list_udfs,
        api::publish_udf,
        api::udf_versions,
        api::get_version,
        api::delete_version,
        api::try_version,
        api::try_module,
        api::read_audit,
        query::run_sql,
        deploy::deploy,
        deploy::start,
        deploy::stop,
        deploy::status,
        deploy::list,
        deploy::remove,
        api::create_token,
        api::list_tokens,
        api::revoke_token,
        openapi_json
    )
)]
pub struct ApiDoc;

/// Every route, `(method, path)`, as the router serves it (the OpenAPI
/// test checks each one is documented).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/v1/tenants/{tenant}/udfs"),
    ("get", "/v1/tenants/{tenant}/udfs/{name}"),
    ("post", "/v1/tenants/{tenant}/udfs/{name}"),
    ("get", "/v1/tenants/{tenant}/udfs/{name}/versions/{version}"),
    (
        "delete",
        "/v1/tenants/{tenant}/udfs/{name}/versions/{version}",
    ),
    (
        "post",
        "/v1/tenants/{tenant}/udfs/{name}/versions/{version}/try",
    ),
    ("post", "/v1/tenants/{tenant}/try"),
    ("post", "/v1/tenants/{tenant}/sql"),
    ("get", "/v1/tenants/{tenant}/pipelines"),
    ("put", "/v1/tenants/{tenant}/pipelines/{name}"),
    ("get", "/v1/tenants/{tenant}/pipelines/{name}"),
    ("delete", "/v1/tenants/{tenant}/pipelines/{name}"),
    ("post", "/v1/tenants/{tenant}/pipelines/{name}/start"),
    ("post", "/v1/tenants/{tenant}/pipelines/{name}/stop"),
    ("get", "/v1/tenants/{tenant}/tokens"),
    ("post", "/v1/tenants/{tenant}/tokens"),
    ("delete", "/v1/tenants/{tenant}/tokens/{name}"),
    ("get", "/v1/audit"),
];

#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200, description = "this document")))]
async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(<ApiDoc as utoipa::OpenApi>::openapi())
}

/// Every route.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/tenants/{tenant}/udfs", get(api::list_udfs))
        .route(
            "/v1/tenants/{tenant}/udfs/{name}",
            get(api::udf_versions).post(api::publish_udf),
        )
        .route(
            "/v1/tenants/{tenant}/udfs/{name}/versions/{version}",
            get(api::get_version).delete(api::delete_version),
        )
        .route(
            "/v1/tenants/{tenant}/udfs/{name}/versions/{version}/try",
            axum::routing::post(api::try_version),
        )
        .route(
            "/v1/tenants/{tenant}/try",
            axum::routing::post(api::try_module),
        )
        .route(
            "/v1/tenants/{tenant}/sql",
            axum::routing::post(query::run_sql),
        )
        .route("/v1/tenants/{tenant}/pipelines", get(deploy::list))
        .route(
            "/v1/tenants/{tenant}/pipelines/{name}",
            get(deploy::status)
                .put(deploy::deploy)
                .delete(deploy::remove),
        )
        .route(
            "/v1/tenants/{tenant}/pipelines/{name}/start",
            axum::routing::post(deploy::start),
        )
        .route(
            "/v1/tenants/{tenant}/pipelines/{name}/stop",
            axum::routing::post(deploy::stop),
        )
        .route(
            "/v1/tenants/{tenant}/tokens",
            get(api::list_tokens).post(api::create_token),
        )
        .route(
            "/v1/tenants/{tenant}/tokens/{name}",
            axum::routing::delete(api::revoke_token),
        )
        .route("/v1/audit", get(api::read_audit))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Only `/metrics` (for `weir run --metrics-addr`).
pub async fn serve_metrics(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let app = Router::new().route("/metrics", get(api::metrics));
    axum::serve(listener, app).await?;
    Ok(())
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
    pipelines::start_stored(&state).await;
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    // Pipelines finish their in-flight batches and commit before exit.
    state.pipelines.stop_all().await;
    Ok(())
}
