//! The wasmtime sandbox: engines, limits, compiled-code cache, module
//! loading, instance pools and error classification.
//!
//! A guest gets no WASI and no host function unless a granted capability
//! provides it; CPU (epoch deadline or fuel), memory, tables, instances and
//! wasm stack are bounded before any guest code runs, including start
//! functions.

pub mod aggregate;
mod cache;
mod compile_gate;
mod engine;
mod error;
mod executor;
mod host;
mod inspect;
mod instance;
mod limits;
mod module;

pub use crate::tenant::budget::{Budget, KNOWN_CAPABILITIES, policy_key};
pub use cache::CodeCache;
pub use engine::{Sandbox, SandboxOptions};
pub use error::{Failure, LoadError, PartialOutput, RowFailures, UdfError};
pub use executor::{GuestExecutor, HOST_THREAD_STACK, Lost};
pub use inspect::{Import, ModuleInfo, inspect};
pub use limits::{CpuMeter, LimitKeys, SandboxLimits};
pub use module::UdfModule;
