//! Live guest instances and the per-module pool that reuses them.
//!
//! An instance serves one batch at a time and is reused for the next; an
//! instance whose call trapped (or returned invalid output) is dropped, never
//! reused, and its pooling-allocator slot is reset for the next instantiation.

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use wasmtime::{Memory, Store, TypedFunc};

use super::error::Failure;
use super::host::StoreState;
use super::limits::{CpuMeter, SandboxLimits};
use super::module::UdfModule;
use crate::abi::{
    self, EXPORT_ALLOC, EXPORT_INIT, EXPORT_MEMORY, EXPORT_PANIC_INFO, PANIC_INFO_SIZE,
};
use crate::marshal::input::InputPlan;
use crate::marshal::output::{CallResult, MAX_ERROR_MESSAGE, read_result};
use crate::marshal::read_u32;
use crate::tenant::Interrupt;

/// How long a call waits for a busy module's instance to come free.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);

/// Headroom kept on the host stack beyond the wasm stack limit.
const HOST_STACK_HEADROOM: usize = 256 * 1024;

pub(crate) struct GuestInstance {
    store: Store<StoreState>,
    memory: Memory,
    alloc: TypedFunc<u32, u32>,
    funcs: Vec<TypedFunc<(u32, u32), u32>>,
    /// The exports of each aggregate of the manifest.
    aggregates: Vec<AggregateFuncs>,
    panic_info: Option<TypedFunc<(), u32>>,
}

/// The exports one aggregate is made of (docs/abi.md §9).
struct AggregateFuncs {
    update: TypedFunc<(u32, u32, u32), u32>,
    merge: TypedFunc<(u32, u32, u32), u32>,
    retract: Option<TypedFunc<(u32, u32, u32), u32>>,
    state: TypedFunc<(u32, u32), u32>,
    evaluate: TypedFunc<(u32, u32), u32>,
}

/// Which folding export of an aggregate a batch goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    Update,
    Merge,
    Retract,
}

/// Which emitting export of an aggregate is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    State,
    Evaluate,
}

/// Arms the per-call CPU budget, and with the epoch meter the interrupt
/// of the work the call serves (`tenant::interrupt`): a call of work
/// already dropped does not start.
fn arm(store: &mut Store<StoreState>, limits: &SandboxLimits) -> Result<(), Failure> {
    match limits.cpu_meter {
        CpuMeter::Epoch => {
            let interrupt = Interrupt::current();
            if interrupt.as_ref().is_some_and(Interrupt::fired) {
                return Err(Failure::Cancelled);
            }
            let ticks = store.data_mut().watch(interrupt, limits.deadline_ticks());
            store.set_epoch_deadline(ticks);
            Ok(())
        }
        CpuMeter::Fuel => store
            .set_fuel(limits.fuel_per_batch)
            .map_err(|e| Failure::Other(format!("cannot set fuel: {e}"))),
    }
}

/// Runs `f` with at least the wasm stack limit plus headroom available on the
/// host stack, switching to a fresh stack segment when the thread has less.
fn with_stack<R>(limits: &SandboxLimits, f: impl FnOnce() -> R) -> R {
    let need = limits.wasm_stack_bytes as usize + HOST_STACK_HEADROOM;
    stacker::maybe_grow(need, need * 2, f)
}

impl GuestInstance {
    /// Instantiates `module` with limits and a CPU deadline installed first,
    /// so that a start function is bounded too.
    pub fn new(module: &UdfModule) -> Result<Self, Failure> {
        let limits = module.limits();
        // The tenant's share of the process's instance slots; the store
        // gives it back when dropped.
        if let Some(t) = module.tenant()
            && let Err(limit) = t.reserve_instance()
        {
            return Err(Failure::PoolFull(format!(
                "tenant `{}` holds its `{}` ({limit}) instances; raise it, or run fewer modules or pipelines",
                t.name(),
                t.policy().key("max_instances")
            )));
        }
        let state = StoreState::new(limits, module.label_arc(), module.tenant().cloned());
        let mut store = Store::new(module.engine(), state);
        store.limiter(|state| state);
        store.epoch_deadline_callback(|mut ctx| ctx.data_mut().epoch_reached());
        arm(&mut store, limits)?;
        let instance = with_stack(limits, || module.instance_pre().instantiate(&mut store))
            .map_err(|e| Failure::classify(&e, true))?;
        let missing = |what: &str| {
            Failure::Other(format!("export `{what}` is missing or has the wrong type"))
        };
        let memory = instance
            .get_memory(&mut store, EXPORT_MEMORY)
            .ok_or_else(|| missing(EXPORT_MEMORY))?;
        let alloc = instance
            .get_typed_func::<u32, u32>(&mut store, EXPORT_ALLOC)
            .map_err(|_| missing(EXPORT_ALLOC))?;
        let mut funcs = Vec::with_capacity(module.manifest().functions.len());
        for decl in &module.manifest().functions {
            let func = instance
                .get_typed_func::<(u32, u32), u32>(&mut store, decl.export_name())
                .map_err(|_| missing(decl.export_name()))?;
            funcs.push(func);
        }
        let mut aggregates = Vec::with_capacity(module.manifest().aggregates.len());
        for decl in &module.manifest().aggregates {
            use crate::abi::aggregate::{EVALUATE, MERGE, RETRACT, STATE, UPDATE};
            let mut fold = |suffix: &str| {
                let name = decl.export(suffix);
                instance
                    .get_typed_func::<(u32, u32, u32), u32>(&mut store, &name)
                    .map_err(|_| missing(&name))
            };
            let (update, merge) = (fold(UPDATE)?, fold(MERGE)?);
            let retract = if decl.retract {
                Some(fold(RETRACT)?)
            } else {
                None
            };
            let mut emit = |suffix: &str| {
                let name = decl.export(suffix);
                instance
                    .get_typed_func::<(u32, u32), u32>(&mut store, &name)
                    .map_err(|_| missing(&name))
            };
            aggregates.push(AggregateFuncs {
                update,
                merge,
                retract,
                state: emit(STATE)?,
                evaluate: emit(EVALUATE)?,
            });
        }
        let panic_info = instance
            .get_typed_func::<(), u32>(&mut store, EXPORT_PANIC_INFO)
            .ok();
        let mut guest = GuestInstance {
            store,
            memory,
            alloc,
            funcs,
            aggregates,
            panic_info,
        };
        if let Some(data) = module.init_data() {
            let init = instance
                .get_typed_func::<(u32, u32), u32>(&mut guest.store, EXPORT_INIT)
                .map_err(|_| missing(EXPORT_INIT))?;
            guest.initialise(init, data, limits)?;
        }
        Ok(guest)
    }

    /// Hands the module's `weir.init` bytes to `weir_init` (docs/abi.md
    /// §10), under a CPU budget of its own; a refusal carries the guest's
    /// message.
    fn initialise(
        &mut self,
        init: TypedFunc<(u32, u32), u32>,
        data: &[u8],
        limits: &SandboxLimits,
    ) -> Result<(), Failure> {
        arm(&mut self.store, limits)?;
        with_stack(limits, || {
            let len = data.len();
            let base = self
                .alloc
                .call(&mut self.store, len as u32)
                .map_err(|e| Failure::classify(&e, true))?;
            let mem = self.memory.data_mut(&mut self.store);
            let Some(dest) = mem.get_mut(base as usize..(base as usize).saturating_add(len)) else {
                return Err(Failure::InvalidOutput(format!(
                    "`{EXPORT_ALLOC}({len})` returned {base:#x}, which does not leave {len} bytes inside the guest's memory"
                )));
            };
            dest.copy_from_slice(data);
            let out = init
                .call(&mut self.store, (base, len as u32))
                .map_err(|e| Failure::classify(&e, true))?;
            let mem = self.memory.data(&self.store);
            let field = |i: usize| read_u32(mem, (out as usize).saturating_add(4 * i));
            match field(0) {
                Some(abi::STATUS_OK) => Ok(()),
                Some(abi::STATUS_ROW_ERROR) => {
                    let (msg, len) = (field(7).unwrap_or(0), field(8).unwrap_or(0));
                    let len = (len as usize).min(MAX_ERROR_MESSAGE);
                    let text = mem
                        .get(msg as usize..(msg as usize).saturating_add(len))
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    Err(Failure::Other(format!(
                        "`{EXPORT_INIT}` refused its program: {text}"
                    )))
                }
                _ => Err(Failure::InvalidOutput(format!(
                    "`{EXPORT_INIT}` returned {out:#x}, not the address of a result descriptor"
                ))),
            }
        })
    }

    /// Runs function `index` on one batch.
    pub fn invoke(
        &mut self,
        module: &UdfModule,
        limits: &SandboxLimits,
        index: usize,
        plan: &InputPlan,
        rows: usize,
    ) -> Result<CallResult, Failure> {
        let decl = &module.manifest().functions[index];
        self.store.data_mut().begin_call();
        arm(&mut self.store, limits)?;
        with_stack(limits, || {
            let base = self.write_input(plan, limits)?;
            let out = self.funcs[index]
                .call(&mut self.store, (base, rows as u32))
                .map_err(|e| self.trap(e, limits))?;
            let mem = self.memory.data(&self.store);
            read_result(mem, out, decl.ret, rows, limits.max_output_bytes as usize)
                .map_err(|e| Failure::InvalidOutput(e.0))
        })
    }

    /// Bytes of linear memory the instance holds now (an aggregate's state
    /// lives there between calls).
    pub fn memory_bytes(&self) -> usize {
        self.memory.data_size(&self.store)
    }

    /// Folds one batch into aggregate `index`'s groups: `plan` holds the
    /// group-id column (uint32) first, then the arguments (or the state
    /// columns, for [`Fold::Merge`]). `Ok(Some((row, message)))` is the
    /// guest's own error on a row.
    pub fn invoke_fold(
        &mut self,
        limits: &SandboxLimits,
        index: usize,
        fold: Fold,
        plan: &InputPlan,
        rows: usize,
        groups: usize,
    ) -> Result<Option<(usize, String)>, Failure> {
        let funcs = &self.aggregates[index];
        let func = match fold {
            Fold::Update => funcs.update.clone(),
            Fold::Merge => funcs.merge.clone(),
            Fold::Retract => funcs.retract.clone().ok_or_else(|| {
                Failure::InvalidInput("the aggregate does not export `__retract`".to_string())
            })?,
        };
        self.store.data_mut().begin_call();
        arm(&mut self.store, limits)?;
        with_stack(limits, || {
            let base = self.write_input(plan, limits)?;
            let out = func
                .call(&mut self.store, (base, rows as u32, groups as u32))
                .map_err(|e| self.trap(e, limits))?;
            let mem = self.memory.data(&self.store);
            crate::marshal::output::read_status(mem, out, rows)
                .map_err(|e| Failure::InvalidOutput(e.0))
        })
    }

    /// Calls aggregate `index`'s `__state` or `__evaluate` export for groups
    /// `0..groups` and validates the columns it returns (`types`, one
    /// result descriptor each, 40 bytes apart). With `consume`, the guest
    /// drops those groups and renumbers the rest from 0.
    pub fn invoke_emit(
        &mut self,
        limits: &SandboxLimits,
        index: usize,
        emit: Emit,
        types: &[crate::abi::AbiType],
        groups: usize,
        consume: bool,
    ) -> Result<Vec<datafusion::arrow::array::ArrayRef>, Failure> {
        let funcs = &self.aggregates[index];
        let func = match emit {
            Emit::State => funcs.state.clone(),
            Emit::Evaluate => funcs.evaluate.clone(),
        };
        self.store.data_mut().begin_call();
        arm(&mut self.store, limits)?;
        with_stack(limits, || {
            let out = func
                .call(&mut self.store, (groups as u32, u32::from(consume)))
                .map_err(|e| self.trap(e, limits))?;
            let mem = self.memory.data(&self.store);
            let mut columns = Vec::with_capacity(types.len());
            for (i, ty) in types.iter().enumerate() {
                let at = (out as usize)
                    .checked_add(i * abi::RESULT_SIZE)
                    .filter(|&p| p <= u32::MAX as usize)
                    .ok_or_else(|| {
                        Failure::InvalidOutput(format!("result descriptor {i} lies outside memory"))
                    })?;
                match read_result(
                    mem,
                    at as u32,
                    *ty,
                    groups,
                    limits.max_output_bytes as usize,
                )
                .map_err(|e| Failure::InvalidOutput(format!("column {i}: {}", e.0)))?
                {
                    CallResult::Array(array) => columns.push(array),
                    CallResult::RowError { row, message } => {
                        return Err(Failure::RowError { row, message });
                    }
                    CallResult::RowErrors { errors, .. } => {
                        let (row, message) = errors.into_iter().next().unwrap_or_default();
                        return Err(Failure::RowError { row, message });
                    }
                }
            }
            Ok(columns)
        })
    }

    /// `weir_alloc`s room for `plan` and writes it there; the region's base.
    fn write_input(&mut self, plan: &InputPlan, limits: &SandboxLimits) -> Result<u32, Failure> {
        let total = plan.total_bytes();
        let base = self
            .alloc
            .call(&mut self.store, total as u32)
            .map_err(|e| self.trap(e, limits))?;
        let region = base as usize..(base as usize).saturating_add(total);
        if base == 0 || !(base as usize).is_multiple_of(abi::BUFFER_ALIGN) {
            return Err(Failure::InvalidOutput(format!(
                "`{EXPORT_ALLOC}({total})` returned {base:#x}, not a non-null {}-aligned address",
                abi::BUFFER_ALIGN
            )));
        }
        let mem = self.memory.data_mut(&mut self.store);
        let Some(dest) = mem.get_mut(region) else {
            return Err(Failure::InvalidOutput(format!(
                "`{EXPORT_ALLOC}({total})` returned {base:#x}, which does not leave {total} bytes inside the guest's memory"
            )));
        };
        plan.write(dest, base);
        Ok(base)
    }

    /// Classifies a trap, asking the guest why it panicked when it can say.
    fn trap(&mut self, err: wasmtime::Error, limits: &SandboxLimits) -> Failure {
        let failure = Failure::classify(&err, false);
        if !matches!(failure, Failure::Trap(_)) {
            return failure;
        }
        match self.panic_message(limits) {
            Some((row, message)) => Failure::Panic { row, message },
            None => failure,
        }
    }

    /// Calls the optional `weir_panic_info` export of a trapped instance
    /// (which is discarded afterwards) under a small CPU budget.
    fn panic_message(&mut self, limits: &SandboxLimits) -> Option<(Option<usize>, String)> {
        let info = self.panic_info.clone()?;
        match limits.cpu_meter {
            CpuMeter::Fuel => self.store.set_fuel(1_000_000).ok()?,
            CpuMeter::Epoch => {
                let ticks = self.store.data_mut().watch(None, 2);
                self.store.set_epoch_deadline(ticks);
            }
        }
        let ptr = info.call(&mut self.store, ()).ok()?;
        if ptr == 0 {
            return None;
        }
        let mem = self.memory.data(&self.store);
        let start = ptr as usize;
        let rec = mem.get(start..start.checked_add(PANIC_INFO_SIZE)?)?;
        let (row, msg, len) = (read_u32(rec, 0)?, read_u32(rec, 4)?, read_u32(rec, 8)?);
        let len = (len as usize).min(MAX_ERROR_MESSAGE);
        let bytes = mem.get(msg as usize..(msg as usize).checked_add(len)?)?;
        let row = (row != u32::MAX).then_some(row as usize);
        Some((row, String::from_utf8_lossy(bytes).into_owned()))
    }
}

struct PoolState {
    idle: Vec<GuestInstance>,
    live: usize,
}

/// Idle instances of one module, at most `max` alive at once.
pub(crate) struct InstancePool {
    state: Mutex<PoolState>,
    freed: Condvar,
    max: usize,
}

impl InstancePool {
    pub fn new(max: usize) -> Self {
        InstancePool {
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                live: 0,
            }),
            freed: Condvar::new(),
            max,
        }
    }

    /// An idle instance, a new one, or (when `max` are busy) the next freed.
    pub fn checkout(&self, module: &UdfModule) -> Result<GuestInstance, Failure> {
        let started = Instant::now();
        let mut state = self.state.lock();
        loop {
            if let Some(instance) = state.idle.pop() {
                return Ok(instance);
            }
            if state.live < self.max {
                state.live += 1;
                drop(state);
                return GuestInstance::new(module).inspect_err(|_| self.release_slot());
            }
            if self
                .freed
                .wait_for(&mut state, CHECKOUT_TIMEOUT)
                .timed_out()
            {
                return Err(Failure::Busy {
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
    }

    pub fn checkin(&self, instance: GuestInstance) {
        self.state.lock().idle.push(instance);
        self.freed.notify_one();
    }

    /// Drops a poisoned instance and frees its slot.
    pub fn discard(&self, instance: GuestInstance) {
        drop(instance);
        self.release_slot();
    }

    fn release_slot(&self) {
        self.state.lock().live -= 1;
        self.freed.notify_one();
    }

    /// Instances alive (idle or busy).
    pub fn live(&self) -> usize {
        self.state.lock().live
    }
}
