//! Where output and dead-letter records go. A sink acknowledges a batch only
//! when every record of it is durable (written, or acknowledged by Kafka).

mod file;
mod kafka;

use async_trait::async_trait;

pub use file::{DeadLetterFile, LineSink};
pub use kafka::KafkaSink;

use super::record::{DeadLetter, SinkRecord};

/// Output records.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Resolves once every record is acknowledged.
    async fn send(&self, records: Vec<SinkRecord>) -> anyhow::Result<()>;
}

/// Records that failed, with why.
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    async fn send(&self, pipeline: &str, letters: Vec<DeadLetter>) -> anyhow::Result<()>;
}
