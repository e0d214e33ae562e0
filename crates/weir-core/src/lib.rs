//! # weir-core
//!
//! Run untrusted, user-written transformations — WebAssembly scalar
//! functions — safely and fast over Arrow data with DataFusion SQL. This
//! crate is what an application embeds: it compiles no Kafka client, HTTP
//! server, database or command-line parser.
//!
//! The path of a batch (see `docs/architecture.md`):
//!
//! * [`abi`] — the host/guest contract (shared with the guest SDK through
//!   `weir-abi`) and the manifest.
//! * [`sandbox`] — wasmtime engines, limits, code cache, module loading,
//!   instance pools, error classification.
//! * [`marshal`] — Arrow arrays into guest memory and validated guest output
//!   back into Arrow arrays.
//! * [`udf`] — guest functions as DataFusion `ScalarUDF`s; staged runs.
//! * [`tenant`] — policy, quotas, memory totals, breakers, result caches.
//! * [`sql`] — sessions over CSV / NDJSON / Parquet files and result output.
//! * [`telemetry`] — metrics through the `metrics` facade.
//!
//! Adding sandboxed UDFs to your own DataFusion session:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let sandbox = weir_core::Sandbox::new()?;
//! let module = sandbox.load_file("text.wasm")?;
//! let ctx = datafusion::prelude::SessionContext::new();
//! weir_core::register_module(&ctx, &module);
//! let df = ctx.sql("SELECT mask_email('ada@example.com')").await?;
//! # Ok(()) }
//! ```

pub mod abi;
pub mod error;
pub mod lang;
pub mod marshal;
pub mod sandbox;
pub mod secrets;
pub mod sql;
pub mod telemetry;
pub mod tenant;
pub mod udf;

pub use sandbox::{
    CpuMeter, Failure, LoadError, Sandbox, SandboxLimits, SandboxOptions, UdfError, UdfModule,
};
pub use udf::{WasmScalarUdf, register_module, scalar_udfs};
