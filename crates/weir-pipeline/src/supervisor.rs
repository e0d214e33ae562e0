//! The one place pipelines are started, stopped and reported on, used by
//! `weir run` (pipelines from files) and `weir serve` (pipelines deployed
//! through the API). A started pipeline reports its metrics through its
//! own [`PipelineStats`]; the supervisor keeps what the status needs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::PipelineError;
use crate::runner::{Pipeline, PipelineStats, SharedModules};

/// Where a pipeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineState {
    Running,
    /// The source ended and everything was committed.
    Finished,
    /// It stopped by itself with an error (in `Status::error`).
    Failed,
    /// Not running: never started, or stopped.
    Stopped,
}

/// What a status page reports about one pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: PipelineState,
    pub error: Option<String>,
    pub records_in: u64,
    pub records_out: u64,
    pub dead_letters: u64,
    pub skipped: u64,
    pub batches: u64,
    /// Input records per second since the pipeline (re)started.
    pub records_per_s: f64,
    pub consumer_lag: Option<i64>,
    /// The source is paused by backpressure (the sink is slow).
    pub paused: bool,
    /// The source is paused because a UDF's circuit breaker is open.
    pub breaker_paused: bool,
    /// No partitions, or lag without progress, for `source.stall_warn_ms`.
    pub stalled: bool,
    /// What holds the pipeline up, in words (an open breaker, a stall).
    pub condition: Option<String>,
    /// `udf -> {module, sha256, breaker}` of the versions in use.
    pub udfs: Vec<serde_json::Value>,
    /// The partitions this member reads (`topic/partition`; Kafka).
    pub partitions: Vec<String>,
}

impl Status {
    fn not_running(state: PipelineState, error: Option<String>) -> Self {
        Status {
            state,
            error,
            records_in: 0,
            records_out: 0,
            dead_letters: 0,
            skipped: 0,
            batches: 0,
            records_per_s: 0.0,
            consumer_lag: None,
            paused: false,
            breaker_paused: false,
            stalled: false,
            condition: None,
            udfs: Vec::new(),
            partitions: Vec::new(),
        }
    }
}

/// `(tenant, pipeline)`.
type Key = (String, String);

struct Supervised<T> {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), PipelineError>>,
    stats: Arc<PipelineStats>,
    modules: SharedModules,
    started: Instant,
    /// What the caller keeps with the pipeline (e.g. the UDF references it
    /// was deployed with).
    tag: T,
}

/// Running pipelines by tenant and name, and the last error of each one
/// that stopped by itself.
pub struct Supervisor<T = ()> {
    running: Mutex<HashMap<Key, Supervised<T>>>,
    failed: Arc<Mutex<HashMap<Key, String>>>,
    /// The last status of each pipeline stopped on request (its counters
    /// at the stop), until it starts again or is forgotten.
    stopped: Mutex<HashMap<Key, Status>>,
    /// Where pipelines run: the guest threads of `weir serve`, else the
    /// caller's runtime.
    runtime: Option<tokio::runtime::Handle>,
}

impl<T> Default for Supervisor<T> {
    fn default() -> Self {
        Supervisor {
            running: Mutex::new(HashMap::new()),
            failed: Arc::new(Mutex::new(HashMap::new())),
            stopped: Mutex::new(HashMap::new()),
            runtime: None,
        }
    }
}

fn key(tenant: &str, name: &str) -> Key {
    (tenant.to_string(), name.to_string())
}

impl<T> Supervisor<T> {
    /// A supervisor whose pipelines run on `runtime` (the guest threads,
    /// [`crate::sandbox::GuestExecutor`]).
    pub fn on(runtime: tokio::runtime::Handle) -> Self {
        Supervisor {
            runtime: Some(runtime),
            ..Self::default()
        }
    }

    /// Runs `pipeline`, replacing (stopping first) a running one of the
    /// same tenant and name.
    pub async fn start(&self, pipeline: Pipeline, tag: T) {
        let (tenant, name) = (
            pipeline.tenant_name().to_string(),
            pipeline.name().to_string(),
        );
        if let Some(Err(e)) = self.stop(&tenant, &name).await {
            tracing::warn!(%tenant, pipeline = %name, "replaced; it had stopped with an error: {e:#}");
        }
        let stats = pipeline.stats();
        let modules = pipeline.modules();
        let (stop, stopped) = watch::channel(false);
        let k = key(&tenant, &name);
        // Before the task starts: an error it reports at once must stay.
        self.failed.lock().remove(&k);
        self.stopped.lock().remove(&k);
        let failed = self.failed.clone();
        let task_key = k.clone();
        let work = async move {
            let result = pipeline.run(stopped).await;
            if let Err(e) = &result {
                tracing::error!(tenant = %task_key.0, pipeline = %task_key.1, "{e:#}");
                failed.lock().insert(task_key, format!("{e:#}"));
            }
            result
        };
        let task = match &self.runtime {
            Some(runtime) => runtime.spawn(work),
            None => tokio::spawn(work),
        };
        self.running.lock().insert(
            k,
            Supervised {
                stop,
                task,
                stats,
                modules,
                started: Instant::now(),
                tag,
            },
        );
    }

    /// Stops a pipeline: it finishes its in-flight batches and commits.
    /// Returns its result, or `None` when it was not there.
    /// Its counters stay readable through [`Self::status`].
    pub async fn stop(&self, tenant: &str, name: &str) -> Option<Result<(), PipelineError>> {
        let k = key(tenant, name);
        let supervised = self.running.lock().remove(&k)?;
        let _ = supervised.stop.send(true);
        let Supervised {
            task,
            stats,
            modules,
            started,
            ..
        } = supervised;
        let result = join(task).await;
        let mut last = describe(&stats, &modules, started, PipelineState::Stopped);
        last.records_per_s = 0.0;
        self.stopped.lock().insert(k, last);
        Some(result)
    }

    /// Drops what is kept of a stopped pipeline (it was deleted).
    pub fn forget(&self, tenant: &str, name: &str) {
        let k = key(tenant, name);
        self.stopped.lock().remove(&k);
        self.failed.lock().remove(&k);
    }

    /// Stops every pipeline; the first error, if any.
    ///
    /// # Errors
    /// The first pipeline's that stopped on an error.
    pub async fn stop_all(&self) -> Result<(), PipelineError> {
        let all: Vec<_> = self.running.lock().drain().collect();
        for (_, s) in &all {
            let _ = s.stop.send(true);
        }
        let mut first = Ok(());
        for (_, s) in all {
            if let Err(e) = join(s.task).await
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// Waits until every pipeline has ended by itself (sources ended) or
    /// `shutdown` fires (then stops them all); the first error, if any.
    ///
    /// # Errors
    /// As [`Supervisor::stop_all`].
    pub async fn wait_all(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), PipelineError> {
        loop {
            let all_done = self.running.lock().values().all(|s| s.task.is_finished());
            if all_done {
                return self.stop_all().await;
            }
            tokio::select! {
                _ = shutdown.changed() => return self.stop_all().await,
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            }
        }
    }

    pub fn is_running(&self, tenant: &str, name: &str) -> bool {
        self.running
            .lock()
            .get(&key(tenant, name))
            .is_some_and(|s| !s.task.is_finished())
    }

    /// The first running pipeline of `tenant` whose tag satisfies `pred`.
    pub fn find_running(&self, tenant: &str, pred: impl Fn(&T) -> bool) -> Option<String> {
        self.running
            .lock()
            .iter()
            .filter(|((t, _), s)| t == tenant && !s.task.is_finished())
            .find(|(_, s)| pred(&s.tag))
            .map(|((_, p), _)| p.clone())
    }

    pub fn status(&self, tenant: &str, name: &str) -> Status {
        let k = key(tenant, name);
        let running = self.running.lock();
        let Some(s) = running.get(&k) else {
            if let Some(error) = self.failed.lock().get(&k).cloned() {
                return Status::not_running(PipelineState::Failed, Some(error));
            }
            return match self.stopped.lock().get(&k) {
                Some(last) => last.clone(),
                None => Status::not_running(PipelineState::Stopped, None),
            };
        };
        let state = match (s.task.is_finished(), self.failed.lock().get(&k).cloned()) {
            (false, _) => PipelineState::Running,
            (true, Some(error)) => return Status::not_running(PipelineState::Failed, Some(error)),
            (true, None) => PipelineState::Finished,
        };
        describe(&s.stats, &s.modules, s.started, state)
    }
}

/// The status of a pipeline from its counters and modules.
fn describe(
    st: &PipelineStats,
    modules: &SharedModules,
    started: Instant,
    state: PipelineState,
) -> Status {
    let modules = modules.read().clone();
    let udfs = modules
        .iter()
        .flat_map(|m| {
            m.manifest()
                .functions
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    serde_json::json!({
                        "udf": f.name,
                        "module": m.label(),
                        "sha256": m.digest(),
                        "breaker": m.breaker(i).map(|b| b.state().as_str()),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let lag = st.get_lag();
    Status {
        state,
        error: None,
        records_in: st.records_in.get(),
        records_out: st.records_out.get(),
        dead_letters: st.dead_letters.get(),
        skipped: st.skipped.get(),
        batches: st.batches.get(),
        records_per_s: st.records_in.get() as f64 / started.elapsed().as_secs_f64().max(1e-3),
        consumer_lag: (lag >= 0).then_some(lag),
        paused: st.paused.get() == 1,
        breaker_paused: st.breaker_paused.get() == 1,
        stalled: st.stalled.get() == 1,
        condition: st.condition(),
        udfs,
        partitions: st.partitions(),
    }
}

async fn join(task: JoinHandle<Result<(), PipelineError>>) -> Result<(), PipelineError> {
    match task.await {
        Ok(result) => result,
        Err(e) => Err(PipelineError::Failed(anyhow::anyhow!("pipeline task: {e}"))),
    }
}
