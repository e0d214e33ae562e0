//! A file pipeline end to end (NDJSON in → `SELECT id, parse_cents(amount)`
//! → NDJSON out, dead letters to a file) at 0 % and 5 % row errors: a
//! healthy function whose inputs are sometimes bad must keep (nearly) its
//! error-free throughput. Results: BENCHMARKS.md.
//!
//!
//! - `pipeline_cache`: 500 000 records, `parse_cents` (cheap) at 0 %
//!   repeated inputs: without the UDF, with the cache at its default
//!   (self-tuning) and with `cache_bytes = 0`.
//! - `pipeline_workers`: a CPU-heavy UDF (`work`, tests/tenant/guest.wat)
//!   over 50 000 records with `batch.workers` 1 and 2.
//!
//! Run: `cargo bench --bench pipeline` (`-- pipeline_cache` for one group)

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group};
use tokio::sync::watch;
use weir::pipeline::{Pipeline, PipelineConfig};
use weir::tenant::{Policy, Tenants};
use weir::{Sandbox, SandboxLimits, SandboxOptions};

const RECORDS: usize = 100_000;

fn finance() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("udfs");
    weir::toolchain::build_rust(&repo.join("udfs"), &target)
        .expect("build guest UDFs")
        .into_iter()
        .find(|p| p.file_stem().is_some_and(|s| s == "finance"))
        .expect("the finance example")
}

/// `RECORDS` lines, one in `error_every` with an amount `parse_cents`
/// rejects (a row error); 0 = none.
fn input(dir: &Path, error_every: usize) -> PathBuf {
    let path = dir.join(format!("in-{error_every}.ndjson"));
    let text: String = (0..RECORDS)
        .map(|i| {
            if error_every > 0 && i % error_every == 0 {
                format!("{{\"id\":{i},\"amount\":\"oops\"}}\n")
            } else {
                format!("{{\"id\":{i},\"amount\":\"{i}.25 EUR\"}}\n")
            }
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn config(dir: &Path, udf: &Path, input: &Path, policy: &str) -> PipelineConfig {
    config_with(
        dir,
        udf,
        input,
        policy,
        "SELECT id, parse_cents(amount) AS cents FROM source",
        "",
    )
}

fn config_with(
    dir: &Path,
    udf: &Path,
    input: &Path,
    policy: &str,
    sql: &str,
    extra: &str,
) -> PipelineConfig {
    PipelineConfig::from_toml(&format!(
        r#"
name = "bench"
tenant = "bench"
udfs = ["{udf}"]
sql = "{sql}"
[source]
kind = "file"
path = "{input}"
format = "json"
fields = [{{ name = "id", type = "int64" }}, {{ name = "amount", type = "utf8" }}]
[sink]
kind = "file"
path = "{out}"
[errors]
policy = "{policy}"
path = "{dlq}"
{extra}
"#,
        udf = udf.display(),
        input = input.display(),
        out = dir.join("out.ndjson").display(),
        dlq = dir.join("dlq.ndjson").display(),
    ))
    .unwrap()
}

fn row_errors(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let udf = finance();
    let sandbox = Sandbox::with_options(SandboxOptions {
        limits: SandboxLimits::default(),
        cache_dir: None,
    })
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("pipeline_row_errors");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(RECORDS as u64));
    // "5% skipped": the same work without writing the dead letters, to
    // tell the cost of setting rows aside from the dead-letter file's.
    for (label, every, policy) in [
        ("0%", 0, "dead-letter"),
        ("5%", 20, "dead-letter"),
        ("5% skipped", 20, "skip"),
    ] {
        let input = input(dir.path(), every);
        group.bench_function(label, |b| {
            b.iter(|| {
                let _ = std::fs::remove_file(dir.path().join("out.ndjson"));
                let _ = std::fs::remove_file(dir.path().join("dlq.ndjson"));
                runtime.block_on(async {
                    let pipeline =
                        Pipeline::build(config(dir.path(), &udf, &input, policy), &sandbox)
                            .await
                            .unwrap();
                    let (_stop, stopped) = watch::channel(false);
                    pipeline.run(stopped).await.unwrap();
                })
            })
        });
    }
    group.finish();
}

/// Runs a pipeline to the end under `tenants`.
fn run_once(
    runtime: &tokio::runtime::Runtime,
    config: PipelineConfig,
    sandbox: &Sandbox,
    tenants: &Tenants,
) {
    runtime.block_on(async {
        let pipeline = Pipeline::build_for(config, sandbox, tenants).await.unwrap();
        let (_stop, stopped) = watch::channel(false);
        pipeline.run(stopped).await.unwrap();
    })
}

fn sandbox() -> Sandbox {
    Sandbox::with_options(SandboxOptions {
        limits: SandboxLimits::default(),
        cache_dir: None,
    })
    .unwrap()
}

fn cache(c: &mut Criterion) {
    const N: usize = 500_000;
    let dir = tempfile::tempdir().unwrap();
    let udf = finance();
    let sandbox = sandbox();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let input = dir.path().join("cache.ndjson");
    let text: String = (0..N)
        .map(|i| format!("{{\"id\":{i},\"amount\":\"{i}.25 EUR\"}}\n"))
        .collect();
    std::fs::write(&input, text).unwrap();
    let mut group = c.benchmark_group("pipeline_cache");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15))
        .throughput(Throughput::Elements(N as u64));
    // A fresh tenant (an empty cache) per run: every input is new to it.
    let on = "[tenants.bench]\n";
    let off = "[tenants.bench]\ncache_bytes = 0\n";
    let udf_sql = "SELECT id, parse_cents(amount) AS cents FROM source";
    for (label, policy, sql) in [
        ("no UDF", off, "SELECT id, amount FROM source"),
        ("cache default", on, udf_sql),
        ("cache off", off, udf_sql),
    ] {
        group.bench_function(label, |b| {
            b.iter(|| {
                let _ = std::fs::remove_file(dir.path().join("out.ndjson"));
                let config = config_with(
                    dir.path(),
                    &udf,
                    &input,
                    "dead-letter",
                    sql,
                    "[batch]\nworkers = 1\n",
                );
                let tenants = Tenants::new(Policy::from_toml(policy).unwrap());
                run_once(&runtime, config, &sandbox, &tenants);
            })
        });
    }
    group.finish();
}

fn workers(c: &mut Criterion) {
    const N: usize = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tenant/guest.wat");
    let sandbox = sandbox();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let input = dir.path().join("heavy.ndjson");
    let text: String = (0..N)
        .map(|i| format!("{{\"id\":{i},\"amount\":\"x\"}}\n"))
        .collect();
    std::fs::write(&input, text).unwrap();
    // Every input is new: the cache is off to measure the guest alone.
    let tenants = Tenants::new(Policy::from_toml("[tenants.bench]\ncache_bytes = 0\n").unwrap());
    let mut group = c.benchmark_group("pipeline_workers");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(N as u64));
    for workers in [1, 2] {
        group.bench_function(format!("workers={workers}"), |b| {
            b.iter(|| {
                let _ = std::fs::remove_file(dir.path().join("out.ndjson"));
                let config = config_with(
                    dir.path(),
                    &guest,
                    &input,
                    "dead-letter",
                    "SELECT id, work(id) AS w FROM source",
                    &format!("[batch]\nmax_records = 1024\nworkers = {workers}\n"),
                );
                run_once(&runtime, config, &sandbox, &tenants);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, row_errors, cache, workers);

/// The cache's cost at 0 % repeats with less noise than criterion's
/// groups (which run one after the other): `cache_bytes = 0` and the
/// default policy alternate, one worker, 15 runs each; medians.
fn cache_paired() {
    const N: usize = 500_000;
    let dir = tempfile::tempdir().unwrap();
    let udf = finance();
    let sandbox = sandbox();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let input = dir.path().join("paired.ndjson");
    let text: String = (0..N)
        .map(|i| format!("{{\"id\":{i},\"amount\":\"{i}.25 EUR\"}}\n"))
        .collect();
    std::fs::write(&input, text).unwrap();
    let sql = "SELECT id, parse_cents(amount) AS cents FROM source";
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..16 {
        for (i, policy) in ["[tenants.bench]\ncache_bytes = 0\n", "[tenants.bench]\n"]
            .iter()
            .enumerate()
        {
            let _ = std::fs::remove_file(dir.path().join("out.ndjson"));
            let config = config_with(
                dir.path(),
                &udf,
                &input,
                "dead-letter",
                sql,
                "[batch]\nworkers = 1\n",
            );
            let tenants = Tenants::new(Policy::from_toml(policy).unwrap());
            let started = std::time::Instant::now();
            run_once(&runtime, config, &sandbox, &tenants);
            // The first round warms the page cache and the code cache.
            if round > 0 {
                times[i].push(started.elapsed().as_secs_f64());
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let off = median(&mut times[0]);
    let on = median(&mut times[1]);
    println!(
        "cache_paired ({N} records, parse_cents, 0 % repeats, 1 worker, medians of 15 alternating runs): cache off {off:.3} s, default policy {on:.3} s: {:+.1} %",
        100.0 * (on / off - 1.0)
    );
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if args.iter().any(|a| a == "--bench")
        && !args.iter().any(|a| a == "--profile-time")
        && (filters.is_empty() || filters.iter().any(|f| f.contains("cache_paired")))
    {
        cache_paired();
    }
}
