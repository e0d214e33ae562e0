//! The shared wasmtime engines, their pooling allocator and the epoch ticker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use super::cache::CodeCache;
use super::error::LoadError;
use super::limits::{CpuMeter, SandboxLimits};

/// Deterministic modules run on an engine with NaN canonicalization; modules
/// whose functions are all non-deterministic run on one without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    Deterministic,
    Free,
}

/// Owns the engines, their instance pools and the epoch ticker. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    pub(crate) inner: Arc<SandboxInner>,
}

pub(crate) struct SandboxInner {
    pub limits: SandboxLimits,
    deterministic: OnceLock<Engine>,
    free: OnceLock<Engine>,
    pub cache: Option<CodeCache>,
    /// Modules compiled in this process, by engine and code digest: the
    /// JavaScript runtime under every JavaScript program is compiled once.
    pub compiled: moka::sync::Cache<(EngineKind, String), wasmtime::Module>,
    /// Bounds concurrent compilation (`sandbox.max_concurrent_compiles`).
    pub compile_gate: super::compile_gate::CompileGate,
    stop: Arc<AtomicBool>,
    init: parking_lot::Mutex<()>,
}

impl Drop for SandboxInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Compiled modules a sandbox keeps in memory (see `SandboxInner::compiled`).
const COMPILED_IN_MEMORY: u64 = 16;

/// Builder-style options for a [`Sandbox`].
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    pub limits: SandboxLimits,
    /// Where compiled code is cached; `None` disables the disk cache.
    pub cache_dir: Option<std::path::PathBuf>,
}

impl SandboxOptions {
    /// Default limits and the default cache directory.
    pub fn with_default_cache() -> Self {
        SandboxOptions {
            limits: SandboxLimits::default(),
            cache_dir: CodeCache::default_dir(),
        }
    }
}

impl Sandbox {
    /// A sandbox with default limits and the default on-disk code cache.
    pub fn new() -> Result<Self, LoadError> {
        Self::with_options(SandboxOptions::with_default_cache())
    }

    pub fn with_options(options: SandboxOptions) -> Result<Self, LoadError> {
        options.limits.validate().map_err(LoadError::Config)?;
        let cache = match options.cache_dir {
            Some(dir) => match CodeCache::open(&dir) {
                Ok(cache) => Some(cache),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "compiled-code cache disabled: {e}");
                    None
                }
            },
            None => None,
        };
        Ok(Sandbox {
            inner: Arc::new(SandboxInner {
                compile_gate: super::compile_gate::CompileGate::new(
                    options.limits.max_concurrent_compiles,
                ),
                limits: options.limits,
                deterministic: OnceLock::new(),
                free: OnceLock::new(),
                cache,
                compiled: moka::sync::Cache::new(COMPILED_IN_MEMORY),
                stop: Arc::new(AtomicBool::new(false)),
                init: parking_lot::Mutex::new(()),
            }),
        })
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.inner.limits
    }

    /// The engine of `kind`, created (with its ticker) on first use.
    pub(crate) fn engine(&self, kind: EngineKind) -> Result<&Engine, LoadError> {
        let cell = match kind {
            EngineKind::Deterministic => &self.inner.deterministic,
            EngineKind::Free => &self.inner.free,
        };
        if let Some(engine) = cell.get() {
            return Ok(engine);
        }
        let _guard = self.inner.init.lock();
        if let Some(engine) = cell.get() {
            return Ok(engine);
        }
        let engine = build_engine(&self.inner.limits, kind)?;
        if self.inner.limits.cpu_meter == CpuMeter::Epoch {
            start_ticker(
                engine.clone(),
                Duration::from_millis(self.inner.limits.epoch_tick_ms),
                self.inner.stop.clone(),
            )
            .map_err(|e| LoadError::Config(format!("cannot start the epoch ticker: {e}")))?;
        }
        Ok(cell.get_or_init(|| engine))
    }
}

fn build_engine(limits: &SandboxLimits, kind: EngineKind) -> Result<Engine, LoadError> {
    let mut config = Config::new();
    config
        .cranelift_opt_level(OptLevel::Speed)
        .cranelift_nan_canonicalization(kind == EngineKind::Deterministic)
        .relaxed_simd_deterministic(true)
        .max_wasm_stack(limits.wasm_stack_bytes as usize)
        .epoch_interruption(limits.cpu_meter == CpuMeter::Epoch)
        .consume_fuel(limits.cpu_meter == CpuMeter::Fuel)
        .wasm_memory64(false)
        .wasm_multi_memory(false);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(limits.total_instances)
        .total_memories(limits.total_instances)
        .total_tables(limits.total_instances)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .table_elements(limits.table_elements as usize)
        .max_memory_size(limits.memory_bytes as usize);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
        .map_err(|e| LoadError::Config(format!("cannot create the wasm engine: {e:#}")))
}

/// Advances the engine's epoch every `tick` until `stop` is set.
fn start_ticker(engine: Engine, tick: Duration, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .map(drop)
}
