//! The bounds every guest runs under: one model. `[sandbox]`
//! (config/weir.toml) holds the engine-wide settings and the ceilings; a
//! tenant's policy holds its per-call budgets and capabilities, which apply
//! up to those ceilings. [`SandboxLimits::in_force`] is the one place the
//! two are combined, and it records which key set each value so errors
//! name the key to change. Defaults are documented in `docs/config.md`.

use crate::tenant::budget::{Budget, KNOWN_CAPABILITIES};
use serde::{Deserialize, Serialize};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// How CPU per call is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuMeter {
    /// Wall-clock deadline via wasmtime epoch interruption: a ticker thread
    /// advances the epoch every `epoch_tick_ms`; generated code checks it at
    /// loop headers and function entries. Cheapest (see BENCHMARKS.md).
    Epoch,
    /// Deterministic instruction budget (`fuel_per_batch` units per call).
    Fuel,
}

/// Limits applied to each guest instance and call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxLimits {
    /// Largest module accepted, checked before parsing or compiling.
    pub max_module_bytes: u64,
    /// Most functions a module may define, checked before compiling
    /// (compile time and memory grow with the count).
    pub max_functions: u64,
    /// Largest function body, in bytes, checked before compiling.
    pub max_function_bytes: u64,
    /// Modules compiled at the same time in the process; more wait.
    pub max_concurrent_compiles: u32,
    /// Threads that run guest work (queries, pipelines' transforms, staged
    /// runs, compilation) apart from the API's, and guest calls running at
    /// once in the process, shared between tenants by weight; 0 = one per
    /// core.
    pub guest_threads: u32,
    /// Linear memory per instance (initial size and every `memory.grow`).
    pub memory_bytes: u64,
    /// Elements per table.
    pub table_elements: u64,
    /// Wasm stack per call; deeper recursion traps with a stack overflow.
    pub wasm_stack_bytes: u64,
    /// `epoch` (default) or `fuel`.
    pub cpu_meter: CpuMeter,
    /// CPU deadline per guest call (batch) when `cpu_meter = "epoch"`.
    pub cpu_ms_per_batch: u64,
    /// Instruction budget per guest call when `cpu_meter = "fuel"`.
    pub fuel_per_batch: u64,
    /// Granularity of the epoch deadline.
    pub epoch_tick_ms: u64,
    /// Instances of one module kept for concurrent batches.
    pub instances_per_module: u32,
    /// Instance slots in the whole sandbox (the pooling allocator's size).
    pub total_instances: u32,
    /// Largest output a call may return, in bytes (variable-length types).
    pub max_output_bytes: u64,
    /// Lines a guest may `log` per call; further lines are dropped and counted.
    pub log_lines_per_batch: u32,
    /// Host capabilities granted to modules. Known: `log`.
    pub capabilities: Vec<String>,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            max_module_bytes: 16 * MIB,
            max_functions: 10_000,
            max_function_bytes: MIB,
            max_concurrent_compiles: 1,
            guest_threads: 0,
            memory_bytes: 64 * MIB,
            table_elements: 10_000,
            wasm_stack_bytes: 512 * KIB,
            cpu_meter: CpuMeter::Epoch,
            cpu_ms_per_batch: 1_000,
            fuel_per_batch: 2_000_000_000,
            epoch_tick_ms: 5,
            instances_per_module: 4,
            total_instances: 64,
            max_output_bytes: 256 * MIB,
            log_lines_per_batch: 16,
            capabilities: vec!["log".to_string()],
        }
    }
}

/// Which configuration key set each limit in force: what an error tells
/// the user to raise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitKeys {
    pub cpu_ms_per_batch: String,
    pub fuel_per_batch: String,
    pub memory_bytes: String,
    /// The tenant's `capabilities` key, when a tenant's policy applies.
    tenant_capabilities: Option<String>,
    /// What `[sandbox] capabilities` allows at all.
    sandbox_capabilities: Vec<String>,
}

impl Default for LimitKeys {
    fn default() -> Self {
        LimitKeys {
            cpu_ms_per_batch: "sandbox.cpu_ms_per_batch".into(),
            fuel_per_batch: "sandbox.fuel_per_batch".into(),
            memory_bytes: "sandbox.memory_bytes".into(),
            tenant_capabilities: None,
            sandbox_capabilities: Vec::new(),
        }
    }
}

impl LimitKeys {
    /// The key that withholds `capability`.
    pub fn capability(&self, capability: &str) -> String {
        match &self.tenant_capabilities {
            Some(key) if self.sandbox_capabilities.iter().any(|c| c == capability) => key.clone(),
            _ => "sandbox.capabilities".to_string(),
        }
    }

    /// The key of the CPU budget under `meter`.
    pub fn cpu(&self, meter: CpuMeter) -> &str {
        match meter {
            CpuMeter::Epoch => &self.cpu_ms_per_batch,
            CpuMeter::Fuel => &self.fuel_per_batch,
        }
    }
}

impl SandboxLimits {
    /// Checks ranges; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, key: &str, rule: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("sandbox.{key} {rule}"))
            }
        };
        check(
            (1024..=1024 * MIB).contains(&self.max_module_bytes),
            "max_module_bytes",
            "must be between 1 KiB and 1 GiB",
        )?;
        check(
            (1..=1_000_000).contains(&self.max_functions),
            "max_functions",
            "must be between 1 and 1000000",
        )?;
        check(
            self.max_function_bytes >= 1024,
            "max_function_bytes",
            "must be at least 1 KiB",
        )?;
        check(
            (1..=64).contains(&self.max_concurrent_compiles),
            "max_concurrent_compiles",
            "must be between 1 and 64",
        )?;
        check(
            self.guest_threads <= 256,
            "guest_threads",
            "must be at most 256 (0 = one per core)",
        )?;
        check(
            (64 * KIB..=4096 * MIB).contains(&self.memory_bytes),
            "memory_bytes",
            "must be between 64 KiB (one wasm page) and 4 GiB",
        )?;
        check(
            (16 * KIB..=8 * MIB).contains(&self.wasm_stack_bytes),
            "wasm_stack_bytes",
            "must be between 16 KiB and 8 MiB (host threads keep headroom above it)",
        )?;
        check(
            self.cpu_ms_per_batch >= 1,
            "cpu_ms_per_batch",
            "must be at least 1",
        )?;
        check(
            self.fuel_per_batch >= 1,
            "fuel_per_batch",
            "must be at least 1",
        )?;
        check(
            (1..=1000).contains(&self.epoch_tick_ms),
            "epoch_tick_ms",
            "must be between 1 and 1000",
        )?;
        check(
            self.instances_per_module >= 1,
            "instances_per_module",
            "must be at least 1",
        )?;
        check(
            (1..=10_000).contains(&self.total_instances),
            "total_instances",
            "must be between 1 and 10000",
        )?;
        check(
            self.max_output_bytes >= 1024,
            "max_output_bytes",
            "must be at least 1 KiB",
        )?;
        check(
            self.table_elements <= 10_000_000,
            "table_elements",
            "must be at most 10000000",
        )?;
        for cap in &self.capabilities {
            if !KNOWN_CAPABILITIES.contains(&cap.as_str()) {
                return Err(format!(
                    "sandbox.capabilities lists unknown capability `{cap}`; known: {}",
                    KNOWN_CAPABILITIES.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Guest threads in force: `guest_threads`, or one per core when 0.
    pub fn guest_threads(&self) -> usize {
        match self.guest_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        }
    }

    /// Epoch ticks a call may run before it is interrupted.
    pub fn deadline_ticks(&self) -> u64 {
        self.cpu_ms_per_batch.div_ceil(self.epoch_tick_ms).max(1)
    }

    /// The limits in force for a module: these (`[sandbox]`) alone without
    /// a tenant; with one, its budget up to these values as ceilings and
    /// the capabilities both grant.
    pub fn in_force(&self, budget: Option<&Budget>) -> (SandboxLimits, LimitKeys) {
        let mut limits = self.clone();
        let mut keys = LimitKeys {
            sandbox_capabilities: self.capabilities.clone(),
            ..LimitKeys::default()
        };
        let Some(b) = budget else {
            return (limits, keys);
        };
        let pick = |field: &'static str, wanted: u64, ceiling: u64, key: &mut String| {
            if wanted <= ceiling {
                *key = b.key(field);
                wanted
            } else {
                ceiling
            }
        };
        limits.cpu_ms_per_batch = pick(
            "cpu_ms_per_batch",
            b.cpu_ms_per_batch,
            self.cpu_ms_per_batch,
            &mut keys.cpu_ms_per_batch,
        );
        limits.fuel_per_batch = pick(
            "fuel_per_batch",
            b.fuel_per_batch,
            self.fuel_per_batch,
            &mut keys.fuel_per_batch,
        );
        limits.memory_bytes = pick(
            "memory_bytes",
            b.memory_bytes,
            self.memory_bytes,
            &mut keys.memory_bytes,
        );
        limits.capabilities = b
            .capabilities
            .iter()
            .filter(|c| self.grants(c))
            .cloned()
            .collect();
        keys.tenant_capabilities = Some(b.key("capabilities"));
        (limits, keys)
    }

    pub fn grants(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}
