//! The host/guest contract: the shared definitions of `weir-abi`, the
//! manifest a module declares itself with, and the Arrow type of each ABI
//! type. The sandbox and the marshalling code only ever refer to these.

mod manifest;
pub mod types;

pub use manifest::{AggregateDecl, FunctionDecl, Manifest, ManifestError};
pub use types::ArrowType;
pub use weir_abi::*;
