//! A circuit breaker per UDF version: after N consecutive failing batches it
//! opens and calls fail fast (records follow the pipeline's error policy with
//! reason "circuit open"); after a cool-down one probe batch runs
//! (half-open) and its outcome closes or re-opens it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: u32,
    opened_at: Option<Instant>,
}

#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: None,
            }),
        }
    }
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Whether a call may run. An open breaker whose cool-down has passed
    /// turns half-open and lets calls through until the next outcome.
    /// `Err` carries the time left before the next probe.
    pub fn allow(&self, cooldown: Duration) -> Result<(), Duration> {
        let mut b = self.lock();
        match b.state {
            BreakerState::Closed | BreakerState::HalfOpen => Ok(()),
            BreakerState::Open => {
                let elapsed = b.opened_at.map_or(cooldown, |t| t.elapsed());
                if elapsed >= cooldown {
                    b.state = BreakerState::HalfOpen;
                    Ok(())
                } else {
                    Err(cooldown - elapsed)
                }
            }
        }
    }

    /// A batch finished: `ok` or not. Returns the new state when it changed.
    pub fn record(&self, ok: bool, threshold: u32) -> Option<BreakerState> {
        let mut b = self.lock();
        let before = b.state;
        if ok {
            b.failures = 0;
            b.state = BreakerState::Closed;
            b.opened_at = None;
        } else {
            b.failures = b.failures.saturating_add(1);
            // An open breaker stays open until its probe; batches failing
            // fast meanwhile do not extend the cool-down.
            let open = match b.state {
                BreakerState::HalfOpen => true,
                BreakerState::Closed => b.failures >= threshold,
                BreakerState::Open => false,
            };
            if open {
                b.state = BreakerState::Open;
                b.opened_at = Some(Instant::now());
            }
        }
        (b.state != before).then_some(b.state)
    }
}
