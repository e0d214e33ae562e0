//! A record as it arrives from a source, before decoding.

use std::collections::BTreeMap;
use std::sync::Arc;

/// One source record: the payload plus where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Topic, or the file path for file sources.
    pub topic: Arc<str>,
    pub partition: i32,
    /// Kafka offset, or the line number (from 1) for file sources.
    pub offset: i64,
    /// Milliseconds since the epoch, when known.
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl SourceRecord {
    /// The record, moved out; what is left keeps its coordinates (topic,
    /// partition, offset, timestamp) and no bytes.
    pub fn take(&mut self) -> SourceRecord {
        SourceRecord {
            key: self.key.take(),
            payload: self.payload.take(),
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            headers: std::mem::take(&mut self.headers),
        }
    }

    pub fn payload_len(&self) -> usize {
        self.payload.as_ref().map_or(0, Vec::len) + self.key.as_ref().map_or(0, Vec::len)
    }
}

/// A record that could not be processed, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub record: SourceRecord,
    /// `decode` or `transform`.
    pub stage: &'static str,
    pub error: String,
    /// The UDF named in the error, when one failed.
    pub udf: Option<String>,
}

/// An output record for a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The Kafka partition it must go to (a re-keying stage's watermark
    /// mark, `repartition.rs`); `None`: the sink's partitioner decides by
    /// key. Other sinks ignore it.
    pub partition: Option<i32>,
}

impl SinkRecord {
    /// Key and payload bytes (what a Kafka producer's `message.max.bytes`
    /// bounds).
    pub fn size(&self) -> usize {
        self.payload.len() + self.key.as_ref().map_or(0, Vec::len)
    }
}

/// The offset to commit per (topic, partition): one past the last record.
pub type Offsets = BTreeMap<(Arc<str>, i32), i64>;

/// A windowed pipeline's watermark (µs) per (topic, partition), committed
/// with the offsets: every window it passed was emitted and acknowledged
/// with the batches up to that commit.
pub type Marks = BTreeMap<(Arc<str>, i32), i64>;

/// The offsets that acknowledge every record of `records`.
pub fn next_offsets(records: &[SourceRecord]) -> Offsets {
    let mut next = Offsets::new();
    for r in records {
        let e = next
            .entry((r.topic.clone(), r.partition))
            .or_insert(r.offset + 1);
        *e = (*e).max(r.offset + 1);
    }
    next
}

/// Adds `later` to `offsets`, keeping the highest offset per partition.
pub fn merge_offsets(offsets: &mut Offsets, later: Offsets) {
    for (tp, offset) in later {
        let e = offsets.entry(tp).or_insert(offset);
        *e = (*e).max(offset);
    }
}
