//! The rows an interval join keeps: every admitted row until the watermark
//! is the join's reach past it, so a later row of the other side still
//! finds it. A row behind the watermark by more than the allowed lateness
//! is late (its pairs may be gone); the offsets stop below the oldest row
//! kept, so a restart rebuilds the rows by replay.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;

use super::spec::JoinSpec;
use crate::record::{Offsets, SourceRecord};
use crate::window::Watermarks;
use crate::window::state::{fmt_us, micros, no_event_time};
use crate::window::watermark::PartitionId;

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
}

/// The rows one interval join keeps.
pub struct JoinState {
    spec: JoinSpec,
    time_index: usize,
    lateness_us: i64,
    watermarks: Watermarks,
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

    pub fn watermark(&self) -> i64 {
        self.watermarks.current()
    }

    /// The source is assigned `count` partitions (None: it cannot say).
    pub fn expect_partitions(&mut self, count: Option<usize>, now: Instant) {
        self.watermarks.expect(count, now);
        self.watermarks.advance(now);
    }

    /// Sorts the rows of `batch` (`records[i]` is row i's record): late,
    /// untimed, or joining; the watermark advances row by row.
    pub fn admit(
        &mut self,
        batch: &RecordBatch,
        records: &[&SourceRecord],
        now: Instant,
    ) -> Result<Admitted, String> {
        let times = micros(batch.column(self.time_index))?;
        let mut admitted = Admitted::default();
        for (row, record) in records.iter().enumerate() {
            if times.is_null(row) {
                admitted
                    .untimed
                    .push((row, no_event_time(&self.spec.time_column)));
                continue;
            }
            let t = times.value(row);
            let watermark = self.watermarks.current();
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
            self.watermarks
                .observe(&(record.topic.clone(), record.partition), t, now);
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

    /// Rows older than the watermark less the lateness and the reach: every
    /// row admitted from now on is too far from them to pair.
    fn evict(&mut self) -> Result<(), String> {
        let watermark = self.watermarks.current();
        if watermark == i64::MIN {
            return Ok(());
        }
        let cutoff = watermark
            .saturating_sub(self.lateness_us)
            .saturating_sub(self.spec.reach_us());
        let mut i = 0;
        while i < self.kept.len() {
            let k = &mut self.kept[i];
            let keep: Vec<bool> = k.times.iter().map(|&t| t >= cutoff).collect();
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

    use datafusion::arrow::array::TimestampMicrosecondArray;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn record(offset: i64) -> SourceRecord {
        SourceRecord {
            key: None,
            payload: None,
            topic: Arc::from("t"),
            partition: 0,
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
        let admitted = state.admit(&first, &refs, now).unwrap();
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
        let admitted = state.admit(&late, &refs, now).unwrap();
        assert_eq!(admitted.late.len(), 1);
        assert_eq!(admitted.rows, vec![1]);
    }
}
