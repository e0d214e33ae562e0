//! Calling a module's functions on batches: slices sized for the cache,
//! the deterministic-results cache, row errors collected or bisected.

use super::*;

impl UdfModule {
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
    /// row's result is NULL and the failing rows (row numbers of `args`)
    /// are returned beside the result. A module of ABI 1.1 reports them all
    /// with the column; with an older one each failing row costs about
    /// three more guest calls (the row alone, to confirm it; the rows
    /// before it; the next chunk after it). Any other failure, or a row
    /// that does not fail alone, fails the batch as in `call`.
    #[allow(clippy::result_large_err)]
    pub fn call_collecting(
        &self,
        index: usize,
        args: &[ArrayRef],
        rows: usize,
    ) -> Result<(ArrayRef, RowFailures), UdfError> {
        let ret = self.manifest.functions[index].ret.data_type();
        let slice = |start: usize, len: usize| -> Vec<ArrayRef> {
            args.iter().map(|a| a.slice(start, len)).collect()
        };
        let mut pieces: Vec<ArrayRef> = Vec::new();
        let mut errors = RowFailures::default();
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
                    error.rows = rows;
                    for (row, message) in failed {
                        errors.push(&error, start + row, message);
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
            error.rows = rows;
            if let Failure::RowError { message, .. } =
                std::mem::replace(&mut error.failure, Failure::Cancelled)
            {
                errors.push(&error, start + row, message);
            }
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
    pub(super) fn call_cached(
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
        // By row of the computed column.
        let messages: std::collections::HashMap<usize, String> =
            messages.into_inner().into_iter().collect();
        let mut errors: Vec<(usize, String)> = failed
            .into_iter()
            .map(|(row, computed)| (row, messages.get(&computed).cloned().unwrap_or_default()))
            .collect();
        errors.sort_by_key(|(row, _)| *row);
        Err(Failure::RowErrors(Box::new(PartialOutput {
            array,
            errors,
        })))
    }

    pub(super) fn call_inner(
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
    pub(super) fn call_slice(
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

/// The shortest chunk [`UdfModule::call_collecting`] hands the guest after
/// a failing row.
pub(super) const MIN_CHUNK: usize = 16;

/// The outputs of consecutive parts of a batch joined into one column.
/// A part whose rows partly failed (ABI 1.1, its whole column returned)
/// joins with its failed rows renumbered; any other failure fails all.
pub(super) struct Parts {
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
pub(super) const GUEST_CALL_ROWS: usize = 8192;

/// Rows a cache probe looks up (the rest of a larger batch skips the
/// cache): enough for [`CacheAdvice`] to decide, a fraction of a batch.
pub(super) const PROBE_ROWS: usize = 1024;
