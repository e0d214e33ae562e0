//! The state changelog of a windowed pipeline over Kafka (`[state]`,
//! docs/pipelines.md "Window state and recovery"): a compacted topic
//! `<source topic>.weir-changelog.<pipeline>` where each scope's latest
//! checkpoint ([`crate::window::state::ScopeCheckpoint`]) is one message,
//! the last of its partition. Kafka Streams' approach, with whole
//! checkpoints instead of per-key changes: a restart reads one message per
//! scope, however long the windows are, then replays only the records
//! after it.
//!
//! Scope and partition: a pipeline's windows are partition 0 of a
//! one-partition topic; a windows stage's internal partition `p`
//! (`repartition.rs`) is partition `p` of a topic with as many partitions,
//! written only by the member that owns `p`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{PipelineConfig, SourceConfig};
use crate::kafka::{client_config, scrub};

/// The largest checkpoint written (a bigger one is skipped, and recovery
/// replays from the oldest open window as without a changelog).
pub const MAX_CHECKPOINT_BYTES: usize = 64 << 20;
/// How long a read of a checkpoint or a write may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The changelog topic of `config`'s pipeline: named after its first
/// source topic (a windows stage's: after the topic it re-keys).
pub fn topic(config: &PipelineConfig) -> Option<String> {
    let SourceConfig::Kafka { topics, .. } = &config.source else {
        return None;
    };
    let first = topics.first()?;
    let base = first
        .strip_suffix(&format!(".weir-repartition.{}", config.name))
        .unwrap_or(first);
    Some(format!("{base}.weir-changelog.{}", config.name))
}

/// A pipeline's changelog topic: writes checkpoints, reads the last.
pub struct Changelog {
    topic: String,
    producer: FutureProducer,
    reader: rdkafka::ClientConfig,
    properties: BTreeMap<String, String>,
}

impl Changelog {
    /// The changelog of `config` (a Kafka source), its topic created with
    /// `partitions` if it does not exist.
    pub async fn open(config: &PipelineConfig, partitions: usize) -> anyhow::Result<Self> {
        let (
            Some(topic),
            SourceConfig::Kafka {
                brokers,
                properties,
                ..
            },
        ) = (topic(config), &config.source)
        else {
            bail!("internal: a changelog needs a Kafka source");
        };
        let max = MAX_CHECKPOINT_BYTES.to_string();
        crate::kafka::create_topic(
            brokers,
            &topic,
            partitions,
            &[("cleanup.policy", "compact"), ("max.message.bytes", &max)],
            properties,
            "the changelog topic",
        )
        .await?;
        // Clients of their own name: the broker's logs and quotas tell
        // them from the pipeline's consumer.
        let producer: FutureProducer = client_config(
            brokers,
            &[
                ("message.max.bytes", &max),
                ("linger.ms", "0"),
                ("client.id", "weir-changelog-writer"),
            ],
            &crate::kafka::producer_properties(properties),
        )
        .create()
        .map_err(|e| anyhow::anyhow!(scrub(e.to_string(), properties)))
        .context("creating the changelog's producer")?;
        let mut reader = client_config(
            brokers,
            &[
                ("fetch.message.max.bytes", &max),
                (
                    "receive.message.max.bytes",
                    &(MAX_CHECKPOINT_BYTES + (1 << 20)).to_string(),
                ),
            ],
            properties,
        );
        // It assigns itself a partition and never commits; librdkafka
        // wants a group all the same.
        reader
            .set("client.id", "weir-changelog-reader")
            .set("group.id", format!("{topic}.reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        Ok(Changelog {
            topic,
            producer,
            reader,
            properties: properties.clone(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes a checkpoint of `partition`'s scope; done when the broker
    /// has it.
    pub async fn write(&self, partition: i32, bytes: &[u8]) -> anyhow::Result<()> {
        let key = partition.to_string();
        let record = FutureRecord::to(&self.topic)
            .partition(partition)
            .key(&key)
            .payload(bytes);
        self.producer
            .send(record, TIMEOUT)
            .await
            .map_err(|(e, _)| anyhow::anyhow!(scrub(e.to_string(), &self.properties)))
            .with_context(|| format!("writing a checkpoint to `{}`", self.topic))?;
        Ok(())
    }

    /// The last checkpoint of `partition`'s scope, if any.
    pub async fn read_last(&self, partition: i32) -> anyhow::Result<Option<Vec<u8>>> {
        let config = self.reader.clone();
        let topic = self.topic.clone();
        let properties = self.properties.clone();
        let scrubbed =
            move |e: rdkafka::error::KafkaError| anyhow::anyhow!(scrub(e.to_string(), &properties));
        tokio::task::spawn_blocking(move || -> anyhow::Result<Option<Vec<u8>>> {
            let consumer: BaseConsumer = config.create().map_err(&scrubbed)?;
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, TIMEOUT)
                .map_err(&scrubbed)?;
            if high <= low {
                return Ok(None);
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition, Offset::Offset(high - 1))
                .map_err(&scrubbed)?;
            consumer.assign(&tpl).map_err(&scrubbed)?;
            let deadline = std::time::Instant::now() + TIMEOUT;
            while std::time::Instant::now() < deadline {
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) if m.offset() >= high - 1 => {
                        return Ok(Some(m.payload().unwrap_or_default().to_vec()));
                    }
                    Some(Ok(_)) | None => {}
                    Some(Err(e)) => return Err(scrubbed(e)),
                }
            }
            bail!("no answer within {} s", TIMEOUT.as_secs())
        })
        .await
        .context("reading the changelog")?
        .with_context(|| {
            format!(
                "reading the last checkpoint of `{}` partition {partition}",
                self.topic
            )
        })
    }
}

/// Removes a deleted pipeline's changelog topic. Best effort (logged).
pub async fn remove(config: &PipelineConfig) {
    let (
        Some(topic),
        SourceConfig::Kafka {
            brokers,
            properties,
            ..
        },
    ) = (topic(config), &config.source)
    else {
        return;
    };
    let admin: AdminClient<DefaultClientContext> = match client_config(brokers, &[], properties)
        .create()
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(pipeline = %config.name, "cannot remove the changelog topic `{topic}`: {}", scrub(e.to_string(), properties));
            return;
        }
    };
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    match admin.delete_topics(&[topic.as_str()], &options).await {
        Ok(results) => {
            for r in results {
                if let Err((t, e)) = r
                    && e != RDKafkaErrorCode::UnknownTopicOrPartition
                {
                    tracing::warn!(pipeline = %config.name, "cannot remove the changelog topic `{t}`: {e}");
                }
            }
        }
        Err(e) => {
            tracing::warn!(pipeline = %config.name, "cannot remove the changelog topic `{topic}`: {}", scrub(e.to_string(), properties));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_windows_stage_shares_its_pipelines_changelog_name() {
        let mut config: PipelineConfig = toml::from_str(
            r#"
name = "rides"
sql = "SELECT 1"
[source]
kind = "kafka"
brokers = "127.0.0.1:9"
topics = ["acme.rides"]
group = "g"
format = "json"
[sink]
kind = "stdout"
"#,
        )
        .unwrap();
        assert_eq!(
            topic(&config).as_deref(),
            Some("acme.rides.weir-changelog.rides")
        );
        if let SourceConfig::Kafka { topics, .. } = &mut config.source {
            topics[0] = "acme.rides.weir-repartition.rides".into();
        }
        assert_eq!(
            topic(&config).as_deref(),
            Some("acme.rides.weir-changelog.rides")
        );
    }
}
