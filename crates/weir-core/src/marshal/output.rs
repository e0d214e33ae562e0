//! Guest result → Arrow array, validated before anything is allocated.
//!
//! Every pointer and length comes from untrusted code: all arithmetic is
//! overflow-checked and every range is checked against the guest memory size
//! before a byte is copied. A violation is an [`InvalidOutput`], never a panic.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BinaryArray, BooleanArray, PrimitiveArray, StringArray};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::*;

use super::read_u32;
use crate::abi::{
    AbiType, RESULT_SIZE, ROW_ERROR_SIZE, STATUS_OK, STATUS_ROW_ERROR, STATUS_ROW_ERRORS,
    types::Layout, types::bitmap_len,
};

/// Longest guest error message kept, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 4096;
/// Text of all row errors of one call kept, in bytes (ABI 1.1).
pub const MAX_ROW_ERRORS_TEXT: usize = 64 << 10;

/// What a call produced.
#[derive(Debug)]
pub enum CallResult {
    Array(ArrayRef),
    /// The guest reported an error on one row of the batch.
    RowError {
        row: usize,
        message: String,
    },
    /// ABI 1.1: the column of the whole batch, and the rows that failed
    /// (NULL in it), each with the guest's message; rows increasing.
    RowErrors {
        array: ArrayRef,
        errors: Vec<(usize, String)>,
    },
}

/// The guest broke the output contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidOutput(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, InvalidOutput> {
    Err(InvalidOutput(msg.into()))
}

/// The bytes `[ptr, ptr + len)` of guest memory, if entirely in bounds.
fn range<'m>(mem: &'m [u8], what: &str, ptr: u32, len: usize) -> Result<&'m [u8], InvalidOutput> {
    let start = ptr as usize;
    match start.checked_add(len) {
        Some(end) if end <= mem.len() => Ok(&mem[start..end]),
        Some(end) => invalid(format!(
            "{what} at {start:#x}..{end:#x} lies outside the guest's {}-byte memory",
            mem.len()
        )),
        None => invalid(format!(
            "{what} at {start:#x} with length {len} wraps around"
        )),
    }
}

/// Truncates to at most `max` bytes on a char boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Reads only the status of the result descriptor at `ptr` (an aggregate's
/// fold): `Some((row, message))` for a row error. Status 2 (a column with
/// failed rows) is invalid for a call that returns no column.
pub fn read_status(
    mem: &[u8],
    ptr: u32,
    rows: usize,
) -> Result<Option<(usize, String)>, InvalidOutput> {
    read_status_of(mem, ptr, rows, false)
}

fn read_status_of(
    mem: &[u8],
    ptr: u32,
    rows: usize,
    column: bool,
) -> Result<Option<(usize, String)>, InvalidOutput> {
    let desc = range(mem, "the result descriptor", ptr, RESULT_SIZE)?;
    let field = |i: usize| read_u32(desc, i * 4).unwrap_or(0);
    match field(0) {
        STATUS_OK => Ok(None),
        STATUS_ROW_ERROR => {
            let row = field(6) as usize;
            let msg_len = (field(8) as usize).min(MAX_ERROR_MESSAGE);
            let msg = range(mem, "the error message", field(7), msg_len)?;
            let message = truncate(String::from_utf8_lossy(msg).into_owned(), MAX_ERROR_MESSAGE);
            if row >= rows {
                return invalid(format!(
                    "reported an error on row {row} of a {rows}-row batch: {message}"
                ));
            }
            Ok(Some((row, message)))
        }
        STATUS_ROW_ERRORS if column => Ok(None),
        STATUS_ROW_ERRORS => invalid(
            "returned status 2 (a column with failed rows) from a call that returns no column; report one row error with status 1",
        ),
        other => invalid(format!("unknown status {other} (expected 0, 1 or 2)")),
    }
}

/// The row errors of a [`STATUS_ROW_ERRORS`] result: `count` records at
/// `ptr`, rows strictly increasing and below `rows`, messages in memory.
fn read_row_errors(
    mem: &[u8],
    ptr: u32,
    count: usize,
    rows: usize,
) -> Result<Vec<(usize, String)>, InvalidOutput> {
    if count == 0 || count > rows {
        return invalid(format!(
            "reported {count} failing rows (status 2) for a {rows}-row batch; it takes 1 to {rows}"
        ));
    }
    let len = count
        .checked_mul(ROW_ERROR_SIZE)
        .ok_or_else(|| InvalidOutput(format!("{count} row errors overflow")))?;
    let records = range(mem, "the row errors", ptr, len)?;
    let mut errors = Vec::with_capacity(count);
    let mut last: Option<usize> = None;
    // The messages of one call together: beyond this the rest are cut (a
    // guest could point every row at the same 4 KiB).
    let mut left = MAX_ROW_ERRORS_TEXT;
    for i in 0..count {
        let field = |f: usize| read_u32(records, i * ROW_ERROR_SIZE + f * 4).unwrap_or(0);
        let row = field(0) as usize;
        if row >= rows || last.is_some_and(|l| row <= l) {
            return invalid(format!(
                "row error {i} names row {row}: rows must increase and stay below {rows}"
            ));
        }
        last = Some(row);
        let msg_len = (field(2) as usize).min(MAX_ERROR_MESSAGE);
        let msg = range(mem, "a row error's message", field(1), msg_len)?;
        let kept = msg_len.min(left);
        left -= kept;
        let mut message = String::from_utf8_lossy(&msg[..kept]).into_owned();
        if kept < msg_len {
            message = truncate(message, kept);
            message.push_str(" (cut: this batch's row errors passed 64 KiB of text)");
        }
        errors.push((row, truncate(message, MAX_ERROR_MESSAGE + 64)));
    }
    Ok(errors)
}

/// Reads the result descriptor at `ptr` for a batch of `rows` rows of type
/// `ty`. At most `max_bytes` of buffers are accepted.
pub fn read_result(
    mem: &[u8],
    ptr: u32,
    ty: AbiType,
    rows: usize,
    max_bytes: usize,
) -> Result<CallResult, InvalidOutput> {
    let desc = range(mem, "the result descriptor", ptr, RESULT_SIZE)?;
    let field = |i: usize| read_u32(desc, i * 4).unwrap_or(0);
    if let Some((row, message)) = read_status_of(mem, ptr, rows, true)? {
        return Ok(CallResult::RowError { row, message });
    }
    let (len, validity, values, values_len, offsets) =
        (field(1), field(2), field(3), field(4) as usize, field(5));
    if len as usize != rows {
        return invalid(format!("returned {len} rows for a batch of {rows} rows"));
    }
    let nulls = if validity == 0 {
        None
    } else {
        let bits = range(mem, "the validity bitmap", validity, bitmap_len(rows))?;
        Some(NullBuffer::new(BooleanBuffer::new(
            Buffer::from(bits),
            0,
            rows,
        )))
    };
    let array: ArrayRef = match ty.layout() {
        Layout::Bits => {
            if values_len != bitmap_len(rows) {
                return invalid(format!(
                    "boolean values are {values_len} bytes, {rows} rows need {}",
                    bitmap_len(rows)
                ));
            }
            let bits = range(mem, "the values buffer", values, values_len)?;
            let values = BooleanBuffer::new(Buffer::from(bits), 0, rows);
            Arc::new(BooleanArray::new(values, nulls))
        }
        Layout::Fixed(width) => {
            let expected = rows * width;
            if values_len != expected {
                return invalid(format!(
                    "{ty} values are {values_len} bytes, {rows} rows need {expected}"
                ));
            }
            let bytes = range(mem, "the values buffer", values, values_len)?;
            match fixed_array(ty, Buffer::from(bytes), rows, nulls) {
                Some(array) => array,
                None => return invalid(format!("{ty} is not a fixed-width type")),
            }
        }
        Layout::Variable => {
            let offsets_len = (rows + 1) * 4;
            if values_len.saturating_add(offsets_len) > max_bytes {
                return invalid(format!(
                    "returned {values_len} bytes of {ty} values, above the {max_bytes}-byte output limit (`max_output_bytes`)"
                ));
            }
            let raw = range(mem, "the offsets buffer", offsets, offsets_len)?;
            let data = range(mem, "the values buffer", values, values_len)?;
            let offs: Vec<i32> = raw
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            check_offsets(&offs, values_len)?;
            let offsets = OffsetBuffer::new(ScalarBuffer::from(offs));
            let data = Buffer::from(data);
            if ty == AbiType::Utf8 {
                let array = StringArray::try_new(offsets, data, nulls)
                    .map_err(|e| InvalidOutput(format!("utf8 output is not valid: {e}")))?;
                Arc::new(array)
            } else {
                let array = BinaryArray::try_new(offsets, data, nulls)
                    .map_err(|e| InvalidOutput(format!("binary output is not valid: {e}")))?;
                Arc::new(array)
            }
        }
    };
    if field(0) != STATUS_ROW_ERRORS {
        return Ok(CallResult::Array(array));
    }
    let errors = read_row_errors(mem, field(7), field(6) as usize, rows)?;
    // A failing row is NULL in the column whatever the guest left there.
    let mut valid = vec![true; rows];
    for (row, _) in &errors {
        valid[*row] = false;
    }
    let failed = NullBuffer::from(valid);
    let nulls = NullBuffer::union(array.nulls(), Some(&failed));
    let array = datafusion::arrow::array::make_array(
        array
            .to_data()
            .into_builder()
            .nulls(nulls)
            .build()
            .map_err(|e| InvalidOutput(format!("output with its failed rows: {e}")))?,
    );
    Ok(CallResult::RowErrors { array, errors })
}

/// Offsets must start at or after 0, never decrease and end within the values.
fn check_offsets(offs: &[i32], values_len: usize) -> Result<(), InvalidOutput> {
    let (Some(&first), Some(&last)) = (offs.first(), offs.last()) else {
        return invalid("no offsets");
    };
    if first < 0 {
        return invalid(format!("offset 0 is negative ({first})"));
    }
    for (i, w) in offs.windows(2).enumerate() {
        if w[1] < w[0] {
            return invalid(format!(
                "offsets decrease at row {i}: {} then {}",
                w[0], w[1]
            ));
        }
    }
    let last = last as usize;
    if last > values_len {
        return invalid(format!(
            "the last offset {last} points past the {values_len}-byte values buffer"
        ));
    }
    Ok(())
}

fn primitive<T: ArrowPrimitiveType>(
    bytes: Buffer,
    rows: usize,
    nulls: Option<NullBuffer>,
) -> ArrayRef {
    Arc::new(PrimitiveArray::<T>::new(
        ScalarBuffer::new(bytes, 0, rows),
        nulls,
    ))
}

fn fixed_array(
    ty: AbiType,
    bytes: Buffer,
    rows: usize,
    nulls: Option<NullBuffer>,
) -> Option<ArrayRef> {
    Some(match ty {
        AbiType::Int8 => primitive::<Int8Type>(bytes, rows, nulls),
        AbiType::Int16 => primitive::<Int16Type>(bytes, rows, nulls),
        AbiType::Int32 => primitive::<Int32Type>(bytes, rows, nulls),
        AbiType::Int64 => primitive::<Int64Type>(bytes, rows, nulls),
        AbiType::UInt8 => primitive::<UInt8Type>(bytes, rows, nulls),
        AbiType::UInt16 => primitive::<UInt16Type>(bytes, rows, nulls),
        AbiType::UInt32 => primitive::<UInt32Type>(bytes, rows, nulls),
        AbiType::UInt64 => primitive::<UInt64Type>(bytes, rows, nulls),
        AbiType::Float32 => primitive::<Float32Type>(bytes, rows, nulls),
        AbiType::Float64 => primitive::<Float64Type>(bytes, rows, nulls),
        AbiType::Date32 => primitive::<Date32Type>(bytes, rows, nulls),
        AbiType::TimestampMicros => primitive::<TimestampMicrosecondType>(bytes, rows, nulls),
        AbiType::Boolean | AbiType::Utf8 | AbiType::Binary => return None,
    })
}
