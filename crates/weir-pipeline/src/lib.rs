//! Streaming pipelines: source → decode → SQL with UDFs (planned once, run
//! per micro-batch, poison rows isolated) → encode → sink, with dead letters
//! and commits of what the sink acknowledged.

pub mod avro;
pub mod changelog;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod encode;
pub mod infer;
pub mod inflight;
pub mod isolate;
pub mod join;
pub mod kafka;
pub mod open;
pub mod pipeline_error;
pub mod query;
pub mod record;
pub mod repartition;
pub mod resources;
pub mod runner;
pub mod sink;
pub mod source;
pub mod supervisor;
pub mod table;
pub mod transaction;
pub mod window;
pub mod workers;

// The layers below, reachable as `crate::sandbox`, … inside this crate.
use weir_core::{abi, error, sandbox, sql, telemetry, tenant, udf};

pub use config::PipelineConfig;
pub use pipeline_error::PipelineError;
pub use runner::{Pipeline, PipelineStats};
pub use supervisor::{PipelineState, Status, Supervisor};
