//! A tenant's host work under its fair share.
//!
//! Guest calls take one of the process's slots ([`super::share`]); so does
//! everything else a tenant makes the machine do: every poll of one of its
//! futures (a pipeline's run loop — decode, transform, encode —, a query,
//! a deploy's build) and of each stream its query runs in a task of its
//! own (DataFusion's repartitioning and merging). A poll waits for the
//! tenant's turn without holding a thread, runs holding the slot, and is
//! charged the CPU time its thread used. A guest call made inside the poll
//! runs within the same slot (the slot is re-entrant per thread).
//!
//! So the tenants' weights and `max_concurrent_calls` bound their whole
//! work, not only their guest calls: a tenant sorting millions of rows in
//! SQL takes its share of the slots, not a core the others needed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::Stream;

use super::interrupt::Interrupt;
use super::state::Tenant;

/// `work` polled under `tenant`'s share: see the module docs.
pub struct Gated<F> {
    work: Pin<Box<F>>,
    turn: Turn,
}

impl Tenant {
    /// `work`, each of whose polls takes one of the tenant's slots.
    pub fn gate<F: Future>(self: &Arc<Self>, work: F) -> Gated<F> {
        Gated {
            work: Box::pin(work),
            turn: Turn::new(self),
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _slot = ready!(this.turn.poll(cx));
        this.work.as_mut().poll(cx)
    }
}

/// A task's turn in its tenant's share: what it keeps between a poll that
/// found no slot and the one that takes it.
struct Turn {
    tenant: Arc<Tenant>,
    /// Its place in the share's queue, and since when.
    queued: Option<u64>,
    since: Option<Instant>,
    /// Wakes the task when a slot kept for another tenant is let go.
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Turn {
    fn new(tenant: &Arc<Tenant>) -> Self {
        Turn {
            tenant: tenant.clone(),
            queued: None,
            since: None,
            retry: None,
        }
    }

    /// The tenant's slot for one poll; when a freed slot is kept for
    /// another tenant a moment, a timer wakes the task when it is let go.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<super::state::CallPermit<'_>> {
        match self
            .tenant
            .poll_enter(&mut self.queued, &mut self.since, cx)
        {
            Poll::Ready(slot) => {
                self.retry = None;
                Poll::Ready(slot)
            }
            Poll::Pending => {
                if let Some(until) = self.tenant.slot_held_for_other() {
                    let mut sleep = Box::pin(tokio::time::sleep_until(until.into()));
                    if sleep.as_mut().poll(cx).is_ready() {
                        cx.waker().wake_by_ref();
                    } else {
                        self.retry = Some(sleep);
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(ticket) = self.queued {
            self.tenant.leave_queue(ticket);
        }
    }
}

/// A record-batch stream polled under its tenant's share.
struct GatedStream {
    inner: SendableRecordBatchStream,
    turn: Turn,
    /// The interrupt of the work the plan belongs to: the stream is polled
    /// in a task of its own, where the work's scope is not set.
    interrupt: Option<Interrupt>,
}

impl Stream for GatedStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let _slot = ready!(this.turn.poll(cx));
        match &this.interrupt {
            Some(interrupt) => interrupt.scope(|| this.inner.as_mut().poll_next(cx)),
            None => this.inner.as_mut().poll_next(cx),
        }
    }
}

impl RecordBatchStream for GatedStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

/// The plan with every input that DataFusion polls in a task of its own
/// (below a repartition, a coalesce or a merge of partitions) polled under
/// `tenant`'s share, and in the scope of the [`Interrupt`] of the work
/// that gates it (the caller's, if any). The plan's own stream is polled by
/// the caller: run it inside [`Tenant::gate`].
pub fn gate_plan(
    plan: Arc<dyn ExecutionPlan>,
    tenant: &Arc<Tenant>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let interrupt = Interrupt::current();
    plan.transform_up(|node| {
        if !SPAWNS_TASKS.contains(&node.name()) {
            return Ok(Transformed::no(node));
        }
        let children = node
            .children()
            .into_iter()
            .map(|child| {
                if child.name() == "WorkTableExec" || child.name() == GatedExec::NAME {
                    // A recursive query finds its work table by type.
                    child.clone()
                } else {
                    Arc::new(GatedExec {
                        inner: child.clone(),
                        tenant: tenant.clone(),
                        interrupt: interrupt.clone(),
                    }) as Arc<dyn ExecutionPlan>
                }
            })
            .collect();
        #[expect(deprecated)]
        node.with_new_children(children).map(Transformed::yes)
    })
    .map(|t| t.data)
}

/// Operators whose inputs DataFusion polls in tasks it spawns.
const SPAWNS_TASKS: [&str; 4] = [
    "RepartitionExec",
    "CoalescePartitionsExec",
    "SortPreservingMergeExec",
    "AnalyzeExec",
];

/// A plan node whose partitions' streams are polled under a tenant's share.
struct GatedExec {
    inner: Arc<dyn ExecutionPlan>,
    tenant: Arc<Tenant>,
    interrupt: Option<Interrupt>,
}

impl GatedExec {
    const NAME: &'static str = "TenantShareExec";
}

impl fmt::Debug for GatedExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantShareExec")
            .field("tenant", &self.tenant.name())
            .finish()
    }
}

impl DisplayAs for GatedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: tenant={}", Self::NAME, self.tenant.name())
    }
}

impl ExecutionPlan for GatedExec {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.inner]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(inner), true) => Ok(Arc::new(GatedExec {
                inner,
                tenant: self.tenant.clone(),
                interrupt: self.interrupt.clone(),
            })),
            _ => Err(datafusion::error::DataFusionError::Internal(format!(
                "{} takes one input",
                Self::NAME
            ))),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Ok(Box::pin(GatedStream {
            inner: self.inner.execute(partition, context)?,
            turn: Turn::new(&self.tenant),
            interrupt: self.interrupt.clone(),
        }))
    }
}
