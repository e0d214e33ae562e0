//! Line-oriented sinks: stdout or an appended file; dead letters as JSON lines.

use std::path::{Path, PathBuf};

use anyhow::Context;
use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// Pipelines writing to stdout take turns.
static STDOUT: Mutex<()> = Mutex::const_new(());

use super::{Ack, DeadLetterSink, Sink, acked};
use crate::record::{DeadLetter, SinkRecord};

enum Target {
    Stdout,
    File(Writer),
}

/// What a writer appends: output records (a line each) or dead letters
/// (a JSON line each). They are turned into bytes on the writer's thread,
/// not the pipeline's: a dirty stream's thousands of dead letters a second
/// cost the pipeline a hand-over, not their encoding.
enum Lines {
    Records(Vec<SinkRecord>),
    Letters {
        pipeline: String,
        letters: Vec<DeadLetter>,
    },
}

impl Lines {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Lines::Records(records) => {
                for r in records {
                    out.extend_from_slice(&r.payload);
                    out.push(b'\n');
                }
            }
            Lines::Letters { pipeline, letters } => {
                for l in letters {
                    crate::dead_letter::write_line(out, pipeline, l)
                        .map_err(|e| format!("cannot encode a dead letter: {e}"))?;
                }
            }
        }
        Ok(())
    }
}

/// Lines to append, and who waits for them to be on disk.
type Job = (Lines, tokio::sync::oneshot::Sender<Result<(), String>>);

/// A file's writer thread: batches are encoded and written in the order
/// they were handed over, off the pipeline's path, and acknowledged once
/// synced. Whatever is queued when a write ends goes in the next write,
/// under one `fsync` (group commit): a slow disk costs syncs per moment,
/// not per batch.
struct Writer {
    queue: std::sync::mpsc::Sender<Job>,
    path: PathBuf,
}

impl Writer {
    fn start(file: std::fs::File, path: &Path) -> anyhow::Result<Self> {
        use std::io::Write;
        let (queue, jobs) = std::sync::mpsc::channel::<Job>();
        // Pipes and character devices cannot be synced.
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        let mut file = file;
        std::thread::Builder::new()
            .name("weir-file-sink".into())
            .spawn(move || {
                let mut buf = Vec::new();
                while let Ok(first) = jobs.recv() {
                    let mut done = vec![first];
                    done.extend(jobs.try_iter());
                    // A job that cannot be encoded fails alone; the others
                    // are written.
                    buf.clear();
                    let mut failed = Vec::with_capacity(done.len());
                    for (lines, _) in &done {
                        let mark = buf.len();
                        let encoded = lines.encode(&mut buf);
                        if encoded.is_err() {
                            buf.truncate(mark);
                        }
                        failed.push(encoded.err());
                    }
                    let mut result = file.write_all(&buf).and_then(|()| file.flush());
                    if result.is_ok() && regular {
                        result = file.sync_data();
                    }
                    let result = result.map_err(|e| e.to_string());
                    for ((_, ack), failed) in done.into_iter().zip(failed) {
                        let _ = ack.send(match failed {
                            Some(e) => Err(e),
                            None => result.clone(),
                        });
                    }
                    // Do not keep a burst's buffer for good.
                    if buf.capacity() > 16 << 20 {
                        buf = Vec::new();
                    }
                }
            })
            .with_context(|| format!("cannot start the writer of {}", path.display()))?;
        Ok(Writer {
            queue,
            path: path.to_path_buf(),
        })
    }

    /// Queues `lines`; the acknowledgement resolves once they are on disk.
    fn write(&self, lines: Lines) -> anyhow::Result<Ack> {
        let (ack, written) = tokio::sync::oneshot::channel();
        let path = self.path.clone();
        self.queue
            .send((lines, ack))
            .map_err(|_| anyhow::anyhow!("the writer of {} stopped", path.display()))?;
        Ok(Box::pin(async move {
            written
                .await
                .map_err(|_| anyhow::anyhow!("the writer of {} stopped", path.display()))?
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
        }))
    }
}

/// Writes one payload per line to stdout or a file (acknowledged once
/// synced).
pub struct LineSink {
    target: Target,
}

async fn append(path: &Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .with_context(|| format!("cannot open {} for writing", path.display()))?;
    Ok(file.into_std().await)
}

impl LineSink {
    pub fn stdout() -> Self {
        LineSink {
            target: Target::Stdout,
        }
    }

    pub async fn file(path: &Path) -> anyhow::Result<Self> {
        Ok(LineSink {
            target: Target::File(Writer::start(append(path).await?, path)?),
        })
    }
}

#[async_trait]
impl Sink for LineSink {
    async fn send(&self, records: Vec<SinkRecord>) -> anyhow::Result<Ack> {
        match &self.target {
            Target::Stdout => {
                let mut buf = Vec::new();
                Lines::Records(records)
                    .encode(&mut buf)
                    .map_err(anyhow::Error::msg)?;
                // One writer at a time keeps batches whole and in order.
                let _one = STDOUT.lock().await;
                let mut out = tokio::io::stdout();
                out.write_all(&buf).await?;
                out.flush().await?;
                Ok(acked())
            }
            Target::File(writer) => writer.write(Lines::Records(records)),
        }
    }
}

/// Dead letters as JSON lines: the record, where it came from, and why.
pub struct DeadLetterFile {
    writer: Writer,
}

impl DeadLetterFile {
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(DeadLetterFile {
            writer: Writer::start(append(path).await?, path)?,
        })
    }
}

#[async_trait]
impl DeadLetterSink for DeadLetterFile {
    async fn send(&self, pipeline: &str, letters: Vec<DeadLetter>) -> anyhow::Result<Ack> {
        self.writer.write(Lines::Letters {
            pipeline: pipeline.to_string(),
            letters,
        })
    }
}
