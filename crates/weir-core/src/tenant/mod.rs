//! Tenants: declarative policy (`config/policy.toml`), the limits the
//! sandbox enforces per tenant (CPU per call, memory per instance and in
//! total, concurrent calls, a weighted fair share of the guest slots), rows/s quotas that throttle, circuit breakers
//! per UDF version and the cache of deterministic results.

pub mod breaker;
pub mod budget;
pub mod cache;
pub mod cache_advice;
pub mod gate;
pub mod interrupt;
pub mod policy;
pub mod share;
pub mod state;

pub use breaker::{Breaker, BreakerSettings, BreakerState};
pub use cache::ResultCache;
pub use cache_advice::CacheAdvice;
pub use gate::{Gated, gate_plan};
pub use interrupt::Interrupt;
pub use policy::{BreakerAction, Policy, PolicyError, TenantPolicy};
pub use share::FairShare;
pub use state::{Tenant, Tenants};
