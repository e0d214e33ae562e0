//! Pipeline endpoints: deploy (PUT the TOML), start, stop, status, list,
//! remove. Operators and admins change them; everyone of the tenant reads.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::api::{ApiError, internal};
use super::auth::Action;
use super::pipelines;
use super::registry::StoredPipeline;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("pipeline `{name}` not found"),
    )
}

#[utoipa::path(put, path = "/v1/tenants/{tenant}/pipelines/{name}", tag = "pipelines",
    params(("tenant" = String, Path), ("name" = String, Path)),
    request_body(content = String, content_type = "application/toml", description = "the pipeline file (docs/pipelines.md); `udfs` name registry UDFs: `name` follows the latest version, `name@N` pins one"),
    responses((status = 201, description = "deployed and started"), (status = 200, description = "updated and restarted"), (status = 400), (status = 403), (status = 422)))]
pub async fn deploy(
    State(s): State<Arc<AppState>>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let object = format!("pipeline `{name}`");
    let (state, t, n) = (s.clone(), tenant.clone(), name.clone());
    s.handle_async(
        &headers,
        Action::Operate,
        &tenant,
        &object,
        |p| async move {
            let text = String::from_utf8(body.to_vec()).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "the pipeline file must be UTF-8 TOML",
                )
            })?;
            pipelines::parse(&t, &n, &text)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
            let existed = state.registry.pipeline(&t, &n).map_err(internal)?.is_some();
            pipelines::start(&state, &t, &n, &text)
                .await
                .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
            state
                .registry
                .save_pipeline(&StoredPipeline {
                    tenant: t.clone(),
                    name: n.clone(),
                    config: text,
                    running: true,
                    updated_at: now_ms(),
                    updated_by: p.name.clone(),
                })
                .map_err(internal)?;
            let status = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, Json(json!({ "pipeline": n, "state": "running" }))).into_response())
        },
    )
    .await
}

async fn set_running(
    s: Arc<AppState>,
    tenant: String,
    name: String,
    headers: HeaderMap,
    run: bool,
) -> Response {
    let object = format!("pipeline `{name}`");
    let (state, t, n) = (s.clone(), tenant.clone(), name.clone());
    s.handle_async(
        &headers,
        Action::Operate,
        &tenant,
        &object,
        |p| async move {
            let mut stored = state
                .registry
                .pipeline(&t, &n)
                .map_err(internal)?
                .ok_or_else(|| not_found(&n))?;
            state.pipelines.stop(&t, &n).await;
            if run {
                pipelines::start(&state, &t, &n, &stored.config)
                    .await
                    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
            }
            stored.running = run;
            stored.updated_at = now_ms();
            stored.updated_by = p.name.clone();
            state.registry.save_pipeline(&stored).map_err(internal)?;
            Ok(Json(json!(state.pipelines.status(&t, &n))).into_response())
        },
    )
    .await
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/pipelines/{name}/start", tag = "pipelines",
    params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "status after starting"), (status = 403), (status = 404), (status = 422)))]
pub async fn start(
    State(s): State<Arc<AppState>>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    set_running(s, tenant, name, headers, true).await
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/pipelines/{name}/stop", tag = "pipelines",
    params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "stopped: in-flight batches finished and committed"), (status = 403), (status = 404)))]
pub async fn stop(
    State(s): State<Arc<AppState>>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    set_running(s, tenant, name, headers, false).await
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/pipelines/{name}", tag = "pipelines",
    params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "state, counts, lag, paused, UDF versions and breakers"), (status = 404)))]
pub async fn status(
    State(s): State<Arc<AppState>>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let object = format!("pipeline `{name}`");
    s.handle(&headers, Action::Read, &tenant, &object, |_| {
        let stored = s
            .registry
            .pipeline(&tenant, &name)
            .map_err(internal)?
            .ok_or_else(|| not_found(&name))?;
        let mut body = json!(s.pipelines.status(&tenant, &name));
        body["desired"] = json!(if stored.running { "running" } else { "stopped" });
        body["config"] = json!(stored.config);
        Ok((StatusCode::OK, Json(body)))
    })
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/pipelines", tag = "pipelines",
    params(("tenant" = String, Path)),
    responses((status = 200, description = "the tenant's pipelines and their states")))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    s.handle(&headers, Action::List, &tenant, "pipelines", |_| {
        let stored = s.registry.pipelines(&tenant).map_err(internal)?;
        let list: Vec<_> = stored
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "desired": if p.running { "running" } else { "stopped" },
                    "state": s.pipelines.status(&tenant, &p.name).state,
                })
            })
            .collect();
        Ok((StatusCode::OK, Json(json!({ "pipelines": list }))))
    })
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}/pipelines/{name}", tag = "pipelines",
    params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "stopped and removed"), (status = 403), (status = 404)))]
pub async fn remove(
    State(s): State<Arc<AppState>>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let object = format!("pipeline `{name}`");
    let (state, t, n) = (s.clone(), tenant.clone(), name.clone());
    s.handle_async(
        &headers,
        Action::Operate,
        &tenant,
        &object,
        |_| async move {
            if state.registry.pipeline(&t, &n).map_err(internal)?.is_none() {
                return Err(not_found(&n));
            }
            state.pipelines.stop(&t, &n).await;
            state.registry.delete_pipeline(&t, &n).map_err(internal)?;
            Ok(Json(json!({ "removed": n })).into_response())
        },
    )
    .await
}
