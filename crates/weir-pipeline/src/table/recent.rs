//! A topic's most recent records as a table (the SQL endpoint's `topics`):
//! the last N records of each partition, read without joining any group.
//! Here, with the other Kafka readers, so that the control plane
//! (weir-serve) has no Kafka client of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;

use crate::config::{FieldConfig, Format, Metadata};
use crate::decode::RecordDecoder;
use crate::record::SourceRecord;

/// A topic table of a SQL request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicTable {
    pub brokers: String,
    pub topic: String,
    pub format: Format,
    #[serde(default)]
    pub fields: Vec<FieldConfig>,
    #[serde(default)]
    pub metadata: Vec<Metadata>,
    /// Records per partition, from the end (clamped to 1..=[`MAX_LAST`]).
    #[serde(default = "default_last", deserialize_with = "whole_number")]
    pub last: i64,
}

fn default_last() -> i64 {
    100
}

/// Any whole JSON number (`255`, `255.0`, or one beyond `i64`, which JSON
/// Schema also calls an integer), saturated to `i64`: `last` is clamped to
/// its range anyway.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    n.as_i64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0)
                // `as` saturates at the ends of i64.
                .map(|f| f as i64)
        })
        .ok_or_else(|| D::Error::custom(format!("last must be a whole number, got {n}")))
}

/// At most this many records per partition.
pub const MAX_LAST: i64 = 10_000;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Reads and decodes the table (blocking: run it off the async threads).
/// Records that do not decode are left out.
pub fn read(t: &TopicTable) -> Result<RecordBatch, String> {
    let last = t.last.clamp(1, MAX_LAST);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &t.brokers)
        .set("group.id", "weir-sql-recent")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| format!("topic `{}`: {e}", t.topic))?;
    let metadata = consumer
        .fetch_metadata(Some(&t.topic), TIMEOUT)
        .map_err(|e| format!("topic `{}`: {e}", t.topic))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|m| m.name() == t.topic)
        .flat_map(|m| m.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic `{}` does not exist", t.topic));
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(&t.topic, p, TIMEOUT)
            .map_err(|e| format!("topic `{}` partition {p}: {e}", t.topic))?;
        if high > low {
            tpl.add_partition_offset(&t.topic, p, Offset::Offset((high - last).max(low)))
                .map_err(|e| e.to_string())?;
            ends.insert(p, high);
        }
    }
    let mut records: Vec<SourceRecord> = Vec::new();
    if !ends.is_empty() {
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let mut topics = HashMap::new();
        let deadline = Instant::now() + TIMEOUT;
        while !ends.is_empty() && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let r = crate::source::to_record(&mut topics, &m);
                    if ends
                        .get(&r.partition)
                        .is_some_and(|end| r.offset + 1 >= *end)
                    {
                        ends.remove(&r.partition);
                    }
                    records.push(r);
                }
                Some(Err(e)) => return Err(format!("topic `{}`: {e}", t.topic)),
                None => {}
            }
        }
    }
    let decoder = RecordDecoder::new(t.format, &t.fields, &t.metadata);
    decoder
        .decode(&records)
        .map(|d| d.batch)
        .map_err(|e| format!("topic `{}`: {e}", t.topic))
}

/// The decoded table's schema, for an empty result.
pub fn schema(t: &TopicTable) -> Arc<datafusion::arrow::datatypes::Schema> {
    RecordDecoder::new(t.format, &t.fields, &t.metadata).schema()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Schemathesis sends any JSON integer the schema allows: `2.0` and
    /// numbers beyond `i64` are whole numbers too, and `last` is clamped.
    #[test]
    fn last_takes_any_whole_number() {
        let table = |last: &str| {
            serde_json::from_str::<TopicTable>(&format!(
                r#"{{"brokers": "b", "topic": "t", "format": "json", "last": {last}}}"#
            ))
            .map(|t| t.last)
        };
        assert_eq!(table("2").unwrap(), 2);
        assert_eq!(table("2.0").unwrap(), 2);
        assert_eq!(table("1304794662920981036662784").unwrap(), i64::MAX);
        assert_eq!(table("-1e30").unwrap(), i64::MIN);
        assert!(table("2.5").is_err());
    }
}
