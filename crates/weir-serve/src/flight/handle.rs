//! A prepared statement's handle, which is all its state: nothing is held
//! between calls, so any server of a cluster can run it and none keeps
//! what a client abandoned.
//!
//! Without parameters the handle is the statement's text. Once the client
//! binds parameters (`DoPut` of one row), the server answers a new handle
//! (Flight SQL's `DoPutPreparedStatementResult`, for stateless servers):
//! a NUL byte (no statement starts with one), the text's length (4 bytes,
//! little-endian), the text, and the row as an Arrow IPC stream.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::common::ScalarValue;
use tonic::Status;

/// What a handle holds.
pub struct Prepared {
    pub sql: String,
    /// The bound parameters (`$1` first), if any.
    pub params: Vec<ScalarValue>,
}

/// The handle of `sql` with `row` (one row: a parameter per column) bound.
pub fn with_params(sql: &str, row: &RecordBatch) -> Result<Vec<u8>, Status> {
    let length = u32::try_from(sql.len())
        .map_err(|_| Status::invalid_argument("the statement is too long for a handle"))?;
    let mut handle = vec![0u8];
    handle.extend_from_slice(&length.to_le_bytes());
    handle.extend_from_slice(sql.as_bytes());
    let mut writer = StreamWriter::try_new(&mut handle, &row.schema())
        .map_err(|e| Status::internal(e.to_string()))?;
    writer
        .write(row)
        .and_then(|()| writer.finish())
        .map_err(|e| Status::internal(e.to_string()))?;
    drop(writer);
    Ok(handle)
}

/// The statement and parameters a handle (from the client) carries.
pub fn open(handle: &[u8]) -> Result<Prepared, Status> {
    let not_ours = || Status::invalid_argument("the handle is not a statement of this server");
    let Some((&0, rest)) = handle.split_first() else {
        let sql = String::from_utf8(handle.to_vec()).map_err(|_| not_ours())?;
        return Ok(Prepared {
            sql,
            params: Vec::new(),
        });
    };
    let (length, rest) = rest.split_first_chunk::<4>().ok_or_else(not_ours)?;
    let length = u32::from_le_bytes(*length) as usize;
    if rest.len() < length {
        return Err(not_ours());
    }
    let (sql, ipc) = rest.split_at(length);
    let sql = String::from_utf8(sql.to_vec()).map_err(|_| not_ours())?;
    // Read with Arrow's validation: the bytes are the client's.
    let mut reader = StreamReader::try_new(ipc, None).map_err(|_| not_ours())?;
    let row = match reader.next() {
        Some(Ok(row)) => row,
        _ => return Err(not_ours()),
    };
    Ok(Prepared {
        sql,
        params: params_of(&row)?,
    })
}

/// The parameters of a bound row: one per column, `$1` first.
pub fn params_of(row: &RecordBatch) -> Result<Vec<ScalarValue>, Status> {
    if row.num_rows() != 1 {
        return Err(Status::invalid_argument(format!(
            "bind one row of parameters per execution ({} were bound)",
            row.num_rows()
        )));
    }
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, column)| {
            ScalarValue::try_from_array(column, 0).map_err(|e| {
                Status::invalid_argument(format!("parameter ${} cannot be read: {e}", i + 1))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};

    use super::*;

    #[test]
    fn a_handle_carries_its_statement_and_its_row() {
        let row = RecordBatch::try_from_iter([
            ("a", Arc::new(Int64Array::from(vec![21])) as _),
            ("b", Arc::new(StringArray::from(vec![Some("x")])) as _),
        ])
        .unwrap();
        let handle = with_params("SELECT $1, $2", &row).unwrap();
        let opened = open(&handle).unwrap();
        assert_eq!(opened.sql, "SELECT $1, $2");
        assert_eq!(
            opened.params,
            vec![
                ScalarValue::Int64(Some(21)),
                ScalarValue::Utf8(Some("x".into()))
            ]
        );
        // Without parameters the handle is the text; a cut or foreign one
        // is refused, never read past its end.
        assert_eq!(open(b"SELECT 1").unwrap().sql, "SELECT 1");
        for bad in [
            &handle[..3],
            &handle[..handle.len() - 40],
            &[0, 255, 255, 255, 255][..],
        ] {
            assert!(open(bad).is_err());
        }
    }
}
