//! `POST /v1/tenants/{tenant}/sql`: answers JSON rows, or an Arrow IPC
//! stream when the request accepts `application/vnd.apache.arrow.stream`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::ipc::writer::StreamWriter;
use serde_json::{Value, json};

use super::admission::{Admit, Try};
use crate::AppState;
use crate::error::{ServiceError, ServiceResult};
use crate::services::query::{self, SqlRequest};

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

#[utoipa::path(post, path = "/v1/tenants/{tenant}/sql", tag = "sql",
    params(("tenant" = String, Path, description = "tenant name")),
    request_body(content = String, content_type = "application/json",
        description = "{\"sql\", \"udfs\": [\"name\" | \"name@N\"], \"tables\": {name: [rows]}, \"topics\": {name: {brokers, topic, format, fields, metadata, last}}, \"max_rows\"}"),
    responses((status = 200, description = "JSON rows, or an Arrow IPC stream (Accept)"),
        (status = 400), (status = 403), (status = 404), (status = 408), (status = 422)))]
pub async fn run_sql(
    State(s): State<Arc<AppState>>,
    admit: Admit<Try>,
    headers: HeaderMap,
    body: Bytes,
) -> ServiceResult<Response> {
    let arrow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains(ARROW_STREAM));
    let req: SqlRequest = serde_json::from_slice(&body).map_err(|e| {
        ServiceError::BadRequest(format!(
            "invalid JSON: {e}; send {{\"sql\": \"SELECT ...\"}}"
        ))
    })?;
    let answer = query::run(&s, &admit.tenant, req).await?;
    if arrow {
        let schema = answer
            .batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(datafusion::arrow::datatypes::Schema::empty()));
        let mut out = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut out, &schema).map_err(ServiceError::internal)?;
            for b in &answer.batches {
                w.write(b).map_err(ServiceError::internal)?;
            }
            w.finish().map_err(ServiceError::internal)?;
        }
        return Ok(([(header::CONTENT_TYPE, ARROW_STREAM)], out).into_response());
    }
    let mut text = Vec::new();
    crate::sql::write_batches(&mut text, &answer.batches, crate::sql::OutputFormat::Json)
        .map_err(ServiceError::internal)?;
    let rows: Vec<Value> = String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok(Json(json!({
        "rows": rows,
        "truncated": answer.truncated,
        "elapsed_ms": answer.elapsed.as_secs_f64() * 1000.0,
    }))
    .into_response())
}
