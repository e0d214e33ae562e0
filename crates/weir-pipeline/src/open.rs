//! Opening what a pipeline file describes: its source, its sink and its
//! dead-letter target (sharing the transaction of an exactly-once sink).
//! The runner only runs what is opened here.

use std::sync::Arc;

use anyhow::{Context, bail};

use crate::avro::registry::RegistryError;
use crate::avro::{AvroIn, AvroOut, Framing, Registry};
use crate::config::{AvroConfig, PipelineConfig, SinkConfig, SourceConfig};
use crate::decode::RecordDecoder;
use crate::resources::FileRoots;
use crate::sink::{DeadLetterFile, DeadLetterSink, KafkaSink, LineSink, Sink};
use crate::source::{FileSource, KafkaSource, Source};
use crate::transaction::{Transaction, TxnCounts};

impl SourceConfig {
    /// Opens the file, or creates the Kafka consumer (it joins its group on
    /// the first poll), committing in `txn` when exactly-once.
    /// A file is held to `roots` (a deployed pipeline's folders).
    pub async fn open(
        &self,
        txn: Option<&Arc<Transaction>>,
        roots: Option<&FileRoots>,
    ) -> anyhow::Result<Box<dyn Source>> {
        Ok(match self {
            SourceConfig::File { path, header, .. } => {
                let path = FileRoots::confine(roots, "source.path", path)?;
                Box::new(FileSource::open(path, *header).await?)
            }
            SourceConfig::Nexmark {
                events, rate, seed, ..
            } => Box::new(crate::source::NexmarkSource::new(*seed, *rate, *events)),
            SourceConfig::Kafka {
                brokers,
                topics,
                group,
                start,
                properties,
                ..
            } => {
                let source = KafkaSource::new(brokers, topics, group, *start, properties)?;
                Box::new(match txn {
                    Some(txn) => source.with_transaction(txn.clone()),
                    None => source,
                })
            }
        })
    }
}

impl SinkConfig {
    /// Opens stdout, the file, or creates the Kafka producer (writing in
    /// `txn` when exactly-once).
    /// A file is held to `roots` (a deployed pipeline's folders).
    pub async fn open(
        &self,
        txn: Option<&Arc<Transaction>>,
        roots: Option<&FileRoots>,
    ) -> anyhow::Result<Box<dyn Sink>> {
        Ok(match self {
            SinkConfig::Stdout { .. } => Box::new(LineSink::stdout()),
            SinkConfig::File { path, .. } => {
                let path = FileRoots::confine(roots, "sink.path", path)?;
                Box::new(LineSink::file(&path).await?)
            }
            SinkConfig::Kafka {
                brokers,
                topic,
                properties,
                ..
            } => Box::new(match txn {
                Some(txn) => KafkaSink::transactional(txn.clone(), topic, properties)?,
                None => KafkaSink::new(brokers, topic, properties)?,
            }),
        })
    }

    /// The transactional producer of an exactly-once sink (registered with
    /// the broker's coordinator), `None` for at-least-once.
    pub async fn open_transaction(
        &self,
        tenant: &str,
        pipeline: &str,
        counts: Arc<dyn TxnCounts>,
    ) -> anyhow::Result<Option<Arc<Transaction>>> {
        let (
            Some(id),
            SinkConfig::Kafka {
                brokers,
                properties,
                ..
            },
        ) = (self.transactional_id(tenant, pipeline), self)
        else {
            return Ok(None);
        };
        Transaction::init(brokers, &id, properties, counts)
            .await
            .context("sink.delivery = \"exactly-once\"")
            .map(Some)
    }
}

impl PipelineConfig {
    /// The dead-letter file or topic of `[errors]`, if any. A topic uses
    /// the brokers and properties of the Kafka sink, else of the source;
    /// with an exactly-once sink, its transaction.
    pub async fn open_dead_letters(
        &self,
        txn: Option<&Arc<Transaction>>,
    ) -> anyhow::Result<Option<Box<dyn DeadLetterSink>>> {
        Ok(match (&self.errors.path, &self.errors.topic) {
            (Some(path), _) => {
                let path = FileRoots::confine(self.file_roots.as_ref(), "errors.path", path)?;
                Some(Box::new(DeadLetterFile::open(&path).await?))
            }
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
                Some(Box::new(match txn {
                    Some(txn) => KafkaSink::transactional(txn.clone(), topic, properties)?,
                    None => KafkaSink::new(brokers, topic, properties)?,
                }))
            }
            (None, None) => None,
        })
    }
}

fn read_schema(
    side: &str,
    avro: &AvroConfig,
    roots: Option<&FileRoots>,
) -> anyhow::Result<Option<String>> {
    avro.schema
        .as_ref()
        .map(|p| {
            let key = format!("{side}.avro.schema");
            let path = FileRoots::confine(roots, &key, p)?;
            // The error never quotes the file: it may not be an .avsc.
            std::fs::read_to_string(&path)
                .with_context(|| format!("{key}: cannot read the Avro schema {}", p.display()))
        })
        .transpose()
}

fn registry(side: &str, avro: &AvroConfig, url: &str) -> anyhow::Result<Arc<Registry>> {
    let password = avro.password().map_err(|e| anyhow::anyhow!("{side}.{e}"))?;
    Ok(Arc::new(Registry::new(
        url,
        avro.username.as_deref(),
        password.as_deref(),
    )))
}

impl SourceConfig {
    /// The decoder of the source's records: Avro's schemas read (and, with
    /// a registry and no `.avsc`, the subject's latest version fetched).
    pub async fn decoder(&self, roots: Option<&FileRoots>) -> anyhow::Result<RecordDecoder> {
        let (
            SourceConfig::Kafka {
                avro: Some(avro),
                topics,
                ..
            },
            crate::config::Format::Avro,
        ) = (self, self.format())
        else {
            return Ok(RecordDecoder::new(
                self.format(),
                self.fields(),
                self.metadata(),
            ));
        };
        let file = read_schema("source", avro, roots)?;
        let decoder = match (&avro.registry, file) {
            (None, Some(writer)) => AvroIn::new(
                Framing::Plain {
                    writer: writer.as_str().into(),
                },
                &writer,
            ),
            (None, None) => bail!("[source.avro] needs `schema` or `registry`"),
            (Some(url), file) => {
                let registry = registry("source", avro, url)?;
                let reader = match file {
                    Some(reader) => reader,
                    None => {
                        let subject = avro
                            .subject
                            .clone()
                            .unwrap_or_else(|| format!("{}-value", topics[0]));
                        let r = registry.clone();
                        tokio::task::spawn_blocking(move || r.latest(&subject))
                            .await
                            .context("fetching the reader schema")?
                            .map_err(|e| match e {
                                // The registry's error stays typed in the
                                // chain: a build tells "did not answer"
                                // (`PipelineError::Unavailable`) by it.
                                RegistryError::Unreachable { .. } => {
                                    anyhow::Error::new(e).context("source.avro")
                                }
                                e => anyhow::anyhow!(
                                    "source.avro: {e}; set `subject`, or `schema` to an .avsc reader schema"
                                ),
                            })?
                            .1
                    }
                };
                AvroIn::new(Framing::Confluent { registry }, &reader)
            }
        }
        .map_err(|e| anyhow::anyhow!("source.avro: {e}"))?;
        Ok(RecordDecoder::avro(decoder, self.metadata()))
    }
}

impl SinkConfig {
    /// How the sink writes Avro, for a query whose output is `output`:
    /// the schema (the `.avsc`, else derived from the output) and, with a
    /// registry, the id it is registered under. `None` for other formats.
    pub async fn avro_out(
        &self,
        output: &datafusion::arrow::datatypes::Schema,
        roots: Option<&FileRoots>,
    ) -> anyhow::Result<Option<AvroOut>> {
        let (SinkConfig::Kafka { avro, topic, .. }, crate::config::Format::Avro) =
            (self, self.format())
        else {
            return Ok(None);
        };
        let avro = avro.as_deref().cloned().unwrap_or_default();
        let schema = AvroOut {
            schema: read_schema("sink", &avro, roots)?,
            id: None,
        }
        .schema_for(output)
        .map_err(|e| anyhow::anyhow!("sink.avro: {e}"))?;
        let id = match &avro.registry {
            None => None,
            Some(url) => {
                let registry = registry("sink", &avro, url)?;
                let subject = avro
                    .subject
                    .clone()
                    .unwrap_or_else(|| format!("{topic}-value"));
                let json = schema.clone();
                Some(
                    tokio::task::spawn_blocking(move || registry.register(&subject, &json))
                        .await
                        .context("registering the sink's schema")?
                        .map_err(|e| anyhow::Error::new(e).context("sink.avro"))?,
                )
            }
        };
        Ok(Some(AvroOut {
            schema: Some(schema),
            id,
        }))
    }
}
