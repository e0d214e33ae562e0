//! Marshalling edge cases through the identity functions: sliced arrays
//! (non-zero offsets, unaligned bitmaps), NULL patterns, large batches.

use std::sync::Arc;

use datafusion::arrow::array::*;

use crate::support;

fn identity(name: &str, input: ArrayRef) -> ArrayRef {
    let module = support::load("testkit");
    let index = module.function_index(name).unwrap();
    let rows = input.len();
    module
        .call(index, &[input], rows)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn roundtrip(name: &str, full: ArrayRef) {
    // Whole, then sliced at offsets that break byte alignment of bitmaps.
    for (offset, len) in [(0, full.len()), (3, full.len() - 5), (9, 4), (1, 0)] {
        let input = full.slice(offset, len);
        let output = identity(name, input.clone());
        assert_eq!(output.as_ref(), input.as_ref(), "{name} at {offset}+{len}");
    }
}

fn with_nulls<T>(n: usize, f: impl Fn(usize) -> T) -> Vec<Option<T>> {
    (0..n)
        .map(|i| if i % 3 == 1 { None } else { Some(f(i)) })
        .collect()
}

#[test]
fn every_type_roundtrips_with_nulls_and_offsets() {
    let n = 37;
    roundtrip(
        "id_boolean",
        Arc::new(BooleanArray::from(with_nulls(n, |i| i % 2 == 0))),
    );
    roundtrip(
        "id_int8",
        Arc::new(Int8Array::from(with_nulls(n, |i| i as i8 - 20))),
    );
    roundtrip(
        "id_int16",
        Arc::new(Int16Array::from(with_nulls(n, |i| i as i16 * -300))),
    );
    roundtrip(
        "id_int32",
        Arc::new(Int32Array::from(with_nulls(n, |i| i as i32 * 70_000))),
    );
    roundtrip(
        "id_int64",
        Arc::new(Int64Array::from(with_nulls(n, |i| i as i64 * -(1 << 40)))),
    );
    roundtrip(
        "id_uint8",
        Arc::new(UInt8Array::from(with_nulls(n, |i| i as u8 * 7))),
    );
    roundtrip(
        "id_uint16",
        Arc::new(UInt16Array::from(with_nulls(n, |i| i as u16 * 1000))),
    );
    roundtrip(
        "id_uint32",
        Arc::new(UInt32Array::from(with_nulls(n, |i| i as u32 * 100_000_000))),
    );
    roundtrip(
        "id_uint64",
        Arc::new(UInt64Array::from(with_nulls(n, |i| u64::MAX - i as u64))),
    );
    roundtrip(
        "id_float32",
        Arc::new(Float32Array::from(with_nulls(n, |i| i as f32 / 3.0))),
    );
    roundtrip(
        "id_float64",
        Arc::new(Float64Array::from(with_nulls(n, |i| -(i as f64) / 7.0))),
    );
    roundtrip(
        "id_utf8",
        Arc::new(StringArray::from(with_nulls(n, |i| "ü".repeat(i % 5)))),
    );
    roundtrip(
        "id_binary",
        Arc::new(BinaryArray::from_iter(with_nulls(n, |i| {
            vec![i as u8; i % 4]
        }))),
    );
    roundtrip(
        "id_timestamp",
        Arc::new(TimestampMicrosecondArray::from(with_nulls(n, |i| {
            i as i64 * 1_000_003
        }))),
    );
    roundtrip(
        "id_date32",
        Arc::new(Date32Array::from(with_nulls(n, |i| i as i32 * 400))),
    );
}

#[test]
fn large_string_batches_roundtrip() {
    let values: Vec<Option<String>> = (0..65_536)
        .map(|i| (i % 97 != 0).then(|| format!("value-{i}-{}", "x".repeat(i % 13))))
        .collect();
    let input: ArrayRef = Arc::new(StringArray::from(values));
    let output = identity("id_utf8", input.clone());
    assert_eq!(output.as_ref(), input.as_ref());
}

#[test]
fn other_string_encodings_are_accepted() {
    // LargeUtf8 and Utf8View are cast to the declared utf8.
    let large: ArrayRef = Arc::new(LargeStringArray::from(vec![Some("a"), None, Some("ccc")]));
    let out = identity("id_utf8", large);
    assert_eq!(
        out.as_any().downcast_ref::<StringArray>().unwrap().value(2),
        "ccc"
    );
    let view: ArrayRef = Arc::new(StringViewArray::from(vec![
        Some("long enough to not be inlined"),
        None,
    ]));
    let out = identity("id_utf8", view);
    assert!(out.is_null(1));
}

#[test]
fn a_wrong_input_type_is_a_clear_error() {
    let module = support::load("testkit");
    let index = module
        .manifest()
        .functions
        .iter()
        .position(|f| f.name == "id_date32")
        .unwrap();
    let input: ArrayRef = Arc::new(BinaryArray::from(vec![b"x".as_ref()]));
    let err = module.call(index, &[input], 1).unwrap_err().to_string();
    assert!(
        err.contains("argument 0 has type Binary, the function expects date32"),
        "{err}"
    );
}
