//! Transforms of several micro-batches at once ("all cores per pipeline").
//!
//! The pipeline loop reads and decodes batches in consumption order and
//! hands each to the next of `n` workers — the query planned once per
//! worker (a planned query runs one batch at a time), run as a task of its
//! own on the runtime's threads. Results are taken back strictly in the
//! order the batches were read, so the sink sees batches in consumption
//! order (per-partition output order holds) and commits stay contiguous.
//! Guest calls stay bounded by the tenant's slots (`max_concurrent_calls`,
//! the fair share); batches waiting here count against
//! `max_in_flight_batches` with those handed to the sink.

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;

use super::encode::RecordEncoder;
use super::isolate::{Isolated, run_isolating};
use super::query::PlannedQuery;
use super::record::{DeadLetter, Offsets, SourceRecord};
use super::sink::RecordLimit;
use crate::tenant::Tenant;

/// A batch being transformed by a worker, with what delivering it needs.
pub struct Transforming {
    task: AbortOnDrop,
    /// The decoded batch, to run it again in order when the worker's run
    /// found no capacity or an open breaker that holds the pipeline.
    pub batch: RecordBatch,
    pub records: Vec<SourceRecord>,
    /// Index into `records` of each row of `batch`.
    pub rows: Vec<usize>,
    /// Records that did not decode.
    pub letters: Vec<DeadLetter>,
    pub offsets: Offsets,
    /// Calls per function before the run (the breakers' "was it called").
    pub calls_before: Vec<u64>,
}

/// Aborts the worker's task when a pipeline stops with batches unfinished
/// (they were neither sent nor committed: replayed after a restart).
struct AbortOnDrop(Option<tokio::task::JoinHandle<Isolated>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// The workers of one pipeline and the batches they hold, oldest first.
pub struct Workers {
    /// The pipeline's tenant: each worker's polls take one of its slots.
    tenant: Arc<Tenant>,
    queries: Vec<Arc<PlannedQuery>>,
    next: usize,
    pending: VecDeque<Transforming>,
}

/// What a worker's task needs besides the batch.
#[derive(Clone)]
pub struct Encoding {
    pub encoder: Arc<RecordEncoder>,
    pub limit: Option<RecordLimit>,
}

impl Workers {
    /// `queries`: one planned query per worker (at least two; with one, the
    /// pipeline transforms in its own loop and needs no workers).
    pub fn new(tenant: Arc<Tenant>, queries: Vec<Arc<PlannedQuery>>) -> Self {
        Workers {
            tenant,
            queries,
            next: 0,
            pending: VecDeque::new(),
        }
    }

    pub fn count(&self) -> usize {
        self.queries.len()
    }

    /// New plans (new UDF versions): batches already handed out finish on
    /// the versions they started with.
    pub fn replace(&mut self, queries: Vec<Arc<PlannedQuery>>) {
        self.queries = queries;
        self.next = 0;
    }

    /// Drops every batch handed out (their tasks are aborted): an
    /// exactly-once pipeline rewinds and reads them again.
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.queries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether the oldest batch is done (taking it will not wait).
    pub fn front_is_done(&self) -> bool {
        self.pending
            .front()
            .is_some_and(|t| t.task.0.as_ref().is_none_or(|h| h.is_finished()))
    }

    /// Hands `job.batch` to the next worker. Call only when not full: the
    /// worker's previous batch is then done or taken.
    pub fn start(&mut self, mut job: Transforming, encoding: Encoding) {
        let query = self.queries[self.next % self.queries.len()].clone();
        self.next = self.next.wrapping_add(1);
        let batch = job.batch.clone();
        job.task = AbortOnDrop(Some(tokio::spawn(self.tenant.gate(async move {
            let finish = move |batches: &[RecordBatch]| {
                crate::encode::encode_checked(&encoding.encoder, encoding.limit.as_ref(), batches)
            };
            run_isolating(&query, batch, &finish).await
        }))));
        self.pending.push_back(job);
    }

    /// The oldest batch and its result, waiting for it if need be.
    pub async fn take(&mut self) -> Option<anyhow::Result<(Transforming, Isolated)>> {
        let mut job = self.pending.pop_front()?;
        let task = job.task.0.take()?;
        Some(
            task.await
                .map(|isolated| (job, isolated))
                .map_err(|e| anyhow::anyhow!("a transform worker stopped: {e}")),
        )
    }
}

impl Transforming {
    pub fn new(
        batch: RecordBatch,
        records: Vec<SourceRecord>,
        rows: Vec<usize>,
        letters: Vec<DeadLetter>,
        offsets: Offsets,
        calls_before: Vec<u64>,
    ) -> Self {
        Transforming {
            task: AbortOnDrop(None),
            batch,
            records,
            rows,
            letters,
            offsets,
            calls_before,
        }
    }
}
