//! Staged runs: a function on sample rows, published or not.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::admission::{Admit, Try};
use crate::AppState;
use crate::error::{ServiceError, ServiceResult};
use crate::services::staged::{self, TryRequest};
use crate::services::udfs::{UdfRef, parse_version};

fn answer(started: Instant, result: crate::udf::staged::Staged) -> Response {
    let mut body = json!(result);
    body["total_ms"] = json!(started.elapsed().as_secs_f64() * 1000.0);
    Json(body).into_response()
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/udfs/{name}/versions/{version}/try", tag = "staged", params(("tenant" = String, Path, description = "tenant name"), ("name" = String, Path, description = "UDF name: a-z, 0-9, -, _"), ("version" = String, Path, description = "version number, or `latest`")), request_body(content = String, content_type = "application/json", description = "{\"function\": name, \"rows\": [[args...], ...]}"), responses((status = 200, description = "outputs, per-row errors, guest time"), (status = 400), (status = 403), (status = 404), (status = 422)))]
pub async fn try_version(
    State(s): State<Arc<AppState>>,
    admit: Admit<Try>,
    Path((_, name, version)): Path<(String, String, String)>,
    body: Bytes,
) -> ServiceResult<Response> {
    let started = Instant::now();
    let req = TryRequest::parse(&body)?;
    let r = UdfRef {
        name,
        version: parse_version(&version)?,
    };
    // On the guest threads: the API's threads never run a guest; within
    // the tenant's admission (its requests beyond its cap wait as futures).
    let tenant = s.tenants.get(&admit.tenant);
    let admitted = tenant.admit().await;
    let executor = s.executor.clone();
    let result = executor
        .run_blocking(move || {
            let _admitted = admitted;
            // The whole run (loading, marshalling, its guest calls) takes
            // one of the tenant's slots.
            let _slot = tenant.enter();
            staged::try_version(&s, &admit.tenant, &r, &req)
        })
        .await
        .map_err(ServiceError::internal)??;
    Ok(answer(started, result))
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/try", tag = "staged", params(("tenant" = String, Path, description = "tenant name")), request_body(content = String, content_type = "application/json", description = "{\"function\", \"rows\", \"module_base64\" | \"module_text\"}"), responses((status = 200, description = "outputs, per-row errors, guest time"), (status = 400), (status = 403), (status = 422)))]
pub async fn try_module(
    State(s): State<Arc<AppState>>,
    admit: Admit<Try>,
    body: Bytes,
) -> ServiceResult<Response> {
    let started = Instant::now();
    let req = TryRequest::parse(&body)?;
    let tenant = s.tenants.get(&admit.tenant);
    let admitted = tenant.admit().await;
    let executor = s.executor.clone();
    let result = executor
        .run_blocking(move || {
            let _admitted = admitted;
            let _slot = tenant.enter();
            staged::try_module(&s, &admit.tenant, &req)
        })
        .await
        .map_err(ServiceError::internal)??;
    Ok(answer(started, result))
}
