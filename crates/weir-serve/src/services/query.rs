//! One bounded SQL query of a tenant: its published UDFs over tables given
//! inline as JSON rows and over topics' most recent records; read-only
//! apart from `CREATE FUNCTION … LANGUAGE javascript|python` for the request,
//! row- and time-capped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::infer_json_schema_from_iterator;
use datafusion::datasource::MemTable;
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::error::{ServiceError, ServiceResult};
use crate::pipeline::table::recent::{self, TopicTable};
use crate::services::boundary::{check_brokers, check_topic};
use crate::services::udfs::{self, UdfRef};

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
    pub sql: String,
    /// Published UDFs to register: `name` (latest) or `name@N`.
    #[serde(default)]
    pub udfs: Vec<String>,
    /// Tables: name → rows (JSON objects); the schema is inferred.
    #[serde(default)]
    pub tables: BTreeMap<String, Vec<Value>>,
    /// Tables of a topic's most recent records: name → topic, format,
    /// fields, metadata and `last` (records per partition, default 100).
    #[serde(default)]
    pub topics: BTreeMap<String, TopicTable>,
    #[serde(default, deserialize_with = "whole_number")]
    pub max_rows: Option<usize>,
    /// Tables and functions the server adds for this statement (the
    /// PostgreSQL clients' catalog, `pg::catalog`); never a request's.
    #[serde(skip)]
    pub catalog: Option<Catalog>,
}

/// Tables (schema `pg_catalog`) and functions a statement's session gets
/// besides the tenant's: built by the server, small, read-only.
#[derive(Default)]
pub struct Catalog {
    pub tables: Vec<(String, RecordBatch)>,
    pub functions: Vec<datafusion::logical_expr::ScalarUDF>,
}

/// A JSON number with no fraction (`255` or `255.0`, which JSON Schema
/// also calls an integer); one beyond `u64` (any integer is schema-valid)
/// counts as the largest, since rows are capped anyway.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    use serde::de::Error;
    let n = Option::<serde_json::Number>::deserialize(d)?;
    n.map(|n| {
        n.as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    // `as` saturates at u64::MAX.
                    .map(|f| f as u64)
            })
            .map(|v| usize::try_from(v).unwrap_or(usize::MAX))
            .ok_or_else(|| {
                D::Error::custom(format!("max_rows must be a whole number ≥ 0, got {n}"))
            })
    })
    .transpose()
}

/// The result of a query.
pub struct Answer {
    pub batches: Vec<RecordBatch>,
    /// More rows than `max_rows` were produced.
    pub truncated: bool,
    pub elapsed: Duration,
}

/// Topic tables one query may read.
pub const MAX_TOPICS: usize = 4;

fn bad(message: String) -> ServiceError {
    ServiceError::BadRequest(message)
}

/// Rows that are valid JSON but cannot form one table.
fn rejected(table: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Rejected(format!("table `{table}`: {e}"))
}

/// Runs `req` for `tenant`.
pub async fn run(state: &Arc<AppState>, tenant: &str, req: SqlRequest) -> ServiceResult<Answer> {
    let session = prepare(state, tenant, req).await?;
    let max_rows = session.max_rows;
    let started = session.started;
    let batches = session
        .on_guest_threads(move |ctx, sql, host| async move {
            let options = crate::sql::read_only();
            crate::sql::run_script(&ctx, &sql, options, &host, Some(max_rows + 1)).await
        })
        .await?;
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    Ok(Answer {
        truncated: total > max_rows,
        batches: truncate(batches, max_rows),
        elapsed: started.elapsed(),
    })
}

/// A statement's rows as they are produced: its columns, then its batches;
/// an error (the deadline, a guest's, memory) ends them. Dropping the
/// receiver stops the query.
pub struct Streamed {
    pub schema: datafusion::arrow::datatypes::SchemaRef,
    pub batches: tokio::sync::mpsc::Receiver<ServiceResult<RecordBatch>>,
}

/// Batches a streamed statement produces ahead of its client at most: a
/// slow client holds the query (its polls wait, taking no slot), not a
/// growing buffer.
const STREAM_AHEAD: usize = 2;

/// Runs `req` for `tenant` with its placeholders' values, streaming every
/// row (no `max_rows`: the client takes them as they come, the server
/// holds at most `STREAM_AHEAD` batches). The deadline covers the whole
/// statement, its rows' delivery included.
pub async fn stream(
    state: &Arc<AppState>,
    tenant: &str,
    req: SqlRequest,
    params: Vec<datafusion::common::ScalarValue>,
) -> ServiceResult<Streamed> {
    use futures::StreamExt;
    let session = prepare(state, tenant, req).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(STREAM_AHEAD);
    let (schema_tx, schema_rx) = tokio::sync::oneshot::channel();
    let rows = tx.clone();
    let producer = session.on_guest_threads(move |ctx, sql, host| async move {
        let mut stream =
            crate::sql::stream_script(&ctx, &sql, crate::sql::read_only(), &host, &params).await?;
        let _ = schema_tx.send(stream.schema());
        while let Some(batch) = stream.next().await {
            if rows.send(Ok(batch?)).await.is_err() {
                // The client left (or cancelled): no more rows.
                break;
            }
        }
        Ok(())
    });
    tokio::spawn(async move {
        tokio::select! {
            done = producer => {
                if let Err(e) = done {
                    let _ = tx.send(Err(e)).await;
                }
            }
            // Every receiver dropped: the query is dropped with it.
            () = tx.closed() => {}
        }
    });
    match schema_rx.await {
        Ok(schema) => Ok(Streamed {
            schema,
            batches: rx,
        }),
        // It failed before its first rows: the error is on the channel.
        Err(_) => Err(match rx.recv().await {
            Some(Err(e)) => e,
            _ => ServiceError::internal("the statement ended without an answer"),
        }),
    }
}

/// What `req`'s statement takes (its placeholders' types) and returns (its
/// columns), planned in `tenant`'s session as [`run`] would, run not.
/// `declared`: the types the client gives the placeholders, where it does.
pub async fn describe(
    state: &Arc<AppState>,
    tenant: &str,
    req: SqlRequest,
    declared: Vec<Option<datafusion::arrow::datatypes::DataType>>,
) -> ServiceResult<crate::sql::Described> {
    let session = prepare(state, tenant, req).await?;
    session
        .on_guest_threads(move |ctx, sql, host| async move {
            crate::sql::describe_script(&ctx, &sql, crate::sql::read_only(), &host, &declared).await
        })
        .await
}

/// A request's session, ready to plan its SQL: the tenant's bounds,
/// memory pool, UDFs and tables.
struct Session {
    state: Arc<AppState>,
    tenant: String,
    ctx: datafusion::prelude::SessionContext,
    sql: String,
    host: TenantFunctions,
    max_rows: usize,
    started: Instant,
    deadline: Instant,
    policy: Arc<weir_core::tenant::TenantPolicy>,
    memory_key: String,
}

/// Builds `req`'s session for `tenant`.
async fn prepare(state: &Arc<AppState>, tenant: &str, req: SqlRequest) -> ServiceResult<Session> {
    let max_rows = req.max_rows.unwrap_or(DEFAULT_ROWS).min(MAX_ROWS);
    let started = Instant::now();
    let deadline = started + TIMEOUT;
    let policy = state.tenants.get(tenant).policy();
    let memory_key = policy.key("query_memory_bytes");
    // The session names its tenant: the query's streams are polled under
    // the tenant's share of the slots (`weir_core::tenant::gate`). One
    // partition: a query is one task, which waits for its tenant's turn
    // once per poll; partitions in tasks of their own would each wait for
    // a slot at every hand-over between them (BENCHMARKS.md, issue 29).
    let ctx = crate::sql::bounded_context(
        policy
            .sql_bounds()
            .install(crate::sql::session_config().with_target_partitions(1))
            .with_extension(state.tenants.get(tenant)),
        policy.query_memory_bytes,
        &memory_key,
    );
    if req.udfs.len() > crate::pipeline::PipelineConfig::MAX_UDFS {
        return Err(bad(format!(
            "udfs lists {} modules; a query may load at most {}",
            req.udfs.len(),
            crate::pipeline::PipelineConfig::MAX_UDFS
        )));
    }
    let mut seen = std::collections::HashSet::new();
    let mut refs = Vec::new();
    for spec in &req.udfs {
        let r = UdfRef::parse(spec)?;
        // Well-formed, but two entries for one name cannot both be
        // loaded (a conflict, 422, not a malformed request).
        if !seen.insert(r.name.clone()) {
            return Err(ServiceError::Rejected(format!(
                "udf `{}` is listed twice; list each UDF once (`name` or `name@N`)",
                r.name
            )));
        }
        refs.push(r);
    }
    // Loading may compile: on the guest threads.
    let modules = {
        let (s, t) = (state.clone(), tenant.to_string());
        state
            .executor
            .run_blocking(move || {
                refs.iter()
                    .map(|r| udfs::load(&s, &t, r))
                    .collect::<ServiceResult<Vec<_>>>()
            })
            .await
            .map_err(ServiceError::internal)??
    };
    for module in &modules {
        crate::udf::register_module_until(&ctx, module, deadline);
    }
    if let Some(catalog) = req.catalog {
        let schema = datafusion::catalog::MemorySchemaProvider::new();
        for (name, batch) in catalog.tables {
            let table = MemTable::try_new(batch.schema(), vec![vec![batch]])
                .map_err(ServiceError::internal)?;
            datafusion::catalog::SchemaProvider::register_table(&schema, name, Arc::new(table))
                .map_err(ServiceError::internal)?;
        }
        let default = ctx.state().config_options().catalog.default_catalog.clone();
        ctx.catalog(&default)
            .ok_or_else(|| ServiceError::internal("the session has no default catalog"))?
            .register_schema("pg_catalog", Arc::new(schema))
            .map_err(ServiceError::internal)?;
        for function in catalog.functions {
            ctx.register_udf(function);
        }
    }
    for (name, rows) in &req.tables {
        if rows.len() > MAX_TABLE_ROWS {
            return Err(bad(format!(
                "table `{name}`: at most {MAX_TABLE_ROWS} rows"
            )));
        }
        let schema = infer_json_schema_from_iterator(rows.iter().map(|r| Ok(r.clone())))
            .map_err(|e| rejected(name, e))?;
        let schema = Arc::new(schema);
        let mut decoder = ReaderBuilder::new(schema.clone())
            .build_decoder()
            .map_err(|e| rejected(name, e))?;
        decoder.serialize(rows).map_err(|e| rejected(name, e))?;
        let batch = decoder
            .flush()
            .map_err(|e| rejected(name, e))?
            .unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
        let table = MemTable::try_new(schema, vec![vec![batch]]).map_err(ServiceError::internal)?;
        ctx.register_table(name.as_str(), Arc::new(table))
            .map_err(|e| bad(format!("table `{name}`: {e}")))?;
    }
    if req.topics.len() > MAX_TOPICS {
        return Err(bad(format!(
            "topics names {} tables; a query may read at most {MAX_TOPICS}",
            req.topics.len()
        )));
    }
    // What the topic tables hold counts toward the query's memory; they
    // are read within the request's deadline.
    let mut topic_bytes = 0usize;
    for (name, topic) in req.topics {
        check_brokers(&format!("topics.{name}.brokers"), &topic.brokers, &policy)?;
        check_topic(&format!("topics.{name}.topic"), &topic.topic, &policy)?;
        let t = topic.clone();
        let read = tokio::task::spawn_blocking(move || recent::read(&t));
        let batch = tokio::time::timeout_at(deadline.into(), read)
            .await
            .map_err(|_| {
                ServiceError::Timeout(format!(
                    "reading topic table `{name}` ran over the query's {} s",
                    TIMEOUT.as_secs()
                ))
            })?
            .map_err(ServiceError::internal)?
            .map_err(ServiceError::Rejected)?;
        topic_bytes += batch.get_array_memory_size();
        if topic_bytes as u64 > policy.query_memory_bytes {
            return Err(ServiceError::Rejected(format!(
                "the topic tables of tenant `{tenant}`'s query hold {topic_bytes} bytes, more than its `{memory_key}` ({} bytes); ask for fewer records (`last`)",
                policy.query_memory_bytes
            )));
        }
        let schema = if batch.num_columns() > 0 {
            batch.schema()
        } else {
            recent::schema(&topic)
        };
        let table = MemTable::try_new(schema, vec![vec![batch]]).map_err(ServiceError::internal)?;
        ctx.register_table(name.as_str(), Arc::new(table))
            .map_err(|e| bad(format!("table `{name}`: {e}")))?;
    }
    let host = TenantFunctions {
        state: state.clone(),
        tenant: state.tenants.get(tenant),
        deadline,
    };
    Ok(Session {
        state: state.clone(),
        tenant: tenant.to_string(),
        ctx,
        sql: req.sql,
        host,
        max_rows,
        started,
        deadline,
        policy,
        memory_key,
    })
}

impl Session {
    /// Runs `work` (planning, and execution) on the guest threads within
    /// the request's deadline. Planning (constant folding calls guests)
    /// and execution run there; at the deadline the rest of the work is
    /// dropped and a guest call in flight is interrupted. `CREATE FUNCTION
    /// … LANGUAGE javascript|python` statements before the query add
    /// functions to this request's session only, loaded under the
    /// tenant's limits and policy. The tenant's requests beyond its cap
    /// wait here, as futures, within the deadline: never on the guest
    /// threads.
    async fn on_guest_threads<T, F, Fut>(self, work: F) -> ServiceResult<T>
    where
        T: Send + 'static,
        F: FnOnce(datafusion::prelude::SessionContext, String, TenantFunctions) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = datafusion::error::Result<T>> + Send + 'static,
    {
        let Session {
            state,
            tenant,
            ctx,
            sql,
            host,
            deadline,
            policy,
            memory_key,
            ..
        } = self;
        let tenant_ref = state.tenants.get(&tenant);
        let executor = state.executor.clone();
        let query = async move {
            let admitted = tenant_ref.admit().await;
            let gated = tenant_ref.clone();
            executor
                .run(gated.gate(async move {
                    let _admitted = admitted;
                    work(ctx, sql, host).await
                }))
                .await
        };
        tokio::time::timeout_at(deadline.into(), query)
            .await
            .map_err(|_| {
                ServiceError::Timeout(format!("the query ran over {} s", TIMEOUT.as_secs()))
            })?
            .map_err(ServiceError::internal)?
            .map_err(|e| {
                let message = weir_core::error::user_message(&e);
                if matches!(
                    e.find_root(),
                    datafusion::error::DataFusionError::ResourcesExhausted(_)
                ) {
                    ServiceError::Rejected(format!(
                        "the query of tenant `{tenant}` needs more than its `{memory_key}` ({} bytes): {message}",
                        policy.query_memory_bytes
                    ))
                } else {
                    ServiceError::Rejected(message)
                }
            })
    }
}

/// `CREATE FUNCTION` in a request: the tenant's limits, policy and
/// capabilities, the request's deadline.
struct TenantFunctions {
    state: Arc<AppState>,
    tenant: Arc<weir_core::tenant::Tenant>,
    deadline: Instant,
}

impl crate::sql::FunctionHost for TenantFunctions {
    fn load(
        &self,
        label: &str,
        wasm: &[u8],
    ) -> Result<Arc<weir_core::UdfModule>, weir_core::LoadError> {
        let label = format!("{}/{label}", self.tenant.name());
        self.state.sandbox.load_for(&label, wasm, &self.tenant)
    }

    fn register(
        &self,
        ctx: &datafusion::prelude::SessionContext,
        module: &Arc<weir_core::UdfModule>,
    ) {
        crate::udf::register_module_until(ctx, module, self.deadline);
    }
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
