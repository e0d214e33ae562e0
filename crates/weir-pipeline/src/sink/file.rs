//! Line-oriented sinks: stdout or an appended file; dead letters as JSON lines.

use std::path::{Path, PathBuf};

use anyhow::Context;
use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::{Ack, DeadLetterSink, Sink, acked};
use crate::record::{DeadLetter, SinkRecord};

enum Target {
    Stdout,
    File(tokio::fs::File),
}

/// Writes one payload per line to stdout or a file (flushed per batch).
pub struct LineSink {
    target: Mutex<Target>,
}

async fn append(path: &Path) -> anyhow::Result<tokio::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .with_context(|| format!("cannot open {} for writing", path.display()))
}

impl LineSink {
    pub fn stdout() -> Self {
        LineSink {
            target: Mutex::new(Target::Stdout),
        }
    }

    pub async fn file(path: &Path) -> anyhow::Result<Self> {
        Ok(LineSink {
            target: Mutex::new(Target::File(append(path).await?)),
        })
    }
}

#[async_trait]
impl Sink for LineSink {
    async fn send(&self, records: Vec<SinkRecord>) -> anyhow::Result<Ack> {
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.payload.len() + 1).sum());
        for r in records {
            buf.extend_from_slice(&r.payload);
            buf.push(b'\n');
        }
        match &mut *self.target.lock().await {
            Target::Stdout => {
                let mut out = tokio::io::stdout();
                out.write_all(&buf).await?;
                out.flush().await?;
            }
            Target::File(f) => {
                f.write_all(&buf).await?;
                f.flush().await?;
                // Pipes and character devices cannot be synced.
                if f.metadata().await.is_ok_and(|m| m.is_file()) {
                    f.sync_data().await?;
                }
            }
        }
        Ok(acked())
    }
}

/// Dead letters as JSON lines: the record, where it came from, and why.
pub struct DeadLetterFile {
    path: PathBuf,
    file: Mutex<tokio::fs::File>,
}

impl DeadLetterFile {
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(DeadLetterFile {
            path: path.to_path_buf(),
            file: Mutex::new(append(path).await?),
        })
    }
}

#[async_trait]
impl DeadLetterSink for DeadLetterFile {
    async fn send(&self, pipeline: &str, letters: Vec<DeadLetter>) -> anyhow::Result<Ack> {
        let mut buf = Vec::new();
        for l in letters {
            let line = crate::dead_letter::json_line(pipeline, &l);
            serde_json::to_writer(&mut buf, &line)?;
            buf.push(b'\n');
        }
        let mut f = self.file.lock().await;
        f.write_all(&buf)
            .await
            .with_context(|| format!("writing dead letters to {}", self.path.display()))?;
        f.sync_data().await?;
        Ok(acked())
    }
}
