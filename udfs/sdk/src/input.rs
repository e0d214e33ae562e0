//! Reading argument columns.

use crate::abi::RawArg;
use crate::types::{Date32, Timestamp};

/// A view of one argument column for the current batch.
#[derive(Clone, Copy)]
pub struct Column {
    validity: *const u8,
    values: *const u8,
    offsets: *const i32,
}

impl Column {
    /// # Safety
    /// `raw` must be a descriptor the host wrote for this batch.
    pub unsafe fn new(raw: &RawArg) -> Self {
        Column {
            validity: raw.validity as usize as *const u8,
            values: raw.values as usize as *const u8,
            offsets: raw.offsets as usize as *const i32,
        }
    }

    /// Whether the column has a validity bitmap (some value may be NULL).
    #[inline(always)]
    pub fn has_nulls(&self) -> bool {
        !self.validity.is_null()
    }

    #[inline(always)]
    pub fn validity(&self) -> *const u8 {
        self.validity
    }

    #[inline(always)]
    pub fn is_valid(&self, row: usize) -> bool {
        // SAFETY: the host provides ceil(rows / 8) bitmap bytes.
        self.validity.is_null() || unsafe { bit(self.validity, row) }
    }

    #[inline(always)]
    unsafe fn fixed<T: Copy>(&self, row: usize) -> T {
        // SAFETY: the host provides `rows * size_of::<T>()` value bytes.
        unsafe { self.values.cast::<T>().add(row).read_unaligned() }
    }

    #[inline(always)]
    unsafe fn bytes<'a>(&self, row: usize) -> &'a [u8] {
        // SAFETY: the host provides rows + 1 monotonic offsets within values.
        unsafe {
            let start = self.offsets.add(row).read_unaligned() as usize;
            let end = self.offsets.add(row + 1).read_unaligned() as usize;
            core::slice::from_raw_parts(self.values.add(start), end - start)
        }
    }
}

#[inline(always)]
pub(crate) unsafe fn bit(bits: *const u8, i: usize) -> bool {
    unsafe { (*bits.add(i >> 3) >> (i & 7)) & 1 == 1 }
}

/// A Rust type an argument column can be read as.
pub trait FromArg<'a>: Sized {
    /// `Option<T>` sees NULLs; every other type is only read on valid rows.
    const NULLABLE: bool = false;

    /// # Safety
    /// `row` is in the batch, and valid unless `NULLABLE`.
    unsafe fn read(col: &Column, row: usize) -> Self;
}

macro_rules! fixed_arg {
    ($($t:ty),*) => {$(
        impl<'a> FromArg<'a> for $t {
            #[inline(always)]
            unsafe fn read(col: &Column, row: usize) -> Self {
                unsafe { col.fixed::<$t>(row) }
            }
        }
    )*};
}

fixed_arg!(i8, i16, i32, i64, u8, u16, u32, u64, f32, f64);

impl<'a> FromArg<'a> for bool {
    #[inline(always)]
    unsafe fn read(col: &Column, row: usize) -> Self {
        unsafe { bit(col.values, row) }
    }
}

impl<'a> FromArg<'a> for Timestamp {
    #[inline(always)]
    unsafe fn read(col: &Column, row: usize) -> Self {
        Timestamp(unsafe { col.fixed::<i64>(row) })
    }
}

impl<'a> FromArg<'a> for Date32 {
    #[inline(always)]
    unsafe fn read(col: &Column, row: usize) -> Self {
        Date32(unsafe { col.fixed::<i32>(row) })
    }
}

impl<'a> FromArg<'a> for &'a [u8] {
    #[inline(always)]
    unsafe fn read(col: &Column, row: usize) -> Self {
        unsafe { col.bytes(row) }
    }
}

impl<'a> FromArg<'a> for Vec<u8> {
    #[inline(always)]
    unsafe fn read(col: &Column, row: usize) -> Self {
        unsafe { col.bytes(row) }.to_vec()
    }
}

impl<'a> FromArg<'a> for &'a str {
    #[inline(always)]
    unsafe fn read(col: &Column, row: usize) -> Self {
        // SAFETY: the host only passes validated UTF-8 for utf8 columns.
        unsafe { core::str::from_utf8_unchecked(col.bytes(row)) }
    }
}

impl<'a> FromArg<'a> for String {
    #[inline(always)]
    unsafe fn read(col: &Column, row: usize) -> Self {
        unsafe { <&str as FromArg>::read(col, row) }.to_string()
    }
}

impl<'a, T: FromArg<'a>> FromArg<'a> for Option<T> {
    const NULLABLE: bool = true;

    #[inline(always)]
    unsafe fn read(col: &Column, row: usize) -> Self {
        if col.is_valid(row) {
            Some(unsafe { T::read(col, row) })
        } else {
            None
        }
    }
}
