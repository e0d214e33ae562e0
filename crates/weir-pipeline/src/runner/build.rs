//! Building a pipeline: its UDFs, decoder, tables, the planned query, its
//! windows (and a repartitioned one's two stages), sinks and source.

use super::*;

impl Pipeline {
    /// Like [`Pipeline::build_for`] with the default tenant policy.
    ///
    /// # Errors
    /// As [`Pipeline::build_for`].
    pub async fn build(config: PipelineConfig, sandbox: &Sandbox) -> Result<Self, PipelineError> {
        Self::build_for(config, sandbox, &Tenants::default()).await
    }

    /// Loads the UDFs, plans the query and opens source and sinks, under
    /// the pipeline's tenant's policy (from `tenants`).
    ///
    /// # Errors
    /// [`PipelineError::Invalid`] when the pipeline as written cannot run
    /// (a module, the query, a resource its tenant may not use);
    /// [`PipelineError::Unavailable`] when a service it names did not
    /// answer (a schema registry). The text names the pipeline.
    pub async fn build_for(
        config: PipelineConfig,
        sandbox: &Sandbox,
        tenants: &Tenants,
    ) -> Result<Self, PipelineError> {
        let name = config.name.clone();
        Self::build_inner(config, sandbox, tenants)
            .await
            .with_context(|| format!("pipeline `{name}`"))
            .map_err(PipelineError::building)
    }

    pub(super) async fn build_inner(
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
    ///
    /// # Errors
    /// As [`Pipeline::build_for`].
    pub async fn explain(
        config: PipelineConfig,
        sandbox: &Sandbox,
        tenants: &Tenants,
    ) -> Result<String, PipelineError> {
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
            let tables = open_tables(&config, &tenant).await?;
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
                let recovery = match (&folding(&query), crate::changelog::topic(&config)) {
                    (Ok(_), Some(topic)) if config.state.checkpoint_ms > 0 => format!(
                        "checkpointed every {} ms to `{topic}`: a restart reads the last checkpoint, then the records after it",
                        config.state.checkpoint_ms
                    ),
                    (_, Some(_)) => "after a restart the open windows are rebuilt by replaying their records".to_string(),
                    (_, None) => "a file is read from its start on every run".to_string(),
                };
                text.push_str(&format!(
                    "\nwindow: {kind} over `{}`; {state}\nrecovery: {recovery}",
                    spec.time_column
                ));
            }
            if let Some(join) = query.join() {
                let us = |v: i64| format!("{} ms", v / 1000);
                text.push_str(&format!(
                    "
join: the stream with itself over `{}`, pairing rows whose times differ by {} to {}; each row is kept until the watermark is {} past it (plus `watermark.allowed_lateness_ms`)
recovery: after a restart the kept rows are rebuilt by replaying their records; pairs among them are emitted again",
                    join.time_column,
                    us(join.lower_us),
                    us(join.upper_us),
                    us(join.reach_us()),
                ));
            }
            Ok::<_, anyhow::Error>(text)
        }
        .await
        .with_context(|| format!("pipeline `{name}`"))
        .map_err(PipelineError::building)
    }

    /// Builds a pipeline whose UDF modules were resolved by the caller (the
    /// registry of `weir serve`), optionally reloading them when told to.
    ///
    /// `CREATE FUNCTION` statements before the query are compiled in
    /// `sandbox` and loaded under the pipeline's tenant; they stay through
    /// reloads.
    ///
    /// # Errors
    /// As [`Pipeline::build_for`].
    pub async fn build_with_modules(
        config: PipelineConfig,
        sandbox: &Sandbox,
        modules: Vec<Arc<UdfModule>>,
        tenants: &Tenants,
        reload: Option<Reload>,
    ) -> Result<Self, PipelineError> {
        let name = config.name.clone();
        let tenant = tenants.get(&config.tenant);
        async {
            let (config, inline) = inline_functions(config, sandbox, &tenant).await?;
            Self::assemble_any(config, modules, inline, tenant, reload).await
        }
        .await
        .with_context(|| format!("pipeline `{name}`"))
        .map_err(PipelineError::building)
    }

    pub(super) async fn plan(
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
    pub(super) async fn plan_workers(
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
    pub(super) async fn assemble_any(
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
        let tables = open_tables(&config, &tenant).await?;
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
        let time = query
            .window()
            .map(|w| w.time_column.clone())
            .or_else(|| query.join().map(|j| j.time_column.clone()));
        // Only the columns the query reads cross the internal topic (with
        // the event time and the keys, which a window reads implicitly).
        let schema = decoder.schema();
        let carried = match query.source_columns() {
            Some(mut used) => {
                used.extend(time.iter().cloned());
                used.extend(query.key_sources().iter().cloned());
                let indices: Vec<usize> = (0..schema.fields().len())
                    .filter(|&i| used.contains(schema.field(i).name()))
                    .collect();
                Arc::new(schema.project(&indices)?)
            }
            None => schema,
        };
        let stages = crate::repartition::stages(&config, &carried, query.key_sources()).await?;
        drop((query, tables));
        let mut feeder = Self::assemble(
            stages.rekey,
            Vec::new(),
            Vec::new(),
            tenant.clone(),
            None,
            None,
        )
        .await
        .context("the re-keying stage")?;
        if let Some(time) = time {
            let marks = crate::repartition::Marks::new(
                &feeder.query.output_schema(),
                &time,
                stages.source_partitions,
            )?;
            Arc::get_mut(&mut feeder.encoder)
                .context("internal: the re-keying stage's encoder is shared")?
                .set_marks(marks);
        }
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

    pub(super) async fn assemble(
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
        let tables = open_tables(&config, &tenant).await?;
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
        let joins = match query.join() {
            Some(spec) => Some(
                crate::join::JoinState::new(spec.clone(), &schema, &config.watermark)
                    .map_err(|e| anyhow::anyhow!("sql: {e}"))?,
            ),
            None => None,
        };
        let worker_count = worker_count(&config, &tenant, windows.is_some() || joins.is_some());
        let workers = if worker_count > 1 {
            Some(Workers::new(
                tenant.clone(),
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
        if joins.is_some() && config.sink.exactly_once() {
            bail!(
                "sink.delivery = \"exactly-once\" is not available for a join of the stream \
                 with itself: its kept rows are rebuilt by replay after a restart, and pairs \
                 among them would be written twice; use \"at-least-once\""
            );
        }
        let folds = windows.as_ref().is_some_and(WindowState::folds);
        let changelog = match &config.source {
            crate::config::SourceConfig::Kafka { .. }
                if folds && config.state.checkpoint_ms > 0 =>
            {
                let partitions = origin.as_ref().map_or(1, |o| o.partitions);
                let changelog = crate::changelog::Changelog::open(&config, partitions)
                    .await
                    .context("the window state's changelog (`[state] checkpoint_ms = 0` runs without one)")?;
                Some(Checkpoints {
                    changelog,
                    pending: None,
                    last: std::time::Instant::now(),
                    every: Duration::from_millis(config.state.checkpoint_ms),
                    changes: u64::MAX,
                })
            }
            _ => None,
        };
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
            joins,
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
            changelog,
        })
    }
}

/// Takes the `CREATE FUNCTION` statements off the front of the pipeline's
/// SQL (leaving the query in `config.sql`) and loads their modules under
/// `tenant`.
pub(super) async fn inline_functions(
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

/// The query cut at its aggregate and the aggregation its windows fold
/// into, or why its windows keep their records.
pub(super) fn folding(
    query: &PlannedQuery,
) -> Result<(Split, crate::window::groups::Aggregation), String> {
    let Some(spec) = query.window() else {
        return Err("the query reads no window".into());
    };
    let aggregate = query.aggregate()?;
    let is_guest = |a: &datafusion::physical_expr::aggregate::AggregateFunctionExpr| {
        a.fun().inner().is::<crate::udf::WasmAggregateUdf>()
    };
    let aggregation = crate::window::groups::Aggregation::new(&aggregate, spec, &is_guest)?;
    let split = query.split_at(aggregate, aggregation.feed())?;
    Ok((split, aggregation))
}

/// Workers in force: `batch.workers` (0: one per core), at most the
/// tenant's `max_concurrent_calls` and the in-flight bound; one for a
/// windowed query (a window is computed once, over all its records).
pub(super) fn worker_count(config: &PipelineConfig, tenant: &Tenant, windowed: bool) -> usize {
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

/// The lookup tables `config` names, bounded by the tenant's `state_bytes`.
async fn open_tables(config: &PipelineConfig, tenant: &Tenant) -> anyhow::Result<Tables> {
    let policy = tenant.policy();
    Tables::open(
        &config.name,
        &config.tables,
        (policy.state_bytes, &policy.key("state_bytes")),
        config.file_roots.as_ref(),
    )
    .await
}
