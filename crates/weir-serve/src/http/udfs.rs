//! `/v1/tenants/{tenant}/udfs`: publish, list, read and delete versions.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::admission::{Admit, Delete, List, Publish, Read};
use crate::AppState;
use crate::error::{ServiceError, ServiceResult};
use crate::services::udfs::{self, parse_version, valid_name};

#[utoipa::path(get, path = "/v1/tenants/{tenant}/udfs", tag = "udfs", params(("tenant" = String, Path, description = "tenant name")), responses((status = 200, description = "the latest version of each UDF"), (status = 401), (status = 404)))]
pub async fn list(State(s): State<Arc<AppState>>, admit: Admit<List>) -> ServiceResult<Response> {
    let list = s.registry.list(&admit.tenant).map_err(ServiceError::from)?;
    Ok(Json(json!({ "udfs": list })).into_response())
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/udfs/{name}", tag = "udfs", params(("tenant" = String, Path, description = "tenant name"), ("name" = String, Path, description = "UDF name: a-z, 0-9, -, _")), request_body(content = Vec<u8>, content_type = "application/wasm", description = "the module, binary or text format"), responses((status = 201, description = "published as the next version"), (status = 200, description = "same bytes as the latest version"), (status = 400), (status = 401), (status = 403), (status = 404), (status = 413), (status = 415), (status = 422, description = "the sandbox refused the module")))]
pub async fn publish(
    State(s): State<Arc<AppState>>,
    admit: Admit<Publish>,
    Path((_, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ServiceResult<Response> {
    valid_name(&name)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !matches!(
        content_type,
        "application/wasm" | "application/octet-stream"
    ) {
        return Err(ServiceError::UnsupportedMediaType(format!(
            "send the module as `Content-Type: application/wasm` (got `{content_type}`)"
        )));
    }
    // Compiling runs on the guest threads (and waits for a compile slot).
    let executor = s.executor.clone();
    let (version, created) = executor
        .run_blocking(move || {
            let tenant = s.tenants.get(&admit.tenant);
            let _slot = tenant.enter();
            udfs::publish(&s, &admit.tenant, &name, &body, &admit.caller.name)
        })
        .await
        .map_err(ServiceError::internal)??;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(version))).into_response())
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/udfs/{name}", tag = "udfs", params(("tenant" = String, Path, description = "tenant name"), ("name" = String, Path, description = "UDF name: a-z, 0-9, -, _")), responses((status = 200, description = "every version"), (status = 404)))]
pub async fn versions(
    State(s): State<Arc<AppState>>,
    admit: Admit<Read>,
    Path((_, name)): Path<(String, String)>,
) -> ServiceResult<Response> {
    let versions = s
        .registry
        .versions(&admit.tenant, &name)
        .map_err(ServiceError::from)?;
    if versions.is_empty() {
        return Err(ServiceError::not_found(&format!("udf `{name}`")));
    }
    Ok(Json(json!({ "name": name, "versions": versions })).into_response())
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/udfs/{name}/versions/{version}", tag = "udfs", params(("tenant" = String, Path, description = "tenant name"), ("name" = String, Path, description = "UDF name: a-z, 0-9, -, _"), ("version" = String, Path, description = "version number, or `latest`")), responses((status = 200, description = "one version"), (status = 404)))]
pub async fn get_version(
    State(s): State<Arc<AppState>>,
    admit: Admit<Read>,
    Path((_, name, version)): Path<(String, String, String)>,
) -> ServiceResult<Response> {
    let r = udfs::UdfRef {
        name,
        version: parse_version(&version)?,
    };
    let found = udfs::find(&s, &admit.tenant, &r)?;
    Ok(Json(json!(found)).into_response())
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}/udfs/{name}/versions/{version}", tag = "udfs", params(("tenant" = String, Path, description = "tenant name"), ("name" = String, Path, description = "UDF name: a-z, 0-9, -, _"), ("version" = String, Path, description = "version number")), responses((status = 200, description = "deleted; `latest` follows the previous version"), (status = 403), (status = 404), (status = 409, description = "a running pipeline pins the version")))]
pub async fn delete_version(
    State(s): State<Arc<AppState>>,
    admit: Admit<Delete>,
    Path((_, name, version)): Path<(String, String, String)>,
) -> ServiceResult<Response> {
    let v = udfs::delete(&s, &admit.tenant, &name, parse_version(&version)?).await?;
    Ok(Json(json!({ "deleted": { "name": name, "version": v } })).into_response())
}
