//! Running a micro-batch so that one poison record never fails its
//! neighbours: when the query fails on a batch — or its output cannot be
//! encoded or is too large for the sink — the batch is split in halves and
//! each half retried, down to single rows. Rows that still fail alone are
//! returned with their error; every other row's output is kept.

use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::error::DataFusionError;

use super::query::{PlannedQuery, Shape};
use super::record::SinkRecord;
use crate::sandbox::{Failure, UdfError};

/// A row (index into the input batch) that fails on its own.
#[derive(Debug, Clone)]
pub struct FailedRow {
    pub row: usize,
    /// `transform` (the query or a UDF failed) or `sink` (the output could
    /// not be encoded or does not fit the sink).
    pub stage: &'static str,
    pub error: String,
    /// The failing UDF, when the error came from one.
    pub udf: Option<String>,
    /// Whether the UDF itself failed (trap, out of CPU, …: what its circuit
    /// breaker counts) rather than reporting an error for this row.
    pub function_failure: bool,
    /// Whether the UDF was not called because its circuit breaker is open.
    pub circuit_open: bool,
    /// Whether it failed for want of capacity (no instance slot, the
    /// tenant's memory total): the batch is to be retried, not dead-lettered.
    pub capacity: bool,
}

/// Output records of the rows that succeeded, and the rows that failed.
pub struct Isolated {
    pub outputs: Vec<SinkRecord>,
    pub failed: Vec<FailedRow>,
    /// Query executions it took (1 when nothing failed).
    pub runs: usize,
}

/// Turns a query's output into sink records, or says why it cannot.
pub type Finish<'a> = dyn Fn(&[RecordBatch]) -> Result<Vec<SinkRecord>, String> + Send + Sync + 'a;

enum RunError {
    Query(DataFusionError),
    Output(String),
}

/// Whether the query failed because a UDF's circuit breaker is open, or
/// for want of capacity: then every row fails alike and bisecting is
/// pointless.
fn fails_every_row(err: &RunError) -> bool {
    matches!(err, RunError::Query(err) if matches!(err.find_root(), DataFusionError::External(inner)
        if inner.downcast_ref::<UdfError>()
            .is_some_and(|u| matches!(u.failure, Failure::CircuitOpen { .. }) || u.failure.is_capacity())))
}

fn describe(err: &RunError, row: usize) -> FailedRow {
    let err = match err {
        RunError::Output(error) => {
            return FailedRow {
                row,
                stage: "sink",
                error: error.clone(),
                udf: None,
                function_failure: false,
                circuit_open: false,
                capacity: false,
            };
        }
        RunError::Query(err) => err,
    };
    if let DataFusionError::External(inner) = err.find_root()
        && let Some(udf) = inner.downcast_ref::<UdfError>()
    {
        return FailedRow {
            row,
            stage: "transform",
            error: udf.to_string(),
            udf: Some(udf.udf.clone()),
            function_failure: udf.failure.is_function_failure(),
            circuit_open: matches!(udf.failure, Failure::CircuitOpen { .. }),
            capacity: udf.failure.is_capacity(),
        };
    }
    FailedRow {
        row,
        stage: "transform",
        error: crate::error::user_message(err),
        udf: None,
        function_failure: false,
        circuit_open: false,
        capacity: false,
    }
}

/// Runs `batch` through `query` and `finish`. Row errors of UDFs are
/// collected in the same run when the query lets each UDF row be traced to
/// its input row (projections and filters; the UDF saw every row): the
/// failing rows are set aside and the rest kept without re-running
/// (projections) or with one more run over the good rows (filters). Any
/// other failure, or a query that mixes rows, falls back to bisection.
pub async fn run_isolating(
    query: &PlannedQuery,
    batch: RecordBatch,
    finish: &Finish<'_>,
) -> Isolated {
    let Some(collector) = query.row_errors().filter(|_| query.shape() != Shape::Other) else {
        return bisect(query, batch, finish).await;
    };
    let rows = batch.num_rows();
    collector.start();
    let result = query.run(batch.clone()).await;
    let calls = collector.finish();
    let Ok(outputs) = result else {
        return bisect(query, batch, finish).await;
    };
    if calls.is_empty() {
        return match finish(&outputs) {
            Ok(outputs) => Isolated {
                outputs,
                failed: Vec::new(),
                runs: 1,
            },
            Err(_) => bisect(query, batch, finish).await,
        };
    }
    if calls.iter().any(|c| c.rows != rows) {
        // A UDF saw a subset of the rows (after a filter, in a CASE…): its
        // row numbers are not the batch's.
        return bisect(query, batch, finish).await;
    }
    let mut failed: Vec<FailedRow> = Vec::new();
    let mut bad = vec![false; rows];
    if calls.iter().any(|c| c.errors.rows().any(|r| r >= rows)) {
        return bisect(query, batch, finish).await;
    }
    for call in &calls {
        let udf = call.errors.udf();
        for (row, error) in call.errors.describe() {
            if !std::mem::replace(&mut bad[row], true) {
                failed.push(FailedRow {
                    row,
                    stage: "transform",
                    error,
                    udf: udf.map(str::to_string),
                    function_failure: false,
                    circuit_open: false,
                    capacity: false,
                });
            }
        }
    }
    let good = BooleanArray::from_iter(bad.iter().map(|b| Some(!b)));
    if query.shape() == Shape::OneToOne {
        // Output row i is input row i: drop the failed ones.
        let kept: Result<Vec<RecordBatch>, _> = split_mask(&good, &outputs).and_then(|masks| {
            outputs
                .iter()
                .zip(&masks)
                .map(|(b, m)| filter_record_batch(b, m))
                .collect()
        });
        if let Ok(kept) = kept
            && let Ok(outputs) = finish(&kept)
        {
            failed.sort_by_key(|f| f.row);
            return Isolated {
                outputs,
                failed,
                runs: 1,
            };
        }
        return bisect(query, batch, finish).await;
    }
    // Filters: run again over the good rows only.
    let Ok(clean) = filter_record_batch(&batch, &good) else {
        return bisect(query, batch, finish).await;
    };
    let index: Vec<usize> = (0..rows).filter(|r| !bad[*r]).collect();
    let mut rest = bisect(query, clean, finish).await;
    for f in &mut rest.failed {
        f.row = index[f.row];
    }
    failed.extend(rest.failed);
    failed.sort_by_key(|f| f.row);
    Isolated {
        outputs: rest.outputs,
        failed,
        runs: rest.runs + 1,
    }
}

/// `mask` cut into pieces as long as each of `batches`; an error if their
/// rows do not add up to the mask's.
fn split_mask(
    mask: &BooleanArray,
    batches: &[RecordBatch],
) -> Result<Vec<BooleanArray>, datafusion::arrow::error::ArrowError> {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if total != mask.len() {
        return Err(datafusion::arrow::error::ArrowError::ComputeError(
            "the output rows do not match the input rows".into(),
        ));
    }
    let mut at = 0;
    Ok(batches
        .iter()
        .map(|b| {
            let piece = mask.slice(at, b.num_rows());
            at += b.num_rows();
            piece
        })
        .collect())
}

/// Runs `batch` through `query` and `finish`, bisecting on failure.
async fn bisect(query: &PlannedQuery, batch: RecordBatch, finish: &Finish<'_>) -> Isolated {
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
        let result = match query.run(batch.slice(offset, len)).await {
            Ok(batches) => finish(&batches).map_err(RunError::Output),
            Err(e) => Err(RunError::Query(e)),
        };
        match result {
            Ok(records) => outputs.extend(records),
            Err(err) if len == 1 || fails_every_row(&err) => {
                failed.extend((offset..offset + len).map(|row| describe(&err, row)));
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

/// Runs `batch` — the records of windows being emitted — through `query`
/// and `finish` as a whole: an aggregate over half a window is not the
/// window's result, so on failure the rows that fail alone are found (by
/// bisection, its outputs discarded), set aside, and the query runs once
/// more over the rest. If the rest still fails together, every row fails.
pub async fn run_whole(query: &PlannedQuery, batch: RecordBatch, finish: &Finish<'_>) -> Isolated {
    let rows = batch.num_rows();
    let attempt = |b: RecordBatch| async move {
        match query.run(b).await {
            Ok(batches) => finish(&batches).map_err(RunError::Output),
            Err(e) => Err(RunError::Query(e)),
        }
    };
    let all_failed = |err: &RunError, mut failed: Vec<FailedRow>, rest: &[usize], runs| {
        failed.extend(rest.iter().map(|&row| describe(err, row)));
        failed.sort_by_key(|f| f.row);
        Isolated {
            outputs: Vec::new(),
            failed,
            runs,
        }
    };
    let err = match attempt(batch.clone()).await {
        Ok(outputs) => {
            return Isolated {
                outputs,
                failed: Vec::new(),
                runs: 1,
            };
        }
        Err(err) => err,
    };
    let every: Vec<usize> = (0..rows).collect();
    if rows == 1 || fails_every_row(&err) {
        return all_failed(&err, Vec::new(), &every, 1);
    }
    let probe = bisect(query, batch.clone(), finish).await;
    let runs = 1 + probe.runs;
    let mut bad = vec![false; rows];
    for f in &probe.failed {
        bad[f.row] = true;
    }
    if probe.failed.is_empty() || probe.failed.iter().any(|f| f.capacity) {
        return all_failed(&err, Vec::new(), &every, runs);
    }
    let good = BooleanArray::from_iter(bad.iter().map(|b| Some(!b)));
    let rest: Vec<usize> = (0..rows).filter(|r| !bad[*r]).collect();
    let Ok(clean) = filter_record_batch(&batch, &good) else {
        return all_failed(&err, Vec::new(), &every, runs);
    };
    match attempt(clean).await {
        Ok(outputs) => {
            let mut failed = probe.failed;
            failed.sort_by_key(|f| f.row);
            Isolated {
                outputs,
                failed,
                runs: runs + 1,
            }
        }
        Err(again) => all_failed(&again, probe.failed, &rest, runs + 1),
    }
}
