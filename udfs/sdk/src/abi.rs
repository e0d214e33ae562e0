//! The raw descriptors of weir ABI v1 (see docs/abi.md).

/// One argument column, written by the host.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawArg {
    /// Validity bitmap (1 = valid, LSB first), or 0 when nothing is NULL.
    pub validity: u32,
    /// Values: bits (boolean), `rows * width` bytes, or string/binary bytes.
    pub values: u32,
    /// Length of `values` in bytes.
    pub values_len: u32,
    /// `rows + 1` i32 offsets for utf8/binary, else 0.
    pub offsets: u32,
}

/// The result descriptor a function returns a pointer to.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct RawResult {
    pub status: u32,
    pub len: u32,
    pub validity: u32,
    pub values: u32,
    pub values_len: u32,
    pub offsets: u32,
    pub error_row: u32,
    pub error_msg: u32,
    pub error_len: u32,
    pub reserved: u32,
}

/// What `weir_panic_info` points at.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawPanicInfo {
    pub row: u32,
    pub msg: u32,
    pub msg_len: u32,
}

pub const STATUS_OK: u32 = 0;
pub const STATUS_ROW_ERROR: u32 = 1;
