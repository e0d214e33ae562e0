//! How big a SQL text may be before anything parses or plans it: its size,
//! its nesting depth and its operator count. DataFusion's planner and
//! optimizer recurse along an expression (`1+1+…+1` is a 20 000-deep
//! tree) and some of their passes are quadratic in it: an unbounded text
//! aborts the process on a stack overflow or holds a thread for minutes.
//! The bounds are checked on the token stream (no recursion, linear time),
//! for every SQL text a caller hands in: `weir sql`, the HTTP SQL endpoint,
//! a pipeline's `sql`.

use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// The bounds of one caller's SQL, with the policy key of each (named in
/// a refusal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlBounds {
    /// Bytes of the whole text.
    pub max_bytes: u64,
    /// Parentheses open at once (subqueries, calls, grouping).
    pub max_depth: u32,
    /// Operators joining two expressions or two queries (`+`, `AND`,
    /// `UNION`, `JOIN`, …) in the whole text.
    pub max_terms: u32,
    /// `[max_bytes, max_depth, max_terms]`'s keys.
    pub keys: [String; 3],
}

impl Default for SqlBounds {
    fn default() -> Self {
        SqlBounds {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_depth: Self::DEFAULT_MAX_DEPTH,
            max_terms: Self::DEFAULT_MAX_TERMS,
            keys: [
                "defaults.sql_max_bytes".into(),
                "defaults.sql_max_depth".into(),
                "defaults.sql_max_terms".into(),
            ],
        }
    }
}

impl SqlBounds {
    pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;
    pub const DEFAULT_MAX_DEPTH: u32 = 64;
    pub const DEFAULT_MAX_TERMS: u32 = 1_000;
    /// The most any policy may allow: what the planner handles on a guest
    /// thread's stack in a debug build, in a few seconds.
    pub const CEILING_DEPTH: u32 = 256;
    pub const CEILING_TERMS: u32 = 4_000;

    /// `config` carrying these bounds: every text run in a session made
    /// from it is checked against them.
    pub fn install(self, config: SessionConfig) -> SessionConfig {
        config.with_extension(std::sync::Arc::new(self))
    }

    /// The bounds installed in `ctx`'s session (the defaults if none).
    pub fn of(ctx: &SessionContext) -> SqlBounds {
        ctx.state()
            .config()
            .get_extension::<SqlBounds>()
            .map(|b| (*b).clone())
            .unwrap_or_default()
    }

    /// Refuses `sql` when it is over a bound, naming the key to raise.
    pub fn check(&self, sql: &str) -> Result<()> {
        let [bytes_key, depth_key, terms_key] = &self.keys;
        if sql.len() as u64 > self.max_bytes {
            return Err(refused(format!(
                "the SQL text is {} bytes, over `{bytes_key}` = {}; send a shorter statement",
                sql.len(),
                self.max_bytes
            )));
        }
        let tokens = Tokenizer::new(&GenericDialect {}, sql)
            .tokenize()
            .map_err(|e| DataFusionError::SQL(Box::new(e.into()), None))?;
        let (mut depth, mut deepest, mut terms) = (0u32, 0u32, 0u32);
        for token in &tokens {
            match token {
                Token::LParen | Token::LBracket | Token::LBrace => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                Token::RParen | Token::RBracket | Token::RBrace => depth = depth.saturating_sub(1),
                _ => {}
            }
            if joins_two(token) {
                terms += 1;
            }
            if deepest > self.max_depth {
                return Err(refused(format!(
                    "the SQL text nests parentheses over `{depth_key}` = {} deep; flatten it",
                    self.max_depth
                )));
            }
            if terms > self.max_terms {
                return Err(refused(format!(
                    "the SQL text joins more than `{terms_key}` = {} terms with operators (`+`, `AND`, `UNION`, `JOIN`, …); split the work or raise the key",
                    self.max_terms
                )));
            }
        }
        Ok(())
    }
}

/// Checks `sql` against the bounds of `ctx`'s session.
pub fn check_bounds(ctx: &SessionContext, sql: &str) -> Result<()> {
    SqlBounds::of(ctx).check(sql)
}

fn refused(message: String) -> DataFusionError {
    DataFusionError::Plan(message)
}

/// Whether a token joins two expressions or two queries. Counted by
/// exclusion: every operator the tokenizer knows (today's and any a newer
/// sqlparser adds) is a term; only names, literals and punctuation are not,
/// plus the keywords that act as operators.
fn joins_two(token: &Token) -> bool {
    match token {
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::NOT
                | Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT
                | Keyword::JOIN
                | Keyword::WHEN
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::BETWEEN
                | Keyword::IS
                | Keyword::IN
                | Keyword::OVERLAPS
                | Keyword::AT
                | Keyword::COLLATE
                | Keyword::DIV
                | Keyword::OPERATOR
        ),
        Token::EOF
        | Token::Number(..)
        | Token::Char(_)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::TripleSingleQuotedString(_)
        | Token::TripleDoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::SingleQuotedByteStringLiteral(_)
        | Token::DoubleQuotedByteStringLiteral(_)
        | Token::TripleSingleQuotedByteStringLiteral(_)
        | Token::TripleDoubleQuotedByteStringLiteral(_)
        | Token::SingleQuotedRawStringLiteral(_)
        | Token::DoubleQuotedRawStringLiteral(_)
        | Token::TripleSingleQuotedRawStringLiteral(_)
        | Token::TripleDoubleQuotedRawStringLiteral(_)
        | Token::NationalStringLiteral(_)
        | Token::QuoteDelimitedStringLiteral(_)
        | Token::NationalQuoteDelimitedStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::Comma
        | Token::Whitespace(_)
        | Token::Period
        | Token::SemiColon
        | Token::LParen
        | Token::RParen
        | Token::RBracket
        | Token::LBrace
        | Token::RBrace => false,
        // `[` subscripts (`a[1][1]…` chains without nesting), `*`, `::`,
        // `->`, `XOR`'s symbolic forms, `@>`, `~~`, `!`, …
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(op: &str, n: usize) -> String {
        format!("SELECT {}", vec!["1"; n].join(op))
    }

    #[test]
    fn a_long_chain_is_refused_naming_the_key() {
        let b = SqlBounds::default();
        b.check(&chain("+", 1_000)).unwrap();
        let e = b.check(&chain("+", 20_000)).unwrap_err().to_string();
        assert!(e.contains("defaults.sql_max_terms"), "{e}");
        let unions = vec!["SELECT 1"; 5_000].join(" UNION ALL ");
        assert!(b.check(&unions).is_err());
    }

    #[test]
    fn deep_nesting_and_size_are_refused() {
        let b = SqlBounds::default();
        let deep = format!("SELECT {}1{}", "(".repeat(100), ")".repeat(100));
        let e = b.check(&deep).unwrap_err().to_string();
        assert!(e.contains("defaults.sql_max_depth"), "{e}");
        let big = format!("SELECT '{}'", "x".repeat(2 << 20));
        let e = b.check(&big).unwrap_err().to_string();
        assert!(e.contains("defaults.sql_max_bytes"), "{e}");
        // Operators the first version missed: keywords and symbols alike.
        let xor = format!("SELECT {}", vec!["1"; 5_000].join(" XOR "));
        assert!(b.check(&xor).is_err());
        let subscripts = format!("SELECT a{} FROM t", "[1]".repeat(5_000));
        assert!(b.check(&subscripts).is_err());
        let arrows = format!("SELECT a{} FROM t", " @> a".repeat(5_000));
        assert!(b.check(&arrows).is_err());
        // Operators inside strings and comments are not terms.
        b.check(&format!(
            "SELECT '{}' -- {}",
            "+".repeat(5000),
            "+".repeat(5000)
        ))
        .unwrap();
    }
}
