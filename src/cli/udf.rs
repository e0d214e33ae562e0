//! `weir udf …`: create, build, test, inspect and publish modules.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::Cli;
use crate::toolchain;

#[derive(Debug, Subcommand)]
pub enum UdfCommand {
    /// Print a module's functions, signatures, determinism, ABI version and
    /// imported capabilities (the module is fully validated and compiled).
    Inspect(InspectArgs),
    /// Build a UDF project to wasm and print the modules and their sizes: a
    /// Rust crate (or workspace), a folder of C files (clang), of JavaScript
    /// files (compiled by weir itself) or of AssemblyScript files (`asc`).
    Build(BuildArgs),
    /// Create a UDF project from a template (with a test and sample rows).
    New(NewArgs),
    /// Run a module's function on sample rows: outputs, per-row errors, time.
    Test(TestArgs),
    /// Upload a module to a running `weir serve` (token from WEIR_TOKEN).
    Publish(PublishArgs),
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The UDF's name: lowercase letters, digits and `_`, starting with a letter.
    pub name: String,
    /// Template language: rust, c, js (javascript), py (python) or as (assemblyscript).
    #[arg(long, default_value = "rust")]
    pub lang: String,
    /// Where to create it (default: ./NAME).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The weir-udf SDK crate (default: the one inside this weir binary,
    /// written to ~/.cache/weir/sdk/VERSION-HASH on first use).
    #[arg(long, env = "WEIR_SDK_DIR")]
    pub sdk: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The module (.wasm or .wat).
    pub module: PathBuf,
    /// Rows: `{"function": "f", "rows": [[arg, ...], ...]}`, or a bare array
    /// of rows with `--function`.
    #[arg(long)]
    pub input: PathBuf,
    /// The function (default: from the input file, else the module's first).
    #[arg(long)]
    pub function: Option<String>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The module (.wasm or .wat).
    pub module: PathBuf,
    /// The server, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "WEIR_SERVER")]
    pub server: String,
    #[arg(long, env = "WEIR_TENANT")]
    pub tenant: String,
    /// The UDF's registry name (default: the module's file name).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The module (.wasm or .wat).
    pub path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The crate or workspace directory.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Cargo target directory (default: DIR/target).
    #[arg(long)]
    pub target_dir: Option<PathBuf>,
}

pub fn run(cli: &Cli, cmd: &UdfCommand) -> anyhow::Result<()> {
    match cmd {
        UdfCommand::Inspect(args) => inspect(cli, args),
        UdfCommand::Build(args) => build(cli, args),
        UdfCommand::New(args) => new(args),
        UdfCommand::Test(args) => test(cli, args),
        UdfCommand::Publish(args) => publish(args),
    }
}

/// The Rust template, embedded.
const C_TEMPLATE: &[(&str, &str)] = &[
    ("{{name}}.c", include_str!("../../templates/c/udf.c")),
    ("weir_udf.h", include_str!("../../udfs/c/weir_udf.h")),
    ("rows.json", include_str!("../../templates/rust/rows.json")),
    ("total.json", include_str!("../../templates/c/total.json")),
    ("README.md", include_str!("../../templates/c/README.md")),
];

const JS_TEMPLATE: &[(&str, &str)] = &[
    ("{{name}}.js", include_str!("../../templates/js/udf.js")),
    ("rows.json", include_str!("../../templates/rust/rows.json")),
    ("title.json", include_str!("../../templates/js/title.json")),
    ("README.md", include_str!("../../templates/js/README.md")),
];

const PY_TEMPLATE: &[(&str, &str)] = &[
    ("{{name}}.py", include_str!("../../templates/py/udf.py")),
    ("rows.json", include_str!("../../templates/rust/rows.json")),
    ("title.json", include_str!("../../templates/js/title.json")),
    ("README.md", include_str!("../../templates/py/README.md")),
];

const AS_TEMPLATE: &[(&str, &str)] = &[
    ("{{name}}.ts", include_str!("../../templates/as/udf.ts")),
    ("weir.ts", weir_core::lang::assemblyscript::ADAPTER),
    (
        "tsconfig.json",
        include_str!("../../templates/as/tsconfig.json"),
    ),
    ("rows.json", include_str!("../../templates/rust/rows.json")),
    ("title.json", include_str!("../../templates/js/title.json")),
    ("README.md", include_str!("../../templates/as/README.md")),
];

const RUST_TEMPLATE: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/rust/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../templates/rust/src/lib.rs"),
    ),
    ("rows.json", include_str!("../../templates/rust/rows.json")),
    (
        "spread.json",
        include_str!("../../templates/rust/spread.json"),
    ),
    ("README.md", include_str!("../../templates/rust/README.md")),
];

fn new(args: &NewArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        anyhow::bail!(
            "`{name}` cannot name a UDF: use lowercase letters, digits and `_`, starting with a letter"
        );
    }
    let files = match args.lang.as_str() {
        "rust" => RUST_TEMPLATE,
        "c" => C_TEMPLATE,
        "js" | "javascript" => JS_TEMPLATE,
        "py" | "python" => PY_TEMPLATE,
        "as" | "assemblyscript" => AS_TEMPLATE,
        other => anyhow::bail!("no template for `{other}`; available: rust, c, js, py, as"),
    };
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        anyhow::bail!("{} exists; pick another name or --dir", dir.display());
    }
    let sdk = match (&args.sdk, args.lang.as_str()) {
        (Some(sdk), _) => std::path::absolute(sdk)?,
        (None, "rust") => super::sdk::ensure()?,
        (None, _) => PathBuf::new(),
    };
    if args.lang == "rust" && !sdk.join("Cargo.toml").exists() {
        anyhow::bail!(
            "the weir-udf SDK is not at {}; pass --sdk PATH/udfs/sdk (a weir checkout)",
            sdk.display()
        );
    }
    for (path, text) in files {
        let target = dir.join(path.replace("{{name}}", name));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let text = text
            .replace("{{name}}", name)
            .replace("{{sdk}}", &sdk.display().to_string());
        std::fs::write(&target, text)?;
    }
    println!("created {} ({} UDF)", dir.display(), args.lang);
    println!("next:");
    println!("  cd {}", dir.display());
    println!("  weir udf build");
    let built = match args.lang.as_str() {
        "rust" => format!("target/wasm32-unknown-unknown/release/{name}.wasm"),
        _ => format!("target/{name}.wasm"),
    };
    println!("  weir udf test {built} --input rows.json");
    if matches!(
        args.lang.as_str(),
        "js" | "javascript" | "py" | "python" | "as" | "assemblyscript"
    ) {
        println!("  weir udf test {built} --input title.json");
    }
    if args.lang == "rust" {
        println!(
            "  weir udf test target/wasm32-unknown-unknown/release/{name}.wasm --input spread.json   # the aggregate"
        );
    }
    Ok(())
}

fn test(cli: &Cli, args: &TestArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let input: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", args.input.display()))?;
    let (function, rows) = match &input {
        serde_json::Value::Array(rows) => (None, rows.clone()),
        serde_json::Value::Object(o) => (
            o.get("function")
                .and_then(|f| f.as_str())
                .map(str::to_string),
            o.get("rows")
                .and_then(|r| r.as_array())
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{}: no `rows` array", args.input.display()))?,
        ),
        _ => anyhow::bail!(
            "{}: give {{\"function\": \"f\", \"rows\": [[...], ...]}} or an array of rows",
            args.input.display()
        ),
    };
    let module = cli.sandbox()?.load_file(&args.module)?;
    let function = args
        .function
        .clone()
        .or(function)
        .or_else(|| module.manifest().functions.first().map(|f| f.name.clone()))
        .or_else(|| module.manifest().aggregates.first().map(|f| f.name.clone()))
        .ok_or_else(|| anyhow::anyhow!("the module declares no function"))?;
    let staged =
        weir_core::udf::staged::run_rows(&module, &function, &rows).map_err(anyhow::Error::msg)?;
    if module.aggregate_index(&function).is_some() {
        // One group of every row; its states merged must agree.
        match staged.errors.first() {
            Some(e) => println!(
                "aggregate {function} over {} rows  error (row {}): {}",
                rows.len(),
                e.row,
                e.error
            ),
            None => println!(
                "aggregate {function} over {} rows = {} (state exported and merged: same value)",
                rows.len(),
                staged.outputs.first().cloned().unwrap_or_default()
            ),
        }
        println!(
            "{} guest call(s), {:.3} ms in the guest",
            staged.calls, staged.guest_ms
        );
        return match staged.errors.first() {
            None => Ok(()),
            Some(_) => Err(anyhow::anyhow!("the aggregate failed")),
        };
    }
    let errors: std::collections::HashMap<usize, &str> = staged
        .errors
        .iter()
        .map(|e| (e.row, e.error.as_str()))
        .collect();
    for (i, (row, out)) in rows.iter().zip(&staged.outputs).enumerate() {
        match errors.get(&i) {
            Some(e) => println!("row {i}  {function}{}  error: {e}", args_text(row)),
            None => println!("row {i}  {function}{} = {out}", args_text(row)),
        }
    }
    println!(
        "{} rows, {} failed; {} guest call(s), {:.3} ms in the guest",
        rows.len(),
        staged.errors.len(),
        staged.calls,
        staged.guest_ms
    );
    if staged.errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{} row(s) failed", staged.errors.len()))
    }
}

fn args_text(row: &serde_json::Value) -> String {
    match row.as_array() {
        Some(values) => format!(
            "({})",
            values
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => format!("({row})"),
    }
}

fn publish(args: &PublishArgs) -> anyhow::Result<()> {
    let token = std::env::var("WEIR_TOKEN").map_err(|_| {
        anyhow::anyhow!(
            "set WEIR_TOKEN to a publisher token of tenant `{}`",
            args.tenant
        )
    })?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .module
            .file_stem()
            .map(|s| s.to_string_lossy().replace('-', "_"))
            .ok_or_else(|| anyhow::anyhow!("give --name"))?,
    };
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("cannot read {}", args.module.display()))?;
    let url = format!(
        "{}/v1/tenants/{}/udfs/{name}",
        args.server.trim_end_matches('/'),
        args.tenant
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/wasm")
        .send(&bytes[..])
        .with_context(|| format!("cannot reach {}", args.server))?;
    let status = response.status();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    let answer: serde_json::Value =
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    if !status.is_success() {
        anyhow::bail!(
            "publishing `{name}` failed ({status}): {}",
            answer
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or(&answer.to_string())
        );
    }
    println!(
        "published {name} version {} (sha256 {})",
        answer["version"],
        answer["sha256"].as_str().unwrap_or("?")
    );
    Ok(())
}

fn inspect(cli: &Cli, args: &InspectArgs) -> anyhow::Result<()> {
    let module = cli.sandbox()?.load_file(&args.path)?;
    let manifest = module.manifest();
    let capabilities: Vec<&str> = module.imports().iter().map(|i| i.name.as_str()).collect();
    if args.json {
        let functions: Vec<_> = manifest
            .functions
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name,
                    "args": f.args.iter().map(|t| t.name()).collect::<Vec<_>>(),
                    "ret": f.ret.name(),
                    "deterministic": f.deterministic,
                })
            })
            .collect();
        let aggregates: Vec<_> = manifest
            .aggregates
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name,
                    "args": f.args.iter().map(|t| t.name()).collect::<Vec<_>>(),
                    "ret": f.ret.name(),
                    "state": f.state.iter().map(|t| t.name()).collect::<Vec<_>>(),
                    "retract": f.retract,
                    "deterministic": f.deterministic,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "module": module.label(),
            "sha256": module.digest(),
            "abi_version": manifest.abi_version,
            "capabilities": capabilities,
            "functions": functions,
            "aggregates": aggregates,
        });
        println!("{doc}");
        return Ok(());
    }
    println!("module       {}", module.label());
    println!("sha256       {}", module.digest());
    println!("abi version  {}", manifest.abi_version);
    println!(
        "capabilities {}",
        if capabilities.is_empty() {
            "none".to_string()
        } else {
            capabilities.join(", ")
        }
    );
    println!("functions    {}", manifest.functions.len());
    for f in &manifest.functions {
        let det = if f.deterministic {
            "deterministic"
        } else {
            "non-deterministic"
        };
        println!("  {}  [{det}]", f.signature());
    }
    if !manifest.aggregates.is_empty() {
        println!("aggregates   {}", manifest.aggregates.len());
        for f in &manifest.aggregates {
            let det = if f.deterministic {
                "deterministic"
            } else {
                "non-deterministic"
            };
            println!("  {}  [{det}]", f.signature());
        }
    }
    Ok(())
}

fn build(cli: &Cli, args: &BuildArgs) -> anyhow::Result<()> {
    let target_dir = args
        .target_dir
        .clone()
        .unwrap_or_else(|| args.dir.join("target"));
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!(
        "building {} to wasm (cargo, release)",
        args.dir.display()
    ));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    // A Cargo crate is Rust; a folder of .js files is JavaScript, of .py
    // files Python, of .ts files AssemblyScript; else C.
    let built = if args.dir.join("Cargo.toml").exists() {
        toolchain::build_rust(&args.dir, &target_dir)
    } else if toolchain::has_files(&args.dir, "js") {
        toolchain::build_js(&cli.sandbox()?, &args.dir, &target_dir)
    } else if toolchain::has_files(&args.dir, "py") {
        toolchain::build_python(&cli.sandbox()?, &args.dir, &target_dir)
    } else if toolchain::has_files(&args.dir, "ts") {
        toolchain::build_assemblyscript(&cli.sandbox()?, &args.dir, &target_dir)
    } else {
        toolchain::build_c(&args.dir, &target_dir)
    };
    spinner.finish_and_clear();
    let modules = built?;
    for path in modules {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("{}  ({} KiB)", path.display(), size.div_ceil(1024));
    }
    Ok(())
}
