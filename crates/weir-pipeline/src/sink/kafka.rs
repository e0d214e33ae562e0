//! Kafka sinks: the idempotent producer, or an exactly-once pipeline's
//! transactional one; every batch resolves only when each record's delivery
//! is acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures::future::try_join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use super::{Ack, DeadLetterSink, Sink};
use crate::dead_letter::header;
use crate::kafka::{client_config, scrub};
use crate::record::{DeadLetter, SinkRecord};
use crate::transaction::Transaction;

pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    properties: BTreeMap<String, String>,
    /// The producer's `message.max.bytes`: a larger record fails its send.
    max_bytes: usize,
    /// Exactly-once: records go into this transaction.
    txn: Option<Arc<Transaction>>,
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// librdkafka refuses a record whose key, value and headers plus this much
/// framing exceed `message.max.bytes` (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`
/// is 36; kept a little larger).
const RECORD_OVERHEAD: usize = 64;
/// Framing of one header (two varint lengths) counted generously.
const HEADER_OVERHEAD: usize = 10;
/// Room kept for `weir.truncated` when a dead letter must shrink.
const HEADER_ROOM: usize = 64;

impl KafkaSink {
    pub fn new(
        brokers: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let mut config = client_config(
            brokers,
            &[
                ("linger.ms", "5"),
                // With a second request in flight, librdkafka's broker
                // thread polls without sleeping until the first one's
                // response: 40 000 polls and 24 requests a second, and
                // 2–3 times the CPU of producing (BENCHMARKS.md, "Nexmark
                // over Kafka"), the same wall time. One request carries
                // every partition's batch for its broker.
                ("max.in.flight.requests.per.connection", "1"),
            ],
            properties,
        );
        config.set("enable.idempotence", "true").set("acks", "all");
        let producer = config
            .create()
            .map_err(|e| anyhow::anyhow!(scrub(e.to_string(), properties)))
            .context("creating the Kafka producer")?;
        Self::with_producer(producer, None, topic, properties)
    }

    /// A sink writing to `topic` inside `txn` (exactly-once).
    pub fn transactional(
        txn: Arc<Transaction>,
        topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        Self::with_producer(txn.producer().clone(), Some(txn), topic, properties)
    }

    fn with_producer(
        producer: FutureProducer,
        txn: Option<Arc<Transaction>>,
        topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let max_bytes = match properties.get("message.max.bytes") {
            None => DEFAULT_MESSAGE_MAX_BYTES,
            Some(v) => v.trim().parse().with_context(|| {
                format!("property `message.max.bytes` = `{v}` is not a number of bytes")
            })?,
        };
        Ok(KafkaSink {
            producer,
            topic: topic.to_string(),
            properties: properties.clone(),
            max_bytes,
            txn,
        })
    }

    /// Opens the pipeline's transaction first, when exactly-once.
    fn begin(&self) -> anyhow::Result<()> {
        match &self.txn {
            Some(txn) => txn.begin(),
            None => Ok(()),
        }
    }

    /// Enqueues one record, waiting while the producer queue is full.
    async fn enqueue(
        &self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        partition: Option<i32>,
    ) -> anyhow::Result<DeliveryFuture> {
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(p) = partition {
                record = record.partition(p);
            }
            if let Some(p) = payload {
                record = record.payload(p);
            }
            if let Some(h) = headers.clone() {
                record = record.headers(h);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    return Err(anyhow::anyhow!(scrub(e.to_string(), &self.properties)))
                        .with_context(|| format!("producing to `{}`", self.topic));
                }
            }
        }
    }

    /// The acknowledgement of `deliveries`: the first delivery error, named.
    fn ack(&self, deliveries: Vec<DeliveryFuture>) -> Ack {
        let topic = self.topic.clone();
        let properties = self.properties.clone();
        Box::pin(async move {
            let results = try_join_all(deliveries)
                .await
                .map_err(|_| anyhow::anyhow!("the producer was dropped"))?;
            for result in results {
                if let Err((e, _)) = result {
                    return Err(anyhow::anyhow!(scrub(e.to_string(), &properties)))
                        .with_context(|| format!("delivering to `{topic}`"));
                }
            }
            Ok(())
        })
    }
}

/// Cuts `bytes` to at most `max` bytes; whether it had to.
fn truncate(bytes: &[u8], max: usize) -> (&[u8], bool) {
    if bytes.len() <= max {
        (bytes, false)
    } else {
        (&bytes[..max], true)
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn max_record_bytes(&self) -> Option<super::RecordLimit> {
        Some(super::RecordLimit {
            bytes: self.max_bytes.saturating_sub(RECORD_OVERHEAD),
            key: format!(
                "`message.max.bytes` (now {}) in the sink's `properties`",
                self.max_bytes
            ),
        })
    }

    async fn send(&self, records: Vec<SinkRecord>) -> anyhow::Result<Ack> {
        self.begin()?;
        let mut deliveries = Vec::with_capacity(records.len());
        for r in &records {
            deliveries.push(
                self.enqueue(r.key.as_deref(), Some(&r.payload), None, r.partition)
                    .await?,
            );
        }
        Ok(self.ack(deliveries))
    }
}

#[async_trait]
impl DeadLetterSink for KafkaSink {
    async fn send(&self, pipeline: &str, letters: Vec<DeadLetter>) -> anyhow::Result<Ack> {
        self.begin()?;
        let mut deliveries = Vec::with_capacity(letters.len());
        for l in &letters {
            let r = &l.record;
            let mut headers = OwnedHeaders::new();
            let mut header_bytes = RECORD_OVERHEAD;
            // The original headers travel along unless they alone would
            // take half the room (then `weir.headers.dropped` counts them).
            let original: usize = r
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD)
                .sum();
            let dropped_headers = original > self.max_bytes / 2;
            if !dropped_headers {
                header_bytes += original;
                for (k, v) in &r.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v),
                    });
                }
            }
            let partition = r.partition.to_string();
            let offset = r.offset.to_string();
            // The reason is for people; a pathological one is cut short.
            let error = match l.error.char_indices().nth(2000) {
                Some((at, _)) => format!("{}…", &l.error[..at]),
                None => l.error.clone(),
            };
            let fields: [(&str, &str); 6] = [
                (header::PIPELINE, pipeline),
                (header::STAGE, l.stage),
                (header::ERROR, &error),
                (header::SOURCE_TOPIC, &r.topic),
                (header::SOURCE_PARTITION, &partition),
                (header::SOURCE_OFFSET, &offset),
            ];
            let count = r.headers.len().to_string();
            if dropped_headers {
                header_bytes += 40;
                headers = headers.insert(Header {
                    key: header::HEADERS_DROPPED,
                    value: Some(&count),
                });
            }
            for (k, v) in fields {
                header_bytes += k.len() + v.len() + HEADER_OVERHEAD;
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            if let Some(udf) = &l.udf {
                header_bytes += udf.len() + 8 + HEADER_OVERHEAD;
                headers = headers.insert(Header {
                    key: header::UDF,
                    value: Some(udf),
                });
            }
            // A dead letter must always fit: the key, then the payload, are
            // cut to the producer's limit, and `weir.truncated` says so
            // (with the original payload length).
            let room = self.max_bytes.saturating_sub(header_bytes + HEADER_ROOM);
            let (key, key_cut) = match r.key.as_deref() {
                Some(k) => {
                    let (k, cut) = truncate(k, room);
                    (Some(k), cut)
                }
                None => (None, false),
            };
            let room = room - key.map_or(0, <[u8]>::len);
            let (payload, payload_cut) = match r.payload.as_deref() {
                Some(p) => {
                    let (p, cut) = truncate(p, room);
                    (Some(p), cut)
                }
                None => (None, false),
            };
            if key_cut || payload_cut {
                let original = r.payload.as_ref().map_or(0, Vec::len).to_string();
                headers = headers.insert(Header {
                    key: header::TRUNCATED,
                    value: Some(&original),
                });
                tracing::warn!(
                    topic = %r.topic,
                    partition = r.partition,
                    offset = r.offset,
                    "dead letter truncated to the dead-letter producer's `message.max.bytes` ({})",
                    self.max_bytes
                );
            }
            deliveries.push(self.enqueue(key, payload, Some(headers), None).await?);
        }
        Ok(self.ack(deliveries))
    }
}
