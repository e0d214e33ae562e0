//! A module's self-description, read before anything is compiled.

use wasmtime::wasmparser::{Parser, Payload, TypeRef};

use sha2::{Digest, Sha256};

use crate::abi::{INIT_SECTION, MANIFEST_SECTION, MAX_INIT_BYTES, Manifest, ManifestError};

/// One import the module asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    pub module: String,
    pub name: String,
    pub kind: &'static str,
}

/// What a module says about itself.
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    pub manifest: Manifest,
    pub imports: Vec<Import>,
    /// Declared initial size of each defined memory, in bytes.
    pub initial_memory: Vec<u64>,
    /// Declared initial elements of each defined table.
    pub initial_tables: Vec<u64>,
    /// Functions the module defines (compile time and memory grow with it).
    pub functions: u64,
    /// The largest function body, in bytes, and its index among the defined functions.
    pub largest_body: (u64, u32),
    /// Names of the exports.
    pub exports: Vec<String>,
    /// The `weir.init` section: what `weir_init` receives per instance.
    pub init: Option<Vec<u8>>,
    /// sha256 of every section but `weir.udf` and `weir.init`: modules that
    /// differ only in those share one compiled artifact (the JavaScript
    /// runtime under every JavaScript program).
    pub code_digest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{0}")]
    Parse(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Init(String),
}

/// Parses the binary module's sections (not its code) for the manifest,
/// imports and memories.
pub fn inspect(wasm: &[u8]) -> Result<ModuleInfo, InspectError> {
    let mut sections: Vec<&[u8]> = Vec::new();
    let mut imports = Vec::new();
    let mut initial_memory = Vec::new();
    let mut initial_tables = Vec::new();
    let mut functions = 0u64;
    let mut largest_body = (0u64, 0u32);
    let mut body_index = 0u32;
    let mut exports = Vec::new();
    let mut init: Option<Vec<u8>> = None;
    let mut code = Sha256::new();
    let parse = |e: wasmtime::wasmparser::BinaryReaderError| InspectError::Parse(e.to_string());
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(parse)?;
        let ours = matches!(&payload, Payload::CustomSection(r)
            if r.name() == MANIFEST_SECTION || r.name() == INIT_SECTION);
        if let (false, Some((id, range))) = (ours, payload.as_section()) {
            code.update([id]);
            code.update((range.len() as u64).to_le_bytes());
            code.update(&wasm[range]);
        }
        match payload {
            Payload::CustomSection(reader) if reader.name() == MANIFEST_SECTION => {
                sections.push(reader.data());
            }
            Payload::CustomSection(reader) if reader.name() == INIT_SECTION => {
                if init.is_some() {
                    return Err(InspectError::Init(format!(
                        "the module has two `{INIT_SECTION}` sections; it may have one"
                    )));
                }
                if reader.data().len() > MAX_INIT_BYTES {
                    return Err(InspectError::Init(format!(
                        "the `{INIT_SECTION}` section is {} bytes, above the {MAX_INIT_BYTES}-byte limit",
                        reader.data().len()
                    )));
                }
                init = Some(reader.data().to_vec());
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(parse)?;
                    let kind = match import.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => "function",
                        TypeRef::Memory(_) => "memory",
                        TypeRef::Table(_) => "table",
                        TypeRef::Global(_) => "global",
                        TypeRef::Tag(_) => "tag",
                    };
                    imports.push(Import {
                        module: import.module.to_string(),
                        name: import.name.to_string(),
                        kind,
                    });
                }
            }
            Payload::TableSection(reader) => {
                for table in reader {
                    initial_tables.push(table.map_err(parse)?.ty.initial);
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.map_err(parse)?;
                    let page = 1u64 << memory.page_size_log2.unwrap_or(16);
                    initial_memory.push(memory.initial.saturating_mul(page));
                }
            }
            Payload::FunctionSection(reader) => {
                functions = u64::from(reader.count());
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    exports.push(export.map_err(parse)?.name.to_string());
                }
            }
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len() as u64;
                if size > largest_body.0 {
                    largest_body = (size, body_index);
                }
                body_index = body_index.saturating_add(1);
            }
            _ => {}
        }
    }
    let manifest = Manifest::parse(&sections)?;
    Ok(ModuleInfo {
        manifest,
        imports,
        initial_memory,
        initial_tables,
        functions,
        largest_body,
        exports,
        init,
        code_digest: hex::encode(code.finalize()),
    })
}
