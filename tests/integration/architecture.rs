//! The architecture as checks: the crate graph keeps heavy dependencies
//! out of the layers below them, and the metrics the code emits are the
//! metrics docs/metrics.md lists.

use std::collections::BTreeSet;
use std::process::Command;

use crate::support;

/// The packages `package` names as its own normal dependencies.
fn direct_dependencies(package: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .current_dir(support::repo())
        .args([
            "tree",
            "-p",
            package,
            "-e",
            "normal",
            "--depth",
            "1",
            "--prefix",
            "none",
            "--locked",
            "--offline",
        ])
        .output()
        .expect("cargo tree runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every package `package` compiles (normal dependencies, transitively).
fn dependencies(package: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .current_dir(support::repo())
        .args([
            "tree",
            "-p",
            package,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--locked",
            "--offline",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn an_embedder_of_weir_core_compiles_no_kafka_http_database_or_cli() {
    let core = dependencies("weir-core");
    assert!(
        core.contains("datafusion") && core.contains("wasmtime"),
        "{core:?}"
    );
    for heavy in [
        "rdkafka",
        "rdkafka-sys",
        "rusqlite",
        "libsqlite3-sys",
        "axum",
        "hyper",
        "clap",
        "metrics-exporter-prometheus",
        "postgres",
        "tokio-postgres",
        "ureq",
        "reqwest",
    ] {
        assert!(!core.contains(heavy), "weir-core depends on {heavy}");
    }
    let pipeline = dependencies("weir-pipeline");
    assert!(pipeline.contains("rdkafka"));
    for heavy in [
        "rusqlite",
        "axum",
        "hyper",
        "clap",
        "postgres",
        "tokio-postgres",
        "metrics-exporter-prometheus",
    ] {
        assert!(
            !pipeline.contains(heavy),
            "weir-pipeline depends on {heavy}"
        );
    }
    // The control plane reads no topic itself: its Kafka reads (a topic's
    // recent records for SQL) are the data path's.
    let serve = direct_dependencies("weir-serve");
    assert!(
        !serve.contains("rdkafka"),
        "weir-serve depends on rdkafka directly: {serve:?}"
    );
    let abi = dependencies("weir-abi");
    assert_eq!(
        abi,
        BTreeSet::from(["weir-abi".to_string()]),
        "weir-abi has no dependencies"
    );
}

/// The backticked `weir_…` names in the first column of docs/metrics.md's tables.
fn documented_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(support::repo().join("docs/metrics.md")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("| `weir_"))
        .flat_map(|l| {
            let first = l.split('|').nth(1).unwrap_or_default();
            first
                .split('`')
                .filter(|s| s.starts_with("weir_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn docs_metrics_md_lists_exactly_the_metrics_weir_emits() {
    let emitted: BTreeSet<String> = weir::telemetry::METRICS
        .iter()
        .map(|m| m.name.to_string())
        .collect();
    let documented = documented_metrics();
    let undocumented: Vec<_> = emitted.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&emitted).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "emitted but not in docs/metrics.md: {undocumented:?}; documented but not emitted: {stale:?}"
    );
}

#[test]
fn the_documented_failure_kinds_are_the_ones_counted() {
    // `weir_udf_failures_total{kind=…}`: every kind the docs name exists,
    // and every kind the code counts is named.
    let text = std::fs::read_to_string(support::repo().join("docs/metrics.md")).unwrap();
    let row = text
        .lines()
        .find(|l| l.starts_with("| `weir_udf_failures_total`"))
        .expect("a row for weir_udf_failures_total");
    let kinds = weir::Failure::KINDS;
    let documented: Vec<&str> = row
        .split('`')
        .skip(3)
        .step_by(2)
        .filter(|s| !s.is_empty() && !s.starts_with("weir_"))
        .collect();
    for d in &documented {
        assert!(
            kinds.contains(d),
            "docs/metrics.md names failure kind `{d}`, the code has {kinds:?}"
        );
    }
    for k in kinds {
        assert!(
            documented.contains(k),
            "failure kind `{k}` is counted but docs/metrics.md does not name it"
        );
    }
}

/// Module cycles stay broken (issue 32): a lower module never names a
/// higher one. The tenant layer (policy, quotas, breakers, shares) is below
/// the sandbox, which enforces it; the batch workers are below the run
/// loop that drives them; the cluster (leases, membership) is below the
/// services and the node's tasks that apply it (`weir-serve/src/node`).
#[test]
fn lower_modules_never_name_higher_ones() {
    let rules: [(&str, &[&str]); 3] = [
        (
            "crates/weir-serve/src/cluster",
            &[
                "crate::AppState",
                "crate::services",
                "crate::http",
                "crate::node",
                "crate::pg",
            ],
        ),
        (
            "crates/weir-core/src/tenant",
            &["crate::sandbox", "super::sandbox"],
        ),
        (
            "crates/weir-pipeline/src/workers.rs",
            &["crate::runner", "super::runner"],
        ),
    ];
    let mut broken = Vec::new();
    for (path, forbidden) in rules {
        let root = support::repo().join(path);
        let files: Vec<std::path::PathBuf> = if root.is_dir() {
            std::fs::read_dir(&root)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "rs"))
                .collect()
        } else {
            vec![root]
        };
        assert!(!files.is_empty(), "{path} has no source");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                for f in forbidden {
                    if code.contains(f) {
                        broken.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "a lower module names a higher one:\n{}",
        broken.join("\n")
    );
}
