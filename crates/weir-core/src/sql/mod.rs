//! SQL over files with sandboxed UDFs: the engine behind `weir sql`.

mod bounded;
mod bounds;
mod output;
mod script;
mod session;
mod tables;

pub use bounded::bounded_context;
pub use bounds::{SqlBounds, check_bounds};
pub use output::{OutputFormat, write_batches};
pub use script::{
    Described, FunctionHost, InlineFunction, describe_script, run_script, split_functions,
    stream_script,
};
pub use session::{LocalFunctions, SqlSession, read_only, session_config};
pub use tables::{TableFormat, TableSpec, register_table};
