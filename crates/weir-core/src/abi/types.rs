//! The Arrow type of each ABI column type.

use datafusion::arrow::datatypes::{DataType, TimeUnit};

pub use weir_abi::{AbiType, Layout, bitmap_len};

/// The one Arrow type an ABI column type maps to.
pub trait ArrowType {
    fn data_type(self) -> DataType;
}

impl ArrowType for AbiType {
    fn data_type(self) -> DataType {
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
}
