//! Fuzzing (issue 12): guest-output validation and record decoding must
//! never panic and never lose a record, whatever the bytes.
//!
//! Generators are proptest strategies that start from *valid* inputs (a
//! well-formed result descriptor and buffers; JSON and CSV records of the
//! declared fields) and damage them (byte flips, splices, truncation, wrong
//! lengths), next to plain random bytes. The seeds checked in under
//! `tests/fuzz/<target>/` run first, every time. `WEIR_FUZZ_CASES` sets the
//! generated cases per target (default 2000, a few seconds); the long runs
//! (10 M cases each) and their command are in `docs/security.md`.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::Array;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use weir::abi::{AbiType, ArrowType, types::Layout};
use weir::marshal::output::{CallResult, MAX_ERROR_MESSAGE, read_result};
use weir::pipeline::config::{FieldConfig, Format};
use weir::pipeline::decode::RecordDecoder;
use weir::pipeline::record::SourceRecord;

use crate::support;

fn cases() -> u32 {
    std::env::var("WEIR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    })
}

/// The seed files of `target`, sorted by name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = support::repo().join("tests/fuzz").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// Random damage to `bytes`: a few byte flips, an insertion, a removal or a
/// cut, chosen by `ops`.
fn damage(mut bytes: Vec<u8>, ops: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(op, at, byte) in ops {
        let len = bytes.len();
        match op % 5 {
            0 if len > 0 => bytes[at % len] = byte,
            1 if len > 0 => bytes[at % len] ^= 1 << (byte % 8),
            2 => bytes.insert(at % (len + 1), byte),
            3 if len > 0 => {
                bytes.remove(at % len);
            }
            4 => bytes.truncate(at % (len + 1)),
            _ => {}
        }
    }
    bytes
}

// ---------------------------------------------------------------------
// Guest output: `read_result` over arbitrary guest memory.
// ---------------------------------------------------------------------

/// One call's output as the host sees it. Seed files hold it as:
/// byte 0 the type (index into `AbiType::ALL`), byte 1 the rows, bytes
/// 2..6 the descriptor pointer, bytes 6..10 `max_output_bytes` (u32 LE),
/// then the guest memory.
#[derive(Debug, Clone)]
struct Output {
    ty: AbiType,
    rows: usize,
    ptr: u32,
    max_bytes: usize,
    mem: Vec<u8>,
}

impl Output {
    fn parse(bytes: &[u8]) -> Option<Output> {
        let head = bytes.get(..10)?;
        let u32_at =
            |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        Some(Output {
            ty: AbiType::ALL[head[0] as usize % AbiType::ALL.len()],
            rows: head[1] as usize,
            ptr: u32_at(2),
            max_bytes: u32_at(6) as usize,
            mem: bytes[10..].to_vec(),
        })
    }

    /// A well-formed output of `rows` rows of `ty` (values from `fill`),
    /// laid out in `mem` as a guest would.
    fn valid(
        ty: AbiType,
        rows: usize,
        nulls: bool,
        row_error: Option<usize>,
        fill: &[u8],
    ) -> Output {
        let mut mem = vec![0u8; 16];
        let byte = |i: usize| fill.get(i % fill.len().max(1)).copied().unwrap_or(7);
        let put = |mem: &mut Vec<u8>, data: &[u8]| -> u32 {
            while !mem.len().is_multiple_of(8) {
                mem.push(0);
            }
            let at = mem.len() as u32;
            mem.extend_from_slice(data);
            at
        };
        let mut desc = [0u32; 10];
        desc[1] = rows as u32;
        // An even row: one row error (status 1); an odd one: the column
        // with up to two failing rows (status 2, ABI 1.1).
        if let Some(row) = row_error.filter(|r| r % 2 == 0) {
            let msg = put(&mut mem, b"bad row: \xff\xfe not utf-8");
            desc[0] = 1;
            desc[6] = row as u32;
            desc[7] = msg;
            desc[8] = 22;
        } else {
            if nulls {
                let bits: Vec<u8> = (0..rows.div_ceil(8)).map(byte).collect();
                desc[2] = put(&mut mem, &bits);
            }
            match ty.layout() {
                Layout::Bits => {
                    let bits: Vec<u8> = (0..rows.div_ceil(8)).map(|i| byte(i + 3)).collect();
                    desc[3] = put(&mut mem, &bits);
                    desc[4] = bits.len() as u32;
                }
                Layout::Fixed(width) => {
                    let values: Vec<u8> = (0..rows * width).map(byte).collect();
                    desc[3] = put(&mut mem, &values);
                    desc[4] = values.len() as u32;
                }
                Layout::Variable => {
                    let mut offsets = vec![0i32];
                    let mut values = Vec::new();
                    for r in 0..rows {
                        let n = byte(r) as usize % 5;
                        values.extend((0..n).map(|i| b'a' + (byte(r + i) % 26)));
                        offsets.push(values.len() as i32);
                    }
                    let raw: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
                    desc[3] = put(&mut mem, &values);
                    desc[4] = values.len() as u32;
                    desc[5] = put(&mut mem, &raw);
                }
            }
        }
        if let Some(first) = row_error.filter(|r| r % 2 == 1 && rows > 0) {
            let first = first % rows;
            let msg = put(&mut mem, b"row failed");
            let failed: Vec<u32> = [first, first + 1 + first % 3]
                .into_iter()
                .filter(|r| *r < rows)
                .map(|r| r as u32)
                .collect();
            let records: Vec<u8> = failed
                .iter()
                .flat_map(|r| [*r, msg, 10])
                .flat_map(u32::to_le_bytes)
                .collect();
            desc[0] = 2;
            desc[6] = failed.len() as u32;
            desc[7] = put(&mut mem, &records);
        }
        let raw: Vec<u8> = desc.iter().flat_map(|v| v.to_le_bytes()).collect();
        let ptr = put(&mut mem, &raw);
        Output {
            ty,
            rows,
            ptr,
            max_bytes: 1 << 20,
            mem,
        }
    }
}

fn output_strategy() -> impl Strategy<Value = Output> {
    let valid = (
        0..AbiType::ALL.len(),
        0usize..70,
        any::<bool>(),
        prop::option::weighted(0.1, 0usize..80),
        prop::collection::vec(any::<u8>(), 1..16),
        prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..4),
        prop_oneof![Just(1usize << 20), 0usize..64],
    )
        .prop_map(|(t, rows, nulls, row_error, fill, ops, max_bytes)| {
            let mut out = Output::valid(AbiType::ALL[t], rows, nulls, row_error, &fill);
            out.mem = damage(out.mem, &ops);
            out.max_bytes = max_bytes;
            out
        });
    let random = (
        0..AbiType::ALL.len(),
        0usize..70,
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(|(t, rows, ptr, mem)| {
            let ptr = if mem.is_empty() {
                ptr
            } else {
                ptr % mem.len() as u32
            };
            Output {
                ty: AbiType::ALL[t],
                rows,
                ptr,
                max_bytes: 1 << 20,
                mem,
            }
        });
    prop_oneof![4 => valid, 1 => random]
}

/// What must hold for any output: no panic; an array has the batch's rows
/// and type and passes Arrow's full validation; a row error names a row of
/// the batch with a bounded message.
fn check_output(out: &Output) -> Result<(), TestCaseError> {
    match read_result(&out.mem, out.ptr, out.ty, out.rows, out.max_bytes) {
        Err(_) => {}
        Ok(CallResult::Array(array)) => {
            prop_assert_eq!(array.len(), out.rows);
            prop_assert_eq!(array.data_type(), &out.ty.data_type());
            prop_assert!(
                array.to_data().validate_full().is_ok(),
                "accepted an invalid array: {:?}",
                array.to_data().validate_full()
            );
        }
        Ok(CallResult::RowError { row, message }) => {
            prop_assert!(row < out.rows);
            prop_assert!(message.len() <= MAX_ERROR_MESSAGE + '…'.len_utf8());
        }
        Ok(CallResult::RowErrors { array, errors }) => {
            prop_assert_eq!(array.len(), out.rows);
            prop_assert_eq!(array.data_type(), &out.ty.data_type());
            prop_assert!(array.to_data().validate_full().is_ok());
            prop_assert!(!errors.is_empty() && errors.len() <= out.rows);
            prop_assert!(errors.windows(2).all(|w| w[0].0 < w[1].0));
            for (row, message) in &errors {
                prop_assert!(*row < out.rows);
                prop_assert!(array.is_null(*row), "a failed row must be NULL");
                prop_assert!(message.len() <= MAX_ERROR_MESSAGE + '…'.len_utf8());
            }
        }
    }
    Ok(())
}

#[test]
fn guest_output_validation_never_panics_nor_accepts_an_invalid_array() {
    for (name, bytes) in seeds("guest_output") {
        let out = Output::parse(&bytes).unwrap_or_else(|| panic!("seed {name} is too short"));
        check_output(&out).unwrap_or_else(|e| panic!("seed {name}: {e}"));
    }
    runner()
        .run(&output_strategy(), |out| check_output(&out))
        .unwrap();
}

// ---------------------------------------------------------------------
// Record decoding: JSON and CSV payloads of declared fields.
// ---------------------------------------------------------------------

const FIELDS: &[(&str, &str)] = &[
    ("id", "int64"),
    ("amount", "float64"),
    ("name", "utf8"),
    ("ok", "boolean"),
    ("at", "timestamp_us"),
    ("small", "int8"),
    ("day", "date32"),
];

fn decoder(format: Format) -> RecordDecoder {
    let fields: Vec<FieldConfig> = FIELDS
        .iter()
        .map(|(name, ty)| FieldConfig {
            name: name.to_string(),
            ty: ty.to_string(),
            nullable: true,
        })
        .collect();
    RecordDecoder::new(format, &fields, &[])
}

fn record(offset: usize, payload: Option<Vec<u8>>) -> SourceRecord {
    SourceRecord {
        key: None,
        payload,
        topic: Arc::from("fuzz"),
        partition: 0,
        offset: offset as i64,
        timestamp: None,
        headers: Vec::new(),
    }
}

/// A plausible value of field `i` (sometimes of the wrong kind).
fn value(i: usize, n: i64, s: &str, json: bool) -> String {
    let quoted = |v: String| if json { format!("\"{v}\"") } else { v };
    match (FIELDS[i].1, n % 7) {
        (_, 6) => {
            if json {
                "null".into()
            } else {
                String::new()
            }
        }
        (_, 5) => quoted(s.to_string()),
        ("int64", _) => n.to_string(),
        ("int8", _) => (n % 300).to_string(),
        ("float64", _) => format!("{}.{}", n, n.rem_euclid(100)),
        ("boolean", _) => (n % 2 == 0).to_string(),
        ("timestamp_us", _) => quoted(format!("2026-11-{:02}T10:00:00Z", n.rem_euclid(40))),
        ("date32", _) => quoted(format!("2026-{:02}-01", n.rem_euclid(14))),
        _ => quoted(s.replace(['"', '\\', ',', '\n'], "")),
    }
}

fn payload_strategy(json: bool) -> impl Strategy<Value = Option<Vec<u8>>> {
    let fields = prop::collection::vec((0..FIELDS.len(), any::<i64>(), "[ -~é😀]{0,12}"), 0..9);
    let well_formed = (
        fields,
        prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..3),
    )
        .prop_map(move |(fields, ops)| {
            let text = if json {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(i, n, s)| format!("\"{}\":{}", FIELDS[*i].0, value(*i, *n, s, true)))
                    .collect();
                format!("{{{}}}", parts.join(","))
            } else {
                let mut cols = vec![String::new(); FIELDS.len()];
                for (i, n, s) in &fields {
                    cols[*i] = value(*i, *n, s, false);
                }
                cols.join(",")
            };
            Some(damage(text.into_bytes(), &ops))
        });
    prop_oneof![
        8 => well_formed,
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Some),
        1 => Just(None),
    ]
}

/// What must hold for any micro-batch: no panic and no error for the batch
/// (bad records are set aside, not the batch); every record is a row or a
/// failure, never both, never neither; a record decodes the same alone as
/// within the batch (its row ↔ record attribution).
fn check_decode(
    decoder: &RecordDecoder,
    payloads: &[Option<Vec<u8>>],
) -> Result<(), TestCaseError> {
    let records: Vec<SourceRecord> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| record(i, p.clone()))
        .collect();
    let decoded = decoder
        .decode(&records)
        .map_err(|e| TestCaseError::fail(format!("the whole batch failed: {e}")))?;
    prop_assert_eq!(decoded.batch.num_rows(), decoded.rows.len());
    let mut seen = vec![0u8; records.len()];
    for &i in &decoded.rows {
        seen[i] += 1;
    }
    for (i, _) in &decoded.failed {
        seen[*i] += 1;
    }
    prop_assert!(
        seen.iter().all(|&n| n == 1),
        "rows {:?} failed {:?}",
        decoded.rows,
        decoded.failed
    );
    for (i, r) in records.iter().enumerate() {
        let alone = decoder
            .decode(std::slice::from_ref(r))
            .map_err(|e| TestCaseError::fail(format!("record {i} alone: {e}")))?;
        let in_batch = decoded.rows.iter().position(|&row| row == i);
        match in_batch {
            Some(row) => {
                prop_assert_eq!(
                    alone.rows.len(),
                    1,
                    "record {} decoded in the batch, not alone",
                    i
                );
                for c in 0..decoded.batch.num_columns() {
                    let a = decoded.batch.column(c).slice(row, 1);
                    prop_assert_eq!(a.to_data(), alone.batch.column(c).to_data());
                }
            }
            None => prop_assert_eq!(
                alone.rows.len(),
                0,
                "record {} decoded alone, not in the batch",
                i
            ),
        }
    }
    Ok(())
}

fn fuzz_decode(format: Format, target: &str) {
    let json = format == Format::Json;
    let decoder = decoder(format);
    // The seeds: one payload per line of each file, each file one batch.
    for (name, bytes) in seeds(target) {
        let payloads: Vec<Option<Vec<u8>>> = bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| Some(l.to_vec()))
            .collect();
        check_decode(&decoder, &payloads).unwrap_or_else(|e| panic!("seed {name}: {e}"));
    }
    runner()
        .run(
            &prop::collection::vec(payload_strategy(json), 1..8),
            |payloads| check_decode(&decoder, &payloads),
        )
        .unwrap();
}

#[test]
fn json_decoding_never_panics_nor_loses_a_record() {
    fuzz_decode(Format::Json, "decode_json");
}

#[test]
fn csv_decoding_never_panics_nor_loses_a_record() {
    fuzz_decode(Format::Csv, "decode_csv");
}

/// The seed corpora exist (a clean clone has them).
#[test]
fn every_target_has_seeds() {
    for target in ["guest_output", "decode_json", "decode_csv"] {
        let dir = support::repo().join("tests/fuzz").join(target);
        assert!(
            Path::new(&dir).is_dir() && !seeds(target).is_empty(),
            "{} has no seeds",
            dir.display()
        );
    }
}

/// One record's values of the first four fields (`id`, `amount`, `name`,
/// `ok`); `None` is NULL.
type Values = (Option<i64>, Option<f64>, Option<String>, Option<bool>);

fn values_strategy() -> impl Strategy<Value = Values> {
    (
        prop::option::of(any::<i64>()),
        prop::option::of(-1e15f64..1e15),
        // Quotes, commas, newlines and non-ASCII: what CSV must quote.
        prop::option::of("[a-z ,\"\n\r;é😀]{1,12}"),
        prop::option::of(any::<bool>()),
    )
}

/// `v` as a JSON object, or as one CSV line quoted the RFC 4180 way (a
/// field with a comma, quote or line break in quotes, quotes doubled).
fn encode_values(v: &Values, json: bool) -> Vec<u8> {
    if json {
        let mut o = serde_json::Map::new();
        o.insert("id".into(), v.0.map_or(serde_json::Value::Null, Into::into));
        o.insert(
            "amount".into(),
            v.1.map_or(serde_json::Value::Null, Into::into),
        );
        o.insert(
            "name".into(),
            v.2.clone().map_or(serde_json::Value::Null, Into::into),
        );
        o.insert("ok".into(), v.3.map_or(serde_json::Value::Null, Into::into));
        return serde_json::Value::Object(o).to_string().into_bytes();
    }
    let quote = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let cols = [
        v.0.map(|n| n.to_string()).unwrap_or_default(),
        v.1.map(|f| format!("{f:?}")).unwrap_or_default(),
        v.2.as_deref().map(quote).unwrap_or_default(),
        v.3.map(|b| b.to_string()).unwrap_or_default(),
        String::new(),
        String::new(),
        String::new(),
    ];
    cols.join(",").into_bytes()
}

/// The oracle the never-panics properties lack: well-formed records decode
/// to exactly their values (a decoder that refused everything, or garbled
/// quoted CSV, fails here).
fn decodes_to_its_values(format: Format) {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Float64Type, Int64Type};
    let json = format == Format::Json;
    let decoder = decoder(format);
    runner()
        .run(&prop::collection::vec(values_strategy(), 1..8), |rows| {
            let records: Vec<SourceRecord> = rows
                .iter()
                .enumerate()
                .map(|(i, v)| record(i, Some(encode_values(v, json))))
                .collect();
            let decoded = decoder
                .decode(&records)
                .map_err(|e| TestCaseError::fail(format!("the batch failed: {e}")))?;
            prop_assert!(
                decoded.failed.is_empty(),
                "well-formed records refused: {:?}",
                decoded.failed
            );
            let b = &decoded.batch;
            let ids = b.column(0).as_primitive::<Int64Type>();
            let amounts = b.column(1).as_primitive::<Float64Type>();
            let names = b.column(2).as_string::<i32>();
            let oks = b.column(3).as_boolean();
            for (row, v) in rows.iter().enumerate() {
                let got: Values = (
                    (!ids.is_null(row)).then(|| ids.value(row)),
                    (!amounts.is_null(row)).then(|| amounts.value(row)),
                    (!names.is_null(row)).then(|| names.value(row).to_string()),
                    (!oks.is_null(row)).then(|| oks.value(row)),
                );
                prop_assert_eq!(&got, v, "record {}", row);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn json_records_decode_to_their_values() {
    decodes_to_its_values(Format::Json);
}

#[test]
fn quoted_csv_records_decode_to_their_values() {
    decodes_to_its_values(Format::Csv);
}

/// Plain Avro datums of `{"id": long, "name": string, "score": ["null",
/// "double"]}`, encoded by hand from the specification (zig-zag varints,
/// length-prefixed strings, a union's branch index): an encoder apart from
/// the decoder under test.
const AVRO_SCHEMA: &str = r#"{"type":"record","name":"R","fields":[
    {"name":"id","type":"long"},
    {"name":"name","type":"string"},
    {"name":"score","type":["null","double"]}]}"#;

fn avro_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
}

fn avro_datum(id: i64, name: &str, score: Option<f64>) -> Vec<u8> {
    let mut out = Vec::new();
    avro_long(&mut out, id);
    avro_long(&mut out, name.len() as i64);
    out.extend_from_slice(name.as_bytes());
    match score {
        None => avro_long(&mut out, 0),
        Some(s) => {
            avro_long(&mut out, 1);
            out.extend_from_slice(&s.to_le_bytes());
        }
    }
    out
}

fn avro_decoder() -> RecordDecoder {
    use weir::pipeline::avro::{AvroIn, Framing};
    let avro = AvroIn::new(
        Framing::Plain {
            writer: Arc::from(AVRO_SCHEMA),
        },
        AVRO_SCHEMA,
    )
    .unwrap();
    RecordDecoder::avro(avro, &[])
}

/// Avro (issue 32): well-formed datums decode to exactly their values, and
/// damaged ones (flips, insertions, cuts) or random bytes never panic, never
/// fail the batch, and are each a row or a failure exactly once (the
/// properties of the JSON and CSV decoders).
#[test]
fn avro_decoding_never_panics_and_decodes_datums_to_their_values() {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Float64Type, Int64Type};
    let decoder = avro_decoder();
    let datum = (
        any::<i64>(),
        "[a-z é😀\"]{0,12}",
        prop::option::of(-1e12f64..1e12),
    );
    runner()
        .run(&prop::collection::vec(datum.clone(), 1..8), |rows| {
            let records: Vec<SourceRecord> = rows
                .iter()
                .enumerate()
                .map(|(i, (id, name, score))| record(i, Some(avro_datum(*id, name, *score))))
                .collect();
            let decoded = decoder
                .decode(&records)
                .map_err(|e| TestCaseError::fail(format!("the batch failed: {e}")))?;
            prop_assert!(decoded.failed.is_empty(), "{:?}", decoded.failed);
            let b = &decoded.batch;
            let ids = b.column(0).as_primitive::<Int64Type>();
            let names = b.column(1).as_string::<i32>();
            let scores = b.column(2).as_primitive::<Float64Type>();
            for (row, (id, name, score)) in rows.iter().enumerate() {
                prop_assert_eq!(ids.value(row), *id);
                prop_assert_eq!(names.value(row), name.as_str());
                let got = (!scores.is_null(row)).then(|| scores.value(row));
                prop_assert_eq!(got, *score);
            }
            Ok(())
        })
        .unwrap();
    let damaged = (
        datum,
        prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..3),
    )
        .prop_map(|((id, name, score), ops)| Some(damage(avro_datum(id, &name, score), &ops)));
    let payloads = prop_oneof![
        8 => damaged,
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Some),
        1 => Just(None),
    ];
    runner()
        .run(&prop::collection::vec(payloads, 1..8), |payloads| {
            check_decode(&decoder, &payloads)
        })
        .unwrap();
}
