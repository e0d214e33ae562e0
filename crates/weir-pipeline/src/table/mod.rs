//! Lookup tables: reference data a pipeline's SQL may `JOIN` (enrichment).
//!
//! A table is held in memory as Arrow batches and registered in the
//! pipeline's session under its name before the query is planned. When a
//! table changes — its file was rewritten ([`mod@file`]), or its compacted
//! topic delivered new values ([`topic`]) — the pipeline plans its query
//! again between two micro-batches, so each batch joins one consistent
//! version of every table. Tables are counted against the tenant's
//! `state_bytes`; a table that does not fit is refused (and a reload that
//! would not fit keeps the version in force).

pub mod file;
pub mod recent;
pub mod topic;

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::config::TableConfig;

/// One version of a table's contents.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub bytes: usize,
}

impl Snapshot {
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        let bytes = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        Snapshot {
            schema,
            batches,
            bytes,
        }
    }

    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Where a table's versions come from.
enum Kind {
    File(file::FileTable),
    Topic(topic::TopicTable),
}

/// A table and the version the query was planned with.
struct Table {
    name: String,
    kind: Kind,
    current: Snapshot,
}

/// The lookup tables of one pipeline.
#[derive(Default)]
pub struct Tables {
    tables: Vec<Table>,
}

impl Tables {
    /// Loads every table (a topic table reads its topic up to the end
    /// offsets at start). `limit`: the tenant's `state_bytes`, and the key
    /// to name when it is exceeded.
    pub async fn open(
        pipeline: &str,
        configs: &[TableConfig],
        limit: (u64, &str),
        roots: Option<&crate::resources::FileRoots>,
    ) -> anyhow::Result<Self> {
        let mut tables = Vec::new();
        let mut total = 0usize;
        for (i, config) in configs.iter().enumerate() {
            let (kind, current) = match config {
                TableConfig::File { .. } => {
                    let (t, s) = file::FileTable::open(config, i, roots.cloned()).await?;
                    (Kind::File(t), s)
                }
                TableConfig::Kafka { .. } => {
                    let (t, s) = topic::TopicTable::open(pipeline, config).await?;
                    (Kind::Topic(t), s)
                }
            };
            total += current.bytes;
            if total as u64 > limit.0 {
                anyhow::bail!(
                    "table `{}`: the lookup tables hold {total} bytes, over `{}` = {}; raise it or make the table smaller",
                    config.name(),
                    limit.1,
                    limit.0
                );
            }
            tracing::info!(
                pipeline,
                table = config.name(),
                rows = current.rows(),
                bytes = current.bytes,
                "lookup table loaded"
            );
            tables.push(Table {
                name: config.name().to_string(),
                kind,
                current,
            });
        }
        Ok(Tables { tables })
    }

    /// Registers the versions in force in `ctx`.
    pub fn register(&self, ctx: &SessionContext) -> datafusion::error::Result<()> {
        for t in &self.tables {
            let table =
                MemTable::try_new(t.current.schema.clone(), vec![t.current.batches.clone()])?;
            ctx.register_table(t.name.as_str(), Arc::new(table))?;
        }
        Ok(())
    }

    /// Bytes held by the versions in force.
    pub fn bytes(&self) -> usize {
        self.tables.iter().map(|t| t.current.bytes).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Takes new versions that arrived (a file rewritten, values on a
    /// topic). A new version that cannot be read, changes the table's
    /// columns or does not fit `limit` is logged and the one in force
    /// kept. `true` when a version changed (the query must be planned
    /// again).
    pub async fn refresh(&mut self, pipeline: &str, limit: (u64, &str)) -> bool {
        let mut changed = false;
        for i in 0..self.tables.len() {
            let next = match &mut self.tables[i].kind {
                Kind::File(f) => f.poll().await,
                Kind::Topic(t) => t.poll(),
            };
            let next = match next {
                Ok(Some(next)) => next,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(pipeline, table = %self.tables[i].name, "lookup table not reloaded, the version in force stays: {e:#}");
                    continue;
                }
            };
            let t = &self.tables[i];
            if next.schema.fields() != t.current.schema.fields() {
                tracing::warn!(pipeline, table = %t.name, "lookup table not reloaded, the version in force stays: its columns changed ({} → {}); restart the pipeline to take the new columns", columns(&t.current.schema), columns(&next.schema));
                continue;
            }
            let others = self.bytes() - t.current.bytes;
            if (others + next.bytes) as u64 > limit.0 {
                tracing::warn!(pipeline, table = %t.name, "lookup table not reloaded, the version in force stays: it would hold {} bytes, over `{}` = {}", next.bytes, limit.1, limit.0);
                continue;
            }
            tracing::info!(pipeline, table = %t.name, rows = next.rows(), "lookup table reloaded: in effect from the next batch");
            self.tables[i].current = next;
            changed = true;
        }
        changed
    }
}

fn columns(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}
