//! Unauthenticated endpoints: liveness, readiness, metrics, this API's
//! OpenAPI document.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "the process is alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "the registry answers, the brokers of running pipelines accept connections, and the script languages' runtimes are compiled (`serve.warm_languages`)"), (status = 503, description = "what is not ready")))]
pub async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    match s.readiness().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => {
            // Unauthenticated: the details (pipeline, brokers) go to the log.
            tracing::warn!("not ready: {why}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: see the server log",
            )
                .into_response()
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::exporter::render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200, description = "this document")))]
pub async fn openapi_json(State(s): State<Arc<AppState>>) -> Json<utoipa::openapi::OpenApi> {
    Json(super::openapi_for(&s))
}
