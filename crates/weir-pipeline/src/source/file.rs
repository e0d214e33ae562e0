//! A file read as a stream of records: NDJSON lines or CSV rows. The
//! embedded default: pipelines run without a broker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::Source;
use crate::record::{Offsets, SourceRecord};

pub struct FileSource {
    path: Arc<str>,
    /// Read as bytes: a line that is not UTF-8 is a bad record for the
    /// decoder to dead-letter, not the end of the pipeline.
    reader: BufReader<tokio::fs::File>,
    line_no: i64,
    skip_header: bool,
    /// A line read in part when the linger ran out (kept for the next call).
    partial: Vec<u8>,
}

impl FileSource {
    pub async fn open(path: PathBuf, skip_header: bool) -> anyhow::Result<Self> {
        let file = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("cannot open source file {}", path.display()))?;
        Ok(FileSource {
            path: path.display().to_string().into(),
            reader: BufReader::new(file),
            line_no: 0,
            skip_header,
            partial: Vec::new(),
        })
    }
}

#[async_trait]
impl Source for FileSource {
    async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> anyhow::Result<Option<Vec<SourceRecord>>> {
        let mut batch = Vec::new();
        // A file being written to (a FIFO, a growing log) hands over what it
        // has once the first record waited `linger`.
        let mut deadline: Option<tokio::time::Instant> = None;
        while batch.len() < max {
            let read = self.reader.read_until(b'\n', &mut self.partial);
            let read = match deadline {
                None => read.await,
                // `read_until` keeps what it read in `self.partial` when the
                // linger runs out; the next call continues the line.
                Some(at) => match tokio::time::timeout_at(at, read).await {
                    Ok(read) => read,
                    Err(_) => break,
                },
            }
            .with_context(|| format!("reading {} after line {}", self.path, self.line_no))?;
            if read == 0 && self.partial.is_empty() {
                break;
            }
            let mut line = std::mem::take(&mut self.partial);
            self.line_no += 1;
            if self.skip_header && self.line_no == 1 {
                continue;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + linger);
            batch.push(SourceRecord {
                key: None,
                payload: Some(line),
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
