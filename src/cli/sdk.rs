//! The weir-udf SDK ships inside the `weir` binary: `weir udf new` writes
//! it (with `weir-abi` and the `#[scalar]` macro crate) into a cache folder
//! named by version and content, so a scaffolded crate builds wherever
//! `weir` is installed, without a weir checkout.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `(path inside the SDK folder, contents)`.
const FILES: &[(&str, &str)] = &[
    (
        "weir-abi/src/lib.rs",
        include_str!("../../crates/weir-abi/src/lib.rs"),
    ),
    (
        "weir-udf/src/lib.rs",
        include_str!("../../udfs/sdk/src/lib.rs"),
    ),
    (
        "weir-udf/src/aggregate.rs",
        include_str!("../../udfs/sdk/src/aggregate.rs"),
    ),
    (
        "weir-udf/src/abi.rs",
        include_str!("../../udfs/sdk/src/abi.rs"),
    ),
    (
        "weir-udf/src/input.rs",
        include_str!("../../udfs/sdk/src/input.rs"),
    ),
    (
        "weir-udf/src/output.rs",
        include_str!("../../udfs/sdk/src/output.rs"),
    ),
    (
        "weir-udf/src/runtime.rs",
        include_str!("../../udfs/sdk/src/runtime.rs"),
    ),
    (
        "weir-udf/src/types.rs",
        include_str!("../../udfs/sdk/src/types.rs"),
    ),
    (
        "weir-udf-macros/src/lib.rs",
        include_str!("../../udfs/sdk-macros/src/lib.rs"),
    ),
];

/// The manifests: the same dependencies as in the repository, without its
/// workspace.
fn manifests() -> [(&'static str, String); 3] {
    [
        (
            "weir-abi/Cargo.toml",
            format!(
                "[package]\nname = \"weir-abi\"\nversion = \"{VERSION}\"\nedition = \"2024\"\nlicense = \"Apache-2.0\"\n"
            ),
        ),
        (
            "weir-udf/Cargo.toml",
            format!(
                "[package]\nname = \"weir-udf\"\nversion = \"{VERSION}\"\nedition = \"2024\"\nlicense = \"Apache-2.0\"\n\n[dependencies]\nweir-udf-macros = {{ path = \"../weir-udf-macros\" }}\nweir-abi = {{ path = \"../weir-abi\" }}\n"
            ),
        ),
        (
            "weir-udf-macros/Cargo.toml",
            format!(
                "[package]\nname = \"weir-udf-macros\"\nversion = \"{VERSION}\"\nedition = \"2024\"\nlicense = \"Apache-2.0\"\n\n[lib]\nproc-macro = true\n\n[dependencies]\nsyn = {{ version = \"2\", features = [\"full\"] }}\nquote = \"1\"\nproc-macro2 = \"1\"\n"
            ),
        ),
    ]
}

/// Where SDKs are written: `$WEIR_SDK_HOME`, else `$XDG_CACHE_HOME/weir/sdk`,
/// else `~/.cache/weir/sdk`.
fn home() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WEIR_SDK_HOME") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("weir/sdk"));
    }
    let home = std::env::var_os("HOME")
        .context("no HOME to put the SDK under; set WEIR_SDK_HOME or pass --sdk")?;
    Ok(PathBuf::from(home).join(".cache/weir/sdk"))
}

fn write_all(root: &Path) -> anyhow::Result<()> {
    let manifests = manifests();
    let all = FILES
        .iter()
        .map(|(p, t)| (*p, *t))
        .chain(manifests.iter().map(|(p, t)| (*p, t.as_str())));
    for (path, text) in all {
        let target = root.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, text)?;
    }
    Ok(())
}

/// The `weir-udf` crate of this binary, written out on first use.
pub fn ensure() -> anyhow::Result<PathBuf> {
    let mut hasher = std::hash::DefaultHasher::new();
    FILES.hash(&mut hasher);
    let folder = home()?.join(format!("{VERSION}-{:016x}", hasher.finish()));
    let sdk = folder.join("weir-udf");
    if sdk.join("Cargo.toml").exists() {
        return Ok(sdk);
    }
    // Written beside, then renamed: a concurrent `weir udf new` never sees
    // half an SDK.
    let partial = folder.with_extension(format!("partial-{}", std::process::id()));
    write_all(&partial)
        .with_context(|| format!("cannot write the weir-udf SDK to {}", partial.display()))?;
    match std::fs::rename(&partial, &folder) {
        Ok(()) => {}
        Err(_) if sdk.join("Cargo.toml").exists() => {
            let _ = std::fs::remove_dir_all(&partial);
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot move the SDK to {}", folder.display()));
        }
    }
    Ok(sdk)
}
