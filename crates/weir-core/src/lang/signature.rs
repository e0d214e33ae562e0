//! A function's SQL signature as a script declares it:
//! `name(a DOUBLE, b VARCHAR) RETURNS VARCHAR`, optionally `VOLATILE`.

use crate::abi::AbiType;

/// One declared function of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// SQL name, and the script's function of that name.
    pub name: String,
    /// Argument names (for messages) and types.
    pub args: Vec<(String, AbiType)>,
    pub ret: AbiType,
    /// `false` when declared `VOLATILE` (random, stateful).
    pub deterministic: bool,
}

impl Signature {
    /// Its manifest line (docs/abi.md §2), `\n`-terminated, served by the
    /// export `export` when that is not the function's name.
    pub fn manifest_line(&self, export: Option<&str>) -> String {
        let mut record = serde_json::json!({
            "abi": 1,
            "name": self.name,
            "args": self.args.iter().map(|(_, t)| t.name()).collect::<Vec<_>>(),
            "ret": self.ret.name(),
            "deterministic": self.deterministic,
        });
        if let Some(export) = export {
            record["export"] = export.into();
        }
        format!("{record}\n")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{text}`: {reason}; write it as `name(a DOUBLE, b VARCHAR) RETURNS VARCHAR`, adding `VOLATILE` for a function that is not deterministic"
)]
pub struct SignatureError {
    pub text: String,
    pub reason: String,
}

/// The ABI type of a SQL type name (`DOUBLE`, `VARCHAR`, `BIGINT`…) or of
/// an ABI name (`float64`, `utf8`…), case-insensitively.
pub fn sql_type(name: &str) -> Option<AbiType> {
    let words: Vec<String> = name
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let t = match words.join(" ").as_str() {
        "BOOLEAN" | "BOOL" => AbiType::Boolean,
        "TINYINT" | "INT1" => AbiType::Int8,
        "SMALLINT" | "INT2" => AbiType::Int16,
        "INT" | "INTEGER" | "INT4" => AbiType::Int32,
        "BIGINT" | "INT8" => AbiType::Int64,
        "TINYINT UNSIGNED" => AbiType::UInt8,
        "SMALLINT UNSIGNED" => AbiType::UInt16,
        "INT UNSIGNED" | "INTEGER UNSIGNED" => AbiType::UInt32,
        "BIGINT UNSIGNED" => AbiType::UInt64,
        "REAL" | "FLOAT" | "FLOAT4" => AbiType::Float32,
        "DOUBLE" | "DOUBLE PRECISION" | "FLOAT8" => AbiType::Float64,
        "VARCHAR" | "TEXT" | "STRING" | "CHAR" => AbiType::Utf8,
        "BYTEA" | "BLOB" | "BINARY" | "VARBINARY" => AbiType::Binary,
        "TIMESTAMP" => AbiType::TimestampMicros,
        "DATE" => AbiType::Date32,
        _ => return AbiType::from_name(&name.trim().to_ascii_lowercase()),
    };
    Some(t)
}

/// Parses `name(a DOUBLE, b VARCHAR) RETURNS VARCHAR [VOLATILE]`.
pub fn parse_signature(text: &str) -> Result<Signature, SignatureError> {
    let bad = |reason: &str| SignatureError {
        text: text.trim().to_string(),
        reason: reason.to_string(),
    };
    let (name, rest) = text.split_once('(').ok_or_else(|| bad("no `(`"))?;
    let name = name.trim().to_string();
    let (params, tail) = rest.split_once(')').ok_or_else(|| bad("no `)`"))?;
    let mut args = Vec::new();
    for (i, param) in params.split(',').enumerate() {
        let param = param.trim();
        if param.is_empty() {
            if params.trim().is_empty() {
                break;
            }
            return Err(bad(&format!("argument {} is empty", i + 1)));
        }
        let (arg, ty) = param
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad(&format!("argument `{param}` has a name but no type")))?;
        let t = sql_type(ty).ok_or_else(|| bad(&format!("unknown type `{}`", ty.trim())))?;
        args.push((arg.to_string(), t));
    }
    let tail: Vec<&str> = tail.split_whitespace().collect();
    let (ret, volatile) = match tail.as_slice() {
        [r, ty @ ..] if r.eq_ignore_ascii_case("RETURNS") && !ty.is_empty() => {
            let volatile = ty
                .last()
                .is_some_and(|w| w.eq_ignore_ascii_case("VOLATILE"));
            let ty = if volatile { &ty[..ty.len() - 1] } else { ty };
            let ty = ty.join(" ");
            let t = sql_type(&ty).ok_or_else(|| bad(&format!("unknown type `{ty}`")))?;
            (t, volatile)
        }
        _ => return Err(bad("no `RETURNS type`")),
    };
    Ok(Signature {
        name,
        args,
        ret,
        deterministic: !volatile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_reads_like_sql() {
        let s = parse_signature("js_add(a BIGINT, b double precision) RETURNS BIGINT").unwrap();
        assert_eq!(s.name, "js_add");
        assert_eq!(
            s.args,
            vec![("a".into(), AbiType::Int64), ("b".into(), AbiType::Float64)]
        );
        assert_eq!(s.ret, AbiType::Int64);
        assert!(s.deterministic);
        let v = parse_signature("jitter() RETURNS float64 VOLATILE").unwrap();
        assert!(v.args.is_empty() && !v.deterministic);
    }

    #[test]
    fn a_bad_signature_says_what_is_wrong() {
        let e = parse_signature("f(a) RETURNS INT").unwrap_err();
        assert!(e.to_string().contains("has a name but no type"), "{e}");
        let e = parse_signature("f(a DECIMAL) RETURNS INT").unwrap_err();
        assert!(e.to_string().contains("unknown type `DECIMAL`"), "{e}");
        let e = parse_signature("f(a INT)").unwrap_err();
        assert!(e.to_string().contains("RETURNS"), "{e}");
    }
}
