//! A Kafka consumer-group member. Offsets are committed only after every
//! record of a micro-batch reached the sink or the dead-letter topic
//! (at-least-once); a rebalance re-delivers what was not committed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::Source;
use crate::pipeline::config::StartPosition;
use crate::pipeline::kafka::{client_config, scrub};
use crate::pipeline::record::SourceRecord;

/// How long a failing offset commit is retried before the pipeline stops.
const COMMIT_RETRY_FOR: Duration = Duration::from_secs(120);

pub struct KafkaSource {
    consumer: StreamConsumer,
    properties: BTreeMap<String, String>,
    topics: HashMap<String, Arc<str>>,
    /// Records that arrived while paused (already fetched before the pause;
    /// bounded by librdkafka's fetch queue), served first by the next batch.
    carry: VecDeque<SourceRecord>,
    /// The offsets of the last commit, made durable (synchronously) by `finish`.
    last_commit: Option<TopicPartitionList>,
}

impl KafkaSource {
    pub fn new(
        brokers: &str,
        topics: &[String],
        group: &str,
        start: StartPosition,
        properties: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let mut config = client_config(
            brokers,
            &[("queued.max.messages.kbytes", "16384")],
            properties,
        );
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match start {
                    StartPosition::Earliest => "earliest",
                    StartPosition::Latest => "latest",
                },
            );
        let consumer: StreamConsumer = config
            .create()
            .map_err(|e| anyhow::anyhow!(scrub(e.to_string(), properties)))
            .context("creating the Kafka consumer")?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| anyhow::anyhow!(scrub(e.to_string(), properties)))
            .context("subscribing")?;
        Ok(KafkaSource {
            consumer,
            properties: properties.clone(),
            topics: topics
                .iter()
                .map(|t| (t.clone(), Arc::from(t.as_str())))
                .collect(),
            carry: VecDeque::new(),
            last_commit: None,
        })
    }
}

fn to_record(
    topics: &mut HashMap<String, Arc<str>>,
    m: &rdkafka::message::BorrowedMessage<'_>,
) -> SourceRecord {
    {
        let topic = topics
            .entry(m.topic().to_string())
            .or_insert_with(|| Arc::from(m.topic()))
            .clone();
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        SourceRecord {
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            headers,
        }
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> anyhow::Result<Option<Vec<SourceRecord>>> {
        if !self.carry.is_empty() {
            let n = self.carry.len().min(max);
            return Ok(Some(self.carry.drain(..n).collect()));
        }
        // Broker outages surface as consumption errors; librdkafka
        // reconnects on its own, so they are logged and waited out.
        let first = loop {
            match self.consumer.recv().await {
                Ok(m) => break to_record(&mut self.topics, &m),
                Err(KafkaError::MessageConsumptionFatal(code)) => {
                    anyhow::bail!("fatal consumer error: {code}");
                }
                Err(e) => {
                    tracing::warn!("kafka consumer: {}", scrub(e.to_string(), &self.properties));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => {
                    let r = to_record(&mut self.topics, &m);
                    batch.push(r);
                }
                Ok(Err(e)) => {
                    tracing::warn!("kafka consumer: {}", scrub(e.to_string(), &self.properties));
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(Some(batch))
    }

    async fn pause(&mut self) -> anyhow::Result<()> {
        let assignment = self.consumer.assignment()?;
        self.consumer.pause(&assignment)?;
        tracing::warn!(
            partitions = assignment.count(),
            "sink is slow: paused the source partitions"
        );
        Ok(())
    }

    async fn keepalive(&mut self) -> anyhow::Result<()> {
        if let Ok(Ok(m)) =
            tokio::time::timeout(Duration::from_millis(50), self.consumer.recv()).await
        {
            let r = to_record(&mut self.topics, &m);
            self.carry.push_back(r);
        }
        Ok(())
    }

    async fn resume(&mut self) -> anyhow::Result<()> {
        let assignment = self.consumer.assignment()?;
        self.consumer.resume(&assignment)?;
        tracing::info!(
            partitions = assignment.count(),
            "sink caught up: resumed the source partitions"
        );
        Ok(())
    }

    async fn commit(&mut self, batch: &[SourceRecord]) -> anyhow::Result<()> {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for r in batch {
            let e = next.entry((&*r.topic, r.partition)).or_insert(r.offset + 1);
            *e = (*e).max(r.offset + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        }
        // Asynchronous: a lost commit only means re-delivery (at-least-once),
        // and the next commit supersedes it. `finish` commits synchronously.
        let result = self.commit_with_retry(&tpl, CommitMode::Async).await;
        self.last_commit = Some(tpl);
        result
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        // One synchronous attempt: if it fails (say, the partitions were just
        // revoked), the uncommitted tail is re-delivered, never lost.
        if let Some(tpl) = self.last_commit.take()
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync)
        {
            tracing::warn!(
                "final offset commit failed, the last records may be re-delivered: {}",
                scrub(e.to_string(), &self.properties)
            );
        }
        Ok(())
    }
}

impl KafkaSource {
    async fn commit_with_retry(
        &self,
        tpl: &TopicPartitionList,
        mode: CommitMode,
    ) -> anyhow::Result<()> {
        // A broker that is restarting refuses commits for a while: retry
        // with backoff (the records stay unacknowledged meanwhile).
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.consumer.commit(tpl, mode) {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() < COMMIT_RETRY_FOR => {
                    tracing::warn!(
                        "committing offsets failed, retrying in {backoff:?}: {}",
                        scrub(e.to_string(), &self.properties)
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(anyhow::anyhow!(scrub(e.to_string(), &self.properties)))
                        .context("committing offsets");
                }
            }
        }
    }
}
