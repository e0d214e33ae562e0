//! What can go wrong, classified, with what the user can change.

use std::fmt;

use wasmtime::Trap;

use super::host::{MemoryLimitExceeded, TableLimitExceeded, TenantMemoryExceeded};
use super::limits::{CpuMeter, LimitKeys, SandboxLimits};
use crate::abi::ManifestError;

/// A module was refused at load time. Nothing was instantiated.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "module `{label}` is {size} bytes, above the {limit}-byte limit; raise `sandbox.max_module_bytes` or shrink the module (release build, strip debug info)"
    )]
    TooLarge {
        label: String,
        size: u64,
        limit: u64,
    },
    #[error(
        "module `{label}` defines {count} functions, above the limit of {limit}; raise `sandbox.max_functions` or split the module"
    )]
    TooManyFunctions {
        label: String,
        count: u64,
        limit: u64,
    },
    #[error(
        "module `{label}`: function {index} has a {bytes}-byte body, above the {limit}-byte limit; raise `sandbox.max_function_bytes` or split the function"
    )]
    FunctionTooLarge {
        label: String,
        index: u32,
        bytes: u64,
        limit: u64,
    },
    #[error("module `{label}` is not a WebAssembly module: {reason}")]
    NotWasm { label: String, reason: String },
    #[error("module `{label}`: {error}")]
    Manifest { label: String, error: ManifestError },
    #[error(
        "module `{label}` imports `{module}::{name}`, which is not granted (granted: {granted}); UDFs run without WASI, clocks, randomness, network or files{hint}"
    )]
    ForbiddenImport {
        label: String,
        module: String,
        name: String,
        granted: String,
        /// How to grant it, when it is a capability weir knows.
        hint: String,
    },
    #[error("module `{label}` does not export `{name}` ({what}); see docs/abi.md")]
    MissingExport {
        label: String,
        name: String,
        what: &'static str,
    },
    #[error("module `{label}` exports `{name}` as {found}, the ABI requires {expected}")]
    BadExport {
        label: String,
        name: String,
        found: String,
        expected: &'static str,
    },
    #[error(
        "module `{label}` declares an initial memory of {bytes} bytes, above the {limit}-byte limit; raise `{key}` or declare a smaller initial memory"
    )]
    InitialMemory {
        label: String,
        bytes: u64,
        limit: u64,
        /// The key that set the limit.
        key: String,
    },
    #[error("module `{label}` cannot start: {failure}")]
    Start { label: String, failure: String },
    #[error(
        "module `{label}` declares a table of {elements} elements, above the {limit}-element limit; raise `sandbox.table_elements` or declare a smaller table"
    )]
    InitialTable {
        label: String,
        elements: u64,
        limit: u64,
    },
    #[error("module `{label}` failed to compile: {reason}")]
    Compile { label: String, reason: String },
    #[error("cannot read module `{label}`: {error}")]
    Io {
        label: String,
        error: std::io::Error,
    },
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
}

/// Why a guest call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The CPU budget ran out (epoch deadline or fuel).
    OutOfCpu {
        during_start: bool,
    },
    /// A memory (or table) grow was denied at the configured limit.
    OutOfMemory {
        requested: usize,
        limit: usize,
    },
    TableLimit {
        requested: usize,
        limit: usize,
    },
    /// The tenant's instances together reached `memory_total_bytes`.
    TenantMemory {
        tenant: String,
        limit: u64,
    },
    /// The UDF version's circuit breaker is open: the guest was not called.
    CircuitOpen {
        retry_in_ms: u64,
    },
    /// Wasm stack exhausted.
    StackOverflow,
    /// The guest reported an error for one row.
    RowError {
        row: usize,
        message: String,
    },
    /// ABI 1.1: the guest computed its column and reported every row that
    /// failed (NULL in it). Not a failure of the function, like
    /// [`Failure::RowError`]; callers that collect row errors take the
    /// column and the rows as they are, others fail on the first row.
    RowErrors(Box<PartialOutput>),
    /// The guest panicked (it exported `weir_panic_info`).
    Panic {
        row: Option<usize>,
        message: String,
    },
    /// The guest's result broke the output contract.
    InvalidOutput(String),
    /// Any other trap (`unreachable`, division by zero, out-of-bounds access…).
    Trap(String),
    /// Input could not be prepared (never reached the guest).
    InvalidInput(String),
    /// No instance slot became free in time.
    Busy {
        waited_ms: u64,
    },
    /// Something else failed while instantiating or calling.
    /// The process's instance pool had no free slot.
    PoolFull(String),
    /// The request the call belonged to ran out of time or was dropped (a
    /// cancel, its client gone): the call was interrupted, or never
    /// started.
    Cancelled,
    Other(String),
}

/// A column with the rows that failed in it (see [`Failure::RowErrors`]).
#[derive(Debug, Clone)]
pub struct PartialOutput {
    /// The call's column: the rows it was called on, failing ones NULL.
    pub array: datafusion::arrow::array::ArrayRef,
    /// The failing rows, increasing, each with the guest's message.
    pub errors: Vec<(usize, String)>,
}

impl PartialEq for PartialOutput {
    fn eq(&self, other: &Self) -> bool {
        self.errors == other.errors && self.array.as_ref() == other.array.as_ref()
    }
}

impl Eq for PartialOutput {}

impl Failure {
    /// A stable, low-cardinality name (for metrics and logs).
    /// Every value of [`Failure::kind`] (the `kind` label of
    /// `weir_udf_failures_total`).
    pub const KINDS: &'static [&'static str] = &[
        "out_of_cpu",
        "out_of_memory",
        "circuit_open",
        "stack_overflow",
        "guest_error",
        "guest_panic",
        "invalid_output",
        "trap",
        "invalid_input",
        "busy",
        "pool_full",
        "cancelled",
        "other",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            Failure::OutOfCpu { .. } => "out_of_cpu",
            Failure::OutOfMemory { .. }
            | Failure::TableLimit { .. }
            | Failure::TenantMemory { .. } => "out_of_memory",
            Failure::CircuitOpen { .. } => "circuit_open",
            Failure::StackOverflow => "stack_overflow",
            Failure::RowError { .. } | Failure::RowErrors(_) => "guest_error",
            Failure::Panic { .. } => "guest_panic",
            Failure::InvalidOutput(_) => "invalid_output",
            Failure::Trap(_) => "trap",
            Failure::InvalidInput(_) => "invalid_input",
            Failure::Busy { .. } => "busy",
            Failure::PoolFull(_) => "pool_full",
            Failure::Cancelled => "cancelled",
            Failure::Other(_) => "other",
        }
    }

    /// Whether the instance must be thrown away rather than reused.
    pub fn poisons_instance(&self) -> bool {
        !matches!(
            self,
            Failure::RowError { .. }
                | Failure::RowErrors(_)
                | Failure::InvalidInput(_)
                | Failure::Busy { .. }
                | Failure::PoolFull(_)
        )
    }

    /// Whether the failure says the *function* is unhealthy (what circuit
    /// breakers count): traps, exhausted CPU/memory/stack, invalid output,
    /// panics and instance errors. Not: a row error (the function doing its
    /// job on bad input), an open circuit or unpreparable input (the guest
    /// never ran), no free instance slot or the tenant's memory total used
    /// up by its other instances (load, not this function).
    pub fn is_function_failure(&self) -> bool {
        !matches!(
            self,
            Failure::RowError { .. }
                | Failure::RowErrors(_)
                | Failure::CircuitOpen { .. }
                | Failure::InvalidInput(_)
                | Failure::Busy { .. }
                | Failure::PoolFull(_)
                | Failure::TenantMemory { .. }
                | Failure::Cancelled
        )
    }

    /// Whether the call failed for want of capacity — no free instance or
    /// slot, the tenant's memory total held by its other instances — not
    /// because of its input or the function: the same batch can succeed
    /// later, so a pipeline waits and retries it rather than dead-letter
    /// its records.
    pub fn is_capacity(&self) -> bool {
        matches!(
            self,
            Failure::Busy { .. } | Failure::PoolFull(_) | Failure::TenantMemory { .. }
        )
    }

    /// The same failure with its row renumbered by `map` (a failure of a
    /// slice or subset of a batch, named in the whole batch).
    pub fn at_row(self, map: &dyn Fn(usize) -> usize) -> Failure {
        match self {
            Failure::RowError { row, message } => Failure::RowError {
                row: map(row),
                message,
            },
            Failure::Panic {
                row: Some(row),
                message,
            } => Failure::Panic {
                row: Some(map(row)),
                message,
            },
            Failure::RowErrors(mut partial) => {
                for (row, _) in &mut partial.errors {
                    *row = map(*row);
                }
                Failure::RowErrors(partial)
            }
            other => other,
        }
    }

    /// A [`Failure::RowErrors`] as the row error of its first failing row
    /// (for callers that fail a batch on its first bad row); any other
    /// failure unchanged.
    pub fn first_row_error(self) -> Failure {
        match self {
            Failure::RowErrors(partial) => match partial.errors.into_iter().next() {
                Some((row, message)) => Failure::RowError { row, message },
                None => Failure::InvalidOutput("reported row errors without a row".into()),
            },
            other => other,
        }
    }

    /// The row the failure is attributed to, when known.
    pub fn row(&self) -> Option<usize> {
        match self {
            Failure::RowError { row, .. } => Some(*row),
            Failure::RowErrors(partial) => partial.errors.first().map(|(row, _)| *row),
            Failure::Panic { row, .. } => *row,
            _ => None,
        }
    }

    /// Classifies an error raised by wasmtime while instantiating or calling.
    pub fn classify(err: &wasmtime::Error, during_start: bool) -> Failure {
        if let Some(m) = err.downcast_ref::<TenantMemoryExceeded>() {
            return Failure::TenantMemory {
                tenant: m.tenant.clone(),
                limit: m.limit,
            };
        }
        if let Some(m) = err.downcast_ref::<MemoryLimitExceeded>() {
            return Failure::OutOfMemory {
                requested: m.requested,
                limit: m.limit,
            };
        }
        if let Some(t) = err.downcast_ref::<TableLimitExceeded>() {
            return Failure::TableLimit {
                requested: t.requested,
                limit: t.limit,
            };
        }
        if err.downcast_ref::<super::host::Interrupted>().is_some() {
            return Failure::Cancelled;
        }
        if let Some(trap) = err.downcast_ref::<Trap>() {
            return match trap {
                Trap::Interrupt | Trap::OutOfFuel => Failure::OutOfCpu { during_start },
                Trap::StackOverflow => Failure::StackOverflow,
                other => Failure::Trap(other.to_string()),
            };
        }
        if err
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            return Failure::PoolFull(format!(
                "the sandbox's instance pool is full ({err}); raise `sandbox.total_instances` or load fewer modules"
            ));
        }
        Failure::Other(format!("{err:#}"))
    }
}

/// A failed call of a UDF on a batch, naming the UDF and module.
#[derive(Debug, Clone)]
pub struct UdfError {
    pub udf: String,
    pub module: String,
    /// Full sha256 of the module bytes.
    pub digest: String,
    /// Sequence number of the call for this function in this module, from
    /// 1 (not shown to users: constant folding and other queries count).
    pub batch: u64,
    pub rows: usize,
    pub failure: Failure,
    /// The limits in force, to say what to raise.
    pub limits: SandboxLimits,
    /// The key that set each limit in force.
    pub keys: LimitKeys,
}

impl std::error::Error for UdfError {}

impl fmt::Display for UdfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_udf(f)?;
        self.write_failure(f)
    }
}

/// The rows of one call that reported an error, with what they share (the
/// function, its module, the limits in force) held once for the call
/// rather than once per row: dirty data costs a message per bad row, not
/// a full [`UdfError`].
#[derive(Debug, Default)]
pub struct RowFailures {
    /// The call's error; its `rows` is the call's. `None` while empty.
    call: Option<Box<UdfError>>,
    /// Row (of the call's input) and the guest's message, in the order
    /// reported.
    rows: Vec<(usize, String)>,
}

impl RowFailures {
    /// Row `row` of the call `call` failed with `message`.
    pub(crate) fn push(&mut self, call: &UdfError, row: usize, message: String) {
        if self.call.is_none() {
            self.call = Some(Box::new(UdfError {
                failure: Failure::Cancelled,
                ..call.clone()
            }));
        }
        self.rows.push((row, message));
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// The failing rows, as reported.
    pub fn rows(&self) -> impl Iterator<Item = usize> + '_ {
        self.rows.iter().map(|(row, _)| *row)
    }

    /// The function whose rows failed.
    pub fn udf(&self) -> Option<&str> {
        self.call.as_deref().map(|c| c.udf.as_str())
    }

    /// Each failing row with what [`UdfError`] says of it: the function,
    /// its module, the row and the guest's message.
    pub fn describe(&self) -> impl Iterator<Item = (usize, String)> + '_ {
        self.rows.iter().filter_map(|(row, message)| {
            let call = self.call.as_deref()?;
            let mut text = String::new();
            call.write_udf(&mut text)
                .and_then(|()| call.write_row_error(&mut text, *row, message))
                .ok()?;
            Some((*row, text))
        })
    }
}

impl UdfError {
    /// What happened and what to change, without naming the UDF.
    pub fn describe_failure(&self) -> String {
        let mut s = String::new();
        let _ = self.write_failure(&mut s);
        s
    }

    /// "udf `name` (module `label`, sha256 short) ": what every message of
    /// the function starts with.
    fn write_udf(&self, f: &mut impl fmt::Write) -> fmt::Result {
        let short = self.digest.get(..12).unwrap_or(&self.digest);
        write!(
            f,
            "udf `{}` (module `{}`, sha256 {short}) ",
            self.udf, self.module
        )
    }

    fn write_row_error(&self, f: &mut impl fmt::Write, row: usize, message: &str) -> fmt::Result {
        write!(
            f,
            "failed on row {row} (from 0) of a batch of {} rows: {message}",
            self.rows
        )
    }

    fn write_failure(&self, f: &mut impl fmt::Write) -> fmt::Result {
        // Rows count from 0 within the batch the function was given. No
        // batch number: calls are counted per module, planning-time
        // constant folding included, which tells a user nothing.
        let batch = format!("on a batch of {} rows", self.rows);
        let l = &self.limits;
        match &self.failure {
            Failure::OutOfCpu { during_start } => {
                let budget = match l.cpu_meter {
                    CpuMeter::Epoch => format!("{} ms", l.cpu_ms_per_batch),
                    CpuMeter::Fuel => format!("{} fuel units", l.fuel_per_batch),
                };
                let key = self.keys.cpu(l.cpu_meter);
                if *during_start {
                    write!(
                        f,
                        "ran out of CPU ({budget}) in its start function while being instantiated; the module's start code must terminate quickly"
                    )
                } else {
                    write!(
                        f,
                        "ran out of CPU after {budget} {batch}; raise `{key}`, send smaller batches, or make the function cheaper (an endless loop?)"
                    )
                }
            }
            Failure::TenantMemory { tenant, limit } => write!(
                f,
                "ran out of memory {batch}: the instances of tenant `{tenant}` together hold its `memory_total_bytes` ({limit} bytes); raise it in the policy or run fewer instances"
            ),
            Failure::CircuitOpen { retry_in_ms } => write!(
                f,
                "was not called {batch}: circuit open, the function itself failed (trap, out of CPU, memory or stack, invalid output) in too many batches; a probe runs in {retry_in_ms} ms (tenant policy `breaker_failures`, `breaker_failure_ratio`, `breaker_cooldown_ms`; `breaker_action = \"pause\"` holds records instead of dead-lettering them)"
            ),
            Failure::OutOfMemory { requested, limit } => write!(
                f,
                "ran out of memory {batch}: it asked for {requested} bytes of linear memory, the limit is {limit}; raise `{}` or make the function use less memory",
                self.keys.memory_bytes
            ),
            Failure::TableLimit { requested, limit } => write!(
                f,
                "grew a table to {requested} elements {batch}, the limit is {limit}; raise `sandbox.table_elements`"
            ),
            Failure::StackOverflow => write!(
                f,
                "overflowed its {} KiB wasm stack {batch} (deep or endless recursion); raise `sandbox.wasm_stack_bytes` or recurse less",
                l.wasm_stack_bytes / 1024
            ),
            Failure::RowError { row, message } => self.write_row_error(f, *row, message),
            Failure::RowErrors(partial) => {
                let (row, message) = partial.errors.first().cloned().unwrap_or_default();
                self.write_row_error(f, row, &message)?;
                match partial.errors.len() {
                    0 | 1 => Ok(()),
                    n => write!(f, " (and {} more rows)", n - 1),
                }
            }
            Failure::Panic { row, message } => match row {
                Some(row) => write!(
                    f,
                    "panicked on row {row} (from 0) of a batch of {} rows: {message}",
                    self.rows
                ),
                None => write!(f, "panicked {batch}: {message}"),
            },
            Failure::InvalidOutput(reason) => write!(
                f,
                "returned invalid output {batch}: {reason}; this is a bug in the UDF or its SDK, the output was discarded"
            ),
            Failure::Trap(trap) => write!(f, "trapped {batch}: {trap}"),
            Failure::InvalidInput(reason) => write!(f, "could not be called {batch}: {reason}"),
            Failure::Busy { waited_ms } => write!(
                f,
                "had no free instance {batch} after waiting {waited_ms} ms; raise `sandbox.instances_per_module`"
            ),
            Failure::PoolFull(reason) => write!(f, "could not run {batch}: {reason}"),
            Failure::Cancelled => write!(
                f,
                "was cancelled {batch}: the request it served ended (its deadline passed, it was cancelled, or its client left), so its remaining guest work was stopped"
            ),
            Failure::Other(reason) => write!(f, "failed {batch}: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of [`RowFailures`] reads exactly as the [`UdfError`] of that
    /// row alone would.
    #[test]
    fn a_collected_row_reads_as_its_own_error() {
        let call = UdfError {
            udf: "parse_cents".into(),
            module: "finance v2".into(),
            digest: "0123456789abcdef".into(),
            batch: 3,
            rows: 8192,
            failure: Failure::Cancelled,
            limits: SandboxLimits::default(),
            keys: LimitKeys::default(),
        };
        let mut failures = RowFailures::default();
        failures.push(&call, 7, "not money: `oops`".into());
        failures.push(&call, 9, "empty".into());
        let alone = |row: usize, message: &str| {
            UdfError {
                failure: Failure::RowError {
                    row,
                    message: message.into(),
                },
                ..call.clone()
            }
            .to_string()
        };
        let described: Vec<(usize, String)> = failures.describe().collect();
        assert_eq!(
            described,
            vec![(7, alone(7, "not money: `oops`")), (9, alone(9, "empty"))]
        );
        assert_eq!(failures.udf(), Some("parse_cents"));
        assert_eq!(failures.rows().collect::<Vec<_>>(), vec![7, 9]);
    }
}
