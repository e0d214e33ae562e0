//! weir as a library inside someone else's DataFusion session.

use std::sync::Arc;

use datafusion::logical_expr::{ScalarUDF, Volatility};
use datafusion::prelude::SessionContext;
use weir::WasmScalarUdf;

use crate::support;

#[tokio::test]
async fn register_in_a_plain_session() {
    let ctx = SessionContext::new();
    let names = weir::register_module(&ctx, &support::load("text"));
    assert!(names.contains(&"mask_email".to_string()));
    let rows = support::rows(&ctx, "SELECT mask_email('ada@example.com')")
        .await
        .unwrap();
    assert_eq!(rows, vec![vec!["a***@example.com".to_string()]]);
}

#[test]
fn volatility_follows_determinism() {
    let volatility = |module: &str, name: &str| {
        weir::scalar_udfs(&support::load(module))
            .into_iter()
            .find(|u| u.name() == name)
            .unwrap()
            .signature()
            .volatility
    };
    assert_eq!(volatility("geo", "gcd"), Volatility::Immutable);
    assert_eq!(volatility("sampling", "random_unit"), Volatility::Volatile);
}

#[test]
fn udfs_compare_by_name_and_module_digest() {
    let geo = support::load("geo");
    let again = support::sandbox()
        .load_file(support::module_path("geo"))
        .unwrap();
    let a = ScalarUDF::new_from_impl(WasmScalarUdf::new(geo.clone(), 0));
    let b = ScalarUDF::new_from_impl(WasmScalarUdf::new(again, 0));
    let c = ScalarUDF::new_from_impl(WasmScalarUdf::new(geo, 1));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[tokio::test]
async fn deterministic_literals_fold_at_plan_time() {
    let ctx = SessionContext::new();
    weir::register_module(&ctx, &support::load("geo"));
    let df = ctx.sql("EXPLAIN SELECT gcd(12, 18) AS g").await.unwrap();
    let plan = support::render(&df.collect().await.unwrap());
    let text = format!("{plan:?}");
    assert!(
        text.contains("Int64(6)"),
        "gcd(12, 18) should be folded: {text}"
    );
}

#[tokio::test]
async fn concurrent_queries_share_instances_safely() {
    let ctx = Arc::new(support::session().await);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let sql = format!("SELECT sum(gcd(x, {i} + 1)) FROM generate_series(1, 20000) AS t(x)");
            support::rows(&ctx, &sql).await.unwrap()
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let rows = task.await.unwrap();
        let k = i as i64 + 1;
        let expected: i64 = (1..=20000i64).map(|x| num_gcd(x, k)).sum();
        assert_eq!(rows[0][0], expected.to_string());
    }
}

fn num_gcd(mut a: i64, mut b: i64) -> i64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
