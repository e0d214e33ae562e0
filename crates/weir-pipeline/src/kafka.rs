//! Kafka client settings shared by the source and the sinks.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

use super::config::masked;

/// Kafka's static membership (KIP-345): a consumer restarted with the same
/// `group.instance.id` takes its partitions back at once, instead of after
/// the group's `session.timeout.ms`.
pub const STATIC_MEMBER: &str = "group.instance.id";

/// Whether librdkafka property `name` is a consumer's only (a producer
/// given it warns at start): what a producer made from a source's
/// properties leaves out.
fn consumer_only(name: &str) -> bool {
    const PREFIXES: [&str; 10] = [
        "group.",
        "session.",
        "heartbeat.",
        "max.poll.",
        "auto.",
        "enable.auto.",
        "fetch.",
        "queued.",
        "isolation.",
        "partition.assignment.",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
        || matches!(name, "enable.partition.eof" | "check.crcs")
}

/// The properties of `properties` a producer takes (a source's, for a
/// producer weir makes beside its consumer).
pub fn producer_properties(properties: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    properties
        .iter()
        .filter(|(k, _)| !consumer_only(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

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
        // A group member's identity: only the source's consumer joins as
        // it (`source/kafka.rs`); a producer, a reader or a client that
        // commits for another group would be fenced by it.
        if k != STATIC_MEMBER {
            config.set(k, v);
        }
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

/// Creates `topic` with `partitions` and the topic settings `configs`
/// (nothing if it exists). A broker that refuses the settings gets the
/// topic without them. `what` names it in errors ("the internal topic").
pub async fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: usize,
    configs: &[(&str, &str)],
    properties: &BTreeMap<String, String>,
    what: &str,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, &[], properties)
        .create()
        .map_err(|e| anyhow::anyhow!(scrub(e.to_string(), properties)))?;
    let options = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    let count = i32::try_from(partitions).unwrap_or(i32::MAX);
    let mut with = NewTopic::new(topic, count, TopicReplication::Fixed(1));
    for (k, v) in configs {
        with = with.set(k, v);
    }
    let plain = NewTopic::new(topic, count, TopicReplication::Fixed(1));
    let attempts = if configs.is_empty() {
        vec![plain]
    } else {
        vec![with, plain]
    };
    let mut last = None;
    for new in attempts {
        let results = admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| anyhow::anyhow!(scrub(e.to_string(), properties)))
            .with_context(|| format!("creating {what} `{topic}`"))?;
        match results.into_iter().next() {
            None | Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {
                return Ok(());
            }
            Some(Err((_, e))) => last = Some(e),
        }
    }
    anyhow::bail!(
        "creating {what} `{topic}`: {}",
        last.map_or_else(String::new, |e| e.to_string())
    )
}
