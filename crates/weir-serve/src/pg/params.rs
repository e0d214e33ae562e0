//! A prepared statement's parameters (the extended query protocol's
//! `Bind`) as the values of its placeholders: each decoded from its wire
//! format (text, or the binary format of the type the client declared),
//! then cast to the type the statement gives the placeholder. A value that
//! does not fit is refused with the placeholder's number, never guessed.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::FieldFormat;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};

use super::encode::format_of;

/// Days and microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS as i64 * 86_400 * 1_000_000;

/// A parameter the statement cannot take (SQLSTATE 22P02 or 42804).
fn refused(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

/// The values of `$1`, `$2`, …: `raw` as bound, in `format`, declared by
/// the client as `declared` (absent or unknown: as the statement types
/// it), placed where the statement expects `expected`.
pub fn values(
    raw: &[Option<bytes::Bytes>],
    format: &Format,
    declared: &[Option<Type>],
    expected: &[Option<DataType>],
) -> PgWireResult<Vec<ScalarValue>> {
    if raw.len() != expected.len() && !expected.is_empty() {
        return Err(refused(
            "08P01",
            format!(
                "the statement takes {} parameters, {} were bound",
                expected.len(),
                raw.len()
            ),
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, bytes)| {
            let wire = declared
                .get(i)
                .cloned()
                .flatten()
                .filter(|t| *t != Type::UNKNOWN);
            let target = expected.get(i).cloned().flatten();
            value(
                i + 1,
                bytes.as_deref(),
                format_of(format, i),
                wire.as_ref(),
                target.as_ref(),
            )
        })
        .collect()
}

/// Parameter `n` (1-based).
fn value(
    n: usize,
    bytes: Option<&[u8]>,
    format: FieldFormat,
    wire: Option<&Type>,
    target: Option<&DataType>,
) -> PgWireResult<ScalarValue> {
    let decoded = match bytes {
        None => ScalarValue::Null,
        Some(b) if format == FieldFormat::Text => {
            let text = std::str::from_utf8(b)
                .map_err(|_| refused("22021", format!("parameter ${n} is not valid UTF-8 text")))?;
            text_value(text, wire)
        }
        Some(b) => binary_value(n, b, wire.or(target.map(super::encode::pg_type).as_ref()))?,
    };
    match target {
        Some(t) if decoded.data_type() != *t => decoded.cast_to(t).map_err(|e| {
            refused(
                "22P02",
                format!(
                    "parameter ${n} cannot be read as {t} (the type the statement gives it): {e}"
                ),
            )
        }),
        _ => Ok(decoded),
    }
}

/// A text-format value: PostgreSQL's spelling of booleans and bytes made
/// Arrow's, the rest left to the cast to the statement's type.
fn text_value(text: &str, wire: Option<&Type>) -> ScalarValue {
    match wire {
        Some(&Type::BOOL) => match text.to_ascii_lowercase().as_str() {
            "t" | "true" | "yes" | "y" | "on" | "1" => ScalarValue::Boolean(Some(true)),
            "f" | "false" | "no" | "n" | "off" | "0" => ScalarValue::Boolean(Some(false)),
            _ => ScalarValue::Utf8(Some(text.to_string())),
        },
        Some(&Type::BYTEA) => match text.strip_prefix("\\x").map(hex::decode) {
            Some(Ok(bytes)) => ScalarValue::Binary(Some(bytes)),
            _ => ScalarValue::Binary(Some(text.as_bytes().to_vec())),
        },
        _ => ScalarValue::Utf8(Some(text.to_string())),
    }
}

/// A binary-format value of `wire` (PostgreSQL's layout: big-endian
/// numbers, days and microseconds since 2000-01-01).
fn binary_value(n: usize, b: &[u8], wire: Option<&Type>) -> PgWireResult<ScalarValue> {
    let wrong_size = |ty: &Type| {
        refused(
            "22P03",
            format!(
                "parameter ${n}: {} bytes are not a binary {}",
                b.len(),
                ty.name()
            ),
        )
    };
    let Some(ty) = wire else {
        return Err(refused(
            "42P18",
            format!(
                "parameter ${n} is binary, but neither the client nor the statement gives its type; declare it or send it as text"
            ),
        ));
    };
    macro_rules! fixed {
        ($t:ty) => {
            <$t>::from_be_bytes(b.try_into().map_err(|_| wrong_size(ty))?)
        };
    }
    Ok(match *ty {
        Type::BOOL => match b {
            [v] => ScalarValue::Boolean(Some(*v != 0)),
            _ => return Err(wrong_size(ty)),
        },
        Type::INT2 => ScalarValue::Int16(Some(fixed!(i16))),
        Type::INT4 => ScalarValue::Int32(Some(fixed!(i32))),
        Type::INT8 => ScalarValue::Int64(Some(fixed!(i64))),
        Type::FLOAT4 => ScalarValue::Float32(Some(fixed!(f32))),
        Type::FLOAT8 => ScalarValue::Float64(Some(fixed!(f64))),
        Type::BYTEA => ScalarValue::Binary(Some(b.to_vec())),
        Type::DATE => {
            let days = fixed!(i32);
            ScalarValue::Date32(Some(days.saturating_add(PG_EPOCH_DAYS)))
        }
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            Some(fixed!(i64).saturating_add(PG_EPOCH_MICROS)),
            None,
        ),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            Some(fixed!(i64).saturating_add(PG_EPOCH_MICROS)),
            Some("+00:00".into()),
        ),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON => {
            ScalarValue::Utf8(Some(
                std::str::from_utf8(b)
                    .map_err(|_| refused("22021", format!("parameter ${n} is not valid UTF-8")))?
                    .to_string(),
            ))
        }
        _ => {
            return Err(refused(
                "0A000",
                format!(
                    "parameter ${n}: binary {} parameters are not supported; send it as text",
                    ty.name()
                ),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(
        bytes: &[u8],
        format: Format,
        declared: Option<Type>,
        expected: Option<DataType>,
    ) -> PgWireResult<ScalarValue> {
        values(
            &[Some(bytes::Bytes::copy_from_slice(bytes))],
            &format,
            &[declared],
            &[expected],
        )
        .map(|mut v| v.remove(0))
    }

    #[test]
    fn text_parameters_take_the_statements_types() {
        let v = one(b"21", Format::UnifiedText, None, Some(DataType::Int64)).unwrap();
        assert_eq!(v, ScalarValue::Int64(Some(21)));
        let v = one(
            b"t",
            Format::UnifiedText,
            Some(Type::BOOL),
            Some(DataType::Boolean),
        )
        .unwrap();
        assert_eq!(v, ScalarValue::Boolean(Some(true)));
        let v = one(b"it's", Format::UnifiedText, None, None).unwrap();
        assert_eq!(v, ScalarValue::Utf8(Some("it's".into())));
        let v = one(b"\\x0102", Format::UnifiedText, Some(Type::BYTEA), None).unwrap();
        assert_eq!(v, ScalarValue::Binary(Some(vec![1, 2])));
        let e = one(b"abc", Format::UnifiedText, None, Some(DataType::Int64)).unwrap_err();
        assert!(
            e.to_string().contains("$1") || format!("{e:?}").contains("$1"),
            "{e:?}"
        );
    }

    #[test]
    fn binary_parameters_follow_postgresql_layouts() {
        let v = one(
            &7i32.to_be_bytes(),
            Format::UnifiedBinary,
            Some(Type::INT4),
            Some(DataType::Int64),
        )
        .unwrap();
        assert_eq!(v, ScalarValue::Int64(Some(7)));
        let v = one(
            &1.5f64.to_be_bytes(),
            Format::UnifiedBinary,
            Some(Type::FLOAT8),
            None,
        )
        .unwrap();
        assert_eq!(v, ScalarValue::Float64(Some(1.5)));
        // 2000-01-02 is day 1 of PostgreSQL's epoch.
        let v = one(
            &1i32.to_be_bytes(),
            Format::UnifiedBinary,
            Some(Type::DATE),
            None,
        )
        .unwrap();
        assert_eq!(v, ScalarValue::Date32(Some(10_958)));
        // Wrong sizes and unknown types are refused, never read past.
        assert!(one(&[0, 1], Format::UnifiedBinary, Some(Type::INT8), None).is_err());
        assert!(one(&[0, 1], Format::UnifiedBinary, None, None).is_err());
        assert!(one(&[0, 1], Format::UnifiedBinary, Some(Type::NUMERIC), None).is_err());
    }

    #[test]
    fn a_wrong_count_of_parameters_is_refused() {
        let e = values(&[None], &Format::UnifiedText, &[], &[None, None]).unwrap_err();
        assert!(format!("{e:?}").contains("takes 2 parameters"), "{e:?}");
        assert_eq!(
            values(&[None], &Format::UnifiedText, &[], &[Some(DataType::Int64)]).unwrap(),
            [ScalarValue::Int64(None)]
        );
    }
}
