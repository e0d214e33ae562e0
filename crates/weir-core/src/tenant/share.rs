//! The process's guest slots, shared between tenants by weighted fair
//! queueing.
//!
//! At most `slots` guest calls run at once in the whole process (one per
//! guest thread), and at most `max_concurrent_calls` of one tenant. When
//! more calls wait than slots are free, the next slot goes to the waiting
//! tenant that has received the least guest time per unit of its `weight`
//! (start-time fair queueing: each tenant carries a virtual time advanced by
//! `cpu / weight` for every call, `cpu` being the CPU time the calling
//! thread used while it held the slot, so time the OS gave to other
//! threads is not billed; a tenant that was idle starts at the
//! current virtual time less a small lag, so idleness is not banked as
//! credit). Over a busy
//! period a tenant's share of the slots is therefore its weight over the
//! sum of the busy tenants' weights, whatever the length of its calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Guest time (seconds per unit of weight) a tenant may fall behind the
/// others and still catch up: a tenant whose calls leave short gaps (a
/// thread preempted between two calls, a pipeline between batches) keeps
/// its place, while one idle for longer starts at most this far behind —
/// idleness is never banked beyond it.
const MAX_LAG: f64 = 0.05;

/// What one tenant is doing in the scheduler.
#[derive(Debug)]
struct Lane {
    /// Virtual time of the work the tenant has been granted (charged with
    /// an estimate at grant, corrected to the real duration at release).
    tag: f64,
    /// Expected duration of its next call (seconds), from its recent ones.
    estimate: f64,
    running: u32,
    waiting: u32,
    /// Its `max_concurrent_calls`, as its latest caller gave it.
    cap: u32,
}

impl Lane {
    /// Has a call waiting that its cap lets start.
    fn ready(&self) -> bool {
        self.waiting > 0 && self.running < self.cap
    }
}

#[derive(Debug)]
struct State {
    free: usize,
    /// Virtual time of the latest grant (never decreases).
    clock: f64,
    lanes: HashMap<Arc<str>, Lane>,
}

impl State {
    /// A call of `tenant` (at most `cap` of its calls at once) waits.
    fn enqueue(&mut self, tenant: &Arc<str>, cap: u32) {
        let lane = self.lanes.entry(tenant.clone()).or_insert(Lane {
            tag: 0.0,
            estimate: 0.0,
            running: 0,
            waiting: 0,
            cap,
        });
        lane.waiting += 1;
        lane.cap = cap;
    }

    /// Where a lane's next call starts in virtual time.
    fn start(&self, lane: &Lane) -> f64 {
        lane.tag.max(self.clock - MAX_LAG)
    }

    /// The tenant whose waiting call goes next: among those under their
    /// cap, the smallest start (ties go to the name, so that every waiter
    /// agrees on who is next).
    fn next(&self) -> Option<&Arc<str>> {
        self.lanes
            .iter()
            .filter(|(_, lane)| lane.ready())
            .min_by(|(a, la), (b, lb)| {
                self.start(la)
                    .total_cmp(&self.start(lb))
                    .then_with(|| a.cmp(b))
            })
            .map(|(name, _)| name)
    }

    /// Gives a slot to a waiting call of `tenant`, charging it the
    /// estimate of its call; the estimate and its calls now running.
    fn grant(&mut self, tenant: &Arc<str>, weight: f64) -> (f64, u32) {
        let clock = self.clock;
        self.free -= 1;
        let Some(lane) = self.lanes.get_mut(tenant) else {
            return (0.0, 1);
        };
        lane.waiting -= 1;
        lane.running += 1;
        let start = lane.tag.max(clock - MAX_LAG);
        lane.tag = start + lane.estimate / weight;
        let granted = (lane.estimate, lane.running);
        self.clock = clock.max(start);
        granted
    }

    /// A call of `tenant` charged `estimate` at its grant ended after
    /// `cpu` seconds: frees its slot and corrects the charge.
    fn charge(&mut self, tenant: &Arc<str>, weight: f64, estimate: f64, cpu: f64) {
        self.free += 1;
        if let Some(lane) = self.lanes.get_mut(tenant) {
            lane.running = lane.running.saturating_sub(1);
            lane.tag += (cpu - estimate) / weight;
            lane.estimate = if lane.estimate == 0.0 {
                cpu
            } else {
                0.7 * lane.estimate + 0.3 * cpu
            };
        }
        // An idle tenant that far behind would start at the limit anyway:
        // its lane need not be kept (the map stays as small as the set of
        // tenants busy or recently busy).
        let floor = self.clock - MAX_LAG;
        self.lanes
            .retain(|_, l| l.running > 0 || l.waiting > 0 || l.tag > floor);
    }
}

/// Guest slots shared by weighted fair queueing; see the module docs.
#[derive(Debug)]
pub struct FairShare {
    slots: usize,
    state: Mutex<State>,
    changed: Condvar,
}

/// A slot held while one guest call runs; released (and charged to the
/// tenant with the CPU time the holding thread used) on drop. Drop it on
/// the thread that acquired it.
#[must_use]
pub struct SharePermit<'a> {
    share: &'a FairShare,
    tenant: Arc<str>,
    weight: f64,
    estimate: f64,
    started: f64,
    /// How long the call waited for its slot.
    pub waited: Duration,
    /// The tenant's calls running once this one started (itself included).
    pub running: u32,
}

impl FairShare {
    /// `slots` calls at once (at least one).
    pub fn new(slots: usize) -> Self {
        FairShare {
            slots: slots.max(1),
            state: Mutex::new(State {
                free: slots.max(1),
                clock: 0.0,
                lanes: HashMap::new(),
            }),
            changed: Condvar::new(),
        }
    }

    /// One slot per core of the machine.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Waits for a slot for a call of `tenant` (weight `weight`, at most
    /// `cap` of its calls at once), in fair order. `block` runs the wait
    /// (so a caller on an async runtime can announce it as blocking); it is
    /// not called when a slot is free at once.
    pub fn acquire(
        &self,
        tenant: &Arc<str>,
        weight: u32,
        cap: u32,
        block: impl FnOnce(&mut dyn FnMut()),
    ) -> SharePermit<'_> {
        let weight = f64::from(weight.max(1));
        let cap = cap.max(1);
        let asked = Instant::now();
        let mut state = self.state.lock();
        state.enqueue(tenant, cap);
        if !Self::chosen(&state, tenant) {
            drop(state);
            let mut wait = || {
                let mut s = self.state.lock();
                while !Self::chosen(&s, tenant) {
                    self.changed.wait(&mut s);
                }
            };
            block(&mut wait);
            state = self.state.lock();
            // Another caller may have taken the slot between the wait and
            // this lock: wait again, in place.
            while !Self::chosen(&state, tenant) {
                self.changed.wait(&mut state);
            }
        }
        let (estimate, running) = state.grant(tenant, weight);
        let more = state.free > 0;
        drop(state);
        if more {
            self.changed.notify_all();
        }
        SharePermit {
            share: self,
            tenant: tenant.clone(),
            weight,
            estimate,
            started: thread_cpu_seconds(),
            waited: asked.elapsed(),
            running,
        }
    }

    /// Whether a waiting call of `tenant` may take a slot now.
    fn chosen(state: &State, tenant: &Arc<str>) -> bool {
        state.free > 0 && state.next() == Some(tenant)
    }

    fn release(&self, permit: &SharePermit<'_>) {
        let elapsed = (thread_cpu_seconds() - permit.started).max(0.0);
        let mut state = self.state.lock();
        state.charge(&permit.tenant, permit.weight, permit.estimate, elapsed);
        drop(state);
        self.changed.notify_all();
    }
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID
    // is supported by every Linux and BSD kernel weir runs on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

impl Drop for SharePermit<'_> {
    fn drop(&mut self) {
        self.share.release(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn wait_here(wait: &mut dyn FnMut()) {
        wait()
    }

    /// Burns `d` of the thread's CPU time (what a guest call does; a
    /// sleep costs none).
    fn burn(d: Duration) {
        let until = thread_cpu_seconds() + d.as_secs_f64();
        while thread_cpu_seconds() < until {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn slots_and_each_tenants_cap_bound_the_calls_running_at_once() {
        let share = Arc::new(FairShare::new(3));
        let (inside, peak) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (a_inside, a_peak) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (share, inside, peak) = (share.clone(), inside.clone(), peak.clone());
                let (a_inside, a_peak) = (a_inside.clone(), a_peak.clone());
                std::thread::spawn(move || {
                    let tenant: Arc<str> = if i % 2 == 0 { "a".into() } else { "b".into() };
                    for _ in 0..20 {
                        let _p = share.acquire(&tenant, 1, 2, wait_here);
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        if &*tenant == "a" {
                            let n = a_inside.fetch_add(1, Ordering::SeqCst) + 1;
                            a_peak.fetch_max(n, Ordering::SeqCst);
                        }
                        burn(Duration::from_micros(300));
                        if &*tenant == "a" {
                            a_inside.fetch_sub(1, Ordering::SeqCst);
                        }
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert!(a_peak.load(Ordering::SeqCst) <= 2);
        assert!(
            share
                .state
                .lock()
                .lanes
                .values()
                .all(|l| l.running == 0 && l.waiting == 0)
        );
        assert_eq!(share.state.lock().free, 3);
    }

    /// One slot; `tenants` (name, weight, CPU seconds per call) always
    /// have a call waiting; `calls` grants in a row. Calls per tenant.
    fn simulate(tenants: &[(&str, f64, f64)], calls: usize) -> Vec<usize> {
        let mut state = State {
            free: 1,
            clock: 0.0,
            lanes: HashMap::new(),
        };
        let names: Vec<Arc<str>> = tenants.iter().map(|t| Arc::from(t.0)).collect();
        for name in &names {
            state.enqueue(name, 4);
        }
        let mut counts = vec![0; tenants.len()];
        for _ in 0..calls {
            let next = state.next().unwrap().clone();
            let i = names.iter().position(|n| *n == next).unwrap();
            let (_, weight, cost) = tenants[i];
            let (estimate, _) = state.grant(&next, weight);
            state.charge(&next, weight, estimate, cost);
            state.enqueue(&next, 4);
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn busy_tenants_share_one_slot_in_proportion_to_their_weights() {
        let counts = simulate(&[("heavy", 3.0, 0.002), ("light", 1.0, 0.002)], 4000);
        assert!(counts[0].abs_diff(3 * counts[1]) <= 4, "{counts:?}");
        let counts = simulate(
            &[("a", 1.0, 0.001), ("b", 2.0, 0.001), ("c", 5.0, 0.001)],
            8000,
        );
        assert!(counts[1].abs_diff(2 * counts[0]) <= 4, "{counts:?}");
        assert!(counts[2].abs_diff(5 * counts[0]) <= 6, "{counts:?}");
    }

    #[test]
    fn fair_queueing_shares_time_not_turns() {
        // Equal weights, calls of 20 ms and of 1 ms: each tenant gets half
        // the time, so the fast one makes about 20 calls per slow one.
        let counts = simulate(&[("slow", 1.0, 0.020), ("fast", 1.0, 0.001)], 4200);
        let (slow, fast) = (counts[0] as f64, counts[1] as f64);
        assert!((fast / slow - 20.0).abs() < 1.0, "slow {slow} fast {fast}");
    }

    #[test]
    fn an_idle_tenant_does_not_bank_its_share() {
        // `a` runs alone for 10 s of guest time; then `b` arrives. `b`
        // may catch up at most MAX_LAG of time before they alternate.
        let mut state = State {
            free: 1,
            clock: 0.0,
            lanes: HashMap::new(),
        };
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        state.enqueue(&a, 1);
        for _ in 0..1000 {
            let (e, _) = state.grant(&a, 1.0);
            state.charge(&a, 1.0, e, 0.01);
            state.enqueue(&a, 1);
        }
        state.enqueue(&b, 1);
        let mut run = 0;
        loop {
            let next = state.next().unwrap().clone();
            let (e, _) = state.grant(&next, 1.0);
            state.charge(&next, 1.0, e, 0.01);
            state.enqueue(&next, 1);
            if next == a {
                break;
            }
            run += 1;
        }
        // MAX_LAG of catching up, plus the call `a` was charged ahead.
        assert!(
            run <= (MAX_LAG / 0.01) as usize + 2,
            "b ran {run} calls in a row"
        );
    }
}
