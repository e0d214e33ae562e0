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
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, collect,
};
use datafusion::prelude::SessionContext;
use parking_lot::Mutex;

type Slot = Arc<Mutex<Option<RecordBatch>>>;

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

    fn execute(
        &self,
        _partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let batch = self.slot.lock().clone();
        let batches = match batch {
            Some(b) => vec![match &self.projection {
                Some(p) => b.project(p)?,
                None => b,
            }],
            None => vec![],
        };
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            self.schema.clone(),
            None,
        )?))
    }
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
        let slot: Slot = Arc::new(Mutex::new(None));
        ctx.register_table(
            "source",
            Arc::new(SlotTable {
                schema,
                slot: slot.clone(),
            }),
        )?;
        let plan = ctx
            .sql_with_options(sql, crate::sql::read_only())
            .await?
            .create_physical_plan()
            .await?;
        if plan.properties().output_partitioning().partition_count() != 1 {
            return Err(DataFusionError::Plan(
                "the pipeline query must produce a single stream".into(),
            ));
        }
        Ok(PlannedQuery {
            slot,
            shape: shape(&plan),
            plan,
            task: ctx.task_ctx(),
            running: tokio::sync::Mutex::new(()),
            row_errors: None,
        })
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

    /// Runs the planned query over one batch.
    pub async fn run(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let _running = self.running.lock().await;
        *self.slot.lock() = Some(batch);
        let result = collect(self.plan.clone(), self.task.clone()).await;
        *self.slot.lock() = None;
        result
    }
}
