//! The tenant boundary of a deployed pipeline: every resource its file
//! names ([`PipelineConfig::resources`], one walk over every key) held to
//! the tenant's policy and `serve.file_roots`. The match below is
//! exhaustive: a new kind of resource does not compile until it is
//! checked here. docs/security.md has the table: key → check → test.

use crate::error::{ServiceError, ServiceResult};
use crate::pipeline::PipelineConfig;
use crate::pipeline::resources::{FileRoots, Named, Resource};
use crate::tenant::TenantPolicy;

/// The folders `tenant`'s deployed pipelines may read and write.
pub fn file_roots(roots: &[std::path::PathBuf], tenant: &str) -> FileRoots {
    FileRoots::for_tenant(roots, tenant, "serve.file_roots")
}

/// Checks every resource `config` names; the refusal names the pipeline's
/// key and the policy entry that would allow it.
pub fn check(
    config: &PipelineConfig,
    policy: &TenantPolicy,
    roots: &FileRoots,
) -> ServiceResult<()> {
    for Named { key, resource } in config.resources() {
        match resource {
            Resource::File { path, .. } => {
                roots.check(&key, path).map_err(ServiceError::Forbidden)?;
            }
            // Registry names (`parse` refused paths): resolved in the
            // tenant's own namespace of the registry.
            Resource::Module { name } => {
                if name.to_string_lossy().contains(['/', '\\']) {
                    return Err(ServiceError::BadRequest(format!(
                        "{key} `{}`: a deployed pipeline names registry UDFs (`name` or `name@N`), not files",
                        name.display()
                    )));
                }
            }
            Resource::Url { url } => check_url(&key, url, policy)?,
            Resource::Brokers { brokers } => check_brokers(&key, brokers, policy)?,
            Resource::Topic { name } | Resource::Group { name } | Resource::Subject { name } => {
                check_topic(&key, name, policy)?
            }
            Resource::TransactionalId { id } => check_transactional_id(&key, &id, &config.tenant)?,
            Resource::EnvVar { name } => check_env_var(&key, name, policy)?,
            Resource::Property { name, value } => check_property(&key, name, value)?,
        }
    }
    Ok(())
}

/// librdkafka properties a pipeline deployed through the API may set, by
/// exact name (deny by default): tuning and SASL credentials. Nothing that
/// names a file (`ssl.*.location`, keytabs), a command
/// (`sasl.kerberos.kinit.cmd`) or code (`plugin.library.paths`,
/// interceptors) — librdkafka would act on it inside the server.
const ALLOWED_PROPERTIES: &[&str] = &[
    "fetch.wait.max.ms",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "fetch.error.backoff.ms",
    "fetch.queue.backoff.ms",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "linger.ms",
    "batch.size",
    "batch.num.messages",
    "compression.type",
    "compression.codec",
    "compression.level",
    "message.max.bytes",
    "socket.timeout.ms",
    "socket.keepalive.enable",
    "socket.nagle.disable",
    "socket.send.buffer.bytes",
    "socket.receive.buffer.bytes",
    "socket.connection.setup.timeout.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "statistics.interval.ms",
    "request.timeout.ms",
    "retry.backoff.ms",
];

/// Values an allowed property may take, where not every value is safe:
/// GSSAPI would run `sasl.kerberos.kinit.cmd`; OAUTHBEARER's default
/// token refresh reads configuration the tenant does not own.
const ALLOWED_VALUES: &[(&str, &[&str])] = &[
    (
        "security.protocol",
        &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"],
    ),
    (
        "sasl.mechanism",
        &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
    ),
    (
        "sasl.mechanisms",
        &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
    ),
];

/// Lower bounds of the allowed properties that set how often the client
/// works: below them it would spin (statistics parsed every millisecond,
/// reconnects in a tight loop).
const PROPERTY_MINIMA: &[(&str, u64)] = &[
    ("statistics.interval.ms", 1_000),
    ("reconnect.backoff.ms", 10),
    ("reconnect.backoff.max.ms", 100),
    ("retry.backoff.ms", 10),
    ("fetch.error.backoff.ms", 10),
    ("socket.timeout.ms", 100),
];

/// Upper bounds of the allowed properties that size buffers: the client's
/// memory is the server's.
const PROPERTY_MAXIMA: &[(&str, u64)] = &[
    ("queued.max.messages.kbytes", 65_536),
    ("queued.min.messages", 1_000_000),
    ("fetch.max.bytes", 64 << 20),
    ("fetch.message.max.bytes", 16 << 20),
    ("fetch.min.bytes", 16 << 20),
    ("message.max.bytes", 16 << 20),
    ("batch.size", 16 << 20),
    ("batch.num.messages", 1_000_000),
    ("socket.send.buffer.bytes", 16 << 20),
    ("socket.receive.buffer.bytes", 16 << 20),
];

fn check_property(key: &str, name: &str, value: &str) -> ServiceResult<()> {
    if !ALLOWED_PROPERTIES.contains(&name) {
        return Err(ServiceError::Forbidden(format!(
            "{key}: property `{name}` may not be set on a pipeline deployed through the API (allowed: {})",
            ALLOWED_PROPERTIES.join(", ")
        )));
    }
    if let Some((_, values)) = ALLOWED_VALUES.iter().find(|(k, _)| *k == name)
        && !values.iter().any(|v| v.eq_ignore_ascii_case(value.trim()))
    {
        return Err(ServiceError::Forbidden(format!(
            "{key} = `{value}` is not allowed through the API (one of: {})",
            values.join(", ")
        )));
    }
    if let Some((_, min)) = PROPERTY_MINIMA.iter().find(|(k, _)| *k == name) {
        let n: u64 = value.trim().parse().map_err(|_| {
            ServiceError::BadRequest(format!("{key} must be a number (got `{value}`)"))
        })?;
        if n < *min {
            return Err(ServiceError::Forbidden(format!(
                "{key} = {n} is below {min}, the least a pipeline deployed through the API may set (the client would spin on the server's CPU)"
            )));
        }
    }
    if let Some((_, max)) = PROPERTY_MAXIMA.iter().find(|(k, _)| *k == name) {
        let n: u64 = value.trim().parse().map_err(|_| {
            ServiceError::BadRequest(format!("{key} must be a number (got `{value}`)"))
        })?;
        if n > *max {
            return Err(ServiceError::Forbidden(format!(
                "{key} = {n} is above {max}, the most a pipeline deployed through the API may set (the server's memory is shared)"
            )));
        }
    }
    Ok(())
}

/// A bootstrap list the tenant's `kafka_brokers` allows.
pub fn check_brokers(key: &str, brokers: &str, policy: &TenantPolicy) -> ServiceResult<()> {
    let entry = policy.key("kafka_brokers");
    if policy.kafka_brokers.is_empty() {
        return Err(ServiceError::Forbidden(format!(
            "{key}: no Kafka brokers may be used through the API: `{entry}` is empty; an operator names the allowed bootstrap lists there (`[\"*\"]` allows any)"
        )));
    }
    if policy
        .kafka_brokers
        .iter()
        .any(|b| b == "*" || b == brokers)
    {
        Ok(())
    } else {
        Err(ServiceError::Forbidden(format!(
            "{key}: brokers `{brokers}` are not among the tenant's `{entry}` in the policy"
        )))
    }
}

/// A topic or group under the tenant's `topic_prefix`.
pub fn check_topic(key: &str, name: &str, policy: &TenantPolicy) -> ServiceResult<()> {
    if name.starts_with(&policy.topic_prefix) {
        Ok(())
    } else {
        Err(ServiceError::Forbidden(format!(
            "{key} `{name}` does not start with the tenant's `topic_prefix` `{}` ({})",
            policy.topic_prefix,
            policy.key("topic_prefix")
        )))
    }
}

/// A transactional id of the tenant's own: `weir.<tenant>.…` (another
/// tenant's id would fence that tenant's producer).
fn check_transactional_id(key: &str, id: &str, tenant: &str) -> ServiceResult<()> {
    let own = format!("weir.{tenant}.");
    if id.starts_with(&own) && id.len() > own.len() {
        Ok(())
    } else {
        Err(ServiceError::Forbidden(format!(
            "{key} `{id}` must start with `{own}`: a transactional id names a producer, and another tenant's would fence it (leave the key out for `{own}<pipeline>`)"
        )))
    }
}

/// A schema registry the tenant's `registries` lists: the same URL, or a
/// path below it. No user information (`user:pw@`) and no other host can
/// hide in a URL that passes.
fn check_url(key: &str, url: &str, policy: &TenantPolicy) -> ServiceResult<()> {
    let entry = policy.key("registries");
    let allowed = policy.registries.iter().any(|r| {
        let r = r.trim_end_matches('/');
        !r.is_empty()
            && (url == r
                || url
                    .strip_prefix(r)
                    .is_some_and(|rest| rest.starts_with('/') && !leaves_the_path(rest)))
    });
    let clean = !url.chars().any(|c| c.is_whitespace() || c.is_control())
        && url
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.split('/').next().unwrap_or_default().contains('@'));
    if allowed && clean {
        Ok(())
    } else {
        Err(ServiceError::Forbidden(format!(
            "{key} `{}` is not among the schema registries the tenant may use (`{entry}`); an operator lists them there",
            weir_core::secrets::redact_url(url)
        )))
    }
}

/// Whether a path below an allowed one could lead out of it once a server
/// normalises it: dot segments, encoded dots or slashes, backslashes.
fn leaves_the_path(rest: &str) -> bool {
    let lower = rest.to_ascii_lowercase();
    rest.contains('\\')
        || lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
        || rest
            .split(['/', '?', '#'])
            .any(|segment| segment == "." || segment == "..")
}

/// An environment variable the tenant's `env_vars` names.
fn check_env_var(key: &str, name: &str, policy: &TenantPolicy) -> ServiceResult<()> {
    if policy.env_vars.iter().any(|v| v == name) {
        Ok(())
    } else {
        Err(ServiceError::Forbidden(format!(
            "{key} `{name}`: the server's environment variables are not the tenant's; an operator allows one by listing it in `{}`",
            policy.key("env_vars")
        )))
    }
}
