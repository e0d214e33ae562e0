//! Pipelines deployed through the API: stored with the registry, started
//! and stopped on request (and again after a restart), their UDFs resolved
//! from the registry (`name` follows the latest version, `name@N` pins one)
//! and reloaded at a batch boundary when a new version is published.

use std::sync::Arc;

use tokio::sync::watch;

use crate::AppState;
use crate::error::{ServiceError, ServiceResult};
use crate::pipeline::runner::Reload;
use crate::pipeline::{Pipeline, PipelineConfig, Status, Supervisor};
use crate::registry::StoredPipeline;
use crate::sandbox::UdfModule;
use crate::services::boundary;
use crate::services::udfs::{self, UdfRef};

/// The pipelines deployed through the API (run by the one pipeline
/// supervisor) and the registry's change signal.
pub struct Pipelines {
    supervisor: Supervisor<Vec<UdfRef>>,
    /// Ticks on every publish or delete: pipelines following `latest` reload.
    pub changed: watch::Sender<u64>,
}

impl Pipelines {
    /// Pipelines that run on `runtime` (the guest threads).
    pub fn on(runtime: tokio::runtime::Handle) -> Self {
        Pipelines {
            supervisor: Supervisor::on(runtime),
            changed: watch::Sender::new(0),
        }
    }

    pub fn notify_registry_changed(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    /// Whether a running pipeline of `tenant` pins `name@version`.
    pub fn pinned_by(&self, tenant: &str, name: &str, version: i64) -> Option<String> {
        self.supervisor.find_running(tenant, |udfs| {
            udfs.iter()
                .any(|u| u.name == name && u.version == Some(version))
        })
    }

    pub fn is_running(&self, tenant: &str, name: &str) -> bool {
        self.supervisor.is_running(tenant, name)
    }

    /// Stops a pipeline (it finishes its in-flight batches and commits).
    pub async fn stop(&self, tenant: &str, name: &str) {
        if let Some(Err(e)) = self.supervisor.stop(tenant, name).await {
            tracing::warn!(tenant, pipeline = name, "stopped with an error: {e:#}");
        }
    }

    /// Stops every pipeline (on shutdown).
    pub async fn stop_all(&self) {
        if let Err(e) = self.supervisor.stop_all().await {
            tracing::warn!("a pipeline stopped with an error: {e:#}");
        }
    }

    pub fn status(&self, tenant: &str, name: &str) -> Status {
        self.supervisor.status(tenant, name)
    }

    /// Drops what is kept of a deleted pipeline.
    pub fn forget(&self, tenant: &str, name: &str) {
        self.supervisor.forget(tenant, name)
    }
}

/// The registry versions `udfs` refer to now, with their module digests
/// (a version number can come back after a delete): a cheap lookup.
fn versions(state: &AppState, tenant: &str, udfs: &[UdfRef]) -> ServiceResult<Vec<(i64, String)>> {
    udfs.iter()
        .map(|u| udfs::find(state, tenant, u).map(|v| (v.version, v.sha256)))
        .collect()
}

/// Loads the modules `udfs` refer to, for `tenant`.
fn resolve(state: &AppState, tenant: &str, udfs: &[UdfRef]) -> ServiceResult<Vec<Arc<UdfModule>>> {
    udfs.iter().map(|u| udfs::load(state, tenant, u)).collect()
}

/// Parses a deployed pipeline's TOML for `tenant`/`name`: the tenant and
/// name come from the URL; `udfs` are registry references.
pub fn parse(tenant: &str, name: &str, text: &str) -> ServiceResult<(PipelineConfig, Vec<UdfRef>)> {
    let mut config =
        PipelineConfig::from_toml(text).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
    if config.name != name {
        return Err(ServiceError::BadRequest(format!(
            "the file says name = \"{}\" but the URL names pipeline `{name}`",
            config.name
        )));
    }
    // A file without `tenant` says "default"; one naming another tenant is
    // refused like a wrong name (it would run as the URL's tenant anyway).
    if config.tenant != tenant && config.tenant != "default" {
        return Err(ServiceError::BadRequest(format!(
            "the file says tenant = \"{}\" but the URL names tenant `{tenant}`; drop the key or make them agree",
            config.tenant
        )));
    }
    config.tenant = tenant.to_string();
    if !config.udfs.is_empty()
        && config
            .udfs
            .iter()
            .any(|p| p.to_string_lossy().contains('/'))
    {
        return Err(ServiceError::BadRequest(
            "`udfs` of a deployed pipeline name registry UDFs (`name` or `name@N`), not files"
                .to_string(),
        ));
    }
    let udfs = config
        .udfs
        .iter()
        .map(|p| UdfRef::parse(&p.to_string_lossy()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((config, udfs))
}

/// Whether every node of a cluster may run the pipeline at once: a Kafka
/// source shares its partitions through the consumer group. Any other
/// source, and a stateful query — windows or a join of the stream with
/// itself (each node would hold the state of its partitions only and emit
/// partial results) — unless it is repartitioned by key
/// (`source.repartition`), run on the one node holding the pipeline's
/// lease; another takes over when it leaves.
pub fn shared(text: &str) -> bool {
    PipelineConfig::from_toml(text).map_or(true, |c| {
        matches!(
            c.source,
            crate::pipeline::config::SourceConfig::Kafka { .. }
        ) && (!c.is_stateful() || c.repartitions())
    })
}

/// Parses and checks a pipeline against the policy and loads its UDFs.
async fn prepare(
    state: &Arc<AppState>,
    tenant: &str,
    name: &str,
    text: &str,
) -> ServiceResult<(PipelineConfig, Vec<UdfRef>, Vec<Arc<UdfModule>>)> {
    let (mut config, udfs) = parse(tenant, name, text)?;
    // Every resource the file names, held to the tenant's policy; its files
    // are held to the roots again whenever the pipeline opens them.
    let roots = boundary::file_roots(&state.config.file_roots, tenant);
    boundary::check(&config, &state.tenants.get(tenant).policy(), &roots)?;
    config.file_roots = Some(roots);
    let modules = {
        // Loading may compile: on the guest threads, not the API's.
        let (s, t, u) = (state.clone(), tenant.to_string(), udfs.clone());
        state
            .executor
            .run_blocking(move || {
                let tenant = s.tenants.get(&t);
                let _slot = tenant.enter();
                resolve(&s, &t, &u)
            })
            .await
            .map_err(ServiceError::internal)??
    };
    Ok((config, udfs, modules))
}

/// The longest a deploy may take to build its pipeline.
const BUILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Builds and starts a pipeline.
pub async fn start(
    state: &Arc<AppState>,
    tenant: &str,
    name: &str,
    text: &str,
) -> ServiceResult<()> {
    let (config, udfs, modules) = prepare(state, tenant, name, text).await?;
    let resolver_state = state.clone();
    let (resolver_tenant, resolver_udfs) = (tenant.to_string(), udfs.clone());
    // Every publish or delete ticks `changed`; only a change of the
    // versions this pipeline resolves to loads anything.
    let resolved = parking_lot::Mutex::new((
        versions(state, tenant, &udfs).unwrap_or_default(),
        modules.clone(),
    ));
    let reload = Reload {
        changed: state.pipelines.changed.subscribe(),
        resolve: Arc::new(move || {
            let now = versions(&resolver_state, &resolver_tenant, &resolver_udfs)?;
            let mut last = resolved.lock();
            if last.0 == now {
                return Ok(last.1.clone());
            }
            let modules = resolve(&resolver_state, &resolver_tenant, &resolver_udfs)?;
            *last = (now, modules.clone());
            Ok(modules)
        }),
    };
    // Building compiles inline functions, runs their warm-up and plans
    // the query (constant folding calls guests): on the guest threads,
    // within the deploy's deadline, never on the API's.
    let builder = state.clone();
    let owner = state.tenants.get(tenant);
    let build = async move {
        let admitted = owner.admit().await;
        builder
            .executor
            .clone()
            .run(owner.gate(async move {
                let _admitted = admitted;
                Pipeline::build_with_modules(
                    config,
                    &builder.sandbox,
                    modules,
                    &builder.tenants,
                    Some(reload),
                )
                .await
            }))
            .await
    };
    let pipeline = tokio::time::timeout(BUILD_TIMEOUT, build)
        .await
        .map_err(|_| {
            ServiceError::Timeout(format!(
                "pipeline `{name}` of tenant `{tenant}` took over {} s to build (compile, warm-up, plan); make its functions' top level or its query cheaper",
                BUILD_TIMEOUT.as_secs()
            ))
        })?
        .map_err(ServiceError::internal)??;
    // The new pipeline is built (a bad update fails here, leaving the old
    // one running); only now is the running one stopped and replaced.
    state.pipelines.supervisor.start(pipeline, udfs).await;
    Ok(())
}
/// Starts every stored pipeline that should run (after a restart).
pub async fn start_stored(state: &Arc<AppState>) {
    let stored = match state.registry.pipelines("*") {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot read stored pipelines: {e}");
            return;
        }
    };
    for p in stored.into_iter().filter(|p| p.running) {
        if let Err(e) = start(state, &p.tenant, &p.name, &p.config).await {
            tracing::error!(tenant = %p.tenant, pipeline = %p.name, "not restarted: {e}");
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Deploys (or replaces) a pipeline from its TOML and starts it; `true`
/// when it is new.
pub async fn deploy(
    state: &Arc<AppState>,
    tenant: &str,
    name: &str,
    body: &[u8],
    by: &str,
) -> ServiceResult<bool> {
    let text = std::str::from_utf8(body).map_err(|_| {
        ServiceError::BadRequest("the pipeline file must be UTF-8 TOML".to_string())
    })?;
    parse(tenant, name, text)?;
    let existed = state
        .registry
        .pipeline(tenant, name)
        .map_err(ServiceError::from)?
        .is_some();
    let _turn = match &state.cluster {
        Some(c) => Some(c.ops.lock().await),
        None => None,
    };
    let updated_at = now_ms();
    if run_here(state, tenant, name, text)? {
        start(state, tenant, name, text).await?;
        started_here(state, tenant, name, updated_at);
    } else {
        // Another node holds the lease: it restarts the pipeline once the
        // change is stored; here it is only checked.
        prepare(state, tenant, name, text).await?;
    }
    let stored = StoredPipeline {
        tenant: tenant.to_string(),
        name: name.to_string(),
        config: text.to_string(),
        running: true,
        updated_at,
        updated_by: by.to_string(),
    };
    super::registry_write(state, move |r| r.save_pipeline(&stored)).await?;
    Ok(!existed)
}

/// Whether this node runs the pipeline: always on a single node; in a
/// cluster when it is shared or this node gets its lease.
fn run_here(state: &AppState, tenant: &str, name: &str, text: &str) -> ServiceResult<bool> {
    match &state.cluster {
        Some(cluster) if !shared(text) => cluster.acquire(tenant, name).map_err(ServiceError::from),
        _ => Ok(true),
    }
}

/// Remembers (in a cluster) which stored version this node started, so the
/// change's own notification does not restart it.
fn started_here(state: &AppState, tenant: &str, name: &str, updated_at: i64) {
    if let Some(cluster) = &state.cluster {
        cluster
            .deployed
            .lock()
            .insert((tenant.to_string(), name.to_string()), (updated_at, true));
    }
}

/// Forgets (in a cluster) that this node runs the pipeline.
fn stopped_here(state: &AppState, tenant: &str, name: &str) {
    if let Some(cluster) = &state.cluster {
        cluster
            .deployed
            .lock()
            .remove(&(tenant.to_string(), name.to_string()));
        cluster.release(tenant, name);
    }
}

fn stored(state: &AppState, tenant: &str, name: &str) -> ServiceResult<StoredPipeline> {
    state
        .registry
        .pipeline(tenant, name)
        .map_err(ServiceError::from)?
        .ok_or_else(|| ServiceError::not_found(&format!("pipeline `{name}`")))
}

/// Starts or stops a stored pipeline and remembers that as its desired state.
pub async fn set_running(
    state: &Arc<AppState>,
    tenant: &str,
    name: &str,
    run: bool,
    by: &str,
) -> ServiceResult<Status> {
    let mut stored = stored(state, tenant, name)?;
    let _turn = match &state.cluster {
        Some(c) => Some(c.ops.lock().await),
        None => None,
    };
    state.pipelines.stop(tenant, name).await;
    stored.updated_at = now_ms();
    if run && run_here(state, tenant, name, &stored.config)? {
        start(state, tenant, name, &stored.config).await?;
        started_here(state, tenant, name, stored.updated_at);
    } else if !run {
        stopped_here(state, tenant, name);
    }
    stored.running = run;
    stored.updated_by = by.to_string();
    super::registry_write(state, move |r| r.save_pipeline(&stored)).await?;
    Ok(state.pipelines.status(tenant, name))
}

/// Secret values (weir-core's one rule, `secrets`: secret keys, and
/// passwords inside URLs) replaced, at any depth.
fn redact_value(value: &mut toml::Value) {
    use weir_core::secrets;
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                match v {
                    toml::Value::String(s) => *s = secrets::shown(key, s),
                    _ if secrets::is_secret_key(key) => {
                        *v = toml::Value::String(secrets::REDACTED.to_string())
                    }
                    _ => redact_value(v),
                }
            }
        }
        toml::Value::Array(items) => {
            for item in items {
                match item {
                    toml::Value::String(s) => *s = secrets::redact_url(s),
                    _ => redact_value(item),
                }
            }
        }
        _ => {}
    }
}

/// A pipeline file with the values of secret keys (`sasl.password`, …)
/// replaced by `<redacted>`; a file that does not parse is not shown.
pub fn redact(text: &str) -> String {
    match text.parse::<toml::Table>() {
        Ok(table) => {
            let mut value = toml::Value::Table(table);
            redact_value(&mut value);
            toml::to_string(&value).unwrap_or_default()
        }
        Err(_) => "<not shown: it does not parse>".to_string(),
    }
}

/// The status of a stored pipeline, its desired state and its file
/// (secrets redacted: every role of the tenant may read this).
pub fn describe(state: &AppState, tenant: &str, name: &str) -> ServiceResult<serde_json::Value> {
    let stored = stored(state, tenant, name)?;
    let mut body = serde_json::json!(state.pipelines.status(tenant, name));
    body["desired"] = serde_json::json!(if stored.running { "running" } else { "stopped" });
    body["config"] = serde_json::json!(redact(&stored.config));
    Ok(body)
}

/// The tenant's stored pipelines with desired and actual state.
pub fn list(state: &AppState, tenant: &str) -> ServiceResult<Vec<serde_json::Value>> {
    let stored = state
        .registry
        .pipelines(tenant)
        .map_err(ServiceError::from)?;
    Ok(stored
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name,
                "desired": if p.running { "running" } else { "stopped" },
                "state": state.pipelines.status(tenant, &p.name).state,
            })
        })
        .collect())
}

/// Stops and forgets a pipeline.
pub async fn remove(state: &Arc<AppState>, tenant: &str, name: &str) -> ServiceResult<()> {
    let pipeline = stored(state, tenant, name)?;
    let _turn = match &state.cluster {
        Some(c) => Some(c.ops.lock().await),
        None => None,
    };
    state.pipelines.stop(tenant, name).await;
    stopped_here(state, tenant, name);
    let (t, n) = (tenant.to_string(), name.to_string());
    super::registry_write(state, move |r| r.delete_pipeline(&t, &n)).await?;
    state.pipelines.forget(tenant, name);
    // A repartitioned pipeline's internal topic and groups, and a windowed
    // one's changelog, go with it.
    if let Ok(config) = PipelineConfig::from_toml(&pipeline.config) {
        crate::pipeline::repartition::remove_internal(&config).await;
        crate::pipeline::changelog::remove(&config).await;
    }
    Ok(())
}
