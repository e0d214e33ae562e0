//! Avro records, read and written with arrow-avro (straight to and from
//! Arrow): plain Avro datums with the writer schema from an `.avsc` file,
//! or the Confluent wire format (magic byte 0, a 4-byte big-endian schema
//! id, the datum) with schemas from a schema registry ([`registry`]).

pub mod registry;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_avro::reader::ReaderBuilder;
use arrow_avro::schema::{
    AvroSchema, Fingerprint, FingerprintAlgorithm, FingerprintStrategy, SCHEMA_METADATA_KEY,
    SchemaStore,
};
use arrow_avro::writer::WriterBuilder;
use arrow_avro::writer::format::{AvroBinaryFormat, AvroSoeFormat};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use parking_lot::Mutex;

pub use registry::{Registry, RegistryError};

/// The header of a Confluent-framed record: magic byte, schema id.
const CONFLUENT_HEADER: usize = 5;
/// The id a plain (unframed) record's schema gets inside the decoder.
const PLAIN_ID: u32 = 0;
/// How long an id the registry did not have stays unknown (its records
/// dead-lettered) before it is asked for again.
pub const UNKNOWN_FOR: Duration = Duration::from_secs(30);
/// The pause before a 404 is asked again, once.
const NOT_FOUND_RETRY: Duration = Duration::from_millis(500);

/// How records are framed.
#[derive(Debug, Clone)]
pub enum Framing {
    /// Bare datums, all written with one schema.
    Plain { writer: Arc<str> },
    /// Confluent wire format; writer schemas by id from the registry.
    Confluent { registry: Arc<Registry> },
}

/// Decodes Avro payloads into batches of the reader schema.
#[derive(Debug)]
pub struct AvroIn {
    framing: Framing,
    reader: Arc<str>,
    schema: SchemaRef,
    /// Ids the registry did not have, and when it said so: their records
    /// are dead-lettered until [`UNKNOWN_FOR`] has passed, then the id is
    /// asked for again (a lagging registry follower catches up).
    unknown: Mutex<HashMap<u32, (String, Instant)>>,
}

impl AvroIn {
    /// `reader`: the schema records are decoded into (for plain Avro, the
    /// writer schema too).
    pub fn new(framing: Framing, reader: &str) -> Result<Self, String> {
        serde_json::from_str::<serde_json::Value>(reader)
            .map_err(|e| format!("the Avro schema is not valid JSON: {e}"))?;
        let mut avro = AvroIn {
            framing,
            reader: reader.into(),
            schema: Arc::new(Schema::empty()),
            unknown: Mutex::new(HashMap::new()),
        };
        let writers = match &avro.framing {
            Framing::Plain { writer } => vec![(PLAIN_ID, writer.clone())],
            Framing::Confluent { .. } => vec![(PLAIN_ID, avro.reader.clone())],
        };
        let decoder = avro.decoder(&writers, 1)?;
        let fields = decoder.schema().fields().clone();
        avro.schema = Arc::new(Schema::new(fields));
        Ok(avro)
    }

    /// The Arrow schema of decoded records (the reader schema's fields).
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Schema ids of Confluent-framed `payloads` not yet fetched (an id
    /// the registry did not have longer than [`UNKNOWN_FOR`] ago again).
    pub fn missing_ids<'a>(&self, payloads: impl Iterator<Item = &'a [u8]>) -> Vec<u32> {
        let Framing::Confluent { registry } = &self.framing else {
            return Vec::new();
        };
        let mut unknown = self.unknown.lock();
        unknown.retain(|_, (_, since)| since.elapsed() < UNKNOWN_FOR);
        let ids: BTreeSet<u32> = payloads
            .filter_map(confluent_id)
            .filter(|id| !registry.knows(*id) && !unknown.contains_key(id))
            .collect();
        ids.into_iter().collect()
    }

    /// Fetches `ids` (blocking); an id the registry does not have is
    /// remembered, its records dead-lettered. Any other failure (the
    /// registry unreachable) is an error: nothing is set aside for it.
    pub fn fetch(&self, ids: &[u32]) -> Result<(), RegistryError> {
        let Framing::Confluent { registry } = &self.framing else {
            return Ok(());
        };
        for &id in ids {
            // A 404 is asked again once, shortly after: a schema registered
            // a moment ago may not have reached the follower answering.
            let mut answer = registry.schema_by_id(id);
            if matches!(answer, Err(RegistryError::NotFound { .. })) {
                std::thread::sleep(NOT_FOUND_RETRY);
                answer = registry.schema_by_id(id);
            }
            match answer {
                Ok(_) => {}
                Err(e @ RegistryError::NotFound { .. }) => {
                    self.unknown
                        .lock()
                        .insert(id, (e.to_string(), Instant::now()));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether a payload can be one record (framing, a known schema id);
    /// the reason if not.
    pub fn check(&self, payload: &[u8]) -> Result<(), String> {
        match &self.framing {
            Framing::Plain { .. } => Ok(()),
            Framing::Confluent { .. } => {
                let Some(id) = confluent_id(payload) else {
                    return Err(format!(
                        "the record is not in the Confluent wire format (magic byte 0 and a 4-byte schema id, {} bytes before the Avro datum; it starts with {:02x?})",
                        CONFLUENT_HEADER,
                        &payload[..payload.len().min(CONFLUENT_HEADER)]
                    ));
                };
                match self.unknown.lock().get(&id) {
                    Some((why, _)) => Err(format!("unknown schema id {id}: {why}")),
                    None => Ok(()),
                }
            }
        }
    }

    /// Decodes every payload (each already [`Self::check`]ed); each must
    /// hold exactly one datum.
    pub fn decode_all(&self, payloads: &[&[u8]]) -> Result<RecordBatch, String> {
        let writers: Vec<(u32, Arc<str>)> = match &self.framing {
            Framing::Plain { writer } => vec![(PLAIN_ID, writer.clone())],
            Framing::Confluent { registry } => {
                let ids: BTreeSet<u32> = payloads.iter().filter_map(|p| confluent_id(p)).collect();
                ids.into_iter()
                    .map(|id| registry.schema_by_id(id).map(|s| (id, s)))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?
            }
        };
        let mut decoder = self.decoder(&writers, payloads.len().max(1))?;
        let mut batches = Vec::new();
        for payload in payloads {
            let (header, body): (&[u8], &[u8]) = match &self.framing {
                Framing::Plain { .. } => (&[0, 0, 0, 0, 0], payload),
                Framing::Confluent { .. } => payload.split_at(CONFLUENT_HEADER.min(payload.len())),
            };
            // A new writer schema ends the decoder's batch: flush first.
            if decoder.batch_is_full() {
                batches.extend(decoder.flush().map_err(|e| e.to_string())?);
            }
            let used = decoder.decode(header).map_err(|e| e.to_string())?;
            if used != header.len() {
                return Err("the record's schema header is incomplete".to_string());
            }
            if decoder.batch_is_full() {
                batches.extend(decoder.flush().map_err(|e| e.to_string())?);
            }
            let before = decoder.capacity();
            let used = decoder.decode(body).map_err(|e| {
                format!("the Avro datum is truncated or does not match its schema: {e}")
            })?;
            if used < body.len() || decoder.capacity() + 1 != before {
                return Err(if used < body.len() && decoder.capacity() == before {
                    "the Avro datum is truncated".to_string()
                } else {
                    format!(
                        "the record holds {} bytes after its Avro datum; a record must hold exactly one",
                        body.len() - used
                    )
                });
            }
        }
        batches.extend(decoder.flush().map_err(|e| e.to_string())?);
        let columns: Vec<RecordBatch> = batches
            .into_iter()
            .map(|b| RecordBatch::try_new(self.schema.clone(), b.columns().to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the record does not fit the reader schema: {e}"))?;
        datafusion::arrow::compute::concat_batches(&self.schema, &columns)
            .map_err(|e| e.to_string())
    }

    fn decoder(
        &self,
        writers: &[(u32, Arc<str>)],
        rows: usize,
    ) -> Result<arrow_avro::reader::Decoder, String> {
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        for (id, schema) in writers {
            store
                .set(Fingerprint::Id(*id), AvroSchema::new(schema.to_string()))
                .map_err(|e| format!("writer schema id {id} is not valid: {e}"))?;
        }
        ReaderBuilder::new()
            .with_writer_schema_store(store)
            .with_reader_schema(AvroSchema::new(self.reader.to_string()))
            .with_batch_size(rows)
            .build_decoder()
            .map_err(|e| {
                let ids: Vec<String> = writers.iter().map(|(id, _)| id.to_string()).collect();
                match &self.framing {
                    Framing::Plain { .. } => format!("the Avro schema cannot be read: {e}"),
                    Framing::Confluent { .. } => format!(
                        "writer schema id {} does not resolve to the reader schema: {e}",
                        ids.join(", ")
                    ),
                }
            })
    }
}

fn confluent_id(payload: &[u8]) -> Option<u32> {
    match payload {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Encodes query output rows as Avro datums, one per record.
#[derive(Debug, Clone)]
pub struct AvroOut {
    /// The writer schema (JSON); `None`: derived from the output columns.
    pub schema: Option<String>,
    /// Confluent framing with this registered schema id; `None`: plain.
    pub id: Option<u32>,
}

impl AvroOut {
    /// The Avro schema the sink writes for `output` (what it registers).
    pub fn schema_for(&self, output: &Schema) -> Result<String, String> {
        match &self.schema {
            Some(s) => Ok(s.clone()),
            None => AvroSchema::try_from(output)
                .map(|s| s.json_string)
                .map_err(|e| format!("the query's output has no Avro equivalent: {e}")),
        }
    }

    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>, String> {
        let mut metadata = HashMap::new();
        metadata.insert(
            SCHEMA_METADATA_KEY.to_string(),
            self.schema_for(&batch.schema())?,
        );
        let schema = Schema::new_with_metadata(batch.schema().fields().clone(), metadata);
        let batch = batch
            .clone()
            .with_schema(Arc::new(schema.clone()))
            .map_err(|e| e.to_string())?;
        let builder = WriterBuilder::new(schema);
        let mut encoder = match self.id {
            Some(id) => builder
                .with_fingerprint_strategy(FingerprintStrategy::Id(id))
                .build_encoder::<AvroSoeFormat>(),
            None => builder.build_encoder::<AvroBinaryFormat>(),
        }
        .map_err(|e| format!("the output does not fit the Avro schema: {e}"))?;
        encoder
            .encode(&batch)
            .map_err(|e| format!("the output does not fit the Avro schema: {e}"))?;
        Ok(encoder.flush().iter().map(|row| row.to_vec()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray, Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type};

    const RIDE: &str = r#"{"type":"record","name":"Ride","fields":[
        {"name":"id","type":"long"},
        {"name":"city","type":"string"},
        {"name":"km","type":["null","double"],"default":null}]}"#;

    /// Plain datums of `RIDE` written by arrow-avro's own writer.
    fn datums(n: i64) -> Vec<Vec<u8>> {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("city", DataType::Utf8, false),
            Field::new("km", DataType::Float64, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("c{i}")),
                )),
                Arc::new(Float64Array::from_iter(
                    (0..n).map(|i| (i % 3 != 0).then_some(i as f64)),
                )),
            ],
        )
        .unwrap();
        AvroOut {
            schema: Some(RIDE.to_string()),
            id: None,
        }
        .encode(&batch)
        .unwrap()
    }

    fn plain() -> AvroIn {
        AvroIn::new(
            Framing::Plain {
                writer: RIDE.into(),
            },
            RIDE,
        )
        .unwrap()
    }

    #[test]
    fn plain_datums_decode_into_the_schemas_columns() {
        let avro = plain();
        let rows = datums(5);
        let payloads: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        let batch = avro.decode_all(&payloads).unwrap();
        assert_eq!(batch.num_rows(), 5);
        assert_eq!(batch.schema(), avro.schema());
        let ids = batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![0, 1, 2, 3, 4]);
        assert!(batch.column(2).is_null(0) && !batch.column(2).is_null(1));
    }

    #[test]
    fn truncated_trailing_and_mismatched_datums_are_refused_with_the_reason() {
        let avro = plain();
        let good = datums(2);
        let truncated = &good[1][..good[1].len() - 2];
        let err = avro.decode_all(&[truncated]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let mut trailing = good[1].clone();
        trailing.extend_from_slice(&[7, 7, 7]);
        let err = avro.decode_all(&[&trailing]).unwrap_err();
        assert!(err.contains("after its Avro datum"), "{err}");
        // Alone, the good ones still decode.
        assert_eq!(avro.decode_all(&[&good[0]]).unwrap().num_rows(), 1);
    }

    #[test]
    fn an_invalid_schema_and_unframed_confluent_records_are_named() {
        let err = AvroIn::new(Framing::Plain { writer: "{".into() }, "{").unwrap_err();
        assert!(err.contains("not valid"), "{err}");
        let avro = AvroIn::new(
            Framing::Confluent {
                registry: Arc::new(Registry::new("http://127.0.0.1:9", None, None)),
            },
            RIDE,
        )
        .unwrap();
        let err = avro.check(b"{\"id\":1}").unwrap_err();
        assert!(err.contains("Confluent wire format"), "{err}");
        assert_eq!(
            avro.missing_ids([&[0u8, 0, 0, 0, 9, 1][..]].into_iter()),
            vec![9]
        );
    }

    /// A registry answering each request with the next of `responses`
    /// (status, body), then 404s; its URL.
    fn scripted(responses: Vec<(u16, String)>) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut answers = responses.into_iter();
            for stream in listener.incoming().take(16) {
                let Ok(mut stream) = stream else { return };
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let (status, body) = answers.next().unwrap_or((404, "{}".into()));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        format!("http://{addr}")
    }

    fn confluent(url: &str) -> AvroIn {
        AvroIn::new(
            Framing::Confluent {
                registry: Arc::new(Registry::new(url, None, None)),
            },
            RIDE,
        )
        .unwrap()
    }

    fn framed(id: u32) -> Vec<u8> {
        let mut p = vec![0u8];
        p.extend(id.to_be_bytes());
        p.extend(&datums(1)[0]);
        p
    }

    /// Issue 27 #11: a 404 from a lagging follower is asked again shortly
    /// after, and the schema it then has is used.
    #[test]
    fn a_404_is_asked_again_once() {
        let schema = serde_json::json!({ "schema": RIDE }).to_string();
        let avro = confluent(&scripted(vec![(404, "{}".into()), (200, schema)]));
        let payload = framed(7);
        assert_eq!(avro.missing_ids(std::iter::once(&payload[..])), vec![7]);
        avro.fetch(&[7]).unwrap();
        assert!(avro.check(&payload).is_ok());
        assert!(avro.missing_ids(std::iter::once(&payload[..])).is_empty());
    }

    /// Issue 27 #11: an id the registry still does not have is dead-lettered
    /// for [`UNKNOWN_FOR`], then asked for again (not for the pipeline's
    /// life).
    #[test]
    fn an_unknown_id_is_forgotten_after_a_while() {
        let avro = confluent(&scripted(vec![(404, "{}".into()), (404, "{}".into())]));
        let payload = framed(9);
        avro.fetch(&[9]).unwrap();
        let why = avro.check(&payload).unwrap_err();
        assert!(why.contains("unknown schema id 9"), "{why}");
        assert!(avro.missing_ids(std::iter::once(&payload[..])).is_empty());
        // As if UNKNOWN_FOR had passed.
        for (_, since) in avro.unknown.lock().values_mut() {
            *since -= UNKNOWN_FOR + Duration::from_secs(1);
        }
        assert_eq!(avro.missing_ids(std::iter::once(&payload[..])), vec![9]);
    }

    /// Issue 27 #11: a 5xx is the registry's fault, not the record's: an
    /// error for the caller to hold the batch and retry, and the id is not
    /// marked unknown (nothing would be dead-lettered).
    #[test]
    fn a_5xx_is_an_error_and_marks_nothing_unknown() {
        let schema = serde_json::json!({ "schema": RIDE }).to_string();
        let avro = confluent(&scripted(vec![(503, "{}".into()), (200, schema)]));
        let payload = framed(3);
        assert!(avro.fetch(&[3]).is_err());
        assert_eq!(avro.missing_ids(std::iter::once(&payload[..])), vec![3]);
        avro.fetch(&[3]).unwrap();
        assert!(avro.check(&payload).is_ok());
    }
}
