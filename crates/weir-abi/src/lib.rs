//! The weir UDF ABI: everything host and guest must agree on, with no
//! dependencies, so the host (`weir-core`) and the guest SDK (`weir-udf`)
//! share one definition. Documented for guest authors in `docs/abi.md`.
//!
//! The ABI version, the names of the required exports, the type names a
//! module may declare, the byte layout of the argument and result
//! descriptors.

#![no_std]

/// The ABI version this host implements. Every manifest record carries it.
pub const ABI_VERSION: u32 = 1;

/// Custom section holding the module's self-description (JSON lines).
pub const MANIFEST_SECTION: &str = "weir.udf";

/// Optional custom section: data the host hands the guest once per instance
/// through [`EXPORT_INIT`] (docs/abi.md §10), e.g. a JavaScript program.
pub const INIT_SECTION: &str = "weir.init";

/// Largest [`INIT_SECTION`] accepted, in bytes.
pub const MAX_INIT_BYTES: usize = 16 * 1024 * 1024;

/// Export required with an [`INIT_SECTION`]: `weir_init(ptr: i32, len: i32)
/// -> i32`, called once per instance before its first batch with the
/// section's bytes at `ptr` (from `weir_alloc`); returns a result
/// descriptor whose `status` 1 refuses the instance with its message.
pub const EXPORT_INIT: &str = "weir_init";

/// Export: the guest's linear memory.
pub const EXPORT_MEMORY: &str = "memory";

/// Export: `weir_alloc(size: i32) -> i32`, an 8-aligned scratch region of at
/// least `size` bytes that stays valid until the next `weir_alloc` call.
pub const EXPORT_ALLOC: &str = "weir_alloc";

/// Optional export: `weir_panic_info() -> i32`, a pointer to a
/// [`RawPanicInfo`] record describing why the guest trapped.
pub const EXPORT_PANIC_INFO: &str = "weir_panic_info";

/// Import module name for host capabilities.
pub const IMPORT_MODULE: &str = "weir";

/// Size of one argument descriptor: four little-endian u32
/// `validity, values, values_len, offsets`.
pub const ARG_SIZE: usize = 16;

/// Size of the result descriptor: ten little-endian u32
/// `status, len, validity, values, values_len, offsets, error_row,
/// error_msg, error_len, reserved`.
pub const RESULT_SIZE: usize = 40;

/// Size of the panic-info record: three u32 `row, msg, msg_len`.
pub const PANIC_INFO_SIZE: usize = 12;

/// `status` value of a successful call.
pub const STATUS_OK: u32 = 0;
/// `status` value of a call that failed on one row (the guest's own error).
pub const STATUS_ROW_ERROR: u32 = 1;
/// `status` value of a call that produced its column and failed on some
/// rows (ABI 1.1): the result describes all `n` rows (the failing ones
/// NULL), `error_row` holds how many rows failed and `error_msg` points at
/// that many [`RawRowError`] records, rows strictly increasing. One call
/// reports every failing row of the batch; no row is computed twice.
pub const STATUS_ROW_ERRORS: u32 = 2;

/// Size of one [`RawRowError`] record: three u32 `row, msg, msg_len`.
pub const ROW_ERROR_SIZE: usize = 12;

/// One failing row of a [`STATUS_ROW_ERRORS`] result ([`ROW_ERROR_SIZE`] bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawRowError {
    /// The row, 0-based.
    pub row: u32,
    /// Address of its UTF-8 message.
    pub msg: u32,
    /// The message's length in bytes (only the first 4096 are read).
    pub msg_len: u32,
}

const _: () = assert!(core::mem::size_of::<RawRowError>() == ROW_ERROR_SIZE);

/// Alignment the host uses for every buffer it writes into guest memory.
pub const BUFFER_ALIGN: usize = 8;

/// One argument column, written by the host ([`ARG_SIZE`] bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

/// The result descriptor a function returns a pointer to ([`RESULT_SIZE`]
/// bytes). With `status` [`STATUS_ROW_ERROR`] only `error_row`, `error_msg`
/// and `error_len` are read.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

/// What `weir_panic_info` points at ([`PANIC_INFO_SIZE`] bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawPanicInfo {
    pub row: u32,
    pub msg: u32,
    pub msg_len: u32,
}

const _: () = assert!(core::mem::size_of::<RawArg>() == ARG_SIZE);
const _: () = assert!(core::mem::size_of::<RawResult>() == RESULT_SIZE);
const _: () = assert!(core::mem::size_of::<RawPanicInfo>() == PANIC_INFO_SIZE);

use core::fmt;

/// A column type of the ABI. Each maps to exactly one Arrow type and layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbiType {
    Boolean,
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float32,
    Float64,
    Utf8,
    Binary,
    /// Microseconds since the Unix epoch, no time zone (`Timestamp(µs)`).
    TimestampMicros,
    /// Days since the Unix epoch (`Date32`).
    Date32,
}

/// How a type's values are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One bit per row, LSB first (Arrow boolean).
    Bits,
    /// `width` bytes per row, little-endian.
    Fixed(usize),
    /// `n + 1` i32 offsets into a byte buffer.
    Variable,
}

impl AbiType {
    pub const ALL: [AbiType; 15] = [
        AbiType::Boolean,
        AbiType::Int8,
        AbiType::Int16,
        AbiType::Int32,
        AbiType::Int64,
        AbiType::UInt8,
        AbiType::UInt16,
        AbiType::UInt32,
        AbiType::UInt64,
        AbiType::Float32,
        AbiType::Float64,
        AbiType::Utf8,
        AbiType::Binary,
        AbiType::TimestampMicros,
        AbiType::Date32,
    ];

    /// The name used in manifests and in `docs/abi.md`.
    pub fn name(self) -> &'static str {
        match self {
            AbiType::Boolean => "boolean",
            AbiType::Int8 => "int8",
            AbiType::Int16 => "int16",
            AbiType::Int32 => "int32",
            AbiType::Int64 => "int64",
            AbiType::UInt8 => "uint8",
            AbiType::UInt16 => "uint16",
            AbiType::UInt32 => "uint32",
            AbiType::UInt64 => "uint64",
            AbiType::Float32 => "float32",
            AbiType::Float64 => "float64",
            AbiType::Utf8 => "utf8",
            AbiType::Binary => "binary",
            AbiType::TimestampMicros => "timestamp_us",
            AbiType::Date32 => "date32",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn layout(self) -> Layout {
        match self {
            AbiType::Boolean => Layout::Bits,
            AbiType::Int8 | AbiType::UInt8 => Layout::Fixed(1),
            AbiType::Int16 | AbiType::UInt16 => Layout::Fixed(2),
            AbiType::Int32 | AbiType::UInt32 | AbiType::Float32 | AbiType::Date32 => {
                Layout::Fixed(4)
            }
            AbiType::Int64 | AbiType::UInt64 | AbiType::Float64 | AbiType::TimestampMicros => {
                Layout::Fixed(8)
            }
            AbiType::Utf8 | AbiType::Binary => Layout::Variable,
        }
    }
}

impl fmt::Display for AbiType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes needed for a bitmap of `rows` bits.
pub fn bitmap_len(rows: usize) -> usize {
    rows.div_ceil(8)
}

/// Suffixes of the exports an aggregate function `NAME` is made of
/// (`NAME__update`, …). See docs/abi.md §9.
pub mod aggregate {
    /// `(args: i32, rows: i32, groups: i32) -> result`: folds a batch into
    /// the groups named by the first argument column (uint32 group ids).
    pub const UPDATE: &str = "__update";
    /// Like [`UPDATE`] with state columns instead of arguments.
    pub const MERGE: &str = "__merge";
    /// Like [`UPDATE`], removing rows from their groups (optional).
    pub const RETRACT: &str = "__retract";
    /// `(groups: i32, consume: i32) -> descriptors`: one result descriptor
    /// per state column, for groups `0..groups`.
    pub const STATE: &str = "__state";
    /// `(groups: i32, consume: i32) -> result`: the final values of groups
    /// `0..groups`.
    pub const EVALUATE: &str = "__evaluate";
}

/// `kind` of a manifest record that declares an aggregate function.
pub const KIND_AGGREGATE: &str = "aggregate";
/// Most state columns an aggregate may declare.
pub const MAX_STATE_COLUMNS: usize = 8;
