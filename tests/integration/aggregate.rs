//! WebAssembly aggregates under attack (`tests/hostile/aggregate_*.wat`):
//! state that grows without bound, a merge that never returns, invalid
//! state columns, a trap that loses the groups' state. Each fails its query
//! with its own error naming the aggregate, and the next query runs.

use std::sync::{Arc, OnceLock};

use datafusion::prelude::SessionContext;
use weir::{Sandbox, SandboxLimits, SandboxOptions, UdfModule};

use crate::support;

fn strict_sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::with_options(SandboxOptions {
            limits: SandboxLimits {
                memory_bytes: 16 << 20,
                cpu_ms_per_batch: 200,
                ..SandboxLimits::default()
            },
            cache_dir: None,
        })
        .unwrap()
    })
}

fn hostile(name: &str) -> Arc<UdfModule> {
    let path = support::repo()
        .join("tests/hostile")
        .join(format!("{name}.wat"));
    strict_sandbox().load_file(path).unwrap()
}

/// A session with `module`, `partitions` target partitions, 1000-row batches.
fn session(module: &Arc<UdfModule>, partitions: usize) -> SessionContext {
    let config = weir::sql::session_config()
        .with_target_partitions(partitions)
        .with_batch_size(1000);
    let ctx = SessionContext::new_with_config(config);
    weir::register_module(&ctx, module);
    ctx
}

async fn fails(ctx: &SessionContext, sql: &str, wanted: &[&str]) {
    let err = support::rows(ctx, sql)
        .await
        .expect_err(&format!("`{sql}` should fail"));
    for part in wanted {
        assert!(err.contains(part), "`{err}` lacks `{part}`");
    }
}

#[tokio::test]
async fn a_state_that_grows_without_bound_stops_at_the_memory_cap() {
    let module = hostile("aggregate_state_bomb");
    let ctx = session(&module, 1);
    fails(
        &ctx,
        "SELECT state_bomb(x) FROM generate_series(1, 20000) AS t(x)",
        &[
            "udf `state_bomb`",
            "ran out of memory",
            "sandbox.memory_bytes",
        ],
    )
    .await;
    // Its instance is gone; the next query gets a fresh one.
    let rows = support::rows(
        &ctx,
        "SELECT state_bomb(x) FROM generate_series(1, 10) AS t(x)",
    )
    .await
    .unwrap();
    assert_eq!(rows, vec![vec!["55.0".to_string()]]);
}

#[tokio::test]
async fn a_merge_that_loops_runs_out_of_cpu() {
    let module = hostile("aggregate_merge_loop");
    // Four partitions: partial states are merged.
    let ctx = session(&module, 4);
    fails(
        &ctx,
        "SELECT x % 7 AS g, merge_loop(x) FROM generate_series(1, 5000) AS t(x) GROUP BY x % 7",
        &[
            "udf `merge_loop`",
            "ran out of CPU after 200 ms",
            "sandbox.cpu_ms_per_batch",
        ],
    )
    .await;
    // One partition never merges: the same function answers.
    let ctx = session(&module, 1);
    let rows = support::rows(
        &ctx,
        "SELECT merge_loop(x) FROM generate_series(1, 4) AS t(x)",
    )
    .await
    .unwrap();
    assert_eq!(rows, vec![vec!["10.0".to_string()]]);
}

#[tokio::test]
async fn an_invalid_state_column_is_invalid_output() {
    let module = hostile("aggregate_bad_state");
    let ctx = session(&module, 4);
    fails(
        &ctx,
        "SELECT x % 3 AS g, bad_state(x) FROM generate_series(1, 5000) AS t(x) GROUP BY x % 3",
        &["udf `bad_state`", "invalid output", "column 0"],
    )
    .await;
}

#[tokio::test]
async fn a_trap_loses_the_groups_state_and_the_query_can_run_again() {
    let module = hostile("aggregate_trap_on_13");
    let ctx = session(&module, 1);
    fails(
        &ctx,
        "SELECT x % 2 AS g, sum_but_13(x) FROM generate_series(1, 20) AS t(x) GROUP BY x % 2",
        &["udf `sum_but_13`", "trap"],
    )
    .await;
    let rows = support::rows(
        &ctx,
        "SELECT x % 2 AS g, sum_but_13(x) FROM generate_series(1, 12) AS t(x) GROUP BY x % 2 ORDER BY g",
    )
    .await
    .unwrap();
    assert_eq!(rows, vec![vec!["0", "42.0"], vec!["1", "36.0"]]);
    // The typed (float64) state merges across partitions too.
    let ctx = session(&module, 4);
    let rows = support::rows(
        &ctx,
        "SELECT x % 2 AS g, sum_but_13(x) FROM generate_series(1, 12) AS t(x) GROUP BY x % 2 ORDER BY g",
    )
    .await
    .unwrap();
    assert_eq!(rows, vec![vec!["0", "42.0"], vec!["1", "36.0"]]);
}

#[tokio::test]
async fn aggregates_hold_no_instance_between_queries() {
    // Loaded for a tenant: every accumulator's instance takes one of the
    // tenant's instance slots while it lives, and gives it back after.
    let tenants = weir::tenant::Tenants::new(
        weir::tenant::Policy::from_toml("[tenants.agg]\nmax_instances = 32\n").unwrap(),
    );
    let tenant = tenants.get("agg");
    let module = support::sandbox()
        .load_file_for(support::module_path("stats"), &tenant)
        .unwrap();
    let before = tenant.instances();
    let ctx = session(&module, 2);
    let rows = support::rows(
        &ctx,
        "SELECT x % 10 AS g, median(x), top3(x) FROM generate_series(1, 3000) AS t(x) GROUP BY x % 10 ORDER BY g LIMIT 1",
    )
    .await
    .unwrap();
    assert_eq!(rows, vec![vec!["0", "1505.0", "[3000,2990,2980]"]]);
    // An accumulator's instance is its own, gone with the query.
    assert_eq!(tenant.instances(), before);
}

#[tokio::test]
async fn aggregates_count_against_the_tenants_instances() {
    // One slot: the module's warm-up instance holds it, so an accumulator
    // finds none — capacity, named with the key to raise.
    let tenants = weir::tenant::Tenants::new(
        weir::tenant::Policy::from_toml("[tenants.tight]\nmax_instances = 1\n").unwrap(),
    );
    let tenant = tenants.get("tight");
    let module = support::sandbox()
        .load_file_for(support::module_path("stats"), &tenant)
        .unwrap();
    let ctx = session(&module, 1);
    fails(
        &ctx,
        "SELECT median(x) FROM generate_series(1, 10) AS t(x)",
        &["udf `median`", "tenants.tight.max_instances"],
    )
    .await;
}
