//! SQL behaviour as data: every `tests/sql/*.slt` file (sqllogictest format)
//! runs against a session holding all example UDFs and tables.
//!
//! Checked strictly:
//! * column types: each column's type letter (`I` integers, `R` floats and
//!   decimals, `T` anything else) must match the query's Arrow result
//!   schema, column for column;
//! * values cell by cell: an expected row is split into cells at
//!   whitespace, a cell holding whitespace (or nothing) is written in double
//!   quotes (`"STRASSE GRÖSSE"`, `""`; `\"` and `\\` inside quotes), and the
//!   cells must equal the rendered values exactly, as many as there are
//!   columns.

use std::path::PathBuf;

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Normalizer};

use crate::support;

#[derive(Debug)]
struct SqlError(String);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SqlError {}

struct Db {
    ctx: SessionContext,
}

/// The sqllogictest type letter of an Arrow type.
fn column_type(t: &DataType) -> DefaultColumnType {
    match t {
        DataType::Dictionary(_, values) => column_type(values),
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() || t.is_decimal() => DefaultColumnType::FloatingPoint,
        _ => DefaultColumnType::Text,
    }
}

#[async_trait::async_trait]
impl AsyncDB for Db {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let message = |e: datafusion::error::DataFusionError| SqlError(weir::cli::user_message(&e));
        // `CREATE FUNCTION … LANGUAGE javascript` (alone or before a query)
        // goes through the script runner, as in `weir sql`.
        if sql.to_ascii_lowercase().contains("create function") {
            let host = weir::sql::LocalFunctions(support::sandbox());
            let options = datafusion::execution::context::SQLOptions::new();
            let batches = weir::sql::run_script(&self.ctx, sql, options, &host, None)
                .await
                .map_err(message)?;
            if batches.is_empty() {
                return Ok(DBOutput::StatementComplete(0));
            }
            let types = batches[0]
                .schema()
                .fields()
                .iter()
                .map(|f| column_type(f.data_type()))
                .collect();
            return Ok(DBOutput::Rows {
                types,
                rows: support::render(&batches),
            });
        }
        let frame = self.ctx.sql(sql).await.map_err(message)?;
        // The result's types come from its schema, so that a query without
        // rows has them too.
        let types: Vec<DefaultColumnType> = frame
            .schema()
            .fields()
            .iter()
            .map(|f| column_type(f.data_type()))
            .collect();
        let batches = frame.collect().await.map_err(message)?;
        let rows = support::render(&batches);
        if rows.is_empty() && !sql.trim_start().to_ascii_lowercase().starts_with("select") {
            return Ok(DBOutput::StatementComplete(0));
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "weir"
    }
}

/// The cells of an expected row: split at whitespace; a cell starting with
/// `"` runs to the next unescaped `"` (`\"` and `\\` escape inside) and must
/// be followed by whitespace or the end. None when the line is malformed.
fn expected_cells(line: &str) -> Option<Vec<String>> {
    let mut cells = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(first) = chars.next() else {
            return Some(cells);
        };
        let mut cell = String::new();
        if first == '"' {
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => cell.push(chars.next()?),
                    c => cell.push(c),
                }
            }
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return None;
            }
        } else {
            cell.push(first);
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                cell.push(c);
            }
        }
        cells.push(cell);
    }
}

/// Compares the rows cell by cell (see the module documentation), instead
/// of as space-joined lines where `a b` in one column equals `a`, `b` in two.
fn cell_validator(_: Normalizer, actual: &[Vec<String>], expected: &[String]) -> bool {
    actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|(row, line)| expected_cells(line).is_some_and(|cells| &cells == row))
}

fn slt_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(support::repo().join("tests/sql"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files
}

#[test]
fn expected_rows_split_into_cells() {
    let cells = |line: &str| expected_cells(line);
    let strings = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(cells("1  343.6"), strings(&["1", "343.6"]));
    assert_eq!(
        cells(r#""STRASSE GRÖSSE" "a \"b\" \\" true"#),
        strings(&["STRASSE GRÖSSE", r#"a "b" \"#, "true"])
    );
    assert_eq!(cells(r#"1 """#), strings(&["1", ""]));
    assert_eq!(cells(""), strings(&[]));
    assert_eq!(cells(r#""open"#), None);
    assert_eq!(cells(r#""a"b"#), None);
    // Space-joined lines no longer hide column boundaries.
    let row = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let validate = |actual: &[Vec<String>], expected: &[&str]| {
        let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        cell_validator(sqllogictest::default_normalizer, actual, &expected)
    };
    assert!(validate(&[row(&["a b", "c"])], &[r#""a b" c"#]));
    assert!(!validate(&[row(&["a b", "c"])], &["a b c"]));
    assert!(!validate(&[row(&["a", "b c"])], &[r#""a b" c"#]));
    assert!(!validate(&[row(&["a", "b"])], &["a b", "c"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_files_pass() {
    let files = slt_files();
    assert!(!files.is_empty(), "no .slt files found");
    let mut failures = Vec::new();
    for file in &files {
        if file.ends_with("assemblyscript.slt") && !support::require_asc() {
            continue;
        }
        let mut runner = sqllogictest::Runner::new(|| async {
            Ok::<_, SqlError>(Db {
                ctx: support::session().await,
            })
        });
        runner.with_column_validator(sqllogictest::strict_column_validator);
        runner.with_validator(cell_validator);
        if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}:\n{e}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
