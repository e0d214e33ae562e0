//! `weir sql`: one query over files, with UDFs, printed to stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::user_message;
use crate::sandbox::Sandbox;
use crate::sql::{OutputFormat, SqlSession, TableSpec, write_batches};

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// A UDF module (.wasm or .wat); repeat for several.
    #[arg(long = "udf", value_name = "PATH.wasm")]
    pub udfs: Vec<PathBuf>,
    /// A table from a .csv, .json/.ndjson/.jsonl or .parquet file; repeat for several.
    #[arg(long = "table", value_name = "NAME=PATH")]
    pub tables: Vec<TableSpec>,
    /// Output format: table, json or csv.
    #[arg(long, default_value = "table")]
    pub format: OutputFormat,
    /// The query.
    pub sql: String,
}

pub async fn run(sandbox: Sandbox, args: &SqlArgs) -> anyhow::Result<()> {
    let mut session = SqlSession::new(sandbox);
    for path in &args.udfs {
        session.add_udf_file(path)?;
    }
    for table in &args.tables {
        session
            .add_table(table)
            .await
            .map_err(|e| anyhow::anyhow!(user_message(&e)))?;
    }
    let batches = session
        .query(&args.sql)
        .await
        .map_err(|e| anyhow::anyhow!(user_message(&e)))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    write_batches(&mut out, &batches, args.format).context("writing the result")?;
    out.flush().context("writing the result")?;
    Ok(())
}
