//! The HTTP API: one handler file per resource, admission as an extractor,
//! audit and metrics as a layer, and one route table from which both the
//! router and the OpenAPI document come.

pub mod admission;
pub mod audit;
pub mod health;
pub mod pipelines;
pub mod query;
pub mod staged;
pub mod tokens;
pub mod udfs;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

#[derive(OpenApi)]
#[openapi(info(
    title = "weir",
    description = "Sandboxed WebAssembly UDFs over streaming Arrow data: the control plane."
))]
struct ApiDoc;

/// The route table: every route once, with its handlers' documentation
/// (`/metrics` unless it has a listener of its own).
fn table(with_metrics: bool) -> OpenApiRouter<Arc<AppState>> {
    let table = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz));
    let table = if with_metrics {
        table.routes(routes!(health::metrics))
    } else {
        table
    };
    table
        .routes(routes!(health::openapi_json))
        .routes(routes!(udfs::list))
        .routes(routes!(udfs::versions, udfs::publish))
        .routes(routes!(udfs::get_version, udfs::delete_version))
        .routes(routes!(staged::try_version))
        .routes(routes!(staged::try_module))
        .routes(routes!(query::run_sql))
        .routes(routes!(pipelines::list))
        .routes(routes!(
            pipelines::status,
            pipelines::deploy,
            pipelines::remove
        ))
        .routes(routes!(pipelines::start))
        .routes(routes!(pipelines::stop))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(audit::read))
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    table(true).into_openapi()
}

/// The OpenAPI document of the routes `state`'s API listener serves.
pub fn openapi_for(state: &AppState) -> utoipa::openapi::OpenApi {
    table(state.config.metrics_listen.is_none()).into_openapi()
}

/// Every route, with the body limit and the audit layer.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    let (router, _) = table(state.config.metrics_listen.is_none()).split_for_parts();
    router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admission::audit,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
