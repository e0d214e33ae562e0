//! A running pipeline: the loop that moves micro-batches from the source
//! through the query to the sink, and commits what was acknowledged.

use crate::telemetry::{self, Count, Level};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::watch;

use super::config::{ErrorPolicy, PipelineConfig, SinkConfig, SourceConfig};
use super::decode::RecordDecoder;
use super::encode::RecordEncoder;
use super::inflight::InFlight;
use super::isolate::run_isolating;
use super::query::{PlannedQuery, Split};
use super::record::{DeadLetter, SourceRecord, next_offsets};
use super::sink::{DeadLetterSink, RecordLimit, Sink};
use super::source::Source;
use super::table::Tables;
use super::transaction::Transaction;
use super::window::WindowState;
use super::workers::{Encoding, Transforming, Workers};
use crate::sandbox::{Sandbox, UdfModule};
use crate::tenant::{BreakerAction, BreakerState};
use crate::tenant::{Tenant, Tenants};

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// While an open breaker holds the pipeline: how often it checks for a new
/// UDF version, commits what was acknowledged and keeps the consumer alive.
const BREAKER_POLL: Duration = Duration::from_millis(200);
/// A batch that finds no capacity (instance slot, tenant memory) is held and
/// retried this many times (≈ 21 s of waiting in all) before its records
/// are handled as failed.
const MAX_CAPACITY_WAITS: u32 = 8;

/// Counters of one pipeline (read by status pages, mirrored to the
/// metrics recorder with labels `tenant`, `pipeline`).
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub records_in: Count,
    pub records_out: Count,
    pub dead_letters: Count,
    pub skipped: Count,
    pub batches: Count,
    /// Consumer lag summed over the assigned partitions (-1: unknown).
    pub lag: Level,
    /// 1 while the source is paused by backpressure.
    pub paused: Level,
    /// 1 while the source is paused because a UDF's circuit breaker is open.
    pub breaker_paused: Level,
    /// 1 while the pipeline has no partitions, or lag and no progress, for
    /// longer than `source.stall_warn_ms`.
    pub stalled: Level,
    /// 1 while a windowed pipeline owns only some of its source's
    /// partitions (its windows miss the others' records).
    pub partial_windows: Level,
    /// Records behind the watermark whose windows were already emitted.
    pub late: Count,
    pub windows_emitted: Count,
    pub open_windows: Level,
    pub window_state_bytes: Level,
    /// Event-time watermark in seconds (0 before the first record).
    pub watermark: Level,
    /// Kafka transactions of an exactly-once sink.
    pub transactions_committed: Count,
    pub transactions_aborted: Count,
    /// What holds the pipeline up right now, in words (breaker or stall).
    condition: parking_lot::Mutex<Option<String>>,
    /// The source's partitions (`topic/partition`), refreshed between
    /// micro-batches.
    partitions: parking_lot::Mutex<Vec<String>>,
}

impl PipelineStats {
    /// The counters of pipeline `name` of `tenant`.
    pub fn new(tenant: &str, name: &str) -> Self {
        let l: telemetry::Labels = vec![
            ("tenant", tenant.to_string()),
            ("pipeline", name.to_string()),
        ];
        let count = |n| Count::new(telemetry::counter(n, &l));
        let level = |n| Level::new(telemetry::gauge(n, &l), 0);
        PipelineStats {
            records_in: count(telemetry::PIPELINE_RECORDS_IN),
            records_out: count(telemetry::PIPELINE_RECORDS_OUT),
            dead_letters: count(telemetry::PIPELINE_DEAD_LETTERS),
            skipped: count(telemetry::PIPELINE_SKIPPED),
            batches: count(telemetry::PIPELINE_BATCHES),
            lag: Level::unknown(telemetry::gauge(telemetry::PIPELINE_LAG, &l)),
            paused: level(telemetry::PIPELINE_PAUSED),
            breaker_paused: level(telemetry::PIPELINE_BREAKER_PAUSED),
            stalled: level(telemetry::PIPELINE_STALLED),
            partial_windows: level(telemetry::PIPELINE_PARTIAL_WINDOWS),
            late: count(telemetry::PIPELINE_LATE),
            windows_emitted: count(telemetry::PIPELINE_WINDOWS_EMITTED),
            open_windows: level(telemetry::PIPELINE_OPEN_WINDOWS),
            window_state_bytes: level(telemetry::PIPELINE_WINDOW_STATE_BYTES),
            watermark: level(telemetry::PIPELINE_WATERMARK),
            transactions_committed: count(telemetry::PIPELINE_TXN_COMMITTED),
            transactions_aborted: count(telemetry::PIPELINE_TXN_ABORTED),
            condition: parking_lot::Mutex::new(None),
            partitions: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// The consumer lag, or -1 when unknown.
    pub fn get_lag(&self) -> i64 {
        self.lag.get()
    }

    /// What holds the pipeline up, if anything.
    pub fn condition(&self) -> Option<String> {
        self.condition.lock().clone()
    }

    fn set_condition(&self, condition: Option<String>) {
        *self.condition.lock() = condition;
    }

    /// The partitions the pipeline read at the last micro-batch boundary.
    pub fn partitions(&self) -> Vec<String> {
        self.partitions.lock().clone()
    }
}

impl crate::transaction::TxnCounts for PipelineStats {
    fn committed(&self) {
        self.transactions_committed.add(1);
    }

    fn aborted(&self) {
        self.transactions_aborted.add(1);
    }
}

/// A pipeline ready to run.
pub struct Pipeline {
    config: PipelineConfig,
    source: Box<dyn Source>,
    decoder: RecordDecoder,
    query: PlannedQuery,
    encoder: Arc<RecordEncoder>,
    /// Several batches transformed at once (`batch.workers`), when more
    /// than one worker is in force.
    workers: Option<Workers>,
    /// Lookup tables the query joins (`[[tables]]`).
    tables: Tables,
    sink: Box<dyn Sink>,
    dead_letters: Option<Box<dyn DeadLetterSink>>,
    /// The transaction of an exactly-once sink (`sink.delivery`).
    txn: Option<Arc<Transaction>>,
    stats: Arc<PipelineStats>,
    /// The owning tenant and the modules loaded under its policy (shared
    /// with `/metrics`; replaced when a reload swaps UDF versions).
    tenant: Arc<Tenant>,
    modules: SharedModules,
    /// Functions the SQL creates (`CREATE FUNCTION … LANGUAGE javascript`
    /// before the query), loaded under the tenant; kept through reloads.
    inline: Vec<Arc<UdfModule>>,
    reload: Option<Reload>,
    /// Open event-time windows, when the query reads one.
    windows: Option<WindowState>,
    /// The query cut at its aggregate, when windows fold their rows
    /// (`window/groups.rs`).
    stages: Option<Arc<Split>>,
    /// The windows stage of a repartitioned pipeline (`repartition.rs`):
    /// where its records came from.
    origin: Option<Origin>,
    /// The re-keying stage that feeds it, run alongside.
    feeder: Option<Box<Pipeline>>,
    /// Whether the state bound was reported since it was last reached.
    state_full_logged: bool,
}

/// Takes the `CREATE FUNCTION` statements off the front of the pipeline's
/// SQL (leaving the query in `config.sql`) and loads their modules under
/// `tenant`.
async fn inline_functions(
    mut config: PipelineConfig,
    sandbox: &Sandbox,
    tenant: &Arc<Tenant>,
) -> anyhow::Result<(PipelineConfig, Vec<Arc<UdfModule>>)> {
    let load = |label: &str, wasm: &[u8]| sandbox.load_for(label, wasm, tenant);
    let (functions, query) =
        crate::sql::split_functions(&config.sql, tenant.policy().sql_bounds(), &load)
            .await
            .map_err(|e| anyhow::anyhow!("sql: {}", crate::error::user_message(&e)))?;
    let mut modules = Vec::with_capacity(functions.len());
    for f in &functions {
        let module = sandbox
            .load_for(&f.label(), &f.wasm, tenant)
            .map_err(|e| anyhow::anyhow!("sql: CREATE FUNCTION {}: {e}", f.name))?;
        modules.push(module);
    }
    config.sql = query;
    Ok((config, modules))
}

/// How often a pipeline whose open windows fill `state_bytes` looks again.
const STATE_POLL: Duration = Duration::from_millis(200);

/// The modules a pipeline currently runs.
pub type SharedModules = Arc<parking_lot::RwLock<Vec<Arc<UdfModule>>>>;

/// Resolves a pipeline's UDFs again (e.g. `latest` from a registry).
pub type ModuleResolver = Arc<dyn Fn() -> anyhow::Result<Vec<Arc<UdfModule>>> + Send + Sync>;

/// Hot reload: when `changed` ticks, the pipeline resolves its UDFs again
/// and, if a version changed, re-plans its query before the next batch.
pub struct Reload {
    pub changed: watch::Receiver<u64>,
    pub resolve: ModuleResolver,
}

impl Pipeline {
    /// Loads the UDFs, plans the query and opens source and sinks. Errors
    /// name the pipeline.
    /// Like [`Pipeline::build_for`] with the default tenant policy.
    pub async fn build(config: PipelineConfig, sandbox: &Sandbox) -> anyhow::Result<Self> {
        Self::build_for(config, sandbox, &Tenants::default()).await
    }

    /// Builds the pipeline under its tenant's policy (from `tenants`).
    pub async fn build_for(
        config: PipelineConfig,
        sandbox: &Sandbox,
        tenants: &Tenants,
    ) -> anyhow::Result<Self> {
        let name = config.name.clone();
        Self::build_inner(config, sandbox, tenants)
            .await
            .with_context(|| format!("pipeline `{name}`"))
    }

    async fn build_inner(
        config: PipelineConfig,
        sandbox: &Sandbox,
        tenants: &Tenants,
    ) -> anyhow::Result<Self> {
        let tenant = tenants.get(&config.tenant);
        let mut modules = Vec::new();
        for path in &config.udfs {
            modules.push(sandbox.load_file_for(path, &tenant)?);
        }
        let (config, inline) = inline_functions(config, sandbox, &tenant).await?;
        Self::assemble_any(config, modules, inline, tenant, None).await
    }

    /// What the pipeline would run, without opening its source or sinks
    /// (`weir run --dry-run`): the query's output columns, and for a
    /// windowed query how its open windows keep state.
    pub async fn explain(
        config: PipelineConfig,
        sandbox: &Sandbox,
        tenants: &Tenants,
    ) -> anyhow::Result<String> {
        let name = config.name.clone();
        async {
            let tenant = tenants.get(&config.tenant);
            let mut modules = Vec::new();
            for path in &config.udfs {
                modules.push(sandbox.load_file_for(path, &tenant)?);
            }
            let (config, inline) = inline_functions(config, sandbox, &tenant).await?;
            modules.extend(inline);
            let decoder = config.source.decoder(config.file_roots.as_ref()).await?;
            let tables = {
                let policy = tenant.policy();
                Tables::open(
                    &config.name,
                    &config.tables,
                    (policy.state_bytes, &policy.key("state_bytes")),
                    config.file_roots.as_ref(),
                )
                .await?
            };
            let query = Self::plan(&config, &modules, decoder.schema(), &tenant, &tables).await?;
            let columns: Vec<String> = query
                .output_schema()
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect();
            let mut text = format!(
                "pipeline `{}`: output columns: {}",
                config.name,
                columns.join(", ")
            );
            if let Some(spec) = query.window() {
                let state = match folding(&query) {
                    Ok(_) => "each open window keeps its groups' running aggregates (the records are folded in as they arrive)".to_string(),
                    Err(why) => format!("each open window keeps its records until it closes, because {why}"),
                };
                let kind = match spec.kind {
                    crate::window::WindowKind::Tumble => "tumble",
                    crate::window::WindowKind::Hop => "hop",
                    crate::window::WindowKind::Session => "session",
                };
                text.push_str(&format!(
                    "\nwindow: {kind} over `{}`; {state}",
                    spec.time_column
                ));
            }
            Ok::<_, anyhow::Error>(text)
        }
        .await
        .with_context(|| format!("pipeline `{name}`"))
    }

    /// Builds a pipeline whose UDF modules were resolved by the caller (the
    /// registry of `weir serve`), optionally reloading them when told to.
    ///
    /// `CREATE FUNCTION` statements before the query are compiled in
    /// `sandbox` and loaded under the pipeline's tenant; they stay through
    /// reloads.
    pub async fn build_with_modules(
        config: PipelineConfig,
        sandbox: &Sandbox,
        modules: Vec<Arc<UdfModule>>,
        tenants: &Tenants,
        reload: Option<Reload>,
    ) -> anyhow::Result<Self> {
        let name = config.name.clone();
        let tenant = tenants.get(&config.tenant);
        async {
            let (config, inline) = inline_functions(config, sandbox, &tenant).await?;
            Self::assemble_any(config, modules, inline, tenant, reload).await
        }
        .await
        .with_context(|| format!("pipeline `{name}`"))
    }

    async fn plan(
        config: &PipelineConfig,
        modules: &[Arc<UdfModule>],
        schema: SchemaRef,
        tenant: &Tenant,
        tables: &Tables,
    ) -> anyhow::Result<PlannedQuery> {
        // Bounded by the tenant's `query_memory_bytes`, at plan time too.
        let policy = tenant.policy();
        let ctx = crate::sql::bounded_context(
            policy
                .sql_bounds()
                .install(crate::sql::session_config().with_target_partitions(1)),
            policy.query_memory_bytes,
            &policy.key("query_memory_bytes"),
        );
        let row_errors = Arc::new(crate::udf::RowErrorCollector::default());
        for module in modules {
            crate::udf::register_module_collecting(&ctx, module, &row_errors);
        }
        tables
            .register(&ctx)
            .map_err(|e| anyhow::anyhow!("tables: {}", crate::error::user_message(&e)))?;
        PlannedQuery::new(&ctx, schema, &config.sql)
            .await
            .map(|q| q.with_row_errors(row_errors))
            .map_err(|e| anyhow::anyhow!("sql: {}", crate::error::user_message(&e)))
    }

    /// The query planned once per worker.
    async fn plan_workers(
        config: &PipelineConfig,
        modules: &[Arc<UdfModule>],
        schema: SchemaRef,
        tenant: &Tenant,
        tables: &Tables,
        count: usize,
    ) -> anyhow::Result<Vec<Arc<PlannedQuery>>> {
        let mut queries = Vec::with_capacity(count);
        for _ in 0..count {
            queries.push(Arc::new(
                Self::plan(config, modules, schema.clone(), tenant, tables).await?,
            ));
        }
        Ok(queries)
    }

    /// [`Self::assemble`], or for a repartitioned pipeline its two stages
    /// (`repartition.rs`): the windows stage, with the re-keying one as its
    /// feeder.
    async fn assemble_any(
        config: PipelineConfig,
        modules: Vec<Arc<UdfModule>>,
        inline: Vec<Arc<UdfModule>>,
        tenant: Arc<Tenant>,
        reload: Option<Reload>,
    ) -> anyhow::Result<Self> {
        if !config.repartitions() {
            return Self::assemble(config, modules, inline, tenant, reload, None).await;
        }
        let decoder = config.source.decoder(config.file_roots.as_ref()).await?;
        let tables = {
            let policy = tenant.policy();
            Tables::open(
                &config.name,
                &config.tables,
                (policy.state_bytes, &policy.key("state_bytes")),
                config.file_roots.as_ref(),
            )
            .await?
        };
        let all = [modules.as_slice(), inline.as_slice()].concat();
        let query = Self::plan(&config, &all, decoder.schema(), &tenant, &tables).await?;
        if query
            .window()
            .is_some_and(|w| w.kind == crate::window::WindowKind::Session)
        {
            bail!(
                "`source.repartition` does not take session windows yet (a session merges as records arrive); run the pipeline in one process"
            );
        }
        let stages =
            crate::repartition::stages(&config, &decoder.schema(), query.key_sources()).await?;
        drop((query, tables));
        let feeder = Self::assemble(
            stages.rekey,
            Vec::new(),
            Vec::new(),
            tenant.clone(),
            None,
            None,
        )
        .await
        .context("the re-keying stage")?;
        let visible = stages.windows.source.decoder(None).await?.schema();
        let n = visible.fields().len() - 3;
        let origin = Origin {
            topic: stages.source_topic.clone(),
            partitions: stages.source_partitions,
            columns: n,
            visible: Arc::new(visible.project(&(0..n).collect::<Vec<_>>())?),
            owned: Default::default(),
        };
        let mut windows = Self::assemble(
            stages.windows,
            modules,
            inline,
            tenant,
            reload,
            Some(origin),
        )
        .await?;
        windows.feeder = Some(Box::new(feeder));
        Ok(windows)
    }

    async fn assemble(
        config: PipelineConfig,
        modules: Vec<Arc<UdfModule>>,
        inline: Vec<Arc<UdfModule>>,
        tenant: Arc<Tenant>,
        reload: Option<Reload>,
        origin: Option<Origin>,
    ) -> anyhow::Result<Self> {
        let decoder = config.source.decoder(config.file_roots.as_ref()).await?;
        let schema = origin
            .as_ref()
            .map_or_else(|| decoder.schema(), |o| o.visible.clone());
        let tables = {
            let policy = tenant.policy();
            Tables::open(
                &config.name,
                &config.tables,
                (policy.state_bytes, &policy.key("state_bytes")),
                config.file_roots.as_ref(),
            )
            .await?
        };
        let all = [modules.as_slice(), inline.as_slice()].concat();
        let query = Self::plan(&config, &all, schema.clone(), &tenant, &tables).await?;
        let key = match &config.sink {
            SinkConfig::Kafka { key, .. } => key.clone(),
            _ => None,
        };
        let (windows, stages) = match query.window() {
            Some(spec) => {
                let state = WindowState::new(spec.clone(), schema.clone(), &config.watermark)
                    .map_err(|e| anyhow::anyhow!("sql: {e}"))?;
                match folding(&query) {
                    Ok((split, aggregation)) => {
                        (Some(state.folding(aggregation)), Some(Arc::new(split)))
                    }
                    Err(why) => {
                        tracing::info!(pipeline = %config.name, "open windows keep their records: {why}");
                        (Some(state), None)
                    }
                }
            }
            None => (None, None),
        };
        // A window's result is keyed by its grouping columns (window start
        // included) unless `sink.key` says otherwise: a re-emitted window
        // replaces itself in a compacted topic.
        let group_key = match (&config.sink, &windows) {
            (SinkConfig::Kafka { key: None, .. }, Some(_)) => query.group_columns().to_vec(),
            _ => Vec::new(),
        };
        let mut encoder = RecordEncoder::new(config.sink.format(), key).with_key_columns(group_key);
        if let Some(avro) = config
            .sink
            .avro_out(&query.output_schema(), config.file_roots.as_ref())
            .await?
        {
            encoder = encoder.with_avro(avro);
        }
        encoder
            .check_schema(&query.output_schema())
            .map_err(anyhow::Error::msg)?;
        let worker_count = worker_count(&config, &tenant, windows.is_some());
        let workers = if worker_count > 1 {
            Some(Workers::new(
                Self::plan_workers(
                    &config,
                    &all,
                    schema.clone(),
                    &tenant,
                    &tables,
                    worker_count,
                )
                .await?,
            ))
        } else {
            None
        };
        if windows.is_some() && config.sink.exactly_once() {
            bail!(
                "sink.delivery = \"exactly-once\" is not available for windowed queries: a \
                 window re-emitted after a restart would be written twice; use \
                 \"at-least-once\" (window results are keyed, so a compacted topic keeps one)"
            );
        }
        let stats = Arc::new(PipelineStats::new(&config.tenant, &config.name));
        let txn = config
            .sink
            .open_transaction(&config.tenant, &config.name, stats.clone())
            .await?;
        let roots = config.file_roots.as_ref();
        let source = config.source.open(txn.as_ref(), roots).await?;
        let sink = config.sink.open(txn.as_ref(), roots).await?;
        let dead_letters = config.open_dead_letters(txn.as_ref()).await?;
        for m in &all {
            m.bind_metrics(&config.name);
        }
        Ok(Pipeline {
            inline,
            config,
            source,
            decoder,
            query,
            encoder: Arc::new(encoder),
            workers,
            tables,
            sink,
            dead_letters,
            txn,
            stats,
            tenant,
            modules: Arc::new(parking_lot::RwLock::new(modules)),
            reload,
            windows,
            stages,
            origin,
            feeder: None,
            state_full_logged: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The columns the query reads: the decoder's (less what a windows
    /// stage's records carry for it, `repartition.rs`).
    fn query_schema(&self) -> SchemaRef {
        self.origin
            .as_ref()
            .map_or_else(|| self.decoder.schema(), |o| o.visible.clone())
    }

    /// A windows stage (`repartition.rs`): drops the windows of internal
    /// partitions another member took (their keys' state is rebuilt there
    /// from the committed offsets); partitions gained start from their
    /// committed offsets, below every open window's records.
    fn follow_internal_partitions(&mut self) {
        let (Some(origin), Some(windows)) = (&mut self.origin, &mut self.windows) else {
            return;
        };
        let now: std::collections::BTreeSet<i32> = self
            .source
            .partitions()
            .iter()
            .filter_map(|tp| tp.rsplit('/').next()?.parse().ok())
            .collect();
        for gone in origin.owned.difference(&now) {
            tracing::info!(pipeline = %self.config.name, partition = gone, "internal partition revoked: its keys' windows are rebuilt by their new owner");
            windows.revoke(*gone);
        }
        origin.owned = now;
    }

    /// The owning tenant's name.
    pub fn tenant_name(&self) -> &str {
        &self.config.tenant
    }

    pub fn stats(&self) -> Arc<PipelineStats> {
        self.stats.clone()
    }

    /// The modules it runs (replaced when a reload swaps UDF versions).
    pub fn modules(&self) -> SharedModules {
        self.modules.clone()
    }

    /// Runs until the source ends or `shutdown` turns true; batches in
    /// flight are acknowledged and committed first.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        if let Some(feeder) = self.feeder.take() {
            // The re-keying stage runs beside the windows stage and stops
            // with it; either failing ends both.
            let (stop_feeder, feeder_stopped) = watch::channel(false);
            let mut fed = tokio::spawn(feeder.run_alone(feeder_stopped));
            let name = self.config.name.clone();
            let windows = self.run_alone(shutdown.clone());
            tokio::pin!(windows);
            let result = tokio::select! {
                r = &mut windows => r,
                f = &mut fed => {
                    let f = f.map_err(|e| anyhow::anyhow!("the re-keying stage of `{name}`: {e}"))
                        .and_then(|r| r.with_context(|| format!("the re-keying stage of `{name}`")));
                    match f {
                        // Its source ended (it does not: Kafka): run on.
                        Ok(()) => windows.await,
                        Err(e) => Err(e),
                    }
                }
            };
            let _ = stop_feeder.send(true);
            if !fed.is_finished() {
                let _ = fed.await;
            }
            return result;
        }
        self.run_alone(shutdown).await
    }

    /// The run loop of one pipeline (a stage of a repartitioned one).
    async fn run_alone(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        tracing::info!(pipeline = %self.config.name, tenant = %self.config.tenant, "pipeline started");
        let started = Instant::now();
        loop {
            let mut flight = self.in_flight();
            let result = self.run_batches(&mut flight, &mut shutdown, started).await;
            match result {
                Err(e) if self.txn.is_some() && crate::transaction::is_rewind(&e) => {
                    // Exactly-once: what was read since the last commit is
                    // dropped and read again by a new group member.
                    tracing::warn!(pipeline = %self.config.name, "{e:#}");
                    if let Some(workers) = &mut self.workers {
                        workers.clear();
                    }
                    drop(flight);
                    self.source = self
                        .config
                        .source
                        .open(self.txn.as_ref(), self.config.file_roots.as_ref())
                        .await
                        .with_context(|| format!("pipeline `{}`", self.config.name))?;
                }
                result => return self.stop(flight, result, started).await,
            }
        }
    }

    /// The in-flight window: one batch with an exactly-once sink (each
    /// batch is a transaction that commits before the next is sent).
    fn in_flight(&self) -> InFlight {
        let batches = if self.txn.is_some() {
            1
        } else {
            self.config
                .batch
                .max_in_flight_batches
                .min(self.tenant.policy().max_in_flight_batches)
        };
        InFlight::new(batches, self.config.batch.max_in_flight_bytes)
    }

    async fn stop(
        &mut self,
        mut flight: InFlight,
        result: anyhow::Result<()>,
        started: Instant,
    ) -> anyhow::Result<()> {
        // Whatever happened, what the sink acknowledged is committed.
        let drained = flight.drain(&mut *self.source).await;
        self.source.finish().await?;
        self.log_progress(started.elapsed());
        tracing::info!(pipeline = %self.config.name, "pipeline stopped");
        result
            .and(drained)
            .with_context(|| format!("pipeline `{}`", self.config.name))
    }

    async fn run_batches(
        &mut self,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
        started: Instant,
    ) -> anyhow::Result<()> {
        let linger = Duration::from_millis(self.config.batch.max_linger_ms);
        let max = self.config.batch.max_records;
        let mut last_log = Instant::now();
        let mut stall = StallWatch::new(self.config.source.stall_warn_ms());
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            flight.wait_for_room(&mut *self.source).await?;
            self.maybe_reload().await;
            self.refresh_tables().await;
            // An open breaker (with `breaker_action = "pause"`) holds the
            // source; once its cool-down passed, one record probes it.
            let hold = self.breaker_hold();
            if !matches!(hold, Hold::None)
                && !self.take_transformed(Take::All, flight, shutdown).await?
            {
                return Ok(());
            }
            let size = match hold {
                Hold::None => max,
                Hold::Probe => 1,
                Hold::Wait => {
                    if !self.wait_out_breaker(flight, shutdown).await? {
                        return Ok(());
                    }
                    stall.progress();
                    continue;
                }
            };
            let next = tokio::select! {
                next = self.source.next_batch(size, linger) => next?,
                _ = shutdown.changed() => return Ok(()),
            };
            self.check_partial_windows();
            let Some(records) = next else {
                // The source ended (a file): every open window is complete.
                if self.take_transformed(Take::All, flight, shutdown).await? {
                    self.emit_windows(true, flight, shutdown).await?;
                }
                return Ok(());
            };
            if records.is_empty() {
                if !self.take_transformed(Take::All, flight, shutdown).await? {
                    return Ok(());
                }
                self.check_stall(&mut stall);
                if self.windows.is_some() {
                    // A quiet partition may have gone idle: windows may close.
                    self.emit_windows(false, flight, shutdown).await?;
                }
            } else {
                stall.progress();
                self.clear_stall();
                if !self.process(records, flight, shutdown).await? {
                    return Ok(());
                }
            }
            if let Some(lag) = self.source.lag() {
                self.stats.lag.set(lag);
            }
            *self.stats.partitions.lock() = self.source.partitions();
            self.stats.paused.set(i64::from(flight.is_paused()));
            if last_log.elapsed() >= PROGRESS_EVERY {
                self.log_progress(started.elapsed());
                last_log = Instant::now();
            }
        }
    }

    /// Whether an open circuit breaker of one of the pipeline's UDFs holds
    /// the source (only with the tenant's `breaker_action = "pause"`).
    fn breaker_hold(&self) -> Hold {
        if self.tenant.policy().breaker_action != BreakerAction::Pause {
            return Hold::None;
        }
        let mut hold = Hold::None;
        for (module, i) in self.functions() {
            let Some(breaker) = module.breaker(i) else {
                continue;
            };
            match breaker.open_for(module.breaker_cooldown()) {
                Some(left) if !left.is_zero() => return Hold::Wait,
                Some(_) => hold = Hold::Probe,
                None if breaker.state() == BreakerState::HalfOpen => hold = Hold::Probe,
                None => {}
            }
        }
        hold
    }

    /// Whether no UDF's breaker counts a failure (the breakers of other
    /// pipelines' batches included).
    fn breakers_clean(&self) -> bool {
        self.functions()
            .iter()
            .all(|(m, i)| m.breaker(*i).is_none_or(|b| b.is_clean()))
    }

    /// Every function of every module: (module, index in its manifest).
    fn functions(&self) -> Vec<(Arc<UdfModule>, usize)> {
        let modules = self.modules.read().clone();
        modules
            .into_iter()
            .flat_map(|m| (0..m.manifest().functions.len()).map(move |i| (m.clone(), i)))
            .collect()
    }

    /// The open breaker that holds the pipeline longest: what to tell the
    /// user and how long is left.
    fn open_breaker(&self) -> Option<(String, Duration)> {
        let policy = self.tenant.policy();
        self.functions()
            .into_iter()
            .filter_map(|(m, i)| {
                let b = m.breaker(i)?;
                let left = b.open_for(m.breaker_cooldown())?;
                let udf = &m.manifest().functions[i].name;
                let message = format!(
                    "paused: the circuit breaker of udf `{udf}` ({}) of tenant `{}` is open ({}); \
                     a probe record runs after `breaker_cooldown_ms` = {} ms, or as soon as a new \
                     version is in effect; set `breaker_action = \"dead-letter\"` in the tenant policy \
                     to dead-letter records instead of pausing",
                    m.label(),
                    self.config.tenant,
                    b.reason().unwrap_or_else(|| "failing batches".to_string()),
                    policy.breaker_cooldown_ms,
                );
                Some((message, left))
            })
            .max_by_key(|(_, left)| *left)
    }

    /// Pauses the source until no breaker holds it (its cool-down passed or
    /// a new UDF version is in effect), keeping the consumer in its group
    /// and committing what the sinks acknowledge meanwhile. `false` if the
    /// pipeline was told to stop meanwhile.
    async fn wait_out_breaker(
        &mut self,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        let Some((message, _)) = self.open_breaker() else {
            return Ok(true);
        };
        tracing::warn!(pipeline = %self.config.name, "{message}");
        self.stats.breaker_paused.set(1);
        self.stats.set_condition(Some(message));
        self.source.pause().await?;
        let result: anyhow::Result<bool> = async {
            loop {
                let Some((_, left)) = self.open_breaker().filter(|(_, left)| !left.is_zero())
                else {
                    return Ok(true);
                };
                flight.commit_acknowledged(&mut *self.source).await?;
                self.source.keepalive().await?;
                tokio::select! {
                    _ = tokio::time::sleep(left.min(BREAKER_POLL)) => {}
                    _ = shutdown.changed() => return Ok(false),
                }
                if self.maybe_reload().await {
                    return Ok(true);
                }
            }
        }
        .await;
        self.source.resume().await?;
        self.stats.breaker_paused.set(0);
        self.stats.set_condition(None);
        if matches!(result, Ok(true)) {
            tracing::info!(pipeline = %self.config.name, "circuit breaker cool-down over or new UDF version: resuming with a probe");
        }
        result
    }

    /// Holds the batch while the sandbox or the tenant has no capacity for
    /// it (`attempt` from 1): the source paused, acknowledged batches
    /// committed, the consumer kept alive; waits 200 ms doubling up to 5 s.
    /// `false` when shut down meanwhile.
    async fn wait_for_capacity(
        &mut self,
        why: &str,
        attempt: u32,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        let wait = Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)))
            .min(Duration::from_secs(5));
        if attempt == 1 || attempt.is_power_of_two() {
            tracing::warn!(pipeline = %self.config.name, attempt, "no capacity for the batch, retrying it in {wait:?} (nothing is dead-lettered): {why}");
        }
        self.stats
            .set_condition(Some(format!("waiting for capacity: {why}")));
        self.source.pause().await?;
        flight.commit_acknowledged(&mut *self.source).await?;
        self.source.keepalive().await?;
        let go_on = tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = shutdown.changed() => false,
        };
        self.source.resume().await?;
        self.stats.set_condition(None);
        Ok(go_on)
    }

    /// No records arrived: warns (once per `source.stall_warn_ms`) when the
    /// source has had no partitions, or lag without progress, for that long;
    /// clears the stall when neither holds any more.
    fn check_stall(&self, stall: &mut StallWatch) {
        let Some(after) = stall.after else {
            return;
        };
        let assigned = self.source.assigned_partitions();
        if assigned == Some(0) {
            stall.unassigned_since.get_or_insert_with(Instant::now);
        } else {
            stall.unassigned_since = None;
        }
        let lag = self.source.lag().unwrap_or(0);
        let why = match (assigned, stall.unassigned_since) {
            (Some(0), Some(since)) if since.elapsed() >= after => format!(
                "no partitions assigned for {} s (expected only while the group has more members than partitions; otherwise check the broker's group coordinator)",
                since.elapsed().as_secs()
            ),
            (Some(n), _) if n > 0 && lag > 0 && stall.since.elapsed() >= after => format!(
                "consumer lag {lag} and no record received for {} s",
                stall.since.elapsed().as_secs()
            ),
            _ => {
                self.clear_stall();
                return;
            }
        };
        let message = match &self.config.source {
            SourceConfig::Kafka { group, topics, .. } => format!(
                "stalled: {why} (group `{group}`, topics {}); `source.stall_warn_ms` = {}",
                topics.join(", "),
                after.as_millis()
            ),
            SourceConfig::File { .. } | SourceConfig::Nexmark { .. } => {
                format!("stalled: {why}")
            }
        };
        if stall.warned_at.is_none_or(|t| t.elapsed() >= after) {
            tracing::warn!(pipeline = %self.config.name, "{message}");
            stall.warned_at = Some(Instant::now());
        }
        self.stats.stalled.set(1);
        self.stats.set_condition(Some(message));
    }

    /// A windowed pipeline must see every partition of its source: with
    /// some owned by other members of its group, each member's windows
    /// hold part of the records and their results are partial. Said loudly
    /// (log, `weir_pipeline_partial_windows`) for as long as it lasts.
    fn check_partial_windows(&self) {
        // A windows stage owns whole keys, whichever partitions it reads.
        if self.windows.is_none() || self.origin.is_some() {
            return;
        }
        let (Some(assigned), Some(known)) = (
            self.source.assigned_partitions(),
            self.source.known_partitions(),
        ) else {
            return;
        };
        let partial = assigned > 0 && assigned < known;
        if partial && self.stats.partial_windows.swap(1) == 0 {
            let group = match &self.config.source {
                SourceConfig::Kafka { group, .. } => group.as_str(),
                SourceConfig::File { .. } | SourceConfig::Nexmark { .. } => "",
            };
            tracing::error!(
                pipeline = %self.config.name,
                tenant = %self.config.tenant,
                "this windowed pipeline owns {assigned} of its source's {known} partitions: other members of group `{group}` read the rest, so every member's windows are partial; run it in one process (a `weir serve` cluster runs a windowed pipeline on one node)"
            );
        } else if !partial && assigned > 0 && self.stats.partial_windows.swap(0) == 1 {
            tracing::info!(pipeline = %self.config.name, "the windowed pipeline owns every partition again");
        }
    }

    fn clear_stall(&self) {
        if self.stats.stalled.swap(0) == 1 {
            self.stats.set_condition(None);
            tracing::info!(pipeline = %self.config.name, "no longer stalled");
        }
    }

    /// Between batches: if told that UDF versions may have changed, resolve
    /// them again and re-plan. A failure keeps the running versions. `true`
    /// when new versions are in effect.
    async fn maybe_reload(&mut self) -> bool {
        let Some(reload) = &mut self.reload else {
            return false;
        };
        if !reload.changed.has_changed().unwrap_or(false) {
            return false;
        }
        reload.changed.borrow_and_update();
        let modules = match (reload.resolve)() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(pipeline = %self.config.name, "UDF reload failed, keeping the running versions: {e:#}");
                return false;
            }
        };
        let current = self.modules.read().clone();
        let same = modules.len() == current.len()
            && modules
                .iter()
                .zip(&current)
                .all(|(a, b)| a.digest() == b.digest());
        if same {
            return false;
        }
        match self.replan(&modules).await {
            Ok(()) => {
                let labels: Vec<&str> = modules.iter().map(|m| m.label()).collect();
                tracing::info!(pipeline = %self.config.name, modules = ?labels, "new UDF versions in effect from this batch");
                for m in &modules {
                    m.bind_metrics(&self.config.name);
                }
                *self.modules.write() = modules;
                true
            }
            Err(e) => {
                tracing::warn!(pipeline = %self.config.name, "new UDF versions not applied, keeping the running ones: {e:#}");
                false
            }
        }
    }

    /// Plans the query (and every worker's) again with `modules` and the
    /// tables in force; the plans in force stay if that fails.
    async fn replan(&mut self, modules: &[Arc<UdfModule>]) -> anyhow::Result<()> {
        let modules = &[modules, self.inline.as_slice()].concat()[..];
        let query = Self::plan(
            &self.config,
            modules,
            self.query_schema(),
            &self.tenant,
            &self.tables,
        )
        .await?;
        if query.window() != self.query.window() {
            anyhow::bail!("the new versions change the query's window");
        }
        let stages = match &self.stages {
            Some(running) => {
                let (split, aggregation) = folding(&query).map_err(|why| {
                    anyhow::anyhow!("the open windows fold their rows, and with the new versions they could not: {why}")
                })?;
                if aggregation.output()
                    != datafusion::physical_plan::ExecutionPlan::schema(running.aggregate.as_ref())
                    || split.below.output_schema() != running.below.output_schema()
                {
                    anyhow::bail!("the new versions change the query's aggregate");
                }
                Some(Arc::new(split))
            }
            None => None,
        };
        self.encoder
            .check_schema(&query.output_schema())
            .map_err(anyhow::Error::msg)?;
        if let Some(count) = self.workers.as_ref().map(Workers::count) {
            let queries = Self::plan_workers(
                &self.config,
                modules,
                self.query_schema(),
                &self.tenant,
                &self.tables,
                count,
            )
            .await?;
            if let Some(w) = &mut self.workers {
                w.replace(queries);
            }
        }
        self.query = query;
        self.stages = stages;
        Ok(())
    }

    /// Between batches: takes new versions of the lookup tables (a file
    /// rewritten, values on a topic) and plans the query again with them.
    async fn refresh_tables(&mut self) {
        if self.tables.is_empty() {
            return;
        }
        let (limit, key) = {
            let policy = self.tenant.policy();
            (policy.state_bytes, policy.key("state_bytes"))
        };
        if !self.tables.refresh(&self.config.name, (limit, &key)).await {
            return;
        }
        let modules = self.modules.read().clone();
        if let Err(e) = self.replan(&modules).await {
            tracing::warn!(pipeline = %self.config.name, "new table versions not applied: {e:#}");
        }
    }

    /// One micro-batch's outcome per UDF for the circuit breakers: failing
    /// if the function itself failed on a row of it (trap, out of CPU, …),
    /// succeeding otherwise — row errors are the function working.
    /// Only functions the batch actually called count: a batch that never
    /// reached a UDF (all rows filtered out or undecodable) says nothing of
    /// it. `before` is [`Pipeline::calls_snapshot`] from before the batch.
    fn record_breakers(&self, failed: &[super::isolate::FailedRow], before: &[u64]) {
        let failing: std::collections::HashSet<&str> = failed
            .iter()
            .filter(|f| f.function_failure)
            .filter_map(|f| f.udf.as_deref())
            .collect();
        // Refused by an open breaker, or no capacity to run it: the
        // function did not run (its breaker learns nothing either way).
        let refused: std::collections::HashSet<&str> = failed
            .iter()
            .filter(|f| f.circuit_open || f.capacity)
            .filter_map(|f| f.udf.as_deref())
            .collect();
        let after = self.calls_snapshot();
        let modules = self.modules.read().clone();
        let functions = modules
            .iter()
            .flat_map(|m| m.manifest().functions.iter().map(move |f| (m, f)));
        for (i, (module, f)) in functions.enumerate() {
            let called = after.get(i) != before.get(i);
            let name = f.name.as_str();
            if refused.contains(name) {
                continue;
            }
            if failing.contains(name) {
                module.record_batch(name, false);
            } else if called {
                module.record_batch(name, true);
            }
        }
    }

    /// Calls so far per function of every module (guest calls, calls served
    /// by the cache and calls refused by an open breaker alike): a change
    /// means the batch reached the function.
    fn calls_snapshot(&self) -> Vec<u64> {
        self.functions()
            .into_iter()
            .map(|(m, i)| m.calls_made(i))
            .collect()
    }

    fn log_progress(&self, elapsed: Duration) {
        let s = &self.stats;
        let records_in = s.records_in.get();
        tracing::info!(
            pipeline = %self.config.name,
            records_in,
            records_out = s.records_out.get(),
            dead_letters = s.dead_letters.get(),
            skipped = s.skipped.get(),
            records_per_s = (records_in as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
            lag = self.source.lag(),
            "progress"
        );
    }

    /// Fetches the schemas `records` name (Avro with a registry). A
    /// registry that fails (unreachable, 5xx) is capacity, not poison: the
    /// batch waits and the fetch is tried again with backoff, the source
    /// paused, until it answers or the pipeline is told to stop (`false`).
    async fn prepare_decoder(
        &mut self,
        records: &[SourceRecord],
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        let mut backoff = Duration::from_millis(200);
        loop {
            let Err(e) = self.decoder.prepare(records).await else {
                return Ok(true);
            };
            tracing::warn!(pipeline = %self.config.name, tenant = %self.config.tenant, "{e:#}; trying again in {} ms", backoff.as_millis());
            crate::telemetry::counter(
                crate::telemetry::PIPELINE_REGISTRY_RETRIES,
                &vec![
                    ("tenant", self.config.tenant.clone()),
                    ("pipeline", self.config.name.clone()),
                ],
            )
            .increment(1);
            let stop = flight
                .guard(&mut *self.source, async {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => Ok(false),
                        _ = shutdown.changed() => Ok(true),
                    }
                })
                .await?;
            if stop {
                return Ok(false);
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// One micro-batch: decode, transform and encode (isolating poison
    /// rows), hand outputs and dead letters to their sinks; the batch joins
    /// the in-flight window until both acknowledge it. `false` if the
    /// pipeline was told to stop while a breaker held the batch (nothing of
    /// it was sent or committed).
    async fn process(
        &mut self,
        records: Vec<SourceRecord>,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        self.stats.records_in.add(records.len() as u64);
        self.stats.batches.add(1);
        // The tenant's rows/s quota: over it, wait (the source pauses if
        // the wait is long); nothing is dropped.
        let wait = self.tenant.throttle(records.len());
        if !wait.is_zero() {
            flight
                .guard(&mut *self.source, async {
                    tokio::time::sleep(wait).await;
                    Ok(())
                })
                .await?;
        }
        let offsets = next_offsets(&records);
        if !self.prepare_decoder(&records, flight, shutdown).await? {
            return Ok(false);
        }
        let decoded = self.decoder.decode(&records)?;
        let mut letters: Vec<DeadLetter> = decoded
            .failed
            .iter()
            .map(|(i, error)| DeadLetter {
                record: records[*i].clone(),
                stage: "decode",
                error: error.clone(),
                udf: None,
            })
            .collect();
        if self.origin.is_some() {
            self.follow_internal_partitions();
        }
        if let Some(windows) = &mut self.windows {
            let rows: Vec<&SourceRecord> = decoded.rows.iter().map(|&i| &records[i]).collect();
            let origins = match &self.origin {
                Some(o) => Some(o.split(&decoded.batch)?),
                None => None,
            };
            let batch = match &origins {
                Some((visible, _)) => visible,
                None => &decoded.batch,
            };
            match &self.origin {
                Some(o) => windows.expect_sources(o.partitions, Instant::now()),
                None => {
                    windows.expect_partitions(self.source.assigned_partitions(), Instant::now())
                }
            }
            if let Some(marks) = self.source.take_committed_marks() {
                windows.restore(&marks, self.origin.is_some(), Instant::now());
            }
            let mut admitted = windows
                .admit(
                    batch,
                    &rows,
                    origins.as_ref().map(|(_, o)| o),
                    Instant::now(),
                )
                .map_err(|e| anyhow::anyhow!("windows: {e}"))?;
            drop(rows);
            self.stats.late.add(admitted.late.len() as u64);
            for (stage, list) in [
                ("late", std::mem::take(&mut admitted.late)),
                ("event_time", std::mem::take(&mut admitted.untimed)),
            ] {
                letters.extend(list.into_iter().map(|(row, error)| DeadLetter {
                    record: records[decoded.rows[row]].clone(),
                    stage,
                    error,
                    udf: None,
                }));
            }
            for windowed in std::mem::take(&mut admitted.windowed) {
                // The query's stage before its aggregate, poison rows set
                // aside before anything of the batch is folded.
                let stash = parking_lot::Mutex::new(Vec::new());
                let Some(isolated) = self
                    .transform_as(&windowed.batch, Stage::Fold(&stash), flight, shutdown)
                    .await?
                else {
                    return Ok(false);
                };
                let mut seen = std::collections::HashSet::new();
                for f in isolated.failed {
                    let row = decoded.rows[windowed.rows[f.row]];
                    // A row in several (hopping) windows fails once.
                    if seen.insert(row) {
                        letters.push(DeadLetter {
                            record: records[row].clone(),
                            stage: f.stage,
                            error: f.error,
                            udf: f.udf,
                        });
                    }
                }
                if let Some(windows) = &mut self.windows {
                    windows
                        .fold(&windowed.tag, &stash.into_inner())
                        .map_err(|e| anyhow::anyhow!("windows: {e}"))?;
                }
            }
            drop(records);
            return self
                .emit_and_deliver(false, letters, offsets, flight, shutdown)
                .await;
        }
        // With workers: wait for a free one, then hand the batch over and
        // deliver whatever is already done, in order. While a UDF's breaker
        // counts failures, batches run one at a time (so that no more
        // batches fail than the breaker lets through).
        if self.workers.is_some() {
            let take = if self.breakers_clean() {
                Take::UntilRoom
            } else {
                Take::All
            };
            if !self.take_transformed(take, flight, shutdown).await? {
                return Ok(false);
            }
            if !self.breakers_clean() && !self.take_transformed(Take::All, flight, shutdown).await?
            {
                return Ok(false);
            }
        }
        if self.workers.is_some() && self.breakers_clean() {
            // A partial batch: the source has caught up; deliver it now
            // rather than when the next batch arrives.
            let take = if records.len() < self.config.batch.max_records {
                Take::All
            } else {
                Take::Done
            };
            let job = Transforming::new(
                decoded.batch,
                records,
                decoded.rows,
                letters,
                offsets,
                self.calls_snapshot(),
            );
            let encoding = Encoding {
                encoder: self.encoder.clone(),
                limit: self.sink.max_record_bytes(),
            };
            if let Some(workers) = &mut self.workers {
                workers.start(job, encoding);
            }
            return self.take_transformed(take, flight, shutdown).await;
        }
        let Some(isolated) = self
            .transform(&decoded.batch, false, flight, shutdown)
            .await?
        else {
            return Ok(false);
        };
        letters.extend(failed_letters(isolated.failed, &records, &decoded.rows));
        drop(records);
        self.deliver(isolated.outputs, letters, offsets, flight)
            .await
    }

    /// Delivers batches the workers transformed, oldest first: every one
    /// ([`Take::All`]), until a worker is free, or those already done.
    /// `false` if the pipeline was told to stop meanwhile.
    async fn take_transformed(
        &mut self,
        take: Take,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        loop {
            let Some(workers) = &mut self.workers else {
                return Ok(true);
            };
            let wait = match take {
                Take::All => true,
                Take::UntilRoom => workers.is_full(),
                Take::Done => false,
            };
            if !wait && !workers.front_is_done() {
                return Ok(true);
            }
            let Some(taken) = workers.take().await else {
                return Ok(true);
            };
            let (job, isolated) = taken?;
            self.record_breakers(&isolated.failed, &job.calls_before);
            // No capacity, or a breaker that holds the pipeline opened
            // under it: run it again here, in order, with the waits and
            // retries of a batch of the pipeline's own loop.
            let rerun = isolated.failed.iter().any(|f| f.capacity)
                || (self.tenant.policy().breaker_action == BreakerAction::Pause
                    && isolated.failed.iter().any(|f| f.circuit_open));
            let isolated = if rerun {
                match self.transform(&job.batch, false, flight, shutdown).await? {
                    Some(isolated) => isolated,
                    None => return Ok(false),
                }
            } else {
                isolated
            };
            let mut letters = job.letters;
            letters.extend(failed_letters(isolated.failed, &job.records, &job.rows));
            drop(job.records);
            if !self
                .deliver(isolated.outputs, letters, job.offsets, flight)
                .await?
            {
                return Ok(false);
            }
        }
    }

    /// Runs `batch` through the query, poison rows set aside (`whole`: as
    /// the records of whole windows, see `run_whole`), until no row failed
    /// for want of capacity or an open breaker that holds the pipeline.
    /// `None` if the pipeline was told to stop meanwhile (nothing was sent).
    async fn transform(
        &mut self,
        batch: &datafusion::arrow::array::RecordBatch,
        whole: bool,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<super::isolate::Isolated>> {
        let stage = if whole { Stage::Whole } else { Stage::Rows };
        self.transform_as(batch, stage, flight, shutdown).await
    }

    /// [`Self::transform`] through the query, or one of its stages around
    /// the aggregate of folding windows.
    async fn transform_as(
        &mut self,
        batch: &datafusion::arrow::array::RecordBatch,
        stage: Stage<'_>,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<super::isolate::Isolated>> {
        let mut capacity_waits = 0u32;
        let stages = self.stages.clone();
        let split = || {
            stages
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("internal: the query is not cut at its aggregate"))
        };
        loop {
            let before = self.calls_snapshot();
            let isolated = {
                let encoder = &self.encoder;
                let limit = self.sink.max_record_bytes();
                let finish = move |batches: &[datafusion::arrow::array::RecordBatch]| {
                    encode_checked(encoder, limit.as_ref(), batches)
                };
                match stage {
                    Stage::Rows => run_isolating(&self.query, batch.clone(), &finish).await,
                    Stage::Whole => {
                        super::isolate::run_whole(&self.query, batch.clone(), &finish).await
                    }
                    Stage::Fold(stash) => {
                        // Outputs of an attempt that waited for capacity
                        // are not kept: it runs again whole.
                        stash.lock().clear();
                        let keep = |batches: &[datafusion::arrow::array::RecordBatch]| {
                            stash.lock().extend(batches.iter().cloned());
                            Ok(Vec::new())
                        };
                        run_isolating(&split()?.below, batch.clone(), &keep).await
                    }
                    Stage::Emit => {
                        super::isolate::run_whole(&split()?.above, batch.clone(), &finish).await
                    }
                }
            };
            self.record_breakers(&isolated.failed, &before);
            if let Some(short) = isolated
                .failed
                .iter()
                .find(|f| f.capacity)
                .filter(|_| capacity_waits < MAX_CAPACITY_WAITS)
            {
                // No instance slot, or the tenant's memory total held by its
                // other instances: load, not bad records. Nothing of the
                // batch was sent; it runs again after a pause.
                capacity_waits += 1;
                if !self
                    .wait_for_capacity(&short.error, capacity_waits, flight, shutdown)
                    .await?
                {
                    return Ok(None);
                }
                continue;
            }
            // A breaker opened under the batch (another pipeline of the
            // same UDF version tripped it): with `breaker_action = "pause"`
            // the batch waits and runs again; nothing of it was sent.
            let held = self.tenant.policy().breaker_action == BreakerAction::Pause
                && isolated.failed.iter().any(|f| f.circuit_open);
            if !held {
                return Ok(Some(isolated));
            }
            if !self.wait_out_breaker(flight, shutdown).await? {
                return Ok(None);
            }
        }
    }

    /// Emits the windows the watermark passed (every open one with
    /// `flush`), then holds the source while the open windows exceed the
    /// tenant's `state_bytes`.
    async fn emit_windows(
        &mut self,
        flush: bool,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        self.emit_and_deliver(
            flush,
            Vec::new(),
            super::record::Offsets::new(),
            flight,
            shutdown,
        )
        .await
    }

    async fn emit_and_deliver(
        &mut self,
        flush: bool,
        letters: Vec<DeadLetter>,
        offsets: super::record::Offsets,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        if !self
            .emit_closed(flush, letters, offsets, flight, shutdown)
            .await?
        {
            return Ok(false);
        }
        self.hold_for_state(flight, shutdown).await
    }

    /// Runs the query once over the windows the watermark passed and
    /// delivers their results with `letters`; commits stop below the oldest
    /// record still in an open window.
    async fn emit_closed(
        &mut self,
        flush: bool,
        mut letters: Vec<DeadLetter>,
        offsets: super::record::Offsets,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        if self.origin.is_some() {
            self.follow_internal_partitions();
        }
        let Some(windows) = self.windows.as_mut() else {
            return self.deliver(Vec::new(), letters, offsets, flight).await;
        };
        match &self.origin {
            Some(o) => windows.expect_sources(o.partitions, Instant::now()),
            None => windows.expect_partitions(self.source.assigned_partitions(), Instant::now()),
        }
        windows.tick(Instant::now());
        let closed = windows
            .take_closed(flush)
            .map_err(|e| anyhow::anyhow!("windows: {e}"))?;
        if closed.is_none() && letters.is_empty() && offsets.is_empty() {
            self.window_gauges();
            return Ok(true);
        }
        let mut out = Vec::new();
        if let Some(closed) = closed {
            let stage = if closed.aggregated {
                Stage::Emit
            } else {
                Stage::Whole
            };
            let Some(isolated) = self
                .transform_as(&closed.batch, stage, flight, shutdown)
                .await?
            else {
                // Nothing was sent; after a shutdown meanwhile nothing past
                // the open windows was committed either: they are rebuilt
                // by replay.
                return Ok(false);
            };
            self.stats.windows_emitted.add(closed.windows as u64);
            letters.extend(isolated.failed.into_iter().map(|f| DeadLetter {
                record: closed.records[f.row].clone(),
                stage: f.stage,
                error: f.error,
                udf: f.udf,
            }));
            out = isolated.outputs;
        }
        let offsets = match &self.windows {
            Some(w) => w.commit_floor(offsets),
            None => offsets,
        };
        self.window_gauges();
        self.deliver(out, letters, offsets, flight).await
    }

    fn window_gauges(&self) {
        if let Some(w) = &self.windows {
            self.stats.open_windows.set(w.open_windows() as i64);
            self.stats.window_state_bytes.set(w.bytes() as i64);
            if w.watermark() != i64::MIN {
                self.stats
                    .watermark
                    .set(w.watermark().div_euclid(1_000_000));
            }
        }
    }

    /// While the open windows hold more than the tenant's `state_bytes`:
    /// pauses the source (backpressure, nothing dropped), says why, and
    /// emits windows as the watermark moves (a partition going idle).
    async fn hold_for_state(
        &mut self,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        // Lookup tables take their share of `state_bytes` first.
        let limit = (self.tenant.policy().state_bytes as usize).saturating_sub(self.tables.bytes());
        let over = |p: &Self| p.windows.as_ref().is_some_and(|w| w.bytes() > limit);
        if !over(self) {
            self.state_full_logged = false;
            return Ok(true);
        }
        let message = format!(
            "paused: the open windows hold {} bytes of state, over `{}` = {limit}; the source resumes as windows close (raise the key, use shorter windows or a smaller `watermark.max_out_of_order_ms`)",
            self.windows.as_ref().map_or(0, |w| w.bytes()),
            self.tenant.policy().key("state_bytes"),
        );
        if !self.state_full_logged {
            tracing::warn!(pipeline = %self.config.name, "{message}");
            self.state_full_logged = true;
        }
        self.stats.set_condition(Some(message));
        self.source.pause().await?;
        let result = async {
            while over(self) {
                flight.commit_acknowledged(&mut *self.source).await?;
                self.source.keepalive().await?;
                tokio::select! {
                    _ = tokio::time::sleep(STATE_POLL) => {}
                    _ = shutdown.changed() => return Ok(false),
                }
                if !self
                    .emit_closed(
                        false,
                        Vec::new(),
                        super::record::Offsets::new(),
                        flight,
                        shutdown,
                    )
                    .await?
                {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        .await;
        self.source.resume().await?;
        self.stats.set_condition(None);
        result
    }

    /// Hands outputs and dead letters to their sinks; the batch joins the
    /// in-flight window with `offsets` until both acknowledge it.
    async fn deliver(
        &mut self,
        out: Vec<super::record::SinkRecord>,
        letters: Vec<DeadLetter>,
        offsets: super::record::Offsets,
        flight: &mut InFlight,
    ) -> anyhow::Result<bool> {
        if let Some(first) = letters.first()
            && self.config.errors.policy == ErrorPolicy::Fail
        {
            bail!(
                "record at {} partition {} offset {} failed to {}: {} (errors.policy = \"fail\")",
                first.record.topic,
                first.record.partition,
                first.record.offset,
                first.stage,
                first.error
            );
        }
        self.stats.records_out.add(out.len() as u64);
        let mut bytes: usize = out.iter().map(|r| r.payload.len()).sum();
        let sent = self.sink.send(out);
        let ack = flight
            .guard(&mut *self.source, sent)
            .await
            .context("sink")?;
        let ack = if letters.is_empty() {
            ack
        } else {
            match (&self.config.errors.policy, &self.dead_letters) {
                (ErrorPolicy::DeadLetter, Some(dlq)) => {
                    self.stats.dead_letters.add(letters.len() as u64);
                    bytes += letters
                        .iter()
                        .map(|l| l.record.payload_len())
                        .sum::<usize>();
                    let sent = dlq.send(&self.config.name, letters);
                    let dlq_ack = flight
                        .guard(&mut *self.source, sent)
                        .await
                        .context("dead-letter sink")?;
                    Box::pin(async move {
                        let (sink, dlq) = futures::join!(ack, dlq_ack);
                        sink.context("sink")?;
                        dlq.context("dead-letter sink")
                    })
                }
                _ => {
                    self.stats.skipped.add(letters.len() as u64);
                    ack
                }
            }
        };
        // A windowed pipeline commits its watermark with the offsets: after
        // a restart, the windows it passed are not emitted again.
        let marks = match &self.windows {
            Some(w) => w.marks(&offsets, self.origin.is_some()),
            None => Default::default(),
        };
        flight.push_marked(ack, offsets, marks, bytes);
        Ok(true)
    }
}

/// Which transformed batches [`Pipeline::take_transformed`] delivers.
#[derive(Clone, Copy)]
enum Take {
    All,
    UntilRoom,
    Done,
}

/// Dead letters of the rows a transform set aside (`rows`: the record of
/// each row of the batch).
fn failed_letters(
    failed: Vec<super::isolate::FailedRow>,
    records: &[SourceRecord],
    rows: &[usize],
) -> impl Iterator<Item = DeadLetter> {
    failed.into_iter().map(move |f| DeadLetter {
        record: records[rows[f.row]].clone(),
        stage: f.stage,
        error: f.error,
        udf: f.udf,
    })
}

/// A windows stage's records carry the key and the source partition and
/// offset of each record after its columns (`repartition.rs`).
struct Origin {
    topic: Arc<str>,
    /// Partitions of the source topic.
    partitions: usize,
    /// The query's columns: the first `columns` of the decoded batch.
    columns: usize,
    visible: SchemaRef,
    /// The internal partitions this member owned at the last batch.
    owned: std::collections::BTreeSet<i32>,
}

impl Origin {
    /// The query's columns of `batch`, and where each row came from.
    fn split(
        &self,
        batch: &datafusion::arrow::array::RecordBatch,
    ) -> anyhow::Result<(
        datafusion::arrow::array::RecordBatch,
        super::window::Origins,
    )> {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::{Int32Type, Int64Type};
        let column = |i: usize| {
            batch
                .columns()
                .get(i)
                .ok_or_else(|| anyhow::anyhow!("internal: a re-keyed record lacks its origin"))
        };
        let partitions = column(self.columns + 1)?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| anyhow::anyhow!("internal: the origin partition is not an int32"))?;
        let offsets = column(self.columns + 2)?
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| anyhow::anyhow!("internal: the origin offset is not an int64"))?;
        let visible = batch.project(&(0..self.columns).collect::<Vec<_>>())?;
        let visible = datafusion::arrow::array::RecordBatch::try_new(
            self.visible.clone(),
            visible.columns().to_vec(),
        )?;
        Ok((
            visible,
            super::window::Origins {
                topic: self.topic.clone(),
                partitions: partitions.values().to_vec(),
                offsets: offsets.values().to_vec(),
                owned: self.owned.clone(),
            },
        ))
    }
}

/// How a batch goes through the query ([`Pipeline::transform_as`]).
#[derive(Clone, Copy)]
enum Stage<'a> {
    /// Row by row, poison rows set aside.
    Rows,
    /// The records of whole windows (`isolate::run_whole`).
    Whole,
    /// Folding windows: the stage before the aggregate, row by row; its
    /// output is kept in the stash.
    Fold(&'a parking_lot::Mutex<Vec<datafusion::arrow::array::RecordBatch>>),
    /// Folding windows: the stage after the aggregate, over the
    /// aggregate's output rows of whole windows.
    Emit,
}

/// The query cut at its aggregate and the aggregation its windows fold
/// into, or why its windows keep their records.
fn folding(query: &PlannedQuery) -> Result<(Split, super::window::groups::Aggregation), String> {
    let Some(spec) = query.window() else {
        return Err("the query reads no window".into());
    };
    let aggregate = query.aggregate()?;
    let is_guest = |a: &datafusion::physical_expr::aggregate::AggregateFunctionExpr| {
        a.fun().inner().is::<crate::udf::WasmAggregateUdf>()
    };
    let aggregation = super::window::groups::Aggregation::new(&aggregate, spec, &is_guest)?;
    let split = query.split_at(aggregate, aggregation.feed())?;
    Ok((split, aggregation))
}

/// Workers in force: `batch.workers` (0: one per core), at most the
/// tenant's `max_concurrent_calls` and the in-flight bound; one for a
/// windowed query (a window is computed once, over all its records).
fn worker_count(config: &PipelineConfig, tenant: &Tenant, windowed: bool) -> usize {
    if windowed {
        return 1;
    }
    let policy = tenant.policy();
    let wanted = match config.batch.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    wanted
        .min(policy.max_concurrent_calls.max(1) as usize)
        .min(
            config
                .batch
                .max_in_flight_batches
                .min(policy.max_in_flight_batches),
        )
        .max(1)
}

/// What an open circuit breaker asks of the pipeline before the next batch.
enum Hold {
    None,
    /// The cool-down passed: run one record as the probe.
    Probe,
    /// Still cooling down: keep the source paused.
    Wait,
}

/// When records last arrived, since when no partition is assigned, and
/// when a stall was last reported.
struct StallWatch {
    after: Option<Duration>,
    since: Instant,
    unassigned_since: Option<Instant>,
    warned_at: Option<Instant>,
}

impl StallWatch {
    fn new(after_ms: u64) -> Self {
        StallWatch {
            after: (after_ms > 0).then(|| Duration::from_millis(after_ms)),
            since: Instant::now(),
            unassigned_since: None,
            warned_at: None,
        }
    }

    fn progress(&mut self) {
        self.since = Instant::now();
        self.warned_at = None;
    }
}

/// Encodes a query's output for the sink; a record the sink cannot take
/// (too large for it) fails the run, so that isolation finds its row.
pub(crate) fn encode_checked(
    encoder: &RecordEncoder,
    limit: Option<&RecordLimit>,
    batches: &[datafusion::arrow::array::RecordBatch],
) -> Result<Vec<super::record::SinkRecord>, String> {
    let mut out = Vec::new();
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        out.extend(
            encoder
                .encode(batch)
                .map_err(|e| format!("the output cannot be encoded: {e}"))?,
        );
    }
    if let Some(limit) = limit
        && let Some(r) = out.iter().find(|r| r.size() > limit.bytes)
    {
        return Err(format!(
            "the output record is {} bytes, over the sink's limit of {} bytes; raise {} (and the topic's `max.message.bytes`) or make the output smaller",
            r.size(),
            limit.bytes,
            limit.key
        ));
    }
    Ok(out)
}

/// Loads a pipeline file, or every `*.toml` in a folder; with `infer`, a
/// json or csv source may leave `fields` out (see [`crate::infer`]).
pub fn load_pipelines(path: &std::path::Path, infer: bool) -> anyhow::Result<Vec<PipelineConfig>> {
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        bail!("no pipeline files (*.toml) in {}", path.display());
    }
    files
        .iter()
        .map(|f| {
            if infer {
                PipelineConfig::from_file_to_infer(f)
            } else {
                PipelineConfig::from_file(f)
            }
            .map_err(anyhow::Error::from)
        })
        .collect()
}
