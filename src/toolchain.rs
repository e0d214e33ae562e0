//! Building UDFs to WebAssembly: Rust crates with cargo, C files with
//! clang, JavaScript with weir's own runtime, AssemblyScript with `asc`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target every guest is built for.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Code generation flags for guests: wasm SIMD, and vector loops unrolled
/// 8× so that wasmtime's per-iteration interruption check and register
/// shuffling are amortized (f64 kernels run ~1.8× faster; BENCHMARKS.md).
pub const GUEST_RUSTFLAGS: &str =
    "-C target-feature=+simd128 -C llvm-args=-force-vector-interleave=8";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "the Rust target `{WASM_TARGET}` is not installed; add it with `rustup target add {WASM_TARGET}`"
    )]
    MissingTarget,
    #[error("cannot run `{program}`: {error}")]
    Spawn {
        program: String,
        error: std::io::Error,
    },
    #[error("building {crate_dir} failed (exit status {status}):\n{stderr}")]
    Failed {
        crate_dir: String,
        status: String,
        stderr: String,
    },
    #[error("building {0} produced no .wasm file; is the crate a `cdylib`?")]
    NoArtifact(String),
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Whether the wasm target's standard library is installed.
pub fn wasm_target_installed() -> Result<bool, BuildError> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|error| BuildError::Spawn {
            program: "rustc".into(),
            error,
        })?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(target_in_sysroot(Path::new(&sysroot)))
}

fn target_in_sysroot(sysroot: &Path) -> bool {
    sysroot.join("lib/rustlib").join(WASM_TARGET).exists()
}

/// Builds the crate or workspace at `dir` (release, wasm32) into
/// `target_dir` and returns the `.wasm` files produced.
///
/// Cargo runs with `dir` as its working directory so the crate's own
/// `.cargo/config.toml` (e.g. target features) applies.
pub fn build_rust(dir: &Path, target_dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    if !wasm_target_installed()? {
        return Err(BuildError::MissingTarget);
    }
    // Cargo runs inside `dir`: a relative target directory means this
    // process's working directory, not the crate's.
    let target_dir = std::path::absolute(target_dir).map_err(|error| BuildError::Spawn {
        program: cargo(),
        error,
    })?;
    let out = Command::new(cargo())
        .current_dir(dir)
        .args(["build", "--release", "--target", WASM_TARGET])
        .args(["--message-format", "json-render-diagnostics"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS",
            GUEST_RUSTFLAGS,
        )
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .map_err(|error| BuildError::Spawn {
            program: cargo(),
            error,
        })?;
    if !out.status.success() {
        return Err(BuildError::Failed {
            crate_dir: dir.display().to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let mut wasm = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            wasm.extend(
                files
                    .iter()
                    .filter_map(|f| f.as_str())
                    .filter(|f| f.ends_with(".wasm"))
                    .map(PathBuf::from),
            );
        }
    }
    if wasm.is_empty() {
        return Err(BuildError::NoArtifact(dir.display().to_string()));
    }
    wasm.sort();
    wasm.dedup();
    Ok(wasm)
}

/// The C compiler for C UDFs (`WEIR_CLANG` overrides).
fn clang() -> String {
    std::env::var("WEIR_CLANG").unwrap_or_else(|_| "clang".to_string())
}

/// Builds every `.c` file of `dir` to its own module
/// `target_dir/<stem>.wasm` with clang's wasm32 target (needs `clang` and
/// `wasm-ld`: Debian packages `clang` and `lld`). `udfs/c/weir_udf.h` is on
/// the include path after `dir`.
pub fn build_c(dir: &Path, target_dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let spawn = |error| BuildError::Spawn {
        program: clang(),
        error,
    };
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(spawn)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    sources.sort();
    std::fs::create_dir_all(target_dir).map_err(spawn)?;
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("udfs/c");
    let mut built = Vec::new();
    for source in sources {
        let stem = source
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let out_path = target_dir.join(format!("{stem}.wasm"));
        let out = Command::new(clang())
            .args([
                "--target=wasm32",
                "-O2",
                "-nostdlib",
                "-Wl,--no-entry",
                "-Wl,--strip-debug",
            ])
            .arg("-I")
            .arg(dir)
            .arg("-I")
            .arg(&sdk)
            .arg("-o")
            .arg(&out_path)
            .arg(&source)
            .output()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => BuildError::Spawn {
                    program: format!("{} (install it: apt-get install clang lld)", clang()),
                    error,
                },
                _ => spawn(error),
            })?;
        if !out.status.success() {
            return Err(BuildError::Failed {
                crate_dir: source.display().to_string(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        built.push(out_path);
    }
    if built.is_empty() {
        return Err(BuildError::NoArtifact(format!(
            "{} (no .c files)",
            dir.display()
        )));
    }
    Ok(built)
}

/// Whether `dir` holds a file ending in `.ext`.
pub fn has_files(dir: &Path, ext: &str) -> bool {
    sources(dir, ext).is_ok_and(|s| !s.is_empty())
}

fn sources(dir: &Path, ext: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    found.sort();
    Ok(found)
}

/// Builds every `.js` file of `dir` to its own module
/// `target_dir/<stem>.wasm`: the functions its `// @udf` lines declare,
/// compiled to QuickJS bytecode in `sandbox` (no toolchain needed), then
/// loaded once so that a missing function or a failing top level is
/// reported here.
pub fn build_js(
    sandbox: &weir_core::Sandbox,
    dir: &Path,
    target_dir: &Path,
) -> Result<Vec<PathBuf>, BuildError> {
    use weir_core::lang::javascript;
    build_scripts(
        sandbox,
        dir,
        "js",
        "javascript",
        target_dir,
        |file, text| {
            weir_core::lang::declarations(file, text)
                .map_err(javascript::JsError::from)
                .and_then(|sigs| javascript::module(sandbox, file, text, &sigs))
                .map_err(|e| e.to_string())
        },
    )
}

/// Builds every `.py` file of `dir` to its own module
/// `target_dir/<stem>.wasm`: the functions its `# @udf` lines declare, with
/// the source, on the embedded Python runtime (no toolchain needed), then
/// loaded once so that a syntax error, a missing function or a failing top
/// level is reported here.
pub fn build_python(
    sandbox: &weir_core::Sandbox,
    dir: &Path,
    target_dir: &Path,
) -> Result<Vec<PathBuf>, BuildError> {
    use weir_core::lang::python;
    build_scripts(sandbox, dir, "py", "python", target_dir, |file, text| {
        let sigs = weir_core::lang::declarations(file, text).map_err(|e| e.to_string())?;
        python::module(file, text, &sigs).map_err(|e| e.to_string())
    })
}

/// Every `.<ext>` file of `dir` made into its module by `module` (file
/// name, text), loaded once in `sandbox`, written to
/// `target_dir/<stem>.wasm`.
fn build_scripts(
    sandbox: &weir_core::Sandbox,
    dir: &Path,
    ext: &str,
    language: &str,
    target_dir: &Path,
    module: impl Fn(&str, &str) -> Result<Vec<u8>, String>,
) -> Result<Vec<PathBuf>, BuildError> {
    let io = |error| BuildError::Spawn {
        program: format!("weir ({language})"),
        error,
    };
    let failed = |source: &Path, stderr: String| BuildError::Failed {
        crate_dir: source.display().to_string(),
        status: "error".into(),
        stderr,
    };
    std::fs::create_dir_all(target_dir).map_err(io)?;
    let mut built = Vec::new();
    for source in sources(dir, ext).map_err(io)? {
        let file = source
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&source).map_err(io)?;
        let wasm = module(&file, &text).map_err(|e| failed(&source, e))?;
        sandbox
            .load(&file, &wasm)
            .map_err(|e| failed(&source, e.to_string()))?;
        let stem = source.file_stem().unwrap_or_default().to_string_lossy();
        let out_path = target_dir.join(format!("{stem}.wasm"));
        std::fs::write(&out_path, wasm).map_err(io)?;
        built.push(out_path);
    }
    if built.is_empty() {
        return Err(BuildError::NoArtifact(format!(
            "{} (no .{ext} files)",
            dir.display()
        )));
    }
    Ok(built)
}

/// AssemblyScript's compiler: `WEIR_ASC`, else `node_modules/.bin/asc` in
/// `dir` or a folder above it, else `asc` on the `PATH`.
pub fn asc(dir: &Path) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WEIR_ASC") {
        return Some(PathBuf::from(path));
    }
    let dir = std::path::absolute(dir).ok()?;
    for folder in dir.ancestors() {
        let local = folder.join("node_modules/.bin/asc");
        if local.is_file() {
            return Some(local);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|p| p.join("asc"))
        .find(|p| p.is_file())
}

/// Builds every `.ts` file of `dir` that declares functions (`// @udf`
/// lines) to its own module `target_dir/<stem>.wasm`: weir writes the glue
/// (`weir_core::lang::assemblyscript`) and the adapter `weir.ts` into
/// `target_dir/.assemblyscript/<stem>/` beside copies of the folder's `.ts`
/// files, AssemblyScript's `asc` compiles them, weir appends the manifest
/// and loads the module once so that a problem is reported here.
pub fn build_assemblyscript(
    sandbox: &weir_core::Sandbox,
    dir: &Path,
    target_dir: &Path,
) -> Result<Vec<PathBuf>, BuildError> {
    use weir_core::lang::{assemblyscript as asm, declarations};
    let io = |error| BuildError::Spawn {
        program: "weir (assemblyscript)".into(),
        error,
    };
    let failed = |source: &Path, stderr: String| BuildError::Failed {
        crate_dir: source.display().to_string(),
        status: "error".into(),
        stderr,
    };
    let asc = asc(dir).ok_or_else(|| BuildError::Spawn {
        program: format!(
            "asc (AssemblyScript's compiler; install it: `npm install -g assemblyscript@{}`, or `npm install --save-dev assemblyscript@{}` in {})",
            asm::ASC_VERSION,
            asm::ASC_VERSION,
            dir.display()
        ),
        error: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let files = sources(dir, "ts").map_err(io)?;
    let target_dir = std::path::absolute(target_dir).map_err(io)?;
    std::fs::create_dir_all(&target_dir).map_err(io)?;
    let mut built = Vec::new();
    for source in &files {
        let file = source
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if file == asm::ADAPTER_FILE || file == asm::ENTRY || file.ends_with(".d.ts") {
            continue;
        }
        let text = std::fs::read_to_string(source).map_err(io)?;
        let functions = declarations(&file, &text).map_err(|e| failed(source, e.to_string()))?;
        if functions.is_empty() {
            continue; // a helper the others import
        }
        let stem = source
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let work = target_dir.join(".assemblyscript").join(&stem);
        std::fs::create_dir_all(&work).map_err(io)?;
        for other in &files {
            if let Some(name) = other.file_name() {
                std::fs::copy(other, work.join(name)).map_err(io)?;
            }
        }
        std::fs::write(work.join(asm::ADAPTER_FILE), asm::ADAPTER).map_err(io)?;
        std::fs::write(work.join(asm::ENTRY), asm::glue(&stem, &functions)).map_err(io)?;
        let out_path = target_dir.join(format!("{stem}.wasm"));
        let out = Command::new(&asc)
            .current_dir(&work)
            .arg(asm::ENTRY)
            .args(asm::ASC_FLAGS)
            .arg("-o")
            .arg(&out_path)
            .output()
            .map_err(|error| BuildError::Spawn {
                program: asc.display().to_string(),
                error,
            })?;
        if !out.status.success() {
            // Point at the user's folder, not the copies.
            let mut stderr = String::from_utf8_lossy(&out.stderr).replace(
                &format!("{}/", work.display()),
                &format!("{}/", dir.display()),
            );
            if stderr.contains(asm::ENTRY) {
                stderr.push_str(&format!(
                    "\n{} is the glue weir wrote for the `// @udf` lines of {file}: a type error there means a function's AssemblyScript types differ from its @udf line (BIGINT is i64, INT i32, DOUBLE f64, REAL f32, VARCHAR string, BYTEA Uint8Array, BOOLEAN bool, TIMESTAMP i64, DATE i32; docs/udf-guide.md)\n",
                    work.join(asm::ENTRY).display()
                ));
            }
            return Err(failed(source, stderr));
        }
        let mut wasm = std::fs::read(&out_path).map_err(io)?;
        weir_core::lang::runtime::append_custom_section(
            &mut wasm,
            weir_core::abi::MANIFEST_SECTION,
            asm::manifest(&functions).as_bytes(),
        );
        sandbox
            .load(&file, &wasm)
            .map_err(|e| failed(source, e.to_string()))?;
        std::fs::write(&out_path, wasm).map_err(io)?;
        built.push(out_path);
    }
    if built.is_empty() {
        return Err(BuildError::NoArtifact(format!(
            "{} (no .ts file declares a function with a `// @udf` line)",
            dir.display()
        )));
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_target_is_detected_and_explained() {
        let sysroot = std::env::temp_dir().join("weir-no-such-sysroot");
        assert!(!target_in_sysroot(&sysroot));
        let message = BuildError::MissingTarget.to_string();
        assert!(
            message.contains("rustup target add wasm32-unknown-unknown"),
            "{message}"
        );
    }
}
