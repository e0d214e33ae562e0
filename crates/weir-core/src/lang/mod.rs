//! Guest languages weir builds modules for: a program in the language plus
//! its declared signatures become an ordinary weir module (docs/abi.md),
//! run like any other. JavaScript needs no toolchain (weir carries the
//! runtime and compiles the script itself); AssemblyScript is compiled by
//! its own compiler `asc` from glue weir writes (`assemblyscript`); Python
//! needs no toolchain either (weir carries monty, and each instance runs the
//! source when it starts).

pub mod assemblyscript;
mod declaration;
pub mod javascript;
pub mod python;
pub mod runtime;
mod signature;
mod warm;

pub use declaration::{DECLARATION_TAG, DeclarationError, declarations};
pub use signature::{Signature, SignatureError, parse_signature, sql_type};
pub use warm::warm_runtimes;
