//! A circuit breaker per UDF version. It counts only failures *of the
//! function* (traps, out of CPU/memory/stack, invalid output, panics,
//! instance errors) — never row errors, which are the function doing its job
//! on bad input. Outcomes are per micro-batch that called the function.
//!
//! It opens after `failures` failing batches in a row, or when at least
//! `failure_ratio` of the last `window` batches failed. While open the guest
//! is not called; after the cool-down one probe runs (half-open) and its
//! outcome closes or re-opens it.

use parking_lot::Mutex;
use std::collections::VecDeque;
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

/// When a breaker opens (the tenant policy's `breaker_*` keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Failing batches in a row that open it.
    pub failures: u32,
    /// Share of failing batches among the last `window` that opens it.
    pub failure_ratio: f64,
    /// Batches the ratio is taken over (it applies once that many ran).
    pub window: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            failure_ratio: 0.5,
            window: 20,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive: u32,
    /// The latest outcomes, `true` = failed; at most `window`.
    recent: VecDeque<bool>,
    opened_at: Option<Instant>,
    /// Why it opened last (for status and logs).
    reason: Option<String>,
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
                consecutive: 0,
                recent: VecDeque::new(),
                opened_at: None,
                reason: None,
            }),
        }
    }
}

impl Breaker {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Closed with no failure counted since the last success.
    pub fn is_clean(&self) -> bool {
        let b = self.lock();
        b.state == BreakerState::Closed && b.consecutive == 0
    }

    /// Why the breaker last opened ("5 failing batches in a row", …).
    pub fn reason(&self) -> Option<String> {
        self.lock().reason.clone()
    }

    /// While open: the time left before the probe (zero once it is due).
    /// `None` when closed or half-open.
    pub fn open_for(&self, cooldown: Duration) -> Option<Duration> {
        let b = self.lock();
        (b.state == BreakerState::Open).then(|| {
            let elapsed = b.opened_at.map_or(cooldown, |t| t.elapsed());
            cooldown.saturating_sub(elapsed)
        })
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

    /// A batch that called the function finished: `ok` unless the function
    /// itself failed. Returns the new state when it changed.
    pub fn record(&self, ok: bool, settings: &BreakerSettings) -> Option<BreakerState> {
        let mut b = self.lock();
        let before = b.state;
        let window = settings.window.max(1) as usize;
        b.recent.push_back(!ok);
        while b.recent.len() > window {
            b.recent.pop_front();
        }
        if ok {
            b.consecutive = 0;
            if b.state != BreakerState::Open {
                b.state = BreakerState::Closed;
                b.opened_at = None;
            }
        } else {
            b.consecutive = b.consecutive.saturating_add(1);
            let failed = b.recent.iter().filter(|f| **f).count();
            let reason = match b.state {
                BreakerState::HalfOpen => Some("the probe batch failed".to_string()),
                BreakerState::Closed if b.consecutive >= settings.failures.max(1) => {
                    Some(format!("{} failing batches in a row", b.consecutive))
                }
                BreakerState::Closed
                    if b.recent.len() >= window
                        && failed as f64 >= settings.failure_ratio * window as f64 =>
                {
                    Some(format!("{failed} of the last {window} batches failed"))
                }
                // An open breaker stays open until its probe; batches
                // failing fast meanwhile do not extend the cool-down.
                _ => None,
            };
            if let Some(reason) = reason {
                b.state = BreakerState::Open;
                b.opened_at = Some(Instant::now());
                b.reason = Some(reason);
                b.recent.clear();
            }
        }
        (b.state != before).then_some(b.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: BreakerSettings = BreakerSettings {
        failures: 3,
        failure_ratio: 0.5,
        window: 10,
    };

    #[test]
    fn consecutive_failures_open_and_a_success_resets_the_count() {
        let b = Breaker::default();
        assert_eq!(b.record(false, &SETTINGS), None);
        assert_eq!(b.record(false, &SETTINGS), None);
        assert_eq!(b.record(true, &SETTINGS), None);
        assert_eq!(b.record(false, &SETTINGS), None);
        assert_eq!(b.record(false, &SETTINGS), None);
        assert_eq!(b.record(false, &SETTINGS), Some(BreakerState::Open));
        assert_eq!(b.reason().as_deref(), Some("3 failing batches in a row"));
    }

    #[test]
    fn a_failure_ratio_over_the_window_opens_without_a_run() {
        let b = Breaker::default();
        let mut opened = None;
        // fail, ok, fail, ok, …: never 3 in a row, but half of the window
        // once it is full.
        for i in 0..12 {
            if let Some(s) = b.record(i % 2 == 1, &SETTINGS) {
                opened = Some((i, s));
            }
        }
        assert_eq!(opened, Some((10, BreakerState::Open)));
        assert_eq!(
            b.reason().as_deref(),
            Some("5 of the last 10 batches failed")
        );
    }

    #[test]
    fn a_low_failure_ratio_never_opens() {
        let b = Breaker::default();
        for i in 0..1000 {
            assert_eq!(b.record(i % 4 != 0, &SETTINGS), None, "batch {i}");
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn the_probe_closes_or_reopens() {
        let b = Breaker::default();
        for _ in 0..3 {
            b.record(false, &SETTINGS);
        }
        assert!(b.allow(Duration::from_secs(60)).is_err());
        assert_eq!(b.open_for(Duration::ZERO), Some(Duration::ZERO));
        assert!(b.allow(Duration::ZERO).is_ok());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.record(false, &SETTINGS), Some(BreakerState::Open));
        assert_eq!(b.reason().as_deref(), Some("the probe batch failed"));
        assert!(b.allow(Duration::ZERO).is_ok());
        assert_eq!(b.record(true, &SETTINGS), Some(BreakerState::Closed));
        assert_eq!(b.open_for(Duration::ZERO), None);
    }
}
