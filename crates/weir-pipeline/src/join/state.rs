//! The rows an interval join keeps: every admitted row until the watermark
//! is the join's reach past it, so a later row of the other side still
//! finds it. A row behind the watermark by more than the allowed lateness
//! is late (its pairs may be gone); the offsets stop below the oldest row
//! kept, so a restart rebuilds the rows by replay.
//!
//! A joins stage of a repartitioned pipeline (`repartition.rs`, records
//! keyed by the column both sides equate) keeps one watermark per internal
//! partition over the source partitions, like a windows stage; its rows
//! leave with their internal partition when it is revoked (the new owner
//! rebuilds them from the committed offsets).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;

use super::spec::JoinSpec;
use crate::record::{Offsets, SourceRecord};
use crate::window::state::{fmt_us, micros, no_event_time};
use crate::window::watermark::PartitionId;
use crate::window::{Origins, Watermarks};

/// Rows kept, as admitted (one batch's worth).
struct Kept {
    batch: RecordBatch,
    times: Vec<i64>,
    /// Each row's (topic, partition) and offset.
    origins: Vec<(PartitionId, i64)>,
    bytes: usize,
}

/// What [`JoinState::admit`] did with a batch's rows.
#[derive(Debug, Default)]
pub struct Admitted {
    /// Rows behind the watermark by more than the allowed lateness: (row, why).
    pub late: Vec<(usize, String)>,
    /// Rows without an event time: (row, why).
    pub untimed: Vec<(usize, String)>,
    /// The rows that join, in order.
    pub rows: Vec<usize>,
    /// A joins stage: rows admitted before (a copy on the internal topic)
    /// or of an internal partition revoked meanwhile, left out.
    pub repeated: usize,
    /// A joins stage: watermark marks (`repartition::Marks`).
    pub marks: usize,
}

/// The rows one interval join keeps.
pub struct JoinState {
    spec: JoinSpec,
    time_index: usize,
    lateness_us: i64,
    watermarks: Watermarks,
    config: crate::config::WatermarkConfig,
    /// A joins stage: partitions of the source topic (what each internal
    /// partition's watermark waits for).
    sources: Option<usize>,
    /// A joins stage: one watermark per internal partition.
    internal: BTreeMap<i32, Watermarks>,
    /// A joins stage: per (internal partition, source partition), the last
    /// source offset admitted.
    admitted_up_to: HashMap<(i32, i32), i64>,
    kept: VecDeque<Kept>,
    bytes: usize,
    rows: usize,
}

impl JoinState {
    /// `schema` is the query's source schema the time column belongs to.
    pub fn new(
        spec: JoinSpec,
        schema: &SchemaRef,
        config: &crate::config::WatermarkConfig,
    ) -> Result<Self, String> {
        let time_index = schema
            .index_of(&spec.time_column)
            .map_err(|_| format!("no column `{}`", spec.time_column))?;
        Ok(JoinState {
            spec,
            time_index,
            lateness_us: (config.allowed_lateness_ms as i64).saturating_mul(1000),
            watermarks: Watermarks::new(config.max_out_of_order_ms, config.idle_partition_ms),
            config: config.clone(),
            sources: None,
            internal: BTreeMap::new(),
            admitted_up_to: HashMap::new(),
            kept: VecDeque::new(),
            bytes: 0,
            rows: 0,
        })
    }

    pub fn spec(&self) -> &JoinSpec {
        &self.spec
    }

    /// Bytes of the rows kept (what `state_bytes` bounds).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Rows kept.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The watermark (a joins stage: the least of its internal
    /// partitions').
    pub fn watermark(&self) -> i64 {
        match self.sources {
            Some(_) => self
                .internal
                .values()
                .map(Watermarks::current)
                .min()
                .unwrap_or(i64::MIN),
            None => self.watermarks.current(),
        }
    }

    /// The source is assigned `count` partitions (None: it cannot say).
    pub fn expect_partitions(&mut self, count: Option<usize>, now: Instant) {
        self.watermarks.expect(count, now);
        self.watermarks.advance(now);
    }

    /// A joins stage: the source topic has `count` partitions, which each
    /// internal partition's watermark waits for.
    pub fn expect_sources(&mut self, count: usize, now: Instant) {
        self.sources = Some(count);
        for w in self.internal.values_mut() {
            w.advance(now);
        }
    }

    /// The watermark of internal partition `p` (a joins stage), or the
    /// pipeline's.
    fn watermarks_of(&mut self, p: Option<i32>, now: Instant) -> &mut Watermarks {
        let (config, sources) = (&self.config, self.sources);
        match p {
            Some(p) => self.internal.entry(p).or_insert_with(|| {
                let mut w = Watermarks::new(config.max_out_of_order_ms, config.idle_partition_ms);
                w.expect(sources, now);
                w
            }),
            None => &mut self.watermarks,
        }
    }

    /// A joins stage: internal partition `p` was revoked; its rows and
    /// watermark go (its new owner rebuilds them from the committed
    /// offsets).
    pub fn revoke(&mut self, p: i32) -> Result<(), String> {
        self.internal.remove(&p);
        self.admitted_up_to
            .retain(|(internal, _), _| *internal != p);
        self.retain(|(_, partition), _| *partition != p)
    }

    /// Sorts the rows of `batch` (`records[i]` is row i's record): late,
    /// untimed, or joining; the watermark advances row by row. A joins
    /// stage's rows (`origins`) are watermarked per internal partition,
    /// and a row whose source offset was admitted already is a copy.
    pub fn admit(
        &mut self,
        batch: &RecordBatch,
        records: &[&SourceRecord],
        origins: Option<&Origins>,
        now: Instant,
    ) -> Result<Admitted, String> {
        let times = micros(batch.column(self.time_index))?;
        let mut admitted = Admitted::default();
        for (row, record) in records.iter().enumerate() {
            let mut source = (record.topic.clone(), record.partition);
            let scope = origins.map(|_| record.partition);
            if let Some(o) = origins {
                source = (o.topic.clone(), o.partitions[row]);
                let owned = o.owned.contains(&record.partition);
                if o.offsets[row] == crate::repartition::MARK_OFFSET {
                    admitted.marks += 1;
                    if owned && !times.is_null(row) {
                        self.watermarks_of(scope, now)
                            .observe(&source, times.value(row), now);
                    }
                    continue;
                }
                let last = self
                    .admitted_up_to
                    .entry((record.partition, o.partitions[row]))
                    .or_insert(i64::MIN);
                if !owned || o.offsets[row] <= *last {
                    admitted.repeated += 1;
                    continue;
                }
                *last = o.offsets[row];
            }
            if times.is_null(row) {
                admitted
                    .untimed
                    .push((row, no_event_time(&self.spec.time_column)));
                continue;
            }
            let t = times.value(row);
            let watermark = self.watermarks_of(scope, now).current();
            if watermark != i64::MIN && t.saturating_add(self.lateness_us) < watermark {
                admitted.late.push((
                    row,
                    format!(
                        "late: event time {} is behind the watermark {} by more than the allowed lateness; the rows it would join may be gone",
                        fmt_us(t),
                        fmt_us(watermark)
                    ),
                ));
                continue;
            }
            self.watermarks_of(scope, now).observe(&source, t, now);
            admitted.rows.push(row);
        }
        Ok(admitted)
    }

    /// The rows kept, for the query's side that is not the new batch.
    pub fn history(&self) -> Vec<RecordBatch> {
        self.kept.iter().map(|k| k.batch.clone()).collect()
    }

    /// Keeps `batch` (rows that joined; `records[i]` is row i's record),
    /// then lets go of rows no future row can pair with.
    pub fn keep(&mut self, batch: RecordBatch, records: &[&SourceRecord]) -> Result<(), String> {
        if batch.num_rows() > 0 {
            let times = micros(batch.column(self.time_index))?;
            let times: Vec<i64> = (0..batch.num_rows())
                .map(|i| {
                    if times.is_null(i) {
                        i64::MIN
                    } else {
                        times.value(i)
                    }
                })
                .collect();
            let origins = records
                .iter()
                .map(|r| ((r.topic.clone(), r.partition), r.offset))
                .collect();
            let bytes = batch.get_array_memory_size();
            self.bytes += bytes;
            self.rows += batch.num_rows();
            self.kept.push_back(Kept {
                batch,
                times,
                origins,
                bytes,
            });
        }
        self.evict()
    }

    /// Rows older than the watermark (of their internal partition, in a
    /// joins stage) less the lateness and the reach: every row admitted
    /// from now on is too far from them to pair.
    fn evict(&mut self) -> Result<(), String> {
        let behind = self.lateness_us.saturating_add(self.spec.reach_us());
        let cutoff = |w: i64| {
            if w == i64::MIN {
                i64::MIN
            } else {
                w.saturating_sub(behind)
            }
        };
        let cutoffs: BTreeMap<i32, i64> = self
            .internal
            .iter()
            .map(|(p, w)| (*p, cutoff(w.current())))
            .collect();
        let single = cutoff(self.watermarks.current());
        let staged = self.sources.is_some();
        self.retain(|(_, partition), t| {
            let c = if staged {
                cutoffs.get(partition).copied().unwrap_or(i64::MIN)
            } else {
                single
            };
            t >= c
        })
    }

    /// Keeps the rows for which `keep((topic, partition), event time)`.
    fn retain(&mut self, keep: impl Fn(&PartitionId, i64) -> bool) -> Result<(), String> {
        let mut i = 0;
        while i < self.kept.len() {
            let k = &mut self.kept[i];
            let keep: Vec<bool> = k
                .times
                .iter()
                .zip(&k.origins)
                .map(|(&t, (tp, _))| keep(tp, t))
                .collect();
            let left = keep.iter().filter(|&&b| b).count();
            if left == k.times.len() {
                i += 1;
                continue;
            }
            self.bytes -= k.bytes;
            self.rows -= k.times.len();
            if left == 0 {
                self.kept.remove(i);
                continue;
            }
            k.batch = filter_record_batch(&k.batch, &BooleanArray::from(keep.clone()))
                .map_err(|e| e.to_string())?;
            let mut it = keep.iter();
            k.times.retain(|_| *it.next().unwrap_or(&false));
            let mut it = keep.iter();
            k.origins.retain(|_| *it.next().unwrap_or(&false));
            k.bytes = k.batch.get_array_memory_size();
            self.bytes += k.bytes;
            self.rows += left;
            i += 1;
        }
        Ok(())
    }

    /// The offsets safe to commit after a batch whose records end at
    /// `next`: per partition, never past the oldest row kept.
    pub fn commit_floor(&self, mut next: Offsets) -> Offsets {
        let mut oldest: BTreeMap<&PartitionId, i64> = BTreeMap::new();
        for k in &self.kept {
            for (tp, offset) in &k.origins {
                let e = oldest.entry(tp).or_insert(*offset);
                *e = (*e).min(*offset);
            }
        }
        for (tp, floor) in oldest {
            let e = next.entry(tp.clone()).or_insert(floor);
            *e = (*e).min(floor);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{TimestampMicrosecondArray, UInt32Array};
    use datafusion::arrow::compute::take_record_batch;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn record(offset: i64) -> SourceRecord {
        record_of(0, offset)
    }

    fn record_of(partition: i32, offset: i64) -> SourceRecord {
        SourceRecord {
            key: None,
            payload: None,
            topic: Arc::from("t"),
            partition,
            offset,
            timestamp: None,
            headers: Vec::new(),
        }
    }

    fn batch(times: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        )]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(TimestampMicrosecondArray::from(times.to_vec()))],
        )
        .unwrap()
    }

    #[test]
    fn rows_stay_for_the_reach_and_hold_the_offsets_back() {
        let spec = JoinSpec {
            time_column: "ts".into(),
            lower_us: -5,
            upper_us: 10,
        };
        let config = crate::config::WatermarkConfig {
            max_out_of_order_ms: 0,
            idle_partition_ms: 0,
            allowed_lateness_ms: 0,
        };
        let first = batch(&[100, 200]);
        let mut state = JoinState::new(spec, &first.schema(), &config).unwrap();
        let now = Instant::now();
        let records = [record(0), record(1)];
        let refs: Vec<&SourceRecord> = records.iter().collect();
        let admitted = state.admit(&first, &refs, None, now).unwrap();
        assert_eq!(admitted.rows, vec![0, 1]);
        state.keep(first, &refs).unwrap();
        // The watermark is 200: the row at 100 is 100 µs behind, past the
        // reach (10): gone, and the offsets may pass it.
        assert_eq!(state.rows(), 1);
        let floor = state.commit_floor(Offsets::from([((Arc::from("t"), 0), 2)]));
        assert_eq!(floor[&(Arc::from("t"), 0)], 1);
        // A row at 150 is late: what it would join may be gone.
        let late = batch(&[150, 205]);
        let records = [record(2), record(3)];
        let refs: Vec<&SourceRecord> = records.iter().collect();
        let admitted = state.admit(&late, &refs, None, now).unwrap();
        assert_eq!(admitted.late.len(), 1);
        assert_eq!(admitted.rows, vec![1]);
    }

    /// A joins stage: each internal partition has its own watermark (one
    /// far ahead does not make the other's rows late), a copy of a source
    /// record is admitted once, a mark moves only the watermark, and a
    /// revoked partition's rows go.
    #[test]
    fn a_joins_stage_keeps_its_internal_partitions_apart() {
        let spec = JoinSpec {
            time_column: "ts".into(),
            lower_us: 0,
            upper_us: 10,
        };
        let config = crate::config::WatermarkConfig {
            max_out_of_order_ms: 0,
            idle_partition_ms: 0,
            allowed_lateness_ms: 0,
        };
        let rows = batch(&[1000, 100, 100, 1000]);
        let mut state = JoinState::new(spec, &rows.schema(), &config).unwrap();
        let now = Instant::now();
        state.expect_sources(1, now);
        // Internal partition 1 is at 1000; partition 0's row at 100 is not
        // late; the third row is a copy of the second; the fourth a mark.
        let records = [
            record_of(1, 0),
            record_of(0, 0),
            record_of(0, 1),
            record_of(0, 2),
        ];
        let origins = Origins {
            topic: Arc::from("source"),
            partitions: vec![0, 0, 0, 0],
            offsets: vec![7, 5, 5, crate::repartition::MARK_OFFSET],
            owned: [0, 1].into(),
        };
        let refs: Vec<&SourceRecord> = records.iter().collect();
        let admitted = state.admit(&rows, &refs, Some(&origins), now).unwrap();
        assert_eq!(admitted.rows, vec![0, 1]);
        assert_eq!((admitted.repeated, admitted.marks), (1, 1));
        assert!(admitted.late.is_empty());
        // The mark moved partition 0 to 1000: its row at 100 is past reach.
        let kept = take_record_batch(&rows, &UInt32Array::from(vec![0, 1])).unwrap();
        state.keep(kept, &refs[..2]).unwrap();
        assert_eq!(state.rows(), 1);
        state.revoke(1).unwrap();
        assert_eq!(state.rows(), 0);
    }
}
