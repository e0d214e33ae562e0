//! How a source file declares the functions SQL may call: a comment line
//! `// @udf name(a DOUBLE, b VARCHAR) RETURNS VARCHAR` (or the same inside a
//! `/** … */` block) near the function. JavaScript and AssemblyScript files
//! use the same lines; Python files `# @udf …`.

use super::signature::{Signature, SignatureError, parse_signature};

/// The tag that starts a declaration.
pub const DECLARATION_TAG: &str = "@udf";

#[derive(Debug, thiserror::Error)]
pub enum DeclarationError {
    #[error("{file}, line {line}: {error}")]
    Signature {
        file: String,
        line: usize,
        error: SignatureError,
    },
    #[error("{file}: function `{name}` is declared twice")]
    Duplicate { file: String, name: String },
}

/// The functions `source` declares with `// @udf …` lines, in order.
pub fn declarations(file: &str, source: &str) -> Result<Vec<Signature>, DeclarationError> {
    let mut out: Vec<Signature> = Vec::new();
    for (i, line) in source.lines().enumerate() {
        let text = line
            .trim_start()
            .trim_start_matches('/')
            .trim_start_matches('*')
            .trim_start_matches('#')
            .trim_start();
        let Some(rest) = text.strip_prefix(DECLARATION_TAG) else {
            continue;
        };
        if !rest.starts_with(char::is_whitespace) {
            continue;
        }
        let rest = rest.trim().trim_end_matches("*/").trim();
        let sig = parse_signature(rest).map_err(|error| DeclarationError::Signature {
            file: file.to_string(),
            line: i + 1,
            error,
        })?;
        if out.iter().any(|s| s.name == sig.name) {
            return Err(DeclarationError::Duplicate {
                file: file.to_string(),
                name: sig.name,
            });
        }
        out.push(sig);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_comment_lines() {
        let src = "// @udf f(a BIGINT) RETURNS BIGINT\nfunction f(a) { return a }\n/** @udf g() RETURNS DOUBLE VOLATILE */\n// @udfx not(a INT) RETURNS INT\n# @udf h(s VARCHAR) RETURNS VARCHAR\n";
        let d = declarations("t.js", src).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[2].name, "h");
        assert_eq!(d[1].name, "g");
        assert!(!d[1].deterministic);
        let e = declarations("t.js", "// @udf f(a) RETURNS INT").unwrap_err();
        assert!(e.to_string().starts_with("t.js, line 1:"), "{e}");
    }
}
