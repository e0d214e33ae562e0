//! `weir serve`: the HTTP API; `weir token new`: a bearer token and the
//! sha256 to put in `[[serve.tokens]]`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::config::WeirConfig;
use crate::sandbox::Sandbox;
use crate::serve::{AppState, serve};
use crate::tenant::{Policy, Tenants};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Tenant policy (docs/policy.md); re-read on SIGHUP.
    #[arg(long, env = "WEIR_POLICY")]
    pub policy: Option<PathBuf>,
    /// Overrides `serve.listen`.
    #[arg(long)]
    pub listen: Option<String>,
}

pub async fn run(config: WeirConfig, sandbox: Sandbox, args: &ServeArgs) -> anyhow::Result<()> {
    let policy = match &args.policy {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default(),
    };
    let mut serve_config = config.serve;
    if let Some(listen) = &args.listen {
        serve_config.listen = listen.clone();
    }
    if serve_config.tokens.is_empty() {
        tracing::warn!(
            "no [[serve.tokens]] configured: every /v1 request will be refused (weir token new)"
        );
    }
    let tenants = Arc::new(Tenants::with_slots(
        policy,
        sandbox.limits().guest_threads(),
    ));
    let state = Arc::new(AppState::open(serve_config, sandbox, tenants.clone())?);
    tokio::spawn(super::run::reload_on_sighup(args.policy.clone(), tenants));
    serve(state, async {
        super::run::wait_for_signal().await;
        tracing::info!("shutting down");
    })
    .await
}

/// Prints a new random token and its sha256.
pub fn new_token() -> anyhow::Result<()> {
    let (token, sha256) = crate::serve::services::tokens::mint()?;
    println!("token:  {token}");
    println!("sha256: {sha256}");
    println!("(put the sha256 in [[serve.tokens]]; keep the token secret)");
    Ok(())
}
