//! Arrow results as PostgreSQL rows: each column's type as a PostgreSQL
//! type, each value in PostgreSQL's text format (what the simple query
//! protocol sends).

use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use pgwire::api::Type;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;

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

/// The row description of `schema`.
pub fn fields(schema: &Schema) -> Arc<Vec<FieldInfo>> {
    Arc::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                FieldInfo::new(
                    f.name().clone(),
                    None,
                    None,
                    pg_type(f.data_type()),
                    FieldFormat::Text,
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

/// The rows of `batches`, in order.
pub fn rows(fields: &Arc<Vec<FieldInfo>>, batches: &[RecordBatch]) -> PgWireResult<Vec<DataRow>> {
    let options = FormatOptions::default();
    let mut out = Vec::new();
    let mut encoder = DataRowEncoder::new(fields.clone());
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pgwire::error::PgWireError::ApiError(Box::new(e)))?;
        for row in 0..batch.num_rows() {
            for (column, formatter) in batch.columns().iter().zip(&formatters) {
                let value = (!column.is_null(row))
                    .then(|| text(column.data_type(), formatter.value(row).to_string()));
                encoder.encode_field(&value)?;
            }
            out.push(encoder.take_row());
        }
    }
    Ok(out)
}
