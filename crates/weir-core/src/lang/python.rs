//! Python UDFs: a source file and its declared signatures become a module.
//!
//! The runtime is monty (a pure-Rust interpreter of a Python subset)
//! behind weir's ABI, compiled to `wasm32-unknown-unknown` with no imports
//! (`udfs/python/weir_py.wasm`, built from crates.io sources by
//! `udfs/python/build.sh`, embedded here). A Python module is that runtime,
//! unchanged, plus two custom sections: the manifest, each function naming
//! the runtime's export `weir_py_fn_K` that serves it, and the program
//! (`weir.init`: the signatures, the file name and the source). Each
//! instance runs the source once when it starts, inside the sandbox under
//! the caller's limits (docs/abi.md §10): a syntax error or a top-level
//! exception refuses the module at load with Python's message and line.

use super::runtime::{signature_table, with_program};
use super::signature::Signature;
use crate::abi::MAX_INIT_BYTES;

/// The runtime module (monty 1.4.0 and its adapter `udfs/python/src/lib.rs`).
pub static RUNTIME: &[u8] = include_bytes!("../../../../udfs/python/weir_py.wasm");

/// Most functions one source may declare (the runtime's `weir_py_fn_K`).
pub const MAX_FUNCTIONS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PyError {
    #[error(
        "{file} declares no function: add a line `# @udf name(a DOUBLE) RETURNS DOUBLE` for each function SQL may call"
    )]
    NoFunctions { file: String },
    #[error("{file} declares {count} functions; a source may declare at most {MAX_FUNCTIONS}")]
    TooMany { file: String, count: usize },
    #[error("{file}: {message}")]
    Declaration { file: String, message: String },
    #[error(
        "{file}: the program is {bytes} bytes, above the {MAX_INIT_BYTES}-byte limit of a module's program"
    )]
    TooLarge { file: String, bytes: usize },
}

/// The module running `functions` of the Python `source` (named `file` in
/// messages and tracebacks).
pub fn module(file: &str, source: &str, functions: &[Signature]) -> Result<Vec<u8>, PyError> {
    if functions.is_empty() {
        return Err(PyError::NoFunctions {
            file: file.to_string(),
        });
    }
    if functions.len() > MAX_FUNCTIONS {
        return Err(PyError::TooMany {
            file: file.to_string(),
            count: functions.len(),
        });
    }
    let declaration = |message: String| PyError::Declaration {
        file: file.to_string(),
        message,
    };
    if let Some(f) = functions.iter().find(|f| !is_identifier(&f.name)) {
        return Err(declaration(format!(
            "`{}` is not a Python function name (letters, digits and `_`, not starting with a digit)",
            f.name
        )));
    }
    let (manifest, mut program) =
        signature_table(b"WPY1", "weir_py_fn_", functions).map_err(declaration)?;
    program.extend((file.len() as u32).to_le_bytes());
    program.extend(file.as_bytes());
    program.extend(source.as_bytes());
    if program.len() > MAX_INIT_BYTES {
        return Err(PyError::TooLarge {
            file: file.to_string(),
            bytes: program.len(),
        });
    }
    Ok(with_program(RUNTIME, &manifest, &program))
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// The source of an inline function: `body` (dedented: `AS $$ … $$` often
/// starts with a space or an indented line) when it defines `def name(` at
/// its top level, else `body` as the function's body (its parameters are
/// the SQL arguments' names), indented under the `def`.
pub fn inline_source(name: &str, params: &[&str], body: &str) -> String {
    let lines: Vec<&str> = body.trim_end().lines().collect();
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let dedented: Vec<&str> = lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or_else(|| l.trim_start()))
        .collect();
    let mut source = String::new();
    if !dedented.iter().any(|line| defines_function(line, name)) {
        source = format!("def {name}({}):\n", params.join(", "));
        if dedented.iter().all(|l| l.trim().is_empty()) {
            source.push_str("    return None\n");
        }
        // The `def` takes the place of an empty first line (the one after
        // `$$`), so a traceback's line numbers are those of the SQL text.
        let skip = usize::from(dedented.first().is_some_and(|l| l.trim().is_empty()));
        for line in dedented.into_iter().skip(skip) {
            if !line.trim().is_empty() {
                source.push_str("    ");
            }
            source.push_str(line);
            source.push('\n');
        }
        return source;
    }
    for line in dedented {
        source.push_str(line);
        source.push('\n');
    }
    source
}

/// Whether `line` is `def name(` at the top level.
fn defines_function(line: &str, name: &str) -> bool {
    line.strip_prefix("def")
        .filter(|rest| rest.starts_with(char::is_whitespace))
        .map(str::trim_start)
        .and_then(|rest| rest.strip_prefix(name))
        .is_some_and(|rest| rest.trim_start().starts_with('('))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_has_no_imports() {
        let f = crate::lang::parse_signature("f(x BIGINT) RETURNS BIGINT").unwrap();
        let wasm = module("f.py", "def f(x): return x\n", &[f]).unwrap();
        let info = crate::sandbox::inspect(&wasm).unwrap();
        assert!(info.imports.is_empty(), "{:?}", info.imports);
    }

    #[test]
    fn an_inline_body_becomes_the_function() {
        assert_eq!(
            inline_source("f", &["x"], " def f(x): return x * 2 "),
            "def f(x): return x * 2\n"
        );
        assert_eq!(
            inline_source(
                "f",
                &["x"],
                "\n    K = 3\n    def f(x):\n        return x * K\n"
            ),
            "\nK = 3\ndef f(x):\n    return x * K\n"
        );
        assert_eq!(
            inline_source("f", &["x", "y"], "\n  z = x + y\n  return z\n"),
            "def f(x, y):\n    z = x + y\n    return z\n"
        );
        assert!(!defines_function("def fx(a): pass", "f"));
        assert!(!defines_function("    def f(a): pass", "f"));
    }
}
