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

mod aggregate;
mod row_errors;
mod scalar;
pub mod staged;

use std::sync::Arc;

use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionContext;

pub use aggregate::{WasmAccumulator, WasmAggregateUdf, WasmGroupsAccumulator};
pub use row_errors::{CollectedCall, RowErrorCollector};
pub use scalar::WasmScalarUdf;

use crate::sandbox::UdfModule;

/// One `ScalarUDF` per function of `module`.
pub fn scalar_udfs(module: &Arc<UdfModule>) -> Vec<ScalarUDF> {
    (0..module.manifest().functions.len())
        .map(|index| ScalarUDF::new_from_impl(WasmScalarUdf::new(module.clone(), index)))
        .collect()
}

/// One `AggregateUDF` per aggregate of `module`.
pub fn aggregate_udfs(module: &Arc<UdfModule>) -> Vec<AggregateUDF> {
    (0..module.manifest().aggregates.len())
        .map(|index| AggregateUDF::new_from_impl(WasmAggregateUdf::new(module.clone(), index)))
        .collect()
}

fn register_aggregates(ctx: &SessionContext, module: &Arc<UdfModule>) -> Vec<String> {
    aggregate_udfs(module)
        .into_iter()
        .map(|udaf| {
            let name = udaf.name().to_string();
            ctx.register_udaf(udaf);
            name
        })
        .collect()
}

/// Registers every function (scalar and aggregate) of `module` in `ctx`,
/// replacing functions of the same name. Returns the names registered.
pub fn register_module(ctx: &SessionContext, module: &Arc<UdfModule>) -> Vec<String> {
    let mut names: Vec<String> = scalar_udfs(module)
        .into_iter()
        .map(|udf| {
            let name = udf.name().to_string();
            ctx.register_udf(udf);
            name
        })
        .collect();
    names.extend(register_aggregates(ctx, module));
    names
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
    for index in 0..module.manifest().aggregates.len() {
        let udaf = WasmAggregateUdf::new(module.clone(), index).with_deadline(deadline);
        ctx.register_udaf(AggregateUDF::new_from_impl(udaf));
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
    register_aggregates(ctx, module);
}

/// Like [`register_module`] for any [`FunctionRegistry`].
pub fn register_module_in(
    registry: &mut dyn FunctionRegistry,
    module: &Arc<UdfModule>,
) -> datafusion::error::Result<Vec<String>> {
    let mut names = scalar_udfs(module)
        .into_iter()
        .map(|udf| {
            let name = udf.name().to_string();
            registry.register_udf(Arc::new(udf))?;
            Ok(name)
        })
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    for udaf in aggregate_udfs(module) {
        names.push(udaf.name().to_string());
        registry.register_udaf(Arc::new(udaf))?;
    }
    Ok(names)
}
