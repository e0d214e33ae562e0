//! Query output → one payload (and optional key) per row.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use super::avro::AvroOut;
use super::config::Format;
use super::record::SinkRecord;

/// Encodes rows as JSON objects or CSV lines (no header).
pub struct RecordEncoder {
    format: Format,
    key: Option<String>,
    key_columns: Vec<String>,
    /// Avro's schema and framing (`format = "avro"`).
    avro: Option<AvroOut>,
    /// A re-keying stage: each batch's watermark marks follow its records.
    marks: Option<crate::repartition::Marks>,
}

impl RecordEncoder {
    pub fn new(format: Format, key: Option<String>) -> Self {
        RecordEncoder {
            format,
            key,
            key_columns: Vec::new(),
            avro: None,
            marks: None,
        }
    }

    /// After each batch's records, its watermark marks, each to every
    /// partition of the internal topic (`repartition.rs`).
    pub fn set_marks(&mut self, marks: crate::repartition::Marks) {
        self.marks = Some(marks);
    }

    /// Writes Avro datums with `avro`'s schema and framing.
    pub fn with_avro(mut self, avro: AvroOut) -> Self {
        self.avro = Some(avro);
        self
    }

    /// Without a `key` column: the key is these columns' values as one JSON
    /// object (a windowed result: window start and grouping columns).
    pub fn with_key_columns(mut self, columns: Vec<String>) -> Self {
        self.key_columns = columns;
        self
    }

    /// Checks once, at start, that the key column exists in the output.
    pub fn check_schema(
        &self,
        schema: &datafusion::arrow::datatypes::Schema,
    ) -> Result<(), String> {
        if let Some(key) = &self.key
            && schema.field_with_name(key).is_err()
        {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(format!(
                "sink.key `{key}` is not a column of the query's output ({})",
                names.join(", ")
            ));
        }
        if self.format == Format::Avro {
            match &self.avro {
                Some(avro) => {
                    avro.schema_for(schema)?;
                }
                None => return Err("sink.format = \"avro\" needs its schema".into()),
            }
        }
        if self.format == Format::Raw && schema.fields().len() != 1 {
            return Err(
                "sink.format = \"raw\" needs a query with exactly one output column".into(),
            );
        }
        Ok(())
    }

    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<SinkRecord>, ArrowError> {
        let mut out = self.encode_rows(batch)?;
        if let Some(marks) = &self.marks
            && let Some(rows) = marks.rows(batch)?
        {
            for mark in self.encode_rows(&rows)? {
                out.extend((0..marks.partitions()).map(|p| SinkRecord {
                    partition: Some(p),
                    ..mark.clone()
                }));
            }
        }
        Ok(out)
    }

    fn encode_rows(&self, batch: &RecordBatch) -> Result<Vec<SinkRecord>, ArrowError> {
        let rows = batch.num_rows();
        let payloads: Vec<Vec<u8>> = match self.format {
            Format::Json => {
                let mut buf = Vec::new();
                let mut writer = datafusion::arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, datafusion::arrow::json::writer::LineDelimited>(&mut buf);
                writer.write(batch)?;
                writer.finish()?;
                drop(writer);
                // JSON escapes newlines inside strings: one line per row.
                buf.split(|&b| b == b'\n')
                    .take(rows)
                    .map(<[u8]>::to_vec)
                    .collect()
            }
            Format::Csv => (0..rows)
                .map(|i| {
                    let mut buf = Vec::new();
                    let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                        .with_header(false)
                        .build(&mut buf);
                    writer.write(&batch.slice(i, 1))?;
                    drop(writer);
                    while buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    Ok(buf)
                })
                .collect::<Result<_, ArrowError>>()?,
            Format::Avro => match &self.avro {
                Some(avro) => avro
                    .encode(batch)
                    .map_err(ArrowError::InvalidArgumentError)?,
                None => {
                    return Err(ArrowError::InvalidArgumentError(
                        "sink.format = \"avro\" needs its schema".into(),
                    ));
                }
            },
            Format::Raw => {
                let options = FormatOptions::default();
                let f = ArrayFormatter::try_new(batch.column(0).as_ref(), &options)?;
                (0..rows)
                    .map(|i| f.value(i).to_string().into_bytes())
                    .collect()
            }
        };
        let keys: Vec<Option<Vec<u8>>> = match &self.key {
            Some(name) => {
                let column = batch
                    .column_by_name(name)
                    .ok_or_else(|| ArrowError::SchemaError(format!("no column `{name}`")))?;
                let options = FormatOptions::default();
                let f = ArrayFormatter::try_new(column.as_ref(), &options)?;
                (0..rows)
                    .map(|i| (!column.is_null(i)).then(|| f.value(i).to_string().into_bytes()))
                    .collect()
            }
            None if !self.key_columns.is_empty() => {
                let names: Vec<usize> = self
                    .key_columns
                    .iter()
                    .filter_map(|n| batch.schema().index_of(n).ok())
                    .collect();
                let keyed = batch.project(&names)?;
                let mut buf = Vec::new();
                let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
                writer.write(&keyed)?;
                writer.finish()?;
                drop(writer);
                buf.split(|b| *b == b'\n')
                    .take(rows)
                    .map(|line| Some(line.to_vec()))
                    .collect()
            }
            None => vec![None; rows],
        };
        Ok(keys
            .into_iter()
            .zip(payloads)
            .map(|(key, payload)| SinkRecord {
                key,
                payload,
                partition: None,
            })
            .collect())
    }
}

/// Encodes a query's output for the sink; a record the sink cannot take
/// (too large for it) fails the run, so that isolation finds its row.
pub fn encode_checked(
    encoder: &RecordEncoder,
    limit: Option<&crate::sink::RecordLimit>,
    batches: &[RecordBatch],
) -> Result<Vec<crate::record::SinkRecord>, String> {
    let mut out = Vec::new();
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        out.extend(
            encoder
                .encode(batch)
                .map_err(|e| format!("the output cannot be encoded: {e}"))?,
        );
    }
    if let Some(limit) = limit
        && let Some(r) = out.iter().find(|r| r.size() > limit.bytes)
    {
        return Err(format!(
            "the output record is {} bytes, over the sink's limit of {} bytes; raise {} (and the topic's `max.message.bytes`) or make the output smaller",
            r.size(),
            limit.bytes,
            limit.key
        ));
    }
    Ok(out)
}
