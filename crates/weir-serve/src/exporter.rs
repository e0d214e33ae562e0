//! `/metrics`: the Prometheus exporter of the [`metrics`] facade, installed
//! once per process as its global recorder. Every layer emits through the
//! facade (names in `weir_core::telemetry`); this only renders.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use crate::telemetry;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How long a series may go without an update before `/metrics` drops it
/// (environment variable `WEIR_METRICS_IDLE_SECS` overrides; docs/metrics.md).
pub const IDLE_SERIES: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// [`IDLE_SERIES`], or `WEIR_METRICS_IDLE_SECS` when it is a whole number
/// of seconds above zero.
fn idle_series() -> std::time::Duration {
    std::env::var("WEIR_METRICS_IDLE_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(IDLE_SERIES, std::time::Duration::from_secs)
}

/// The renderer of the process's metrics. Installs the Prometheus recorder
/// on first use; `None` when the embedding application installed a
/// recorder of its own (weir's metrics then go there).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                // A series not updated for this long is dropped: those of a
                // deleted pipeline or an unloaded module go away (a quiet
                // one comes back at its next update, as a counter reset).
                .idle_timeout(MetricKindMask::ALL, Some(idle_series()))
                .set_buckets_for_metric(
                    Matcher::Full(telemetry::UDF_CALL_SECONDS.to_string()),
                    &telemetry::call_seconds_buckets(),
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            telemetry::describe();
            Some(handle)
        })
        .as_ref()
}

/// The text exposition of every metric so far.
pub fn render() -> String {
    match handle() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => "# weir's metrics go to the application's own recorder\n".to_string(),
    }
}
