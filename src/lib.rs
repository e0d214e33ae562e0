//! # weir
//!
//! Run untrusted, user-written transformations — WebAssembly scalar
//! functions — safely and fast over Arrow data with DataFusion SQL.
//!
//! The path of a batch (see `docs/architecture.md`):
//!
//! * [`abi`] — the host/guest contract: types, descriptors, the manifest.
//! * [`sandbox`] — wasmtime engines, limits, code cache, module loading,
//!   instance pools, error classification.
//! * [`marshal`] — Arrow arrays into guest memory and validated guest output
//!   back into Arrow arrays.
//! * [`udf`] — guest functions as DataFusion `ScalarUDF`s.
//! * [`sql`] — sessions over CSV / NDJSON / Parquet files and result output.
//! * [`pipeline`] — streaming: source → decode → planned SQL per micro-batch
//!   (poison rows isolated) → encode → sink, dead letters, commits.
//! * [`cli`] — the `weir` command.
//!
//! Adding sandboxed UDFs to your own DataFusion session:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let sandbox = weir::Sandbox::new()?;
//! let module = sandbox.load_file("text.wasm")?;
//! let ctx = datafusion::prelude::SessionContext::new();
//! weir::register_module(&ctx, &module);
//! let df = ctx.sql("SELECT mask_email('ada@example.com')").await?;
//! # Ok(()) }
//! ```

pub mod abi;
pub mod cli;
pub mod config;
pub mod marshal;
pub mod pipeline;
pub mod sandbox;
pub mod serve;
pub mod sql;
pub mod telemetry;
pub mod tenant;
pub mod toolchain;
pub mod udf;

pub use sandbox::{
    CpuMeter, Failure, LoadError, Sandbox, SandboxLimits, SandboxOptions, UdfError, UdfModule,
};
pub use udf::{WasmScalarUdf, register_module, scalar_udfs};
