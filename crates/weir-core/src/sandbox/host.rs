//! Per-instance host state: the resource limiter every store runs under and
//! the host functions (capabilities) a module may import.

use std::sync::Arc;

use wasmtime::{Caller, Extern, Linker, ResourceLimiter, UpdateDeadline};

use super::limits::SandboxLimits;
use crate::abi::IMPORT_MODULE;
use crate::tenant::share::Lent;
use crate::tenant::{Interrupt, Tenant};

/// Longest log line kept, in bytes.
const MAX_LOG_LINE: usize = 1024;

/// A `memory.grow` (or initial memory) beyond the configured limit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("memory grow to {requested} bytes denied (limit {limit} bytes)")]
pub struct MemoryLimitExceeded {
    pub requested: usize,
    pub limit: usize,
}

/// A guest call stopped because the work it served was dropped (its
/// [`Interrupt`] fired): classified as [`super::Failure::Cancelled`].
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the work this call served was cancelled")]
pub struct Interrupted;

/// A table grow beyond the configured limit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("table grow to {requested} elements denied (limit {limit})")]
pub struct TableLimitExceeded {
    pub requested: usize,
    pub limit: usize,
}

/// A grow that would take the tenant's instances past `memory_total_bytes`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("memory grow denied: tenant `{tenant}` is at its total of {limit} bytes")]
pub struct TenantMemoryExceeded {
    pub tenant: String,
    pub limit: u64,
}

/// Data each wasmtime `Store` carries.
pub struct StoreState {
    memory_limit: usize,
    /// The tenant whose aggregate memory this instance counts against, and
    /// how much it holds.
    tenant: Option<Arc<Tenant>>,
    memory_held: u64,
    /// What the last allowed grow reserved (returned if it fails after all).
    pending_grow: u64,
    table_limit: usize,
    log_budget: u32,
    log_per_call: u32,
    /// Log lines dropped by the rate limit in the current call.
    pub logs_dropped: u32,
    /// Name used in log lines (`udf module label`).
    pub label: Arc<str>,
    /// The current call's work's interrupt, checked at every epoch tick,
    /// and the ticks of its CPU budget left after the next one.
    interrupt: Option<Interrupt>,
    ticks_left: u64,
    /// Whether the current call may still lend its slot at a tick.
    may_lend: bool,
}

impl StoreState {
    pub fn new(limits: &SandboxLimits, label: Arc<str>, tenant: Option<Arc<Tenant>>) -> Self {
        let mut memory_limit = limits.memory_bytes;
        if let Some(t) = &tenant {
            memory_limit = memory_limit.min(t.policy().memory_bytes);
        }
        StoreState {
            memory_limit: usize::try_from(memory_limit).unwrap_or(usize::MAX),
            tenant,
            memory_held: 0,
            pending_grow: 0,
            table_limit: usize::try_from(limits.table_elements).unwrap_or(usize::MAX),
            log_budget: limits.log_lines_per_batch,
            log_per_call: limits.log_lines_per_batch,
            logs_dropped: 0,
            label,
            interrupt: None,
            ticks_left: 0,
            may_lend: true,
        }
    }

    /// The epoch deadline of a call of `ticks` ticks (its CPU budget)
    /// serving work with `interrupt`: one tick, so that
    /// [`Self::epoch_reached`] runs at every tick of the call, with the
    /// rest of the budget kept here.
    pub fn watch(&mut self, interrupt: Option<Interrupt>, ticks: u64) -> u64 {
        self.ticks_left = ticks.max(1) - 1;
        self.interrupt = interrupt;
        self.may_lend = true;
        1
    }

    /// The store's epoch-deadline callback, at every tick of a call: the
    /// call stops when its interrupt fired ([`Interrupted`]) or its budget
    /// is spent (the trap of an exhausted CPU budget). Else, when its
    /// tenant's own work waits for the slot the call runs in, the call
    /// lends it and pauses until that work is done (a tenant's statement
    /// waits a tick for its pipeline's batch, not the batch; the pause
    /// does not count against the budget); then it runs one more tick.
    pub fn epoch_reached(&mut self) -> wasmtime::Result<UpdateDeadline> {
        if self.interrupt.as_ref().is_some_and(Interrupt::fired) {
            return Err(wasmtime::Error::new(Interrupted));
        }
        if self.ticks_left == 0 {
            return Ok(UpdateDeadline::Interrupt);
        }
        if let Some(tenant) = self.tenant.as_ref().filter(|_| self.may_lend)
            && matches!(tenant.lend_slot(), Lent::TookBack | Lent::Unclaimed)
        {
            // What waited needed what this call holds (its module's last
            // instance), or did not come: lending again would only stall
            // the call.
            self.may_lend = false;
        }
        if self.interrupt.as_ref().is_some_and(Interrupt::fired) {
            return Err(wasmtime::Error::new(Interrupted));
        }
        self.ticks_left -= 1;
        Ok(UpdateDeadline::Continue(1))
    }

    /// Resets per-call budgets.
    pub fn begin_call(&mut self) {
        self.log_budget = self.log_per_call;
        self.logs_dropped = 0;
    }
}

impl Drop for StoreState {
    fn drop(&mut self) {
        if let Some(t) = &self.tenant {
            t.release_memory(self.memory_held);
            t.release_instance();
        }
    }
}

impl ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.pending_grow = 0;
        // wasmtime asks before it checks the module's own declared maximum:
        // past it, `memory.grow` returns -1 and nothing is reserved.
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        if desired > self.memory_limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                requested: desired,
                limit: self.memory_limit,
            }));
        }
        if let Some(t) = &self.tenant {
            let more = desired.saturating_sub(current) as u64;
            t.reserve_memory(more).map_err(|limit| {
                wasmtime::Error::new(TenantMemoryExceeded {
                    tenant: t.name().to_string(),
                    limit,
                })
            })?;
            self.memory_held += more;
            self.pending_grow = more;
        }
        Ok(true)
    }

    /// A grow this limiter allowed failed after all (wasmtime's own
    /// checks): what was reserved for it goes back to the tenant.
    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        let more = std::mem::take(&mut self.pending_grow);
        if let Some(t) = &self.tenant {
            t.release_memory(more);
        }
        self.memory_held = self.memory_held.saturating_sub(more);
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_limit {
            return Err(wasmtime::Error::new(TableLimitExceeded {
                requested: desired,
                limit: self.table_limit,
            }));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }
}

/// `weir.log(ptr: i32, len: i32)`: one line of guest diagnostics, rate limited
/// per call and truncated to [`MAX_LOG_LINE`] bytes.
fn log(mut caller: Caller<'_, StoreState>, ptr: u32, len: u32) {
    if caller.data().log_budget == 0 {
        caller.data_mut().logs_dropped += 1;
        return;
    }
    caller.data_mut().log_budget -= 1;
    let Some(Extern::Memory(memory)) = caller.get_export(crate::abi::EXPORT_MEMORY) else {
        return;
    };
    let data = memory.data(&caller);
    let start = ptr as usize;
    let end = start
        .saturating_add((len as usize).min(MAX_LOG_LINE))
        .min(data.len());
    let line = String::from_utf8_lossy(data.get(start..end).unwrap_or_default());
    // Control characters escaped: a guest writes one line of the server's
    // log, never a forged second one (or terminal escapes).
    let line: String = line
        .trim_end()
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    tracing::info!(target: "weir_core::guest", module = %caller.data().label, "{line}");
}

/// A linker defining exactly the capabilities `limits` grants.
pub fn linker(
    engine: &wasmtime::Engine,
    limits: &SandboxLimits,
) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker = Linker::new(engine);
    if limits.grants("log") {
        linker.func_wrap(IMPORT_MODULE, "log", log)?;
    }
    Ok(linker)
}
