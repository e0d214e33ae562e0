//! The transactional producer of an exactly-once pipeline
//! (`sink.delivery = "exactly-once"`), shared by its sink, its dead-letter
//! topic and its source's commit: the outputs and dead letters of a
//! micro-batch and the consumed offsets that produced them are committed in
//! one Kafka transaction (`send_offsets_to_transaction`), or not at all.
//!
//! A transaction opens with the first record sent after a commit and ends
//! with the next offset commit. One that cannot commit is aborted, and the
//! pipeline rewinds: it drops what it read ahead and rejoins its group, so
//! that the records are read again from the last committed offsets
//! ([`Transaction::rewind`], asked by the transaction itself and read by
//! the pipeline with [`Transaction::take_rewind`], not told by an error's
//! type). A stable `transactional.id` fences a zombie: the process
//! started after a SIGKILL aborts the transaction its predecessor left open.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};

use crate::kafka::{client_config, scrub};

/// How long `init_transactions`, a commit or an abort may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a transaction's outcome counts.
pub trait TxnCounts: Send + Sync {
    fn committed(&self);
    fn aborted(&self);
}

/// One pipeline's transactional producer.
pub struct Transaction {
    producer: FutureProducer,
    id: String,
    properties: BTreeMap<String, String>,
    open: parking_lot::Mutex<bool>,
    /// A transaction was aborted for the pipeline to read again from its
    /// committed offsets ([`Transaction::rewind`]); not yet taken.
    rewind: std::sync::atomic::AtomicBool,
    counts: Arc<dyn TxnCounts>,
}

impl Transaction {
    /// Creates the producer with `transactional.id` = `id` and registers it
    /// with the broker's transaction coordinator (which fences, and aborts
    /// the open transaction of, any earlier producer with the same id).
    pub async fn init(
        brokers: &str,
        id: &str,
        properties: &BTreeMap<String, String>,
        counts: Arc<dyn TxnCounts>,
    ) -> anyhow::Result<Arc<Self>> {
        let mut config = client_config(brokers, &[("linger.ms", "5")], properties);
        config.set("transactional.id", id).set("acks", "all");
        let producer: FutureProducer = config
            .create()
            .map_err(|e| anyhow::anyhow!(scrub(e.to_string(), properties)))
            .context("creating the transactional Kafka producer")?;
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.init_transactions(TXN_TIMEOUT))
            .await
            .context("initialising transactions")?
            .map_err(|e| init_error(&e, id, properties))?;
        tracing::info!(transactional_id = id, "transactional producer ready");
        Ok(Arc::new(Transaction {
            producer,
            id: id.to_string(),
            properties: properties.clone(),
            open: parking_lot::Mutex::new(false),
            rewind: Default::default(),
            counts,
        }))
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Opens a transaction unless one is open (before records are sent).
    pub fn begin(&self) -> anyhow::Result<()> {
        let mut open = self.open.lock();
        if !*open {
            self.producer
                .begin_transaction()
                .map_err(|e| self.error(&e))
                .context("beginning a Kafka transaction")?;
            *open = true;
        }
        Ok(())
    }

    /// Commits the open transaction (opening one if none is, so that
    /// offsets of batches without output move too) with `offsets` as the
    /// consumer group's (`group`) committed offsets. A failure that leaves
    /// the transaction abortable aborts it and asks for a rewind
    /// ([`Transaction::rewind`]).
    pub async fn commit(
        self: &Arc<Self>,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> anyhow::Result<()> {
        self.begin()?;
        let this = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            this.producer
                .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)?;
            // A timeout is retriable: the same commit is tried again.
            let mut tries = 0;
            loop {
                match this.producer.commit_transaction(TXN_TIMEOUT) {
                    Err(KafkaError::Transaction(e)) if e.is_retriable() && tries < 3 => {
                        tries += 1;
                    }
                    other => return other,
                }
            }
        })
        .await
        .context("committing the Kafka transaction")?;
        match result {
            Ok(()) => {
                *self.open.lock() = false;
                self.counts.committed();
                Ok(())
            }
            Err(e) => {
                let message = self.error(&e).to_string();
                Err(self
                    .rewind(format!("committing the transaction failed: {message}"))
                    .await)
            }
        }
    }

    /// Aborts the open transaction (`why`: what went wrong) and asks the
    /// pipeline to read again from its committed offsets: what it read
    /// since is dropped ([`Transaction::take_rewind`]). The error to
    /// return; when the abort itself fails (fenced, fatal) that error, and
    /// no rewind is asked.
    pub async fn rewind(self: &Arc<Self>, why: String) -> anyhow::Error {
        if let Err(e) = self.abort(&why).await {
            return e;
        }
        self.rewind.store(true, std::sync::atomic::Ordering::SeqCst);
        anyhow::anyhow!(
            "{why}; the transaction was aborted and the pipeline reads again from its committed offsets"
        )
    }

    /// Whether a rewind was asked since the last call (which it clears):
    /// the pipeline's error is then a transaction aborted for its records
    /// to be read again, not a failure.
    pub fn take_rewind(&self) -> bool {
        self.rewind.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    /// Aborts the open transaction, if any (`why` for the log). Fails only
    /// when the producer can no longer be used (fenced, fatal).
    pub async fn abort(self: &Arc<Self>, why: &str) -> anyhow::Result<()> {
        if !*self.open.lock() {
            return Ok(());
        }
        tracing::warn!(transactional_id = %self.id, "aborting the Kafka transaction: {why}");
        let this = self.clone();
        let result =
            tokio::task::spawn_blocking(move || this.producer.abort_transaction(TXN_TIMEOUT))
                .await
                .context("aborting the Kafka transaction")?;
        self.counts.aborted();
        *self.open.lock() = false;
        result
            .map_err(|e| self.error(&e))
            .context("aborting the Kafka transaction")
    }

    /// A transactional error in words, with the fix when there is one.
    fn error(&self, e: &KafkaError) -> anyhow::Error {
        let text = scrub(e.to_string(), &self.properties);
        let fenced = matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
        );
        if fenced {
            anyhow::anyhow!(
                "{text}: another producer with transactional.id `{}` started (a second process \
                 of this pipeline?); give each process its own `sink.transactional_id`",
                self.id
            )
        } else {
            anyhow::anyhow!("{text}")
        }
    }
}

/// Why `init_transactions` failed, and what to do.
fn init_error(e: &KafkaError, id: &str, properties: &BTreeMap<String, String>) -> anyhow::Error {
    let text = scrub(e.to_string(), properties);
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed) => anyhow::anyhow!(
            "the broker refused a transactional producer (transactional.id `{id}`): {text}. \
             Either the principal may not use this id (grant it WRITE on the transactional id), \
             or the broker does not support transactions (nisshi 0.8.1 refuses every \
             transactional id); set `sink.delivery = \"at-least-once\"` to run without them"
        ),
        _ => anyhow::anyhow!(
            "the broker did not accept a transactional producer (transactional.id `{id}`): \
             {text}; set `sink.delivery = \"at-least-once\"` to run without transactions"
        ),
    }
}
