//! Whether looking a function's rows up in the result cache pays, decided
//! per function from what it measures: the guest's time per row, the
//! cache's own time per row (keys, lookups, inserts, the merge) and the hit
//! ratio. Looking up saves `hit_ratio × guest time` per row and costs the
//! cache's time; when it costs more, the function's batches skip the cache
//! (straight to the guest) for a while, then one batch probes it again, the
//! wait doubling while probes keep losing — up to what keeps the probes'
//! cost under 2 % of the guest's time (128 batches at most). A function
//! cheaper than a lookup (no hit ratio could pay) waits the longest at once.

use std::time::Duration;

use parking_lot::Mutex;

/// Rows looked up before any decision (tiny batches say little).
const MIN_EVIDENCE_ROWS: u64 = 1024;
/// Batches skipped after the first losing probe, and at most.
const FIRST_BACKOFF: u32 = 4;
const MAX_BACKOFF: u32 = 128;
/// What probing may cost at most, as a share of the guest's time: a
/// function whose guest time dwarfs the cache's probes more often (hits
/// that come back are found sooner), a cheap one as rarely as
/// [`MAX_BACKOFF`] allows.
const PROBE_SHARE: f64 = 0.02;
/// Weight of the newest batch in the moving averages.
const ALPHA: f64 = 0.5;

/// The advice of one function (one per function of a loaded module).
#[derive(Debug, Default)]
pub struct CacheAdvice {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    looked_up_rows: u64,
    looked_up_batches: u64,
    hit_ratio: Option<f64>,
    guest_ns_per_row: Option<f64>,
    cache_ns_per_row: Option<f64>,
    /// Batches left to run without the cache.
    skip: u32,
    /// The next skip after a losing probe.
    backoff: u32,
    /// Whether the last decision found the cache paying.
    paying: bool,
}

fn average(old: Option<f64>, new: f64) -> f64 {
    old.map_or(new, |old| (1.0 - ALPHA) * old + ALPHA * new)
}

fn per_row(t: Duration, rows: usize) -> f64 {
    t.as_nanos() as f64 / rows.max(1) as f64
}

impl CacheAdvice {
    /// Whether the cache paid at its last decision (else a batch that
    /// looks up is a probe, and may look up only a sample of its rows).
    pub fn paying(&self) -> bool {
        self.state.lock().paying
    }

    /// Whether this batch should look its rows up (counts a skipped batch).
    pub fn look_up(&self) -> bool {
        let mut s = self.state.lock();
        if s.skip > 0 {
            s.skip -= 1;
            false
        } else {
            true
        }
    }

    /// A batch of `rows` went through the cache: `computed` rows (the
    /// misses) ran in the guest in `guest`, the whole call took `total`.
    pub fn looked_up(&self, rows: usize, computed: usize, guest: Duration, total: Duration) {
        if rows == 0 {
            return;
        }
        let mut s = self.state.lock();
        s.looked_up_rows += rows as u64;
        s.looked_up_batches += 1;
        // The first batch finds an empty cache: its hits say nothing.
        if s.looked_up_batches > 1 {
            let hits = (rows - computed) as f64 / rows as f64;
            s.hit_ratio = Some(average(s.hit_ratio, hits));
        }
        if computed > 0 {
            s.guest_ns_per_row = Some(average(s.guest_ns_per_row, per_row(guest, computed)));
        }
        let own = total.saturating_sub(guest);
        s.cache_ns_per_row = Some(average(s.cache_ns_per_row, per_row(own, rows)));
        self.decide(&mut s);
    }

    /// A batch of `rows` skipped the cache and ran in the guest in `guest`.
    pub fn bypassed(&self, rows: usize, guest: Duration) {
        if rows == 0 {
            return;
        }
        let mut s = self.state.lock();
        s.guest_ns_per_row = Some(average(s.guest_ns_per_row, per_row(guest, rows)));
    }

    fn decide(&self, s: &mut State) {
        let (Some(guest), Some(cache)) = (s.guest_ns_per_row, s.cache_ns_per_row) else {
            return;
        };
        if s.looked_up_rows < MIN_EVIDENCE_ROWS {
            return;
        }
        // Even all hits would not pay; or the hits seen do not pay.
        // Even all hits would not pay: no reason to probe soon.
        let hopeless = cache >= guest;
        let loses = hopeless || s.hit_ratio.is_some_and(|hits| hits * guest < cache);
        if loses {
            // A probe costs `cache` per row more than the guest's `guest`:
            // one in `cap` batches keeps that under PROBE_SHARE.
            let cap = (cache / (PROBE_SHARE * guest.max(1.0))).ceil();
            let cap = if cap.is_finite() {
                cap.clamp(1.0, MAX_BACKOFF as f64) as u32
            } else {
                MAX_BACKOFF
            };
            s.backoff = if hopeless {
                MAX_BACKOFF
            } else {
                s.backoff.clamp(FIRST_BACKOFF, MAX_BACKOFF)
            };
            s.skip = s.backoff.min(cap);
            s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
            s.paying = false;
        } else {
            s.backoff = FIRST_BACKOFF;
            s.paying = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn a_cheap_function_skips_the_cache_with_growing_waits_between_probes() {
        let a = CacheAdvice::default();
        let mut looked = 0;
        for _ in 0..300 {
            if a.look_up() {
                looked += 1;
                // 4096 misses: guest 0.1 µs/row, cache 0.8 µs/row.
                a.looked_up(4096, 4096, us(410), us(3690));
            } else {
                a.bypassed(4096, us(410));
            }
        }
        // Even all hits would not pay: probes at 1, 130, 259 only.
        assert_eq!(looked, 3);
    }

    #[test]
    fn an_expensive_function_with_repeats_keeps_the_cache() {
        let a = CacheAdvice::default();
        // First batch: an empty cache, no hits; it could still pay.
        assert!(a.look_up());
        a.looked_up(8192, 8192, us(80_000), us(85_000));
        for _ in 0..50 {
            assert!(a.look_up());
            // 90 % hits: guest 10 µs/row on the misses, cache 0.5 µs/row.
            a.looked_up(8192, 819, us(8190), us(8190 + 4096));
        }
    }

    #[test]
    fn an_expensive_function_probes_often_and_finds_returning_hits() {
        let a = CacheAdvice::default();
        // Guest 10 µs/row, cache 0.5 µs/row, no repeats: after the first
        // two batches one in four probes (3 skipped: 0.5 / (0.02 × 10)
        // rounded up), costing 1.25 % of the guest's time.
        let mut looked = 0;
        for _ in 0..60 {
            if a.look_up() {
                looked += 1;
                a.looked_up(4096, 4096, us(40_960), us(40_960 + 2048));
            } else {
                a.bypassed(4096, us(40_960));
            }
        }
        assert_eq!(looked, 16);
        // Repeats come back: within two probes the cache stays on.
        let mut batches = 0;
        loop {
            if a.look_up() {
                a.looked_up(4096, 410, us(4100), us(4100 + 2048));
            } else {
                a.bypassed(4096, us(40_960));
            }
            batches += 1;
            if batches > 8 {
                break;
            }
        }
        assert!((0..20).all(|_| {
            let on = a.look_up();
            a.looked_up(4096, 410, us(4100), us(4100 + 2048));
            on
        }));
    }

    #[test]
    fn hits_that_stop_paying_are_left_and_probed_again() {
        let a = CacheAdvice::default();
        a.looked_up(4096, 0, us(0), us(400));
        a.looked_up(4096, 4096, us(4096), us(4496));
        // Guest 1 µs/row; hits fall to nothing: the average falls below
        // the cache's 0.1 µs/row within a few batches.
        let mut batches = 0;
        while a.look_up() {
            a.looked_up(4096, 4096, us(4096), us(4496));
            batches += 1;
            assert!(batches < 10, "still looking up");
        }
        // The loop's last answer was the first skipped batch; probed again
        // after the rest.
        assert!((1..FIRST_BACKOFF).all(|_| !a.look_up()));
        assert!(a.look_up());
    }
}
