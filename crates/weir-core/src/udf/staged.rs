//! Staged execution: run one function of a module on sample rows given as
//! JSON, under dry-run limits, and report outputs, per-row errors and time.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::json::ReaderBuilder;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::abi::ArrowType;
use crate::sandbox::{Failure, UdfError, UdfModule};

/// Rows accepted by one staged run.
pub const MAX_ROWS: usize = 1000;

#[derive(Debug, Serialize)]
pub struct RowError {
    pub row: usize,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct Staged {
    /// One output per row (`null` for a failed row).
    pub outputs: Vec<Value>,
    pub errors: Vec<RowError>,
    /// Wall time of the guest calls (one per batch, plus one per row when a
    /// batch failed and rows were run alone).
    pub guest_ms: f64,
    pub calls: usize,
}

/// Runs `function` on `rows` (each an array of argument values).
pub fn run_rows(module: &Arc<UdfModule>, function: &str, rows: &[Value]) -> Result<Staged, String> {
    run_rows_until(module, function, rows, None)
}

/// Like [`run_rows`], but no guest call starts after `deadline`: rows not
/// run by then are reported as such (a request's deadline cancels the rest
/// of its guest work; a call running then is interrupted).
pub fn run_rows_until(
    module: &Arc<UdfModule>,
    function: &str,
    rows: &[Value],
    deadline: Option<Instant>,
) -> Result<Staged, String> {
    if rows.len() > MAX_ROWS {
        return Err(format!(
            "{} rows given; a staged run takes at most {MAX_ROWS}",
            rows.len()
        ));
    }
    if let Some(index) = module.aggregate_index(function) {
        return run_aggregate(module, index, rows, deadline);
    }
    let index = module.function_index(function).ok_or_else(|| {
        let known: Vec<&str> = module
            .manifest()
            .functions
            .iter()
            .map(|f| f.name.as_str())
            .chain(module.manifest().aggregates.iter().map(|f| f.name.as_str()))
            .collect();
        format!(
            "the module has no function `{function}` (it has: {})",
            known.join(", ")
        )
    })?;
    let decl = &module.manifest().functions[index];
    let args = arg_columns(&decl.args, &decl.signature(), rows)?;
    let mut guest = std::time::Duration::ZERO;
    let mut calls = 1;
    let started = Instant::now();
    let whole = module.call_until(index, &args, rows.len(), deadline);
    guest += started.elapsed();
    let (outputs, errors) = match whole {
        Ok(out) => (to_json(&out)?, Vec::new()),
        // ABI 1.1: every failing row in one call, with the others' outputs.
        Err(UdfError {
            failure: Failure::RowErrors(partial),
            ..
        }) if partial.array.len() == rows.len() => {
            let errors = partial
                .errors
                .iter()
                .map(|(row, message)| RowError {
                    row: *row,
                    error: message.clone(),
                })
                .collect();
            (to_json(&partial.array)?, errors)
        }
        Err(_) => {
            // Run each row alone: which ones fail, and the others' outputs.
            let mut outputs = Vec::with_capacity(rows.len());
            let mut errors = Vec::new();
            for row in 0..rows.len() {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    outputs.push(Value::Null);
                    errors.push(RowError {
                        row,
                        error: "not run: the staged run's deadline passed".to_string(),
                    });
                    continue;
                }
                let one: Vec<ArrayRef> = args.iter().map(|a| a.slice(row, 1)).collect();
                let started = Instant::now();
                let result = module.call_until(index, &one, 1, deadline);
                guest += started.elapsed();
                calls += 1;
                match result {
                    Ok(out) => outputs.extend(to_json(&out)?),
                    Err(mut e) => {
                        // Name the row of the sample, not of the 1-row batch.
                        e.failure = std::mem::replace(&mut e.failure, Failure::Cancelled)
                            .first_row_error()
                            .at_row(&|_| row);
                        outputs.push(Value::Null);
                        errors.push(RowError {
                            row,
                            error: e.to_string(),
                        });
                    }
                }
            }
            (outputs, errors)
        }
    };
    Ok(Staged {
        outputs,
        errors,
        guest_ms: guest.as_secs_f64() * 1000.0,
        calls,
    })
}

/// An aggregate's staged run: every row is one group. The output is the
/// group's value; the run also checks that the state the aggregate exports
/// merges back to the same value (the rows split in two partial groups,
/// their states merged), as the host relies on when it merges partitions.
fn run_aggregate(
    module: &Arc<UdfModule>,
    index: usize,
    rows: &[Value],
    deadline: Option<Instant>,
) -> Result<Staged, String> {
    use crate::sandbox::aggregate::{Emit, Fold};
    use datafusion::arrow::array::UInt32Array;
    let decl = module.manifest().aggregates[index].clone();
    let args = arg_columns(&decl.args, &decl.signature(), rows)?;
    let n = rows.len();
    let started = Instant::now();
    let mut calls = 0;
    let zeros = |len: usize| -> ArrayRef { Arc::new(UInt32Array::from(vec![0u32; len])) };
    let mut whole = module.aggregate_run(index, deadline);
    let row_error = |e: crate::sandbox::UdfError| match &e.failure {
        Failure::RowError { row, .. } => RowError {
            row: *row,
            error: e.to_string(),
        },
        _ => RowError {
            row: 0,
            error: e.to_string(),
        },
    };
    calls += 1;
    if let Err(e) = whole.fold(Fold::Update, &args, zeros(n), n, 1) {
        return Ok(Staged {
            outputs: vec![Value::Null],
            errors: vec![row_error(e)],
            guest_ms: started.elapsed().as_secs_f64() * 1000.0,
            calls,
        });
    }
    calls += 1;
    let value = whole
        .emit(Emit::Evaluate, 1, false)
        .map_err(|e| e.to_string())?;
    let value = to_json(&value[0])?;
    // The same rows as two partial groups, merged.
    let half = n / 2;
    let mut merged = module.aggregate_run(index, deadline);
    for (start, len) in [(0, half), (half, n - half)] {
        let mut part = module.aggregate_run(index, deadline);
        let slice: Vec<ArrayRef> = args.iter().map(|a| a.slice(start, len)).collect();
        part.fold(Fold::Update, &slice, zeros(len), len, 1)
            .map_err(|e| e.to_string())?;
        let state = part.emit(Emit::State, 1, true).map_err(|e| e.to_string())?;
        merged
            .fold(Fold::Merge, &state, zeros(1), 1, 1)
            .map_err(|e| e.to_string())?;
        calls += 3;
    }
    calls += 1;
    let again = merged
        .emit(Emit::Evaluate, 1, false)
        .map_err(|e| e.to_string())?;
    let again = to_json(&again[0])?;
    let mut errors = Vec::new();
    if again != value {
        errors.push(RowError {
            row: 0,
            error: format!(
                "aggregate `{}`: merging the states of rows 0..{half} and {half}..{n} gives {}, all rows at once give {}; its state or merge loses something",
                decl.name, again[0], value[0]
            ),
        });
    }
    Ok(Staged {
        outputs: value,
        errors,
        guest_ms: started.elapsed().as_secs_f64() * 1000.0,
        calls,
    })
}
/// The argument columns of `rows` (each an array of values) for `types`.
fn arg_columns(
    types: &[crate::abi::AbiType],
    signature: &str,
    rows: &[Value],
) -> Result<Vec<ArrayRef>, String> {
    let fields: Vec<Field> = types
        .iter()
        .enumerate()
        .map(|(i, t)| Field::new(format!("a{i}"), t.data_type(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let mut objects = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        let values = row
            .as_array()
            .filter(|v| v.len() == types.len())
            .ok_or_else(|| {
                format!(
                    "row {r}: give an array of {} argument value(s) for `{signature}`",
                    types.len(),
                )
            })?;
        let object: Map<String, Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("a{i}"), v.clone()))
            .collect();
        objects.push(Value::Object(object));
    }
    let mut decoder = ReaderBuilder::new(schema.clone())
        .build_decoder()
        .map_err(|e| e.to_string())?;
    decoder
        .serialize(&objects)
        .map_err(|e| format!("rows do not match `{signature}`: {e}"))?;
    let batch = decoder
        .flush()
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| RecordBatch::new_empty(schema));
    Ok(batch.columns().to_vec())
}

fn to_json(array: &ArrayRef) -> Result<Vec<Value>, String> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "out",
        array.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(schema, vec![array.clone()]).map_err(|e| e.to_string())?;
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    let text = writer.into_inner();
    let rows: Vec<Map<String, Value>> = if text.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&text).map_err(|e| e.to_string())?
    };
    // The JSON writer leaves out null fields.
    Ok(rows
        .into_iter()
        .map(|mut r| r.remove("out").unwrap_or(Value::Null))
        .collect())
}
