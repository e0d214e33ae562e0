//! Kafka sinks: the idempotent producer; every batch resolves only when each
//! record's delivery is acknowledged.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures::future::try_join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use super::{Ack, DeadLetterSink, Sink};
use crate::pipeline::kafka::{client_config, scrub};
use crate::pipeline::record::{DeadLetter, SinkRecord};

pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    properties: BTreeMap<String, String>,
}

impl KafkaSink {
    pub fn new(
        brokers: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let mut config = client_config(brokers, &[("linger.ms", "5")], properties);
        config.set("enable.idempotence", "true").set("acks", "all");
        let producer = config
            .create()
            .map_err(|e| anyhow::anyhow!(scrub(e.to_string(), properties)))
            .context("creating the Kafka producer")?;
        Ok(KafkaSink {
            producer,
            topic: topic.to_string(),
            properties: properties.clone(),
        })
    }

    /// Enqueues one record, waiting while the producer queue is full.
    async fn enqueue(
        &self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> anyhow::Result<DeliveryFuture> {
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic);
            if let Some(k) = key {
                record = record.key(k);
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

#[async_trait]
impl Sink for KafkaSink {
    async fn send(&self, records: Vec<SinkRecord>) -> anyhow::Result<Ack> {
        let mut deliveries = Vec::with_capacity(records.len());
        for r in &records {
            deliveries.push(
                self.enqueue(r.key.as_deref(), Some(&r.payload), None)
                    .await?,
            );
        }
        Ok(self.ack(deliveries))
    }
}

#[async_trait]
impl DeadLetterSink for KafkaSink {
    async fn send(&self, pipeline: &str, letters: Vec<DeadLetter>) -> anyhow::Result<Ack> {
        let mut deliveries = Vec::with_capacity(letters.len());
        for l in &letters {
            let r = &l.record;
            let mut headers = OwnedHeaders::new();
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            let partition = r.partition.to_string();
            let offset = r.offset.to_string();
            let fields: [(&str, &str); 6] = [
                ("weir.pipeline", pipeline),
                ("weir.stage", l.stage),
                ("weir.error", &l.error),
                ("weir.source.topic", &r.topic),
                ("weir.source.partition", &partition),
                ("weir.source.offset", &offset),
            ];
            for (k, v) in fields {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            if let Some(udf) = &l.udf {
                headers = headers.insert(Header {
                    key: "weir.udf",
                    value: Some(udf),
                });
            }
            deliveries.push(
                self.enqueue(r.key.as_deref(), r.payload.as_deref(), Some(headers))
                    .await?,
            );
        }
        Ok(self.ack(deliveries))
    }
}
