//! Open windows: every window the watermark has not passed yet, with the
//! offsets it holds back. A window holds either its groups' running
//! aggregate state ([`super::groups`], when the query's aggregate can be
//! folded incrementally) or its records as decoded rows (any aggregate,
//! WebAssembly ones included, then runs once over a window's rows).
//!
//! Without a checkpoint, a source offset is committed only below the
//! oldest record of an open window ([`WindowState::commit_floor`]), so
//! after a crash the open windows are rebuilt by replaying from the
//! committed offsets. Folded windows are also checkpointed
//! ([`WindowState::checkpoint`], kept by `changelog.rs`): offsets are then
//! committed up to the last checkpoint, and a restart restores it and
//! replays only what came after.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{
    Array, ArrayRef, RecordBatch, TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};

use super::groups::{Aggregation, Groups};
use super::spec::{WindowKind, WindowSpec, windowed_schema};
use super::watermark::{PartitionId, Watermarks};
use crate::record::{Marks, Offsets, SourceRecord};

/// One window not yet emitted.
#[derive(Default)]
struct Open {
    end: i64,
    /// Rows of the decoded source schema, and the record of each row
    /// (when the window keeps records).
    batches: Vec<RecordBatch>,
    records: Vec<SourceRecord>,
    /// The groups' aggregate state (when the window folds its rows).
    groups: Option<Groups>,
    /// Per partition, the offset of the oldest record in the window.
    floor: HashMap<PartitionId, i64>,
    bytes: usize,
}

impl Open {
    fn hold(&mut self, record: &SourceRecord) {
        let e = self
            .floor
            .entry((record.topic.clone(), record.partition))
            .or_insert(record.offset);
        *e = (*e).min(record.offset);
    }
}

/// Windows whose end the watermark passed, ready for the query: their rows
/// with `window_start` and `window_end` and the record of every row, or
/// (folded windows) the aggregate's output rows, each described by a
/// record of its own for a dead letter.
pub struct Closed {
    pub batch: RecordBatch,
    pub records: Vec<SourceRecord>,
    pub windows: usize,
    /// `batch` holds the aggregate's output (folded windows).
    pub aggregated: bool,
}

/// What [`WindowState::admit`] did with a batch's rows.
#[derive(Debug, Default)]
pub struct Admitted {
    /// Rows every window of which was already emitted: (row, why).
    pub late: Vec<(usize, String)>,
    /// Rows without an event time: (row, why).
    pub untimed: Vec<(usize, String)>,
    /// Rows of a windows stage admitted before (a copy on the internal
    /// topic), or replayed after a restart into windows emitted before it:
    /// left out.
    pub repeated: usize,
    /// A windows stage's watermark marks (`repartition::Marks`): rows that
    /// only move an internal partition's watermark.
    pub marks: usize,
    /// Folded windows: the admitted rows with `window_start` and
    /// `window_end` (a row once per window it is in), for the query's
    /// stage before its aggregate, then [`WindowState::fold`]; one part per
    /// internal partition of a windows stage.
    pub windowed: Vec<Windowed>,
}

/// Where each row of a windows stage's batch came from
/// (`repartition.rs`): its source topic's partition and offset.
#[derive(Debug)]
pub struct Origins {
    pub topic: Arc<str>,
    pub partitions: Vec<i32>,
    pub offsets: Vec<i64>,
    /// The internal partitions this member owns: a record of another one
    /// (fetched before it was revoked) is its new owner's.
    pub owned: std::collections::BTreeSet<i32>,
}

/// Rows to fold, and the batch row each came from.
#[derive(Debug)]
pub struct Windowed {
    /// Which windows they fold into (see [`WindowState::fold`]).
    pub tag: String,
    pub batch: RecordBatch,
    pub rows: Vec<usize>,
}

/// The open windows of one pipeline.
pub struct WindowState {
    spec: WindowSpec,
    lateness_us: i64,
    watermarks: Watermarks,
    schema: SchemaRef,
    windowed: SchemaRef,
    time_index: usize,
    /// Session windows: the key column.
    key_index: Option<usize>,
    /// Open windows by (start, key); the key is "" but for sessions.
    open: BTreeMap<(i64, String), Open>,
    /// Sessions: the starts of each key's open sessions.
    sessions: HashMap<String, Vec<i64>>,
    bytes: usize,
    /// The query's aggregate, when windows fold their rows into it.
    aggregation: Option<Aggregation>,
    /// A windows stage: per (internal partition, source partition), the
    /// last source offset admitted — a record written again to the
    /// internal topic is recognised and admitted once.
    admitted_up_to: HashMap<(i32, i32), i64>,
    /// A windows stage: one watermark per internal partition (over the
    /// source partitions whose records it carries, in order within it):
    /// the partition's windows close by it, and move with the partition to
    /// another member, which rebuilds it from the replay.
    internal: HashMap<i32, Watermarks>,
    /// What a new internal partition's watermark waits for.
    sources: Option<usize>,
    /// The watermark committed before a restart (per internal partition
    /// for a windows stage, under key -1 otherwise): a replayed record
    /// whose windows it passed was emitted (or set aside) then.
    restored: HashMap<i32, i64>,
    config: crate::config::WatermarkConfig,
    /// Per consumed (topic, partition), the offset after the last record
    /// admitted (what a checkpoint covers).
    seen: HashMap<PartitionId, i64>,
    /// Restored from a checkpoint: records before these offsets are in the
    /// restored state, and are not admitted again.
    covered: HashMap<PartitionId, i64>,
    /// The offsets the last written checkpoint covers: commits may go up
    /// to them, past open windows' records.
    checkpointed: Offsets,
    /// Counts changes to the state (a checkpoint of an unchanged state is
    /// not taken again).
    changes: u64,
}

/// One scope's checkpoint ([`WindowState::checkpoint`]).
pub struct ScopeCheckpoint {
    /// `None`: the pipeline's; `Some(p)`: internal partition `p`'s.
    pub scope: Option<i32>,
    pub bytes: Vec<u8>,
    /// What it covers, to commit once it is written, with its watermark
    /// (every window it passed was emitted by then).
    pub covered: Offsets,
    pub watermark: i64,
}

/// Why a row without an event time is set aside (stage `event_time`).
pub(crate) fn no_event_time(column: &str) -> String {
    format!("the record has no event time (`{column}` is NULL)")
}

pub(crate) fn micros(column: &ArrayRef) -> Result<TimestampMicrosecondArray, String> {
    let cast = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))
        .map_err(|e| e.to_string())?;
    cast.as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .cloned()
        .ok_or_else(|| "not a timestamp".to_string())
}

fn record_bytes(r: &SourceRecord) -> usize {
    std::mem::size_of::<SourceRecord>()
        + r.payload_len()
        + r.headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

impl WindowState {
    /// `schema` is the decoded source schema the time column belongs to.
    pub fn new(
        spec: WindowSpec,
        schema: SchemaRef,
        config: &crate::config::WatermarkConfig,
    ) -> Result<Self, String> {
        let time_index = schema
            .index_of(&spec.time_column)
            .map_err(|_| format!("no column `{}`", spec.time_column))?;
        let key_index = match &spec.key_column {
            Some(k) => Some(schema.index_of(k).map_err(|_| format!("no column `{k}`"))?),
            None => None,
        };
        Ok(WindowState {
            key_index,
            sessions: HashMap::new(),
            lateness_us: (config.allowed_lateness_ms as i64).saturating_mul(1000),
            watermarks: Watermarks::new(config.max_out_of_order_ms, config.idle_partition_ms),
            windowed: windowed_schema(&schema),
            schema,
            time_index,
            spec,
            open: BTreeMap::new(),
            bytes: 0,
            aggregation: None,
            admitted_up_to: HashMap::new(),
            internal: HashMap::new(),
            sources: None,
            restored: HashMap::new(),
            config: config.clone(),
            seen: HashMap::new(),
            covered: HashMap::new(),
            checkpointed: Offsets::new(),
            changes: 0,
        })
    }

    /// Windows fold their rows into `aggregation` rather than keep them.
    pub fn folding(mut self, aggregation: Aggregation) -> Self {
        self.aggregation = Some(aggregation);
        self
    }

    /// Whether windows fold their rows (or keep records).
    pub fn folds(&self) -> bool {
        self.aggregation.is_some()
    }

    /// Bytes of the open windows' state (what `state_bytes` bounds).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    pub fn watermark(&self) -> i64 {
        // A windows stage: the least advanced of its internal partitions.
        self.internal
            .values()
            .map(Watermarks::current)
            .filter(|w| *w != i64::MIN)
            .min()
            .unwrap_or_else(|| self.watermarks.current())
    }

    fn closed(&self, end: i64, watermark: i64) -> bool {
        end.saturating_add(self.lateness_us) <= watermark
    }

    /// Puts each row of `batch` (decoded; `records[i]` is row i's record)
    /// into its open windows, advancing the watermark row by row in arrival
    /// order. Rows whose windows were all emitted already are late.
    /// A windows stage's rows (`origins`) are watermarked per partition of
    /// the source topic they came from, and a row whose source offset was
    /// admitted already is a copy: counted in `repeated`, not admitted.
    pub fn admit(
        &mut self,
        batch: &RecordBatch,
        records: &[&SourceRecord],
        origins: Option<&Origins>,
        now: Instant,
    ) -> Result<Admitted, String> {
        let times = micros(batch.column(self.time_index))?;
        let keys = match self.key_index {
            Some(i) => Some(key_strings(batch.column(i))?),
            None => None,
        };
        let mut admitted = Admitted::default();
        self.changes += 1;
        // Rows per window, in row order.
        let mut by_window: BTreeMap<(i64, String), Vec<u32>> = BTreeMap::new();
        self.note_seen(records, origins);
        let check_covered = !self.covered.is_empty();
        for (row, record) in records.iter().enumerate() {
            if let Some(o) = origins
                && o.offsets[row] == crate::repartition::MARK_OFFSET
            {
                // How far a source partition has come, for this internal
                // partition's watermark.
                admitted.marks += 1;
                if o.owned.contains(&record.partition) && !times.is_null(row) {
                    let source = (o.topic.clone(), o.partitions[row]);
                    self.internal_watermarks(record.partition, now).observe(
                        &source,
                        times.value(row),
                        now,
                    );
                }
                continue;
            }
            if check_covered
                && self
                    .covered
                    .get(&(record.topic.clone(), record.partition))
                    .is_some_and(|&c| record.offset < c)
            {
                // In the restored checkpoint already.
                admitted.repeated += 1;
                continue;
            }
            if times.is_null(row) {
                admitted
                    .untimed
                    .push((row, no_event_time(&self.spec.time_column)));
                continue;
            }
            let t = times.value(row);
            let partition: PartitionId = match origins {
                Some(o) => {
                    if !o.owned.contains(&record.partition) {
                        admitted.repeated += 1;
                        continue;
                    }
                    let (p, offset) = (o.partitions[row], o.offsets[row]);
                    let last = self
                        .admitted_up_to
                        .entry((record.partition, p))
                        .or_insert(i64::MIN);
                    if offset <= *last {
                        admitted.repeated += 1;
                        continue;
                    }
                    *last = offset;
                    (o.topic.clone(), p)
                }
                None => (record.topic.clone(), record.partition),
            };
            let watermark = match origins {
                Some(_) => self.internal_watermarks(record.partition, now).current(),
                None => self.watermarks.current(),
            };
            let any = match self.spec.kind {
                WindowKind::Session => {
                    let key = keys.as_ref().map_or(String::new(), |k| k[row].clone());
                    self.join_session(key, t, row as u32, watermark, &mut by_window)
                }
                WindowKind::Tumble | WindowKind::Hop => {
                    // A windows stage keeps each internal partition's
                    // groups apart: they leave with the partition.
                    let tag = match origins {
                        Some(_) => internal_tag(record.partition),
                        None => String::new(),
                    };
                    let mut any = false;
                    for start in self.spec.starts(t) {
                        let end = start + self.spec.size_us;
                        if !self.closed(end, watermark) {
                            by_window
                                .entry((start, tag.clone()))
                                .or_default()
                                .push(row as u32);
                            self.open.entry((start, tag.clone())).or_default().end = end;
                            any = true;
                        }
                    }
                    any
                }
            };
            if !any {
                let restored = self
                    .restored
                    .get(&origins.map_or(-1, |_| record.partition))
                    .copied()
                    .unwrap_or(i64::MIN);
                if watermark <= restored {
                    // Replayed from before the committed watermark: its
                    // windows were emitted before the restart.
                    admitted.repeated += 1;
                    continue;
                }
                admitted.late.push((
                    row,
                    format!(
                        "late: event time {} is behind the watermark {} by more than the allowed lateness; its window was already emitted",
                        fmt_us(t),
                        fmt_us(watermark)
                    ),
                ));
            }
            match origins {
                Some(_) => {
                    self.internal_watermarks(record.partition, now)
                        .observe(&partition, t, now);
                }
                None => {
                    self.watermarks.observe(&partition, t, now);
                }
            }
        }
        let mut windowed: BTreeMap<String, (Vec<RecordBatch>, Vec<usize>)> = BTreeMap::new();
        for (window, rows) in by_window {
            let indices = UInt32Array::from(rows);
            let columns = batch
                .columns()
                .iter()
                .map(|c| take(c, &indices, None))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let part =
                RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| e.to_string())?;
            let Some(open) = self.open.get_mut(&window) else {
                return Err("internal: a window of pending rows is not open".to_string());
            };
            for &row in indices.values() {
                open.hold(records[row as usize]);
            }
            if self.aggregation.is_some() {
                let rows = part.num_rows();
                let mut columns = part.columns().to_vec();
                columns.push(Arc::new(TimestampMicrosecondArray::from_value(
                    window.0, rows,
                )));
                columns.push(Arc::new(TimestampMicrosecondArray::from_value(
                    open.end, rows,
                )));
                let part = windowed.entry(window.1.clone()).or_default();
                part.0.push(
                    RecordBatch::try_new(self.windowed.clone(), columns)
                        .map_err(|e| e.to_string())?,
                );
                part.1.extend(indices.values().iter().map(|&r| r as usize));
                continue;
            }
            let mut bytes = part.get_array_memory_size();
            for &row in indices.values() {
                let record = records[row as usize];
                bytes += record_bytes(record);
                open.records.push(record.clone());
            }
            open.batches.push(part);
            open.bytes += bytes;
            self.bytes += bytes;
        }
        for (tag, (batches, rows)) in windowed {
            admitted.windowed.push(Windowed {
                tag,
                batch: concat_batches(&self.windowed, &batches).map_err(|e| e.to_string())?,
                rows,
            });
        }
        Ok(admitted)
    }

    /// Notes the offsets `records` reach per consumed partition (what a
    /// checkpoint covers), once per run of one partition's records. A
    /// windows stage's record of a partition it no longer owns is its new
    /// owner's.
    fn note_seen(&mut self, records: &[&SourceRecord], origins: Option<&Origins>) {
        let mut run: Option<(&Arc<str>, i32, i64)> = None;
        let flush = |seen: &mut HashMap<PartitionId, i64>, run: Option<(&Arc<str>, i32, i64)>| {
            if let Some((topic, partition, next)) = run {
                let e = seen.entry((topic.clone(), partition)).or_insert(0);
                *e = (*e).max(next);
            }
        };
        for record in records {
            if origins.is_some_and(|o| !o.owned.contains(&record.partition)) {
                continue;
            }
            let next = record.offset.saturating_add(1);
            match &mut run {
                Some((topic, partition, last))
                    if *partition == record.partition && Arc::ptr_eq(topic, &record.topic) =>
                {
                    *last = (*last).max(next);
                }
                _ => {
                    flush(&mut self.seen, run.take());
                    run = Some((&record.topic, record.partition, next));
                }
            }
        }
        flush(&mut self.seen, run);
    }

    /// The source is assigned `count` partitions (None for a file).
    pub fn expect_partitions(&mut self, count: Option<usize>, now: Instant) {
        self.watermarks.expect(count, now);
    }

    /// Restores the watermarks committed with the offsets (`marks`, read
    /// after partitions were assigned) of the scopes in `fresh` (state this
    /// member did not have: a restart, or an internal partition taken
    /// over; its own watermark is newer). Windows they passed were emitted
    /// and acknowledged before: not opened again by the replay, and
    /// dropped from a restored checkpoint.
    pub fn restore(
        &mut self,
        marks: &Marks,
        fresh: &[Option<i32>],
        windows_stage: bool,
        now: Instant,
    ) {
        if windows_stage {
            for ((_, p), mark) in marks {
                if !fresh.contains(&Some(*p)) {
                    continue;
                }
                self.internal_watermarks(*p, now).raise_to(*mark);
                let r = self.restored.entry(*p).or_insert(i64::MIN);
                *r = (*r).max(*mark);
                let dropped = self.drop_passed(&internal_tag(*p));
                tracing::debug!(partition = p, mark = %fmt_us(*mark), dropped, "committed watermark restored");
            }
        } else if fresh.contains(&None)
            && let Some(mark) = marks.values().min()
        {
            // One watermark for the source, committed on each partition:
            // the least is certainly passed.
            self.watermarks.raise_to(*mark);
            let r = self.restored.entry(-1).or_insert(i64::MIN);
            *r = (*r).max(*mark);
            let dropped = self.drop_passed("");
            tracing::debug!(mark = %fmt_us(*mark), dropped, "committed watermark restored");
        }
    }

    /// Drops the restored windows of `tag` its watermark passed: they were
    /// emitted after the checkpoint that held them.
    fn drop_passed(&mut self, tag: &str) -> usize {
        let watermark = self.watermark_of(tag);
        let passed: Vec<(i64, String)> = self
            .open
            .iter()
            .filter(|((_, t), w)| t == tag && self.closed(w.end, watermark))
            .map(|(k, _)| k.clone())
            .collect();
        let n = passed.len();
        for key in passed {
            if let Some(open) = self.open.remove(&key) {
                self.bytes -= open.bytes;
            }
        }
        n
    }

    /// The watermark to commit with each partition of `offsets`.
    pub fn marks(&self, offsets: &Offsets, windows_stage: bool) -> Marks {
        offsets
            .keys()
            .filter_map(|tp| {
                let w = if windows_stage {
                    self.internal.get(&tp.1).map(Watermarks::current)?
                } else {
                    self.watermarks.current()
                };
                (w != i64::MIN).then(|| (tp.clone(), w))
            })
            .collect()
    }

    /// A windows stage lost internal partition `partition` to another
    /// member: the state of its keys goes (the new owner rebuilds it from
    /// the committed offset, below every open window's records), and so do
    /// its watermarks and the offsets admitted from it.
    pub fn revoke(&mut self, partition: i32) {
        let tag = internal_tag(partition);
        let gone: Vec<(i64, String)> = self
            .open
            .keys()
            .filter(|(_, t)| *t == tag)
            .cloned()
            .collect();
        for key in gone {
            if let Some(open) = self.open.remove(&key) {
                self.bytes -= open.bytes;
            }
        }
        self.changes += 1;
        self.internal.remove(&partition);
        self.restored.remove(&partition);
        self.admitted_up_to.retain(|(p, _), _| *p != partition);
        // Consumed partition `partition` of the internal topic.
        self.seen.retain(|(_, p), _| *p != partition);
        self.covered.retain(|(_, p), _| *p != partition);
        self.checkpointed.retain(|(_, p), _| *p != partition);
    }

    /// A windows stage: its records come from `count` source partitions,
    /// each of which holds the watermark until it delivered.
    pub fn expect_sources(&mut self, count: usize, now: Instant) {
        if self.sources != Some(count) {
            self.sources = Some(count);
            for w in self.internal.values_mut() {
                w.expect(Some(count), now);
            }
        }
    }

    /// The watermark of internal partition `p` (a windows stage).
    fn internal_watermarks(&mut self, p: i32, now: Instant) -> &mut Watermarks {
        let (config, sources) = (&self.config, self.sources);
        self.internal.entry(p).or_insert_with(|| {
            let mut w = Watermarks::new(config.max_out_of_order_ms, config.idle_partition_ms);
            w.expect(sources, now);
            w
        })
    }

    /// The watermark windows tagged `tag` close by.
    fn watermark_of(&self, tag: &str) -> i64 {
        match tag.strip_prefix('@').and_then(|p| p.parse::<i32>().ok()) {
            Some(p) => self.internal.get(&p).map_or(i64::MIN, Watermarks::current),
            None => self.watermarks.current(),
        }
    }

    /// Folds `batches` (the admitted rows of part `tag` after the query's
    /// stage before its aggregate) into their windows' groups.
    pub fn fold(&mut self, tag: &str, batches: &[RecordBatch]) -> Result<(), String> {
        let Some(aggregation) = &self.aggregation else {
            return Err("internal: these windows keep records".into());
        };
        for batch in batches {
            for (start, rows) in aggregation.by_window(batch)? {
                let Some(open) = self.open.get_mut(&(start, tag.to_string())) else {
                    return Err(format!(
                        "internal: rows of window {} arrived after it closed",
                        fmt_us(start)
                    ));
                };
                let groups = match &mut open.groups {
                    Some(g) => g,
                    None => open.groups.insert(Groups::new(aggregation)?),
                };
                groups.update(aggregation, &rows)?;
                let bytes = groups.bytes();
                self.bytes = self.bytes - open.bytes + bytes;
                open.bytes = bytes;
            }
        }
        Ok(())
    }

    /// Puts the row at event time `t` into `key`'s session within the gap
    /// of it, merging the sessions it bridges, or into a new session;
    /// `false` if that new session would already be closed (late).
    fn join_session(
        &mut self,
        key: String,
        t: i64,
        row: u32,
        watermark: i64,
        pending: &mut BTreeMap<(i64, String), Vec<u32>>,
    ) -> bool {
        let gap = self.spec.size_us;
        let lateness = self.lateness_us;
        let closed = |end: i64| end.saturating_add(lateness) <= watermark;
        let open = &self.open;
        let hits: Vec<i64> = self
            .sessions
            .get(&key)
            .map(|starts| {
                starts
                    .iter()
                    .copied()
                    .filter(|&s| {
                        open.get(&(s, key.clone())).is_some_and(|o| {
                            !closed(o.end) && s.saturating_sub(gap) <= t && t < o.end
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        if hits.is_empty() && closed(t.saturating_add(gap)) {
            return false;
        }
        let starts = self.sessions.entry(key.clone()).or_default();
        let mut merged = Open {
            end: t.saturating_add(gap),
            ..Open::default()
        };
        let mut rows = Vec::new();
        let mut start = t;
        for s in hits {
            if let Some(o) = self.open.remove(&(s, key.clone())) {
                merged.end = merged.end.max(o.end);
                merged.batches.extend(o.batches);
                merged.records.extend(o.records);
                merged.bytes += o.bytes;
                for (tp, offset) in o.floor {
                    let e = merged.floor.entry(tp).or_insert(offset);
                    *e = (*e).min(offset);
                }
            }
            rows.extend(pending.remove(&(s, key.clone())).unwrap_or_default());
            start = start.min(s);
            starts.retain(|&x| x != s);
        }
        rows.push(row);
        starts.push(start);
        self.open.insert((start, key.clone()), merged);
        pending.insert((start, key), rows);
        true
    }

    /// Recomputes the watermark (a partition may have gone idle).
    pub fn tick(&mut self, now: Instant) {
        self.watermarks.advance(now);
        for w in self.internal.values_mut() {
            w.advance(now);
        }
    }

    /// Removes and returns the windows the watermark passed (all of them
    /// with `flush`, when the source ended), oldest first.
    pub fn take_closed(&mut self, flush: bool) -> Result<Option<Closed>, String> {
        let starts: Vec<(i64, String)> = self
            .open
            .iter()
            .filter(|((_, tag), w)| flush || self.closed(w.end, self.watermark_of(tag)))
            .map(|(s, _)| s.clone())
            .collect();
        if starts.is_empty() {
            return Ok(None);
        }
        self.changes += 1;
        let mut batches = Vec::new();
        let mut records = Vec::new();
        for window in &starts {
            let Some(open) = self.open.remove(window) else {
                continue;
            };
            let start = &window.0;
            if let Some(list) = self.sessions.get_mut(&window.1) {
                list.retain(|s| s != start);
                if list.is_empty() {
                    self.sessions.remove(&window.1);
                }
            }
            self.bytes -= open.bytes;
            if let Some(aggregation) = &self.aggregation {
                let Some(groups) = open.groups else {
                    // Every row of the window was filtered out (or failed).
                    continue;
                };
                let rows = groups.emit(aggregation)?;
                records.extend(describe_rows(&rows, *start)?);
                batches.push(rows);
                continue;
            }
            let rows: usize = open.batches.iter().map(RecordBatch::num_rows).sum();
            let data = concat_batches(&self.schema, &open.batches).map_err(|e| e.to_string())?;
            let mut columns = data.columns().to_vec();
            let constant =
                |v: i64| -> ArrayRef { Arc::new(TimestampMicrosecondArray::from_value(v, rows)) };
            columns.push(constant(*start));
            columns.push(constant(open.end));
            batches.push(
                RecordBatch::try_new(self.windowed.clone(), columns).map_err(|e| e.to_string())?,
            );
            records.extend(open.records);
        }
        let schema = match &self.aggregation {
            Some(a) => a.output(),
            None => self.windowed.clone(),
        };
        let batch = concat_batches(&schema, &batches).map_err(|e| e.to_string())?;
        Ok(Some(Closed {
            batch,
            records,
            windows: starts.len(),
            aggregated: self.aggregation.is_some(),
        }))
    }

    /// The offsets safe to commit after a batch whose records end at
    /// `next`: per partition, never past the oldest record still held by an
    /// open window.
    pub fn commit_floor(&self, mut next: Offsets) -> Offsets {
        for open in self.open.values() {
            for (tp, &oldest) in &open.floor {
                // Up to the last checkpoint, the state is in the changelog.
                let floor = self.checkpointed.get(tp).map_or(oldest, |&c| c.max(oldest));
                let e = next.entry(tp.clone()).or_insert(floor);
                *e = (*e).min(floor);
            }
        }
        next
    }

    /// A checkpoint of the folded windows per scope (the pipeline, or each
    /// internal partition of a windows stage), with the offsets each
    /// covers; `None` when windows keep records (they are rebuilt by
    /// replay). Call between batches: every admitted row is folded.
    pub fn checkpoint(&mut self) -> Result<Option<Vec<ScopeCheckpoint>>, String> {
        let Some(aggregation) = &self.aggregation else {
            return Ok(None);
        };
        self.changes += 1;
        // A scope nothing was admitted to or restored in yet is not
        // written: its last checkpoint may not have been read yet.
        let scopes: Vec<Option<i32>> = if self.sources.is_some() {
            self.internal.keys().map(|p| Some(*p)).collect()
        } else if self.fresh(None) {
            Vec::new()
        } else {
            vec![None]
        };
        let mut out = Vec::new();
        for scope in scopes {
            let tag = scope.map_or(String::new(), internal_tag);
            let covered: Offsets = self
                .seen
                .iter()
                .filter(|((_, p), _)| scope.is_none_or(|s| s == *p))
                .map(|(tp, o)| (tp.clone(), *o))
                .collect();
            let maxima = match scope {
                Some(p) => self.internal.get(&p).map(Watermarks::maxima),
                None => Some(self.watermarks.maxima()),
            }
            .unwrap_or_default();
            let mut header = super::checkpoint::Header {
                fingerprint: aggregation.fingerprint().to_string(),
                watermark: self.watermark_of(&tag),
                maxima: maxima
                    .into_iter()
                    .map(|((t, p), m)| (t.to_string(), p, m))
                    .collect(),
                covered: covered
                    .iter()
                    .map(|((t, p), o)| (t.to_string(), *p, *o))
                    .collect(),
                admitted: self
                    .admitted_up_to
                    .iter()
                    .filter(|((p, _), _)| Some(*p) == scope)
                    .map(|((_, sp), o)| (*sp, *o))
                    .collect(),
                ..Default::default()
            };
            let mut groups = Vec::new();
            for ((start, t), open) in self.open.iter_mut() {
                if *t != tag {
                    continue;
                }
                let Some(g) = open.groups.as_mut() else {
                    continue;
                };
                groups.push(g.snapshot(aggregation)?);
                header.windows.push((*start, open.end, 0));
            }
            let watermark = header.watermark;
            out.push(ScopeCheckpoint {
                scope,
                bytes: super::checkpoint::encode(header, &groups)?,
                covered,
                watermark,
            });
        }
        Ok(Some(out))
    }

    /// Counts changes of the state: equal between two calls, nothing
    /// changed (a checkpoint counts as one).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// A checkpoint was written: commits may go up to what it covers.
    pub fn checkpointed(&mut self, covered: &Offsets) {
        for (tp, o) in covered {
            let e = self.checkpointed.entry(tp.clone()).or_insert(*o);
            *e = (*e).max(*o);
        }
    }

    /// Whether scope `scope`'s state is new here (nothing admitted or
    /// restored for it yet): a checkpoint of it may be restored.
    pub fn fresh(&self, scope: Option<i32>) -> bool {
        match scope {
            Some(p) => !self.internal.contains_key(&p),
            None => self.seen.is_empty() && self.covered.is_empty(),
        }
    }

    /// Restores scope `scope` from checkpoint `bytes`; `Err` says why it
    /// cannot (the state then starts empty, rebuilt by replay from the
    /// committed offsets as far as they reach).
    pub fn restore_checkpoint(
        &mut self,
        scope: Option<i32>,
        bytes: &[u8],
        now: Instant,
    ) -> Result<usize, String> {
        let Some(aggregation) = &self.aggregation else {
            return Err("these windows keep records".into());
        };
        let checkpoint = super::checkpoint::decode(bytes)?;
        let header = checkpoint.header;
        if header.fingerprint != aggregation.fingerprint() {
            return Err("it was made by a different query".into());
        }
        let tag = scope.map_or(String::new(), internal_tag);
        let mut restored = Vec::new();
        for (&(start, end, _), batch) in header.windows.iter().zip(&checkpoint.groups) {
            let groups = Groups::restore(aggregation, batch)?;
            restored.push(((start, tag.clone()), end, groups));
        }
        let watermark = header.watermark;
        let maxima: Vec<(PartitionId, i64)> = header
            .maxima
            .iter()
            .map(|(t, p, m)| ((Arc::from(t.as_str()), *p), *m))
            .collect();
        tracing::debug!(?scope, covered = ?header.covered, admitted = ?header.admitted, watermark = %fmt_us(watermark), windows = restored.len(), "checkpoint read");
        match scope {
            Some(p) => {
                let w = self.internal_watermarks(p, now);
                w.raise_to(watermark);
                w.resume(maxima, now);
                for (sp, o) in header.admitted {
                    let e = self.admitted_up_to.entry((p, sp)).or_insert(o);
                    *e = (*e).max(o);
                }
            }
            None => {
                self.watermarks.raise_to(watermark);
                self.watermarks.resume(maxima, now);
            }
        }
        for (topic, p, o) in header.covered {
            let tp: PartitionId = (Arc::from(topic.as_str()), p);
            self.covered.insert(tp.clone(), o);
            // What a later checkpoint covers starts here.
            let seen = self.seen.entry(tp.clone()).or_insert(o);
            *seen = (*seen).max(o);
            self.checkpointed.insert(tp, o);
        }
        let windows = restored.len();
        for (key, end, groups) in restored {
            let bytes = groups.bytes();
            let open = self.open.entry(key).or_default();
            open.end = end;
            open.bytes = bytes;
            open.groups = Some(groups);
            self.bytes += bytes;
        }
        Ok(windows)
    }
}

/// A record describing each output row of a folded window (its source
/// records are not kept): what a dead letter of the row carries.
fn describe_rows(batch: &RecordBatch, start: i64) -> Result<Vec<SourceRecord>, String> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default().with_null("NULL");
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let schema = batch.schema();
    let topic: Arc<str> = Arc::from(format!("window {}", fmt_us(start)));
    Ok((0..batch.num_rows())
        .map(|row| {
            let text = schema
                .fields()
                .iter()
                .zip(&formatters)
                .map(|(f, v)| format!("{}={}", f.name(), v.value(row)))
                .collect::<Vec<_>>()
                .join(", ");
            SourceRecord {
                key: None,
                payload: Some(text.into_bytes()),
                topic: topic.clone(),
                partition: -1,
                offset: row as i64,
                timestamp: None,
                headers: Vec::new(),
            }
        })
        .collect())
}

/// Each row's value of a session key column, as text (NULL is a key too).
fn key_strings(column: &ArrayRef) -> Result<Vec<String>, String> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default();
    let f = ArrayFormatter::try_new(column.as_ref(), &options).map_err(|e| e.to_string())?;
    Ok((0..column.len())
        .map(|i| {
            if column.is_null(i) {
                "\0null".to_string()
            } else {
                f.value(i).to_string()
            }
        })
        .collect())
}

/// The windows of a windows stage's internal partition `p`.
fn internal_tag(p: i32) -> String {
    format!("@{p}")
}

/// An event time for messages: RFC 3339 in UTC.
pub fn fmt_us(us: i64) -> String {
    if us == i64::MIN {
        return "(none yet)".to_string();
    }
    datafusion::arrow::temporal_conversions::timestamp_us_to_datetime(us)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_else(|| format!("{us} µs"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::PlannedQuery;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::prelude::SessionContext;

    /// A restored checkpoint's offsets stay covered by the next checkpoint,
    /// even one taken before any newer record arrived: otherwise a restore
    /// of that one would admit the records before them a second time.
    #[tokio::test]
    async fn a_checkpoint_right_after_a_restore_covers_what_the_restored_one_did() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("v", DataType::Float64, true),
        ]));
        let ctx =
            SessionContext::new_with_config(crate::sql::session_config().with_target_partitions(1));
        let query = PlannedQuery::new(
            &ctx,
            schema.clone(),
            "SELECT window_start, sum(v) AS s FROM tumble(source, ts, INTERVAL '1' MINUTE) GROUP BY window_start",
        )
        .await
        .unwrap();
        let spec = query.window().unwrap().clone();
        let aggregation =
            || Aggregation::new(&query.aggregate().unwrap(), &spec, &|_| false).unwrap();
        let config = crate::config::WatermarkConfig::default();
        let header = super::super::checkpoint::Header {
            fingerprint: aggregation().fingerprint().to_string(),
            watermark: 5,
            covered: vec![("t".into(), 0, 10)],
            ..Default::default()
        };
        let bytes = super::super::checkpoint::encode(header, &[]).unwrap();
        let mut state = WindowState::new(spec.clone(), schema, &config)
            .unwrap()
            .folding(aggregation());
        assert!(state.fresh(None));
        state
            .restore_checkpoint(None, &bytes, Instant::now())
            .unwrap();
        assert!(!state.fresh(None));
        let next = state.checkpoint().unwrap().unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].covered.get(&(Arc::from("t"), 0)), Some(&10));
        let back = super::super::checkpoint::decode(&next[0].bytes).unwrap();
        assert_eq!(back.header.covered, vec![("t".to_string(), 0, 10)]);
        assert_eq!(back.header.watermark, 5);
    }
}
