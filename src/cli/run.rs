//! `weir run PATH`: run pipelines until they finish or SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tokio::sync::watch;

use crate::pipeline::Pipeline;
use crate::pipeline::runner::load_pipelines;
use crate::sandbox::Sandbox;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A pipeline file, or a folder of `*.toml` pipeline files.
    pub path: PathBuf,
}

pub async fn run(sandbox: Sandbox, args: &RunArgs) -> anyhow::Result<()> {
    let configs = load_pipelines(&args.path)?;
    let mut pipelines = Vec::new();
    for config in configs {
        pipelines.push(Pipeline::build(config, &sandbox).await?);
    }
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight batches");
        let _ = stop.send(true);
    });
    let mut tasks = tokio::task::JoinSet::new();
    for pipeline in pipelines {
        tasks.spawn(pipeline.run(stopped.clone()));
    }
    let mut first_error = None;
    while let Some(result) = tasks.join_next().await {
        let result = result.context("pipeline task")?;
        if let Err(e) = result {
            tracing::error!("{e:#}");
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
