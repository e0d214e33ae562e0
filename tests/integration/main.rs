//! weir's integration tests: one binary, one module per area.

mod support;

mod aggregate;
mod architecture;
mod avro;
mod boundary;
mod breaker;
mod cache;
mod cli;
mod cluster;
mod exactly_once;
mod fuzz;
mod hostile;
mod joins;
mod kafka;
mod library;
mod limits;
mod nexmark;
mod pipeline;
mod poison;
mod python;
mod replay;
mod serve;
mod sql_files;
mod tables;
mod tenant;
mod types;
mod windows;
mod wire;
