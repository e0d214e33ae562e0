//! Where output and dead-letter records go. A sink acknowledges a batch only
//! when every record of it is durable (written, or acknowledged by Kafka).

mod file;
mod kafka;

use async_trait::async_trait;
use futures::future::BoxFuture;

pub use file::{DeadLetterFile, LineSink};
pub use kafka::KafkaSink;

use super::record::{DeadLetter, SinkRecord};

/// Resolves once every record handed to a sink is acknowledged; several may
/// be pending at once (in-flight micro-batches).
pub type Ack = BoxFuture<'static, anyhow::Result<()>>;

/// An acknowledgement that is already complete (sinks that write in `send`).
pub fn acked() -> Ack {
    Box::pin(std::future::ready(Ok(())))
}

/// The largest record a sink takes, and the setting that raises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordLimit {
    /// Key plus payload bytes.
    pub bytes: usize,
    /// The configuration key in force, as the user writes it.
    pub key: String,
}

/// Output records.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Hands the records over (waiting while the sink's own queue is full)
    /// and returns their acknowledgement.
    async fn send(&self, records: Vec<SinkRecord>) -> anyhow::Result<Ack>;

    /// Records larger than this are refused by the sink; the pipeline
    /// dead-letters their source record instead of failing. `None`: no limit.
    fn max_record_bytes(&self) -> Option<RecordLimit> {
        None
    }
}

/// Records that failed, with why.
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    async fn send(&self, pipeline: &str, letters: Vec<DeadLetter>) -> anyhow::Result<Ack>;
}
