//! Where records come from.

mod file;
mod kafka;
pub mod nexmark;
mod ownership;

use std::time::Duration;

use async_trait::async_trait;

pub use file::FileSource;
pub use kafka::KafkaSource;
pub use kafka::to_record;
pub use nexmark::NexmarkSource;

use super::record::{Marks, Offsets, SourceRecord};

/// A stream of records read in micro-batches.
#[async_trait]
pub trait Source: Send {
    /// Up to `max` records, waiting at most `linger` for more once the first
    /// arrived. Empty when nothing arrived for a while (so that the caller
    /// can commit what was acknowledged meanwhile); `None` when the source is
    /// finished (files).
    async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> anyhow::Result<Option<Vec<SourceRecord>>>;

    /// Every record before `offsets` reached the sink or the dead-letter
    /// target.
    async fn commit(&mut self, offsets: &Offsets) -> anyhow::Result<()>;

    /// [`Source::commit`], keeping `marks` (a windowed pipeline's
    /// watermark per partition) with the offsets where the source can
    /// (Kafka: the offset metadata).
    async fn commit_marked(&mut self, offsets: &Offsets, marks: &Marks) -> anyhow::Result<()> {
        let _ = marks;
        self.commit(offsets).await
    }

    /// The marks committed with the offsets of partitions assigned since
    /// the last call (Kafka, after a rebalance), once.
    fn take_committed_marks(&mut self) -> Option<Marks> {
        None
    }

    /// Records not yet consumed (Kafka: consumer lag summed over the
    /// assigned partitions), when known.
    fn lag(&self) -> Option<i64> {
        None
    }

    /// The sink is slow: stop fetching (Kafka: pause the assigned
    /// partitions) so that nothing buffers without bound.
    async fn pause(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Called regularly while paused, to keep group membership alive.
    async fn keepalive(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Partitions assigned to this member (Kafka); `None` for sources
    /// without partitions.
    fn assigned_partitions(&self) -> Option<usize> {
        None
    }

    /// Partitions of the source's topics in all (Kafka, once known):
    /// with fewer assigned, other members of the group read the rest.
    fn known_partitions(&self) -> Option<usize> {
        None
    }

    /// The partitions this member reads, as `topic/partition` (Kafka);
    /// empty for sources without partitions.
    fn partitions(&self) -> Vec<String> {
        Vec::new()
    }

    /// The pipeline is stopping: make the last commit durable.
    async fn finish(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// The sink caught up: fetch again.
    async fn resume(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}
