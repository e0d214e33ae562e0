//! `config/policy.toml`: per-tenant limits, quotas and capabilities over
//! shared defaults. Documented in `docs/policy.md`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::budget::{Budget, KNOWN_CAPABILITIES, policy_key};

/// Everything a tenant is limited to. `defaults` gives every key; a
/// tenant's section overrides some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantPolicy {
    /// CPU deadline per guest call (batch) with the epoch meter.
    pub cpu_ms_per_batch: u64,
    /// Instruction budget per guest call with the fuel meter.
    pub fuel_per_batch: u64,
    /// Linear memory per instance; at most `sandbox.memory_bytes`.
    pub memory_bytes: u64,
    /// Linear memory of all the tenant's instances together.
    pub memory_total_bytes: u64,
    /// Guest calls of this tenant running at the same time.
    pub max_concurrent_calls: u32,
    /// The tenant's share of the guest threads when tenants contend: busy
    /// tenants get guest time in proportion to their weights.
    pub weight: u32,
    /// Instances (slots of the process's pool, `sandbox.total_instances`)
    /// the tenant's modules may hold at once, idle ones included.
    pub max_instances: u32,
    /// In-flight micro-batches per pipeline of this tenant (at most the
    /// pipeline's own `batch.max_in_flight_batches`).
    pub max_in_flight_batches: usize,
    /// Soft quota: input rows per second over the tenant's pipelines;
    /// 0 = unlimited. Exceeding it delays the tenant's batches, never drops.
    pub rows_per_s: u64,
    /// Rows that may run ahead of `rows_per_s` in a burst.
    pub burst_rows: u64,
    /// Budget of the tenant's cache of deterministic results; 0 = off.
    pub cache_bytes: u64,
    /// Memory one query of the tenant (SQL request, pipeline, staged run)
    /// may hold in DataFusion, and the largest string a built-in may build.
    pub query_memory_bytes: u64,
    /// Bytes of open-window state (the buffered records of windows not
    /// yet emitted) each windowed pipeline of the tenant may hold; over
    /// it, the source pauses until windows close.
    pub state_bytes: u64,
    /// Host capabilities granted. Known: `log`.
    pub capabilities: Vec<String>,
    /// Failing batches in a row (failures of the function, never row
    /// errors) that open a UDF version's breaker.
    pub breaker_failures: u32,
    /// Share of failing batches among the last `breaker_window` that opens it.
    pub breaker_failure_ratio: f64,
    /// Batches the failure ratio is taken over.
    pub breaker_window: u32,
    /// How long an open breaker waits before letting a probe batch through.
    pub breaker_cooldown_ms: u64,
    /// What a pipeline does while a breaker of its UDFs is open.
    pub breaker_action: BreakerAction,
    /// Kafka bootstrap lists that pipelines and SQL deployed through the API
    /// may use; empty = none (the default), `"*"` = any.
    pub kafka_brokers: Vec<String>,
    /// Prefix every topic and consumer group they use must have; "" = any.
    pub topic_prefix: String,
    /// Schema registries (URLs: scheme, host, port and a path prefix)
    /// that pipelines deployed through the API may send requests to;
    /// empty = none (the default).
    pub registries: Vec<String>,
    /// Environment variables of the server that a deployed pipeline may
    /// read (`avro.password_env`); empty = none (the default).
    pub env_vars: Vec<String>,
    /// Bytes of one SQL text (a request, a pipeline's `sql`).
    pub sql_max_bytes: u64,
    /// Parentheses open at once in one SQL text.
    pub sql_max_depth: u32,
    /// Operators joining two expressions or queries (`+`, `AND`, `UNION`,
    /// `JOIN`, …) in one SQL text.
    pub sql_max_terms: u32,
    /// Where each value came from: `tenants.<name>.<key>` for the keys the
    /// tenant's section sets (the rest are `defaults.<key>`).
    #[serde(skip)]
    pub keys: Vec<(&'static str, String)>,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        TenantPolicy {
            cpu_ms_per_batch: 1_000,
            fuel_per_batch: 2_000_000_000,
            memory_bytes: 64 << 20,
            memory_total_bytes: 512 << 20,
            max_concurrent_calls: 2,
            weight: 1,
            max_instances: 32,
            max_in_flight_batches: 8,
            rows_per_s: 0,
            burst_rows: 100_000,
            cache_bytes: 64 << 20,
            query_memory_bytes: 256 << 20,
            state_bytes: 256 << 20,
            capabilities: vec!["log".to_string()],
            breaker_failures: 5,
            breaker_failure_ratio: 0.5,
            breaker_window: 20,
            breaker_cooldown_ms: 30_000,
            breaker_action: BreakerAction::Pause,
            kafka_brokers: Vec::new(),
            topic_prefix: String::new(),
            registries: Vec::new(),
            env_vars: Vec::new(),
            sql_max_bytes: crate::sql::SqlBounds::DEFAULT_MAX_BYTES,
            sql_max_depth: crate::sql::SqlBounds::DEFAULT_MAX_DEPTH,
            sql_max_terms: crate::sql::SqlBounds::DEFAULT_MAX_TERMS,
            keys: Vec::new(),
        }
    }
}

/// What a pipeline does while a circuit breaker of one of its UDFs is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerAction {
    /// Pause the source (backpressure) until a probe succeeds or a new
    /// version of the UDF is in effect; no record is touched meanwhile.
    #[default]
    Pause,
    /// Keep consuming and dead-letter the records that need the UDF, with
    /// the breaker named in each dead letter.
    DeadLetter,
}

impl BreakerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerAction::Pause => "pause",
            BreakerAction::DeadLetter => "dead-letter",
        }
    }
}

impl TenantPolicy {
    /// The policy key in force for `field` (`tenants.acme.cpu_ms_per_batch`
    /// or `defaults.cpu_ms_per_batch`).
    pub fn key(&self, field: &str) -> String {
        policy_key(&self.keys, field)
    }

    /// What each call of the tenant may use, with the key of each value.
    pub fn budget(&self) -> Budget {
        Budget {
            cpu_ms_per_batch: self.cpu_ms_per_batch,
            fuel_per_batch: self.fuel_per_batch,
            memory_bytes: self.memory_bytes,
            capabilities: self.capabilities.clone(),
            keys: self.keys.clone(),
        }
    }

    /// How big the tenant's SQL texts may be, with the keys in force.
    pub fn sql_bounds(&self) -> crate::sql::SqlBounds {
        crate::sql::SqlBounds {
            max_bytes: self.sql_max_bytes,
            max_depth: self.sql_max_depth,
            max_terms: self.sql_max_terms,
            keys: [
                self.key("sql_max_bytes"),
                self.key("sql_max_depth"),
                self.key("sql_max_terms"),
            ],
        }
    }

    /// When this tenant's breakers open.
    pub fn breaker_settings(&self) -> crate::tenant::BreakerSettings {
        crate::tenant::BreakerSettings {
            failures: self.breaker_failures,
            failure_ratio: self.breaker_failure_ratio,
            window: self.breaker_window,
        }
    }
}

/// A tenant's section: any key of [`TenantPolicy`], the rest inherited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantOverrides {
    pub cpu_ms_per_batch: Option<u64>,
    pub fuel_per_batch: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub max_concurrent_calls: Option<u32>,
    pub weight: Option<u32>,
    pub max_instances: Option<u32>,
    pub max_in_flight_batches: Option<usize>,
    pub rows_per_s: Option<u64>,
    pub burst_rows: Option<u64>,
    pub cache_bytes: Option<u64>,
    pub query_memory_bytes: Option<u64>,
    pub state_bytes: Option<u64>,
    pub capabilities: Option<Vec<String>>,
    pub breaker_failures: Option<u32>,
    pub breaker_failure_ratio: Option<f64>,
    pub breaker_window: Option<u32>,
    pub breaker_cooldown_ms: Option<u64>,
    pub breaker_action: Option<BreakerAction>,
    pub kafka_brokers: Option<Vec<String>>,
    pub topic_prefix: Option<String>,
    pub registries: Option<Vec<String>>,
    pub env_vars: Option<Vec<String>>,
    pub sql_max_bytes: Option<u64>,
    pub sql_max_depth: Option<u32>,
    pub sql_max_terms: Option<u32>,
}

/// The whole policy file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub defaults: TenantPolicy,
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantOverrides>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("policy {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Policy {
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|error| PolicyError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            PolicyError::Invalid { message, .. } => PolicyError::Invalid {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            path: "(inline)".to_string(),
            message,
        };
        let policy: Policy = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        policy.defaults.validate("defaults").map_err(invalid)?;
        for name in policy.tenants.keys() {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(format!(
                    "tenant name `{name}`: use letters, digits, `-` and `_`"
                )));
            }
            policy
                .resolve(name)
                .validate(&format!("tenants.{name}"))
                .map_err(invalid)?;
        }
        Ok(policy)
    }

    /// The limits of `tenant`: its section over the defaults (an unknown
    /// tenant gets the defaults).
    pub fn resolve(&self, tenant: &str) -> TenantPolicy {
        let mut p = self.defaults.clone();
        let Some(o) = self.tenants.get(tenant) else {
            return p;
        };
        macro_rules! take {
            ($($field:ident),*) => {$(
                if let Some(v) = &o.$field {
                    p.$field = v.clone();
                    p.keys.push((stringify!($field), format!("tenants.{tenant}.{}", stringify!($field))));
                }
            )*};
        }
        take!(
            cpu_ms_per_batch,
            fuel_per_batch,
            memory_bytes,
            memory_total_bytes,
            max_concurrent_calls,
            weight,
            max_instances,
            max_in_flight_batches,
            rows_per_s,
            burst_rows,
            cache_bytes,
            query_memory_bytes,
            state_bytes,
            capabilities,
            breaker_failures,
            breaker_failure_ratio,
            breaker_window,
            breaker_cooldown_ms,
            breaker_action,
            kafka_brokers,
            topic_prefix,
            registries,
            env_vars,
            sql_max_bytes,
            sql_max_depth,
            sql_max_terms
        );
        p
    }
}

impl TenantPolicy {
    /// Checks ranges; the error names the key path (`tenants.acme.memory_bytes`).
    pub fn validate(&self, at: &str) -> Result<(), String> {
        let positive = [
            ("cpu_ms_per_batch", self.cpu_ms_per_batch),
            ("fuel_per_batch", self.fuel_per_batch),
            ("memory_bytes", self.memory_bytes),
            ("memory_total_bytes", self.memory_total_bytes),
            ("query_memory_bytes", self.query_memory_bytes),
            ("state_bytes", self.state_bytes),
            ("max_concurrent_calls", u64::from(self.max_concurrent_calls)),
            ("max_instances", u64::from(self.max_instances)),
            ("max_in_flight_batches", self.max_in_flight_batches as u64),
            ("sql_max_bytes", self.sql_max_bytes),
            ("sql_max_depth", u64::from(self.sql_max_depth)),
            ("sql_max_terms", u64::from(self.sql_max_terms)),
            ("breaker_failures", u64::from(self.breaker_failures)),
            ("breaker_window", u64::from(self.breaker_window)),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("{at}.{key} must be positive"));
            }
        }
        if !(1..=1000).contains(&self.weight) {
            return Err(format!(
                "{at}.weight must be between 1 and 1000 (it is {})",
                self.weight
            ));
        }
        if !(self.breaker_failure_ratio > 0.0 && self.breaker_failure_ratio <= 1.0) {
            return Err(format!(
                "{at}.breaker_failure_ratio must be above 0 and at most 1 (it is {})",
                self.breaker_failure_ratio
            ));
        }
        if self.memory_total_bytes < self.memory_bytes {
            return Err(format!(
                "{at}.memory_total_bytes ({}) is below {at}.memory_bytes ({}): one instance could never start",
                self.memory_total_bytes, self.memory_bytes
            ));
        }
        if self.rows_per_s > 0 && self.burst_rows == 0 {
            return Err(format!(
                "{at}.burst_rows must be positive when rows_per_s is set"
            ));
        }
        use crate::sql::SqlBounds;
        for (key, value, ceiling) in [
            (
                "sql_max_depth",
                self.sql_max_depth,
                SqlBounds::CEILING_DEPTH,
            ),
            (
                "sql_max_terms",
                self.sql_max_terms,
                SqlBounds::CEILING_TERMS,
            ),
        ] {
            if value > ceiling {
                return Err(format!(
                    "{at}.{key} = {value} is over {ceiling}, the most the planner handles on a guest thread's stack"
                ));
            }
        }
        if let Some(c) = self
            .capabilities
            .iter()
            .find(|c| !KNOWN_CAPABILITIES.contains(&c.as_str()))
        {
            return Err(format!(
                "{at}.capabilities: unknown capability `{c}` (known: {})",
                KNOWN_CAPABILITIES.join(", ")
            ));
        }
        Ok(())
    }
}
