//! The module's self-description: the `weir.udf` custom section.
//!
//! The section holds one JSON object per line, one per exported function:
//!
//! ```text
//! {"abi":1,"name":"haversine_km","args":["float64","float64","float64","float64"],"ret":"float64","deterministic":true}
//! ```
//!
//! Lines may come from several custom sections of the same name (linkers
//! concatenate them); blank lines are ignored.

use serde::Deserialize;

use super::{ABI_VERSION, AbiType};

/// Most arguments a function may declare.
pub const MAX_ARGS: usize = 32;
/// Most functions a module may export.
pub const MAX_FUNCTIONS: usize = 256;
/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// One exported scalar function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionDecl {
    /// SQL name, and the name of the wasm export implementing it.
    pub name: String,
    pub args: Vec<AbiType>,
    pub ret: AbiType,
    /// Same inputs always give the same output. Deterministic functions are
    /// constant-folded, may be cached, and run with NaN canonicalization.
    pub deterministic: bool,
}

impl FunctionDecl {
    /// `name(float64, utf8) -> boolean`
    pub fn signature(&self) -> String {
        let args: Vec<&str> = self.args.iter().map(|t| t.name()).collect();
        format!("{}({}) -> {}", self.name, args.join(", "), self.ret)
    }
}

/// All functions a module declares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub abi_version: u32,
    pub functions: Vec<FunctionDecl>,
}

impl Manifest {
    pub fn function(&self, name: &str) -> Option<&FunctionDecl> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// True when any function needs NaN canonicalization.
    pub fn any_deterministic(&self) -> bool {
        self.functions.iter().any(|f| f.deterministic)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error(
        "the module has no `weir.udf` custom section; build it with the weir-udf SDK or add the section described in docs/abi.md"
    )]
    Missing,
    #[error("the `weir.udf` section is {0} bytes, above the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("the `weir.udf` section is not UTF-8")]
    NotUtf8,
    #[error("line {line} of the `weir.udf` section is not a valid function record: {reason}")]
    BadRecord { line: usize, reason: String },
    #[error(
        "function `{name}` was built for weir ABI v{found}, this host speaks v{ABI_VERSION}; rebuild it with a matching SDK"
    )]
    AbiVersion { name: String, found: u32 },
    #[error("function `{name}` declares unknown type `{ty}`; known types: {known}")]
    UnknownType {
        name: String,
        ty: String,
        known: String,
    },
    #[error(
        "function name `{0}` is not a valid SQL name: use lowercase letters, digits and `_`, starting with a letter or `_`, at most 64 characters"
    )]
    BadName(String),
    #[error("function `{0}` is declared twice")]
    Duplicate(String),
    #[error("function `{name}` declares {count} arguments; at most {MAX_ARGS} are allowed")]
    TooManyArgs { name: String, count: usize },
    #[error("the module declares {0} functions; at most {MAX_FUNCTIONS} are allowed")]
    TooManyFunctions(usize),
    #[error("the module declares no functions")]
    Empty,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    abi: u32,
    name: String,
    args: Vec<String>,
    ret: String,
    #[serde(default = "yes")]
    deterministic: bool,
}

fn yes() -> bool {
    true
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 64
}

fn parse_type(fn_name: &str, ty: &str) -> Result<AbiType, ManifestError> {
    AbiType::from_name(ty).ok_or_else(|| ManifestError::UnknownType {
        name: fn_name.to_string(),
        ty: ty.to_string(),
        known: AbiType::ALL.map(|t| t.name()).join(", "),
    })
}

impl Manifest {
    /// Parses the concatenated contents of every `weir.udf` section.
    pub fn parse(sections: &[&[u8]]) -> Result<Manifest, ManifestError> {
        if sections.is_empty() {
            return Err(ManifestError::Missing);
        }
        let total: usize = sections.iter().map(|s| s.len()).sum();
        if total > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(total));
        }
        let mut functions: Vec<FunctionDecl> = Vec::new();
        let mut line_no = 0;
        for section in sections {
            let text = std::str::from_utf8(section).map_err(|_| ManifestError::NotUtf8)?;
            for line in text.lines() {
                line_no += 1;
                let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\0');
                if line.is_empty() {
                    continue;
                }
                let record: Record =
                    serde_json::from_str(line).map_err(|e| ManifestError::BadRecord {
                        line: line_no,
                        reason: e.to_string(),
                    })?;
                if record.abi != ABI_VERSION {
                    return Err(ManifestError::AbiVersion {
                        name: record.name,
                        found: record.abi,
                    });
                }
                if !valid_name(&record.name) {
                    return Err(ManifestError::BadName(record.name));
                }
                if functions.iter().any(|f| f.name == record.name) {
                    return Err(ManifestError::Duplicate(record.name));
                }
                if record.args.len() > MAX_ARGS {
                    return Err(ManifestError::TooManyArgs {
                        name: record.name,
                        count: record.args.len(),
                    });
                }
                let args = record
                    .args
                    .iter()
                    .map(|t| parse_type(&record.name, t))
                    .collect::<Result<Vec<_>, _>>()?;
                let ret = parse_type(&record.name, &record.ret)?;
                functions.push(FunctionDecl {
                    name: record.name,
                    args,
                    ret,
                    deterministic: record.deterministic,
                });
                if functions.len() > MAX_FUNCTIONS {
                    return Err(ManifestError::TooManyFunctions(functions.len()));
                }
            }
        }
        if functions.is_empty() {
            return Err(ManifestError::Empty);
        }
        Ok(Manifest {
            abi_version: ABI_VERSION,
            functions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_concatenated_records() {
        let a = br#"{"abi":1,"name":"f","args":["int64","utf8"],"ret":"boolean"}
"#;
        let b = br#"{"abi":1,"name":"g","args":[],"ret":"float64","deterministic":false}"#;
        let m = Manifest::parse(&[a, b]).unwrap();
        assert_eq!(m.functions.len(), 2);
        assert_eq!(m.functions[0].signature(), "f(int64, utf8) -> boolean");
        assert!(m.functions[0].deterministic);
        assert!(!m.functions[1].deterministic);
    }

    #[test]
    fn rejects_bad_records() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"abi":2,"name":"f","args":[],"ret":"int8"}"#, "ABI v2"),
            (
                br#"{"abi":1,"name":"F","args":[],"ret":"int8"}"#,
                "not a valid SQL name",
            ),
            (
                br#"{"abi":1,"name":"f","args":["int128"],"ret":"int8"}"#,
                "unknown type `int128`",
            ),
            (
                br#"{"abi":1,"name":"f","args":[],"ret":"int8","x":1}"#,
                "unknown field",
            ),
            (b"not json", "line 1"),
        ];
        for (bytes, expected) in cases {
            let err = Manifest::parse(&[bytes]).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
        assert_eq!(Manifest::parse(&[]), Err(ManifestError::Missing));
    }
}
