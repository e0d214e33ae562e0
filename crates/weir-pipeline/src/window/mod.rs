//! Event-time windows of a pipeline's SQL (docs/pipelines.md, "Windows").
//!
//! The query reads a window table function instead of `source`:
//! `FROM tumble(source, ts, INTERVAL '1' MINUTE)` or
//! `FROM hop(source, ts, INTERVAL '10' SECOND, INTERVAL '1' MINUTE)` or
//! `FROM session(source, ts, INTERVAL '30' SECOND, user)`, which
//! adds the columns `window_start` and `window_end`, and groups by
//! `window_start`. Records wait in their open windows ([`state`]) until the
//! watermark ([`watermark`]) passes a window's end plus the allowed
//! lateness; then the query runs once over the window's records and its
//! result is emitted, once.

pub mod checkpoint;
pub mod groups;
pub mod spec;
pub mod state;
pub mod watermark;

pub use spec::{WindowKind, WindowSpec, register_window_functions};
pub use state::{Closed, Origins, WindowState, Windowed};
pub use watermark::Watermarks;
