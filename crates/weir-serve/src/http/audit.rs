//! `GET /v1/audit`: tenant admins read their tenant's records; `*` admins
//! any tenant's (`?tenant=`), or all.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::admission::{Admit, ReadAudit};
use crate::AppState;
use crate::error::{ServiceError, ServiceResult};

/// The largest `limit` accepted (the document's maximum); at most 10 000
/// records are returned.
const MAX_LIMIT: usize = 1_000_000_000;

#[derive(Deserialize)]
pub struct AuditQuery {
    limit: Option<usize>,
    /// Read by the admission (whose records), not here.
    #[allow(dead_code)]
    tenant: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(("limit" = Option<usize>, Query, description = "last N records (default 1000)"), ("tenant" = Option<String>, Query, description = "for `*` admins")), responses((status = 200, description = "audit records, oldest first"), (status = 400), (status = 403)))]
pub async fn read(
    State(s): State<Arc<AppState>>,
    admit: Admit<ReadAudit>,
    Query(q): Query<AuditQuery>,
) -> ServiceResult<Response> {
    if let Some(limit) = q.limit.filter(|l| *l > MAX_LIMIT) {
        return Err(ServiceError::BadRequest(format!(
            "limit {limit} is above {MAX_LIMIT} (at most 10000 records are returned)"
        )));
    }
    let records = s
        .audit
        .read(&admit.tenant, q.limit.unwrap_or(1000).min(10_000));
    Ok(Json(json!({ "records": records })).into_response())
}
