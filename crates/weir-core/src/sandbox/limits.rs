//! The bounds every guest runs under. Defaults are documented in
//! `docs/config.md` and `config/weir.toml`.

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

/// Host capabilities a module may import (from the `weir` import module).
pub const KNOWN_CAPABILITIES: &[&str] = &["log"];

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

    /// Epoch ticks a call may run before it is interrupted.
    pub fn deadline_ticks(&self) -> u64 {
        self.cpu_ms_per_batch.div_ceil(self.epoch_tick_ms).max(1)
    }

    pub fn grants(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}
