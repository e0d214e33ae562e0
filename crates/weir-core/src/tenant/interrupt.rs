//! A unit of work's stop signal, seen by the guest calls it makes.
//!
//! Work whose waiter leaves (a cancelled statement, an HTTP client gone, a
//! deploy that timed out) is dropped between two polls; a guest call in the
//! middle of one would run on to its CPU budget, holding a slot and a core
//! nobody waits for. So the work carries an [`Interrupt`]: set on the
//! thread while the work is polled (or its blocking closure runs), read by
//! each guest call it makes, which then checks it at every epoch tick and
//! stops with [`crate::Failure::Cancelled`] once it is fired
//! (`sandbox/instance.rs`). The guest executor gives every piece of work
//! one and fires it when the work is dropped unfinished.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

thread_local! {
    /// The interrupt of the work this thread is running now, if any.
    static CURRENT: RefCell<Option<Interrupt>> = const { RefCell::new(None) };
}

/// A stop signal shared by a unit of work and whoever waits for it.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the work's guest calls (the one running, at its next epoch
    /// tick, and any later one before it starts).
    pub fn fire(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn fired(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// The interrupt of the work running on this thread.
    pub fn current() -> Option<Interrupt> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Runs `f` as this interrupt's work (nested scopes restore the outer
    /// one).
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let outer = CURRENT.with(|c| c.replace(Some(self.clone())));
        let _restore = Restore(outer);
        f()
    }

    /// `work`, each of whose polls runs in this interrupt's scope.
    pub fn around<F: Future>(self, work: F) -> Scoped<F> {
        Scoped {
            work: Box::pin(work),
            interrupt: self,
        }
    }
}

/// Puts the outer scope's interrupt back, also when the work panics.
struct Restore(Option<Interrupt>);

impl Drop for Restore {
    fn drop(&mut self) {
        let outer = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = outer);
    }
}

/// A future polled in an interrupt's scope ([`Interrupt::around`]).
pub struct Scoped<F> {
    work: Pin<Box<F>>,
    interrupt: Interrupt,
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.interrupt.scope(|| this.work.as_mut().poll(cx))
    }
}

/// Fires its interrupt when dropped: held by whoever waits for the work.
#[derive(Debug)]
pub struct FireOnDrop(pub Interrupt);

impl Drop for FireOnDrop {
    fn drop(&mut self) {
        self.0.fire();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_is_the_threads_while_it_runs() {
        assert!(Interrupt::current().is_none());
        let outer = Interrupt::new();
        let inner = Interrupt::new();
        outer.scope(|| {
            inner.scope(|| {
                Interrupt::current().unwrap().fire();
            });
            assert!(!Interrupt::current().unwrap().fired());
        });
        assert!(inner.fired() && !outer.fired());
        assert!(Interrupt::current().is_none());
    }

    #[test]
    fn dropping_the_guard_fires() {
        let interrupt = Interrupt::new();
        drop(FireOnDrop(interrupt.clone()));
        assert!(interrupt.fired());
    }
}
