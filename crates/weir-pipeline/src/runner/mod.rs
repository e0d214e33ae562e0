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
use super::pipeline_error::PipelineError;
use super::query::{PlannedQuery, Split};
use super::record::{DeadLetter, SourceRecord, next_offsets};
use super::sink::{DeadLetterSink, Sink};
use super::source::Source;
use super::table::Tables;
use super::transaction::Transaction;
use super::window::WindowState;
use super::workers::{Encoding, Transforming, Workers};
use crate::sandbox::{Sandbox, UdfModule};
use crate::tenant::{BreakerAction, BreakerState};
use crate::tenant::{Tenant, Tenants};

mod breakers;
mod build;
mod joins;
mod load;
mod progress;
mod reload;
mod stats;
mod transform;
mod windows;

use breakers::Hold;
use build::folding;
pub use load::load_pipelines;
use progress::StallWatch;
pub use stats::PipelineStats;
use transform::{Stage, Take, failed_letters};
use windows::{Checkpoints, Origin};

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// While an open breaker holds the pipeline: how often it checks for a new
/// UDF version, commits what was acknowledged and keeps the consumer alive.
const BREAKER_POLL: Duration = Duration::from_millis(200);
/// A batch that finds no capacity (instance slot, tenant memory) is held and
/// retried this many times (≈ 21 s of waiting in all) before its records
/// are handled as failed.
const MAX_CAPACITY_WAITS: u32 = 8;

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
    /// Functions the SQL creates (`CREATE FUNCTION … LANGUAGE javascript|python`
    /// before the query), loaded under the tenant; kept through reloads.
    inline: Vec<Arc<UdfModule>>,
    reload: Option<Reload>,
    /// Open event-time windows, when the query reads one.
    windows: Option<WindowState>,
    /// The rows a join of the stream with itself keeps (`crate::join`).
    joins: Option<crate::join::JoinState>,
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
    /// Where folded windows are checkpointed (`changelog.rs`).
    changelog: Option<Checkpoints>,
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
    /// flight are acknowledged and committed first. Every poll of the run
    /// (decoding, the query, encoding) takes one of its tenant's slots
    /// (`weir_core::tenant::gate`), as its guest calls do.
    ///
    /// # Errors
    /// [`PipelineError::Failed`]: what stopped it (its source, a sink, a
    /// transaction that could not be aborted), naming the pipeline.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), PipelineError> {
        let tenant = self.tenant.clone();
        tenant
            .gate(self.run_stages(shutdown))
            .await
            .map_err(PipelineError::Failed)
    }

    async fn run_stages(mut self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        if let Some(feeder) = self.feeder.take() {
            // The re-keying stage runs beside the windows stage and stops
            // with it; either failing ends both.
            let (stop_feeder, feeder_stopped) = watch::channel(false);
            let mut fed = tokio::spawn(self.tenant.gate(feeder.run_alone(feeder_stopped)));
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
                Err(e) if self.txn.as_ref().is_some_and(|t| t.take_rewind()) => {
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
            // One batch per turn: the run gives its tenant's slot back
            // between batches, so the tenant's other work and the other
            // tenants' get theirs (a source that is always ready would
            // otherwise keep the slot for many batches).
            tokio::task::yield_now().await;
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
        if self.origin.is_none() {
            // A windows stage counts its records less the watermark marks.
            self.stats.records_in.add(records.len() as u64);
        }
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
            self.follow_internal_partitions()?;
        }
        self.restore_state().await?;
        if self.joins.is_some() {
            return self
                .join_batch(decoded, records, letters, offsets, flight, shutdown)
                .await;
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
            let mut admitted = windows
                .admit(
                    batch,
                    &rows,
                    origins.as_ref().map(|(_, o)| o),
                    Instant::now(),
                )
                .map_err(|e| anyhow::anyhow!("windows: {e}"))?;
            drop(rows);
            if self.origin.is_some() {
                self.stats
                    .records_in
                    .add(records.len().saturating_sub(admitted.marks) as u64);
            }
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
        letters.extend(failed_letters(isolated.failed, records, &decoded.rows));
        self.deliver(isolated.outputs, letters, offsets, flight)
            .await
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
