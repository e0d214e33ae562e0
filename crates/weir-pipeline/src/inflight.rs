//! Micro-batches handed to the sink and not yet acknowledged. Bounded in
//! batches and bytes; offsets are committed in consumption order, only up to
//! the oldest batch still waiting, so a commit never skips a record.

use std::collections::VecDeque;
use std::time::Duration;

use futures::FutureExt;

use super::record::{Marks, Offsets, merge_offsets};
use super::sink::Ack;
use super::source::Source;

/// A sink that has not acknowledged after this long makes the source pause.
const PAUSE_AFTER: Duration = Duration::from_millis(500);
/// How often a paused source is polled to keep its group membership.
const KEEPALIVE_EVERY: Duration = Duration::from_millis(200);

struct Pending {
    ack: Ack,
    offsets: Offsets,
    marks: Marks,
    bytes: usize,
}

/// The in-flight window of one pipeline.
pub struct InFlight {
    queue: VecDeque<Pending>,
    bytes: usize,
    max_batches: usize,
    max_bytes: usize,
    paused: bool,
    /// Batches pushed, and acknowledged, so far.
    pushed: u64,
    acked: u64,
}

impl InFlight {
    pub fn new(max_batches: usize, max_bytes: usize) -> Self {
        InFlight {
            queue: VecDeque::new(),
            bytes: 0,
            max_batches,
            max_bytes,
            paused: false,
            pushed: 0,
            acked: 0,
        }
    }

    /// Batches pushed so far: once [`Self::acknowledged`] reaches it,
    /// every one of them was acknowledged.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Batches acknowledged (and committed) so far, in push order.
    pub fn acknowledged(&self) -> u64 {
        self.acked
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn is_full(&self) -> bool {
        self.queue.len() >= self.max_batches || self.bytes >= self.max_bytes
    }

    /// Adds a batch handed to the sink: `ack` resolves when it is durable.
    pub fn push(&mut self, ack: Ack, offsets: Offsets, bytes: usize) {
        self.push_marked(ack, offsets, Marks::new(), bytes);
    }

    /// [`Self::push`] with the watermark per partition after the batch
    /// (committed with its offsets).
    pub fn push_marked(&mut self, ack: Ack, offsets: Offsets, marks: Marks, bytes: usize) {
        self.bytes += bytes;
        self.pushed += 1;
        self.queue.push_back(Pending {
            ack,
            offsets,
            marks,
            bytes,
        });
    }

    /// Commits every leading batch that is already acknowledged, in one
    /// commit. Never waits.
    pub async fn commit_acknowledged(&mut self, source: &mut dyn Source) -> anyhow::Result<()> {
        let mut offsets = Offsets::new();
        let mut marks = Marks::new();
        while let Some(front) = self.queue.front_mut() {
            match (&mut front.ack).now_or_never() {
                None => break,
                Some(Ok(())) => self.pop_into(&mut offsets, &mut marks),
                Some(Err(e)) => {
                    // Commit what was acknowledged before it, nothing after.
                    if !offsets.is_empty() {
                        source.commit_marked(&offsets, &marks).await?;
                    }
                    self.abandon();
                    return Err(e);
                }
            }
        }
        if !offsets.is_empty() {
            source.commit_marked(&offsets, &marks).await?;
        }
        Ok(())
    }

    /// Waits until there is room for one more batch, committing as batches
    /// are acknowledged; pauses the source if the wait is long.
    pub async fn wait_for_room(&mut self, source: &mut dyn Source) -> anyhow::Result<()> {
        self.commit_acknowledged(source).await?;
        while self.is_full() {
            self.wait_front(source).await?;
        }
        self.resume(source).await
    }

    /// Waits for every batch and commits them (shutdown, or a source that
    /// ended).
    pub async fn drain(&mut self, source: &mut dyn Source) -> anyhow::Result<()> {
        while !self.queue.is_empty() {
            self.wait_front(source).await?;
        }
        self.resume(source).await
    }

    /// Awaits `work` (a sink taking records over); if it is slow, pauses the
    /// source until the window has room again.
    pub async fn guard<T>(
        &mut self,
        source: &mut dyn Source,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let result = while_pausing(work, source, &mut self.paused).await;
        if !self.is_full() {
            self.resume(source).await?;
        }
        result
    }

    async fn wait_front(&mut self, source: &mut dyn Source) -> anyhow::Result<()> {
        let Some(front) = self.queue.front_mut() else {
            return Ok(());
        };
        if let Err(e) = while_pausing(&mut front.ack, source, &mut self.paused).await {
            self.abandon();
            return Err(e);
        }
        let mut offsets = Offsets::new();
        let mut marks = Marks::new();
        self.pop_into(&mut offsets, &mut marks);
        source.commit_marked(&offsets, &marks).await
    }

    /// A batch failed to reach its sink: forget the window without
    /// committing any of it (its records are re-delivered after a restart).
    fn abandon(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }

    fn pop_into(&mut self, offsets: &mut Offsets, marks: &mut Marks) {
        if let Some(done) = self.queue.pop_front() {
            self.acked += 1;
            self.bytes -= done.bytes;
            merge_offsets(offsets, done.offsets);
            // A later batch's watermark is at least the earlier one's.
            marks.extend(done.marks);
        }
    }

    async fn resume(&mut self, source: &mut dyn Source) -> anyhow::Result<()> {
        if self.paused {
            self.paused = false;
            source.resume().await?;
        }
        Ok(())
    }
}

/// Awaits `work`; after [`PAUSE_AFTER`] pauses the source (once) and keeps
/// it alive until `work` completes.
async fn while_pausing<T>(
    work: impl Future<Output = anyhow::Result<T>>,
    source: &mut dyn Source,
    paused: &mut bool,
) -> anyhow::Result<T> {
    tokio::pin!(work);
    loop {
        let wait = if *paused {
            KEEPALIVE_EVERY
        } else {
            PAUSE_AFTER
        };
        tokio::select! {
            result = &mut work => return result,
            _ = tokio::time::sleep(wait) => {
                if !*paused {
                    source.pause().await?;
                    *paused = true;
                }
                source.keepalive().await?;
            }
        }
    }
}
