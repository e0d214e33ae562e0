//! A running pipeline: the loop that moves micro-batches from the source
//! through the query to the sink, and commits what was acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use datafusion::prelude::SessionContext;
use tokio::sync::watch;

use super::config::{ErrorPolicy, PipelineConfig, SinkConfig, SourceConfig};
use super::decode::RecordDecoder;
use super::encode::RecordEncoder;
use super::inflight::InFlight;
use super::isolate::run_isolating;
use super::query::PlannedQuery;
use super::record::{DeadLetter, SourceRecord, next_offsets};
use super::sink::{DeadLetterFile, DeadLetterSink, KafkaSink, LineSink, Sink};
use super::source::{FileSource, KafkaSource, Source};
use crate::sandbox::{Sandbox, UdfModule};
use crate::tenant::{Tenant, Tenants};

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Counters of one pipeline.
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub dead_letters: AtomicU64,
    pub skipped: AtomicU64,
    pub batches: AtomicU64,
    /// Consumer lag summed over the assigned partitions (-1: unknown).
    pub lag: std::sync::atomic::AtomicI64,
    /// 1 while the source is paused by backpressure.
    pub paused: AtomicU64,
}

impl PipelineStats {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// The consumer lag, or -1 when unknown.
    pub fn get_lag(&self) -> i64 {
        self.lag.load(Ordering::Relaxed)
    }
}

/// A pipeline ready to run.
pub struct Pipeline {
    config: PipelineConfig,
    source: Box<dyn Source>,
    decoder: RecordDecoder,
    query: PlannedQuery,
    encoder: RecordEncoder,
    sink: Box<dyn Sink>,
    dead_letters: Option<Box<dyn DeadLetterSink>>,
    stats: Arc<PipelineStats>,
    /// The owning tenant and the modules loaded under its policy (shared
    /// with `/metrics`; replaced when a reload swaps UDF versions).
    tenant: Arc<Tenant>,
    modules: SharedModules,
    reload: Option<Reload>,
}

/// The modules a pipeline currently runs.
pub type SharedModules = Arc<std::sync::RwLock<Vec<Arc<UdfModule>>>>;

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
        Self::assemble(config, modules, tenant, None).await
    }

    /// Builds a pipeline whose UDF modules were resolved by the caller (the
    /// registry of `weir serve`), optionally reloading them when told to.
    pub async fn build_with_modules(
        config: PipelineConfig,
        modules: Vec<Arc<UdfModule>>,
        tenants: &Tenants,
        reload: Option<Reload>,
    ) -> anyhow::Result<Self> {
        let name = config.name.clone();
        let tenant = tenants.get(&config.tenant);
        Self::assemble(config, modules, tenant, reload)
            .await
            .with_context(|| format!("pipeline `{name}`"))
    }

    async fn plan(
        config: &PipelineConfig,
        modules: &[Arc<UdfModule>],
        decoder: &RecordDecoder,
    ) -> anyhow::Result<PlannedQuery> {
        let ctx =
            SessionContext::new_with_config(crate::sql::session_config().with_target_partitions(1));
        for module in modules {
            crate::udf::register_module(&ctx, module);
        }
        PlannedQuery::new(&ctx, decoder.schema(), &config.sql)
            .await
            .map_err(|e| anyhow::anyhow!("sql: {}", crate::cli::user_message(&e)))
    }

    async fn assemble(
        config: PipelineConfig,
        modules: Vec<Arc<UdfModule>>,
        tenant: Arc<Tenant>,
        reload: Option<Reload>,
    ) -> anyhow::Result<Self> {
        let decoder = RecordDecoder::new(
            config.source.format(),
            config.source.fields(),
            config.source.metadata(),
        );
        let query = Self::plan(&config, &modules, &decoder).await?;
        let key = match &config.sink {
            SinkConfig::Kafka { key, .. } => key.clone(),
            _ => None,
        };
        let encoder = RecordEncoder::new(config.sink.format(), key);
        encoder
            .check_schema(&query.output_schema())
            .map_err(anyhow::Error::msg)?;
        let source: Box<dyn Source> = match &config.source {
            SourceConfig::File { path, header, .. } => {
                Box::new(FileSource::open(path.clone(), *header).await?)
            }
            SourceConfig::Kafka {
                brokers,
                topics,
                group,
                start,
                properties,
                ..
            } => Box::new(KafkaSource::new(
                brokers, topics, group, *start, properties,
            )?),
        };
        let sink: Box<dyn Sink> = match &config.sink {
            SinkConfig::Stdout { .. } => Box::new(LineSink::stdout()),
            SinkConfig::File { path, .. } => Box::new(LineSink::file(path).await?),
            SinkConfig::Kafka {
                brokers,
                topic,
                properties,
                ..
            } => Box::new(KafkaSink::new(brokers, topic, properties)?),
        };
        let dead_letters: Option<Box<dyn DeadLetterSink>> = match (
            &config.errors.path,
            &config.errors.topic,
        ) {
            (Some(path), _) => Some(Box::new(DeadLetterFile::open(path).await?)),
            (None, Some(topic)) => {
                let (brokers, properties) = match (&config.sink, &config.source) {
                    (
                        SinkConfig::Kafka {
                            brokers,
                            properties,
                            ..
                        },
                        _,
                    )
                    | (
                        _,
                        SourceConfig::Kafka {
                            brokers,
                            properties,
                            ..
                        },
                    ) => (brokers, properties),
                    _ => bail!(
                        "errors.topic needs a Kafka source or sink to take the brokers from; set errors.path"
                    ),
                };
                Some(Box::new(KafkaSink::new(brokers, topic, properties)?))
            }
            (None, None) => None,
        };
        Ok(Pipeline {
            config,
            source,
            decoder,
            query,
            encoder,
            sink,
            dead_letters,
            stats: Arc::new(PipelineStats::default()),
            tenant,
            modules: Arc::new(std::sync::RwLock::new(modules)),
            reload,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn stats(&self) -> Arc<PipelineStats> {
        self.stats.clone()
    }

    /// What `/metrics` reads about this pipeline.
    pub fn telemetry(&self) -> crate::telemetry::PipelineTelemetry {
        crate::telemetry::PipelineTelemetry {
            name: self.config.name.clone(),
            tenant: self.config.tenant.clone(),
            stats: self.stats.clone(),
            modules: self.modules.clone(),
        }
    }

    /// Runs until the source ends or `shutdown` turns true; batches in
    /// flight are acknowledged and committed first.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        tracing::info!(pipeline = %self.config.name, tenant = %self.config.tenant, "pipeline started");
        let started = Instant::now();
        let mut flight = InFlight::new(
            self.config
                .batch
                .max_in_flight_batches
                .min(self.tenant.policy().max_in_flight_batches),
            self.config.batch.max_in_flight_bytes,
        );
        let result = self.run_batches(&mut flight, &mut shutdown, started).await;
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
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            flight.wait_for_room(&mut *self.source).await?;
            self.maybe_reload().await;
            let next = tokio::select! {
                next = self.source.next_batch(max, linger) => next?,
                _ = shutdown.changed() => return Ok(()),
            };
            let Some(records) = next else {
                return Ok(());
            };
            if !records.is_empty() {
                self.process(records, flight).await?;
            }
            self.stats
                .lag
                .store(self.source.lag().unwrap_or(-1), Ordering::Relaxed);
            self.stats
                .paused
                .store(u64::from(flight.is_paused()), Ordering::Relaxed);
            if last_log.elapsed() >= PROGRESS_EVERY {
                self.log_progress(started.elapsed());
                last_log = Instant::now();
            }
        }
    }

    /// Between batches: if told that UDF versions may have changed, resolve
    /// them again and re-plan. A failure keeps the running versions.
    async fn maybe_reload(&mut self) {
        let Some(reload) = &mut self.reload else {
            return;
        };
        if !reload.changed.has_changed().unwrap_or(false) {
            return;
        }
        reload.changed.borrow_and_update();
        let modules = match (reload.resolve)() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(pipeline = %self.config.name, "UDF reload failed, keeping the running versions: {e:#}");
                return;
            }
        };
        let current = self
            .modules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let same = modules.len() == current.len()
            && modules
                .iter()
                .zip(&current)
                .all(|(a, b)| a.digest() == b.digest());
        if same {
            return;
        }
        match Self::plan(&self.config, &modules, &self.decoder)
            .await
            .and_then(|q| {
                self.encoder
                    .check_schema(&q.output_schema())
                    .map_err(anyhow::Error::msg)
                    .map(|()| q)
            }) {
            Ok(query) => {
                self.query = query;
                let labels: Vec<&str> = modules.iter().map(|m| m.label()).collect();
                tracing::info!(pipeline = %self.config.name, modules = ?labels, "new UDF versions in effect from this batch");
                *self.modules.write().unwrap_or_else(|p| p.into_inner()) = modules;
            }
            Err(e) => {
                tracing::warn!(pipeline = %self.config.name, "new UDF versions not applied, keeping the running ones: {e:#}")
            }
        }
    }

    /// One micro-batch's outcome per UDF for the circuit breakers: failing
    /// if any row failed in it, succeeding otherwise.
    /// Only functions the batch actually called count: a batch that never
    /// reached a UDF (all rows filtered out or undecodable) says nothing of
    /// it. `before` is [`Pipeline::calls_snapshot`] from before the batch.
    fn record_breakers(&self, failed: &[super::isolate::FailedRow], before: &[u64]) {
        let failing: std::collections::HashSet<&str> =
            failed.iter().filter_map(|f| f.udf.as_deref()).collect();
        let after = self.calls_snapshot();
        let modules = self
            .modules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let functions = modules
            .iter()
            .flat_map(|m| m.manifest().functions.iter().map(move |f| (m, f)));
        for (i, (module, f)) in functions.enumerate() {
            let called = after.get(i) != before.get(i);
            let name = f.name.as_str();
            if failing.contains(name) {
                module.record_batch(name, false);
            } else if called {
                module.record_batch(name, true);
            }
        }
    }

    /// Guest calls so far per function of every module (breaker and cache
    /// bookkeeping); a call refused by an open breaker counts as a failure.
    fn calls_snapshot(&self) -> Vec<u64> {
        let modules = self
            .modules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        modules
            .iter()
            .flat_map(|m| {
                (0..m.manifest().functions.len()).map(move |i| {
                    m.function_stats(i).map_or(0, |s| {
                        s.invocations.load(Ordering::Relaxed)
                            + s.failures
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .values()
                                .sum::<u64>()
                    })
                })
            })
            .collect()
    }

    fn log_progress(&self, elapsed: Duration) {
        let s = &self.stats;
        let records_in = PipelineStats::get(&s.records_in);
        tracing::info!(
            pipeline = %self.config.name,
            records_in,
            records_out = PipelineStats::get(&s.records_out),
            dead_letters = PipelineStats::get(&s.dead_letters),
            skipped = PipelineStats::get(&s.skipped),
            records_per_s = (records_in as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
            lag = self.source.lag(),
            "progress"
        );
    }

    /// One micro-batch: decode, transform (isolating poison rows), hand
    /// outputs and dead letters to their sinks; the batch joins the
    /// in-flight window until both acknowledge it.
    async fn process(
        &mut self,
        records: Vec<SourceRecord>,
        flight: &mut InFlight,
    ) -> anyhow::Result<()> {
        PipelineStats::add(&self.stats.records_in, records.len());
        PipelineStats::add(&self.stats.batches, 1);
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
        let before = self.calls_snapshot();
        let isolated = run_isolating(&self.query, decoded.batch).await;
        self.record_breakers(&isolated.failed, &before);
        letters.extend(isolated.failed.into_iter().map(|f| DeadLetter {
            record: records[decoded.rows[f.row]].clone(),
            stage: "transform",
            error: f.error,
            udf: f.udf,
        }));
        drop(records);
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
        let mut out = Vec::new();
        for batch in &isolated.outputs {
            out.extend(self.encoder.encode(batch)?);
        }
        PipelineStats::add(&self.stats.records_out, out.len());
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
                    PipelineStats::add(&self.stats.dead_letters, letters.len());
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
                    PipelineStats::add(&self.stats.skipped, letters.len());
                    ack
                }
            }
        };
        flight.push(ack, offsets, bytes);
        Ok(())
    }
}

/// Loads a pipeline file, or every `*.toml` in a folder.
pub fn load_pipelines(path: &std::path::Path) -> anyhow::Result<Vec<PipelineConfig>> {
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
        .map(|f| PipelineConfig::from_file(f).map_err(anyhow::Error::from))
        .collect()
}
