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
    /// SQL name, and the name of the wasm export implementing it unless
    /// `export` names another.
    pub name: String,
    pub args: Vec<AbiType>,
    pub ret: AbiType,
    /// Same inputs always give the same output. Deterministic functions are
    /// constant-folded, may be cached, and run with NaN canonicalization.
    pub deterministic: bool,
    /// The export implementing it when not `name` (`"export"` key): one
    /// runtime module serving programs it does not know the names of.
    pub export: Option<String>,
}

impl FunctionDecl {
    /// The name of the wasm export that implements it.
    pub fn export_name(&self) -> &str {
        self.export.as_deref().unwrap_or(&self.name)
    }

    /// `name(float64, utf8) -> boolean`
    pub fn signature(&self) -> String {
        let args: Vec<&str> = self.args.iter().map(|t| t.name()).collect();
        format!("{}({}) -> {}", self.name, args.join(", "), self.ret)
    }
}

/// One exported aggregate function (`"kind":"aggregate"`, docs/abi.md §9):
/// the exports `NAME__update`, `NAME__merge`, `NAME__state`,
/// `NAME__evaluate` and, with `retract`, `NAME__retract`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateDecl {
    /// SQL name; the prefix of its exports.
    pub name: String,
    pub args: Vec<AbiType>,
    pub ret: AbiType,
    /// The columns of a group's exported state (what `merge` reads back).
    pub state: Vec<AbiType>,
    /// Same rows in any order ⇒ same result.
    pub deterministic: bool,
    /// Whether it exports `NAME__retract` (sliding windows).
    pub retract: bool,
}

impl AggregateDecl {
    /// `median(float64) -> float64 [state: binary]`
    pub fn signature(&self) -> String {
        let names = |ts: &[AbiType]| ts.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ");
        format!(
            "{}({}) -> {} [aggregate, state: {}{}]",
            self.name,
            names(&self.args),
            self.ret,
            names(&self.state),
            if self.retract { ", retract" } else { "" }
        )
    }

    /// The name of its export `suffix` (one of `weir_abi::aggregate::*`).
    pub fn export(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.name)
    }
}

/// All functions a module declares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub abi_version: u32,
    /// Scalar functions (`"kind":"scalar"`, the default).
    pub functions: Vec<FunctionDecl>,
    /// Aggregate functions (`"kind":"aggregate"`).
    pub aggregates: Vec<AggregateDecl>,
}

impl Manifest {
    pub fn function(&self, name: &str) -> Option<&FunctionDecl> {
        self.functions.iter().find(|f| f.name == name)
    }

    pub fn aggregate(&self, name: &str) -> Option<&AggregateDecl> {
        self.aggregates.iter().find(|f| f.name == name)
    }

    /// True when any function needs NaN canonicalization.
    pub fn any_deterministic(&self) -> bool {
        self.functions.iter().any(|f| f.deterministic)
            || self.aggregates.iter().any(|f| f.deterministic)
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
    #[error(
        "function `{name}` names export `{export}`: an export name is letters, digits and `_`, at most 64 bytes"
    )]
    BadExport { name: String, export: String },
    #[error("function `{0}` is declared twice")]
    Duplicate(String),
    #[error("function `{name}` declares {count} arguments; at most {MAX_ARGS} are allowed")]
    TooManyArgs { name: String, count: usize },
    #[error("the module declares {0} functions; at most {MAX_FUNCTIONS} are allowed")]
    TooManyFunctions(usize),
    #[error("the module declares no functions")]
    Empty,
    #[error("function `{name}`: {reason}")]
    BadAggregate { name: String, reason: String },
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
    /// `scalar` (default) or `aggregate`.
    #[serde(default)]
    kind: Option<String>,
    /// Aggregates: the state columns' types.
    #[serde(default)]
    state: Option<Vec<String>>,
    /// Aggregates: whether `NAME__retract` is exported.
    #[serde(default)]
    retract: bool,
    /// Scalars: the export implementing it, when not `name`.
    #[serde(default)]
    export: Option<String>,
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

/// An export name: printable ASCII without quotes, at most 64 bytes.
fn valid_export(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
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
        let mut aggregates: Vec<AggregateDecl> = Vec::new();
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
                if functions.iter().any(|f| f.name == record.name)
                    || aggregates
                        .iter()
                        .any(|f: &AggregateDecl| f.name == record.name)
                {
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
                let bad = |reason: &str| ManifestError::BadAggregate {
                    name: record.name.clone(),
                    reason: reason.to_string(),
                };
                match record.kind.as_deref() {
                    None | Some("scalar") => {
                        if let Some(export) = &record.export
                            && !valid_export(export)
                        {
                            return Err(ManifestError::BadExport {
                                name: record.name,
                                export: export.clone(),
                            });
                        }
                        if record.state.is_some() || record.retract {
                            return Err(bad(
                                "`state` and `retract` belong to `\"kind\":\"aggregate\"` records",
                            ));
                        }
                        functions.push(FunctionDecl {
                            name: record.name,
                            args,
                            ret,
                            deterministic: record.deterministic,
                            export: record.export,
                        });
                    }
                    Some(super::KIND_AGGREGATE) => {
                        let Some(state) = &record.state else {
                            return Err(bad("an aggregate declares its `state` column types"));
                        };
                        if state.is_empty() || state.len() > super::MAX_STATE_COLUMNS {
                            return Err(bad(&format!(
                                "an aggregate declares 1 to {} state columns, not {}",
                                super::MAX_STATE_COLUMNS,
                                state.len()
                            )));
                        }
                        if record.name.len() > 50 {
                            return Err(bad(
                                "an aggregate's name is at most 50 bytes (its exports add a suffix)",
                            ));
                        }
                        let state = state
                            .iter()
                            .map(|t| parse_type(&record.name, t))
                            .collect::<Result<Vec<_>, _>>()?;
                        aggregates.push(AggregateDecl {
                            name: record.name,
                            args,
                            ret,
                            state,
                            deterministic: record.deterministic,
                            retract: record.retract,
                        });
                    }
                    Some(other) => {
                        return Err(bad(&format!(
                            "unknown kind `{other}`; expected `scalar` or `aggregate`"
                        )));
                    }
                }
                if functions.len() + aggregates.len() > MAX_FUNCTIONS {
                    return Err(ManifestError::TooManyFunctions(
                        functions.len() + aggregates.len(),
                    ));
                }
            }
        }
        if functions.is_empty() && aggregates.is_empty() {
            return Err(ManifestError::Empty);
        }
        Ok(Manifest {
            abi_version: ABI_VERSION,
            functions,
            aggregates,
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
    fn parses_aggregates() {
        let a = br#"{"abi":1,"kind":"aggregate","name":"median","args":["float64"],"ret":"float64","state":["binary"]}"#;
        let m = Manifest::parse(&[a]).unwrap();
        assert!(m.functions.is_empty());
        assert_eq!(
            m.aggregates[0].signature(),
            "median(float64) -> float64 [aggregate, state: binary]"
        );
        for (bytes, expected) in [
            (
                &br#"{"abi":1,"kind":"aggregate","name":"m","args":[],"ret":"int8"}"#[..],
                "state",
            ),
            (
                br#"{"abi":1,"kind":"window","name":"m","args":[],"ret":"int8"}"#,
                "unknown kind",
            ),
            (
                br#"{"abi":1,"name":"m","args":[],"ret":"int8","retract":true}"#,
                "aggregate",
            ),
        ] {
            let err = Manifest::parse(&[bytes]).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
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
