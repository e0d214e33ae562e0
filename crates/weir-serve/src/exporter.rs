//! `/metrics`: the Prometheus exporter of the [`metrics`] facade, installed
//! once per process as its global recorder. Every layer emits through the
//! facade (names in `weir_core::telemetry`); this only renders.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::telemetry;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The renderer of the process's metrics. Installs the Prometheus recorder
/// on first use; `None` when the embedding application installed a
/// recorder of its own (weir's metrics then go there).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
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
