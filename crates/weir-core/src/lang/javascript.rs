//! JavaScript UDFs: a script and its declared signatures become a module.
//!
//! The runtime is QuickJS-NG compiled to `wasm32-unknown-unknown` with no
//! imports (`udfs/js/weir_js.wasm`, built from crates.io sources by
//! `udfs/js/build.sh`, embedded here). A JavaScript module is that runtime,
//! unchanged, plus two custom sections: the manifest, each function naming
//! the runtime's export `weir_js_fn_K` that serves it, and the program
//! (`weir.init`: the signatures and the script's QuickJS bytecode), which
//! each instance reads once when it starts (docs/abi.md §10). The bytecode
//! is compiled by the same runtime, run in the caller's sandbox under its
//! limits: nothing of the script runs in the host.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BinaryArray, StringArray};

use super::declaration::{DECLARATION_TAG, DeclarationError};
use super::runtime::{append_custom_section, signature_table, with_program};
use super::signature::Signature;
use crate::abi::{MANIFEST_SECTION, MAX_INIT_BYTES};
use crate::sandbox::{Failure, LoadError, Sandbox, UdfModule};

/// The runtime module (QuickJS-NG 0.16.2 and its adapter `weir_js.c`).
pub static RUNTIME: &[u8] = include_bytes!("../../../../udfs/js/weir_js.wasm");

/// Most functions one script may declare (the runtime's `weir_js_fn_K`).
pub const MAX_FUNCTIONS: usize = 32;

/// The runtime's build-time export: (file name, source) -> bytecode.
const COMPILER: &str = "weir_js_compile";

#[derive(Debug, thiserror::Error)]
pub enum JsError {
    #[error(
        "{file} declares no function: add a line `// {DECLARATION_TAG} name(a DOUBLE) RETURNS DOUBLE` for each function SQL may call"
    )]
    NoFunctions { file: String },
    #[error("{file} declares {count} functions; a script may declare at most {MAX_FUNCTIONS}")]
    TooMany { file: String, count: usize },
    #[error(transparent)]
    Declaration(#[from] DeclarationError),
    #[error("{file}: {message}")]
    Compile { file: String, message: String },
    #[error(
        "{file}: the program is {bytes} bytes, above the {MAX_INIT_BYTES}-byte limit of a module's program"
    )]
    TooLarge { file: String, bytes: usize },
}

/// How the compiler (the runtime itself, a module) is loaded: under whose
/// limits and policy it runs.
pub type Loader<'a> = &'a (dyn Fn(&str, &[u8]) -> Result<Arc<UdfModule>, LoadError> + Sync);

/// Compiles `source` to QuickJS bytecode inside `sandbox` (its limits bound
/// the compiler: a script that makes it run out of CPU or memory fails
/// here with the sandbox's message).
pub fn compile(sandbox: &Sandbox, file: &str, source: &str) -> Result<Vec<u8>, JsError> {
    compile_with(&|label, wasm| sandbox.load(label, wasm), file, source)
}

/// Like [`compile`], the compiler loaded by `load` (a tenant's limits, its
/// share of guest time).
pub fn compile_with(load: Loader<'_>, file: &str, source: &str) -> Result<Vec<u8>, JsError> {
    let compile_err = |message: String| JsError::Compile {
        file: file.to_string(),
        message,
    };
    let compiler = compiler_module();
    let module = load("javascript compiler", &compiler).map_err(|e| compile_err(e.to_string()))?;
    let args: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![file])),
        Arc::new(StringArray::from(vec![source])),
    ];
    let out = module.call(0, &args, 1).map_err(|e| match &e.failure {
        Failure::RowError { message, .. } => compile_err(message.clone()),
        Failure::RowErrors(partial) => compile_err(
            partial
                .errors
                .first()
                .map(|(_, m)| m.clone())
                .unwrap_or_default(),
        ),
        _ => compile_err(e.to_string()),
    })?;
    let code = out
        .as_any()
        .downcast_ref::<BinaryArray>()
        .filter(|a| a.len() == 1 && !a.is_null(0))
        .map(|a| a.value(0).to_vec())
        .ok_or_else(|| compile_err("the compiler returned no bytecode".into()))?;
    Ok(code)
}

/// The runtime with a manifest that declares only its compiler.
fn compiler_module() -> Vec<u8> {
    let line = format!(
        "{{\"abi\":1,\"name\":\"{COMPILER}\",\"args\":[\"utf8\",\"utf8\"],\"ret\":\"binary\"}}\n"
    );
    let mut wasm = RUNTIME.to_vec();
    append_custom_section(&mut wasm, MANIFEST_SECTION, line.as_bytes());
    wasm
}

/// The module running `functions` of the script `source`.
pub fn module(
    sandbox: &Sandbox,
    file: &str,
    source: &str,
    functions: &[Signature],
) -> Result<Vec<u8>, JsError> {
    module_with(
        &|label, wasm| sandbox.load(label, wasm),
        file,
        source,
        functions,
    )
}

/// Like [`module`], the compiler loaded by `load`.
pub fn module_with(
    load: Loader<'_>,
    file: &str,
    source: &str,
    functions: &[Signature],
) -> Result<Vec<u8>, JsError> {
    if functions.is_empty() {
        return Err(JsError::NoFunctions {
            file: file.to_string(),
        });
    }
    if functions.len() > MAX_FUNCTIONS {
        return Err(JsError::TooMany {
            file: file.to_string(),
            count: functions.len(),
        });
    }
    let code = compile_with(load, file, source)?;
    let (manifest, mut program) =
        signature_table(b"WJS1", "weir_js_fn_", functions).map_err(|message| JsError::Compile {
            file: file.to_string(),
            message,
        })?;
    program.extend(code);
    if program.len() > MAX_INIT_BYTES {
        return Err(JsError::TooLarge {
            file: file.to_string(),
            bytes: program.len(),
        });
    }
    Ok(with_program(RUNTIME, &manifest, &program))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_has_no_imports() {
        let info = crate::sandbox::inspect(&compiler_module()).unwrap();
        assert!(info.imports.is_empty(), "{:?}", info.imports);
    }
}
