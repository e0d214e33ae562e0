//! A lookup table from a CSV (with a header), NDJSON or Parquet file, read
//! with DataFusion's own readers (types inferred, as `weir sql --table`
//! does). Reloaded when the file's modification time or size changes,
//! looked at no more than once a second.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use datafusion::prelude::SessionContext;

use super::Snapshot;
use crate::config::TableConfig;
use crate::resources::FileRoots;
use crate::sql::{TableSpec, register_table};

/// How often a table file is looked at for a change.
const CHECK_EVERY: Duration = Duration::from_secs(1);

pub struct FileTable {
    name: String,
    path: PathBuf,
    /// `tables[i].path`, the key named when the file leaves `roots`.
    key: String,
    /// A deployed pipeline's folders: the file is held to them at every
    /// read, a reload included.
    roots: Option<FileRoots>,
    /// Modification time and size of the version in force.
    seen: Option<(SystemTime, u64)>,
    checked: Instant,
}

fn stamp(path: &PathBuf) -> std::io::Result<(SystemTime, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified()?, meta.len()))
}

impl FileTable {
    /// `index`: the table's place in `[[tables]]`.
    pub async fn open(
        config: &TableConfig,
        index: usize,
        roots: Option<FileRoots>,
    ) -> anyhow::Result<(Self, Snapshot)> {
        let TableConfig::File { name, path } = config else {
            anyhow::bail!("table `{}` is not a file table", config.name());
        };
        let mut table = FileTable {
            name: name.clone(),
            path: path.clone(),
            key: format!("tables[{index}].path"),
            roots,
            seen: None,
            checked: Instant::now(),
        };
        let seen = stamp(path)
            .with_context(|| format!("table `{name}`: cannot read {}", path.display()))?;
        let snapshot = table.read().await?;
        table.seen = Some(seen);
        Ok((table, snapshot))
    }

    async fn read(&self) -> anyhow::Result<Snapshot> {
        let path = FileRoots::confine(self.roots.as_ref(), &self.key, &self.path)?;
        let ctx = SessionContext::new();
        let spec = TableSpec {
            name: "t".to_string(),
            path,
        };
        let what = || format!("table `{}`: {}", self.name, self.path.display());
        register_table(&ctx, &spec)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {}", what(), crate::error::user_message(&e)))?;
        let frame = ctx.table("t").await.with_context(what)?;
        let schema = frame.schema().inner().clone();
        let batches = frame
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{}: {}", what(), crate::error::user_message(&e)))?;
        Ok(Snapshot::new(schema, batches))
    }

    /// A new version if the file changed since the version in force.
    pub async fn poll(&mut self) -> anyhow::Result<Option<Snapshot>> {
        if self.checked.elapsed() < CHECK_EVERY {
            return Ok(None);
        }
        self.checked = Instant::now();
        let now = stamp(&self.path).with_context(|| {
            format!(
                "table `{}`: {} cannot be read (moved or deleted?)",
                self.name,
                self.path.display()
            )
        })?;
        if Some(now) == self.seen {
            return Ok(None);
        }
        // Once per change: a bad version is reported once, and a file
        // still being written shows another stamp next time.
        self.seen = Some(now);
        self.read().await.map(Some)
    }
}
