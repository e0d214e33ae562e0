//! `/v1/tenants/{tenant}/pipelines`: deploy (PUT the TOML), start, stop,
//! status, list, remove. Operators and admins change them; everyone of the
//! tenant reads.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::admission::{Admit, List, Operate, Read};
use crate::AppState;
use crate::error::ServiceResult;
use crate::services::pipelines;

#[utoipa::path(put, path = "/v1/tenants/{tenant}/pipelines/{name}", tag = "pipelines",
    params(("tenant" = String, Path), ("name" = String, Path)),
    request_body(content = String, content_type = "application/toml", description = "the pipeline file (docs/pipelines.md); `udfs` name registry UDFs: `name` follows the latest version, `name@N` pins one"),
    responses((status = 201, description = "deployed and started"), (status = 200, description = "updated and restarted"), (status = 400), (status = 403, description = "outside the tenant's policy or serve.file_roots"), (status = 404, description = "a UDF it names is not in the registry"), (status = 422, description = "it could not be built")))]
pub async fn deploy(
    State(s): State<Arc<AppState>>,
    admit: Admit<Operate>,
    Path((_, name)): Path<(String, String)>,
    body: Bytes,
) -> ServiceResult<Response> {
    let created = pipelines::deploy(&s, &admit.tenant, &name, &body, &admit.caller.name).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "pipeline": name, "state": "running" })),
    )
        .into_response())
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/pipelines/{name}/start", tag = "pipelines",
    params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "status after starting"), (status = 403), (status = 404), (status = 422)))]
pub async fn start(
    State(s): State<Arc<AppState>>,
    admit: Admit<Operate>,
    Path((_, name)): Path<(String, String)>,
) -> ServiceResult<Response> {
    let status = pipelines::set_running(&s, &admit.tenant, &name, true, &admit.caller.name).await?;
    Ok(Json(json!(status)).into_response())
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/pipelines/{name}/stop", tag = "pipelines",
    params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "stopped: in-flight batches finished and committed"), (status = 403), (status = 404)))]
pub async fn stop(
    State(s): State<Arc<AppState>>,
    admit: Admit<Operate>,
    Path((_, name)): Path<(String, String)>,
) -> ServiceResult<Response> {
    let status =
        pipelines::set_running(&s, &admit.tenant, &name, false, &admit.caller.name).await?;
    Ok(Json(json!(status)).into_response())
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/pipelines/{name}", tag = "pipelines",
    params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "state, counts, lag, paused, UDF versions and breakers"), (status = 404)))]
pub async fn status(
    State(s): State<Arc<AppState>>,
    admit: Admit<Read>,
    Path((_, name)): Path<(String, String)>,
) -> ServiceResult<Response> {
    Ok(Json(pipelines::describe(&s, &admit.tenant, &name)?).into_response())
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/pipelines", tag = "pipelines",
    params(("tenant" = String, Path)),
    responses((status = 200, description = "the tenant's pipelines and their states")))]
pub async fn list(State(s): State<Arc<AppState>>, admit: Admit<List>) -> ServiceResult<Response> {
    let list = pipelines::list(&s, &admit.tenant)?;
    Ok(Json(json!({ "pipelines": list })).into_response())
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}/pipelines/{name}", tag = "pipelines",
    params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "stopped and removed"), (status = 403), (status = 404)))]
pub async fn remove(
    State(s): State<Arc<AppState>>,
    admit: Admit<Operate>,
    Path((_, name)): Path<(String, String)>,
) -> ServiceResult<Response> {
    pipelines::remove(&s, &admit.tenant, &name).await?;
    Ok(Json(json!({ "removed": name })).into_response())
}
