//! A file pipeline end to end (NDJSON in → `SELECT id, parse_cents(amount)`
//! → NDJSON out, dead letters to a file) at 0 % and 5 % row errors: a
//! healthy function whose inputs are sometimes bad must keep (nearly) its
//! error-free throughput. Results: BENCHMARKS.md.
//!
//! Run: `cargo bench --bench pipeline`

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group};
use tokio::sync::watch;
use weir::pipeline::{Pipeline, PipelineConfig};
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
    PipelineConfig::from_toml(&format!(
        r#"
name = "bench"
udfs = ["{udf}"]
sql = "SELECT id, parse_cents(amount) AS cents FROM source"
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

criterion_group!(benches, row_errors);
criterion::criterion_main!(benches);
