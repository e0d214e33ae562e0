//! The `weir` command line.

mod replay;
mod run;
mod sdk;
mod serve;
mod sql;
mod udf;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::WeirConfig;
use crate::sandbox::Sandbox;

/// weir: sandboxed WebAssembly UDFs over streaming Arrow data with SQL.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
pub struct Cli {
    /// Configuration file (see docs/config.md). Without it, defaults apply.
    #[arg(long, global = true, env = "WEIR_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one SQL query over files, with WASM UDFs. Needs no broker.
    Sql(sql::SqlArgs),
    /// Run pipelines (a file or a folder of *.toml) until SIGINT/SIGTERM or
    /// their sources end.
    Run(run::RunArgs),
    /// Re-send dead letters (after a fix) to their source topic or a file.
    Replay(replay::ReplayArgs),
    /// Work with UDF modules.
    #[command(subcommand)]
    Udf(udf::UdfCommand),
    /// Serve the HTTP API (UDF registry, audit log, /metrics).
    Serve(serve::ServeArgs),
    /// Bearer tokens for `weir serve`.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new random token and the sha256 to configure.
    New,
}

impl Cli {
    fn config(&self) -> anyhow::Result<WeirConfig> {
        Ok(match &self.config {
            Some(path) => WeirConfig::from_file(path)?,
            None => WeirConfig::default(),
        })
    }

    fn sandbox(&self) -> anyhow::Result<Sandbox> {
        Ok(Sandbox::with_options(self.config()?.sandbox_options())?)
    }

    /// Runs the command; the error is the message for the user.
    pub async fn run(self) -> anyhow::Result<()> {
        match &self.command {
            Command::Sql(args) => sql::run(self.sandbox()?, args).await,
            Command::Run(args) => run::run(self.sandbox()?, args).await,
            Command::Replay(args) => replay::run(args).await,
            Command::Udf(cmd) => udf::run(&self, cmd),
            Command::Serve(args) => serve::run(self.config()?, self.sandbox()?, args).await,
            Command::Token(TokenCommand::New) => serve::new_token(),
        }
    }
}

pub use weir_core::error::user_message;
