//! A lookup table from a compacted Kafka topic: the latest value per key
//! (a tombstone — a record without a value — deletes its key), read from
//! the start of every partition by a consumer of its own that commits
//! nothing. The pipeline starts once the table caught up with the end
//! offsets at start; a thread then keeps reading, and the pipeline takes a
//! new version at most once a second. Values decode like a source's
//! records (`format`, `fields`); the record key is the column `_key`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use parking_lot::Mutex;
use rdkafka::Offset;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::TopicPartitionList;

use super::Snapshot;
use crate::config::{Metadata, TableConfig};
use crate::decode::RecordDecoder;
use crate::record::SourceRecord;

/// How long the first read of the topic may take.
const CATCH_UP: Duration = Duration::from_secs(60);
/// A new version at most this often.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// The latest value of each key, as the reader thread left it.
#[derive(Default)]
struct Latest {
    values: HashMap<Vec<u8>, (Vec<u8>, i32, i64)>,
    changed: bool,
    bytes: usize,
}

pub struct TopicTable {
    name: String,
    topic: Arc<str>,
    decoder: RecordDecoder,
    latest: Arc<Mutex<Latest>>,
    stop: Arc<AtomicBool>,
    taken: Instant,
}

impl Drop for TopicTable {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl TopicTable {
    pub async fn open(pipeline: &str, config: &TableConfig) -> anyhow::Result<(Self, Snapshot)> {
        let TableConfig::Kafka {
            name,
            brokers,
            topic,
            format,
            fields,
            properties,
        } = config
        else {
            bail!("table `{}` is not a topic table", config.name());
        };
        let decoder = RecordDecoder::new(*format, fields, &[Metadata::Key]);
        let latest = Arc::new(Mutex::new(Latest::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (brokers, topic_name, properties) =
            (brokers.clone(), topic.clone(), properties.clone());
        let (l, s, table) = (latest.clone(), stop.clone(), name.clone());
        let pipeline = pipeline.to_string();
        let (caught_up, ready) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        std::thread::Builder::new()
            .name(format!("weir-table-{name}"))
            .spawn(move || {
                let consumer = match reader(&brokers, &topic_name, &properties) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = caught_up.send(Err(e));
                        return;
                    }
                };
                follow(&consumer, &topic_name, &table, &pipeline, &l, &s, caught_up);
            })
            .context("starting the table's reader thread")?;
        let what = format!("table `{name}` (topic `{topic}`)");
        tokio::task::spawn_blocking(move || ready.recv_timeout(CATCH_UP + Duration::from_secs(5)))
            .await
            .context("waiting for the table")?
            .map_err(|_| {
                anyhow::anyhow!(
                    "{what}: not read to its end within {} s; check the brokers",
                    CATCH_UP.as_secs()
                )
            })?
            .with_context(|| what.clone())?;
        let mut table = TopicTable {
            name: name.clone(),
            topic: topic.as_str().into(),
            decoder,
            latest,
            stop,
            taken: Instant::now(),
        };
        let snapshot = table.snapshot()?;
        Ok((table, snapshot))
    }

    /// A new version if values arrived (at most once a second).
    pub fn poll(&mut self) -> anyhow::Result<Option<Snapshot>> {
        if self.taken.elapsed() < SNAPSHOT_EVERY || !self.latest.lock().changed {
            return Ok(None);
        }
        self.taken = Instant::now();
        self.snapshot().map(Some)
    }

    fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let (records, raw) = {
            let mut latest = self.latest.lock();
            latest.changed = false;
            let records: Vec<SourceRecord> = latest
                .values
                .iter()
                .map(|(key, (value, partition, offset))| SourceRecord {
                    key: Some(key.clone()),
                    payload: Some(value.clone()),
                    topic: self.topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    timestamp: None,
                    headers: Vec::new(),
                })
                .collect();
            (records, latest.bytes)
        };
        let decoded = self
            .decoder
            .decode(&records)
            .map_err(|e| anyhow::anyhow!("table `{}`: {e}", self.name))?;
        if let Some((i, why)) = decoded.failed.first() {
            tracing::warn!(
                table = %self.name,
                "{} value(s) of topic `{}` do not decode and are left out of the table (first: partition {} offset {}: {why})",
                decoded.failed.len(),
                self.topic,
                records[*i].partition,
                records[*i].offset
            );
        }
        let mut snapshot = Snapshot::new(decoded.batch.schema(), vec![decoded.batch]);
        snapshot.bytes += raw;
        Ok(snapshot)
    }
}

fn reader(
    brokers: &str,
    topic: &str,
    properties: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<BaseConsumer> {
    let mut config = ClientConfig::new();
    for (k, v) in properties {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("weir-table-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("creating the table's consumer")?;
    Ok(consumer)
}

/// Reads the topic from the start of each partition; says on `caught_up`
/// once the end offsets at start were reached, then keeps reading until
/// `stop`.
fn follow(
    consumer: &BaseConsumer,
    topic: &str,
    table: &str,
    pipeline: &str,
    latest: &Mutex<Latest>,
    stop: &AtomicBool,
    caught_up: std::sync::mpsc::Sender<anyhow::Result<()>>,
) {
    let started = Instant::now();
    let partitions = match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
        Ok(m) => m
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            .unwrap_or_default(),
        Err(e) => {
            let _ = caught_up.send(Err(anyhow::anyhow!(
                "cannot read the topic's metadata: {e}"
            )));
            return;
        }
    };
    if partitions.is_empty() {
        let _ = caught_up.send(Err(anyhow::anyhow!(
            "the topic does not exist (create it, compacted: cleanup.policy=compact)"
        )));
        return;
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for &p in &partitions {
        if let Err(e) = tpl.add_partition_offset(topic, p, Offset::Beginning) {
            let _ = caught_up.send(Err(anyhow::anyhow!("partition {p}: {e}")));
            return;
        }
        match consumer.fetch_watermarks(topic, p, Duration::from_secs(10)) {
            Ok((low, high)) => {
                if high > low {
                    ends.insert(p, high);
                }
            }
            Err(e) => {
                let _ = caught_up.send(Err(anyhow::anyhow!("partition {p}: no end offset: {e}")));
                return;
            }
        }
    }
    if let Err(e) = consumer.assign(&tpl) {
        let _ = caught_up.send(Err(anyhow::anyhow!("cannot read the topic: {e}")));
        return;
    }
    let mut caught_up = Some(caught_up);
    while !stop.load(Ordering::Relaxed) {
        if ends.is_empty()
            && let Some(tx) = caught_up.take()
        {
            let _ = tx.send(Ok(()));
        }
        if caught_up.is_some() && started.elapsed() > CATCH_UP {
            return;
        }
        match consumer.poll(Duration::from_millis(100)) {
            // Idle: the end offsets may lie past the last record (compacted
            // away, or a transaction marker): the position tells.
            None if !ends.is_empty() => {
                if let Ok(positions) = consumer.position() {
                    for e in positions.elements() {
                        if let (Offset::Offset(at), Some(&end)) =
                            (e.offset(), ends.get(&e.partition()))
                            && at >= end
                        {
                            ends.remove(&e.partition());
                        }
                    }
                }
            }
            None => {}
            Some(Err(e)) => tracing::warn!(pipeline, table, "reading topic `{topic}`: {e}"),
            Some(Ok(m)) => {
                let key = m.key().map(<[u8]>::to_vec);
                let (partition, offset) = (m.partition(), m.offset());
                if ends.get(&partition).is_some_and(|&end| offset + 1 >= end) {
                    ends.remove(&partition);
                }
                let Some(key) = key else {
                    tracing::warn!(
                        pipeline,
                        table,
                        "topic `{topic}` partition {partition} offset {offset} has no key; a table needs one per record, left out"
                    );
                    continue;
                };
                let mut l = latest.lock();
                let old = match m.payload() {
                    // A tombstone deletes the key.
                    None => l.values.remove(&key),
                    Some(value) => {
                        let len = key.len() + value.len();
                        l.bytes += len;
                        l.values
                            .insert(key.clone(), (value.to_vec(), partition, offset))
                    }
                };
                if let Some((value, _, _)) = old {
                    l.bytes = l.bytes.saturating_sub(key.len() + value.len());
                }
                l.changed = true;
            }
        }
    }
}
