//! Loading a module: size check → parse → manifest → imports → compile
//! with the code cache → exports → warm-up, under a tenant's limits.

use super::*;

impl UdfModule {
    /// Instantiates one instance now, so that a module whose start function
    /// loops or whose memory or tables exceed the limits is refused at load.
    /// Start functions and `weir_init` are guest code: they run in one of
    /// the tenant's guest slots, within its `max_concurrent_calls`.
    pub(super) fn warm_up(&self) -> Result<(), LoadError> {
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
            crate::sandbox::inspect::InspectError::Parse(reason)
            | crate::sandbox::inspect::InspectError::Init(reason) => not_wasm(reason),
            crate::sandbox::inspect::InspectError::Manifest(error) => LoadError::Manifest {
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
        // One compile per code digest at a time: a load that finds the same
        // code compiling (a script language's runtime warming up, or
        // another tenant's first function) waits for it instead of
        // compiling it again.
        let compiled_here = std::cell::Cell::new(None);
        let module = self
            .inner
            .compiled
            .try_get_with(memo, || {
                let (module, from_cache) = match self.inner.cache.as_ref().filter(|_| !trial) {
                    Some(cache) => cache
                        .get_or_compile(&engine, &info.code_digest, compile)
                        .map_err(compile_err)?,
                    None => (compile().map_err(compile_err)?, false),
                };
                compiled_here.set(Some(from_cache));
                Ok::<_, LoadError>(module)
            })
            .map_err(|e| match &*e {
                LoadError::Compile { label, reason } => LoadError::Compile {
                    label: label.clone(),
                    reason: reason.clone(),
                },
                other => LoadError::Compile {
                    label: label.to_string(),
                    reason: other.to_string(),
                },
            })?;
        // From memory (`None`: compiled by another load, or earlier), from
        // the disk cache, or compiled now.
        let from_cache = compiled_here.get().unwrap_or(true);
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

pub(super) fn label_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

pub(super) fn check_exports(
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
