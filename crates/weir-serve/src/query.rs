//! `POST /v1/tenants/{tenant}/sql`: one bounded SQL query with the tenant's
//! published UDFs over tables given inline as JSON rows and over topics'
//! most recent records. Answers JSON rows,
//! or an Arrow IPC stream when the request accepts
//! `application/vnd.apache.arrow.stream`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::infer_json_schema_from_iterator;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::api::{ApiError, internal, parse_version};
use super::auth::Action;

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";
/// Rows returned at most, and the default.
const MAX_ROWS: usize = 10_000;
const DEFAULT_ROWS: usize = 1_000;
/// Rows per inline table at most.
const MAX_TABLE_ROWS: usize = 100_000;
/// Wall time of one query at most.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    sql: String,
    /// Published UDFs to register: `name` (latest) or `name@N`.
    #[serde(default)]
    udfs: Vec<String>,
    /// Tables: name → rows (JSON objects); the schema is inferred.
    #[serde(default)]
    tables: BTreeMap<String, Vec<Value>>,
    /// Tables of a topic's most recent records: name → topic, format,
    /// fields, metadata and `last` (records per partition, default 100).
    #[serde(default)]
    topics: BTreeMap<String, super::recent::TopicTable>,
    #[serde(default)]
    max_rows: Option<usize>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/sql", tag = "sql",
    params(("tenant" = String, Path, description = "tenant name")),
    request_body(content = String, content_type = "application/json",
        description = "{\"sql\", \"udfs\": [\"name\" | \"name@N\"], \"tables\": {name: [rows]}, \"topics\": {name: {brokers, topic, format, fields, metadata, last}}, \"max_rows\"}"),
    responses((status = 200, description = "JSON rows, or an Arrow IPC stream (Accept)"),
        (status = 400), (status = 403), (status = 404), (status = 408), (status = 422)))]
pub async fn run_sql(
    State(s): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains(ARROW_STREAM));
    let state = s.clone();
    let for_work = tenant.clone();
    s.handle_async(
        &headers,
        Action::Try,
        &tenant,
        "sql query",
        |_| async move {
            let tenant = for_work;
            let req: SqlRequest = serde_json::from_slice(&body).map_err(|e| {
                bad(format!(
                    "invalid JSON: {e}; send {{\"sql\": \"SELECT ...\"}}"
                ))
            })?;
            let max_rows = req.max_rows.unwrap_or(DEFAULT_ROWS).min(MAX_ROWS);
            let started = Instant::now();
            let ctx = SessionContext::new_with_config(crate::sql::session_config());
            let tenant_state = state.tenants.get(&tenant);
            for spec in &req.udfs {
                let (name, version) = match spec.split_once('@') {
                    Some((n, v)) => (n, parse_version(v)?),
                    None => (spec.as_str(), None),
                };
                let found = state
                    .registry
                    .get(&tenant, name, version)
                    .map_err(internal)?
                    .ok_or_else(|| {
                        ApiError::new(StatusCode::NOT_FOUND, format!("udf `{spec}` not found"))
                    })?;
                let bytes = state.registry.module_bytes(&found).map_err(internal)?;
                let module = state
                    .sandbox
                    .load_for(
                        &format!("{tenant}/{name}@v{}", found.version),
                        &bytes,
                        &tenant_state,
                    )
                    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
                crate::udf::register_module(&ctx, &module);
            }
            for (name, rows) in &req.tables {
                if rows.len() > MAX_TABLE_ROWS {
                    return Err(bad(format!(
                        "table `{name}`: at most {MAX_TABLE_ROWS} rows"
                    )));
                }
                let schema = infer_json_schema_from_iterator(rows.iter().map(|r| Ok(r.clone())))
                    .map_err(|e| bad(format!("table `{name}`: {e}")))?;
                let schema = Arc::new(schema);
                let mut decoder = ReaderBuilder::new(schema.clone())
                    .build_decoder()
                    .map_err(|e| bad(format!("table `{name}`: {e}")))?;
                decoder
                    .serialize(rows)
                    .map_err(|e| bad(format!("table `{name}`: {e}")))?;
                let batch = decoder
                    .flush()
                    .map_err(|e| bad(format!("table `{name}`: {e}")))?
                    .unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
                let table = MemTable::try_new(schema, vec![vec![batch]])
                    .map_err(|e| internal(e.to_string()))?;
                ctx.register_table(name.as_str(), Arc::new(table))
                    .map_err(|e| bad(format!("table `{name}`: {e}")))?;
            }
            for (name, topic) in req.topics {
                let policy = tenant_state.policy();
                super::pipelines::check_brokers(&topic.brokers, &policy)
                    .and_then(|()| super::pipelines::check_topic("topic", &topic.topic, &policy))
                    .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e))?;
                let t = topic.clone();
                let batch = tokio::task::spawn_blocking(move || super::recent::read(&t))
                    .await
                    .map_err(|e| internal(e.to_string()))?
                    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
                let schema = if batch.num_columns() > 0 {
                    batch.schema()
                } else {
                    super::recent::schema(&topic)
                };
                let table = MemTable::try_new(schema, vec![vec![batch]])
                    .map_err(|e| internal(e.to_string()))?;
                ctx.register_table(name.as_str(), Arc::new(table))
                    .map_err(|e| bad(format!("table `{name}`: {e}")))?;
            }
            let query = async {
                let df = ctx
                    .sql_with_options(&req.sql, crate::sql::read_only())
                    .await?;
                df.limit(0, Some(max_rows + 1))?.collect().await
            };
            let batches = tokio::time::timeout(TIMEOUT, query)
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        format!("the query ran over {} s", TIMEOUT.as_secs()),
                    )
                })?
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        crate::error::user_message(&e),
                    )
                })?;
            let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let truncated = total > max_rows;
            let batches = truncate(batches, max_rows);
            if arrow {
                let schema = batches
                    .first()
                    .map(|b| b.schema())
                    .unwrap_or_else(|| Arc::new(datafusion::arrow::datatypes::Schema::empty()));
                let mut out = Vec::new();
                {
                    let mut w = StreamWriter::try_new(&mut out, &schema)
                        .map_err(|e| internal(e.to_string()))?;
                    for b in &batches {
                        w.write(b).map_err(|e| internal(e.to_string()))?;
                    }
                    w.finish().map_err(|e| internal(e.to_string()))?;
                }
                return Ok(([(header::CONTENT_TYPE, ARROW_STREAM)], out).into_response());
            }
            let mut text = Vec::new();
            crate::sql::write_batches(&mut text, &batches, crate::sql::OutputFormat::Json)
                .map_err(|e| internal(e.to_string()))?;
            let rows: Vec<Value> = String::from_utf8_lossy(&text)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            Ok(Json(json!({
                "rows": rows,
                "truncated": truncated,
                "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
            }))
            .into_response())
        },
    )
    .await
}

fn truncate(batches: Vec<RecordBatch>, max: usize) -> Vec<RecordBatch> {
    let mut left = max;
    let mut out = Vec::new();
    for b in batches {
        if left == 0 {
            break;
        }
        let n = b.num_rows().min(left);
        out.push(b.slice(0, n));
        left -= n;
    }
    out
}
