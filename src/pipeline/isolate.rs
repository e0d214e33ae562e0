//! Running a micro-batch so that one poison record never fails its
//! neighbours: when the query fails on a batch, the batch is split in halves
//! and each half retried, down to single rows. Rows that still fail alone
//! are returned with their error; every other row's output is kept.

use datafusion::arrow::array::RecordBatch;
use datafusion::error::DataFusionError;

use super::query::PlannedQuery;
use crate::sandbox::{Failure, UdfError};

/// A row (index into the input batch) that fails on its own.
#[derive(Debug, Clone)]
pub struct FailedRow {
    pub row: usize,
    pub error: String,
    /// The failing UDF, when the error came from one.
    pub udf: Option<String>,
}

/// Output batches of the rows that succeeded, and the rows that failed.
pub struct Isolated {
    pub outputs: Vec<RecordBatch>,
    pub failed: Vec<FailedRow>,
    /// Query executions it took (1 when nothing failed).
    pub runs: usize,
}

/// Whether the query failed because a UDF's circuit breaker is open: then
/// every row fails alike and bisecting is pointless.
fn circuit_open(err: &DataFusionError) -> bool {
    matches!(err.find_root(), DataFusionError::External(inner)
        if inner.downcast_ref::<UdfError>()
            .is_some_and(|u| matches!(u.failure, Failure::CircuitOpen { .. })))
}

fn describe(err: &DataFusionError) -> (String, Option<String>) {
    if let DataFusionError::External(inner) = err.find_root()
        && let Some(udf) = inner.downcast_ref::<UdfError>()
    {
        return (udf.to_string(), Some(udf.udf.clone()));
    }
    (crate::cli::user_message(err), None)
}

/// Runs `batch` through `query`, bisecting on failure.
pub async fn run_isolating(query: &PlannedQuery, batch: RecordBatch) -> Isolated {
    let mut outputs = Vec::new();
    let mut failed = Vec::new();
    let mut runs = 0;
    // Ranges still to run, last = next; processed in row order.
    let mut pending = vec![(0usize, batch.num_rows())];
    while let Some((offset, len)) = pending.pop() {
        if len == 0 {
            continue;
        }
        runs += 1;
        match query.run(batch.slice(offset, len)).await {
            Ok(batches) => outputs.extend(batches.into_iter().filter(|b| b.num_rows() > 0)),
            Err(err) if len == 1 || circuit_open(&err) => {
                let (error, udf) = describe(&err);
                failed.extend((offset..offset + len).map(|row| FailedRow {
                    row,
                    error: error.clone(),
                    udf: udf.clone(),
                }));
            }
            Err(_) => {
                let half = len / 2;
                pending.push((offset + half, len - half));
                pending.push((offset, half));
            }
        }
    }
    Isolated {
        outputs,
        failed,
        runs,
    }
}
