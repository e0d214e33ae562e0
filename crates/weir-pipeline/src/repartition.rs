//! Key-partitioned state over Kafka (`source.repartition = true`,
//! docs/pipelines.md "More processes"): a windowed pipeline, or one that
//! joins the stream with itself, runs as two pipelines in the same
//! process, joined by an internal topic. (Below, "windows" stands for
//! either; a joins stage keys records by the column both sides of its `ON`
//! equate, `join/state.rs`.)
//!
//! 1. **Re-key** (`<name>.repartition`): the pipeline's source and group;
//!    decodes each record and writes the columns the query reads to the
//!    internal topic
//!    `<first source topic>.weir-repartition.<name>` (as many partitions as
//!    the source), keyed by the query's grouping columns, with the record's
//!    source partition and offset. Kafka's partitioner sends every record of
//!    a key to the same partition. After each batch's records, a *mark* per
//!    source partition of the batch goes to every internal partition: that
//!    source partition's largest event time in the batch ([`Marks`]).
//! 2. **Windows** (`<name>`): reads the internal topic in group
//!    `<group>.windows` and runs the query. Each member owns some keys'
//!    partitions, so its windows hold *all* the records of their groups.
//!    Watermarks are kept per *source* partition (from the columns carried
//!    along, and from the marks), so a window closes when every source
//!    partition has passed it, whichever member re-keyed it, even on an
//!    internal partition that some source partition sends no key to; a
//!    record written twice to the internal
//!    topic (a re-keying member that crashed before its commit) is
//!    recognised by its source offset and folded once.
//!
//! No protocol of weir's own: Kafka's consumer groups move the keys (and
//! with them the windows) between members.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, new_null_array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Int32Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use datafusion::arrow::error::ArrowError;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::{FieldConfig, Format, Metadata, PipelineConfig, SinkConfig, SourceConfig};
use crate::kafka::{client_config, scrub};
use weir_core::abi::{AbiType, ArrowType};

/// Columns the re-keying stage adds (and the windows stage removes).
pub const KEY: &str = "__weir_key";
pub const ORIGIN_PARTITION: &str = "__weir_origin_partition";
pub const ORIGIN_OFFSET: &str = "__weir_origin_offset";

/// A re-keying stage's watermark marks. A windows stage keeps one
/// watermark per internal partition over the source partitions; an
/// internal partition learns how far source partition P has come from P's
/// records, and P may send none of its keys there (few keys, or a source
/// keyed like the query). So after each batch the stage writes, for each
/// source partition in it, one row to *every* internal partition: origin
/// offset -1 ([`MARK_OFFSET`]), the partition's largest event time in the
/// batch, every other column null. Written after the batch's records by
/// the same producer, a mark never overtakes them in a partition.
#[derive(Debug)]
pub struct Marks {
    schema: SchemaRef,
    time: usize,
    key: usize,
    partition: usize,
    offset: usize,
    /// Partitions of the internal topic.
    partitions: i32,
}

/// The origin offset of a watermark mark (no record has it).
pub const MARK_OFFSET: i64 = -1;

impl Marks {
    /// Marks of the re-keying stage whose output is `output`, with event
    /// time `time_column`, into an internal topic of `partitions`.
    pub fn new(output: &Schema, time_column: &str, partitions: usize) -> anyhow::Result<Self> {
        let index = |name: &str| {
            output.index_of(name).map_err(|_| {
                anyhow::anyhow!("internal: the re-keying stage's output lacks column `{name}`")
            })
        };
        // Every column nullable: a mark carries only its four.
        let schema = Arc::new(Schema::new(
            output
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        Ok(Marks {
            time: index(time_column)?,
            key: index(KEY)?,
            partition: index(ORIGIN_PARTITION)?,
            offset: index(ORIGIN_OFFSET)?,
            schema,
            partitions: i32::try_from(partitions).unwrap_or(i32::MAX),
        })
    }

    /// Partitions of the internal topic: each mark goes to all of them.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// The marks of `batch` (an output batch of the stage): one row per
    /// source partition with a timed record in it; `None` if none has.
    pub fn rows(&self, batch: &RecordBatch) -> Result<Option<RecordBatch>, ArrowError> {
        let missing =
            || ArrowError::SchemaError("internal: a re-keyed batch lacks its origin".into());
        let time = cast(
            batch.columns().get(self.time).ok_or_else(missing)?,
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        let time = time
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(missing)?;
        let origin = batch
            .columns()
            .get(self.partition)
            .and_then(|c| c.as_primitive_opt::<Int32Type>())
            .ok_or_else(missing)?;
        let mut largest: BTreeMap<i32, i64> = BTreeMap::new();
        for row in 0..batch.num_rows() {
            if time.is_null(row) || origin.is_null(row) {
                continue;
            }
            let (p, t) = (origin.value(row), time.value(row));
            let e = largest.entry(p).or_insert(t);
            *e = (*e).max(t);
        }
        if largest.is_empty() {
            return Ok(None);
        }
        let n = largest.len();
        let columns = self
            .schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let column: ArrayRef = if i == self.time {
                    Arc::new(TimestampMicrosecondArray::from_iter_values(
                        largest.values().copied(),
                    ))
                } else if i == self.partition {
                    Arc::new(Int32Array::from_iter_values(largest.keys().copied()))
                } else if i == self.offset {
                    Arc::new(Int64Array::from_value(MARK_OFFSET, n))
                } else if i == self.key {
                    Arc::new(StringArray::from_iter_values(std::iter::repeat_n("", n)))
                } else {
                    return Ok(new_null_array(f.data_type(), n));
                };
                cast(&column, f.data_type())
            })
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(self.schema.clone(), columns).map(Some)
    }
}

/// The two pipelines of a repartitioned one, and what the windows stage
/// needs to know of the source.
pub struct Stages {
    pub rekey: PipelineConfig,
    pub windows: PipelineConfig,
    /// Partitions of the source topic (what the watermark waits for).
    pub source_partitions: usize,
    /// The source topic (watermarks are kept per partition of it).
    pub source_topic: Arc<str>,
}

/// The internal topic of `config`'s pipeline.
pub fn internal_topic(config: &PipelineConfig) -> Option<String> {
    match &config.source {
        SourceConfig::Kafka { topics, .. } => topics
            .first()
            .map(|t| format!("{t}.weir-repartition.{}", config.name)),
        _ => None,
    }
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQL of a record's key on the internal topic: its `keys` columns'
/// values joined, never empty — librdkafka's partitioner sends an empty
/// key to a random partition, which would split one key's records (with a
/// query grouped by its window alone: every record) between members.
fn key_expression(keys: &[String]) -> String {
    format!(
        "concat_ws('\u{1}', 'k'{})",
        keys.iter()
            .map(|k| format!(", coalesce(CAST({} AS VARCHAR), '\u{2}')", quoted(k)))
            .collect::<String>()
    )
}

/// The stages of `config` (whose source decodes into `schema` and whose
/// query groups by `keys`), with the internal topic created.
pub async fn stages(
    config: &PipelineConfig,
    schema: &SchemaRef,
    keys: &[String],
) -> anyhow::Result<Stages> {
    let SourceConfig::Kafka {
        brokers,
        topics,
        group,
        metadata,
        properties,
        stall_warn_ms,
        ..
    } = &config.source
    else {
        bail!("`source.repartition` needs a Kafka source");
    };
    let [topic] = topics.as_slice() else {
        bail!(
            "`source.repartition` reads one topic (watermarks are kept per partition of it); this source reads {}",
            topics.len()
        );
    };
    if matches!(config.sink, SinkConfig::Kafka { ref delivery, .. } if *delivery == crate::config::Delivery::ExactlyOnce)
    {
        bail!(
            "`source.repartition` is at-least-once; `sink.delivery = \"exactly-once\"` is not available with it"
        );
    }
    for key in keys {
        if schema.field_with_name(key).is_err() {
            bail!(
                "`source.repartition` keys records by the columns the query groups by, and `{key}` is not a column of the source (group by source columns, or join after the window)"
            );
        }
    }
    // The columns the windows stage decodes again: every source column as
    // its ABI type (timestamps of any unit as µs).
    let mut select = Vec::new();
    let mut fields = Vec::new();
    for f in schema.fields() {
        let (expr, ty) = match f.data_type() {
            DataType::Timestamp(TimeUnit::Microsecond, None) => {
                (quoted(f.name()), AbiType::TimestampMicros)
            }
            DataType::Timestamp(_, _) => (
                format!("to_timestamp_micros({})", quoted(f.name())),
                AbiType::TimestampMicros,
            ),
            dt => match AbiType::ALL
                .into_iter()
                .find(|t| t.data_type() == *dt && *t != AbiType::Binary)
            {
                Some(t) => (quoted(f.name()), t),
                None => bail!(
                    "`source.repartition` carries the source's columns through an internal topic as JSON, and column `{}` is {dt}, which it cannot",
                    f.name()
                ),
            },
        };
        select.push(format!("{expr} AS {}", quoted(f.name())));
        fields.push(FieldConfig {
            name: f.name().clone(),
            ty: ty.name().to_string(),
            nullable: true,
        });
    }
    if keys.is_empty() {
        tracing::info!(pipeline = %config.name, "every record goes to one internal partition: the query groups by its window alone, or combines its groups after the aggregate (a window function, a second aggregate, DISTINCT, LIMIT); one member at a time holds its windows");
    }
    select.push(format!("{} AS {KEY}", key_expression(keys)));
    select.push(format!("\"_partition\" AS {ORIGIN_PARTITION}"));
    select.push(format!("\"_offset\" AS {ORIGIN_OFFSET}"));
    for (name, ty) in [
        (KEY, AbiType::Utf8),
        (ORIGIN_PARTITION, AbiType::Int32),
        (ORIGIN_OFFSET, AbiType::Int64),
    ] {
        fields.push(FieldConfig {
            name: name.to_string(),
            ty: ty.name().to_string(),
            nullable: false,
        });
    }
    let internal = internal_topic(config).context("no source topic")?;
    let partitions = source_partitions(brokers, topic, properties).await?;
    crate::kafka::create_topic(
        brokers,
        &internal,
        partitions,
        &[],
        properties,
        "the internal topic",
    )
    .await?;

    let mut rekey = config.clone();
    rekey.name = format!("{}.repartition", config.name);
    rekey.udfs.clear();
    rekey.tables.clear();
    rekey.sql = format!("SELECT {} FROM source", select.join(", "));
    if let SourceConfig::Kafka {
        metadata: m,
        repartition,
        ..
    } = &mut rekey.source
    {
        for needed in [Metadata::Partition, Metadata::Offset] {
            if !m.contains(&needed) {
                m.push(needed);
            }
        }
        *repartition = false;
    }
    rekey.sink = SinkConfig::Kafka {
        brokers: brokers.clone(),
        topic: internal.clone(),
        format: Format::Json,
        key: Some(KEY.to_string()),
        properties: crate::kafka::producer_properties(properties),
        avro: None,
        delivery: crate::config::Delivery::AtLeastOnce,
        transactional_id: None,
    };

    let mut windows = config.clone();
    windows.source = SourceConfig::Kafka {
        brokers: brokers.clone(),
        topics: vec![internal],
        group: format!("{group}.windows"),
        start: crate::config::StartPosition::Earliest,
        format: Format::Json,
        fields,
        metadata: Vec::new(),
        properties: properties.clone(),
        stall_warn_ms: *stall_warn_ms,
        avro: None,
        repartition: false,
    };
    let _ = metadata;
    Ok(Stages {
        rekey,
        windows,
        source_partitions: partitions,
        source_topic: Arc::from(topic.as_str()),
    })
}

/// Removes what a repartitioned pipeline keeps in Kafka once it is
/// deleted: its internal topic, and the groups of its windows stage and of
/// its committed watermarks. Best effort (each failure is logged): the
/// pipeline is gone either way.
pub async fn remove_internal(config: &PipelineConfig) {
    let (
        Some(topic),
        SourceConfig::Kafka {
            brokers,
            group,
            properties,
            ..
        },
    ) = (internal_topic(config), &config.source)
    else {
        return;
    };
    if !config.repartitions() {
        return;
    }
    let admin: AdminClient<DefaultClientContext> = match client_config(brokers, &[], properties)
        .create()
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(pipeline = %config.name, "cannot remove the internal topic `{topic}`: {}", scrub(e.to_string(), properties));
            return;
        }
    };
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    match admin.delete_topics(&[topic.as_str()], &options).await {
        Ok(results) => {
            for r in results {
                if let Err((t, e)) = r {
                    tracing::warn!(pipeline = %config.name, "cannot remove the internal topic `{t}`: {e}");
                }
            }
        }
        Err(e) => {
            tracing::warn!(pipeline = %config.name, "cannot remove the internal topic `{topic}`: {}", scrub(e.to_string(), properties));
        }
    }
    let groups: Vec<String> = [
        format!("{group}.windows"),
        format!("{group}.weir-watermarks"),
        format!("{group}.weir-watermark-offsets"),
        format!("{group}.windows.weir-watermarks"),
        format!("{group}.windows.weir-watermark-offsets"),
    ]
    .into();
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();
    if let Err(e) = admin.delete_groups(&names, &options).await {
        tracing::debug!(pipeline = %config.name, "removing the internal groups: {}", scrub(e.to_string(), properties));
    }
}

/// Partitions of `topic`, from the cluster's metadata.
async fn source_partitions(
    brokers: &str,
    topic: &str,
    properties: &BTreeMap<String, String>,
) -> anyhow::Result<usize> {
    let config = client_config(brokers, &[], properties);
    let topic = topic.to_string();
    let properties = properties.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| anyhow::anyhow!(scrub(e.to_string(), &properties)))?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|e| anyhow::anyhow!(scrub(e.to_string(), &properties)))
            .with_context(|| format!("reading the partitions of `{topic}`"))?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        if count == 0 {
            bail!("topic `{topic}` has no partitions (does it exist?)");
        }
        Ok(count)
    })
    .await
    .context("reading the source's partitions")?
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;

    /// A key on the internal topic is never empty, whatever the grouping
    /// columns hold (an empty key is partitioned at random); distinct
    /// values stay distinct keys.
    #[tokio::test]
    async fn an_internal_key_is_never_empty() {
        let ctx = datafusion::prelude::SessionContext::new();
        let keys = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        for (columns, want) in [
            (keys(&[]), vec!["k", "k", "k"]),
            (keys(&["city"]), vec!["k\u{1}", "k\u{1}\u{2}", "k\u{1}rome"]),
            (
                keys(&["city", "n"]),
                vec!["k\u{1}\u{1}1", "k\u{1}\u{2}\u{1}\u{2}", "k\u{1}rome\u{1}3"],
            ),
        ] {
            let sql = format!(
                "SELECT {} FROM (VALUES ('', 1), (NULL, NULL), ('rome', 3)) AS t(city, n)",
                key_expression(&columns)
            );
            let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            let got: Vec<String> = batches
                .iter()
                .flat_map(|b| {
                    let c = cast(b.column(0), &DataType::Utf8).unwrap();
                    let c = c.as_string::<i32>().clone();
                    (0..c.len()).map(move |i| c.value(i).to_string())
                })
                .collect();
            assert_eq!(got, want, "{columns:?}");
        }
    }

    /// One mark per source partition of the batch, with its largest event
    /// time; untimed rows move nothing; every other column null.
    #[test]
    fn a_batch_marks_each_source_partition_with_its_largest_event_time() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("city", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new(KEY, DataType::Utf8, false),
            Field::new(ORIGIN_PARTITION, DataType::Int32, false),
            Field::new(ORIGIN_OFFSET, DataType::Int64, false),
        ]));
        let marks = Marks::new(&schema, "ts", 4).unwrap();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["rome", "oslo", "lima", "kyiv"])),
                Arc::new(TimestampMicrosecondArray::from(vec![
                    Some(30),
                    Some(10),
                    Some(20),
                    None,
                ])),
                Arc::new(StringArray::from(vec!["rome", "oslo", "lima", "kyiv"])),
                Arc::new(Int32Array::from(vec![1, 0, 1, 2])),
                Arc::new(Int64Array::from(vec![5, 7, 6, 9])),
            ],
        )
        .unwrap();
        let rows = marks.rows(&batch).unwrap().unwrap();
        assert_eq!(rows.num_rows(), 2, "partition 2's only row has no time");
        let column = |name: &str| rows.column_by_name(name).unwrap().clone();
        assert_eq!(
            column(ORIGIN_PARTITION)
                .as_primitive::<Int32Type>()
                .values(),
            &[0, 1]
        );
        assert_eq!(
            column("ts")
                .as_primitive::<TimestampMicrosecondType>()
                .values(),
            &[10, 30]
        );
        assert_eq!(
            column(ORIGIN_OFFSET)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .values(),
            &[MARK_OFFSET, MARK_OFFSET]
        );
        assert_eq!(column("city").null_count(), 2);
        assert_eq!(marks.partitions(), 4);
        let untimed = batch.slice(3, 1);
        assert!(marks.rows(&untimed).unwrap().is_none());
    }
}
