//! Building the result column.

use crate::abi::{RawResult, RawRowError, STATUS_OK, STATUS_ROW_ERROR, STATUS_ROW_ERRORS};
use crate::input::{Column, bit};
use crate::types::{Date32, Timestamp};

/// How a result type is laid out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Fixed(usize),
    Bits,
    Var,
}

/// The result buffers of the current call; they stay alive (and are reused)
/// until the next call, so the host can copy them out.
#[derive(Default)]
pub struct OutBufs {
    values: Vec<u8>,
    validity: Vec<u8>,
    has_validity: bool,
    offsets: Vec<i32>,
    error: String,
    /// Rows that failed in this call (ABI 1.1): `(row, start, len)` of each
    /// message in `messages`.
    failed: Vec<(u32, u32, u32)>,
    messages: String,
    row_errors: Vec<RawRowError>,
    result: RawResult,
}

/// A Rust type a function may return (inside `Option` / `Result` too).
pub trait OutputValue {
    #[doc(hidden)]
    const SHAPE: Shape;
    #[doc(hidden)]
    fn write(self, out: &mut OutBufs, row: usize);
    /// Fixed-width types: stores the value at `dst + row * width`.
    ///
    /// # Safety
    /// `dst` has room for `row + 1` values.
    #[doc(hidden)]
    unsafe fn write_raw(self, dst: *mut u8, row: usize)
    where
        Self: Sized,
    {
        let _ = (dst, row);
    }
}

macro_rules! fixed_out {
    ($($t:ty),*) => {$(
        impl OutputValue for $t {
            const SHAPE: Shape = Shape::Fixed(core::mem::size_of::<$t>());
            #[inline(always)]
            fn write(self, out: &mut OutBufs, row: usize) {
                // SAFETY: `begin` reserved rows * size_of::<$t>() bytes.
                unsafe { self.write_raw(out.values.as_mut_ptr(), row) }
            }
            #[inline(always)]
            unsafe fn write_raw(self, dst: *mut u8, row: usize) {
                unsafe { dst.cast::<$t>().add(row).write_unaligned(self) }
            }
        }
    )*};
}

fixed_out!(i8, i16, i32, i64, u8, u16, u32, u64, f32, f64);

impl OutputValue for Timestamp {
    const SHAPE: Shape = Shape::Fixed(8);
    #[inline(always)]
    fn write(self, out: &mut OutBufs, row: usize) {
        self.0.write(out, row)
    }
    #[inline(always)]
    unsafe fn write_raw(self, dst: *mut u8, row: usize) {
        unsafe { self.0.write_raw(dst, row) }
    }
}

impl OutputValue for Date32 {
    const SHAPE: Shape = Shape::Fixed(4);
    #[inline(always)]
    fn write(self, out: &mut OutBufs, row: usize) {
        self.0.write(out, row)
    }
    #[inline(always)]
    unsafe fn write_raw(self, dst: *mut u8, row: usize) {
        unsafe { self.0.write_raw(dst, row) }
    }
}

impl OutputValue for bool {
    const SHAPE: Shape = Shape::Bits;
    #[inline(always)]
    fn write(self, out: &mut OutBufs, row: usize) {
        if self {
            out.values[row >> 3] |= 1 << (row & 7);
        }
    }
}

impl OutputValue for &[u8] {
    const SHAPE: Shape = Shape::Var;
    #[inline(always)]
    fn write(self, out: &mut OutBufs, _row: usize) {
        out.values.extend_from_slice(self);
        out.offsets.push(out.values.len() as i32);
    }
}

impl OutputValue for Vec<u8> {
    const SHAPE: Shape = Shape::Var;
    #[inline(always)]
    fn write(self, out: &mut OutBufs, row: usize) {
        self.as_slice().write(out, row)
    }
}

impl OutputValue for &str {
    const SHAPE: Shape = Shape::Var;
    #[inline(always)]
    fn write(self, out: &mut OutBufs, row: usize) {
        self.as_bytes().write(out, row)
    }
}

impl OutputValue for String {
    const SHAPE: Shape = Shape::Var;
    #[inline(always)]
    fn write(self, out: &mut OutBufs, row: usize) {
        self.as_bytes().write(out, row)
    }
}

impl OutBufs {
    /// Start of the values buffer (fixed-width results).
    pub fn values_ptr(&mut self) -> *mut u8 {
        self.values.as_mut_ptr()
    }

    /// Prepares for `rows` rows of `shape`.
    pub fn begin(&mut self, shape: Shape, rows: usize) {
        self.values.clear();
        self.validity.clear();
        self.offsets.clear();
        self.has_validity = false;
        self.failed.clear();
        self.messages.clear();
        match shape {
            Shape::Fixed(width) => self.values.reserve(rows * width),
            Shape::Bits => self.values.resize(rows.div_ceil(8), 0),
            Shape::Var => {
                self.offsets.reserve(rows + 1);
                self.offsets.push(0);
            }
        }
    }

    /// ANDs the validity of the strict (non-`Option`) argument columns into
    /// the result's validity. Returns whether any row may be NULL.
    pub fn apply_mask(&mut self, strict: &[Column], rows: usize) -> bool {
        let bytes = rows.div_ceil(8);
        for col in strict.iter().filter(|c| c.has_nulls()) {
            // SAFETY: the host provides ceil(rows / 8) bitmap bytes.
            let bits = unsafe { core::slice::from_raw_parts(col.validity(), bytes) };
            if self.has_validity {
                self.validity
                    .iter_mut()
                    .zip(bits)
                    .for_each(|(a, b)| *a &= b);
            } else {
                self.validity.extend_from_slice(bits);
                self.has_validity = true;
            }
        }
        self.has_validity
    }

    #[inline(always)]
    pub fn is_masked_out(&self, row: usize) -> bool {
        // SAFETY: validity holds ceil(rows / 8) bytes when has_validity.
        self.has_validity && !unsafe { bit(self.validity.as_ptr(), row) }
    }

    /// Writes a NULL at `row` (which may already be cleared in validity).
    #[inline]
    pub fn null(&mut self, shape: Shape, rows: usize, row: usize) {
        if !self.has_validity {
            self.validity.resize(rows.div_ceil(8), 0xff);
            self.has_validity = true;
        }
        self.validity[row >> 3] &= !(1 << (row & 7));
        match shape {
            Shape::Fixed(width) => {
                // SAFETY: `begin` reserved rows * width bytes.
                unsafe {
                    self.values
                        .as_mut_ptr()
                        .add(row * width)
                        .write_bytes(0, width)
                }
            }
            Shape::Bits => {}
            Shape::Var => self.offsets.push(self.values.len() as i32),
        }
    }

    /// Row `row` failed with `message`: it is NULL in the column and
    /// reported with the others when the call finishes (one call reports
    /// every failing row of the batch, ABI 1.1).
    #[cold]
    pub fn row_error(&mut self, shape: Shape, rows: usize, row: usize, message: String) {
        self.null(shape, rows, row);
        let start = self.messages.len() as u32;
        self.messages.push_str(&message);
        self.failed
            .push((row as u32, start, message.len() as u32));
    }

    /// Completes a call; returns the result descriptor's address. With
    /// failed rows, the status says so and the row errors follow.
    pub fn finish(&mut self, shape: Shape, rows: usize) -> u32 {
        if let Shape::Fixed(width) = shape {
            // SAFETY: every row was written (a value or zeroes for NULL).
            unsafe { self.values.set_len(rows * width) };
        }
        self.result = RawResult {
            status: STATUS_OK,
            len: rows as u32,
            validity: if self.has_validity {
                self.validity.as_ptr() as u32
            } else {
                0
            },
            values: self.values.as_ptr() as u32,
            values_len: self.values.len() as u32,
            offsets: if shape == Shape::Var {
                self.offsets.as_ptr() as u32
            } else {
                0
            },
            ..RawResult::default()
        };
        if !self.failed.is_empty() {
            let base = self.messages.as_ptr() as u32;
            self.row_errors.clear();
            self.row_errors
                .extend(self.failed.iter().map(|&(row, start, len)| RawRowError {
                    row,
                    msg: base + start,
                    msg_len: len,
                }));
            self.result.status = STATUS_ROW_ERRORS;
            self.result.error_row = self.row_errors.len() as u32;
            self.result.error_msg = self.row_errors.as_ptr() as u32;
        }
        &self.result as *const RawResult as u32
    }

    /// Completes a successful call that returns no column (an aggregate's fold).
    pub fn ok(&mut self) -> u32 {
        self.result = RawResult::default();
        &self.result as *const RawResult as u32
    }

    /// Completes a call that failed on `row`.
    pub fn fail(&mut self, row: usize, message: String) -> u32 {
        self.error = message;
        self.result = RawResult {
            status: STATUS_ROW_ERROR,
            error_row: row as u32,
            error_msg: self.error.as_ptr() as u32,
            error_len: self.error.len() as u32,
            ..RawResult::default()
        };
        &self.result as *const RawResult as u32
    }
}
