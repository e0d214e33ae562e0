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
//! The ABI is specified in weir's `docs/abi.md`; this crate has no
//! dependency on the host.

mod abi;
mod input;
mod output;
mod runtime;
mod types;

pub use input::FromArg;
pub use output::OutputValue;
pub use runtime::log;
pub use types::{Date32, Timestamp};
pub use weir_udf_macros::scalar;

/// Used by the code `#[scalar]` generates. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::abi::RawArg;
    pub use crate::input::Column;
    pub use crate::runtime::run;
}
