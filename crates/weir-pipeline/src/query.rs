//! The pipeline's SQL, planned once and executed per micro-batch.
//!
//! The query reads table `source`, a provider whose scan yields exactly the
//! batch placed in its slot; the physical plan is built once and executed
//! again for every micro-batch.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, collect,
};
use datafusion::prelude::SessionContext;
use parking_lot::Mutex;

use crate::window::spec::{WINDOW_END, WINDOW_START};
use crate::window::{WindowSpec, register_window_functions};

/// The batches a scan of the micro-batch source yields (one, but for the
/// kept side of a join of the stream with itself).
type Slot = Arc<Mutex<Vec<RecordBatch>>>;

#[derive(Debug)]
struct SlotTable {
    schema: SchemaRef,
    slot: Slot,
}

#[async_trait]
impl TableProvider for SlotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(SlotExec {
            schema,
            projection: projection.cloned(),
            slot: self.slot.clone(),
            properties,
        }))
    }
}

#[derive(Debug)]
struct SlotExec {
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    slot: Slot,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for SlotExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MicroBatchSourceExec")
    }
}

impl ExecutionPlan for SlotExec {
    fn name(&self) -> &str {
        "MicroBatchSourceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    /// The stream counts as larger than any lookup table: a join then
    /// builds its hash table from the table and probes it with the
    /// micro-batch, whose row order the output keeps.
    fn partition_statistics(
        &self,
        _partition: Option<usize>,
    ) -> Result<Arc<datafusion::common::Statistics>> {
        use datafusion::common::stats::Precision;
        let mut stats = datafusion::common::Statistics::new_unknown(&self.schema);
        stats.num_rows = Precision::Inexact(1 << 40);
        stats.total_byte_size = Precision::Inexact(1 << 50);
        Ok(Arc::new(stats))
    }

    fn execute(
        &self,
        _partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let held = self.slot.lock().clone();
        // The slot may hold the windowed batch (the source's columns, then
        // the window columns): `source` sees its own columns.
        let batches = held
            .into_iter()
            .map(|b| match &self.projection {
                Some(p) => b.project(p),
                None if b.num_columns() != self.schema.fields().len() => {
                    b.project(&(0..self.schema.fields().len()).collect::<Vec<_>>())
                }
                None => Ok(b),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            self.schema.clone(),
            None,
        )?))
    }
}

/// The column a grouping expression's name refers to (`source.card` →
/// `card`).
fn column_name(expr: &str) -> &str {
    expr.rsplit('.').next().unwrap_or(expr)
}

/// A pipeline's `GROUP BY` must group by a window: a query that aggregates
/// per micro-batch would give numbers that depend on batch sizes. Returns
/// the output columns that are grouping keys.
fn check_grouping(plan: &LogicalPlan, window: Option<&WindowSpec>) -> Result<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    plan.apply(|node| {
        if let LogicalPlan::Aggregate(agg) = node {
            groups.push(
                agg.group_expr
                    .iter()
                    .map(|e| e.schema_name().to_string())
                    .collect(),
            );
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let example = "SELECT window_start, card, count(*) AS n FROM tumble(source, ts, INTERVAL '1' MINUTE) GROUP BY window_start, card";
    match window {
        None if !groups.is_empty() => Err(DataFusionError::Plan(format!(
            "a pipeline's GROUP BY (or aggregate) needs an event-time window, or its result would depend on how records fall into micro-batches; read from a window and group by its start, e.g. `{example}` (docs/pipelines.md, \"Windows\")"
        ))),
        Some(_) => {
            for keys in &groups {
                if !keys
                    .iter()
                    .any(|k| [WINDOW_START, WINDOW_END].contains(&column_name(k)))
                {
                    return Err(DataFusionError::Plan(format!(
                        "a windowed query must GROUP BY window_start (or window_end), so that each window's result is its own, e.g. `{example}`"
                    )));
                }
            }
            let output: Vec<String> = plan
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            Ok(output
                .into_iter()
                .filter(|name| groups.iter().flatten().any(|k| column_name(k) == name))
                .collect())
        }
        None => Ok(Vec::new()),
    }
}

/// Operators that treat each row on its own: a query whose stage before
/// its aggregate has only these can fold batch by batch.
const ROW_BY_ROW: [&str; 9] = [
    "ProjectionExec",
    "FilterExec",
    "CoalesceBatchesExec",
    "CooperativeExec",
    "MicroBatchSourceExec",
    // A join with a lookup table: the micro-batch probes the table.
    "HashJoinExec",
    "DataSourceExec",
    "RepartitionExec",
    "CoalescePartitionsExec",
];

/// A windowed query cut at its aggregate ([`PlannedQuery::split_at`]).
pub struct Split {
    pub aggregate: Arc<AggregateExec>,
    /// Source rows (windowed) in, the aggregate's feed out.
    pub below: PlannedQuery,
    /// The aggregate's output in, the query's output out.
    pub above: PlannedQuery,
}

/// The columns the records of one group share — what a repartitioned
/// pipeline keys its records by: the columns the `GROUP BY` reads, window
/// columns aside, and a session window's key column. None (every record
/// one key) when another operator combines rows across groups: a window
/// function, a second aggregate, `DISTINCT`, a `LIMIT` or top-N (Nexmark
/// q5's `max(count(*)) OVER (PARTITION BY window_start)` needs every
/// auction of the window in one place). A join of the stream with itself
/// pairs rows of one key when its `ON` equates a column of each side of
/// the same name (`c.ad = i.ad`): that column, and no aggregate after.
fn key_sources(plan: &LogicalPlan, window: Option<&WindowSpec>) -> Result<Vec<String>> {
    use datafusion::logical_expr::utils::split_conjunction;
    let mut names = std::collections::BTreeSet::new();
    let mut aggregates = 0;
    let mut combines = false;
    let mut self_joins = 0;
    let mut join_keys = std::collections::BTreeSet::new();
    plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::Join(join)
                if crate::join::spec::reads_source(&join.left)
                    && crate::join::spec::reads_source(&join.right) =>
            {
                self_joins += 1;
                let equal = join.on.iter().map(|(l, r)| (l.clone(), r.clone())).chain(
                    join.filter
                        .iter()
                        .flat_map(split_conjunction)
                        .filter_map(|e| match e {
                            Expr::BinaryExpr(b)
                                if b.op == datafusion::logical_expr::Operator::Eq =>
                            {
                                Some((*b.left.clone(), *b.right.clone()))
                            }
                            _ => None,
                        }),
                );
                let before = join_keys.len();
                for (l, r) in equal {
                    if let (Expr::Column(a), Expr::Column(b)) = (&l, &r)
                        && a.name == b.name
                    {
                        join_keys.insert(a.name.clone());
                    }
                }
                if join_keys.len() == before {
                    combines = true;
                }
            }
            LogicalPlan::Aggregate(agg) => {
                aggregates += 1;
                for e in &agg.group_expr {
                    for c in e.column_refs() {
                        if c.name != WINDOW_START && c.name != WINDOW_END {
                            names.insert(c.name.clone());
                        }
                    }
                }
            }
            LogicalPlan::Window(_) | LogicalPlan::Distinct(_) | LogicalPlan::Limit(_) => {
                combines = true;
            }
            LogicalPlan::Sort(sort) if sort.fetch.is_some() => combines = true,
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if self_joins > 0 {
        names = if aggregates > 0 || self_joins > 1 {
            Default::default()
        } else {
            join_keys
        };
    }
    if combines || aggregates > 1 {
        names.clear();
    }
    if let Some(key) = window.and_then(|w| w.key_column.clone()) {
        names.insert(key);
    }
    Ok(names.into_iter().collect())
}

/// A query planned once over a micro-batch source.
pub struct PlannedQuery {
    slot: Slot,
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    /// Serializes runs: the slot holds one batch at a time.
    running: tokio::sync::Mutex<()>,
    shape: Shape,
    row_errors: Option<Arc<crate::udf::RowErrorCollector>>,
    /// The window the query reads (`tumble(source, …)`), if any.
    window: Option<WindowSpec>,
    /// Output columns that are grouping keys (a windowed output's key).
    group_columns: Vec<String>,
    /// Columns the grouping keys read ([`PlannedQuery::key_sources`]).
    key_sources: Vec<String>,
    /// A join of the stream with itself, if the query has one.
    join: Option<StreamJoin>,
    /// A join builds its table from the batch ([`builds_from_the_batch`]).
    rebuilds: bool,
}

/// The two inputs of a join of the stream with itself, read from slots of
/// their own (`crate::join`).
struct StreamJoin {
    spec: crate::join::JoinSpec,
    first: Slot,
    second: Slot,
    /// The rows kept from earlier batches ([`crate::join::JoinState`]).
    history: Mutex<Vec<RecordBatch>>,
}

/// `plan` with each scan of the micro-batch source reading `slot`.
fn rebind(plan: Arc<dyn ExecutionPlan>, slot: &Slot) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(plan
        .transform_up(|n| {
            Ok(match n.downcast_ref::<SlotExec>() {
                Some(s) => Transformed::yes(Arc::new(SlotExec {
                    schema: s.schema.clone(),
                    projection: s.projection.clone(),
                    slot: slot.clone(),
                    properties: s.properties.clone(),
                }) as Arc<dyn ExecutionPlan>),
                None => Transformed::no(n),
            })
        })?
        .data)
}

/// Whether a join of `plan` builds its table from the micro-batch: a join
/// keeps the table it built for its next execution (a lookup table is
/// built once), so such a plan is reset before each run.
fn builds_from_the_batch(plan: &Arc<dyn ExecutionPlan>) -> bool {
    (plan.name().contains("Join") && plan.children().first().is_some_and(|c| reads_the_batch(c)))
        || plan.children().into_iter().any(builds_from_the_batch)
}

/// `plan` with the tables its joins built from the micro-batch dropped.
fn reset_batch_builds(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(plan
        .transform_up(|n| {
            if n.name().contains("Join") && n.children().first().is_some_and(|c| reads_the_batch(c))
            {
                Ok(Transformed::yes(n.reset_state()?))
            } else {
                Ok(Transformed::no(n))
            }
        })?
        .data)
}

fn reads_the_batch(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.name() == "MicroBatchSourceExec" || plan.children().into_iter().any(reads_the_batch)
}

/// `plan` with the two inputs of its join of the stream with itself
/// reading `first` and `second`.
fn split_join(
    plan: Arc<dyn ExecutionPlan>,
    first: &Slot,
    second: &Slot,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut done = false;
    let plan = plan
        .transform_up(|n| {
            let children = n.children();
            if done
                || !n.name().contains("Join")
                || children.len() != 2
                || !children.iter().all(|c| reads_the_batch(c))
            {
                return Ok(Transformed::no(n));
            }
            done = true;
            let inputs = vec![
                rebind(children[0].clone(), first)?,
                rebind(children[1].clone(), second)?,
            ];
            // The new inputs are the old ones reading other slots: same
            // properties.
            let keep = datafusion::physical_plan::execution_plan::ReplaceChildrenOptions::new(
                datafusion::physical_plan::execution_plan::ChildrenPropertiesMode::Keep,
            );
            Ok(Transformed::yes(n.clone().replace_children(inputs, keep)?))
        })?
        .data;
    if !done {
        return Err(DataFusionError::Plan(
            "internal: the join of the stream with itself is not in the physical plan".into(),
        ));
    }
    Ok(plan)
}

/// How the query's rows relate to its input rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Projections only: output row i is input row i.
    OneToOne,
    /// Projections and filters: the output is some input rows, in order.
    Subset,
    /// Anything else (aggregates, sorts, windows, …).
    Other,
}

/// What the operators of `plan` do to rows.
fn shape(plan: &Arc<dyn ExecutionPlan>) -> Shape {
    let mut shape = Shape::OneToOne;
    let mut stack = vec![plan.clone()];
    while let Some(node) = stack.pop() {
        match node.name() {
            "ProjectionExec"
            | "MicroBatchSourceExec"
            | "CoalesceBatchesExec"
            | "CooperativeExec" => {}
            "FilterExec" => shape = Shape::Subset,
            _ => return Shape::Other,
        }
        stack.extend(node.children().into_iter().cloned());
    }
    shape
}

impl PlannedQuery {
    /// Plans `sql` against table `source` of `schema` in `ctx` (which holds
    /// the pipeline's UDFs).
    pub async fn new(ctx: &SessionContext, schema: SchemaRef, sql: &str) -> Result<Self> {
        let slot: Slot = Arc::new(Mutex::new(Vec::new()));
        let source: Arc<dyn TableProvider> = Arc::new(SlotTable {
            schema,
            slot: slot.clone(),
        });
        ctx.register_table("source", source.clone())?;
        let windowed_slot = slot.clone();
        let captured = register_window_functions(
            ctx,
            source,
            Arc::new(move |schema| {
                Arc::new(SlotTable {
                    schema,
                    slot: windowed_slot.clone(),
                }) as Arc<dyn TableProvider>
            }),
        );
        crate::sql::check_bounds(ctx, sql)?;
        let frame = ctx.sql_with_options(sql, crate::sql::read_only()).await?;
        let window = captured.lock().clone();
        let group_columns = check_grouping(frame.logical_plan(), window.as_ref())?;
        let key_sources = key_sources(frame.logical_plan(), window.as_ref())?;
        // Over a window, a join of the stream with itself pairs the rows of
        // each window; otherwise it is an interval join.
        let join = match window {
            Some(_) => None,
            None => crate::join::spec::find(&frame.clone().into_optimized_plan()?)?,
        };
        let mut plan = frame.create_physical_plan().await?;
        let join = match join {
            Some(spec) => {
                let (first, second): (Slot, Slot) = Default::default();
                plan = split_join(plan, &first, &second)?;
                Some(StreamJoin {
                    spec,
                    first,
                    second,
                    history: Mutex::new(Vec::new()),
                })
            }
            None => None,
        };
        if plan.properties().output_partitioning().partition_count() != 1 {
            return Err(DataFusionError::Plan(
                "the pipeline query must produce a single stream".into(),
            ));
        }
        let rebuilds = builds_from_the_batch(&plan);
        Ok(PlannedQuery {
            rebuilds,
            slot,
            shape: shape(&plan),
            plan,
            task: ctx.task_ctx(),
            running: tokio::sync::Mutex::new(()),
            row_errors: None,
            window,
            group_columns,
            key_sources,
            join,
        })
    }

    /// The query's join of the stream with itself, if it has one.
    pub fn join(&self) -> Option<&crate::join::JoinSpec> {
        self.join.as_ref().map(|j| &j.spec)
    }

    /// The rows kept from earlier batches, which the next runs join the
    /// batch with (a join of the stream with itself).
    pub fn set_history(&self, batches: Vec<RecordBatch>) {
        if let Some(j) = &self.join {
            *j.history.lock() = batches;
        }
    }

    /// The columns the query's windows are keyed by (its grouping keys and
    /// a session's key, as the columns they read; the window columns
    /// aside): records with equal values of these meet in the same
    /// windows' groups.
    pub fn key_sources(&self) -> &[String] {
        &self.key_sources
    }

    /// The columns of `source` the query reads (its scans' projections,
    /// window columns aside); `None` when a scan reads every column. What
    /// a re-keying stage carries through the internal topic.
    pub fn source_columns(&self) -> Option<std::collections::BTreeSet<String>> {
        let mut names = std::collections::BTreeSet::new();
        let mut stack = vec![self.plan.clone()];
        while let Some(node) = stack.pop() {
            if let Some(scan) = node.downcast_ref::<SlotExec>() {
                // Its schema is the projected one.
                scan.projection.as_ref()?;
                for f in scan.schema.fields() {
                    if f.name() != WINDOW_START && f.name() != WINDOW_END {
                        names.insert(f.name().clone());
                    }
                }
            }
            stack.extend(node.children().into_iter().cloned());
        }
        Some(names)
    }

    /// The window the query reads, if it reads one.
    pub fn window(&self) -> Option<&WindowSpec> {
        self.window.as_ref()
    }

    /// Output columns that are grouping keys of a windowed query
    /// (`window_start` and the `GROUP BY` columns it outputs).
    pub fn group_columns(&self) -> &[String] {
        &self.group_columns
    }

    /// The collector the query's UDFs were registered with
    /// ([`crate::udf::register_module_collecting`]).
    pub fn with_row_errors(mut self, collector: Arc<crate::udf::RowErrorCollector>) -> Self {
        self.row_errors = Some(collector);
        self
    }

    pub fn row_errors(&self) -> Option<&Arc<crate::udf::RowErrorCollector>> {
        self.row_errors.as_ref()
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    pub fn output_schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// The query's aggregate, if it has exactly one and everything before
    /// it treats rows one by one (what windows that fold their rows need,
    /// `window/groups.rs`); or why not.
    pub fn aggregate(&self) -> std::result::Result<Arc<AggregateExec>, String> {
        let mut aggregates = Vec::new();
        let mut stack = vec![self.plan.clone()];
        while let Some(node) = stack.pop() {
            if let Some(a) = node.downcast_ref::<AggregateExec>() {
                aggregates.push(a.clone());
            }
            stack.extend(node.children().into_iter().cloned());
        }
        let aggregate = match aggregates.len() {
            0 => return Err("the query does not aggregate".to_string()),
            1 => aggregates.remove(0),
            _ => {
                return Err(
                    "the query aggregates more than once (DISTINCT, or nested aggregates)"
                        .to_string(),
                );
            }
        };
        let mut stack = vec![aggregate.input().clone()];
        let mut sources = 0;
        while let Some(node) = stack.pop() {
            if node.name() == "MicroBatchSourceExec" {
                sources += 1;
                if sources > 1 {
                    return Err(
                        "the query joins the source with itself before its aggregate".to_string(),
                    );
                }
            }
            if !ROW_BY_ROW.contains(&node.name()) {
                return Err(format!(
                    "the query's `{}` before its aggregate works across rows",
                    node.name()
                ));
            }
            stack.extend(node.children().into_iter().cloned());
        }
        Ok(Arc::new(aggregate))
    }

    /// The query cut at `aggregate` (from [`Self::aggregate`]): the stage
    /// that feeds it (its input, then `feed` evaluated: row by row), and
    /// the stage after it (`HAVING`, projections, `ORDER BY`) over the
    /// aggregate's output.
    pub fn split_at(
        &self,
        aggregate: Arc<AggregateExec>,
        feed: Vec<datafusion::physical_plan::projection::ProjectionExpr>,
    ) -> std::result::Result<Split, String> {
        let below: Arc<dyn ExecutionPlan> = Arc::new(
            datafusion::physical_plan::projection::ProjectionExec::try_new(
                feed,
                aggregate.input().clone(),
            )
            .map_err(|e| e.to_string())?,
        );
        let mut found = None;
        let mut stack = vec![self.plan.clone()];
        while let Some(node) = stack.pop() {
            if node.downcast_ref::<AggregateExec>().is_some() {
                found = Some(Arc::as_ptr(&node) as *const ());
            }
            stack.extend(node.children().into_iter().cloned());
        }
        let Some(target) = found else {
            return Err("internal: the aggregate is not in the plan".into());
        };
        let slot: Slot = Arc::new(Mutex::new(Vec::new()));
        let schema = aggregate.schema();
        let leaf: Arc<dyn ExecutionPlan> = Arc::new(SlotExec {
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(schema.clone()),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )),
            schema,
            projection: None,
            slot: slot.clone(),
        });
        let above = self
            .plan
            .clone()
            .transform_up(|n| {
                Ok(if Arc::as_ptr(&n) as *const () == target {
                    Transformed::yes(leaf.clone())
                } else {
                    Transformed::no(n)
                })
            })
            .map_err(|e| e.to_string())?
            .data;
        let stage = |slot: Slot, plan: Arc<dyn ExecutionPlan>| PlannedQuery {
            rebuilds: builds_from_the_batch(&plan),
            slot,
            shape: shape(&plan),
            plan,
            task: self.task.clone(),
            running: tokio::sync::Mutex::new(()),
            row_errors: self.row_errors.clone(),
            window: None,
            group_columns: Vec::new(),
            key_sources: Vec::new(),
            join: None,
        };
        Ok(Split {
            aggregate,
            below: stage(self.slot.clone(), below),
            above: stage(slot, above),
        })
    }

    /// Runs the planned query over one batch.
    pub async fn run(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let _running = self.running.lock().await;
        *self.slot.lock() = vec![batch.clone()];
        let result = match &self.join {
            None => self.collect().await,
            Some(join) => self.run_join(join, batch).await,
        };
        self.slot.lock().clear();
        result
    }

    /// One execution of the plan over what its slots hold.
    async fn collect(&self) -> Result<Vec<RecordBatch>> {
        let plan = if self.rebuilds {
            reset_batch_builds(self.plan.clone())?
        } else {
            self.plan.clone()
        };
        collect(plan, self.task.clone()).await
    }

    /// Every pair with a row of `batch` in it, once: the batch's rows on
    /// the first side with kept and new rows on the second, then kept rows
    /// on the first side with the batch's on the second.
    async fn run_join(&self, join: &StreamJoin, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let history = join.history.lock().clone();
        let mut second = history.clone();
        second.push(batch.clone());
        *join.first.lock() = vec![batch.clone()];
        *join.second.lock() = second;
        let mut out = self.collect().await;
        if !history.is_empty()
            && let Ok(pairs) = &mut out
        {
            *join.first.lock() = history;
            *join.second.lock() = vec![batch];
            match self.collect().await {
                Ok(more) => pairs.extend(more),
                Err(e) => out = Err(e),
            }
        }
        join.first.lock().clear();
        join.second.lock().clear();
        out
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    async fn keys(sql: &str) -> Vec<String> {
        let ctx = datafusion::prelude::SessionContext::new();
        for table in ["t", "source"] {
            ctx.sql(&format!(
                "CREATE TABLE {table} (city VARCHAR, auction BIGINT, price BIGINT, ts TIMESTAMP)"
            ))
            .await
            .unwrap();
        }
        let frame = ctx.sql(sql).await.unwrap();
        key_sources(frame.logical_plan(), None).unwrap()
    }

    /// A repartitioned pipeline keys records by the grouping columns only
    /// when nothing combines the groups afterwards; otherwise each member
    /// would combine its own keys' groups only (a partial answer).
    #[tokio::test]
    async fn records_are_keyed_by_groups_only_when_nothing_combines_them_after() {
        assert_eq!(
            keys("SELECT city, count(*) FROM t GROUP BY city").await,
            ["city"]
        );
        assert_eq!(
            keys(
                "SELECT city, n FROM (SELECT city, count(*) AS n FROM t GROUP BY city) WHERE n > 2"
            )
            .await,
            ["city"]
        );
        for combining in [
            "SELECT auction, n FROM (SELECT auction, count(*) AS n, max(count(*)) OVER () AS most FROM t GROUP BY auction) WHERE n = most",
            "SELECT city, avg(p) FROM (SELECT city, auction, max(price) AS p FROM t GROUP BY city, auction) GROUP BY city",
            "SELECT auction, count(*) AS n FROM t GROUP BY auction ORDER BY n DESC LIMIT 3",
            "SELECT count(DISTINCT n) FROM (SELECT auction, count(*) AS n FROM t GROUP BY auction)",
        ] {
            assert_eq!(keys(combining).await, Vec::<String>::new(), "{combining}");
        }
        // A join of the stream with itself: by the column both sides equate.
        assert_eq!(
            keys("SELECT a.auction FROM source a JOIN source b ON a.auction = b.auction AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '1' SECOND")
                .await,
            ["auction"]
        );
        for combining in [
            "SELECT a.auction FROM source a JOIN source b ON a.auction = b.price AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '1' SECOND",
            "SELECT a.city, count(*) FROM source a JOIN source b ON a.auction = b.auction AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '1' SECOND GROUP BY a.city",
        ] {
            assert_eq!(keys(combining).await, Vec::<String>::new(), "{combining}");
        }
        // A join with a lookup table changes nothing.
        assert_eq!(
            keys("SELECT s.city, count(*) FROM source s JOIN t ON s.auction = t.price GROUP BY s.city").await,
            ["city"]
        );
    }
}

#[cfg(test)]
mod column_tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    /// The columns of `source` a query reads: what a re-keying stage
    /// carries (the window columns and unread ones aside).
    #[tokio::test]
    async fn a_query_reads_the_columns_it_names() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ride", DataType::Int64, true),
            Field::new("city", DataType::Utf8, true),
            Field::new("fare", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let ctx =
            SessionContext::new_with_config(crate::sql::session_config().with_target_partitions(1));
        let q = PlannedQuery::new(
            &ctx,
            schema,
            "SELECT window_start, city, count(*) AS n, sum(fare) AS cents FROM tumble(source, ts, INTERVAL '1' MINUTE) GROUP BY window_start, city",
        )
        .await
        .unwrap();
        let columns: Vec<String> = q.source_columns().unwrap().into_iter().collect();
        // `ts` is read by the window itself: the caller adds it.
        assert_eq!(columns, ["city", "fare"]);
    }
}
