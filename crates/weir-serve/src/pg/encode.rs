//! Arrow results as PostgreSQL rows: each column's type as a PostgreSQL
//! type, each value in the format the client asked for that column: text
//! (the simple query protocol always; the extended one by default) or
//! PostgreSQL's binary format.

use std::error::Error;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Schema,
    TimeUnit, TimestampMicrosecondType,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::types::ToSqlText;
use postgres::types::{IsNull, ToSql};

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const PG_EPOCH_DAYS: i64 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * 86_400 * 1_000_000;

/// The PostgreSQL type a column of `ty` is described as.
pub fn pg_type(ty: &DataType) -> Type {
    match ty {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        DataType::UInt64 | DataType::Decimal128(..) | DataType::Decimal256(..) => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Type::BYTEA,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        _ => Type::TEXT,
    }
}

/// The format a client asked for column `i` (text when it named fewer
/// formats than there are columns: never a panic on a short list).
pub fn format_of(format: &Format, i: usize) -> FieldFormat {
    match format {
        Format::UnifiedText => FieldFormat::Text,
        Format::UnifiedBinary => FieldFormat::Binary,
        Format::Individual(codes) => codes
            .get(i)
            .map_or(FieldFormat::Text, |c| FieldFormat::from(*c)),
    }
}

/// The row description of `schema`, each column in the format asked.
pub fn fields(schema: &Schema, format: &Format) -> Arc<Vec<FieldInfo>> {
    Arc::new(
        schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                FieldInfo::new(
                    f.name().clone(),
                    None,
                    None,
                    pg_type(f.data_type()),
                    format_of(format, i),
                )
            })
            .collect(),
    )
}

/// One value in PostgreSQL's text format.
fn text(ty: &DataType, shown: String) -> String {
    match ty {
        DataType::Boolean => if shown == "true" { "t" } else { "f" }.to_string(),
        // Arrow shows bytes as hex; PostgreSQL's bytea output is `\x…`.
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => format!("\\x{shown}"),
        DataType::Timestamp(..) => shown.replacen('T', " ", 1),
        _ => shown,
    }
}

/// A value already in its wire format (text or binary, as its column's
/// field says): the encoder writes its bytes as they are.
#[derive(Debug)]
struct Encoded(Option<Vec<u8>>);

impl ToSql for Encoded {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match &self.0 {
            Some(bytes) => {
                out.put_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        self.to_sql(ty, out)
    }
}

impl ToSqlText for Encoded {
    fn to_sql_text(
        &self,
        ty: &Type,
        out: &mut BytesMut,
        _: &pgwire::types::format::FormatOptions,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        self.to_sql(ty, out)
    }
}

/// How one column's values become bytes on the wire.
enum Column {
    /// PostgreSQL's text format, from Arrow's display of the value.
    Text { column: ArrayRef, ty: DataType },
    /// PostgreSQL's binary format of `pg`, from the column cast to the
    /// Arrow type whose values are laid out like it.
    Binary { column: ArrayRef, pg: Type },
}

/// The Arrow type whose values are laid out as `pg`'s (`None`: a type
/// weir leaves as text). Parameters the client declares as `pg` are read
/// as it; a column sent in `pg`'s binary format is cast to it.
pub fn arrow_type(pg: &Type) -> Option<DataType> {
    Some(match *pg {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        Type::NUMERIC => DataType::Decimal128(38, 10),
        _ => return None,
    })
}

/// The Arrow type a column of `ty` is cast to for `pg`'s binary format
/// (`None`: the column's text, as UTF-8 bytes, is the binary format; a
/// numeric is written from its text).
fn binary_arrow_type(pg: &Type, ty: &DataType) -> Option<DataType> {
    match (pg, ty) {
        (&Type::TIMESTAMPTZ, DataType::Timestamp(_, tz)) => {
            Some(DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))
        }
        (&Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME | &Type::NUMERIC, _) => None,
        _ => arrow_type(pg),
    }
}

fn api_error(e: impl Error + Send + Sync + 'static) -> PgWireError {
    PgWireError::ApiError(Box::new(e))
}

/// The rows of `batches`, in order, each column in its field's format.
pub fn rows(fields: &Arc<Vec<FieldInfo>>, batches: &[RecordBatch]) -> PgWireResult<Vec<DataRow>> {
    let options = FormatOptions::default();
    let mut out = Vec::new();
    let mut encoder = DataRowEncoder::new(fields.clone());
    for batch in batches {
        if batch.num_columns() != fields.len() {
            return Err(PgWireError::ApiError(
                format!(
                    "the statement was described with {} columns and returned {}",
                    fields.len(),
                    batch.num_columns()
                )
                .into(),
            ));
        }
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (column, field) in batch.columns().iter().zip(fields.iter()) {
            let ty = column.data_type().clone();
            let binary = field.format() == FieldFormat::Binary;
            columns.push(
                match binary.then(|| binary_arrow_type(field.datatype(), &ty)) {
                    Some(Some(as_type)) => Column::Binary {
                        column: cast(column, &as_type).map_err(api_error)?,
                        pg: field.datatype().clone(),
                    },
                    // Text, or a binary format that is the text's bytes
                    // (text, numeric as its digits below).
                    _ => Column::Text {
                        column: column.clone(),
                        ty,
                    },
                },
            );
        }
        let formatters = columns
            .iter()
            .map(|c| match c {
                Column::Text { column, .. } => {
                    ArrayFormatter::try_new(column.as_ref(), &options).map(Some)
                }
                Column::Binary { .. } => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(api_error)?;
        for row in 0..batch.num_rows() {
            for ((column, formatter), field) in columns.iter().zip(&formatters).zip(fields.iter()) {
                let value = match (column, formatter) {
                    (Column::Text { column, ty }, Some(formatter)) => {
                        (!column.is_null(row)).then(|| {
                            let shown = text(ty, formatter.value(row).to_string());
                            if field.format() == FieldFormat::Binary
                                && *field.datatype() == Type::NUMERIC
                            {
                                numeric_binary(&shown)
                            } else {
                                shown.into_bytes()
                            }
                        })
                    }
                    (Column::Binary { column, pg }, _) => binary(column, pg, row),
                    (Column::Text { .. }, None) => None,
                };
                encoder.encode_field(&Encoded(value))?;
            }
            out.push(encoder.take_row());
        }
    }
    Ok(out)
}

/// Row `row` of `column` (cast by [`binary_arrow_type`]) in `pg`'s binary
/// format; `None` for NULL.
fn binary(column: &ArrayRef, pg: &Type, row: usize) -> Option<Vec<u8>> {
    if column.is_null(row) {
        return None;
    }
    Some(match *pg {
        Type::BOOL => vec![u8::from(column.as_boolean().value(row))],
        Type::INT2 => column
            .as_primitive::<Int16Type>()
            .value(row)
            .to_be_bytes()
            .to_vec(),
        Type::INT4 => column
            .as_primitive::<Int32Type>()
            .value(row)
            .to_be_bytes()
            .to_vec(),
        Type::INT8 => column
            .as_primitive::<Int64Type>()
            .value(row)
            .to_be_bytes()
            .to_vec(),
        Type::FLOAT4 => column
            .as_primitive::<Float32Type>()
            .value(row)
            .to_be_bytes()
            .to_vec(),
        Type::FLOAT8 => column
            .as_primitive::<Float64Type>()
            .value(row)
            .to_be_bytes()
            .to_vec(),
        Type::BYTEA => column.as_binary::<i32>().value(row).to_vec(),
        Type::DATE => {
            let days = i64::from(column.as_primitive::<Date32Type>().value(row)) - PG_EPOCH_DAYS;
            i32::try_from(days)
                .unwrap_or(i32::MAX)
                .to_be_bytes()
                .to_vec()
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let micros = column.as_primitive::<TimestampMicrosecondType>().value(row);
            micros
                .saturating_sub(PG_EPOCH_MICROS)
                .to_be_bytes()
                .to_vec()
        }
        // Not reached: other types are written as text.
        _ => return None,
    })
}

/// A decimal number's text (`-12.3400`, `1e5` is not one) in PostgreSQL's
/// binary NUMERIC format: digit count, weight, sign and scale, then base
/// 10 000 digits. Text that is not a plain decimal is sent as NaN.
pub fn numeric_binary(text: &str) -> Vec<u8> {
    const NEGATIVE: u16 = 0x4000;
    const NAN: u16 = 0xC000;
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let plain = !(int.is_empty() && frac.is_empty())
        && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit());
    let mut out = Vec::with_capacity(8 + unsigned.len());
    if !plain {
        for v in [0u16, 0, NAN, 0] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        return out;
    }
    let int = int.trim_start_matches('0');
    // Groups of four digits: the integer part aligned on its end, the
    // fraction on its start.
    let pad = (4 - int.len() % 4) % 4;
    let int_digits: Vec<u8> = std::iter::repeat_n(b'0', pad).chain(int.bytes()).collect();
    let frac_pad = (4 - frac.len() % 4) % 4;
    let frac_digits: Vec<u8> = frac
        .bytes()
        .chain(std::iter::repeat_n(b'0', frac_pad))
        .collect();
    let group = |g: &[u8]| g.iter().fold(0i16, |n, d| n * 10 + i16::from(d - b'0'));
    let mut digits: Vec<i16> = int_digits.chunks(4).map(group).collect();
    let mut weight = digits.len() as i32 - 1;
    digits.extend(frac_digits.chunks(4).map(group));
    while digits.first() == Some(&0) {
        digits.remove(0);
        weight -= 1;
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let sign = if negative && !digits.is_empty() {
        NEGATIVE
    } else {
        0
    };
    if digits.is_empty() {
        weight = 0;
    }
    let scale = u16::try_from(frac.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(
        &i16::try_from(digits.len())
            .unwrap_or(i16::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&i16::try_from(weight).unwrap_or(i16::MIN).to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&scale.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::numeric_binary;

    fn words(bytes: &[u8]) -> Vec<i32> {
        bytes
            .chunks(2)
            .map(|c| i32::from(i16::from_be_bytes([c[0], c[1]])))
            .collect()
    }

    #[test]
    fn numerics_are_base_ten_thousand_digits_with_weight_sign_and_scale() {
        // ndigits, weight, sign, dscale, digits…
        assert_eq!(
            words(&numeric_binary("12345.678")),
            [3, 1, 0, 3, 1, 2345, 6780]
        );
        assert_eq!(words(&numeric_binary("-0.0012")), [1, -1, 0x4000, 4, 12]);
        assert_eq!(words(&numeric_binary("0.00000012")), [1, -2, 0, 8, 12]);
        assert_eq!(words(&numeric_binary("10000")), [1, 1, 0, 0, 1]);
        assert_eq!(words(&numeric_binary("0")), [0, 0, 0, 0]);
        assert_eq!(words(&numeric_binary("-0.00")), [0, 0, 0, 2]);
        assert_eq!(
            words(&numeric_binary("18446744073709551615")),
            [5, 4, 0, 0, 1844, 6744, 737, 955, 1615]
        );
        // Not a plain decimal: NaN (sign 0xC000), never a panic.
        assert_eq!(words(&numeric_binary("1e5"))[2], 0xC000u16 as i16 as i32);
        assert_eq!(words(&numeric_binary(""))[2], 0xC000u16 as i16 as i32);
        assert_eq!(words(&numeric_binary("-"))[2], 0xC000u16 as i16 as i32);
    }
}
