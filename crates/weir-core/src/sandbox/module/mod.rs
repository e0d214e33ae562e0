//! A loaded module ([`UdfModule`]): its manifest, instances, per-function
//! statistics, breakers and limits. Loading it is `load.rs` (size check →
//! parse → manifest → imports → compile with cache → exports → warm-up);
//! calling its functions on batches is `call.rs`.

mod call;
mod load;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, new_empty_array};
use sha2::{Digest, Sha256};
use wasmtime::{Engine, ExternType, InstancePre, Module, ValType};

use super::engine::{EngineKind, Sandbox};
use super::error::{Failure, LoadError, PartialOutput, RowFailures, UdfError};
use super::host::{StoreState, linker};
use super::inspect::{Import, inspect};
use super::instance::InstancePool;
use super::limits::{LimitKeys, SandboxLimits};
use crate::abi::ArrowType;
use crate::abi::{EXPORT_ALLOC, EXPORT_INIT, EXPORT_MEMORY, IMPORT_MODULE, Manifest};
use crate::marshal::input::InputPlan;
use crate::marshal::output::CallResult;
use crate::telemetry;
use crate::tenant::budget::KNOWN_CAPABILITIES;
use crate::tenant::{Breaker, BreakerState, CacheAdvice, Tenant};

/// A validated, compiled module ready to run batches.
pub struct UdfModule {
    label: Arc<str>,
    digest: String,
    /// The `weir.init` section, handed to every new instance.
    init: Option<Arc<[u8]>>,
    manifest: Manifest,
    imports: Vec<Import>,
    /// The limits in force at load (memory, capabilities, ...).
    limits: SandboxLimits,
    /// The key that set each of them.
    keys: LimitKeys,
    /// The sandbox's own limits: the ceilings over the tenant's budget,
    /// combined again at every call (a policy reload applies at once).
    ceilings: SandboxLimits,
    /// A dry run's CPU caps (ms, fuel) below whatever the tenant is granted.
    trial_cpu: Option<(u64, u64)>,
    engine: Engine,
    pre: InstancePre<StoreState>,
    pool: InstancePool,
    /// Calls made so far, per function (for "batch N" in errors).
    calls: Vec<AtomicU64>,
    from_cache: bool,
    /// The owning tenant: its policy bounds every call (read per batch).
    tenant: Option<Arc<Tenant>>,
    /// One circuit breaker per function.
    breakers: Vec<Breaker>,
    /// Telemetry per function.
    stats: Vec<FunctionStats>,
    /// Per function: whether the result cache pays for itself.
    cache_advice: Vec<CacheAdvice>,
    /// Telemetry per aggregate.
    aggregate_stats: Vec<FunctionStats>,
}

/// What one function of a module did (read by status pages; mirrored to
/// the metrics recorder once [`UdfModule::bind_metrics`] named the
/// pipeline).
#[derive(Debug, Default)]
pub struct FunctionStats {
    /// Guest calls made (cache hits and open circuits make none).
    pub invocations: AtomicU64,
    /// Time inside the guest, in nanoseconds.
    pub guest_nanos: AtomicU64,
    /// Failed batches by `Failure::kind`.
    pub failures: parking_lot::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    metrics: std::sync::OnceLock<FunctionMetrics>,
}

/// The series of one function of one pipeline.
#[derive(Debug)]
struct FunctionMetrics {
    labels: telemetry::Labels,
    invocations: metrics::Counter,
    guest_seconds: metrics::Gauge,
    call_seconds: metrics::Histogram,
    breaker_state: metrics::Gauge,
}

fn breaker_level(state: BreakerState) -> f64 {
    match state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    }
}

impl FunctionStats {
    /// Counts one guest call that took `elapsed`.
    pub(crate) fn record(&self, elapsed: std::time::Duration) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        self.guest_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        if let Some(m) = self.metrics.get() {
            m.invocations.increment(1);
            m.guest_seconds.increment(elapsed.as_secs_f64());
            m.call_seconds.record(elapsed.as_secs_f64());
        }
    }
}

impl std::fmt::Debug for UdfModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdfModule")
            .field("label", &self.label)
            .field("digest", &self.digest)
            .field("functions", &self.manifest.functions.len())
            .finish()
    }
}

impl UdfModule {
    /// The name errors use for this module (its file name, or a label given
    /// by the caller such as `tenant/name@v3`).
    pub fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn label_arc(&self) -> Arc<str> {
        self.label.clone()
    }

    /// sha256 of the module's binary form, lowercase hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The module's `weir.init` bytes (docs/abi.md §10), if it has any.
    pub fn init_data(&self) -> Option<&[u8]> {
        self.init.as_deref()
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Position of function `name` in the manifest (the `index` of [`Self::call`]).
    pub fn function_index(&self, name: &str) -> Option<usize> {
        self.manifest.functions.iter().position(|f| f.name == name)
    }

    /// The host capabilities the module imports.
    pub fn imports(&self) -> &[Import] {
        &self.imports
    }

    pub fn tenant(&self) -> Option<&Arc<Tenant>> {
        self.tenant.as_ref()
    }

    /// Telemetry of function `index`.
    pub fn function_stats(&self, index: usize) -> Option<&FunctionStats> {
        self.stats.get(index)
    }

    /// Telemetry of aggregate `index`.
    pub fn aggregate_stats(&self, index: usize) -> Option<&FunctionStats> {
        self.aggregate_stats.get(index)
    }

    /// Names the pipeline this module runs in: from now on its functions'
    /// calls, failures and breaker states reach the metrics recorder with
    /// labels `tenant`, `pipeline`, `udf`. Only the first call counts.
    pub fn bind_metrics(&self, pipeline: &str) {
        let tenant = self.tenant.as_ref().map_or("", |t| t.name());
        let metrics = |udf: &str| {
            let labels: telemetry::Labels = vec![
                ("tenant", tenant.to_string()),
                ("pipeline", pipeline.to_string()),
                ("udf", udf.to_string()),
            ];
            FunctionMetrics {
                invocations: telemetry::counter(telemetry::UDF_INVOCATIONS, &labels),
                guest_seconds: telemetry::gauge(telemetry::UDF_GUEST_SECONDS, &labels),
                call_seconds: telemetry::histogram(telemetry::UDF_CALL_SECONDS, &labels),
                breaker_state: telemetry::gauge(telemetry::UDF_BREAKER_STATE, &labels),
                labels,
            }
        };
        for (i, f) in self.manifest.functions.iter().enumerate() {
            let m = metrics(&f.name);
            m.breaker_state.set(breaker_level(self.breakers[i].state()));
            let _ = self.stats[i].metrics.set(m);
        }
        for (i, f) in self.manifest.aggregates.iter().enumerate() {
            let _ = self.aggregate_stats[i].metrics.set(metrics(&f.name));
        }
    }

    /// Calls of function `index` with at least one row so far (guest calls,
    /// calls served by the cache, calls refused by an open breaker).
    pub fn calls_made(&self, index: usize) -> u64 {
        self.calls
            .get(index)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The circuit breaker of function `index`.
    pub fn breaker(&self, index: usize) -> Option<&Breaker> {
        self.breakers.get(index)
    }

    /// How long an open breaker of this module waits before its probe.
    pub fn breaker_cooldown(&self) -> std::time::Duration {
        let ms = self.tenant.as_ref().map_or_else(
            || crate::tenant::TenantPolicy::default().breaker_cooldown_ms,
            |t| t.policy().breaker_cooldown_ms,
        );
        std::time::Duration::from_millis(ms)
    }

    /// Records a batch's outcome for function `name` on its breaker (per
    /// UDF version: this module's digest); logs state changes.
    pub fn record_batch(&self, name: &str, ok: bool) {
        let Some(index) = self.function_index(name) else {
            return;
        };
        let settings = self.tenant.as_ref().map_or_else(
            || crate::tenant::TenantPolicy::default().breaker_settings(),
            |t| t.policy().breaker_settings(),
        );
        let breaker = &self.breakers[index];
        let changed = breaker.record(ok, &settings);
        if let Some(m) = self.stats[index].metrics.get() {
            m.breaker_state.set(breaker_level(breaker.state()));
        }
        if let Some(state) = changed {
            tracing::warn!(
                udf = name,
                module = %self.label,
                digest = &self.digest[..12],
                tenant = self.tenant.as_ref().map(|t| t.name()),
                state = state.as_str(),
                reason = breaker.reason().filter(|_| state == BreakerState::Open),
                "circuit breaker changed state"
            );
        }
    }

    /// The limits of one call: those of the load, with the CPU budget the
    /// tenant's policy grants now, up to the sandbox's ceiling (the rule of
    /// `SandboxLimits::in_force`, without its allocations: this runs on
    /// every call; the keys are worked out only for an error).
    pub(super) fn call_limits(&self) -> std::borrow::Cow<'_, SandboxLimits> {
        let Some(t) = &self.tenant else {
            return std::borrow::Cow::Borrowed(&self.limits);
        };
        let p = t.policy();
        let mut l = self.limits.clone();
        l.cpu_ms_per_batch = p.cpu_ms_per_batch.min(self.ceilings.cpu_ms_per_batch);
        l.fuel_per_batch = p.fuel_per_batch.min(self.ceilings.fuel_per_batch);
        if let Some((ms, fuel)) = self.trial_cpu {
            l.cpu_ms_per_batch = l.cpu_ms_per_batch.min(ms);
            l.fuel_per_batch = l.fuel_per_batch.min(fuel);
        }
        // New instances take the lower of the load's memory limit and the
        // tenant's current one (see `StoreState::new`).
        l.memory_bytes = l.memory_bytes.min(p.memory_bytes);
        std::borrow::Cow::Owned(l)
    }

    /// The keys that set [`Self::call_limits`]: what an error tells the
    /// user to raise.
    pub(super) fn call_keys(&self) -> LimitKeys {
        let Some(t) = &self.tenant else {
            return self.keys.clone();
        };
        let (now, now_keys) = self.ceilings.in_force(Some(&t.policy().budget()));
        let mut keys = self.keys.clone();
        keys.cpu_ms_per_batch = now_keys.cpu_ms_per_batch;
        keys.fuel_per_batch = now_keys.fuel_per_batch;
        if now.memory_bytes < self.limits.memory_bytes {
            keys.memory_bytes = now_keys.memory_bytes;
        }
        keys
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Whether the compiled code came from the on-disk cache.
    pub fn loaded_from_cache(&self) -> bool {
        self.from_cache
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn instance_pre(&self) -> &InstancePre<StoreState> {
        &self.pre
    }

    /// Instances currently alive (idle or busy).
    pub fn live_instances(&self) -> usize {
        self.pool.live()
    }
}

/// The limits of a call due to end by `deadline` (a request's): the CPU
/// budget cut to the time left (epoch meter), or `None` when the budget is
/// shorter anyway. A deadline already passed is [`Failure::Cancelled`]. A
/// call that then runs out of CPU was cut by the deadline: report it as
/// cancelled ([`cancelled_if_clamped`]).
pub(super) fn clamp_to_deadline(
    limits: &SandboxLimits,
    deadline: Option<Instant>,
) -> Result<Option<SandboxLimits>, Failure> {
    let Some(d) = deadline else {
        return Ok(None);
    };
    let left = d.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Failure::Cancelled);
    }
    let left_ms = (left.as_millis() as u64).max(1);
    Ok(
        (limits.cpu_meter == crate::sandbox::CpuMeter::Epoch && left_ms < limits.cpu_ms_per_batch)
            .then(|| SandboxLimits {
                cpu_ms_per_batch: left_ms,
                ..limits.clone()
            }),
    )
}

/// An out-of-CPU failure of a call whose budget [`clamp_to_deadline`] cut
/// is the request's deadline, not the function's budget.
pub(super) fn cancelled_if_clamped<T>(
    result: Result<T, Failure>,
    clamped: bool,
) -> Result<T, Failure> {
    match result {
        Err(Failure::OutOfCpu {
            during_start: false,
        }) if clamped => Err(Failure::Cancelled),
        other => other,
    }
}

/// The exports aggregate `agg` is made of, with their parameter counts.
pub(crate) fn aggregate_exports(agg: &crate::abi::AggregateDecl) -> Vec<(String, usize)> {
    use crate::abi::aggregate::{EVALUATE, MERGE, RETRACT, STATE, UPDATE};
    let mut parts = vec![
        (agg.export(UPDATE), 3),
        (agg.export(MERGE), 3),
        (agg.export(STATE), 2),
        (agg.export(EVALUATE), 2),
    ];
    if agg.retract {
        parts.push((agg.export(RETRACT), 3));
    }
    parts
}
