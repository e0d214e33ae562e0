//! SQL over files with sandboxed UDFs: the engine behind `weir sql`.

mod output;
mod session;
mod tables;

pub use output::{OutputFormat, write_batches};
pub use session::{SqlSession, read_only, session_config};
pub use tables::{TableFormat, TableSpec, register_table};
