//! A tenant at run time: its current policy (replaced on reload, read at
//! every batch), the memory all its instances hold, the gate on its
//! concurrent guest calls, its rows/s bucket and its result cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, Instant};

use super::cache::ResultCache;
use super::policy::{Policy, TenantPolicy};
use super::share::{FairShare, SharePermit};
use crate::telemetry::{self, Count};

/// Counters of one tenant.
#[derive(Debug)]
pub struct TenantStats {
    /// Time the tenant's batches were delayed by its rows/s quota.
    pub throttled_ms: AtomicU64,
    throttled_seconds: metrics::Gauge,
    /// Memory grows denied because the tenant's total was reached.
    pub memory_denied: Count,
    /// Linear memory held by the tenant's instances.
    memory_bytes: metrics::Gauge,
    /// The most guest calls of the tenant seen running at once.
    pub peak_concurrent_calls: AtomicU64,
    /// Time its calls waited for a guest slot (its cap or its fair share).
    slot_wait_seconds: metrics::Gauge,
}

impl TenantStats {
    fn new(tenant: &str) -> Self {
        let labels = vec![("tenant", tenant.to_string())];
        TenantStats {
            throttled_ms: AtomicU64::new(0),
            throttled_seconds: telemetry::gauge(telemetry::TENANT_THROTTLED, &labels),
            memory_denied: Count::new(telemetry::counter(telemetry::TENANT_MEMORY_DENIED, &labels)),
            memory_bytes: telemetry::gauge(telemetry::TENANT_MEMORY, &labels),
            peak_concurrent_calls: AtomicU64::new(0),
            slot_wait_seconds: telemetry::gauge(telemetry::TENANT_SLOT_WAIT, &labels),
        }
    }
}

/// The longest a guest call that lent its slot to its tenant's waiting
/// work waits for the slot back ([`Tenant::lend_slot`]) before it takes
/// the slot back anyway.
pub const LEND_AT_MOST: Duration = Duration::from_millis(50);

pub struct Tenant {
    name: Arc<str>,
    policy: RwLock<Arc<TenantPolicy>>,
    memory_used: AtomicU64,
    /// Instances its modules hold (idle or busy).
    instances: AtomicU64,
    /// The process's guest slots, shared with every other tenant.
    share: Arc<FairShare>,
    bucket: Mutex<Bucket>,
    cache: RwLock<Option<Arc<ResultCache>>>,
    /// Requests of the tenant on the guest threads now (see [`Tenant::admit`]).
    admitted: Mutex<u32>,
    /// Wakes requests waiting for admission.
    admission: tokio::sync::Notify,
    pub stats: TenantStats,
}

/// Held while a request of the tenant (a query, a staged run, a deploy's
/// build) has work on the guest threads: moved into that work, so that a
/// request whose caller gave up still counts until its work has ended.
pub struct Admission {
    tenant: Arc<Tenant>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        *self.tenant.admitted.lock() -= 1;
        self.tenant.admission.notify_waiters();
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
    warned: Option<u8>,
}

/// Held while a guest call of the tenant runs (its slot is released on
/// drop).
pub struct CallPermit<'a> {
    _slot: SharePermit<'a>,
}

impl Tenant {
    /// A tenant alone with the machine's guest slots (one per core).
    pub fn new(name: &str, policy: TenantPolicy) -> Self {
        Self::sharing(name, policy, Arc::new(FairShare::per_core()))
    }

    /// A tenant whose guest calls take slots of `share`.
    pub fn sharing(name: &str, policy: TenantPolicy, share: Arc<FairShare>) -> Self {
        let cache =
            (policy.cache_bytes > 0).then(|| Arc::new(ResultCache::new(name, policy.cache_bytes)));
        Tenant {
            name: name.into(),
            bucket: Mutex::new(Bucket {
                tokens: policy.burst_rows as f64,
                at: Instant::now(),
                warned: None,
            }),
            policy: RwLock::new(Arc::new(policy)),
            memory_used: AtomicU64::new(0),
            instances: AtomicU64::new(0),
            share,
            cache: RwLock::new(cache),
            admitted: Mutex::new(0),
            admission: tokio::sync::Notify::new(),
            stats: TenantStats::new(name),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy in force (a reload takes effect from the next batch).
    pub fn policy(&self) -> Arc<TenantPolicy> {
        self.policy.read().clone()
    }

    fn set_policy(&self, policy: TenantPolicy) {
        let cache_changed = self.policy().cache_bytes != policy.cache_bytes;
        *self.policy.write() = Arc::new(policy.clone());
        if cache_changed {
            *self.cache.write() = (policy.cache_bytes > 0)
                .then(|| Arc::new(ResultCache::new(&self.name, policy.cache_bytes)));
        }
    }

    pub fn cache(&self) -> Option<Arc<ResultCache>> {
        self.cache.read().clone()
    }

    pub fn memory_used(&self) -> u64 {
        self.memory_used.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` more linear memory for one of the tenant's
    /// instances; `Err(limit)` when that would pass `memory_total_bytes`.
    pub fn reserve_memory(&self, bytes: u64) -> Result<(), u64> {
        let limit = self.policy().memory_total_bytes;
        let mut used = self.memory_used.load(Ordering::Relaxed);
        loop {
            let next = used.saturating_add(bytes);
            if next > limit {
                self.stats.memory_denied.add(1);
                return Err(limit);
            }
            match self.memory_used.compare_exchange_weak(
                used,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.stats.memory_bytes.set(next as f64);
                    return Ok(());
                }
                Err(now) => used = now,
            }
        }
    }

    /// Takes one of the tenant's `max_instances`; `Err(limit)` when all
    /// are held.
    pub fn reserve_instance(&self) -> Result<(), u64> {
        let limit = u64::from(self.policy().max_instances);
        self.instances
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| limit)
    }

    pub fn release_instance(&self) {
        let _ = self
            .instances
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// Instances the tenant's modules hold now.
    pub fn instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed)
    }

    pub fn release_memory(&self, bytes: u64) {
        if let Ok(before) =
            self.memory_used
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                    Some(u.saturating_sub(bytes))
                })
        {
            self.stats
                .memory_bytes
                .set(before.saturating_sub(bytes) as f64);
        }
    }

    /// Waits, without holding a thread, until fewer than the tenant's
    /// `max_concurrent_calls` requests have work on the guest threads, and
    /// counts this one. A tenant's flood of requests then waits as futures
    /// outside the guest runtime: it cannot fill that runtime's threads
    /// with calls parked on the tenant's slots (they starved every other
    /// tenant's queries) nor run more of its guest code at once than its cap.
    ///
    /// With more than one guest slot, one tenant's requests never take all
    /// of them: a guest call holds its thread until it returns (up to its
    /// CPU budget), and another tenant's query needs a thread to run on.
    pub async fn admit(self: &Arc<Self>) -> Admission {
        let slots = u32::try_from(self.share.slots()).unwrap_or(u32::MAX);
        let others = if slots > 1 { slots - 1 } else { 1 };
        loop {
            let notified = self.admission.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut admitted = self.admitted.lock();
                if *admitted < self.policy().max_concurrent_calls.min(others).max(1) {
                    *admitted += 1;
                    return Admission {
                        tenant: self.clone(),
                    };
                }
            }
            notified.await;
        }
    }

    /// Waits for a guest slot: one of the process's (shared with every
    /// tenant by weighted fair queueing on `weight`) within the tenant's
    /// `max_concurrent_calls`. A wait on a tokio worker thread is announced
    /// with `block_in_place`, so the runtime moves that worker's other
    /// tasks to another thread instead of stalling them.
    pub fn enter(&self) -> CallPermit<'_> {
        let policy = self.policy();
        let slot = self.share.acquire(
            &self.name,
            policy.weight,
            policy.max_concurrent_calls,
            |wait| {
                if on_multi_thread_runtime() {
                    tokio::task::block_in_place(wait)
                } else {
                    wait()
                }
            },
        );
        if !slot.waited.is_zero() {
            self.stats
                .slot_wait_seconds
                .increment(slot.waited.as_secs_f64());
        }
        self.stats
            .peak_concurrent_calls
            .fetch_max(u64::from(slot.running), Ordering::Relaxed);
        CallPermit { _slot: slot }
    }

    /// At an epoch tick of one of the tenant's guest calls: lends the slot
    /// the call runs in to the tenant's own waiting work, if that work
    /// could not start otherwise, and waits until that work is done (at most
    /// [`LEND_AT_MOST`]); see [`FairShare::lend`].
    /// Not on a current-thread runtime: the waiting work may be a task of
    /// the very thread the call would pause. On a worker of a
    /// multi-thread runtime the pause is announced as blocking, so the
    /// worker's tasks (the borrower among them) move to another thread.
    pub fn lend_slot(&self) -> super::share::Lent {
        let single = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        if single {
            return super::share::Lent::No;
        }
        self.share.lend(&self.name, LEND_AT_MOST, |wait| {
            if on_multi_thread_runtime() {
                tokio::task::block_in_place(wait)
            } else {
                wait()
            }
        })
    }

    /// The slot for one poll of the tenant's host work ([`super::gate`]):
    /// like [`Tenant::enter`], but `Pending` (the task woken when its turn
    /// may have come) instead of blocking. `queued` keeps the task's place
    /// between polls (and `waiting_since` when it took it, for the slot-wait
    /// metric); a task that gives up while queued calls
    /// [`Tenant::leave_queue`].
    pub fn poll_enter(
        &self,
        queued: &mut Option<u64>,
        waiting_since: &mut Option<Instant>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<CallPermit<'_>> {
        let policy = self.policy();
        let was_queued = queued.is_some();
        let slot = match self.share.poll_acquire(
            &self.name,
            policy.weight,
            policy.max_concurrent_calls,
            queued,
            cx,
        ) {
            std::task::Poll::Ready(slot) => slot,
            std::task::Poll::Pending => {
                if !was_queued {
                    *waiting_since = Some(Instant::now());
                }
                return std::task::Poll::Pending;
            }
        };
        if let Some(since) = waiting_since.take() {
            self.stats
                .slot_wait_seconds
                .increment(since.elapsed().as_secs_f64());
        }
        self.stats
            .peak_concurrent_calls
            .fetch_max(u64::from(slot.running), Ordering::Relaxed);
        std::task::Poll::Ready(CallPermit { _slot: slot })
    }

    /// Until when a freed slot is kept for another tenant (a task that
    /// found no slot must look again then: see `tenant/gate.rs`).
    pub fn slot_held_for_other(&self) -> Option<Instant> {
        self.share.held_for_other(&self.name)
    }

    /// A task queued by [`Tenant::poll_enter`] with `ticket` gives up its
    /// place.
    pub fn leave_queue(&self, ticket: u64) {
        self.share.leave(&self.name, ticket);
    }

    /// How long a batch of `rows` must wait to stay within `rows_per_s`
    /// (zero when unlimited or within the burst). Takes the rows from the
    /// bucket; logs a warning at 80 % of the burst used and when exceeded.
    pub fn throttle(&self, rows: usize) -> Duration {
        let policy = self.policy();
        if policy.rows_per_s == 0 {
            return Duration::ZERO;
        }
        let rate = policy.rows_per_s as f64;
        let burst = policy.burst_rows as f64;
        let mut b = self.bucket.lock();
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        b.tokens -= rows as f64;
        let level = if b.tokens < 0.0 {
            2
        } else if b.tokens < burst * 0.2 {
            1
        } else {
            0
        };
        if level > b.warned.unwrap_or(0) {
            tracing::warn!(
                tenant = %self.name,
                rows_per_s = policy.rows_per_s,
                "{}",
                if level == 2 {
                    "tenant is over its rows/s quota: its pipelines are being slowed down (nothing is dropped)"
                } else {
                    "tenant is at 80 % of its rows/s quota burst"
                }
            );
        }
        b.warned = Some(level);
        if b.tokens >= 0.0 {
            return Duration::ZERO;
        }
        let wait = Duration::from_secs_f64(-b.tokens / rate);
        self.stats
            .throttled_ms
            .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
        self.stats.throttled_seconds.increment(wait.as_secs_f64());
        wait
    }
}

/// Every tenant of the process, created on first use from the policy.
pub struct Tenants {
    policy: RwLock<Policy>,
    tenants: Mutex<HashMap<String, Arc<Tenant>>>,
    share: Arc<FairShare>,
}

impl Default for Tenants {
    fn default() -> Self {
        Self::new(Policy::default())
    }
}

impl Tenants {
    /// Tenants sharing one guest slot per core.
    pub fn new(policy: Policy) -> Self {
        Self::with_slots(policy, 0)
    }

    /// Tenants sharing `slots` guest slots (0 = one per core): the guest
    /// calls that may run at once in the process (`sandbox.guest_threads`).
    pub fn with_slots(policy: Policy, slots: usize) -> Self {
        Tenants {
            policy: RwLock::new(policy),
            tenants: Mutex::new(HashMap::new()),
            share: Arc::new(if slots == 0 {
                FairShare::per_core()
            } else {
                FairShare::new(slots)
            }),
        }
    }

    /// The guest slots the tenants share.
    pub fn share(&self) -> &Arc<FairShare> {
        &self.share
    }

    pub fn get(&self, name: &str) -> Arc<Tenant> {
        let mut tenants = self.tenants.lock();
        tenants
            .entry(name.to_string())
            .or_insert_with(|| {
                let policy = self.policy.read().resolve(name);
                Arc::new(Tenant::sharing(name, policy, self.share.clone()))
            })
            .clone()
    }

    /// Every tenant in use.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        let tenants = self.tenants.lock();
        let mut all: Vec<Arc<Tenant>> = tenants.values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Applies a new policy to every tenant, from their next batch.
    pub fn reload(&self, policy: Policy) {
        let tenants = self.tenants.lock();
        for (name, tenant) in tenants.iter() {
            let next = policy.resolve(name);
            if *tenant.policy() != next {
                tracing::info!(tenant = %name, "policy reloaded: new limits apply from the next batch");
                tenant.set_policy(next);
            }
        }
        *self.policy.write() = policy;
    }
}

/// Whether this thread belongs to a multi-threaded tokio runtime (where
/// `block_in_place` is allowed).
/// Runs `work` (a guest call: up to its CPU budget) announced to tokio
/// with `block_in_place` when on a multi-thread runtime's worker: the
/// runtime hands that worker's other tasks (another tenant's query, an
/// API answer) to another thread instead of leaving them behind the call.
pub(crate) fn off_the_workers<T>(work: impl FnOnce() -> T) -> T {
    if on_multi_thread_runtime() {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}
