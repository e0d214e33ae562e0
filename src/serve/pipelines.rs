//! Pipelines deployed through the API: stored with the registry, started
//! and stopped on request (and again after a restart), their UDFs resolved
//! from the registry (`name` follows the latest version, `name@N` pins one)
//! and reloaded at a batch boundary when a new version is published.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::AppState;
use crate::pipeline::runner::Reload;
use crate::pipeline::{Pipeline, PipelineConfig, PipelineStats};
use crate::sandbox::UdfModule;
use crate::telemetry::PipelineTelemetry;

/// A UDF reference of a deployed pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdfRef {
    pub name: String,
    /// `None`: follows the latest version.
    pub version: Option<i64>,
}

impl UdfRef {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, version) = match text.split_once('@') {
            Some((n, "latest")) => (n, None),
            Some((n, v)) => (
                n,
                Some(v.parse().map_err(|_| {
                    format!("udf `{text}`: the version after `@` must be a number or `latest`")
                })?),
            ),
            None => (text, None),
        };
        Ok(UdfRef {
            name: name.to_string(),
            version,
        })
    }
}

pub struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub telemetry: PipelineTelemetry,
    pub udfs: Vec<UdfRef>,
    started: std::time::Instant,
}

/// The running pipelines and the registry's change signal.
pub struct Pipelines {
    running: Mutex<HashMap<(String, String), Running>>,
    /// Ticks on every publish or delete: pipelines following `latest` reload.
    pub changed: watch::Sender<u64>,
    /// Last error of pipelines that stopped by themselves.
    failed: Mutex<HashMap<(String, String), String>>,
}

impl Default for Pipelines {
    fn default() -> Self {
        Pipelines {
            running: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(0),
            failed: Mutex::new(HashMap::new()),
        }
    }
}

/// What the status endpoint reports.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    /// `running`, `finished`, `failed` or `stopped`.
    pub state: String,
    pub error: Option<String>,
    pub records_in: u64,
    pub records_out: u64,
    pub dead_letters: u64,
    pub skipped: u64,
    pub batches: u64,
    /// Input records per second since the pipeline (re)started.
    pub records_per_s: f64,
    pub consumer_lag: Option<i64>,
    /// The source is paused by backpressure (the sink is slow).
    pub paused: bool,
    /// The source is paused because a UDF's circuit breaker is open.
    pub breaker_paused: bool,
    /// No partitions, or lag without progress, for `source.stall_warn_ms`.
    pub stalled: bool,
    /// What holds the pipeline up, in words (an open breaker, a stall).
    pub condition: Option<String>,
    /// `udf -> {module, breaker}` of the versions in use.
    pub udfs: Vec<serde_json::Value>,
}

impl Pipelines {
    pub fn notify_registry_changed(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    fn key(tenant: &str, name: &str) -> (String, String) {
        (tenant.to_string(), name.to_string())
    }

    /// Whether a running pipeline of `tenant` pins `name@version`.
    pub fn pinned_by(&self, tenant: &str, name: &str, version: i64) -> Option<String> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running
            .iter()
            .filter(|((t, _), r)| t == tenant && !r.task.is_finished())
            .find(|(_, r)| {
                r.udfs
                    .iter()
                    .any(|u| u.name == name && u.version == Some(version))
            })
            .map(|((_, p), _)| p.clone())
    }

    pub fn is_running(&self, tenant: &str, name: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&Self::key(tenant, name))
            .is_some_and(|r| !r.task.is_finished())
    }

    /// Stops a pipeline (it finishes its in-flight batches and commits).
    pub async fn stop(&self, tenant: &str, name: &str) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&Self::key(tenant, name));
        if let Some(r) = running {
            let _ = r.stop.send(true);
            match r.task.await {
                Ok(Err(e)) => tracing::warn!(pipeline = name, "stopped with an error: {e:#}"),
                Err(e) => tracing::warn!(pipeline = name, "task failed: {e}"),
                Ok(Ok(())) => {}
            }
        }
    }

    pub fn status(&self, tenant: &str, name: &str) -> Status {
        let key = Self::key(tenant, name);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) = running.get_mut(&key) else {
            let error = self
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned();
            return Status {
                state: if error.is_some() { "failed" } else { "stopped" }.to_string(),
                error,
                records_in: 0,
                records_out: 0,
                dead_letters: 0,
                skipped: 0,
                batches: 0,
                records_per_s: 0.0,
                consumer_lag: None,
                paused: false,
                breaker_paused: false,
                stalled: false,
                condition: None,
                udfs: Vec::new(),
            };
        };
        let state = if r.task.is_finished() {
            "finished"
        } else {
            "running"
        };
        let s = &r.telemetry.stats;
        let modules = r
            .telemetry
            .modules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let udfs = modules
            .iter()
            .flat_map(|m| {
                m.manifest()
                    .functions
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        serde_json::json!({
                            "udf": f.name,
                            "module": m.label(),
                            "sha256": m.digest(),
                            "breaker": m.breaker(i).map(|b| b.state().as_str()),
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let lag = s.get_lag();
        Status {
            state: state.to_string(),
            error: None,
            records_in: PipelineStats::get(&s.records_in),
            records_out: PipelineStats::get(&s.records_out),
            dead_letters: PipelineStats::get(&s.dead_letters),
            skipped: PipelineStats::get(&s.skipped),
            batches: PipelineStats::get(&s.batches),
            records_per_s: PipelineStats::get(&s.records_in) as f64
                / r.started.elapsed().as_secs_f64().max(1e-3),
            consumer_lag: (lag >= 0).then_some(lag),
            paused: PipelineStats::get(&s.paused) == 1,
            breaker_paused: PipelineStats::get(&s.breaker_paused) == 1,
            stalled: PipelineStats::get(&s.stalled) == 1,
            condition: s.condition(),
            udfs,
        }
    }
}

/// Loads the modules `udfs` refer to, for `tenant`.
fn resolve(state: &AppState, tenant: &str, udfs: &[UdfRef]) -> Result<Vec<Arc<UdfModule>>, String> {
    let tenant_state = state.tenants.get(tenant);
    udfs.iter()
        .map(|u| {
            let v = state
                .registry
                .get(tenant, &u.name, u.version)?
                .ok_or_else(|| match u.version {
                    Some(n) => format!("udf `{}` version {n} is not in the registry", u.name),
                    None => format!("udf `{}` is not in the registry", u.name),
                })?;
            let bytes = state.registry.module_bytes(&v)?;
            state
                .sandbox
                .load_for(
                    &format!("{tenant}/{}@v{}", u.name, v.version),
                    &bytes,
                    &tenant_state,
                )
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// Parses a deployed pipeline's TOML for `tenant`/`name`: the tenant and
/// name come from the URL; `udfs` are registry references.
pub fn parse(
    tenant: &str,
    name: &str,
    text: &str,
) -> Result<(PipelineConfig, Vec<UdfRef>), String> {
    let mut config = PipelineConfig::from_toml(text).map_err(|e| e.to_string())?;
    if config.name != name {
        return Err(format!(
            "the file says name = \"{}\" but the URL names pipeline `{name}`",
            config.name
        ));
    }
    config.tenant = tenant.to_string();
    if !config.udfs.is_empty()
        && config
            .udfs
            .iter()
            .any(|p| p.to_string_lossy().contains('/'))
    {
        return Err(
            "`udfs` of a deployed pipeline name registry UDFs (`name` or `name@N`), not files"
                .to_string(),
        );
    }
    let udfs = config
        .udfs
        .iter()
        .map(|p| UdfRef::parse(&p.to_string_lossy()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((config, udfs))
}

/// librdkafka properties a pipeline deployed through the API may set:
/// tuning and SASL credentials. Anything naming a file (`*.location`,
/// keytabs) or code (`plugin.library.paths`, interceptors) is refused.
const ALLOWED_PROPERTY_PREFIXES: &[&str] = &[
    "fetch.",
    "queued.",
    "linger.ms",
    "batch.",
    "compression.",
    "message.max.bytes",
    "socket.",
    "reconnect.",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "security.protocol",
    "sasl.mechanism",
    "sasl.username",
    "sasl.password",
    "statistics.interval.ms",
    "request.timeout.ms",
    "retry.backoff.ms",
];

/// Brokers, topics, group and properties of a deployed pipeline against
/// its tenant's policy (`kafka_brokers`, `topic_prefix`).
pub fn check_kafka(
    config: &PipelineConfig,
    policy: &crate::tenant::TenantPolicy,
) -> Result<(), String> {
    use crate::pipeline::config::{SinkConfig, SourceConfig};
    let mut brokers = Vec::new();
    let mut names: Vec<(&str, &str)> = Vec::new();
    let mut properties = Vec::new();
    if let SourceConfig::Kafka {
        brokers: b,
        topics,
        group,
        properties: p,
        ..
    } = &config.source
    {
        brokers.push(b.as_str());
        names.extend(topics.iter().map(|t| ("source.topics", t.as_str())));
        names.push(("source.group", group.as_str()));
        properties.extend(p.keys());
    }
    if let SinkConfig::Kafka {
        brokers: b,
        topic,
        properties: p,
        ..
    } = &config.sink
    {
        brokers.push(b.as_str());
        names.push(("sink.topic", topic.as_str()));
        properties.extend(p.keys());
    }
    if let Some(topic) = &config.errors.topic {
        names.push(("errors.topic", topic.as_str()));
    }
    for b in brokers {
        check_brokers(b, policy)?;
    }
    for (key, name) in names {
        check_topic(key, name, policy)?;
    }
    if let Some(key) = properties
        .iter()
        .find(|k| !ALLOWED_PROPERTY_PREFIXES.iter().any(|p| k.starts_with(p)))
    {
        return Err(format!(
            "property `{key}` may not be set on a pipeline deployed through the API (allowed: tuning and SASL credentials)"
        ));
    }
    Ok(())
}

pub fn check_brokers(brokers: &str, policy: &crate::tenant::TenantPolicy) -> Result<(), String> {
    if policy.kafka_brokers.is_empty() || policy.kafka_brokers.iter().any(|b| b == brokers) {
        Ok(())
    } else {
        Err(format!(
            "brokers `{brokers}` are not among the tenant's `kafka_brokers` in the policy"
        ))
    }
}

pub fn check_topic(
    key: &str,
    name: &str,
    policy: &crate::tenant::TenantPolicy,
) -> Result<(), String> {
    if name.starts_with(&policy.topic_prefix) {
        Ok(())
    } else {
        Err(format!(
            "{key} `{name}` does not start with the tenant's `topic_prefix` `{}`",
            policy.topic_prefix
        ))
    }
}

/// Every file a pipeline would read or write must lie in one of `roots`
/// (after resolving `..` and symbolic links).
pub fn check_files(config: &PipelineConfig, roots: &[std::path::PathBuf]) -> Result<(), String> {
    use crate::pipeline::config::{SinkConfig, SourceConfig};
    let mut files: Vec<(&str, &std::path::Path)> = Vec::new();
    if let SourceConfig::File { path, .. } = &config.source {
        files.push(("source.path", path));
    }
    if let SinkConfig::File { path, .. } = &config.sink {
        files.push(("sink.path", path));
    }
    if let Some(path) = &config.errors.path {
        files.push(("errors.path", path));
    }
    for (key, path) in files {
        let resolved = resolve_path(path)
            .ok_or_else(|| format!("{key} `{}` cannot be resolved", path.display()))?;
        let inside = roots
            .iter()
            .any(|root| std::fs::canonicalize(root).is_ok_and(|root| resolved.starts_with(root)));
        if !inside {
            return Err(format!(
                "{key} `{}` is outside the folders deployed pipelines may use (serve.file_roots); use Kafka, or ask an operator to allow the folder",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The path made absolute: its nearest existing ancestor canonicalized
/// (symbolic links and `..` resolved), the rest appended; `None` when the
/// part that does not exist yet contains `..`.
fn resolve_path(path: &std::path::Path) -> Option<std::path::PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(base) = std::fs::canonicalize(existing) {
            let mut resolved = base;
            for part in rest.iter().rev() {
                resolved.push(part);
            }
            return Some(resolved);
        }
        let name = existing.file_name()?;
        if name == ".." {
            return None;
        }
        rest.push(name.to_os_string());
        existing = existing.parent()?;
    }
}

/// Builds and starts a pipeline.
pub async fn start(
    state: &Arc<AppState>,
    tenant: &str,
    name: &str,
    text: &str,
) -> Result<(), String> {
    let (config, udfs) = parse(tenant, name, text)?;
    check_files(&config, &state.config.file_roots)?;
    check_kafka(&config, &state.tenants.get(tenant).policy())?;
    let modules = resolve(state, tenant, &udfs)?;
    let resolver_state = state.clone();
    let (resolver_tenant, resolver_udfs) = (tenant.to_string(), udfs.clone());
    let reload = Reload {
        changed: state.pipelines.changed.subscribe(),
        resolve: Arc::new(move || {
            resolve(&resolver_state, &resolver_tenant, &resolver_udfs).map_err(anyhow::Error::msg)
        }),
    };
    let pipeline = Pipeline::build_with_modules(config, modules, &state.tenants, Some(reload))
        .await
        .map_err(|e| format!("{e:#}"))?;
    // The new pipeline is built (a bad update fails here, leaving the old
    // one running); only now is the running one stopped and replaced.
    state.pipelines.stop(tenant, name).await;
    let telemetry = pipeline.telemetry();
    state.metrics.data_path.add(telemetry.clone());
    let (stop, stopped) = watch::channel(false);
    let key = Pipelines::key(tenant, name);
    let watcher = state.clone();
    let task_key = key.clone();
    let task = tokio::spawn(async move {
        let result = pipeline.run(stopped).await;
        if let Err(e) = &result {
            tracing::error!("{e:#}");
            watcher
                .pipelines
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(task_key, format!("{e:#}"));
        }
        result
    });
    state
        .pipelines
        .failed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
    state
        .pipelines
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            key,
            Running {
                stop,
                task,
                telemetry,
                udfs,
                started: std::time::Instant::now(),
            },
        );
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
