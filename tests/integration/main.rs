//! weir's integration tests: one binary, one module per area.

mod support;

mod cache;
mod cli;
mod hostile;
mod library;
mod sql_files;
mod types;
