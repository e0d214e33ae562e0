//! Prometheus metrics of the data path, read from the pipelines', modules'
//! and tenants' own counters at scrape time. Names follow Prometheus
//! conventions; labels are tenant, pipeline, udf and kind — never a record
//! key. Documented in docs/metrics.md.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::pipeline::PipelineStats;
use crate::tenant::{BreakerState, Tenants};

/// One running pipeline as `/metrics` sees it.
#[derive(Clone)]
pub struct PipelineTelemetry {
    pub name: String,
    pub tenant: String,
    pub stats: Arc<PipelineStats>,
    pub modules: crate::pipeline::runner::SharedModules,
}

/// Collects the data-path metrics of every registered pipeline and tenant.
pub struct DataPathCollector {
    pipelines: Mutex<Vec<PipelineTelemetry>>,
    tenants: Arc<Tenants>,
}

impl std::fmt::Debug for DataPathCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataPathCollector")
    }
}

impl DataPathCollector {
    pub fn new(tenants: Arc<Tenants>) -> Self {
        DataPathCollector {
            pipelines: Mutex::new(Vec::new()),
            tenants,
        }
    }

    /// Adds a pipeline, replacing an earlier run of the same one.
    pub fn add(&self, pipeline: PipelineTelemetry) {
        let mut all = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|p| !(p.tenant == pipeline.tenant && p.name == pipeline.name));
        all.push(pipeline);
    }
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: a descriptor, then one sample per label set.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for DataPathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pipelines = self
            .pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let labels = |p: &PipelineTelemetry| -> Labels {
            vec![("tenant", p.tenant.clone()), ("pipeline", p.name.clone())]
        };
        let counters: [(&str, &str, fn(&PipelineStats) -> u64); 5] = [
            ("pipeline_records_in", "records read from the source", |s| {
                s.records_in.load(Ordering::Relaxed)
            }),
            ("pipeline_records_out", "records handed to the sink", |s| {
                s.records_out.load(Ordering::Relaxed)
            }),
            (
                "pipeline_dead_letters",
                "records sent to the dead-letter target",
                |s| s.dead_letters.load(Ordering::Relaxed),
            ),
            (
                "pipeline_skipped_records",
                "failed records skipped by policy",
                |s| s.skipped.load(Ordering::Relaxed),
            ),
            ("pipeline_batches", "micro-batches processed", |s| {
                s.batches.load(Ordering::Relaxed)
            }),
        ];
        for (name, help, read) in counters {
            let samples = pipelines
                .iter()
                .map(|p| (labels(p), ConstCounter::new(read(&p.stats))))
                .collect();
            family(&mut encoder, name, help, MetricType::Counter, samples)?;
        }
        let lag = pipelines
            .iter()
            .filter(|p| p.stats.lag.load(Ordering::Relaxed) >= 0)
            .map(|p| {
                (
                    labels(p),
                    ConstGauge::new(p.stats.lag.load(Ordering::Relaxed)),
                )
            })
            .collect();
        family(
            &mut encoder,
            "pipeline_consumer_lag",
            "records not yet consumed, over the assigned partitions",
            MetricType::Gauge,
            lag,
        )?;
        let gauges: [(&str, &str, fn(&PipelineStats) -> u64); 3] = [
            (
                "pipeline_paused",
                "1 while backpressure pauses the source",
                |s| s.paused.load(Ordering::Relaxed),
            ),
            (
                "pipeline_breaker_paused",
                "1 while an open circuit breaker of a UDF pauses the source",
                |s| s.breaker_paused.load(Ordering::Relaxed),
            ),
            (
                "pipeline_stalled",
                "1 while the source has no partitions, or lag and no progress, for source.stall_warn_ms",
                |s| s.stalled.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in gauges {
            let samples = pipelines
                .iter()
                .map(|p| (labels(p), ConstGauge::new(read(&p.stats) as i64)))
                .collect();
            family(&mut encoder, name, help, MetricType::Gauge, samples)?;
        }

        // Per UDF (function of a module version) of each pipeline.
        let mut invocations = Vec::new();
        let mut guest_seconds = Vec::new();
        let mut failures = Vec::new();
        let mut breaker = Vec::new();
        let mut histograms = Vec::new();
        for p in &pipelines {
            let modules = p.modules.read().unwrap_or_else(|e| e.into_inner()).clone();
            for m in &modules {
                for (i, f) in m.manifest().functions.iter().enumerate() {
                    let (Some(stats), Some(b)) = (m.function_stats(i), m.breaker(i)) else {
                        continue;
                    };
                    let l: Labels = vec![
                        ("tenant", p.tenant.clone()),
                        ("pipeline", p.name.clone()),
                        ("udf", f.name.clone()),
                    ];
                    invocations.push((
                        l.clone(),
                        ConstCounter::new(stats.invocations.load(Ordering::Relaxed)),
                    ));
                    histograms.push((l.clone(), m.clone(), i));
                    guest_seconds.push((
                        l.clone(),
                        ConstCounter::new(stats.guest_nanos.load(Ordering::Relaxed) as f64 / 1e9),
                    ));
                    for (kind, n) in stats
                        .failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                    {
                        let mut l = l.clone();
                        l.push(("kind", kind.to_string()));
                        failures.push((l, ConstCounter::new(*n)));
                    }
                    let state = match b.state() {
                        BreakerState::Closed => 0,
                        BreakerState::HalfOpen => 1,
                        BreakerState::Open => 2,
                    };
                    breaker.push((l, ConstGauge::new(state)));
                }
            }
        }
        family(
            &mut encoder,
            "udf_invocations",
            "guest calls (one per batch)",
            MetricType::Counter,
            invocations,
        )?;
        family(
            &mut encoder,
            "udf_guest_seconds",
            "time spent inside the guest",
            MetricType::Counter,
            guest_seconds,
        )?;
        family(
            &mut encoder,
            "udf_failures",
            "failed batches by kind (out_of_cpu, out_of_memory, stack_overflow, guest_error, panic, invalid_output, trap, circuit_open, ...)",
            MetricType::Counter,
            failures,
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "udf_call_seconds",
                "time of each guest call",
                None,
                MetricType::Histogram,
            )?;
            for (labels, module, index) in &histograms {
                if let Some(stats) = module.function_stats(*index) {
                    stats.guest_seconds.encode(metric.encode_family(labels)?)?;
                }
            }
        }
        family(
            &mut encoder,
            "udf_breaker_state",
            "circuit breaker: 0 closed, 1 half-open, 2 open",
            MetricType::Gauge,
            breaker,
        )?;

        // Per tenant.
        let tenants = self.tenants.all();
        let t = |name: &str| -> Labels { vec![("tenant", name.to_string())] };
        family(
            &mut encoder,
            "tenant_memory_bytes",
            "linear memory held by the tenant's instances",
            MetricType::Gauge,
            tenants
                .iter()
                .map(|x| (t(x.name()), ConstGauge::new(x.memory_used() as i64)))
                .collect(),
        )?;
        family(
            &mut encoder,
            "tenant_quota_throttled_seconds",
            "time the tenant's batches waited for its rows/s quota",
            MetricType::Counter,
            tenants
                .iter()
                .map(|x| {
                    (
                        t(x.name()),
                        ConstCounter::new(
                            x.stats.throttled_ms.load(Ordering::Relaxed) as f64 / 1000.0,
                        ),
                    )
                })
                .collect(),
        )?;
        family(
            &mut encoder,
            "tenant_memory_denied",
            "memory grows denied at the tenant's total",
            MetricType::Counter,
            tenants
                .iter()
                .map(|x| {
                    (
                        t(x.name()),
                        ConstCounter::new(x.stats.memory_denied.load(Ordering::Relaxed)),
                    )
                })
                .collect(),
        )?;
        let cache: Vec<_> = tenants
            .iter()
            .filter_map(|x| x.cache().map(|c| (x.name().to_string(), c)))
            .collect();
        for (name, help, read) in [
            (
                "cache_hits",
                "rows served from the deterministic-results cache",
                0,
            ),
            ("cache_misses", "rows the guest had to compute", 1),
            ("cache_evictions", "entries evicted for the budget", 2),
        ] {
            let samples = cache
                .iter()
                .map(|(n, c)| {
                    let v = match read {
                        0 => &c.stats.hits,
                        1 => &c.stats.misses,
                        _ => &c.stats.evictions,
                    };
                    (t(n), ConstCounter::new(v.load(Ordering::Relaxed)))
                })
                .collect();
            family(&mut encoder, name, help, MetricType::Counter, samples)?;
        }
        Ok(())
    }
}
