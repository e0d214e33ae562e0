//! Loading a module (size check → parse → manifest → imports → compile with
//! cache → exports) and calling its functions on batches.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, new_empty_array};
use sha2::{Digest, Sha256};
use wasmtime::{Engine, ExternType, InstancePre, Module, ValType};

use super::engine::{EngineKind, Sandbox};
use super::error::{Failure, LoadError, PartialOutput, UdfError};
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

/// The shortest chunk [`UdfModule::call_collecting`] hands the guest after
/// a failing row.
const MIN_CHUNK: usize = 16;

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

    /// Instantiates one instance now, so that a module whose start function
    /// loops or whose memory or tables exceed the limits is refused at load.
    /// Start functions and `weir_init` are guest code: they run in one of
    /// the tenant's guest slots, within its `max_concurrent_calls`.
    fn warm_up(&self) -> Result<(), LoadError> {
        let _permit = self.tenant.as_ref().map(|t| t.enter());
        let instance = self
            .pool
            .checkout(self)
            .map_err(|failure| LoadError::Start {
                label: self.label.to_string(),
                failure: UdfError {
                    udf: "(start)".to_string(),
                    module: self.label.to_string(),
                    digest: self.digest.clone(),
                    batch: 0,
                    rows: 0,
                    failure,
                    limits: self.limits.clone(),
                    keys: self.keys.clone(),
                }
                .describe_failure(),
            })?;
        self.pool.checkin(instance);
        Ok(())
    }

    /// Runs function `index` of the manifest over one batch: `args` holds one
    /// array of `rows` rows per declared argument. One guest call per batch.
    ///
    /// # Panics
    /// If `index` is not a function of the manifest.
    // A failed batch is rare and carries everything the user needs to act.
    #[allow(clippy::result_large_err)]
    pub fn call(&self, index: usize, args: &[ArrayRef], rows: usize) -> Result<ArrayRef, UdfError> {
        self.call_until(index, args, rows, None)
    }

    /// Like [`Self::call`] for work with a `deadline` (a request's): a call
    /// due to start after it fails as [`Failure::Cancelled`] without
    /// running, and a call in flight at the deadline is interrupted then
    /// (epoch meter) rather than at its own CPU budget.
    #[allow(clippy::result_large_err)]
    pub fn call_until(
        &self,
        index: usize,
        args: &[ArrayRef],
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<ArrayRef, UdfError> {
        let decl = &self.manifest.functions[index];
        if rows == 0 {
            return Ok(new_empty_array(&decl.ret.data_type()));
        }
        let batch = self.calls[index].fetch_add(1, Ordering::Relaxed) + 1;
        let limits = self.call_limits();
        let error = |failure| UdfError {
            udf: decl.name.clone(),
            module: self.label.to_string(),
            digest: self.digest.clone(),
            batch,
            rows,
            failure,
            limits: limits.clone().into_owned(),
            keys: self.call_keys(),
        };
        if let Err(left) = self.breakers[index].allow(self.breaker_cooldown()) {
            return Err(error(Failure::CircuitOpen {
                retry_in_ms: left.as_millis() as u64,
            }));
        }
        let cache = match (&self.tenant, decl.deterministic) {
            (Some(t), true) => t.cache(),
            _ => None,
        };
        let advice = &self.cache_advice[index];
        match cache {
            None => self.call_inner(index, &limits, args, rows, deadline),
            Some(cache) if !advice.look_up() => {
                cache.stats.bypassed.add(rows as u64);
                let started = Instant::now();
                let out = self.call_inner(index, &limits, args, rows, deadline);
                if out.is_ok() {
                    advice.bypassed(rows, started.elapsed());
                }
                out
            }
            // A probe of a function the cache does not pay for (yet) looks
            // up a sample of the batch, the rest goes straight to the guest.
            Some(cache) if !advice.paying() && rows > PROBE_ROWS => {
                let head: Vec<ArrayRef> = args.iter().map(|a| a.slice(0, PROBE_ROWS)).collect();
                let tail: Vec<ArrayRef> = args
                    .iter()
                    .map(|a| a.slice(PROBE_ROWS, rows - PROBE_ROWS))
                    .collect();
                let probe = || -> Result<ArrayRef, Failure> {
                    let mut parts = Parts::new(rows);
                    let head =
                        self.call_cached(&cache, index, &limits, &head, PROBE_ROWS, deadline);
                    parts.add(0, PROBE_ROWS, head)?;
                    let started = Instant::now();
                    let rest = self.call_inner(index, &limits, &tail, rows - PROBE_ROWS, deadline);
                    parts.add(PROBE_ROWS, rows - PROBE_ROWS, rest)?;
                    cache.stats.bypassed.add((rows - PROBE_ROWS) as u64);
                    advice.bypassed(rows - PROBE_ROWS, started.elapsed());
                    parts.finish()
                };
                probe()
            }
            Some(cache) => self.call_cached(&cache, index, &limits, args, rows, deadline),
        }
        .map_err(|failure| {
            let mut by_kind = self.stats[index].failures.lock();
            *by_kind.entry(failure.kind()).or_default() += 1;
            if let Some(m) = self.stats[index].metrics.get() {
                let mut labels = m.labels.clone();
                labels.push(("kind", failure.kind().to_string()));
                telemetry::counter(telemetry::UDF_FAILURES, &labels).increment(1);
            }
            error(failure)
        })
    }

    /// Like [`Self::call`], but a row error does not fail the batch: the
    /// row's result is NULL and the error is returned beside the result,
    /// one per failing row (row numbers of `args`). Each failing row costs
    /// about three more guest calls (the row alone, to confirm it; the rows
    /// before it; the next chunk after it); any other failure, or a row that
    /// does not fail alone, fails the batch as in `call`.
    #[allow(clippy::result_large_err)]
    pub fn call_collecting(
        &self,
        index: usize,
        args: &[ArrayRef],
        rows: usize,
    ) -> Result<(ArrayRef, Vec<UdfError>), UdfError> {
        let ret = self.manifest.functions[index].ret.data_type();
        let slice = |start: usize, len: usize| -> Vec<ArrayRef> {
            args.iter().map(|a| a.slice(start, len)).collect()
        };
        let mut pieces: Vec<ArrayRef> = Vec::new();
        let mut errors = Vec::new();
        let mut start = 0;
        // After a failing row the guest is called on a chunk about twice as
        // long as the rows it got through, so that dense errors do not copy
        // the rest of the batch into the guest once per error.
        let mut chunk = rows;
        while start < rows {
            let len = chunk.min(rows - start);
            let mut error = match self.call(index, &slice(start, len), len) {
                Ok(out) => {
                    pieces.push(out);
                    start += len;
                    chunk = chunk.saturating_mul(2);
                    continue;
                }
                Err(e) => e,
            };
            // ABI 1.1: the guest reported every failing row with the whole
            // column: taken as it is, no row computed twice. (Not when the
            // column covers only part of the chunk: cache misses, slices.)
            error.failure = match std::mem::replace(&mut error.failure, Failure::Cancelled) {
                Failure::RowErrors(partial) if partial.array.len() == len => {
                    let PartialOutput {
                        array,
                        errors: failed,
                    } = *partial;
                    pieces.push(array);
                    for (row, message) in failed {
                        errors.push(UdfError {
                            failure: Failure::RowError {
                                row: start + row,
                                message,
                            },
                            rows,
                            ..error.clone()
                        });
                    }
                    start += len;
                    chunk = chunk.saturating_mul(2);
                    continue;
                }
                other => other.first_row_error(),
            };
            let row = match &error.failure {
                Failure::RowError { row, .. } if *row < len => *row,
                _ => return Err(error),
            };
            // The row must fail alone too: a guest that names the wrong row
            // (or answers differently) is left to the caller's bisection.
            match self.call(index, &slice(start + row, 1), 1) {
                Err(alone)
                    if matches!(
                        alone.failure,
                        Failure::RowError { .. } | Failure::RowErrors(_)
                    ) => {}
                _ => return Err(error),
            }
            if row > 0 {
                pieces.push(self.call(index, &slice(start, row), row)?);
            }
            pieces.push(datafusion::arrow::array::new_null_array(&ret, 1));
            error.failure = error.failure.at_row(&|r| r + start);
            error.rows = rows;
            errors.push(error);
            start += row + 1;
            chunk = (2 * row).max(MIN_CHUNK);
        }
        let out = match pieces.len() {
            0 => new_empty_array(&ret),
            1 => pieces.swap_remove(0),
            _ => {
                let parts: Vec<&dyn datafusion::arrow::array::Array> =
                    pieces.iter().map(|a| a.as_ref()).collect();
                datafusion::arrow::compute::concat(&parts).map_err(|e| UdfError {
                    udf: self.manifest.functions[index].name.clone(),
                    module: self.label.to_string(),
                    digest: self.digest.clone(),
                    batch: 0,
                    rows,
                    failure: Failure::Other(e.to_string()),
                    limits: self.limits.clone(),
                    keys: self.keys.clone(),
                })?
            }
        };
        Ok((out, errors))
    }

    /// Looks `args` up in the result cache, the guest computing the
    /// misses; tells the function's [`CacheAdvice`] what it cost.
    fn call_cached(
        &self,
        cache: &crate::tenant::ResultCache,
        index: usize,
        limits: &SandboxLimits,
        args: &[ArrayRef],
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<ArrayRef, Failure> {
        let mut prefix = self.digest.as_bytes().to_vec();
        prefix.extend_from_slice(&(index as u32).to_le_bytes());
        let started = Instant::now();
        let guest = std::cell::Cell::new((0, Duration::ZERO));
        // The messages of rows the guest reported failed (ABI 1.1), by row
        // of the computed column: those rows are never cached.
        let messages = std::cell::RefCell::new(Vec::new());
        let out = cache.get_or_compute(
            &prefix,
            args,
            rows,
            |args, rows| {
                let t = Instant::now();
                let out = self.call_inner(index, limits, args, rows, deadline);
                guest.set((rows, t.elapsed()));
                match out {
                    Ok(array) => Ok((array, Vec::new())),
                    Err(Failure::RowErrors(partial)) if partial.array.len() == rows => {
                        let PartialOutput { array, errors } = *partial;
                        let failed = errors.iter().map(|(row, _)| *row).collect();
                        *messages.borrow_mut() = errors;
                        Ok((array, failed))
                    }
                    Err(other) => Err(other),
                }
            },
            Failure::Other,
            |failure, map| failure.at_row(map),
        );
        if out.is_ok() {
            let (computed, took) = guest.get();
            self.cache_advice[index].looked_up(rows, computed, took, started.elapsed());
        }
        let (array, failed) = out?;
        if failed.is_empty() {
            return Ok(array);
        }
        let messages = messages.into_inner();
        let mut errors: Vec<(usize, String)> = failed
            .into_iter()
            .map(|(row, computed)| {
                let message = messages
                    .iter()
                    .find(|(r, _)| *r == computed)
                    .map(|(_, m)| m.clone())
                    .unwrap_or_default();
                (row, message)
            })
            .collect();
        errors.sort_by_key(|(row, _)| *row);
        Err(Failure::RowErrors(Box::new(PartialOutput {
            array,
            errors,
        })))
    }

    fn call_inner(
        &self,
        index: usize,
        limits: &SandboxLimits,
        args: &[ArrayRef],
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<ArrayRef, Failure> {
        let decl = &self.manifest.functions[index];
        if args.len() != decl.args.len() {
            return Err(Failure::InvalidInput(format!(
                "{} arguments given, {} declared",
                args.len(),
                decl.args.len()
            )));
        }
        if rows <= GUEST_CALL_ROWS || limits.cpu_meter != crate::sandbox::CpuMeter::Epoch {
            return self.call_slice(index, limits, args, rows, deadline);
        }
        // A large batch goes to the guest in slices, one instance call
        // each, within the batch's one CPU budget and output bound.
        let started = Instant::now();
        let mut output_left = limits.max_output_bytes;
        let budget = Duration::from_millis(limits.cpu_ms_per_batch);
        let mut parts = Parts::new(rows);
        let mut start = 0;
        while start < rows {
            let len = GUEST_CALL_ROWS.min(rows - start);
            let left = budget.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(Failure::OutOfCpu {
                    during_start: false,
                });
            }
            let slice_limits = SandboxLimits {
                cpu_ms_per_batch: (left.as_millis() as u64).max(1),
                max_output_bytes: output_left,
                ..limits.clone()
            };
            let slice: Vec<ArrayRef> = args.iter().map(|a| a.slice(start, len)).collect();
            let out = self.call_slice(index, &slice_limits, &slice, len, deadline);
            let bytes = parts.add(start, len, out)?;
            output_left = output_left.saturating_sub(bytes as u64);
            start += len;
        }
        parts.finish()
    }

    /// One guest call over `rows` rows.
    fn call_slice(
        &self,
        index: usize,
        limits: &SandboxLimits,
        args: &[ArrayRef],
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<ArrayRef, Failure> {
        let decl = &self.manifest.functions[index];
        let plan = InputPlan::new(args, &decl.args, rows)
            .map_err(|e| Failure::InvalidInput(e.to_string()))?;
        let _permit = self.tenant.as_ref().map(|t| t.enter());
        // A request's deadline bounds the call too (after the wait for a
        // slot, which counts against it).
        let clamped = clamp_to_deadline(limits, deadline)?;
        let limits = clamped.as_ref().unwrap_or(limits);
        let mut instance = self.pool.checkout(self)?;
        let started = Instant::now();
        let result = crate::tenant::state::off_the_workers(|| {
            instance.invoke(self, limits, index, &plan, rows)
        });
        let result = cancelled_if_clamped(result, clamped.is_some());
        let stats = &self.stats[index];
        stats.invocations.fetch_add(1, Ordering::Relaxed);
        let elapsed = started.elapsed();
        stats
            .guest_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        if let Some(m) = stats.metrics.get() {
            m.invocations.increment(1);
            m.guest_seconds.increment(elapsed.as_secs_f64());
            m.call_seconds.record(elapsed.as_secs_f64());
        }
        match result {
            Ok(CallResult::Array(array)) => {
                self.pool.checkin(instance);
                Ok(array)
            }
            Ok(CallResult::RowError { row, message }) => {
                self.pool.checkin(instance);
                Err(Failure::RowError { row, message })
            }
            Ok(CallResult::RowErrors { array, errors }) => {
                self.pool.checkin(instance);
                Err(Failure::RowErrors(Box::new(PartialOutput {
                    array,
                    errors,
                })))
            }
            Err(failure) => {
                if failure.poisons_instance() {
                    self.pool.discard(instance);
                } else {
                    self.pool.checkin(instance);
                }
                Err(failure)
            }
        }
    }
}

/// The outputs of consecutive parts of a batch joined into one column.
/// A part whose rows partly failed (ABI 1.1, its whole column returned)
/// joins with its failed rows renumbered; any other failure fails all.
struct Parts {
    pieces: Vec<ArrayRef>,
    errors: Vec<(usize, String)>,
}

impl Parts {
    fn new(rows: usize) -> Self {
        Parts {
            pieces: Vec::with_capacity(rows.div_ceil(GUEST_CALL_ROWS)),
            errors: Vec::new(),
        }
    }

    /// The output of rows `start..start + len`; its buffer bytes.
    fn add(
        &mut self,
        start: usize,
        len: usize,
        out: Result<ArrayRef, Failure>,
    ) -> Result<usize, Failure> {
        let array = match out {
            Ok(array) => array,
            Err(Failure::RowErrors(partial)) if partial.array.len() == len => {
                let PartialOutput { array, errors } = *partial;
                self.errors
                    .extend(errors.into_iter().map(|(row, m)| (row + start, m)));
                array
            }
            Err(failure) => return Err(failure.at_row(&|r| r + start)),
        };
        let bytes = array.get_buffer_memory_size();
        self.pieces.push(array);
        Ok(bytes)
    }

    fn finish(mut self) -> Result<ArrayRef, Failure> {
        let array = match self.pieces.len() {
            1 => self.pieces.swap_remove(0),
            _ => {
                let parts: Vec<&dyn datafusion::arrow::array::Array> =
                    self.pieces.iter().map(|a| a.as_ref()).collect();
                datafusion::arrow::compute::concat(&parts)
                    .map_err(|e| Failure::Other(e.to_string()))?
            }
        };
        if self.errors.is_empty() {
            Ok(array)
        } else {
            Err(Failure::RowErrors(Box::new(PartialOutput {
                array,
                errors: self.errors,
            })))
        }
    }
}

/// Rows of one guest call at most: a larger batch is passed in slices of
/// this many, so that a call's working set (its inputs and output, in host
/// and in guest memory) stays within a core's L2 cache. At 65 536 rows in
/// one call, `a*1.5+b` cost 5.7× native against 4.7× at 8192 (BENCHMARKS.md).
/// Only with the epoch meter: a fuel budget is one call's.
const GUEST_CALL_ROWS: usize = 8192;

/// Rows a cache probe looks up (the rest of a larger batch skips the
/// cache): enough for [`CacheAdvice`] to decide, a fraction of a batch.
const PROBE_ROWS: usize = 1024;

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

fn label_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

impl Sandbox {
    /// Loads a `.wasm` (or `.wat`) file.
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<Arc<UdfModule>, LoadError> {
        let path = path.as_ref();
        let label = label_of(path);
        let io = |error| LoadError::Io {
            label: path.display().to_string(),
            error,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        self.check_size(&label, size)?;
        let bytes = std::fs::read(path).map_err(io)?;
        self.load(&label, &bytes)
    }

    fn check_size(&self, label: &str, size: u64) -> Result<(), LoadError> {
        let limit = self.limits().max_module_bytes;
        if size > limit {
            return Err(LoadError::TooLarge {
                label: label.to_string(),
                size,
                limit,
            });
        }
        Ok(())
    }

    /// Validates, compiles (or fetches from the code cache) and prepares a
    /// module. `label` names it in every error.
    pub fn load(&self, label: &str, bytes: &[u8]) -> Result<Arc<UdfModule>, LoadError> {
        self.load_with_limits(label, bytes, self.limits().clone())
    }

    /// Loads a file for `tenant`: its granted capabilities and memory per
    /// instance apply at load; its CPU budget, aggregate memory and
    /// concurrency at every call; deterministic results use its cache.
    pub fn load_file_for(
        &self,
        path: impl AsRef<Path>,
        tenant: &Arc<Tenant>,
    ) -> Result<Arc<UdfModule>, LoadError> {
        let path = path.as_ref();
        let label = format!("{}/{}", tenant.name(), label_of(path));
        let bytes = std::fs::read(path).map_err(|error| LoadError::Io {
            label: path.display().to_string(),
            error,
        })?;
        self.load_for(&label, &bytes, tenant)
    }

    /// Like [`Sandbox::load_file_for`] with the module's bytes.
    pub fn load_for(
        &self,
        label: &str,
        bytes: &[u8],
        tenant: &Arc<Tenant>,
    ) -> Result<Arc<UdfModule>, LoadError> {
        let (limits, keys) = self.limits().in_force(Some(&tenant.policy().budget()));
        self.load_inner(label, bytes, limits, keys, Some(tenant.clone()), false)
    }

    /// A dry run's module: loaded for `tenant` (its call gate and memory
    /// total apply) under the limits in force tightened by `tighten`, and
    /// never written to the disk code cache (modules tried before they are
    /// published must not fill it).
    pub fn load_for_trial(
        &self,
        label: &str,
        bytes: &[u8],
        tenant: &Arc<Tenant>,
        tighten: impl FnOnce(&mut SandboxLimits),
    ) -> Result<Arc<UdfModule>, LoadError> {
        let (mut limits, keys) = self.limits().in_force(Some(&tenant.policy().budget()));
        tighten(&mut limits);
        self.load_inner(label, bytes, limits, keys, Some(tenant.clone()), true)
    }

    /// Like [`Sandbox::load`] with per-module limits (memory, CPU, output,
    /// capabilities). Engine-wide settings (stack, meter, pool sizes) come
    /// from the sandbox.
    pub fn load_with_limits(
        &self,
        label: &str,
        bytes: &[u8],
        limits: SandboxLimits,
    ) -> Result<Arc<UdfModule>, LoadError> {
        let keys = self.limits().in_force(None).1;
        self.load_inner(label, bytes, limits, keys, None, false)
    }

    fn load_inner(
        &self,
        label: &str,
        bytes: &[u8],
        mut limits: SandboxLimits,
        keys: LimitKeys,
        tenant: Option<Arc<Tenant>>,
        trial: bool,
    ) -> Result<Arc<UdfModule>, LoadError> {
        let base = self.limits();
        limits.wasm_stack_bytes = base.wasm_stack_bytes;
        limits.cpu_meter = base.cpu_meter;
        limits.epoch_tick_ms = base.epoch_tick_ms;
        limits.total_instances = base.total_instances;
        limits.memory_bytes = limits.memory_bytes.min(base.memory_bytes);
        limits.validate().map_err(LoadError::Config)?;
        self.check_size(label, bytes.len() as u64)?;
        let not_wasm = |reason: String| LoadError::NotWasm {
            label: label.to_string(),
            reason,
        };
        let wasm: std::borrow::Cow<[u8]> = if bytes.starts_with(b"\0asm") {
            bytes.into()
        } else {
            wat::parse_bytes(bytes).map_err(|e| {
                not_wasm(format!(
                    "not binary wasm, and not valid text format either: {e}"
                ))
            })?
        };
        self.check_size(label, wasm.len() as u64)?;
        let info = inspect(&wasm).map_err(|e| match e {
            super::inspect::InspectError::Parse(reason)
            | super::inspect::InspectError::Init(reason) => not_wasm(reason),
            super::inspect::InspectError::Manifest(error) => LoadError::Manifest {
                label: label.to_string(),
                error,
            },
        })?;
        for import in &info.imports {
            let known = import.module == IMPORT_MODULE
                && import.kind == "function"
                && KNOWN_CAPABILITIES.contains(&import.name.as_str());
            if !known || !limits.grants(&import.name) {
                return Err(LoadError::ForbiddenImport {
                    label: label.to_string(),
                    module: import.module.clone(),
                    name: import.name.clone(),
                    granted: if limits.capabilities.is_empty() {
                        "nothing".to_string()
                    } else {
                        limits
                            .capabilities
                            .iter()
                            .map(|c| format!("{IMPORT_MODULE}::{c}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    hint: if known {
                        format!(
                            "; grant it with `{}` in `{}`",
                            import.name,
                            keys.capability(&import.name)
                        )
                    } else {
                        String::new()
                    },
                });
            }
        }
        if let Some(&bytes) = info
            .initial_memory
            .iter()
            .find(|&&b| b > limits.memory_bytes)
        {
            return Err(LoadError::InitialMemory {
                label: label.to_string(),
                bytes,
                limit: limits.memory_bytes,
                key: keys.memory_bytes.clone(),
            });
        }
        if let Some(&elements) = info
            .initial_tables
            .iter()
            .find(|&&n| n > limits.table_elements)
        {
            return Err(LoadError::InitialTable {
                label: label.to_string(),
                elements,
                limit: limits.table_elements,
            });
        }
        // Cheap checks before the expensive compile: size of the code, and
        // the exports the ABI needs.
        if info.functions > limits.max_functions {
            return Err(LoadError::TooManyFunctions {
                label: label.to_string(),
                count: info.functions,
                limit: limits.max_functions,
            });
        }
        if info.largest_body.0 > limits.max_function_bytes {
            return Err(LoadError::FunctionTooLarge {
                label: label.to_string(),
                index: info.largest_body.1,
                bytes: info.largest_body.0,
                limit: limits.max_function_bytes,
            });
        }
        let exported = |name: &str| info.exports.iter().any(|e| e == name);
        let missing = |name: &str, what: &'static str| LoadError::MissingExport {
            label: label.to_string(),
            name: name.to_string(),
            what,
        };
        if !exported(EXPORT_MEMORY) {
            return Err(missing(EXPORT_MEMORY, "the linear memory"));
        }
        if !exported(EXPORT_ALLOC) {
            return Err(missing(EXPORT_ALLOC, "the scratch allocator"));
        }
        if info.init.is_some() && !exported(EXPORT_INIT) {
            return Err(missing(
                EXPORT_INIT,
                "what the `weir.init` section is handed to",
            ));
        }
        if let Some(f) = info
            .manifest
            .functions
            .iter()
            .find(|f| !exported(f.export_name()))
        {
            return Err(missing(f.export_name(), "a function the manifest declares"));
        }
        for agg in &info.manifest.aggregates {
            if let Some(name) = aggregate_exports(agg)
                .into_iter()
                .map(|(name, _)| name)
                .find(|name| !exported(name))
            {
                return Err(missing(
                    &name,
                    "a part of an aggregate the manifest declares",
                ));
            }
        }
        let digest = hex::encode(Sha256::digest(&wasm));
        let kind = if info.manifest.any_deterministic() {
            EngineKind::Deterministic
        } else {
            EngineKind::Free
        };
        let engine = self.engine(kind)?.clone();
        let compile_err = |e: wasmtime::Error| LoadError::Compile {
            label: label.to_string(),
            reason: format!("{e:#}"),
        };
        let compile = || self.inner.compile_gate.run(|| Module::new(&engine, &wasm));
        let memo = (kind, info.code_digest.clone());
        let (module, from_cache) = match self.inner.compiled.get(&memo) {
            Some(module) => (module, true),
            None => {
                let (module, from_cache) = match self.inner.cache.as_ref().filter(|_| !trial) {
                    Some(cache) => cache
                        .get_or_compile(&engine, &info.code_digest, compile)
                        .map_err(compile_err)?,
                    None => (compile().map_err(compile_err)?, false),
                };
                self.inner.compiled.insert(memo, module.clone());
                (module, from_cache)
            }
        };
        check_exports(label, &module, &info.manifest, info.init.is_some())?;
        let pre = linker(&engine, &limits)
            .and_then(|l| l.instantiate_pre(&module))
            .map_err(compile_err)?;
        let calls: Vec<AtomicU64> = info
            .manifest
            .functions
            .iter()
            .map(|_| AtomicU64::new(0))
            .collect();
        let aggregate_stats = info
            .manifest
            .aggregates
            .iter()
            .map(|_| FunctionStats::default())
            .collect();
        tracing::debug!(module = label, digest = %digest, from_cache, "loaded udf module");
        let module = Arc::new(UdfModule {
            label: label.into(),
            digest,
            init: info.init.map(Arc::from),
            pool: InstancePool::new(limits.instances_per_module as usize),
            keys,
            ceilings: self.limits().clone(),
            trial_cpu: trial.then_some((limits.cpu_ms_per_batch, limits.fuel_per_batch)),
            manifest: info.manifest,
            imports: info.imports,
            limits,
            engine,
            pre,
            breakers: calls.iter().map(|_| Breaker::default()).collect(),
            stats: calls.iter().map(|_| FunctionStats::default()).collect(),
            cache_advice: calls.iter().map(|_| CacheAdvice::default()).collect(),
            aggregate_stats,
            calls,
            from_cache,
            tenant,
        });
        module.warm_up()?;
        Ok(module)
    }
}

fn check_exports(
    label: &str,
    module: &Module,
    manifest: &Manifest,
    has_init: bool,
) -> Result<(), LoadError> {
    let missing = |name: &str, what: &'static str| LoadError::MissingExport {
        label: label.to_string(),
        name: name.to_string(),
        what,
    };
    let bad = |name: &str, found: String, expected: &'static str| LoadError::BadExport {
        label: label.to_string(),
        name: name.to_string(),
        found,
        expected,
    };
    match module.get_export(EXPORT_MEMORY) {
        Some(ExternType::Memory(_)) => {}
        Some(other) => return Err(bad(EXPORT_MEMORY, format!("{other:?}"), "a memory")),
        None => return Err(missing(EXPORT_MEMORY, "the linear memory")),
    }
    let func_shape =
        |name: &str, params: usize, what: &'static str, expected: &'static str| match module
            .get_export(name)
        {
            Some(ExternType::Func(ty)) => {
                let ok = ty.params().len() == params
                    && ty.params().all(|p| matches!(p, ValType::I32))
                    && ty.results().len() == 1
                    && ty.results().all(|r| matches!(r, ValType::I32));
                if ok {
                    Ok(())
                } else {
                    Err(bad(name, format!("{ty:?}"), expected))
                }
            }
            Some(other) => Err(bad(name, format!("{other:?}"), expected)),
            None => Err(missing(name, what)),
        };
    func_shape(
        EXPORT_ALLOC,
        1,
        "the scratch allocator",
        "a function (i32) -> i32",
    )?;
    if has_init {
        func_shape(
            EXPORT_INIT,
            2,
            "what the `weir.init` section is handed to",
            "a function (i32, i32) -> i32",
        )?;
    }
    for decl in &manifest.functions {
        func_shape(
            decl.export_name(),
            2,
            "a function the manifest declares",
            "a function (i32, i32) -> i32",
        )?;
    }
    for agg in &manifest.aggregates {
        for (name, params) in aggregate_exports(agg) {
            let expected = if params == 3 {
                "a function (i32, i32, i32) -> i32"
            } else {
                "a function (i32, i32) -> i32"
            };
            func_shape(&name, params, "a part of an aggregate", expected)?;
        }
    }
    Ok(())
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
