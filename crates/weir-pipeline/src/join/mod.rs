//! Joins of the stream with itself (docs/pipelines.md, "Joins of the
//! stream with itself"): `FROM source a JOIN source b ON … AND b.ts
//! BETWEEN a.ts - INTERVAL … AND a.ts + INTERVAL …`. Each micro-batch is
//! joined with itself and with the rows kept from earlier batches
//! ([`state`]), which stay until the watermark is the interval past them
//! ([`spec`]); every pair is emitted once, when its later row arrives.

pub mod spec;
pub mod state;

pub use spec::JoinSpec;
pub use state::JoinState;
