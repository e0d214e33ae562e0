//! A hostile guest per threat (`tests/hostile/*.wat`): each yields its own
//! specific error, and the engine then runs the next query normally.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array};
use weir::{Failure, LoadError, Sandbox, SandboxLimits, SandboxOptions, UdfError, UdfModule};

use crate::support;

/// Tight limits so that every threat trips quickly.
fn strict_sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let limits = SandboxLimits {
            memory_bytes: 16 << 20,
            cpu_ms_per_batch: 200,
            max_output_bytes: 1 << 20,
            wasm_stack_bytes: 256 << 10,
            table_elements: 1000,
            ..SandboxLimits::default()
        };
        Sandbox::with_options(SandboxOptions {
            limits,
            cache_dir: None,
        })
        .unwrap()
    })
}

fn load(name: &str) -> Result<Arc<UdfModule>, LoadError> {
    let path = support::repo()
        .join("tests/hostile")
        .join(format!("{name}.wat"));
    strict_sandbox().load_file(path)
}

fn ints(values: &[i64]) -> Vec<ArrayRef> {
    vec![Arc::new(Int64Array::from(values.to_vec()))]
}

/// Calls `f` of the hostile module on four rows and returns its error.
fn call_err(name: &str) -> UdfError {
    let module = load(name).unwrap_or_else(|e| panic!("{name} should load: {e}"));
    let err = module
        .call(0, &ints(&[1, 2, 3, 4]), 4)
        .expect_err(&format!("{name} should fail"));
    assert_eq!(
        module.live_instances(),
        0,
        "{name}: a failed instance must be discarded"
    );
    err
}

/// After any threat, a benign module in the same sandbox works.
fn engine_still_works() {
    let benign = strict_sandbox()
        .load_file(support::module_path("geo"))
        .unwrap();
    let index = benign.function_index("scale_add").unwrap();
    let a: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0]));
    let out = benign.call(index, &[a.clone(), a], 2).unwrap();
    let out = out.as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(out.values().as_ref(), &[2.5, 5.0]);
}

fn expect_failure(name: &str, check: impl Fn(&Failure) -> bool, message: &str) {
    let err = call_err(name);
    assert!(
        check(&err.failure),
        "{name}: unexpected failure {:?}",
        err.failure
    );
    let text = err.to_string();
    assert!(
        text.contains(message),
        "{name}: message `{text}` lacks `{message}`"
    );
    assert!(text.contains(&format!("module `{name}.wat`")), "{text}");
    engine_still_works();
}

fn expect_load_error(name: &str, message: &str) {
    let err = load(name).expect_err(&format!("{name} must be refused at load"));
    let text = err.to_string();
    assert!(
        text.contains(message),
        "{name}: message `{text}` lacks `{message}`"
    );
    engine_still_works();
}

#[test]
fn infinite_loop_runs_out_of_cpu() {
    expect_failure(
        "infinite_loop",
        |f| {
            matches!(
                f,
                Failure::OutOfCpu {
                    during_start: false
                }
            )
        },
        "ran out of CPU after 200 ms on a batch of 4 rows; raise `sandbox.cpu_ms_per_batch`",
    );
}

#[test]
fn loop_of_calls_runs_out_of_cpu() {
    expect_failure(
        "call_loop",
        |f| matches!(f, Failure::OutOfCpu { .. }),
        "ran out of CPU",
    );
}

#[test]
fn looping_start_function_is_refused_at_load() {
    expect_load_error(
        "start_loop",
        "ran out of CPU (200 ms) in its start function",
    );
}

#[test]
fn memory_grow_bomb_stops_at_the_cap() {
    expect_failure(
        "memory_grow_bomb",
        |f| matches!(f, Failure::OutOfMemory { limit, .. } if *limit == 16 << 20),
        "the limit is 16777216; raise `sandbox.memory_bytes`",
    );
}

#[test]
fn oversized_initial_memory_is_refused_at_load() {
    expect_load_error(
        "huge_initial_memory",
        "declares an initial memory of 4294967296 bytes, above the 16777216-byte limit",
    );
}

#[test]
fn huge_table_is_refused_at_load() {
    expect_load_error(
        "huge_table",
        "declares a table of 10000000 elements, above the 1000-element limit",
    );
}

#[test]
fn deep_recursion_overflows_the_wasm_stack() {
    expect_failure(
        "deep_recursion",
        |f| matches!(f, Failure::StackOverflow),
        "overflowed its 256 KiB wasm stack",
    );
}

#[test]
fn forbidden_imports_are_refused_at_load_by_name() {
    expect_load_error(
        "forbidden_import",
        "imports `wasi_snapshot_preview1::fd_write`, which is not granted (granted: weir::log)",
    );
    expect_load_error("clock_import", "imports `weir::now`, which is not granted");
}

#[test]
fn capabilities_can_be_withheld() {
    let sandbox = Sandbox::with_options(SandboxOptions {
        limits: SandboxLimits {
            capabilities: vec![],
            ..SandboxLimits::default()
        },
        cache_dir: None,
    })
    .unwrap();
    let err = sandbox
        .load_file(support::module_path("testkit"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("imports `weir::log`, which is not granted (granted: nothing)"),
        "{err}"
    );
}

#[test]
fn out_of_bounds_output_pointer_is_invalid_output() {
    expect_failure(
        "oob_output_pointer",
        |f| matches!(f, Failure::InvalidOutput(_)),
        "the values buffer at 0x7ff00000..0x7ff00020 lies outside the guest's 65536-byte memory",
    );
    expect_failure(
        "oob_descriptor",
        |f| matches!(f, Failure::InvalidOutput(_)),
        "the result descriptor at 0xfffffffc",
    );
}

#[test]
fn wrapping_pointer_plus_length_is_invalid_output() {
    expect_failure(
        "wrapping_ptr_len",
        |f| matches!(f, Failure::InvalidOutput(_)),
        "lies outside the guest's",
    );
}

#[test]
fn wrong_row_count_is_invalid_output() {
    expect_failure(
        "wrong_row_count",
        |f| matches!(f, Failure::InvalidOutput(_)),
        "returned 5 rows for a batch of 4 rows",
    );
}

#[test]
fn invalid_utf8_is_invalid_output() {
    expect_failure(
        "invalid_utf8",
        |f| matches!(f, Failure::InvalidOutput(_)),
        "utf8 output is not valid",
    );
}

#[test]
fn decreasing_offsets_are_invalid_output() {
    expect_failure(
        "bad_offsets",
        |f| matches!(f, Failure::InvalidOutput(_)),
        "offsets decrease at row 1: 8 then 2",
    );
}

#[test]
fn oversized_output_is_invalid_output() {
    expect_failure(
        "oversized_output",
        |f| matches!(f, Failure::InvalidOutput(_)),
        "above the 1048576-byte output limit (`max_output_bytes`)",
    );
}

#[test]
fn allocator_returning_foreign_memory_is_invalid_output() {
    expect_failure(
        "bad_alloc",
        |f| matches!(f, Failure::InvalidOutput(_)),
        "which does not leave",
    );
}

#[test]
fn deterministic_functions_get_canonical_nans() {
    let module = load("nan_bits").unwrap();
    let zero: ArrayRef = Arc::new(Float64Array::from(vec![0.0]));
    let out = module.call(0, &[zero], 1).unwrap();
    let bits = out.as_any().downcast_ref::<Int64Array>().unwrap().value(0);
    assert_eq!(
        bits as u64, 0x7ff8_0000_0000_0000,
        "0/0 must be the canonical NaN"
    );
}

#[test]
fn a_panicking_guest_is_replaced_and_keeps_serving() {
    let module = support::load("testkit");
    let index = module.function_index("panics_on_three").unwrap();
    for _ in 0..3 {
        let err = module.call(index, &ints(&[1, 2, 3]), 3).unwrap_err();
        assert!(
            matches!(&err.failure, Failure::Panic { row: Some(2), message } if message.contains("three is not allowed")),
            "{err}"
        );
        let ok = module.call(index, &ints(&[5, 6]), 2).unwrap();
        assert_eq!(ok.len(), 2);
    }
}

#[test]
fn guest_logging_is_rate_limited_not_fatal() {
    // `chatty` logs `row value {x}` for every row: 1000 lines asked for, the
    // first `log_lines_per_batch` (16) written, the rest dropped, and the
    // call still succeeds with every row.
    let module = support::load("testkit");
    let index = module.function_index("chatty").unwrap();
    let values: Vec<i64> = (0..1000).collect();
    let budget = SandboxLimits::default().log_lines_per_batch as i64;
    assert_eq!(budget, 16);
    let log = support::GuestLog::new();
    let out = log.capture(|| module.call(index, &ints(&values), 1000).unwrap());
    let out = out.as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(out.values().to_vec(), values, "chatty returns its input");
    let expected: Vec<String> = (0..budget).map(|x| format!("row value {x}")).collect();
    assert_eq!(log.lines(), expected, "exactly the first {budget} lines");
    // The budget is per call: the next call writes its first 16 lines too.
    let again: Vec<i64> = (1000..1100).collect();
    log.capture(|| module.call(index, &ints(&again), 100).unwrap());
    let lines = log.lines();
    assert_eq!(lines.len(), 2 * budget as usize, "{lines:?}");
    let expected: Vec<String> = (1000..1000 + budget)
        .map(|x| format!("row value {x}"))
        .collect();
    assert_eq!(lines[budget as usize..], expected[..]);
}

#[test]
fn a_guest_cannot_forge_server_log_lines() {
    let module = load("forged_log_line").unwrap();
    let log = support::GuestLog::new();
    log.capture(|| module.call(0, &ints(&[7]), 1).unwrap());
    assert_eq!(
        log.lines(),
        vec!["ok\\n2026-11-28T00:00:00Z ERROR weir: forged\\u{1b}[2J".to_string()]
    );
}

/// A batch larger than one guest call takes (8192 rows) goes to the guest
/// in slices: the result is the whole batch's, and a failing row is named
/// by its row in the batch, not in the slice.
#[test]
fn a_large_batch_is_called_in_slices_and_rows_keep_their_batch_numbers() {
    let module = support::load("testkit");
    let index = module.function_index("panics_on_three").unwrap();
    let calls = |m: &UdfModule| {
        m.function_stats(index)
            .unwrap()
            .invocations
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let values: Vec<i64> = (0..20_000).map(|i| if i == 3 { 4 } else { i }).collect();
    let before = calls(&module);
    let out = module.call(index, &ints(&values), values.len()).unwrap();
    assert_eq!(
        calls(&module) - before,
        3,
        "20000 rows: slices of 8192, 8192, 3616"
    );
    let out = out.as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(out.values().as_ref(), values.as_slice());
    let mut poisoned = values.clone();
    poisoned[17_000] = 3;
    let err = module
        .call(index, &ints(&poisoned), poisoned.len())
        .unwrap_err();
    assert!(
        matches!(
            &err.failure,
            Failure::Panic {
                row: Some(17_000),
                ..
            }
        ),
        "{err}"
    );
}

/// Issue 27 finding 8: a failing call over literals (`SELECT spin(1)`) is
/// made once. DataFusion folds it in every optimizer pass and keeps it for
/// execution when folding fails; each attempt used to get a fresh CPU
/// budget (a 1 s budget ran to the request's 10 s deadline).
#[tokio::test]
async fn a_failing_constant_call_fails_the_query_once() {
    let module = load("constant_spin").unwrap();
    let ctx = datafusion::prelude::SessionContext::new_with_config(weir::sql::session_config());
    weir::register_module(&ctx, &module);
    let result = match ctx.sql("SELECT spin(1) AS s").await {
        Ok(frame) => frame.collect().await.map(|_| ()),
        Err(e) => Err(e),
    };
    let err = weir::cli::user_message(&result.expect_err("the query must fail"));
    assert!(err.contains("ran out of CPU after 200 ms"), "{err}");
    assert_eq!(module.calls_made(0), 1, "{err}");
    engine_still_works();
}
