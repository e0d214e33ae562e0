//! Decoding a micro-batch of 4096 records into Arrow: the same rides as
//! NDJSON (arrow-json, with the declared fields) and as plain Avro datums
//! (arrow-avro), through weir's `RecordDecoder` (framing checks, one
//! decoder per batch). Results: BENCHMARKS.md.
//!
//! Run: `cargo bench --bench decode`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use weir::pipeline::avro::{AvroIn, AvroOut, Framing};
use weir::pipeline::config::{FieldConfig, Format};
use weir::pipeline::decode::RecordDecoder;
use weir::pipeline::record::SourceRecord;

const ROWS: usize = 4096;
const RIDE: &str = r#"{"type":"record","name":"Ride","fields":[
    {"name":"id","type":"long"},
    {"name":"user","type":"string"},
    {"name":"amount","type":"double"},
    {"name":"ts","type":"long"},
    {"name":"note","type":["null","string"],"default":null}]}"#;

fn record(payload: Vec<u8>, offset: i64) -> SourceRecord {
    SourceRecord {
        key: None,
        payload: Some(payload),
        topic: Arc::from("bench"),
        partition: 0,
        offset,
        timestamp: None,
        headers: Vec::new(),
    }
}

fn batch() -> RecordBatch {
    let n = ROWS as i64;
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("user", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(0..n)),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("user-{:05}", i % 10_000)),
            )),
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| (i % 977) as f64 + 0.25),
            )),
            Arc::new(Int64Array::from_iter_values(
                (0..n).map(|i| 1_700_000_000_000 + i),
            )),
            Arc::new(StringArray::from_iter(
                (0..n).map(|i| (i % 4 != 0).then_some("abcdefghij")),
            )),
        ],
    )
    .unwrap()
}

fn decode(c: &mut Criterion) {
    let batch = batch();
    let avro: Vec<SourceRecord> = AvroOut {
        schema: Some(RIDE.to_string()),
        id: None,
    }
    .encode(&batch)
    .unwrap()
    .into_iter()
    .enumerate()
    .map(|(i, p)| record(p, i as i64))
    .collect();
    let json: Vec<SourceRecord> = (0..ROWS)
        .map(|i| {
            let note = if i % 4 != 0 { "\"abcdefghij\"" } else { "null" };
            let line = format!(
                r#"{{"id":{i},"user":"user-{:05}","amount":{}.25,"ts":{},"note":{note}}}"#,
                i % 10_000,
                i % 977,
                1_700_000_000_000u64 + i as u64
            );
            record(line.into_bytes(), i as i64)
        })
        .collect();
    let field = |name: &str, ty: &str| FieldConfig {
        name: name.into(),
        ty: ty.into(),
        nullable: true,
    };
    let fields = [
        field("id", "int64"),
        field("user", "utf8"),
        field("amount", "float64"),
        field("ts", "int64"),
        field("note", "utf8"),
    ];
    let json_decoder = RecordDecoder::new(Format::Json, &fields, &[]);
    let avro_decoder = RecordDecoder::avro(
        AvroIn::new(
            Framing::Plain {
                writer: RIDE.into(),
            },
            RIDE,
        )
        .unwrap(),
        &[],
    );
    let bytes =
        |records: &[SourceRecord]| -> usize { records.iter().map(SourceRecord::payload_len).sum() };
    eprintln!(
        "payload bytes per batch: json {}, avro {}",
        bytes(&json),
        bytes(&avro)
    );
    let mut g = c.benchmark_group("decode_4096");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("json", |b| {
        b.iter(|| black_box(json_decoder.decode(&json).unwrap().batch.num_rows()))
    });
    g.bench_function("avro", |b| {
        b.iter(|| black_box(avro_decoder.decode(&avro).unwrap().batch.num_rows()))
    });
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
