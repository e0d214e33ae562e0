//! Kafka client settings shared by the source and the sinks.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

use super::config::masked;

/// A client config: brokers, then weir's `defaults`, then the pipeline's
/// pass-through librdkafka properties (which override the defaults).
pub fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    for (k, v) in properties {
        config.set(k, v);
    }
    tracing::debug!(brokers, properties = ?masked(properties), "kafka client");
    config
}

/// Removes property values from a librdkafka error message, in case one
/// quotes them.
pub fn scrub(message: String, properties: &BTreeMap<String, String>) -> String {
    let masked = masked(properties);
    properties.iter().fold(message, |msg, (k, v)| {
        if masked[k] != *v && !v.is_empty() {
            msg.replace(v.as_str(), weir_core::secrets::REDACTED)
        } else {
            msg
        }
    })
}
