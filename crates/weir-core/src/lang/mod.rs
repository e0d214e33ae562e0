//! Guest languages weir builds modules for itself, with no toolchain on the
//! user's machine: a program in the language plus its declared signatures
//! become an ordinary weir module (docs/abi.md), run like any other.

pub mod javascript;
mod signature;

pub use signature::{Signature, SignatureError, parse_signature, sql_type};
