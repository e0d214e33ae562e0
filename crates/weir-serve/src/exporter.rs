//! `/metrics`: the Prometheus exporter of the [`metrics`] facade, installed
//! once per process as its global recorder. Every layer emits through the
//! facade (names in `weir_core::telemetry`); this only renders.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use crate::telemetry;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How long a series may go without an update before `/metrics` drops it.
pub const IDLE_SERIES: std::time::Duration = std::time::Duration::from_secs(15 * 60);

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
                .idle_timeout(MetricKindMask::ALL, Some(IDLE_SERIES))
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
