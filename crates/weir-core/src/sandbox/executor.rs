//! [`GuestExecutor`]: the threads guest work runs on, apart from the
//! threads that answer the API.
//!
//! Everything that may call a guest or compile a module — queries,
//! pipelines' transforms, staged runs, publishes — runs here, on a tokio
//! runtime of its own with `sandbox.guest_threads` workers. A handler on the
//! API's runtime hands the work over and awaits its result, so a spinning
//! guest or a slow compile never holds a thread that `/healthz` or another
//! tenant's request needs. Which tenant's guest call runs next on these
//! threads is decided by the tenants' fair share
//! ([`crate::tenant::FairShare`]). Dropping the awaited future (a request's
//! deadline, a cancel, a client gone) aborts the work at its next await
//! point and fires its [`Interrupt`]: the guest call in flight, if any,
//! stops at its next epoch tick.

use std::future::Future;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

use crate::tenant::Interrupt;
use crate::tenant::interrupt::FireOnDrop;

/// How much lower the guest threads' CPU priority is than the API's (a
/// `nice` increment: the kernel gives a thread at +5 about a third of the
/// CPU of one at 0 when both want it), so that answering `/healthz` and
/// the API waits less behind guest or query work, while guest work still
/// progresses next to other busy processes.
pub const GUEST_NICE: i32 = 5;

/// Stack of every thread that runs guest code: the wasm stack limit
/// (`sandbox.wasm_stack_bytes`, at most 4 MiB) plus the host's own frames.
pub const HOST_THREAD_STACK: usize = 8 * 1024 * 1024;

/// A dedicated runtime for guest work; see the module docs.
#[derive(Debug)]
pub struct GuestExecutor {
    runtime: Option<Runtime>,
    handle: Handle,
    threads: usize,
}

/// Aborts the task it guards when dropped before the task finished, and
/// stops its guest call in flight (its interrupt fires; after the task
/// finished, firing it changes nothing).
struct AbortOnDrop<T> {
    task: JoinHandle<T>,
    _interrupt: FireOnDrop,
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why work handed to the executor produced no result.
#[derive(Debug, thiserror::Error)]
#[error("guest work stopped before it finished: {0}")]
pub struct Lost(String);

impl GuestExecutor {
    /// `threads` workers (at least one) named `weir-guest`.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            // Blocking sections (compiles, staged runs, a wait for a guest
            // slot) get threads of their own up to this bound; CPU stays
            // bounded by the guest slots, threads beyond it queue.
            .max_blocking_threads(threads * 8)
            .thread_name("weir-guest")
            .thread_stack_size(HOST_THREAD_STACK)
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(GuestExecutor {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            threads,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The runtime's handle, to spawn long-lived guest work (pipelines).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `work` on the guest threads and waits for it without holding
    /// the caller's thread. Dropping the returned future aborts `work` and
    /// interrupts its guest call in flight.
    pub async fn run<F>(&self, work: F) -> Result<F::Output, Lost>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let interrupt = Interrupt::new();
        let mut guard = AbortOnDrop {
            task: self.handle.spawn(interrupt.clone().around(work)),
            _interrupt: FireOnDrop(interrupt),
        };
        (&mut guard.task).await.map_err(|e| Lost(e.to_string()))
    }

    /// Runs the blocking `work` (a compile, a staged run) on the guest
    /// runtime's blocking threads and waits for it without holding the
    /// caller's thread. Dropping the returned future interrupts its guest
    /// call in flight (a blocking closure cannot be aborted otherwise).
    pub async fn run_blocking<F, T>(&self, work: F) -> Result<T, Lost>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let interrupt = Interrupt::new();
        let scoped = interrupt.clone();
        let mut guard = AbortOnDrop {
            task: self.handle.spawn_blocking(move || scoped.scope(work)),
            _interrupt: FireOnDrop(interrupt),
        };
        (&mut guard.task).await.map_err(|e| Lost(e.to_string()))
    }
}

/// Lowers the calling thread's CPU priority by [`GUEST_NICE`] (Linux: the
/// nice value is per thread). A failure only costs the API its priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take no pointers; the thread id
        // is the caller's own.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let now = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(libc::PRIO_PROCESS, tid, now + GUEST_NICE)
        };
        if rc != 0 {
            tracing::debug!(
                "guest thread keeps its priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Drop for GuestExecutor {
    fn drop(&mut self) {
        // Dropping a runtime from async code would panic; guest work still
        // running is abandoned, as at process exit.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn work_runs_on_the_guest_threads_and_a_dropped_wait_aborts_it() {
        let executor = GuestExecutor::new(1).unwrap();
        let name = executor
            .run(async { std::thread::current().name().map(str::to_string) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("weir-guest"));
        #[cfg(target_os = "linux")]
        {
            // SAFETY: no pointers; the calling thread's own id.
            let nice = |()| unsafe {
                libc::getpriority(
                    libc::PRIO_PROCESS,
                    libc::syscall(libc::SYS_gettid) as libc::id_t,
                )
            };
            let guest = executor.run(async move { nice(()) }).await.unwrap();
            assert_eq!(
                guest,
                nice(()) + GUEST_NICE,
                "guest threads run below the caller"
            );
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let wait = executor.run(async move {
            let _tx = tx;
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait)
                .await
                .is_err()
        );
        // The aborted task dropped its sender.
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_wait_fires_the_works_interrupt() {
        let executor = GuestExecutor::new(1).unwrap();
        // Blocking work cannot be aborted: it sees its interrupt fire (as
        // a guest call does at its next epoch tick).
        let (tx, rx) = std::sync::mpsc::channel::<bool>();
        let wait = executor.run_blocking(move || {
            let interrupt = Interrupt::current();
            let started = std::time::Instant::now();
            while !interrupt.as_ref().is_some_and(Interrupt::fired)
                && started.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = tx.send(interrupt.is_some_and(|i| i.fired()));
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait)
                .await
                .is_err()
        );
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(true));
        // Work that ends is not interrupted while it runs.
        let seen = executor
            .run(async { Interrupt::current().map(|i| i.fired()) })
            .await
            .unwrap();
        assert_eq!(seen, Some(false));
    }
}
