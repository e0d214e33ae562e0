//! At most `sandbox.max_concurrent_compiles` modules compile at once in the
//! process: compiling is seconds of CPU and hundreds of MiB for a large
//! module, and publishers must not take every core. A compile started on a
//! tokio worker announces itself with `block_in_place`, so the runtime
//! moves that worker's other tasks (the API, pipelines) elsewhere.

use parking_lot::{Condvar, Mutex};

pub struct CompileGate {
    running: Mutex<u32>,
    freed: Condvar,
    max: u32,
}

/// Whether the caller is on a worker of a multi-threaded tokio runtime
/// (where blocking must be announced).
pub(crate) fn on_tokio_worker() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

impl CompileGate {
    pub fn new(max: u32) -> Self {
        CompileGate {
            running: Mutex::new(0),
            freed: Condvar::new(),
            max: max.max(1),
        }
    }

    /// Runs `compile` once a slot is free.
    pub fn run<T>(&self, compile: impl FnOnce() -> T) -> T {
        let work = || {
            {
                let mut running = self.running.lock();
                while *running >= self.max {
                    self.freed.wait(&mut running);
                }
                *running += 1;
            }
            let _release = Release(self);
            compile()
        };
        if on_tokio_worker() {
            tokio::task::block_in_place(work)
        } else {
            work()
        }
    }
}

/// Frees the slot, also when compiling panics.
struct Release<'a>(&'a CompileGate);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let mut running = self.0.running.lock();
        *running = running.saturating_sub(1);
        self.0.freed.notify_one();
    }
}
