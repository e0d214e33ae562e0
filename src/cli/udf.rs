//! `weir udf …`: inspect and build modules.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::Cli;
use crate::toolchain;

#[derive(Debug, Subcommand)]
pub enum UdfCommand {
    /// Print a module's functions, signatures, determinism, ABI version and
    /// imported capabilities (the module is fully validated and compiled).
    Inspect(InspectArgs),
    /// Build a Rust UDF crate (or workspace) to wasm and print the modules.
    Build(BuildArgs),
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
        UdfCommand::Build(args) => build(args),
    }
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
        let doc = serde_json::json!({
            "module": module.label(),
            "sha256": module.digest(),
            "abi_version": manifest.abi_version,
            "capabilities": capabilities,
            "functions": functions,
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
    Ok(())
}

fn build(args: &BuildArgs) -> anyhow::Result<()> {
    let target_dir = args
        .target_dir
        .clone()
        .unwrap_or_else(|| args.dir.join("target"));
    let modules = toolchain::build_rust(&args.dir, &target_dir)?;
    for path in modules {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("{}  ({} KiB)", path.display(), size.div_ceil(1024));
    }
    Ok(())
}
