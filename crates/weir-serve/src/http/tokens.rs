//! `/v1/tenants/{tenant}/tokens`: admins create (shown once), list and
//! revoke the tenant's tokens.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::admission::{Admit, ManageTokens};
use crate::AppState;
use crate::auth::Role;
use crate::error::{ServiceError, ServiceResult};
use crate::services::tokens;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    role: Role,
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/tokens", tag = "tokens",
    params(("tenant" = String, Path, description = "tenant name")),
    request_body(content = String, content_type = "application/json", description = "{\"name\", \"role\": \"viewer\" | \"operator\" | \"publisher\" | \"admin\"}"),
    responses((status = 201, description = "the token (shown once) and its sha256"), (status = 400), (status = 403), (status = 409)))]
pub async fn create(
    State(s): State<Arc<AppState>>,
    admit: Admit<ManageTokens>,
    body: Bytes,
) -> ServiceResult<Response> {
    let req: NewToken = serde_json::from_slice(&body).map_err(|e| {
        ServiceError::BadRequest(format!(
            "invalid JSON: {e}; send {{\"name\": \"ci\", \"role\": \"publisher\"}}"
        ))
    })?;
    let created =
        tokens::create(&s, &admit.tenant, &req.name, req.role, &admit.caller.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": created.config.name,
            "tenant": created.config.tenant,
            "role": created.config.role,
            "token": created.token,
            "sha256": created.config.sha256,
        })),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/tokens", tag = "tokens",
    params(("tenant" = String, Path, description = "tenant name")),
    responses((status = 200, description = "names and roles of the tokens created through the API"), (status = 403)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    admit: Admit<ManageTokens>,
) -> ServiceResult<Response> {
    let tokens: Vec<Value> = s
        .registry
        .tokens(&admit.tenant)
        .map_err(ServiceError::from)?
        .into_iter()
        .map(|t| json!({ "name": t.name, "role": t.role }))
        .collect();
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}/tokens/{name}", tag = "tokens",
    params(("tenant" = String, Path, description = "tenant name"), ("name" = String, Path, description = "token name")),
    responses((status = 200, description = "revoked"), (status = 403), (status = 404)))]
pub async fn revoke(
    State(s): State<Arc<AppState>>,
    admit: Admit<ManageTokens>,
    Path((_, name)): Path<(String, String)>,
) -> ServiceResult<Response> {
    tokens::revoke(&s, &admit.tenant, &name).await?;
    Ok(Json(json!({ "revoked": name })).into_response())
}
