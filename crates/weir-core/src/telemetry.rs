//! Metrics of the data path, emitted through the [`metrics`] facade: an
//! application embedding weir gets them in whatever recorder it installs;
//! the `weir` binaries install the Prometheus exporter and serve
//! `/metrics`. Every metric weir emits is listed in [`METRICS`] (and in
//! docs/metrics.md: a test compares the two). Labels are only `tenant`,
//! `pipeline`, `udf`, `kind`, `action`, `outcome` — never a record key.
//!
//! [`Count`] and [`Level`] keep their own value too, so status pages read
//! the same numbers the recorder got.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, Unit};

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    /// A float total that only grows (the facade's counters are integers).
    FloatCounter,
    Gauge,
    Histogram,
}

/// One metric weir emits: name, kind, labels, help.
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const P: &[&str] = &["tenant", "pipeline"];
const U: &[&str] = &["tenant", "pipeline", "udf"];
const T: &[&str] = &["tenant"];

macro_rules! metric_names {
    ($($id:ident = $name:literal, $kind:ident, $labels:expr, $help:literal;)*) => {
        $(pub const $id: &str = $name;)*
        /// Every metric of weir.
        pub const METRICS: &[MetricDef] = &[
            $(MetricDef { name: $name, kind: Kind::$kind, labels: $labels, help: $help },)*
        ];
    };
}

metric_names! {
    PIPELINE_RECORDS_IN = "weir_pipeline_records_in_total", Counter, P, "records read from the source";
    PIPELINE_RECORDS_OUT = "weir_pipeline_records_out_total", Counter, P, "records handed to the sink";
    PIPELINE_DEAD_LETTERS = "weir_pipeline_dead_letters_total", Counter, P, "records sent to the dead-letter target";
    PIPELINE_SKIPPED = "weir_pipeline_skipped_records_total", Counter, P, "failed records skipped by policy";
    PIPELINE_BATCHES = "weir_pipeline_batches_total", Counter, P, "micro-batches processed";
    PIPELINE_LAG = "weir_pipeline_consumer_lag", Gauge, P, "records not yet consumed, over the assigned partitions";
    PIPELINE_PAUSED = "weir_pipeline_paused", Gauge, P, "1 while backpressure pauses the source";
    PIPELINE_BREAKER_PAUSED = "weir_pipeline_breaker_paused", Gauge, P, "1 while an open circuit breaker of a UDF pauses the source";
    PIPELINE_STALLED = "weir_pipeline_stalled", Gauge, P, "1 while the source has no partitions, or lag and no progress, for source.stall_warn_ms";
    PIPELINE_PARTIAL_WINDOWS = "weir_pipeline_partial_windows", Gauge, P, "1 while a windowed pipeline owns only some of its source's partitions: other members of its group hold the rest, and each emits partial windows";
    PIPELINE_LATE = "weir_pipeline_late_records_total", Counter, P, "records behind the watermark whose windows were already emitted";
    PIPELINE_WINDOWS_EMITTED = "weir_pipeline_windows_emitted_total", Counter, P, "event-time windows whose results were emitted";
    PIPELINE_OPEN_WINDOWS = "weir_pipeline_open_windows", Gauge, P, "event-time windows holding records, not yet emitted";
    PIPELINE_WINDOW_STATE_BYTES = "weir_pipeline_window_state_bytes", Gauge, P, "bytes of the open windows' records (bounded by state_bytes)";
    PIPELINE_CHECKPOINTS = "weir_pipeline_checkpoints_total", Counter, P, "checkpoints of the open windows' state written to the changelog topic";
    PIPELINE_CHECKPOINT_BYTES = "weir_pipeline_checkpoint_bytes", Gauge, P, "bytes of the last checkpoint written to the changelog topic";
    PIPELINE_WATERMARK = "weir_pipeline_watermark_seconds", Gauge, P, "the source's event-time watermark, seconds since the epoch";
    PIPELINE_TXN_COMMITTED = "weir_pipeline_transactions_committed_total", Counter, P, "Kafka transactions committed by an exactly-once sink";
    PIPELINE_TXN_ABORTED = "weir_pipeline_transactions_aborted_total", Counter, P, "Kafka transactions an exactly-once sink aborted (its records are read again)";
    PIPELINE_REGISTRY_RETRIES = "weir_pipeline_schema_registry_retries_total", Counter, P, "Avro schema fetches tried again because the registry failed (unreachable or 5xx); the batch waited";
    UDF_INVOCATIONS = "weir_udf_invocations_total", Counter, U, "guest calls (one per batch)";
    UDF_GUEST_SECONDS = "weir_udf_guest_seconds_total", FloatCounter, U, "time spent inside the guest";
    UDF_CALL_SECONDS = "weir_udf_call_seconds", Histogram, U, "time of each guest call";
    UDF_FAILURES = "weir_udf_failures_total", Counter, &["tenant", "pipeline", "udf", "kind"], "failed batches by kind";
    UDF_BREAKER_STATE = "weir_udf_breaker_state", Gauge, U, "circuit breaker: 0 closed, 1 half-open, 2 open";
    TENANT_MEMORY = "weir_tenant_memory_bytes", Gauge, T, "linear memory held by the tenant's instances";
    TENANT_MEMORY_DENIED = "weir_tenant_memory_denied_total", Counter, T, "memory grows denied at the tenant's total";
    TENANT_THROTTLED = "weir_tenant_quota_throttled_seconds_total", FloatCounter, T, "time the tenant's batches waited for its rows/s quota";
    TENANT_SLOT_WAIT = "weir_tenant_slot_wait_seconds_total", FloatCounter, T, "time the tenant's work (guest calls, polls of its queries and pipelines) waited for a slot (its concurrency cap or its fair share)";
    CACHE_HITS = "weir_cache_hits_total", Counter, T, "rows served from the deterministic-results cache";
    CACHE_MISSES = "weir_cache_misses_total", Counter, T, "rows the guest had to compute";
    CACHE_EVICTIONS = "weir_cache_evictions_total", Counter, T, "entries evicted for the budget";
    CACHE_BYPASSED = "weir_cache_bypassed_rows_total", Counter, T, "rows of deterministic functions not looked up because the cache did not pay for them";
    API_REQUESTS = "weir_api_requests_total", Counter, &["tenant", "action", "outcome"], "API requests by tenant, action and outcome";
    UDF_PUBLISHES = "weir_udf_publishes_total", Counter, T, "UDF versions published";
    UDF_VERSIONS = "weir_udf_versions", Gauge, T, "UDF versions in the registry";
    CLUSTER_DATABASE_UP = "weir_cluster_database_up", Gauge, &[], "1 while this node's last heartbeat reached the shared database";
    CLUSTER_NODES = "weir_cluster_nodes", Gauge, &[], "nodes whose heartbeat is recent, as this node last read them";
    CLUSTER_LEASES_HELD = "weir_cluster_leases_held", Gauge, &[], "pipelines that cannot be shared (file sources) this node holds the lease of";
    CLUSTER_NOTIFICATIONS = "weir_cluster_notifications_total", Counter, &["kind"], "changes announced by the shared database, by kind (udf, pipeline, token, resync)";
}

/// Buckets of [`UDF_CALL_SECONDS`]: 10 µs × 4ⁿ, n = 0..10 (up to ≈ 2.6 s).
pub fn call_seconds_buckets() -> Vec<f64> {
    (0..10).map(|n| 1e-5 * 4f64.powi(n)).collect()
}

/// Describes every metric to the installed recorder (help text, unit).
pub fn describe() {
    for m in METRICS {
        let unit = if m.name.contains("_seconds") {
            Some(Unit::Seconds)
        } else if m.name.ends_with("_bytes") {
            Some(Unit::Bytes)
        } else {
            None
        };
        match (m.kind, unit) {
            (Kind::Counter, _) => metrics::describe_counter!(m.name, m.help),
            (Kind::Gauge | Kind::FloatCounter, Some(u)) => {
                metrics::describe_gauge!(m.name, u, m.help)
            }
            (Kind::Gauge | Kind::FloatCounter, None) => metrics::describe_gauge!(m.name, m.help),
            (Kind::Histogram, _) => metrics::describe_histogram!(m.name, Unit::Seconds, m.help),
        }
    }
}

/// Emits the counters a scrape should show from the start, at zero: those
/// without labels, and the tenant-labelled ones of each of `tenants` (so
/// `rate()` and alerts see a series before its first event). Gauges are
/// left to their first reading: a zero could be false.
pub fn start_series(tenants: &[String]) {
    for m in METRICS {
        let label_sets: Vec<Labels> = if m.labels.is_empty() {
            vec![Vec::new()]
        } else if m.labels == T {
            tenants
                .iter()
                .map(|t| vec![("tenant", t.clone())])
                .collect()
        } else {
            continue;
        };
        for labels in label_sets {
            match m.kind {
                Kind::Counter => counter(m.name, &labels).increment(0),
                Kind::FloatCounter => gauge(m.name, &labels).increment(0.0),
                Kind::Gauge | Kind::Histogram => {}
            }
        }
    }
}

/// Labels of a series, in the order of the metric's definition.
pub type Labels = Vec<(&'static str, String)>;

fn keyed(labels: &Labels) -> Vec<metrics::Label> {
    labels
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, v.clone()))
        .collect()
}

pub fn counter(name: &'static str, labels: &Labels) -> Counter {
    metrics::counter!(name, keyed(labels))
}

pub fn gauge(name: &'static str, labels: &Labels) -> Gauge {
    metrics::gauge!(name, keyed(labels))
}

pub fn histogram(name: &'static str, labels: &Labels) -> Histogram {
    metrics::histogram!(name, keyed(labels))
}

/// A counter kept here (read by status pages) and mirrored to the recorder.
#[derive(Debug)]
pub struct Count {
    value: AtomicU64,
    metric: Counter,
}

impl Default for Count {
    fn default() -> Self {
        Count::new(Counter::noop())
    }
}

impl Count {
    pub fn new(metric: Counter) -> Self {
        Count {
            value: AtomicU64::new(0),
            metric,
        }
    }

    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        self.metric.increment(n);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// A gauge kept here and mirrored to the recorder.
#[derive(Debug)]
pub struct Level {
    value: AtomicI64,
    metric: Gauge,
}

impl Default for Level {
    fn default() -> Self {
        Level::new(Gauge::noop(), 0)
    }
}

impl Level {
    pub fn new(metric: Gauge, initial: i64) -> Self {
        metric.set(initial as f64);
        Level {
            value: AtomicI64::new(initial),
            metric,
        }
    }

    pub fn set(&self, v: i64) {
        self.value.store(v, Ordering::Relaxed);
        self.metric.set(v as f64);
    }

    /// Unknown (-1) until first set; the recorder sees nothing until then.
    pub fn unknown(metric: Gauge) -> Self {
        Level {
            value: AtomicI64::new(-1),
            metric,
        }
    }

    /// Sets the value and returns the previous one.
    pub fn swap(&self, v: i64) -> i64 {
        let old = self.value.swap(v, Ordering::Relaxed);
        self.metric.set(v as f64);
        old
    }

    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
}
