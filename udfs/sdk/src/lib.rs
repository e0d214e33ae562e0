//! # weir-udf: write weir UDFs in plain Rust
//!
//! ```ignore
//! #[weir_udf::scalar]
//! fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 { /* … */ }
//! ```
//!
//! Build the crate as a `cdylib` for `wasm32-unknown-unknown`; the module
//! describes itself (the `weir.udf` custom section), so `weir sql --udf
//! my.wasm` needs nothing else.
//!
//! * Argument types: `bool`, `i8`…`i64`, `u8`…`u64`, `f32`, `f64`, `&str` /
//!   `String` (utf8), `&[u8]` / `Vec<u8>` (binary), [`Timestamp`]
//!   (microseconds), [`Date32`] (days).
//! * A NULL in any plain argument gives a NULL result without calling the
//!   function. Take `Option<T>` to see NULLs yourself.
//! * Return `T`, `Option<T>` (None is NULL), or `Result<T, E>` /
//!   `Result<Option<T>, E>` with `E: Display`: an `Err` fails the batch and
//!   the user sees the message and the row.
//! * Functions are deterministic unless marked
//!   `#[weir_udf::scalar(deterministic = false)]`.
//! * `#[weir_udf::scalar(name = "other")]` exports under another SQL name.
//!
//! ## Aggregates
//!
//! ```ignore
//! #[derive(Default)]
//! pub struct Mean { sum: f64, count: u64 }
//! weir_udf::state!(Mean { sum, count });   // how a group's state is exported
//!
//! #[weir_udf::aggregate]                   // SQL name `mean`
//! impl Mean {
//!     fn update(&mut self, x: f64) { self.sum += x; self.count += 1; }
//!     fn merge(&mut self, other: Self) { self.sum += other.sum; self.count += other.count; }
//!     fn finish(&self) -> Option<f64> { (self.count > 0).then(|| self.sum / self.count as f64) }
//! }
//! ```
//!
//! One value of the type per group, created with `Default`. `update` (and
//! the optional `retract`, for sliding windows) takes the arguments like a
//! scalar: rows with a NULL in a plain argument are skipped, `Option<T>`
//! sees them; it returns `()` or `Result<(), E>`. `finish` returns like a
//! scalar. A group that never saw a row is NULL.
//!
//! The ABI is specified in weir's `docs/abi.md`; this crate has no
//! dependency on the host.

mod abi;
mod aggregate;
mod input;
mod output;
mod runtime;
mod types;

pub use aggregate::State;
pub use input::FromArg;
pub use output::OutputValue;
pub use runtime::log;
pub use types::{Date32, Timestamp};
pub use weir_udf_macros::{aggregate, scalar};

/// Used by the code `#[scalar]` generates. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::abi::RawArg;
    pub use crate::aggregate::{Groups, emit, emit_state, fold, load_state};
    pub use crate::input::Column;
    pub use crate::runtime::{install_panic_hook, run};
}
