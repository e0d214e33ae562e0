//! WebAssembly aggregates against DataFusion's native ones, and a windowed
//! file pipeline. Results: BENCHMARKS.md ("Aggregates and windows").
//!
//! * `udaf/{sum,median}/{wasm,native}/G`: `SELECT g, f(x) … GROUP BY g`
//!   over 16 batches of 8192 rows (131 072 rows) with G = 1, 1 000, 100 000
//!   groups, one partition: `wsum` (udfs/examples/stats) vs the built-in
//!   `sum`, `median` (stats) vs the built-in `median`.
//! * `window/tumble`: 1 000 000 NDJSON records, 1-minute tumbling windows
//!   over 100 keys, `count(*)`, `sum` and the WebAssembly `median`, to a file.
//!
//! Run: `cargo bench --bench aggregate`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use tokio::sync::watch;
use weir::pipeline::{Pipeline, PipelineConfig};
use weir::{Sandbox, SandboxLimits, SandboxOptions};

const BATCH: usize = 8192;
const BATCHES: usize = 16;
const RECORDS: usize = 1_000_000;

fn stats() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("udfs");
    weir::toolchain::build_rust(&repo.join("udfs"), &target)
        .expect("build guest UDFs")
        .into_iter()
        .find(|p| p.file_stem().is_some_and(|s| s == "stats"))
        .expect("the stats example")
}

fn table(groups: i64) -> Arc<MemTable> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, false),
        Field::new("x", DataType::Float64, false),
    ]));
    let batches = (0..BATCHES)
        .map(|b| {
            let start = (b * BATCH) as i64;
            let ids = (start..start + BATCH as i64).map(|i| (i * 7919) % groups);
            let xs = (start..start + BATCH as i64).map(|i| ((i * 31) % 1000) as f64 / 7.0);
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(ids)),
                    Arc::new(Float64Array::from_iter_values(xs)),
                ],
            )
            .unwrap()
        })
        .collect();
    Arc::new(MemTable::try_new(schema, vec![batches]).unwrap())
}

fn udaf(c: &mut Criterion) {
    let sandbox = Sandbox::with_options(SandboxOptions {
        limits: SandboxLimits::default(),
        cache_dir: None,
    })
    .unwrap();
    let module = sandbox.load_file(stats()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("udaf");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements((BATCH * BATCHES) as u64));
    for groups in [1i64, 1_000, 100_000] {
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(BATCH);
        let ctx = SessionContext::new_with_config(config);
        weir::register_module(&ctx, &module);
        ctx.register_table("t", table(groups)).unwrap();
        for (name, wasm, native) in [("sum", "wsum", "sum"), ("median", "median", "median")] {
            for (kind, f) in [("wasm", wasm), ("native", native)] {
                let sql = format!("SELECT g, {f}(x) FROM t GROUP BY g");
                group.bench_with_input(
                    BenchmarkId::new(format!("{name}/{kind}"), groups),
                    &sql,
                    |b, sql| {
                        b.iter(|| {
                            runtime.block_on(async {
                                ctx.sql(sql).await.unwrap().collect().await.unwrap()
                            })
                        })
                    },
                );
            }
        }
    }
    group.finish();
}

fn window(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    // 1 M records, 10 per second of event time over 100 keys: 1 667
    // one-minute windows of 100 groups each.
    let text: String = (0..RECORDS)
        .map(|i| {
            let s = i / 10;
            format!(
                "{{\"k\":{},\"x\":{}.5,\"ts\":\"2026-01-{:02}T{:02}:{:02}:{:02}Z\"}}\n",
                i % 100,
                i % 977,
                1 + s / 86_400,
                (s / 3600) % 24,
                (s / 60) % 60,
                s % 60
            )
        })
        .collect();
    std::fs::write(&input, text).unwrap();
    let udf = stats();
    let sandbox = Sandbox::with_options(SandboxOptions {
        limits: SandboxLimits::default(),
        cache_dir: None,
    })
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let out = dir.path().join("out.ndjson");
    let toml = format!(
        r#"
name = "bench-window"
udfs = ["{udf}"]
sql = "SELECT window_start, k, count(*) AS n, sum(x) AS total, median(x) AS med FROM tumble(source, ts, INTERVAL '1' MINUTE) GROUP BY window_start, k"
[source]
kind = "file"
path = "{input}"
format = "json"
fields = [{{ name = "k", type = "int64" }}, {{ name = "x", type = "float64" }}, {{ name = "ts", type = "timestamp_us" }}]
[sink]
kind = "file"
path = "{out}"
[errors]
policy = "skip"
"#,
        udf = udf.display(),
        input = input.display(),
        out = out.display(),
    );
    let mut group = c.benchmark_group("window");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30))
        .throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("tumble", |b| {
        b.iter(|| {
            let _ = std::fs::remove_file(&out);
            runtime.block_on(async {
                let config = PipelineConfig::from_toml(&toml).unwrap();
                let pipeline = Pipeline::build(config, &sandbox).await.unwrap();
                let stats = pipeline.stats();
                let (_stop, stopped) = watch::channel(false);
                pipeline.run(stopped).await.unwrap();
                assert_eq!(stats.records_out.get(), 166_700);
            })
        })
    });
    group.finish();
    // Open-window state: sampled during one run (the largest seen).
    runtime.block_on(async {
        let _ = std::fs::remove_file(&out);
        let config = PipelineConfig::from_toml(&toml).unwrap();
        let pipeline = Pipeline::build(config, &sandbox).await.unwrap();
        let stats = pipeline.stats();
        let (_stop, stopped) = watch::channel(false);
        let run = tokio::spawn(pipeline.run(stopped));
        let (mut bytes, mut windows) = (0i64, 0i64);
        while !run.is_finished() {
            bytes = bytes.max(stats.window_state_bytes.get());
            windows = windows.max(stats.open_windows.get());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        run.await.unwrap().unwrap();
        // A full window holds 600 records (6 per group).
        eprintln!("window state: at most {bytes} bytes in at most {windows} open windows");
    });
}

criterion_group!(benches, udaf, window);
criterion::criterion_main!(benches);
