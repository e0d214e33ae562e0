//! Guest functions for weir's tests: an identity per ABI type (NULLs kept),
//! a panicking function, a logging function, a memory hog.

use weir_udf::{Date32, Timestamp, scalar};

macro_rules! identity {
    ($($name:ident: $t:ty),* $(,)?) => {$(
        #[scalar]
        fn $name(x: Option<$t>) -> Option<$t> {
            x
        }
    )*};
}

identity!(
    id_boolean: bool,
    id_int8: i8,
    id_int16: i16,
    id_int32: i32,
    id_int64: i64,
    id_uint8: u8,
    id_uint16: u16,
    id_uint32: u32,
    id_uint64: u64,
    id_float32: f32,
    id_float64: f64,
    id_timestamp: Timestamp,
    id_date32: Date32,
);

#[scalar]
fn id_utf8(x: Option<&str>) -> Option<String> {
    x.map(str::to_string)
}

#[scalar]
fn id_binary(x: Option<&[u8]>) -> Option<Vec<u8>> {
    x.map(<[u8]>::to_vec)
}

/// Strict (NULL-propagating) concatenation of a string and a number.
#[scalar]
fn tag(label: &str, n: i64) -> String {
    format!("{label}#{n}")
}

/// Panics on 3.
#[scalar]
fn panics_on_three(x: i64) -> i64 {
    if x == 3 {
        panic!("three is not allowed");
    }
    x
}

/// Logs once per row.
#[scalar]
fn chatty(x: i64) -> i64 {
    weir_udf::log(&format!("row value {x}"));
    x
}

/// Allocates `mib` MiB and touches it.
#[scalar]
fn hog(mib: i64) -> i64 {
    let v = vec![1u8; (mib.max(0) as usize) << 20];
    v.iter().map(|&b| b as i64).sum()
}

/// NOT(x) for booleans, NULL stays NULL.
#[scalar]
fn negate(x: bool) -> bool {
    !x
}

/// Days to the microsecond timestamp at midnight.
#[scalar]
fn midnight(d: Date32) -> Timestamp {
    Timestamp(d.0 as i64 * 86_400_000_000)
}
