//! A runtime module serving a program. weir's script languages (JavaScript,
//! Python) are each one guest, unchanged, plus two custom sections: the
//! manifest, each function naming the runtime's export `<prefix>K` that
//! serves it, and `weir.init`, the program every instance reads once when
//! it starts (docs/abi.md §10): a magic, the signature table, then what the
//! language adds (bytecode, or a file name and a source).

use super::signature::Signature;
use crate::abi::{INIT_SECTION, MANIFEST_SECTION, Manifest};

/// The manifest lines of `functions` (export `<prefix>K` for function K)
/// and the start of their program: `magic`, the count, then per function
/// its name, argument types, result type and determinism (type codes are
/// positions in [`crate::abi::AbiType::ALL`]). The manifest is parsed here,
/// where the script is named, so a bad name or type is reported before
/// load.
pub fn signature_table(
    magic: &[u8; 4],
    prefix: &str,
    functions: &[Signature],
) -> Result<(String, Vec<u8>), String> {
    let mut manifest = String::new();
    let mut program = magic.to_vec();
    program.extend((functions.len() as u32).to_le_bytes());
    for (k, f) in functions.iter().enumerate() {
        manifest.push_str(&f.manifest_line(Some(&format!("{prefix}{k}"))));
        program.extend((f.name.len() as u32).to_le_bytes());
        program.extend(f.name.as_bytes());
        program.extend((f.args.len() as u32).to_le_bytes());
        program.extend(f.args.iter().map(|(_, t)| type_code(*t)));
        program.push(type_code(f.ret));
        program.push(u8::from(f.deterministic));
    }
    Manifest::parse(&[manifest.as_bytes()]).map_err(|e| e.to_string())?;
    Ok((manifest, program))
}

/// `runtime` with `manifest` and `program` appended as its sections.
pub fn with_program(runtime: &[u8], manifest: &str, program: &[u8]) -> Vec<u8> {
    let mut wasm = runtime.to_vec();
    append_custom_section(&mut wasm, MANIFEST_SECTION, manifest.as_bytes());
    append_custom_section(&mut wasm, INIT_SECTION, program);
    wasm
}

/// A type's code in a program: its position in [`crate::abi::AbiType::ALL`]
/// (the order of the runtimes' type enums).
fn type_code(t: crate::abi::AbiType) -> u8 {
    crate::abi::AbiType::ALL
        .iter()
        .position(|x| *x == t)
        .unwrap_or(0) as u8
}

/// Appends custom section `name` with `data` (id 0, size, name, data).
pub fn append_custom_section(wasm: &mut Vec<u8>, name: &str, data: &[u8]) {
    let mut body = Vec::with_capacity(name.len() + data.len() + 5);
    leb128(&mut body, name.len() as u64);
    body.extend(name.as_bytes());
    body.extend(data);
    wasm.push(0);
    leb128(wasm, body.len() as u64);
    wasm.extend(body);
}

fn leb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
