//! The host/guest contract (documented for guest authors in `docs/abi.md`).
//!
//! Everything both sides must agree on lives here: the ABI version, the
//! names of the required exports, the type names a module may declare, and the
//! byte layout of the argument and result descriptors. The sandbox and the
//! marshalling code only ever refer to these constants.

mod manifest;
pub mod types;

pub use manifest::{FunctionDecl, Manifest, ManifestError};
pub use types::AbiType;

/// The ABI version this host implements. Every manifest record carries it.
pub const ABI_VERSION: u32 = 1;

/// Custom section holding the module's self-description (JSON lines).
pub const MANIFEST_SECTION: &str = "weir.udf";

/// Export: the guest's linear memory.
pub const EXPORT_MEMORY: &str = "memory";

/// Export: `weir_alloc(size: i32) -> i32`, an 8-aligned scratch region of at
/// least `size` bytes that stays valid until the next `weir_alloc` call.
pub const EXPORT_ALLOC: &str = "weir_alloc";

/// Optional export: `weir_panic_info() -> i32`, a pointer to a
/// [`PanicInfo`](RESULT_SIZE) style record describing why the guest trapped.
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

/// Alignment the host uses for every buffer it writes into guest memory.
pub const BUFFER_ALIGN: usize = 8;
