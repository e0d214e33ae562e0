//! `weir run PATH`: run pipelines until they finish or SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio::sync::watch;

use crate::pipeline::runner::load_pipelines;
use crate::pipeline::{Pipeline, Supervisor};
use crate::sandbox::Sandbox;
use crate::tenant::{Policy, Tenants};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A pipeline file, or a folder of `*.toml` pipeline files.
    pub path: PathBuf,
    /// Tenant policy (docs/policy.md); re-read on SIGHUP.
    #[arg(long, env = "WEIR_POLICY")]
    pub policy: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`/metrics`), e.g. 127.0.0.1:9464.
    #[arg(long, env = "WEIR_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// A json or csv source without `fields`: read a sample of the file or
    /// topic, print the `fields = […]` line it infers, and run with it.
    #[arg(long)]
    pub infer: bool,
    /// Check and plan each pipeline, print what it would run (its output
    /// columns, how its windows keep state; with `--infer`, the fields) and
    /// stop: nothing is read or written.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(sandbox: Sandbox, args: &RunArgs) -> anyhow::Result<()> {
    let mut configs = load_pipelines(&args.path, args.infer)?;
    if args.infer {
        for config in &mut configs {
            if !config.needs_fields() {
                continue;
            }
            let fields = crate::pipeline::infer::infer_fields(
                &config.source,
                crate::pipeline::infer::SAMPLE,
            )
            .await
            .with_context(|| format!("pipeline `{}`: --infer", config.name))?;
            println!(
                "# pipeline `{}`: [source] fields inferred from a sample of up to {} records\n{}",
                config.name,
                crate::pipeline::infer::SAMPLE,
                crate::pipeline::infer::fields_toml(&fields)
            );
            config.source.set_fields(fields);
            config
                .validate()
                .map_err(|e| anyhow::anyhow!("pipeline `{}`: {e}", config.name))?;
        }
    }
    let policy = match &args.policy {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default(),
    };
    let tenants = Arc::new(Tenants::with_slots(
        policy,
        sandbox.limits().guest_threads(),
    ));
    if args.dry_run {
        for config in configs {
            println!("{}", Pipeline::explain(config, &sandbox, &tenants).await?);
        }
        return Ok(());
    }
    if let Some(addr) = args.metrics_addr.clone() {
        // The recorder first: pipelines register their series when built.
        crate::serve::exporter::handle();
        // Bound now, so that a busy port is an error before anything runs.
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        tracing::info!(addr, "metrics on /metrics");
        tokio::spawn(async move {
            if let Err(e) = crate::serve::serve_metrics(listener).await {
                tracing::error!("metrics server: {e:#}");
            }
        });
    }
    let mut pipelines = Vec::new();
    for config in configs {
        pipelines.push(Pipeline::build_for(config, &sandbox, &tenants).await?);
    }
    tokio::spawn(reload_on_sighup(args.policy.clone(), tenants.clone()));
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight batches");
        let _ = stop.send(true);
    });
    let supervisor = Supervisor::<()>::default();
    for pipeline in pipelines {
        supervisor.start(pipeline, ()).await;
    }
    Ok(supervisor.wait_all(stopped).await?)
}

/// Re-reads the policy on every SIGHUP; an invalid file is logged and the
/// policy in force is kept. Without a policy file the signal is logged (and
/// never terminates the process).
pub(crate) async fn reload_on_sighup(path: Option<PathBuf>, tenants: Arc<Tenants>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let Some(path) = &path else {
                tracing::warn!("SIGHUP: no policy file was given (--policy), nothing to re-read");
                continue;
            };
            match Policy::from_file(path) {
                Ok(policy) => {
                    tracing::info!(path = %path.display(), "SIGHUP: policy reloaded");
                    tenants.reload(policy);
                }
                Err(e) => {
                    tracing::error!("SIGHUP: policy not reloaded, the previous one stays: {e}")
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, tenants);
    }
}

pub(crate) async fn wait_for_signal() {
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
