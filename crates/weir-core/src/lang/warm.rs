//! The script languages' runtimes compiled ahead of their first function.
//! Every JavaScript or Python function is the same runtime with its own
//! program in a custom section, so one compile of each runtime (per engine
//! kind) serves them all, from the code cache; but that first compile is
//! seconds of CPU (the Python runtime ~10 s on this project's 2-core
//! machine), and a tenant's first `CREATE FUNCTION … LANGUAGE python` would
//! pay it within its statement's deadline. A server warms them when it
//! starts instead.

use std::time::Instant;

use crate::abi::AbiType;
use crate::sandbox::Sandbox;

use super::{Signature, javascript, python};

/// `weir_warm(x BIGINT) RETURNS BIGINT`, deterministic (the engine kind
/// of every function not declared `VOLATILE`).
fn signature() -> Signature {
    Signature {
        name: "weir_warm".to_string(),
        args: vec![("x".to_string(), AbiType::Int64)],
        ret: AbiType::Int64,
        deterministic: true,
    }
}

/// Compiles the JavaScript runtime (its compiler, and a function) and the
/// Python runtime into `sandbox`'s code caches, as their first functions
/// would. Each language's failure is reported by name; neither stops the
/// other.
///
/// # Errors
/// The languages whose runtime could not be loaded, with why.
pub fn warm_runtimes(sandbox: &Sandbox) -> Result<(), String> {
    let started = Instant::now();
    // Each language's module, then loaded as a tenant's function would be.
    let load = |language: &str, wasm: Result<Vec<u8>, String>| {
        wasm.and_then(|wasm| {
            sandbox
                .load(&format!("{language} runtime (warm-up)"), &wasm)
                .map_err(|e| e.to_string())
        })
        .err()
        .map(|e| format!("{language}: {e}"))
    };
    let failed: Vec<String> = [
        load(
            "javascript",
            javascript::module(
                sandbox,
                "weir_warm.js",
                "function weir_warm(x) { return x; }",
                &[signature()],
            )
            .map_err(|e| e.to_string()),
        ),
        load(
            "python",
            python::module(
                "weir_warm.py",
                "def weir_warm(x):\n    return x\n",
                &[signature()],
            )
            .map_err(|e| e.to_string()),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "the JavaScript and Python runtimes are compiled"
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}
