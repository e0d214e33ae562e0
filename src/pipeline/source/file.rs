//! A file read as a stream of records: NDJSON lines or CSV rows. The
//! embedded default: pipelines run without a broker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};

use super::Source;
use crate::pipeline::record::{Offsets, SourceRecord};

pub struct FileSource {
    path: Arc<str>,
    lines: Lines<BufReader<tokio::fs::File>>,
    line_no: i64,
    skip_header: bool,
}

impl FileSource {
    pub async fn open(path: PathBuf, skip_header: bool) -> anyhow::Result<Self> {
        let file = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("cannot open source file {}", path.display()))?;
        Ok(FileSource {
            path: path.display().to_string().into(),
            lines: BufReader::new(file).lines(),
            line_no: 0,
            skip_header,
        })
    }
}

#[async_trait]
impl Source for FileSource {
    async fn next_batch(
        &mut self,
        max: usize,
        _linger: Duration,
    ) -> anyhow::Result<Option<Vec<SourceRecord>>> {
        let mut batch = Vec::new();
        while batch.len() < max {
            let Some(line) = self.lines.next_line().await? else {
                break;
            };
            self.line_no += 1;
            if self.skip_header && self.line_no == 1 {
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            batch.push(SourceRecord {
                key: None,
                payload: Some(line.into_bytes()),
                topic: self.path.clone(),
                partition: 0,
                offset: self.line_no,
                timestamp: None,
                headers: Vec::new(),
            });
        }
        Ok((!batch.is_empty()).then_some(batch))
    }

    async fn commit(&mut self, _offsets: &Offsets) -> anyhow::Result<()> {
        Ok(())
    }
}
