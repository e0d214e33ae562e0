//! Registering CSV, NDJSON and Parquet files as tables.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};

/// File formats `--table` understands, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    Csv,
    NdJson,
    Parquet,
}

impl TableFormat {
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(TableFormat::Csv),
            "json" | "ndjson" | "jsonl" => Some(TableFormat::NdJson),
            "parquet" | "pq" => Some(TableFormat::Parquet),
            _ => None,
        }
    }
}

/// `NAME=PATH`, as given to `--table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub name: String,
    pub path: PathBuf,
}

impl FromStr for TableSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let (name, path) = s.split_once('=').ok_or_else(|| {
            format!("`{s}` is not NAME=PATH (e.g. `trips=examples/data/trips.csv`)")
        })?;
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(format!(
                "table name `{name}` must be letters, digits and `_`, not starting with a digit"
            ));
        }
        if path.is_empty() {
            return Err(format!("table `{name}` has an empty path"));
        }
        Ok(TableSpec {
            name: name.to_string(),
            path: PathBuf::from(path),
        })
    }
}

/// Registers `spec` in `ctx`, picking the reader from the file extension.
pub async fn register_table(ctx: &SessionContext, spec: &TableSpec) -> Result<()> {
    let path = &spec.path;
    if !path.exists() {
        return Err(DataFusionError::Plan(format!(
            "table `{}`: file {} does not exist",
            spec.name,
            path.display()
        )));
    }
    let format = TableFormat::from_path(path).ok_or_else(|| {
        DataFusionError::Plan(format!(
            "table `{}`: cannot tell the format of {}; use a .csv, .json/.ndjson/.jsonl or .parquet file",
            spec.name,
            path.display()
        ))
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    let location = path.to_string_lossy();
    match format {
        TableFormat::Csv => {
            let options = CsvReadOptions::new().file_extension(&ext);
            ctx.register_csv(&spec.name, location.as_ref(), options)
                .await
        }
        TableFormat::NdJson => {
            let options = JsonReadOptions::default().file_extension(&ext);
            ctx.register_json(&spec.name, location.as_ref(), options)
                .await
        }
        TableFormat::Parquet => {
            let options = ParquetReadOptions::default().file_extension(&ext);
            ctx.register_parquet(&spec.name, location.as_ref(), options)
                .await
        }
    }
}
