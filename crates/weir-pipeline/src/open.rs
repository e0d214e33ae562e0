//! Opening what a pipeline file describes: its source, its sink and its
//! dead-letter target. The runner only runs what is opened here.

use anyhow::bail;

use crate::config::{PipelineConfig, SinkConfig, SourceConfig};
use crate::sink::{DeadLetterFile, DeadLetterSink, KafkaSink, LineSink, Sink};
use crate::source::{FileSource, KafkaSource, Source};

impl SourceConfig {
    /// Opens the file, or creates the Kafka consumer (it joins its group on
    /// the first poll).
    pub async fn open(&self) -> anyhow::Result<Box<dyn Source>> {
        Ok(match self {
            SourceConfig::File { path, header, .. } => {
                Box::new(FileSource::open(path.clone(), *header).await?)
            }
            SourceConfig::Kafka {
                brokers,
                topics,
                group,
                start,
                properties,
                ..
            } => Box::new(KafkaSource::new(
                brokers, topics, group, *start, properties,
            )?),
        })
    }
}

impl SinkConfig {
    /// Opens stdout, the file, or creates the Kafka producer.
    pub async fn open(&self) -> anyhow::Result<Box<dyn Sink>> {
        Ok(match self {
            SinkConfig::Stdout { .. } => Box::new(LineSink::stdout()),
            SinkConfig::File { path, .. } => Box::new(LineSink::file(path).await?),
            SinkConfig::Kafka {
                brokers,
                topic,
                properties,
                ..
            } => Box::new(KafkaSink::new(brokers, topic, properties)?),
        })
    }
}

impl PipelineConfig {
    /// The dead-letter file or topic of `[errors]`, if any. A topic uses
    /// the brokers and properties of the Kafka sink, else of the source.
    pub async fn open_dead_letters(&self) -> anyhow::Result<Option<Box<dyn DeadLetterSink>>> {
        Ok(match (&self.errors.path, &self.errors.topic) {
            (Some(path), _) => Some(Box::new(DeadLetterFile::open(path).await?)),
            (None, Some(topic)) => {
                let (brokers, properties) = match (&self.sink, &self.source) {
                    (
                        SinkConfig::Kafka {
                            brokers,
                            properties,
                            ..
                        },
                        _,
                    )
                    | (
                        _,
                        SourceConfig::Kafka {
                            brokers,
                            properties,
                            ..
                        },
                    ) => (brokers, properties),
                    _ => bail!(
                        "errors.topic needs a Kafka source or sink to take the brokers from; set errors.path"
                    ),
                };
                Some(Box::new(KafkaSink::new(brokers, topic, properties)?))
            }
            (None, None) => None,
        })
    }
}
