//! Incremental window state: per (window, group), the aggregates' running
//! state instead of the records.
//!
//! A windowed query `… FROM tumble(source, …) GROUP BY window_start, k` is
//! split at its aggregate ([`crate::query::PlannedQuery::split_at`]):
//! the rows the aggregate reads (after the query's filters, joins and
//! scalar UDFs) are folded, batch by batch as they arrive, into one
//! DataFusion `GroupsAccumulator` per aggregate and window; when the
//! watermark passes the window, the accumulators are evaluated into the
//! aggregate's output rows, and only what the query does after its
//! aggregate (`HAVING`, projections, `ORDER BY`) runs then. A window of a
//! million records over a thousand keys holds a thousand groups.
//!
//! What cannot be folded keeps the records ([`super::state`]'s other
//! mode), and `weir run --dry-run` says why ([`Aggregation::new`]).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::projection::ProjectionExpr;

use super::spec::{WINDOW_END, WINDOW_START, WindowKind, WindowSpec};

/// What the query's aggregate computes, taken from its physical plan.
///
/// Everything the aggregate evaluates per row (grouping keys, arguments,
/// `FILTER (WHERE …)`: scalar UDFs included) is computed by the stage
/// before it, as the columns of [`Aggregation::feed`]; folding only reads
/// those columns, so every guest call happens where a poison row can be
/// found and set aside.
pub struct Aggregation {
    /// The feed's first `groups` columns are the grouping keys.
    groups: usize,
    /// Which grouping column is the window's start (or end).
    window_group: usize,
    /// Subtracted from that column's value to get the window's start
    /// (the size when it is `window_end`, else 0).
    window_offset: i64,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// Each aggregate's argument columns and `FILTER` column in the feed.
    args: Vec<Vec<usize>>,
    filters: Vec<Option<usize>>,
    feed: Vec<ProjectionExpr>,
    converter: RowConverter,
    /// The aggregate's output: the grouping columns, then the aggregates.
    output: SchemaRef,
    /// Each aggregate's state columns ([`Groups::snapshot`]).
    states: Vec<usize>,
    /// The types of a snapshot's columns: grouping keys, then every
    /// aggregate's state.
    column_types: Vec<DataType>,
    /// What a checkpoint of these groups must have been made by: the
    /// grouping columns' and the aggregates' names and state types.
    fingerprint: String,
}

/// Whether an aggregate's state lives in a guest instance (a WebAssembly
/// aggregate): an open window would hold an instance slot for its life.
pub type IsGuest = dyn Fn(&AggregateFunctionExpr) -> bool;

impl Aggregation {
    /// The aggregation of `aggregate` (the query's only aggregate), or why
    /// its windows must keep their records.
    pub fn new(
        aggregate: &AggregateExec,
        spec: &WindowSpec,
        is_guest: &IsGuest,
    ) -> Result<Self, String> {
        if spec.kind == WindowKind::Session {
            return Err("session windows merge as records arrive".into());
        }
        if !matches!(
            aggregate.mode(),
            AggregateMode::Single | AggregateMode::SinglePartitioned
        ) {
            return Err("the aggregate is planned in several phases".into());
        }
        let by = aggregate.group_expr();
        if !by.is_single() {
            return Err("the query groups by GROUPING SETS, CUBE or ROLLUP".into());
        }
        let input = aggregate.input_schema();
        let mut window_group = None;
        let mut fields = Vec::new();
        let mut key_types = Vec::new();
        let mut feed = Vec::new();
        for (i, (expr, name)) in by.expr().iter().enumerate() {
            let column = name.rsplit('.').next().unwrap_or(name);
            if window_group.is_none() && (column == WINDOW_START || column == WINDOW_END) {
                window_group = Some((
                    i,
                    if column == WINDOW_END {
                        spec.size_us
                    } else {
                        0
                    },
                ));
            }
            let data_type = expr.data_type(&input).map_err(|e| e.to_string())?;
            key_types.push(data_type.clone());
            fields.push(SortField::new(data_type));
            feed.push(ProjectionExpr {
                expr: expr.clone(),
                alias: format!("group{i}"),
            });
        }
        let Some((window_group, window_offset)) = window_group else {
            return Err("the window column it groups by is an expression".into());
        };
        let mut args = Vec::new();
        let mut filters = Vec::new();
        for (i, a) in aggregate.aggr_expr().iter().enumerate() {
            let name = a.fun().name();
            if a.is_distinct() {
                return Err(format!("`{name}(DISTINCT …)` keeps every distinct value"));
            }
            if !a.order_bys().is_empty() {
                return Err(format!("`{name}(… ORDER BY …)` keeps its rows in order"));
            }
            if is_guest(a) {
                return Err(format!(
                    "`{name}` is a WebAssembly aggregate, whose state lives in a guest instance"
                ));
            }
            let mut columns = Vec::new();
            for (j, expr) in a.expressions().into_iter().enumerate() {
                columns.push(feed.len());
                feed.push(ProjectionExpr {
                    expr,
                    alias: format!("arg{i}_{j}"),
                });
            }
            args.push(columns);
            filters.push(match aggregate.filter_expr().get(i).cloned().flatten() {
                Some(expr) => {
                    feed.push(ProjectionExpr {
                        expr,
                        alias: format!("filter{i}"),
                    });
                    Some(feed.len() - 1)
                }
                None => None,
            });
        }
        let converter = RowConverter::new(fields).map_err(|e| e.to_string())?;
        let mut states = Vec::new();
        let mut fingerprint = format!("{}", aggregate.schema());
        for a in aggregate.aggr_expr() {
            let fields = a.state_fields().map_err(|e| e.to_string())?;
            states.push(fields.len());
            for f in fields {
                key_types.push(f.data_type().clone());
                fingerprint.push_str(&format!(";{}:{}", a.fun().name(), f.data_type()));
            }
        }
        Ok(Aggregation {
            states,
            column_types: key_types,
            fingerprint,
            groups: by.expr().len(),
            window_group,
            window_offset,
            aggregates: aggregate.aggr_expr().to_vec(),
            args,
            filters,
            feed,
            converter,
            output: aggregate.schema(),
        })
    }

    /// What the stage before the aggregate outputs, over the aggregate's
    /// input: grouping keys, arguments and filters, evaluated.
    pub fn feed(&self) -> Vec<ProjectionExpr> {
        self.feed.clone()
    }

    /// The aggregate's output schema (what [`Groups::emit`] returns).
    pub fn output(&self) -> SchemaRef {
        self.output.clone()
    }

    /// Identifies the aggregate a checkpoint's state belongs to.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>, String> {
        self.aggregates
            .iter()
            .map(|a| {
                if a.groups_accumulator_supported() {
                    a.create_groups_accumulator()
                } else {
                    let a = a.clone();
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        a.create_accumulator()
                    })) as Box<dyn GroupsAccumulator>)
                }
            })
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())
    }

    /// Rows of `batch` (the feed) split by window, as (start, rows).
    pub fn by_window(&self, batch: &RecordBatch) -> Result<Vec<(i64, RecordBatch)>, String> {
        let column = batch.column(self.window_group);
        let column = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))
            .map_err(|e| e.to_string())?;
        let times = column.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
        if times.null_count() > 0 {
            return Err("internal: a row of the aggregate has no window".into());
        }
        let first = times.values().first().copied();
        if times.values().iter().all(|t| Some(*t) == first) {
            return Ok(first
                .map(|t| vec![(t - self.window_offset, batch.clone())])
                .unwrap_or_default());
        }
        let mut rows: std::collections::BTreeMap<i64, Vec<u32>> = Default::default();
        for (i, t) in times.values().iter().enumerate() {
            rows.entry(*t).or_default().push(i as u32);
        }
        rows.into_iter()
            .map(|(t, rows)| {
                let indices = datafusion::arrow::array::UInt32Array::from(rows);
                let columns = batch
                    .columns()
                    .iter()
                    .map(|c| datafusion::arrow::compute::take(c, &indices, None))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                RecordBatch::try_new(batch.schema(), columns)
                    .map(|b| (t - self.window_offset, b))
                    .map_err(|e| e.to_string())
            })
            .collect()
    }
}

/// One window's groups: each group's key, and the aggregates' state of
/// every group.
pub struct Groups {
    /// Group key (row format) → group index.
    index: HashMap<Box<[u8]>, usize>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    key_bytes: usize,
}

/// Per-entry overhead of the key index (hash table slot and box).
const ENTRY_BYTES: usize = 48;

impl Groups {
    pub fn new(aggregation: &Aggregation) -> Result<Self, String> {
        Ok(Groups {
            index: HashMap::new(),
            accumulators: aggregation.accumulators()?,
            key_bytes: 0,
        })
    }

    /// Bytes of the state: keys and accumulators.
    pub fn bytes(&self) -> usize {
        self.key_bytes
            + self.index.len() * ENTRY_BYTES
            + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
    }

    /// Folds the rows of `batch` (the feed, all of this window) into the
    /// groups.
    pub fn update(&mut self, aggregation: &Aggregation, batch: &RecordBatch) -> Result<(), String> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let keys = &batch.columns()[..aggregation.groups];
        let rows = aggregation
            .converter
            .convert_columns(keys)
            .map_err(|e| e.to_string())?;
        let mut indices = Vec::with_capacity(n);
        for row in rows.iter() {
            let bytes = row.as_ref();
            let next = self.index.len();
            let i = match self.index.get(bytes) {
                Some(&i) => i,
                None => {
                    self.key_bytes += bytes.len();
                    self.index.insert(bytes.into(), next);
                    next
                }
            };
            indices.push(i);
        }
        let total = self.index.len();
        for (i, accumulator) in self.accumulators.iter_mut().enumerate() {
            let values: Vec<ArrayRef> = aggregation.args[i]
                .iter()
                .map(|&c| batch.column(c).clone())
                .collect();
            let filter = match aggregation.filters[i] {
                Some(c) => Some(
                    batch
                        .column(c)
                        .as_boolean_opt()
                        .cloned()
                        .ok_or("internal: an aggregate's FILTER is not boolean")?,
                ),
                None => None,
            };
            accumulator
                .update_batch(&values, &indices, filter.as_ref(), total)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The groups' state as columns: the grouping keys, then each
    /// aggregate's state (DataFusion's partial-aggregate state, what
    /// [`Self::restore`] merges back). The accumulators give their state up
    /// doing so and are rebuilt from it.
    pub fn snapshot(&mut self, aggregation: &Aggregation) -> Result<RecordBatch, String> {
        use datafusion::arrow::datatypes::{Field, Schema};
        let n = self.index.len();
        let mut keys: Vec<(usize, &[u8])> =
            self.index.iter().map(|(k, i)| (*i, k.as_ref())).collect();
        keys.sort_unstable_by_key(|(i, _)| *i);
        let parser = aggregation.converter.parser();
        let mut columns = aggregation
            .converter
            .convert_rows(keys.iter().map(|(_, k)| parser.parse(k)))
            .map_err(|e| e.to_string())?;
        let all: Vec<usize> = (0..n).collect();
        let mut fresh = aggregation.accumulators()?;
        for (old, new) in self.accumulators.iter_mut().zip(&mut fresh) {
            let state = old.state(EmitTo::All).map_err(|e| e.to_string())?;
            new.merge_batch(&state, &all, n)
                .map_err(|e| e.to_string())?;
            columns.extend(state);
        }
        self.accumulators = fresh;
        let fields: Vec<Field> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
            .collect();
        let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(n));
        RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)
            .map_err(|e| e.to_string())
    }

    /// Groups from a [`Self::snapshot`] of `aggregation`'s groups.
    pub fn restore(aggregation: &Aggregation, batch: &RecordBatch) -> Result<Self, String> {
        // The changelog is a topic like any other of the tenant's: its
        // bytes are checked before an accumulator reads them.
        let types: Vec<&DataType> = batch.columns().iter().map(|c| c.data_type()).collect();
        if types.len() != aggregation.column_types.len()
            || types
                .iter()
                .zip(&aggregation.column_types)
                .any(|(a, b)| *a != b)
        {
            return Err(format!(
                "the checkpoint's columns ({types:?}) are not the aggregate's ({:?})",
                aggregation.column_types
            ));
        }
        let mut groups = Groups::new(aggregation)?;
        let n = batch.num_rows();
        let rows = aggregation
            .converter
            .convert_columns(&batch.columns()[..aggregation.groups])
            .map_err(|e| e.to_string())?;
        for (i, row) in rows.iter().enumerate() {
            groups.key_bytes += row.as_ref().len();
            groups.index.insert(row.as_ref().into(), i);
        }
        if groups.index.len() != n {
            return Err("the checkpoint repeats a group".into());
        }
        let all: Vec<usize> = (0..n).collect();
        let mut at = aggregation.groups;
        for (accumulator, &k) in groups.accumulators.iter_mut().zip(&aggregation.states) {
            accumulator
                .merge_batch(&batch.columns()[at..at + k], &all, n)
                .map_err(|e| e.to_string())?;
            at += k;
        }
        Ok(groups)
    }

    /// The aggregate's output rows of this window: one per group.
    pub fn emit(mut self, aggregation: &Aggregation) -> Result<RecordBatch, String> {
        if self.index.is_empty() {
            return Ok(RecordBatch::new_empty(aggregation.output.clone()));
        }
        let mut keys: Vec<(usize, Box<[u8]>)> = self.index.drain().map(|(k, i)| (i, k)).collect();
        keys.sort_unstable_by_key(|(i, _)| *i);
        let parser = aggregation.converter.parser();
        let mut columns = aggregation
            .converter
            .convert_rows(keys.iter().map(|(_, k)| parser.parse(k)))
            .map_err(|e| e.to_string())?;
        for accumulator in &mut self.accumulators {
            columns.push(
                accumulator
                    .evaluate(EmitTo::All)
                    .map_err(|e| e.to_string())?,
            );
        }
        RecordBatch::try_new(aggregation.output.clone(), columns).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::PlannedQuery;
    use datafusion::arrow::array::{Float64Array, StringArray, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::prelude::SessionContext;

    fn context() -> SessionContext {
        SessionContext::new_with_config(crate::sql::session_config().with_target_partitions(1))
    }

    const MINUTE: i64 = 60_000_000;

    /// The aggregate's input rows: (key, value), all in window [0, 1 min).
    fn input(schema: &SchemaRef, rows: &[(&str, f64)]) -> RecordBatch {
        let n = rows.len();
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.name().as_str() {
                    "k" => Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                    "v" => Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
                    "window_end" => Arc::new(TimestampMicrosecondArray::from_value(MINUTE, n)),
                    _ => Arc::new(TimestampMicrosecondArray::from_value(0, n)),
                }
            })
            .collect();
        RecordBatch::try_new(schema.clone(), columns).unwrap()
    }

    /// What the stage before the aggregate outputs for `rows`.
    fn feed(aggregation: &Aggregation, schema: &SchemaRef, rows: &[(&str, f64)]) -> RecordBatch {
        let batch = input(schema, rows);
        let (fields, columns): (Vec<Field>, Vec<ArrayRef>) = aggregation
            .feed()
            .iter()
            .map(|p| {
                let c = p
                    .expr
                    .evaluate(&batch)
                    .unwrap()
                    .into_array(batch.num_rows())
                    .unwrap();
                (Field::new(&p.alias, c.data_type().clone(), true), c)
            })
            .unzip();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    /// A checkpoint in the middle of a window changes nothing of its
    /// result, and groups restored from it go on as if never stopped; a
    /// checkpoint of another query is refused.
    #[tokio::test]
    async fn groups_restored_from_a_checkpoint_go_on_as_if_never_stopped() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
        ]));
        let sql = "SELECT window_start, k, count(*) AS n, sum(v) AS s, avg(v) AS a, \
                   min(v) AS lo, max(v) AS hi, median(v) AS med, stddev(v) AS sd, \
                   count(v) FILTER (WHERE v > 2) AS big \
                   FROM tumble(source, ts, INTERVAL '1' MINUTE) GROUP BY window_start, k";
        let query = PlannedQuery::new(&context(), schema.clone(), sql)
            .await
            .unwrap();
        let aggregate = query.aggregate().unwrap();
        let spec = query.window().unwrap();
        let aggregation = Aggregation::new(&aggregate, spec, &|_| false).unwrap();
        let input_schema = aggregate.input_schema();
        let first = feed(
            &aggregation,
            &input_schema,
            &[("rome", 1.0), ("oslo", 2.0), ("rome", 3.0)],
        );
        let second = feed(
            &aggregation,
            &input_schema,
            &[("oslo", 5.0), ("lima", 7.0), ("rome", 4.0)],
        );

        let mut whole = Groups::new(&aggregation).unwrap();
        whole.update(&aggregation, &first).unwrap();
        whole.update(&aggregation, &second).unwrap();
        let truth = whole.emit(&aggregation).unwrap();

        let mut kept = Groups::new(&aggregation).unwrap();
        kept.update(&aggregation, &first).unwrap();
        let snapshot = kept.snapshot(&aggregation).unwrap();
        kept.update(&aggregation, &second).unwrap();
        assert_eq!(kept.emit(&aggregation).unwrap(), truth);

        let header = super::super::checkpoint::Header {
            windows: vec![(0, MINUTE, 0)],
            ..Default::default()
        };
        let bytes = super::super::checkpoint::encode(header, &[snapshot]).unwrap();
        let back = super::super::checkpoint::decode(&bytes).unwrap();
        // Bytes someone else wrote to the topic: a column of another type
        // is refused before an accumulator reads it.
        let good = &back.groups[0];
        let mut columns = good.columns().to_vec();
        let last = columns.len() - 1;
        assert_ne!(columns[last].data_type(), &DataType::Utf8);
        columns[last] = Arc::new(StringArray::from_iter_values(
            (0..good.num_rows()).map(|_| "x"),
        ));
        let forged = RecordBatch::try_new(
            Arc::new(Schema::new(
                columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
                    .collect::<Vec<_>>(),
            )),
            columns,
        )
        .unwrap();
        assert!(Groups::restore(&aggregation, &forged).is_err());
        let mut restored = Groups::restore(&aggregation, &back.groups[0]).unwrap();
        restored.update(&aggregation, &second).unwrap();
        assert_eq!(restored.emit(&aggregation).unwrap(), truth);

        let other = PlannedQuery::new(
            &context(),
            schema,
            "SELECT window_start, count(*) AS n FROM tumble(source, ts, INTERVAL '1' MINUTE) GROUP BY window_start",
        )
        .await
        .unwrap();
        let other = Aggregation::new(
            &other.aggregate().unwrap(),
            other.window().unwrap(),
            &|_| false,
        )
        .unwrap();
        assert_ne!(other.fingerprint(), aggregation.fingerprint());
        assert!(Groups::restore(&other, &back.groups[0]).is_err());
    }
}
