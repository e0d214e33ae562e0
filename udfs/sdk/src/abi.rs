//! The raw descriptors of weir ABI v1 (see docs/abi.md), shared with the
//! host through `weir-abi`.

pub use weir_abi::{
    RawArg, RawPanicInfo, RawResult, RawRowError, STATUS_OK, STATUS_ROW_ERROR, STATUS_ROW_ERRORS,
};
