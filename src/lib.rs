//! # weir
//!
//! The `weir` command and its configuration. The engine lives in the
//! workspace's crates, re-exported here under their layer names:
//!
//! * [`abi`] (`weir-abi`, `weir-core`) — the host/guest contract.
//! * [`sandbox`], [`marshal`], [`udf`], [`tenant`], [`sql`], [`telemetry`]
//!   (`weir-core`) — the sandboxed UDFs and their DataFusion glue; what an
//!   application embeds (no Kafka client, HTTP server or database).
//! * [`pipeline`] (`weir-pipeline`) — streaming: source → decode → SQL per
//!   micro-batch → encode → sink, dead letters, commits, the supervisor.
//! * [`serve`] (`weir-serve`) — the HTTP control plane.
//! * [`cli`], [`config`], [`toolchain`] — this crate: the command line.
//!
//! See `docs/architecture.md` for the crate graph.

pub mod cli;
pub mod config;
pub mod toolchain;

pub use weir_core::{abi, error, lang, marshal, sandbox, sql, telemetry, tenant, udf};
pub use weir_pipeline as pipeline;
pub use weir_serve as serve;

pub use weir_core::{
    CpuMeter, Failure, LoadError, Sandbox, SandboxLimits, SandboxOptions, UdfError, UdfModule,
    WasmScalarUdf, register_module, scalar_udfs,
};
