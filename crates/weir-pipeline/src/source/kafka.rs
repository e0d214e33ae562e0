//! A Kafka consumer-group member. Offsets are committed only after every
//! record of a micro-batch reached the sink or the dead-letter topic
//! (at-least-once); a rebalance re-delivers what was not committed. An
//! exactly-once pipeline commits them inside its sink's transaction instead
//! (`crate::transaction`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use super::Source;
use super::ownership::Ownership;
use crate::config::StartPosition;
use crate::kafka::{client_config, scrub};
use crate::record::{Marks, Offsets, SourceRecord};
use crate::transaction::Transaction;

/// How long a failing offset commit is retried before the pipeline stops.
const COMMIT_RETRY_FOR: Duration = Duration::from_secs(120);
/// With nothing to read, `next_batch` returns an empty batch this often, so
/// that acknowledged offsets are committed while the topic is idle.
const IDLE_TICK: Duration = Duration::from_millis(100);
/// A single wait for the next message never exceeds this: rdkafka's stream
/// can miss the wake-up of a queue that refilled after a pause/resume, so
/// the wait is restarted (which polls the queue again).
const REPOLL_EVERY: Duration = Duration::from_millis(50);
/// While paused, the consumer is polled this often to stay in its group
/// (well within librdkafka's default `max.poll.interval.ms` of 300 s).
const KEEPALIVE_POLL: Duration = Duration::from_secs(5);
/// ... and this often once the records taken by those polls reach
/// [`CARRY_SOFT_LIMIT`], so that a sink stalled for hours holds a few
/// thousand records at most.
const KEEPALIVE_POLL_FULL: Duration = Duration::from_secs(60);
const CARRY_SOFT_LIMIT: usize = 1024;

/// Receives librdkafka's statistics (the consumer lag summed over the
/// assigned partitions; -1 until known), counts rebalances and tracks the
/// partitions this member owns.
pub struct LagContext {
    lag: AtomicI64,
    /// Partitions of the subscribed topics, as the statistics last listed
    /// them (-1 until known).
    known: AtomicI64,
    rebalances: AtomicU64,
    ownership: parking_lot::Mutex<Ownership>,
}

impl LagContext {
    fn ownership(&self) -> parking_lot::MutexGuard<'_, Ownership> {
        self.ownership.lock()
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(Arc<str>, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (Arc::from(e.topic()), e.partition()))
        .collect()
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.lag.store(lag, Ordering::Relaxed);
        let known = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0)
            .count();
        self.known.store(known as i64, Ordering::Relaxed);
    }
}

impl ConsumerContext for LagContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = partitions(tpl);
                tracing::info!(partitions = ?assigned, "partitions assigned");
                self.ownership().assign(assigned);
            }
            Rebalance::Revoke(tpl) => {
                let revoked = partitions(tpl);
                tracing::info!(partitions = ?revoked, "partitions revoked: their uncommitted batches will not be committed here");
                self.ownership().revoke(revoked);
            }
            Rebalance::Error(e) => tracing::warn!("rebalance error: {e}"),
        }
    }
}

pub struct KafkaSource {
    consumer: StreamConsumer<LagContext>,
    properties: BTreeMap<String, String>,
    topics: HashMap<String, Arc<str>>,
    /// Records that arrived while paused (already fetched before the pause;
    /// bounded by librdkafka's fetch queue), served first by the next batch.
    carry: VecDeque<SourceRecord>,
    /// Per partition, the offset after the last record received (since the
    /// last rebalance), to notice offsets the broker never returned.
    expected: HashMap<(Arc<str>, i32), i64>,
    seen_rebalances: u64,
    paused_at: Option<Instant>,
    last_poll: Instant,
    /// The offsets of the last commit, made durable (synchronously) by `finish`.
    last_commit: Option<Offsets>,
    /// Exactly-once: offsets are committed in this transaction.
    txn: Option<Arc<Transaction>>,
    /// Exactly-once: the rebalance count when the oldest record not yet
    /// committed was received (`None`: nothing held). A rebalance since
    /// then may have handed those partitions to another member, or back to
    /// this one from the committed offset: the batch must not commit.
    held_since: Option<u64>,
    /// Exactly-once: the offsets committed in transactions, per partition.
    txn_committed: HashMap<(Arc<str>, i32), i64>,
    /// The marks of the last commit (`finish` commits them again).
    last_marks: Marks,
    /// The rebalance count when the committed marks were last read.
    marks_read_at: u64,
    /// Commits a windowed pipeline's watermarks (`Marks`) as the offsets
    /// of a group of their own, `<group>.weir-watermarks`, that reads
    /// nothing: Kafka keeps them like any group's offsets (offset metadata
    /// would be the natural place, but not every broker keeps it). Made on
    /// first use (only windowed pipelines have marks); `None` until then
    /// or if it could not be made.
    marks: Option<BaseConsumer>,
    /// The group `<group>.weir-watermark-offsets`: the offsets each mark
    /// was committed with.
    marks_with: Option<BaseConsumer>,
    /// How to make them (the source's client settings and group).
    marks_config: rdkafka::ClientConfig,
}

/// Added to a watermark (µs since the epoch, possibly negative) to make it
/// a valid offset.
const MARK_BIAS: i64 = 1 << 62;

impl KafkaSource {
    pub fn new(
        brokers: &str,
        topics: &[String],
        group: &str,
        start: StartPosition,
        properties: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let mut config = client_config(
            brokers,
            &[
                // Bounds what a paused (unconsumed) source holds in memory.
                ("queued.max.messages.kbytes", "16384"),
                ("fetch.max.bytes", "8388608"),
                ("statistics.interval.ms", "5000"),
                // Records of open or aborted transactions are never read
                // (librdkafka's default, stated).
                ("isolation.level", "read_committed"),
            ],
            properties,
        );
        if let Some(id) = properties.get(crate::kafka::STATIC_MEMBER) {
            config.set(crate::kafka::STATIC_MEMBER, id);
        }
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match start {
                    StartPosition::Earliest => "earliest",
                    StartPosition::Latest => "latest",
                },
            );
        let consumer: StreamConsumer<LagContext> = config
            .create_with_context(LagContext {
                lag: AtomicI64::new(-1),
                known: AtomicI64::new(-1),
                rebalances: AtomicU64::new(0),
                ownership: Default::default(),
            })
            .map_err(|e| anyhow::anyhow!(scrub(e.to_string(), properties)))
            .context("creating the Kafka consumer")?;
        let mut marks_config = client_config(brokers, &[], properties);
        marks_config
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| anyhow::anyhow!(scrub(e.to_string(), properties)))
            .context("subscribing")?;
        Ok(KafkaSource {
            consumer,
            properties: properties.clone(),
            topics: topics
                .iter()
                .map(|t| (t.clone(), Arc::from(t.as_str())))
                .collect(),
            carry: VecDeque::new(),
            expected: HashMap::new(),
            seen_rebalances: 0,
            last_marks: Marks::new(),
            marks_read_at: 0,
            marks: None,
            marks_with: None,
            marks_config,
            paused_at: None,
            last_poll: Instant::now(),
            last_commit: None,
            txn: None,
            held_since: None,
            txn_committed: HashMap::new(),
        })
    }

    /// Commits offsets in `txn` (exactly-once) instead of to the group.
    pub fn with_transaction(mut self, txn: Arc<Transaction>) -> Self {
        self.txn = Some(txn);
        self
    }
}

pub fn to_record(topics: &mut HashMap<String, Arc<str>>, m: &BorrowedMessage<'_>) -> SourceRecord {
    {
        let topic = topics
            .entry(m.topic().to_string())
            .or_insert_with(|| Arc::from(m.topic()))
            .clone();
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        SourceRecord {
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            headers,
        }
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> anyhow::Result<Option<Vec<SourceRecord>>> {
        if !self.carry.is_empty() {
            // Records of partitions revoked meanwhile go to their new owner.
            {
                let ownership = self.consumer.context().ownership();
                self.carry
                    .retain(|r| ownership.is_assigned(&r.topic, r.partition));
            }
            let n = self.carry.len().min(max);
            if n > 0 {
                return Ok(Some(self.carry.drain(..n).collect()));
            }
        }
        // Broker outages surface as consumption errors; librdkafka
        // reconnects on its own, so they are logged and waited out.
        let idle = tokio::time::Instant::now() + IDLE_TICK;
        let first = loop {
            if tokio::time::Instant::now() >= idle {
                return Ok(Some(Vec::new()));
            }
            match self.recv_within(REPOLL_EVERY).await {
                None => continue,
                Some(Ok(r)) => break r,
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    anyhow::bail!("fatal consumer error: {code}");
                }
                Some(Err(e)) => {
                    tracing::warn!("kafka consumer: {}", scrub(e.to_string(), &self.properties));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.recv_within(left.min(REPOLL_EVERY)).await {
                None => continue,
                Some(Ok(r)) => batch.push(r),
                Some(Err(e)) => {
                    tracing::warn!("kafka consumer: {}", scrub(e.to_string(), &self.properties));
                    break;
                }
            }
        }
        Ok(Some(batch))
    }

    // Pausing stops taking records from librdkafka instead of calling
    // `rd_kafka_pause_partitions`: that purges the prefetched records and
    // re-fetches from the middle of a record batch on resume, which costs a
    // round trip and which tansu 0.6 answers with the *next* batch, silently
    // skipping records. Unconsumed, librdkafka's queue fills to
    // `queued.max.messages.kbytes` and fetching stops there by itself.
    async fn pause(&mut self) -> anyhow::Result<()> {
        self.paused_at = Some(Instant::now());
        tracing::warn!(
            partitions = self.consumer.assignment().map(|a| a.count()).unwrap_or(0),
            "paused the source partitions"
        );
        Ok(())
    }

    async fn keepalive(&mut self) -> anyhow::Result<()> {
        // The group only needs a poll within `max.poll.interval.ms`
        // (heartbeats run in librdkafka's own thread); each poll may take
        // one record, kept for the next batch.
        let every = if self.carry.len() < CARRY_SOFT_LIMIT {
            KEEPALIVE_POLL
        } else {
            KEEPALIVE_POLL_FULL
        };
        if self.last_poll.elapsed() >= every
            && let Some(Ok(r)) = self.recv_within(REPOLL_EVERY).await
        {
            self.carry.push_back(r);
        }
        Ok(())
    }

    fn lag(&self) -> Option<i64> {
        let lag = self.consumer.context().lag.load(Ordering::Relaxed);
        (lag >= 0).then_some(lag)
    }

    async fn resume(&mut self) -> anyhow::Result<()> {
        if let Some(since) = self.paused_at.take() {
            tracing::info!(
                partitions = self.consumer.assignment().map(|a| a.count()).unwrap_or(0),
                paused_for_ms = since.elapsed().as_millis() as u64,
                "resumed the source partitions"
            );
        }
        Ok(())
    }

    async fn commit(&mut self, offsets: &Offsets) -> anyhow::Result<()> {
        if let Some(txn) = self.txn.clone() {
            return self.commit_in_transaction(&txn, offsets).await;
        }
        let Some((kept, tpl)) = self.owned(offsets)? else {
            return Ok(());
        };
        // Asynchronous: a lost commit only means re-delivery (at-least-once),
        // and the next commit supersedes it. `finish` commits synchronously.
        let result = self.commit_with_retry(&tpl, CommitMode::Async).await;
        let last = self.last_commit.get_or_insert_with(Offsets::new);
        last.extend(kept);
        result
    }

    async fn commit_marked(&mut self, offsets: &Offsets, marks: &Marks) -> anyhow::Result<()> {
        if marks.is_empty() || self.txn.is_some() {
            return self.commit(offsets).await;
        }
        // The marks first, durably, with the offsets they go with: a mark
        // is restored only where the group's committed offset is exactly
        // the one committed with it (a crash between the two, a failed
        // commit, or offsets reset by hand since: no mark, windows are
        // rebuilt by replay as without one).
        // (`owned` records what it lets through: asked once.)
        let Some((kept, tpl)) = self.owned(offsets)? else {
            return Ok(());
        };
        let marks: Marks = marks
            .iter()
            .filter(|(tp, _)| kept.contains_key(*tp))
            .map(|(tp, m)| (tp.clone(), *m))
            .collect();
        self.commit_marks(&marks, &kept);
        self.last_marks.extend(marks);
        let result = self.commit_with_retry(&tpl, CommitMode::Async).await;
        let last = self.last_commit.get_or_insert_with(Offsets::new);
        last.extend(kept);
        result
    }

    fn take_committed_marks(&mut self) -> Option<Marks> {
        let rebalances = self.consumer.context().rebalances.load(Ordering::Relaxed);
        if rebalances == self.marks_read_at {
            return None;
        }
        self.marks_read_at = rebalances;
        let assigned = match self.consumer.assignment() {
            Ok(a) if a.count() > 0 => a,
            _ => return Some(Marks::new()),
        };
        let timeout = Duration::from_secs(10);
        let read = |tpl: Result<TopicPartitionList, KafkaError>| -> HashMap<(Arc<str>, i32), i64> {
            tpl.map(|c| {
                c.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) if o >= 0 => {
                            Some(((Arc::from(e.topic()), e.partition()), o))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
        };
        let committed = read(self.consumer.committed_offsets(assigned.clone(), timeout));
        let (Some(marks), Some(with)) = self.mark_clients() else {
            return Some(Marks::new());
        };
        let marks = read(marks.committed_offsets(assigned.clone(), timeout));
        let with = read(with.committed_offsets(assigned, timeout));
        Some(
            marks
                .into_iter()
                .filter(|(tp, _)| with.contains_key(tp) && with.get(tp) == committed.get(tp))
                .map(|(tp, o)| (tp, o - MARK_BIAS))
                .collect(),
        )
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(txn) = &self.txn {
            // Every acknowledged batch was committed in its transaction;
            // one left open holds nothing that was committed.
            return txn.abort("the pipeline stops").await;
        }
        // One synchronous attempt: if it fails (say, the partitions were just
        // revoked), the uncommitted tail is re-delivered, never lost.
        let last = self.last_commit.take().unwrap_or_default();
        let again = self.consumer.context().ownership().recommittable(&last);
        if again.is_empty() {
            return Ok(());
        }
        let marks: Marks = std::mem::take(&mut self.last_marks)
            .into_iter()
            .filter(|(tp, _)| again.contains_key(tp))
            .collect();
        self.commit_marks(&marks, &again);
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &again {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync) {
            tracing::warn!(
                "final offset commit failed, the last records may be re-delivered: {}",
                scrub(e.to_string(), &self.properties)
            );
        }
        Ok(())
    }

    fn assigned_partitions(&self) -> Option<usize> {
        Some(self.consumer.context().ownership().assigned())
    }

    fn known_partitions(&self) -> Option<usize> {
        usize::try_from(self.consumer.context().known.load(Ordering::Relaxed)).ok()
    }

    fn partitions(&self) -> Vec<String> {
        self.consumer.context().ownership().partitions()
    }
}

impl KafkaSource {
    /// The clients of the watermarks' groups (marks, and the offsets they
    /// were committed with), made on first use.
    fn mark_clients(&mut self) -> (Option<&BaseConsumer>, Option<&BaseConsumer>) {
        for (client, suffix) in [
            (&mut self.marks, "weir-watermarks"),
            (&mut self.marks_with, "weir-watermark-offsets"),
        ] {
            if client.is_none() {
                let mut config = self.marks_config.clone();
                let group = config.get("group.id").unwrap_or_default().to_string();
                config.set("group.id", format!("{group}.{suffix}"));
                match config.create::<BaseConsumer>() {
                    Ok(c) => *client = Some(c),
                    Err(e) => tracing::warn!(
                        "cannot make the client of the committed watermarks (windows may be emitted again after a restart): {}",
                        scrub(e.to_string(), &self.properties)
                    ),
                }
            }
        }
        (self.marks.as_ref(), self.marks_with.as_ref())
    }

    /// Commits `marks`, and the `offsets` they go with, to the watermarks'
    /// groups, synchronously; a failure only means windows rebuilt (and
    /// emitted again) after a restart.
    fn commit_marks(&mut self, marks: &Marks, offsets: &Offsets) {
        if marks.is_empty() {
            return;
        }
        let mut values = TopicPartitionList::new();
        let mut with = TopicPartitionList::new();
        for ((topic, partition), mark) in marks {
            let Some(offset) = offsets.get(&(topic.clone(), *partition)) else {
                continue;
            };
            let value = mark.saturating_add(MARK_BIAS).max(0);
            if values
                .add_partition_offset(topic, *partition, Offset::Offset(value))
                .is_err()
                || with
                    .add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .is_err()
            {
                return;
            }
        }
        let properties = self.properties.clone();
        let (Some(marks), Some(offsets_with)) = self.mark_clients() else {
            return;
        };
        for (client, tpl) in [(marks, &values), (offsets_with, &with)] {
            let result = client.commit(tpl, CommitMode::Sync);
            // Serve the client's queue (commit events pile up otherwise).
            let _ = client.poll(Duration::ZERO);
            if let Err(e) = result {
                tracing::warn!(
                    "committing the watermarks failed (windows may be emitted again after a restart): {}",
                    scrub(e.to_string(), &properties)
                );
                return;
            }
        }
    }

    /// Exactly-once: commits the open transaction with `offsets` as the
    /// group's offsets, unless a rebalance came between reading and
    /// committing, or a partition was revoked: then the transaction is
    /// aborted and the pipeline rewinds ([`Transaction::rewind`]).
    async fn commit_in_transaction(
        &mut self,
        txn: &Arc<Transaction>,
        offsets: &Offsets,
    ) -> anyhow::Result<()> {
        let rebalances = self.consumer.context().rebalances.load(Ordering::Relaxed);
        let (kept, dropped) = self.consumer.context().ownership().committable(offsets);
        let why = if !dropped.is_empty() {
            Some(format!(
                "partitions {:?} were revoked while their records were being processed",
                dropped
                    .iter()
                    .map(|((t, p), _)| format!("{t}/{p}"))
                    .collect::<Vec<_>>()
            ))
        } else if self.held_since.is_some_and(|at| at != rebalances) {
            Some("the consumer group rebalanced while records were being processed".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            return Err(txn.rewind(why).await);
        }
        if kept.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &kept {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        let group = self
            .consumer
            .group_metadata()
            .context("the consumer has no group metadata to commit in a transaction")?;
        txn.commit(tpl, group).await?;
        self.txn_committed.extend(kept);
        // Records received after the committed ones are still held (they
        // were all received since `rebalances`, checked above).
        let all_committed = self.expected.iter().all(|(p, next)| {
            self.txn_committed
                .get(p)
                .is_some_and(|&committed| committed >= *next)
        });
        self.held_since = (!all_committed).then_some(rebalances);
        Ok(())
    }

    /// The offsets of `offsets` on partitions this member still owns (see
    /// [`Ownership`]); `None` when nothing is left to commit.
    fn owned(&self, offsets: &Offsets) -> anyhow::Result<Option<(Offsets, TopicPartitionList)>> {
        let (keep, dropped) = self.consumer.context().ownership().committable(offsets);
        for ((topic, partition), offset) in dropped {
            tracing::debug!(
                topic = %topic,
                partition,
                offset,
                "offset not committed: the partition was revoked since its records were read, \
                 or this member already committed past it (records re-read after a rebalance)"
            );
        }
        if keep.is_empty() {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &keep {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        Ok(Some((keep, tpl)))
    }

    /// The next message, or `None` if none arrived within `wait`.
    async fn recv_within(&mut self, wait: Duration) -> Option<Result<SourceRecord, KafkaError>> {
        self.last_poll = Instant::now();
        match tokio::time::timeout(wait, self.consumer.recv()).await {
            Ok(Ok(m)) => {
                let r = to_record(&mut self.topics, &m);
                drop(m);
                self.check_gap(&r);
                if self.txn.is_some() && self.held_since.is_none() {
                    self.held_since =
                        Some(self.consumer.context().rebalances.load(Ordering::Relaxed));
                }
                self.consumer
                    .context()
                    .ownership()
                    .received(&r.topic, r.partition, r.offset);
                Some(Ok(r))
            }
            Ok(Err(e)) => Some(Err(e)),
            Err(_) => None,
        }
    }

    /// Warns when a partition's offsets jump: on a plain topic that means
    /// the broker skipped records (compaction and transaction markers also
    /// leave gaps, harmlessly).
    fn check_gap(&mut self, r: &SourceRecord) {
        let rebalances = self.consumer.context().rebalances.load(Ordering::Relaxed);
        if rebalances != self.seen_rebalances {
            self.seen_rebalances = rebalances;
            self.expected.clear();
        }
        let key = (r.topic.clone(), r.partition);
        if let Some(&expected) = self.expected.get(&key)
            && r.offset > expected
        {
            tracing::warn!(
                topic = %r.topic,
                partition = r.partition,
                "the broker returned offset {} after {}: offsets {expected}..{} were skipped \
                 (expected on compacted or transactional topics; otherwise a broker fault)",
                r.offset,
                expected - 1,
                r.offset - 1,
            );
        }
        self.expected.insert(key, r.offset + 1);
    }

    async fn commit_with_retry(
        &self,
        tpl: &TopicPartitionList,
        mode: CommitMode,
    ) -> anyhow::Result<()> {
        // A broker that is restarting refuses commits for a while: retry
        // with backoff (the records stay unacknowledged meanwhile).
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.consumer.commit(tpl, mode) {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() < COMMIT_RETRY_FOR => {
                    tracing::warn!(
                        "committing offsets failed, retrying in {backoff:?}: {}",
                        scrub(e.to_string(), &self.properties)
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(anyhow::anyhow!(scrub(e.to_string(), &self.properties)))
                        .context("committing offsets");
                }
            }
        }
    }
}
