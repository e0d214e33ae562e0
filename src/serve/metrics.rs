//! Prometheus metrics of the control plane (`/metrics`). Labels stay
//! low-cardinality: tenant, action, outcome — never an object name.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::telemetry::DataPathCollector;
use crate::tenant::Tenants;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub tenant: String,
    pub action: String,
    /// `allowed`, `denied` or `failed`.
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

pub struct Metrics {
    registry: Registry,
    /// Pipelines, UDFs and tenants, read at scrape time.
    pub data_path: std::sync::Arc<DataPathCollector>,
    pub requests: Family<RequestLabels, Counter>,
    pub publishes: Family<TenantLabels, Counter>,
    pub udf_versions: Family<TenantLabels, Gauge>,
}

impl Metrics {
    pub fn new(tenants: std::sync::Arc<Tenants>) -> Self {
        let mut registry = Registry::with_prefix("weir");
        let data_path = std::sync::Arc::new(DataPathCollector::new(tenants));
        registry.register_collector(Box::new(data_path.clone()));
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "API requests by tenant, action and outcome",
            requests.clone(),
        );
        let publishes = Family::<TenantLabels, Counter>::default();
        registry.register("udf_publishes", "UDF versions published", publishes.clone());
        let udf_versions = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "udf_versions",
            "UDF versions in the registry",
            udf_versions.clone(),
        );
        Metrics {
            registry,
            data_path,
            requests,
            publishes,
            udf_versions,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
