//! The HTTP API: one handler file per resource, admission as an extractor,
//! audit and metrics as a layer, and one route table from which both the
//! router and the OpenAPI document come.

pub mod admission;
pub mod audit;
pub mod cluster;
pub mod health;
pub mod pipelines;
pub mod query;
pub mod spec;
pub mod staged;
pub mod tokens;
pub mod udfs;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ServiceError;

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
        .routes(routes!(cluster::view))
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    spec::complete(table(true).into_openapi())
}

/// The OpenAPI document of the routes `state`'s API listener serves.
pub fn openapi_for(state: &AppState) -> utoipa::openapi::OpenApi {
    spec::complete(table(state.config.metrics_listen.is_none()).into_openapi())
}

/// Every error is `{"error": "…"}`, also those answered before a handler
/// runs (a body over the limit, an unparsable query string, a method the
/// route does not have), whose text axum writes as plain text.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut out = (status, Json(json!({ "error": message }))).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

async fn no_route() -> ServiceError {
    ServiceError::NotFound("no such route; GET /openapi.json lists them".to_string())
}

/// Every route, with the body limit and the audit layer.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    let (router, _) = table(state.config.metrics_listen.is_none()).split_for_parts();
    router
        .fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admission::audit,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}
