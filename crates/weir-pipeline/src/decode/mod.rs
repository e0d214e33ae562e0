//! Source payloads → one Arrow batch, with each bad record set aside.
//!
//! Each payload is first checked to hold exactly one record (and, for JSON
//! and CSV, to be UTF-8); the rest are set aside with the reason. The fast
//! path then decodes the micro-batch with one Arrow decoder. If that fails,
//! records are decoded one by one so that only the bad ones are set aside.

mod framing;

use framing::Framing;

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;

use super::avro::AvroIn;
use super::config::{FieldConfig, Format, Metadata};
use super::record::SourceRecord;
use crate::abi::{AbiType, ArrowType};

/// Decodes payloads of one format into batches of one schema.
pub struct RecordDecoder {
    format: Format,
    payload_schema: SchemaRef,
    metadata: Vec<Metadata>,
    schema: SchemaRef,
    /// Avro's schemas and framing (`format = "avro"`).
    avro: Option<Arc<AvroIn>>,
}

/// The result of decoding a micro-batch.
pub struct Decoded {
    /// One row per good record, in order.
    pub batch: RecordBatch,
    /// Index (into the input) of each row of `batch`.
    pub rows: Vec<usize>,
    /// Index and reason of each record that did not decode.
    pub failed: Vec<(usize, String)>,
}

fn metadata_field(m: Metadata) -> Field {
    match m {
        Metadata::Key => Field::new("_key", DataType::Utf8, true),
        Metadata::Partition => Field::new("_partition", DataType::Int32, false),
        Metadata::Offset => Field::new("_offset", DataType::Int64, false),
        Metadata::Timestamp => Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Metadata::Headers => Field::new("_headers", DataType::Utf8, true),
    }
}

impl RecordDecoder {
    pub fn new(format: Format, fields: &[FieldConfig], metadata: &[Metadata]) -> Self {
        let payload_fields: Vec<Field> = match format {
            Format::Raw => vec![Field::new("value", DataType::Binary, true)],
            // Without its schemas (see `RecordDecoder::avro`) every Avro
            // record is refused.
            Format::Avro => Vec::new(),
            Format::Json | Format::Csv => fields
                .iter()
                .map(|f| {
                    let ty = AbiType::from_name(&f.ty).map_or(DataType::Utf8, |t| t.data_type());
                    Field::new(&f.name, ty, f.nullable)
                })
                .collect(),
        };
        Self::with_payload(format, payload_fields, metadata, None)
    }

    /// Decodes Avro records into the columns of `avro`'s reader schema.
    pub fn avro(avro: AvroIn, metadata: &[Metadata]) -> Self {
        let fields = avro
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        Self::with_payload(Format::Avro, fields, metadata, Some(Arc::new(avro)))
    }

    fn with_payload(
        format: Format,
        payload_fields: Vec<Field>,
        metadata: &[Metadata],
        avro: Option<Arc<AvroIn>>,
    ) -> Self {
        let mut all = payload_fields.clone();
        all.extend(metadata.iter().map(|m| metadata_field(*m)));
        RecordDecoder {
            format,
            payload_schema: Arc::new(Schema::new(payload_fields)),
            metadata: metadata.to_vec(),
            schema: Arc::new(Schema::new(all)),
            avro,
        }
    }

    /// Before [`Self::decode`]: fetches the schemas that `records` name and
    /// the registry has not answered yet (Confluent-framed Avro). An id the
    /// registry does not have makes its records dead letters; a registry
    /// that cannot be reached is an error (nothing is set aside).
    pub async fn prepare(&self, records: &[SourceRecord]) -> anyhow::Result<()> {
        let Some(avro) = &self.avro else {
            return Ok(());
        };
        let ids = avro.missing_ids(records.iter().filter_map(|r| r.payload.as_deref()));
        if ids.is_empty() {
            return Ok(());
        }
        let avro = avro.clone();
        tokio::task::spawn_blocking(move || avro.fetch(&ids))
            .await
            .map_err(|e| anyhow::anyhow!("fetching Avro schemas stopped: {e}"))?
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e}; the records wait (nothing is dead-lettered for an unreachable registry)"
                )
            })
    }

    /// The schema of decoded batches (payload columns, then metadata columns).
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn decode(&self, records: &[SourceRecord]) -> Result<Decoded, ArrowError> {
        let mut failed = Vec::new();
        let mut good = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            match r.payload.as_deref() {
                Some(_) if self.format == Format::Raw => good.push(i),
                Some(p) if !p.is_empty() => match self.check_one_record(p) {
                    Ok(()) => good.push(i),
                    Err(reason) => failed.push((i, reason)),
                },
                _ => failed.push((i, "the record has no payload".to_string())),
            }
        }
        let payloads: Vec<&[u8]> = good
            .iter()
            .map(|&i| records[i].payload.as_deref().unwrap_or_default())
            .collect();
        let (payload_batch, rows) = match self.decode_all(&payloads) {
            Ok(batch) => (batch, good),
            Err(_) => {
                let mut batches = Vec::new();
                let mut rows = Vec::new();
                for (&i, payload) in good.iter().zip(&payloads) {
                    match self.decode_all(&[payload]) {
                        Ok(batch) => {
                            batches.push(batch);
                            rows.push(i);
                        }
                        Err(e) => failed.push((i, e)),
                    }
                }
                failed.sort_by_key(|(i, _)| *i);
                (concat_batches(&self.payload_schema, &batches)?, rows)
            }
        };
        let batch = self.with_metadata(payload_batch, records, &rows)?;
        Ok(Decoded {
            batch,
            rows,
            failed,
        })
    }

    /// A JSON or CSV payload must be UTF-8 and hold exactly one record.
    fn check_one_record(&self, payload: &[u8]) -> Result<(), String> {
        if self.format == Format::Avro {
            return match &self.avro {
                Some(avro) => avro.check(payload),
                None => Err("Avro records need the pipeline's [source.avro] schemas".to_string()),
            };
        }
        if let Err(e) = std::str::from_utf8(payload) {
            return Err(format!(
                "the record is not valid UTF-8 (invalid byte at position {})",
                e.valid_up_to()
            ));
        }
        let (found, what) = match self.format {
            Format::Raw | Format::Avro => return Ok(()),
            Format::Json => (framing::json(payload), "JSON value"),
            Format::Csv => (framing::csv(payload), "CSV line"),
        };
        match found {
            Framing::One => Ok(()),
            Framing::Empty => Err(format!(
                "the record holds no {what}; a record must hold exactly one"
            )),
            Framing::Several => Err(format!(
                "the record holds several {what}s; a record must hold exactly one"
            )),
            Framing::Incomplete => Err(format!(
                "the record holds an incomplete {what} (an open string, quote or bracket)"
            )),
        }
    }

    /// Decodes every payload; each must yield exactly one row.
    fn decode_all(&self, payloads: &[&[u8]]) -> Result<RecordBatch, String> {
        let batch = match self.format {
            Format::Raw => {
                let values = BinaryArray::from_iter_values(payloads.iter());
                RecordBatch::try_new(self.payload_schema.clone(), vec![Arc::new(values)])
                    .map_err(|e| e.to_string())?
            }
            Format::Json => {
                let decoder =
                    datafusion::arrow::json::ReaderBuilder::new(self.payload_schema.clone())
                        .with_batch_size(payloads.len() + 1)
                        .build_decoder()
                        .map_err(|e| e.to_string())?;
                self.push_lines(decoder, payloads, |d, b| d.decode(b), |d| d.flush())?
            }
            Format::Avro => match &self.avro {
                Some(avro) => avro.decode_all(payloads)?,
                None => return Err("Avro records need the pipeline's [source.avro] schemas".into()),
            },
            Format::Csv => {
                let decoder =
                    datafusion::arrow::csv::ReaderBuilder::new(self.payload_schema.clone())
                        .with_header(false)
                        .with_batch_size(payloads.len() + 1)
                        .build_decoder();
                self.push_lines(decoder, payloads, |d, b| d.decode(b), |d| d.flush())?
            }
        };
        if batch.num_rows() != payloads.len() {
            return Err(format!(
                "expected one record per payload, found {} in {}",
                batch.num_rows(),
                payloads.len()
            ));
        }
        Ok(batch)
    }

    fn with_metadata(
        &self,
        batch: RecordBatch,
        records: &[SourceRecord],
        rows: &[usize],
    ) -> Result<RecordBatch, ArrowError> {
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for m in &self.metadata {
            let pick = rows.iter().map(|&i| &records[i]);
            let column: ArrayRef = match m {
                Metadata::Key => Arc::new(StringArray::from_iter(pick.map(|r| {
                    r.key
                        .as_ref()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                }))),
                Metadata::Partition => {
                    Arc::new(Int32Array::from_iter_values(pick.map(|r| r.partition)))
                }
                Metadata::Offset => Arc::new(Int64Array::from_iter_values(pick.map(|r| r.offset))),
                Metadata::Timestamp => Arc::new(TimestampMillisecondArray::from_iter(
                    pick.map(|r| r.timestamp),
                )),
                Metadata::Headers => {
                    Arc::new(StringArray::from_iter(pick.map(|r| {
                        (!r.headers.is_empty()).then(|| headers_json(&r.headers))
                    })))
                }
            };
            columns.push(column);
        }
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

type Flush<D> = fn(&mut D) -> Result<Option<RecordBatch>, ArrowError>;

impl RecordDecoder {
    /// Feeds every payload, newline-terminated, to an Arrow push decoder
    /// (JSON or CSV) and flushes one batch.
    fn push_lines<D>(
        &self,
        mut decoder: D,
        payloads: &[&[u8]],
        decode: fn(&mut D, &[u8]) -> Result<usize, ArrowError>,
        flush: Flush<D>,
    ) -> Result<RecordBatch, String> {
        for p in payloads {
            feed(&mut decoder, p, decode)?;
            feed(&mut decoder, b"\n", decode)?;
        }
        Ok(flush(&mut decoder)
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| RecordBatch::new_empty(self.payload_schema.clone())))
    }
}

/// Feeds all of `bytes` to a push decoder.
fn feed<D>(
    decoder: &mut D,
    mut bytes: &[u8],
    decode: impl Fn(&mut D, &[u8]) -> Result<usize, ArrowError>,
) -> Result<(), String> {
    while !bytes.is_empty() {
        let used = decode(decoder, bytes).map_err(|e| e.to_string())?;
        if used == 0 {
            return Err("the record does not fit in one micro-batch".to_string());
        }
        bytes = &bytes[used..];
    }
    Ok(())
}

fn headers_json(headers: &[(String, Vec<u8>)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned().into()))
        .collect();
    serde_json::Value::Object(map).to_string()
}
