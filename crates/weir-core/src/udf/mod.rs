//! DataFusion integration: each function a module declares becomes a
//! [`datafusion::logical_expr::ScalarUDF`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use datafusion::prelude::SessionContext;
//! let sandbox = weir_core::Sandbox::new()?;
//! let module = sandbox.load_file("udfs/haversine.wasm")?;
//! let ctx = SessionContext::new();
//! weir_core::register_module(&ctx, &module);
//! ctx.sql("SELECT haversine_km(1.0, 2.0, 3.0, 4.0)").await?.show().await?;
//! # Ok(()) }
//! ```

mod row_errors;
mod scalar;
pub mod staged;

use std::sync::Arc;

use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::SessionContext;

pub use row_errors::{CollectedCall, RowErrorCollector};
pub use scalar::WasmScalarUdf;

use crate::sandbox::UdfModule;

/// One `ScalarUDF` per function of `module`.
pub fn scalar_udfs(module: &Arc<UdfModule>) -> Vec<ScalarUDF> {
    (0..module.manifest().functions.len())
        .map(|index| ScalarUDF::new_from_impl(WasmScalarUdf::new(module.clone(), index)))
        .collect()
}

/// Registers every function of `module` in `ctx`, replacing functions of
/// the same name. Returns the names registered.
pub fn register_module(ctx: &SessionContext, module: &Arc<UdfModule>) -> Vec<String> {
    scalar_udfs(module)
        .into_iter()
        .map(|udf| {
            let name = udf.name().to_string();
            ctx.register_udf(udf);
            name
        })
        .collect()
}

/// Like [`register_module`] for a request that ends at `deadline`: guest
/// calls due after it are cancelled, one in flight then is interrupted.
pub fn register_module_until(
    ctx: &SessionContext,
    module: &Arc<UdfModule>,
    deadline: std::time::Instant,
) {
    for index in 0..module.manifest().functions.len() {
        let udf = WasmScalarUdf::new(module.clone(), index).with_deadline(deadline);
        ctx.register_udf(ScalarUDF::new_from_impl(udf));
    }
}

/// Like [`register_module`], with row errors going to `collector` while it
/// is active (pipelines).
pub fn register_module_collecting(
    ctx: &SessionContext,
    module: &Arc<UdfModule>,
    collector: &Arc<RowErrorCollector>,
) {
    for index in 0..module.manifest().functions.len() {
        let udf = WasmScalarUdf::new(module.clone(), index).with_row_errors(collector.clone());
        ctx.register_udf(ScalarUDF::new_from_impl(udf));
    }
}

/// Like [`register_module`] for any [`FunctionRegistry`].
pub fn register_module_in(
    registry: &mut dyn FunctionRegistry,
    module: &Arc<UdfModule>,
) -> datafusion::error::Result<Vec<String>> {
    scalar_udfs(module)
        .into_iter()
        .map(|udf| {
            let name = udf.name().to_string();
            registry.register_udf(Arc::new(udf))?;
            Ok(name)
        })
        .collect()
}
