//! The column types a UDF may take and return, and their Arrow layout.

use std::fmt;

use datafusion::arrow::datatypes::{DataType, TimeUnit};

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

    pub fn data_type(self) -> DataType {
        match self {
            AbiType::Boolean => DataType::Boolean,
            AbiType::Int8 => DataType::Int8,
            AbiType::Int16 => DataType::Int16,
            AbiType::Int32 => DataType::Int32,
            AbiType::Int64 => DataType::Int64,
            AbiType::UInt8 => DataType::UInt8,
            AbiType::UInt16 => DataType::UInt16,
            AbiType::UInt32 => DataType::UInt32,
            AbiType::UInt64 => DataType::UInt64,
            AbiType::Float32 => DataType::Float32,
            AbiType::Float64 => DataType::Float64,
            AbiType::Utf8 => DataType::Utf8,
            AbiType::Binary => DataType::Binary,
            AbiType::TimestampMicros => DataType::Timestamp(TimeUnit::Microsecond, None),
            AbiType::Date32 => DataType::Date32,
        }
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
