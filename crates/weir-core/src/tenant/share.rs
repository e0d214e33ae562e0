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
//!
//! A slot is not only a guest call's: a tenant's host work (the polls of
//! its queries and pipelines, [`super::gate`]) holds one too, and a guest
//! call made while its thread holds a slot runs within it (the slot is
//! re-entrant per thread, so a query's UDF does not wait for a second one).
//!
//! While other tenants are active (working, waiting, or recently so), a
//! tenant holds at most its *fair number* of slots: `slots × weight / Σ
//! weights of the active tenants`, rounded up, at least one. Slots are not
//! preempted: without this bound a tenant whose work pauses between two
//! polls (a pipeline between batches) would find every slot taken by a
//! busier one and wait out its longest call; with it, its slot is free
//! when it comes back.
//!
//! Within a tenant, a guest call lends its slot at every epoch tick to
//! the tenant's own waiting poll (a statement beside its pipeline's batch)
//! and pauses until that poll is done ([`FairShare::lend`]): the tenant's
//! work takes turns a tick apart instead of a call apart.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Guest time (seconds per unit of weight) a tenant may fall behind the
/// others and still catch up: a tenant whose calls leave short gaps (a
/// thread preempted between two calls, a pipeline between batches) keeps
/// its place, while one idle for longer starts at most this far behind —
/// idleness is never banked beyond it.
const MAX_LAG: f64 = 0.05;

/// How long a freed slot waits for the tenant that just freed it, when that
/// tenant is behind every waiting one (anticipation): a pipeline's next step
/// (the batch after a transform, a worker's result) asks for a slot a few
/// microseconds after the last one ended, and without this a tenant ahead
/// of it would take the slot for a whole poll in between, however the
/// weights say.
const ANTICIPATE: Duration = Duration::from_millis(1);

/// What one tenant is doing in the scheduler.
#[derive(Debug)]
struct Lane {
    /// Virtual time of the work the tenant has been granted (charged with
    /// an estimate at grant, corrected to the real duration at release).
    tag: f64,
    /// Expected duration of its next call (seconds), from its recent ones.
    estimate: f64,
    running: u32,
    /// Its waiting calls' tickets, oldest first: a tenant's slots go to its
    /// calls in the order they asked (a task that polls again and again
    /// does not overtake one woken a moment later).
    waiting: VecDeque<u64>,
    /// Its `max_concurrent_calls`, as its latest caller gave it.
    cap: u32,
    /// Its `weight`, as its latest caller gave it.
    weight: f64,
}

impl Lane {
    /// Has a call waiting that its cap and `fair` (its fair number of
    /// slots) let start.
    fn ready(&self, fair: u32) -> bool {
        !self.waiting.is_empty() && self.running < self.cap.min(fair)
    }
}

#[derive(Debug)]
struct State {
    slots: usize,
    free: usize,
    /// Virtual time of the latest grant (never decreases).
    clock: f64,
    lanes: HashMap<Arc<str>, Lane>,
    /// Tasks waiting for a slot (their polls returned `Pending`); woken
    /// whenever a slot may have become theirs.
    wakers: Vec<Waker>,
    /// The next waiting call's ticket.
    ticket: u64,
    /// A freed slot kept for this tenant until then (see [`ANTICIPATE`]).
    held_for: Option<(Arc<str>, Instant)>,
    /// Slots taken back by lenders whose wait ran out with none free
    /// ([`FairShare::lend`]): the next ones released repay them.
    overdrawn: usize,
    /// The tickets of waiting guest calls and lenders (blocking waits),
    /// which a slot is not lent to: it goes to a task's poll (its host
    /// work, and the guest calls made within it), so that at most
    /// `max_concurrent_calls` guest calls of a tenant are ever under way.
    blocking: Vec<u64>,
    /// Slots lent by a guest call to its tenant's waiting poll, one per
    /// tenant at most ([`FairShare::lend`]).
    loans: HashMap<Arc<str>, Loan>,
}

/// A slot a guest call lent to its tenant's oldest waiting poll: the slot
/// passes to the poll directly and comes back to the lender when the
/// poll's permit is released, never through the pool, so neither the
/// count of slots nor the tenant's running calls change.
#[derive(Debug)]
struct Loan {
    borrower: u64,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the borrower's next poll.
    Offered,
    /// The borrower runs in the slot.
    Borrowed,
    /// The borrower is done (or gave up): the lender goes on.
    Returned,
    /// The lender stopped waiting and went on: the borrower's release
    /// frees a slot as any.
    Abandoned,
}

impl State {
    fn new(slots: usize) -> Self {
        State {
            slots,
            free: slots,
            clock: 0.0,
            lanes: HashMap::new(),
            wakers: Vec::new(),
            ticket: 0,
            held_for: None,
            overdrawn: 0,
            blocking: Vec::new(),
            loans: HashMap::new(),
        }
    }

    /// A call of `tenant` (at most `cap` of its calls at once) waits; its
    /// ticket.
    fn enqueue(&mut self, tenant: &Arc<str>, cap: u32, weight: f64) -> u64 {
        let ticket = self.ticket;
        self.ticket += 1;
        let lane = self.lanes.entry(tenant.clone()).or_insert(Lane {
            tag: 0.0,
            estimate: 0.0,
            running: 0,
            waiting: VecDeque::new(),
            cap,
            weight,
        });
        lane.waiting.push_back(ticket);
        lane.cap = cap;
        lane.weight = weight;
        ticket
    }

    /// The waiting call of `tenant` with `ticket` gave up.
    fn dequeue(&mut self, tenant: &Arc<str>, ticket: u64) {
        if let Some(lane) = self.lanes.get_mut(tenant) {
            lane.waiting.retain(|&t| t != ticket);
        }
        self.blocking.retain(|&t| t != ticket);
        if let Some(loan) = self.loans.get_mut(tenant)
            && loan.borrower == ticket
            && loan.phase == Phase::Offered
        {
            loan.phase = Phase::Returned;
        }
    }

    /// Whether `ticket` of `tenant` is offered a lent slot.
    fn offered(&self, tenant: &Arc<str>, ticket: u64) -> bool {
        self.loans
            .get(tenant)
            .is_some_and(|l| l.borrower == ticket && l.phase == Phase::Offered)
    }

    /// The slots a lane of `weight` may hold while the other active
    /// tenants want theirs (see the module docs).
    fn fair(&self, weight: f64) -> u32 {
        let total: f64 = self.lanes.values().map(|l| l.weight).sum();
        if total <= weight {
            return u32::try_from(self.slots).unwrap_or(u32::MAX);
        }
        ((self.slots as f64 * weight / total).ceil() as u32).max(1)
    }

    /// Where a lane's next call starts in virtual time.
    fn start(&self, lane: &Lane) -> f64 {
        lane.tag.max(self.clock - MAX_LAG)
    }

    /// The tenant whose waiting call goes next: among those under their
    /// cap, the smallest start (ties go to the name, so that every waiter
    /// agrees on who is next).
    fn next(&self) -> Option<&Arc<str>> {
        if let Some((held, _)) = self.held() {
            return self
                .lanes
                .get_key_value(held)
                .filter(|(_, lane)| lane.ready(self.fair(lane.weight)))
                .map(|(name, _)| name);
        }
        self.lanes
            .iter()
            .filter(|(_, lane)| lane.ready(self.fair(lane.weight)))
            .min_by(|(a, la), (b, lb)| {
                self.start(la)
                    .total_cmp(&self.start(lb))
                    .then_with(|| a.cmp(b))
            })
            .map(|(name, _)| name)
    }

    /// The tenant a freed slot is kept for, and until when, while it is.
    fn held(&self) -> Option<(&Arc<str>, Instant)> {
        self.held_for
            .as_ref()
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(t, until)| (t, *until))
    }

    /// Gives a slot to a waiting call of `tenant`, charging it the
    /// estimate of its call; the estimate and its calls now running.
    fn grant(&mut self, tenant: &Arc<str>, weight: f64) -> (f64, u32) {
        let clock = self.clock;
        self.free -= 1;
        if self.held_for.as_ref().is_some_and(|(t, _)| t == tenant) {
            self.held_for = None;
        }
        let Some(lane) = self.lanes.get_mut(tenant) else {
            return (0.0, 1);
        };
        if let Some(ticket) = lane.waiting.pop_front() {
            self.blocking.retain(|&t| t != ticket);
        }
        lane.running += 1;
        let start = lane.tag.max(clock - MAX_LAG);
        lane.tag = start + lane.estimate / weight;
        let granted = (lane.estimate, lane.running);
        self.clock = clock.max(start);
        granted
    }

    /// A slot freed: it repays an overdrawn one first.
    fn give_back(&mut self) {
        if self.overdrawn > 0 {
            self.overdrawn -= 1;
        } else {
            self.free += 1;
        }
    }

    /// A call of `tenant` charged `estimate` at its grant ended after
    /// `cpu` seconds: frees its slot and corrects the charge.
    fn charge(&mut self, tenant: &Arc<str>, weight: f64, estimate: f64, cpu: f64) {
        self.give_back();
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
            .retain(|_, l| l.running > 0 || !l.waiting.is_empty() || l.tag > floor);
        // Anticipation: the tenant has nothing waiting now but is behind
        // every tenant that has; keep the slot for it a moment.
        let behind = self
            .lanes
            .get(tenant)
            .filter(|l| l.waiting.is_empty())
            .map(|l| self.start(l));
        if let Some(start) = behind {
            let first_other = self
                .lanes
                .iter()
                .filter(|(name, l)| *name != tenant && l.ready(self.fair(l.weight)))
                .map(|(_, l)| self.start(l))
                .min_by(f64::total_cmp);
            if first_other.is_some_and(|other| start < other) {
                self.held_for = Some((tenant.clone(), Instant::now() + ANTICIPATE));
            }
        }
    }
}

/// What [`FairShare::lend`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lent {
    /// Nothing: no poll of the tenant waited that the slot could serve.
    No,
    /// Lent, and its turn came back.
    Returned,
    /// Lent, and taken back when the wait ran out (over the count).
    TookBack,
    /// Offered, and the waiting poll did not come for it before the wait
    /// ran out.
    Unclaimed,
}

/// Guest slots shared by weighted fair queueing; see the module docs.
#[derive(Debug)]
pub struct FairShare {
    slots: usize,
    state: Mutex<State>,
    changed: Condvar,
}

thread_local! {
    /// The slots this thread holds now: the share's address and the
    /// tenant. A call of that tenant made while one is held runs within it.
    static HELD: RefCell<Vec<(usize, Arc<str>)>> = const { RefCell::new(Vec::new()) };
}

/// A slot held while one guest call (or one poll of host work) runs;
/// released (and charged to the tenant with the CPU time the holding
/// thread used) on drop. Drop it on the thread that acquired it.
#[must_use]
pub struct SharePermit<'a> {
    share: &'a FairShare,
    tenant: Arc<str>,
    weight: f64,
    estimate: f64,
    started: f64,
    /// Whether this permit took a slot (not when the thread already held
    /// one: a guest call inside a query's poll).
    held: bool,
    /// Whether its slot is one lent by a guest call of its tenant.
    borrowed: bool,
    /// How long the call waited for its slot.
    pub waited: Duration,
    /// The tenant's calls running once this one started (itself included;
    /// zero when it ran within a slot its thread already held).
    pub running: u32,
}

impl FairShare {
    /// `slots` calls at once (at least one).
    pub fn new(slots: usize) -> Self {
        FairShare {
            slots: slots.max(1),
            state: Mutex::new(State::new(slots.max(1))),
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

    /// Whether the calling thread holds one of this share's slots for
    /// `tenant`.
    fn held_here(&self, tenant: &Arc<str>) -> bool {
        let me = self as *const Self as usize;
        HELD.with(|h| h.borrow().iter().any(|(s, t)| *s == me && t == tenant))
    }

    /// A permit for work that runs within the slot its thread holds.
    fn within(&self, tenant: &Arc<str>) -> SharePermit<'_> {
        SharePermit {
            share: self,
            tenant: tenant.clone(),
            weight: 1.0,
            estimate: 0.0,
            started: 0.0,
            held: false,
            borrowed: false,
            waited: Duration::ZERO,
            running: 0,
        }
    }

    /// Waits for a slot for a call of `tenant` (weight `weight`, at most
    /// `cap` of its calls at once), in fair order. `block` runs the wait
    /// (so a caller on an async runtime can announce it as blocking); it is
    /// not called when a slot is free at once. A thread that already holds
    /// a slot of this share runs the call within it.
    pub fn acquire(
        &self,
        tenant: &Arc<str>,
        weight: u32,
        cap: u32,
        block: impl FnOnce(&mut dyn FnMut()),
    ) -> SharePermit<'_> {
        if self.held_here(tenant) {
            return self.within(tenant);
        }
        let weight = f64::from(weight.max(1));
        let cap = cap.max(1);
        let asked = Instant::now();
        let mut state = self.state.lock();
        let ticket = state.enqueue(tenant, cap, weight);
        state.blocking.push(ticket);
        if !Self::chosen(&state, tenant, ticket) {
            drop(state);
            let mut wait = || {
                let mut s = self.state.lock();
                while !Self::chosen(&s, tenant, ticket) {
                    // A slot kept for another tenant frees itself without
                    // a notification: look again when it may have.
                    self.changed.wait_for(&mut s, ANTICIPATE);
                }
            };
            block(&mut wait);
            state = self.state.lock();
            // Another caller may have taken the slot between the wait and
            // this lock: wait again, in place.
            while !Self::chosen(&state, tenant, ticket) {
                self.changed.wait_for(&mut state, ANTICIPATE);
            }
        }
        self.granted(state, tenant, weight, asked)
    }

    /// The slot for a task's poll: `Ready` with it when `tenant`'s turn has
    /// come, else `Pending` (the task is woken when a slot may be its). On
    /// the first `Pending`, `queued` holds the task's ticket: it keeps its
    /// place between polls, and must [`FairShare::leave`] if it gives up.
    pub fn poll_acquire(
        &self,
        tenant: &Arc<str>,
        weight: u32,
        cap: u32,
        queued: &mut Option<u64>,
        cx: &mut Context<'_>,
    ) -> Poll<SharePermit<'_>> {
        if self.held_here(tenant) {
            return Poll::Ready(self.within(tenant));
        }
        let weight = f64::from(weight.max(1));
        let mut state = self.state.lock();
        let ticket = *queued.get_or_insert_with(|| state.enqueue(tenant, cap.max(1), weight));
        if Self::chosen(&state, tenant, ticket) {
            *queued = None;
            return Poll::Ready(self.granted(state, tenant, weight, Instant::now()));
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Until when a freed slot is kept for a tenant other than `tenant`: a
    /// task of `tenant` that found no slot looks again then (nothing
    /// notifies it when the slot is let go).
    pub fn held_for_other(&self, tenant: &Arc<str>) -> Option<Instant> {
        let state = self.state.lock();
        state
            .held()
            .filter(|(held, _)| *held != tenant)
            .map(|(_, until)| until)
    }

    /// A task queued by [`FairShare::poll_acquire`] with `ticket` gives up
    /// its place.
    pub fn leave(&self, tenant: &Arc<str>, ticket: u64) {
        let mut state = self.state.lock();
        state.dequeue(tenant, ticket);
        self.wake(state);
    }

    /// Takes the slot `tenant` was chosen for.
    fn granted(
        &self,
        mut state: parking_lot::MutexGuard<'_, State>,
        tenant: &Arc<str>,
        weight: f64,
        asked: Instant,
    ) -> SharePermit<'_> {
        let ticket = state
            .lanes
            .get(tenant)
            .and_then(|l| l.waiting.front().copied());
        let borrowed = ticket.is_some_and(|t| state.offered(tenant, t));
        let (estimate, running) = if let (true, Some(ticket)) = (borrowed, ticket) {
            // The lent slot: taken as it is (no slot counted twice).
            state.dequeue(tenant, ticket);
            if let Some(loan) = state.loans.get_mut(tenant) {
                loan.phase = Phase::Borrowed;
            }
            (0.0, state.lanes.get(tenant).map_or(0, |l| l.running))
        } else {
            state.grant(tenant, weight)
        };
        if state.free > 0 {
            self.wake(state);
        } else {
            drop(state);
        }
        HELD.with(|h| {
            h.borrow_mut()
                .push((self as *const Self as usize, tenant.clone()))
        });
        SharePermit {
            share: self,
            tenant: tenant.clone(),
            weight,
            estimate,
            started: thread_cpu_seconds(),
            held: true,
            borrowed,
            waited: asked.elapsed(),
            running,
        }
    }

    /// Wakes every waiter (`state` is the share's, locked): a slot may
    /// have become one's.
    fn wake(&self, mut state: parking_lot::MutexGuard<'_, State>) {
        let wakers = std::mem::take(&mut state.wakers);
        drop(state);
        self.changed.notify_all();
        for w in wakers {
            w.wake();
        }
    }

    /// Whether the waiting call of `tenant` with `ticket` may take a slot
    /// now: a slot is free, the tenant's turn has come, and the call is its
    /// oldest.
    fn chosen(state: &State, tenant: &Arc<str>, ticket: u64) -> bool {
        if state.offered(tenant, ticket) {
            return true;
        }
        state.free > 0
            && state.next() == Some(tenant)
            && state
                .lanes
                .get(tenant)
                .is_some_and(|l| l.waiting.front() == Some(&ticket))
    }

    /// Lends the slot the calling thread holds for `tenant` to the
    /// tenant's oldest waiting work, when that is a task's poll (not a
    /// guest call of its own: those stay within `max_concurrent_calls`)
    /// that would not start otherwise, and waits until that poll is done,
    /// for at most `most`. The slot passes to the poll and back directly
    /// (a loan), never through the pool: other tenants' turns and the
    /// count of slots are as if the lender had run on.
    ///
    /// Called at a guest call's epoch tick (`sandbox/host.rs`), so a
    /// tenant's SQL statement waits at most a tick for the tenant's own
    /// pipeline batch in a slot, not the whole batch: slots are otherwise
    /// not preempted. The wait is bounded because the borrower may need
    /// what the lender holds (its module's last instance); a lender whose
    /// wait runs out takes its slot back over the count, and the next slot
    /// released repays it.
    pub fn lend(
        &self,
        tenant: &Arc<str>,
        most: Duration,
        block: impl FnOnce(&mut dyn FnMut()),
    ) -> Lent {
        if !self.held_here(tenant) {
            return Lent::No;
        }
        let mut state = self.state.lock();
        let Some(&first) = state.lanes.get(tenant).and_then(|l| l.waiting.front()) else {
            return Lent::No;
        };
        // Not to a guest call; not while the tenant's slot is lent (the
        // borrower's own guest call does not lend it on); not when the
        // poll would start anyway.
        if state.blocking.contains(&first)
            || state.loans.contains_key(tenant)
            || Self::chosen(&state, tenant, first)
        {
            return Lent::No;
        }
        state.loans.insert(
            tenant.clone(),
            Loan {
                borrower: first,
                phase: Phase::Offered,
            },
        );
        self.wake(state);
        let until = Instant::now() + most;
        let phase = |state: &State| state.loans.get(tenant).map_or(Phase::Returned, |l| l.phase);
        // The borrower may be a task this thread's runtime worker was
        // about to run (a task it woke goes to its own queue): `block`
        // hands those to another thread for the wait.
        block(&mut || {
            let mut state = self.state.lock();
            while phase(&state) != Phase::Returned {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                self.changed
                    .wait_for(&mut state, (until - now).min(ANTICIPATE));
            }
        });
        let mut state = self.state.lock();
        match phase(&state) {
            Phase::Borrowed => {
                // The borrower still runs: go on beside it, over the count;
                // its release frees a slot (repaying this one).
                if let Some(loan) = state.loans.get_mut(tenant) {
                    loan.phase = Phase::Abandoned;
                }
                if state.free > 0 {
                    state.free -= 1;
                } else {
                    state.overdrawn += 1;
                }
                if let Some(lane) = state.lanes.get_mut(tenant) {
                    lane.running += 1;
                }
                Lent::TookBack
            }
            Phase::Offered => {
                state.loans.remove(tenant);
                Lent::Unclaimed
            }
            _ => {
                state.loans.remove(tenant);
                Lent::Returned
            }
        }
    }

    fn release(&self, permit: &SharePermit<'_>) {
        let me = self as *const Self as usize;
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|(s, t)| *s == me && *t == permit.tenant) {
                h.swap_remove(i);
            }
        });
        let elapsed = (thread_cpu_seconds() - permit.started).max(0.0);
        let mut state = self.state.lock();
        let lent = permit
            .borrowed
            .then(|| state.loans.get_mut(&permit.tenant))
            .flatten()
            .filter(|l| l.phase == Phase::Borrowed);
        if let Some(loan) = lent {
            // Back to its lender; the tenant is billed for the poll.
            loan.phase = Phase::Returned;
            if let Some(lane) = state.lanes.get_mut(&permit.tenant) {
                lane.tag += elapsed / permit.weight;
            }
        } else {
            if permit.borrowed {
                state.loans.remove(&permit.tenant);
            }
            state.charge(&permit.tenant, permit.weight, permit.estimate, elapsed);
        }
        self.wake(state);
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
        if self.held {
            self.share.release(self);
        }
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
                .all(|l| l.running == 0 && l.waiting.is_empty())
        );
        assert_eq!(share.state.lock().free, 3);
    }

    /// Waits until `tenant` has a call queued in `share`.
    fn until_queued(share: &FairShare, tenant: &Arc<str>) {
        while share
            .state
            .lock()
            .lanes
            .get(tenant)
            .is_none_or(|l| l.waiting.is_empty())
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A task's poll for `tenant`'s slot, polled every millisecond (a
    /// no-op waker) until granted.
    fn poll_until_granted<'a>(share: &'a FairShare, tenant: &Arc<str>) -> SharePermit<'a> {
        let mut queued = None;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(p) = share.poll_acquire(tenant, 1, 4, &mut queued, &mut cx) {
                return p;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn settled(share: &FairShare) {
        let state = share.state.lock();
        assert_eq!((state.free, state.overdrawn), (share.slots, 0));
        assert!(state.blocking.is_empty());
        assert!(
            state
                .lanes
                .values()
                .all(|l| l.running == 0 && l.waiting.is_empty())
        );
    }

    #[test]
    fn a_slot_is_lent_to_the_tenants_own_waiting_work() {
        let share = Arc::new(FairShare::new(1));
        let a: Arc<str> = "a".into();
        let permit = share.acquire(&a, 1, 4, wait_here);
        assert_eq!(
            share.lend(&a, Duration::from_secs(5), wait_here),
            Lent::No,
            "nobody waits"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let (share, a) = (share.clone(), a.clone());
            std::thread::spawn(move || {
                let _p = poll_until_granted(&share, &a);
                tx.send(Instant::now()).unwrap();
                burn(Duration::from_millis(5));
            })
        };
        until_queued(&share, &a);
        let lent = Instant::now();
        assert_eq!(
            share.lend(&a, Duration::from_secs(5), wait_here),
            Lent::Returned
        );
        let back = Instant::now();
        // The waiter ran in the lent slot while the lender paused.
        let served = rx.recv().unwrap();
        assert!(lent <= served && served <= back);
        waiter.join().unwrap();
        drop(permit);
        settled(&share);
    }

    #[test]
    fn a_slot_no_poll_comes_for_is_not_lent_for_long() {
        let share = FairShare::new(1);
        let a: Arc<str> = "a".into();
        let permit = share.acquire(&a, 1, 4, wait_here);
        // A task (on another thread) queues, and is not polled again.
        let queued = std::thread::scope(|s| {
            s.spawn(|| {
                let mut queued = None;
                let mut cx = Context::from_waker(std::task::Waker::noop());
                assert!(
                    share
                        .poll_acquire(&a, 1, 4, &mut queued, &mut cx)
                        .is_pending()
                );
                queued
            })
            .join()
            .unwrap()
        });
        assert_eq!(
            share.lend(&a, Duration::from_millis(20), wait_here),
            Lent::Unclaimed
        );
        share.leave(&a, queued.unwrap());
        drop(permit);
        settled(&share);
    }

    #[test]
    fn a_slot_is_not_lent_to_a_guest_call_of_the_tenant() {
        let share = Arc::new(FairShare::new(1));
        let a: Arc<str> = "a".into();
        let permit = share.acquire(&a, 1, 4, wait_here);
        let waiter = {
            let (share, a) = (share.clone(), a.clone());
            std::thread::spawn(move || drop(share.acquire(&a, 1, 4, wait_here)))
        };
        until_queued(&share, &a);
        assert_eq!(share.lend(&a, Duration::from_secs(5), wait_here), Lent::No);
        drop(permit);
        waiter.join().unwrap();
        settled(&share);
    }

    #[test]
    fn a_slot_is_not_lent_to_another_tenant() {
        let share = Arc::new(FairShare::new(1));
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let permit = share.acquire(&a, 1, 4, wait_here);
        let waiter = {
            let (share, b) = (share.clone(), b.clone());
            std::thread::spawn(move || drop(poll_until_granted(&share, &b)))
        };
        until_queued(&share, &b);
        assert_eq!(share.lend(&a, Duration::from_secs(5), wait_here), Lent::No);
        drop(permit);
        waiter.join().unwrap();
        settled(&share);
    }

    #[test]
    fn a_lender_whose_turn_does_not_come_takes_its_slot_back_over_the_count() {
        let share = Arc::new(FairShare::new(1));
        let a: Arc<str> = "a".into();
        let permit = share.acquire(&a, 1, 4, wait_here);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let waiter = {
            let (share, a) = (share.clone(), a.clone());
            std::thread::spawn(move || {
                let _p = poll_until_granted(&share, &a);
                // Holds the lent slot until told (what needs the
                // lender's instance would).
                let _ = rx.recv();
            })
        };
        until_queued(&share, &a);
        let lent = Instant::now();
        assert_eq!(
            share.lend(&a, Duration::from_millis(30), wait_here),
            Lent::TookBack
        );
        assert!(lent.elapsed() >= Duration::from_millis(30));
        assert_eq!(share.state.lock().overdrawn, 1);
        tx.send(()).unwrap();
        waiter.join().unwrap();
        drop(permit);
        settled(&share);
    }

    /// One slot; `tenants` (name, weight, CPU seconds per call) always
    /// have a call waiting; `calls` grants in a row. Calls per tenant.
    fn simulate(tenants: &[(&str, f64, f64)], calls: usize) -> Vec<usize> {
        let mut state = State::new(1);
        let names: Vec<Arc<str>> = tenants.iter().map(|t| Arc::from(t.0)).collect();
        for (name, t) in names.iter().zip(tenants) {
            state.enqueue(name, 4, t.1);
        }
        let mut counts = vec![0; tenants.len()];
        for _ in 0..calls {
            let next = state.next().unwrap().clone();
            let i = names.iter().position(|n| *n == next).unwrap();
            let (_, weight, cost) = tenants[i];
            let (estimate, _) = state.grant(&next, weight);
            state.charge(&next, weight, estimate, cost);
            state.enqueue(&next, 4, weight);
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
        let mut state = State::new(1);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        state.enqueue(&a, 1, 1.0);
        for _ in 0..1000 {
            let (e, _) = state.grant(&a, 1.0);
            state.charge(&a, 1.0, e, 0.01);
            state.enqueue(&a, 1, 1.0);
        }
        state.enqueue(&b, 1, 1.0);
        let mut run = 0;
        loop {
            let next = state.next().unwrap().clone();
            let (e, _) = state.grant(&next, 1.0);
            state.charge(&next, 1.0, e, 0.01);
            state.enqueue(&next, 1, 1.0);
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

    /// Issue 29: slots are not preempted, so a tenant whose work pauses
    /// between polls (a pipeline between batches) must find its slot free
    /// when it comes back: while it is active, another tenant holds at most
    /// its fair number of slots, however many calls it has waiting.
    #[test]
    fn a_busy_tenant_leaves_an_active_tenant_its_fair_slots() {
        let mut state = State::new(2);
        let (busy, quiet): (Arc<str>, Arc<str>) = ("busy".into(), "quiet".into());
        state.enqueue(&quiet, 2, 1.0);
        let (e, _) = state.grant(&quiet, 1.0);
        for _ in 0..4 {
            state.enqueue(&busy, 2, 1.0);
        }
        assert_eq!(state.next(), Some(&busy));
        let (b, _) = state.grant(&busy, 1.0);
        // Quiet's call ends; it will be back for its next batch.
        state.charge(&quiet, 1.0, e, 0.001);
        assert_eq!(state.free, 1);
        assert_eq!(
            state.next(),
            None,
            "the busy tenant took a second slot while the quiet one was active"
        );
        state.enqueue(&quiet, 2, 1.0);
        assert_eq!(state.next(), Some(&quiet));
        // Alone, a tenant may take every slot (up to its cap).
        let mut alone = State::new(2);
        alone.enqueue(&busy, 2, 1.0);
        alone.enqueue(&busy, 2, 1.0);
        alone.grant(&busy, 1.0);
        assert_eq!(alone.next(), Some(&busy));
        let _ = b;
    }

    /// With weights 3:1 on two slots the heavier tenant's fair number is
    /// two: the weights, not the slot count, decide the shares.
    #[test]
    fn the_fair_number_of_slots_follows_the_weights() {
        let mut state = State::new(2);
        let (heavy, light): (Arc<str>, Arc<str>) = ("heavy".into(), "light".into());
        state.enqueue(&heavy, 4, 3.0);
        state.enqueue(&light, 4, 1.0);
        assert_eq!(state.fair(3.0), 2);
        assert_eq!(state.fair(1.0), 1);
    }

    /// A guest call made while its thread holds the tenant's slot (a UDF
    /// inside one poll of the tenant's query) runs within it: with one
    /// slot it would otherwise wait for itself for ever. Another tenant's
    /// call on the same thread does not.
    #[test]
    fn a_slot_is_reentrant_for_its_tenant_on_its_thread() {
        let share = FairShare::new(1);
        let one: Arc<str> = "one".into();
        let outer = share.acquire(&one, 1, 1, wait_here);
        let inner = share.acquire(&one, 1, 1, |_| panic!("the nested call waited"));
        assert!(!inner.held);
        drop(inner);
        assert!(share.held_here(&one));
        assert!(!share.held_here(&"two".into()));
        drop(outer);
        assert!(!share.held_here(&one));
        assert_eq!(share.state.lock().free, 1);
    }

    /// A task waiting for a slot holds no thread: its poll is `Pending`
    /// and it is woken when the slot is free; within a tenant, slots go to
    /// waiting calls in the order they asked.
    #[test]
    fn a_polling_task_waits_its_turn_in_order() {
        use std::task::Wake;
        struct Flag(std::sync::atomic::AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let share = FairShare::new(1);
        let one: Arc<str> = "one".into();
        let flag = Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let held = std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel();
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let share = &share;
            let holder = s.spawn(move || {
                let _p = share.acquire(&"one".into(), 1, 1, wait_here);
                tx.send(()).unwrap();
                release_rx.recv().unwrap();
            });
            rx.recv().unwrap();
            let (mut first, mut second) = (None, None);
            assert!(
                share
                    .poll_acquire(&one, 1, 1, &mut first, &mut cx)
                    .is_pending()
            );
            assert!(
                share
                    .poll_acquire(&one, 1, 1, &mut second, &mut cx)
                    .is_pending()
            );
            assert!(first.is_some() && second.is_some());
            release_tx.send(()).unwrap();
            holder.join().unwrap();
            assert!(
                flag.0.load(Ordering::SeqCst),
                "the waiting task was not woken"
            );
            // The second asked later: the first goes first.
            assert!(
                share
                    .poll_acquire(&one, 1, 1, &mut second, &mut cx)
                    .is_pending()
            );
            let Poll::Ready(p) = share.poll_acquire(&one, 1, 1, &mut first, &mut cx) else {
                panic!("the first waiter did not get the free slot");
            };
            assert!(first.is_none());
            drop(p);
            // A waiter that gives up leaves the queue.
            share.leave(&one, second.take().unwrap());
            share
                .state
                .lock()
                .lanes
                .get(&one)
                .is_none_or(|l| l.waiting.is_empty())
        });
        assert!(held);
    }

    /// Issue 29: a tenant whose work comes in steps (decode, transform,
    /// deliver) has nothing waiting for a moment between two of them. When
    /// it is behind, the freed slot waits for it (briefly) instead of going
    /// to the tenant ahead for a whole poll: without this, weights 3:1 on
    /// one slot gave 1.46 (`scripts/bench_weights.py`).
    #[test]
    fn a_freed_slot_waits_a_moment_for_the_tenant_that_is_behind() {
        let mut state = State::new(1);
        let (heavy, light): (Arc<str>, Arc<str>) = ("heavy".into(), "light".into());
        state.enqueue(&light, 4, 1.0);
        let (e, _) = state.grant(&light, 1.0);
        state.charge(&light, 1.0, e, 0.003);
        // Light is 3 ms in; both wait; heavy goes.
        state.enqueue(&light, 4, 1.0);
        state.enqueue(&heavy, 4, 3.0);
        assert_eq!(state.next(), Some(&heavy));
        let (e, _) = state.grant(&heavy, 3.0);
        state.charge(&heavy, 3.0, e, 0.003);
        // Heavy is 1 ms in (3 ms at weight 3), behind light, with nothing
        // waiting yet: the slot is kept for it.
        assert_eq!(state.next(), None, "light took a slot kept for heavy");
        state.enqueue(&heavy, 4, 3.0);
        assert_eq!(state.next(), Some(&heavy));
        // Once let go, the slot is anyone's by the usual order.
        state.held_for = Some((heavy.clone(), Instant::now() - Duration::from_millis(1)));
        assert_eq!(state.held(), None);
    }
}
