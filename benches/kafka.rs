//! End-to-end Kafka throughput: weir (JSON decode → SQL with a WASM UDF →
//! JSON encode → idempotent produce, at-least-once commits) next to a bare
//! rdkafka consume→produce loop with no decoding, against the same broker in
//! the same run; then end-to-end latency at half of weir's maximum rate.
//!
//! Needs a broker: `scripts/bench-kafka.sh` starts tansu and runs this with
//! `WEIR_BENCH_BROKERS` set. Results: BENCHMARKS.md.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::sync::watch;
use weir::pipeline::{Pipeline, PipelineConfig, PipelineStats};

/// Records per throughput run; `WEIR_BENCH_RECORDS` overrides.
const RECORDS: usize = 100_000;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// tansu answers an empty fetch only after `fetch.wait.max.ms` and as an
/// error (then librdkafka backs off `fetch.error.backoff.ms`); both default
/// to 500 ms, which would dominate latency. Every consumer here (weir, the
/// bare loop, the latency reader) uses this; `WEIR_BENCH_FETCH_WAIT_MS`
/// overrides.
fn fetch_wait_ms() -> String {
    std::env::var("WEIR_BENCH_FETCH_WAIT_MS").unwrap_or_else(|_| "10".into())
}

fn payload(i: usize, ts: i64) -> String {
    // ~100 bytes of JSON.
    format!(
        r#"{{"id":{i},"user":"user-{:05}","amount":{}.25,"ts":{ts},"note":"abcdefghij"}}"#,
        i % 10_000,
        i % 977
    )
}

async fn create(brokers: &str, topics: &[&str]) {
    create_with(brokers, topics, 2).await
}

async fn create_with(brokers: &str, topics: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Enqueues one record, waiting while the producer queue is full.
async fn enqueue(p: &FutureProducer, topic: &str, payload: &[u8]) -> DeliveryFuture {
    loop {
        match p.send_result(FutureRecord::<(), _>::to(topic).payload(payload)) {
            Ok(d) => return d,
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

async fn fill(brokers: &str, topic: &str, n: usize) {
    let p = producer(brokers);
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..n {
        pending.push(enqueue(&p, topic, payload(i, 0).as_bytes()).await);
        if pending.len() == 10_000 {
            futures::future::join_all(pending.drain(..)).await;
        }
    }
    futures::future::join_all(pending).await;
}

/// The reference: consume and re-produce every payload untouched.
async fn bare_loop(brokers: &str, input: &str, output: &str, n: usize) -> f64 {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-bare")
        .set("fetch.wait.max.ms", fetch_wait_ms())
        .set("fetch.error.backoff.ms", fetch_wait_ms())
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()
        .unwrap();
    consumer.subscribe(&[input]).unwrap();
    let p = producer(brokers);
    let started = Instant::now();
    let mut stream = consumer.stream();
    let mut pending = Vec::new();
    let mut seen = 0;
    while seen < n {
        let m = stream.next().await.unwrap().unwrap();
        pending.push(enqueue(&p, output, m.payload().unwrap_or_default()).await);
        seen += 1;
        if pending.len() >= 4096 {
            futures::future::join_all(pending.drain(..)).await;
        }
    }
    futures::future::join_all(pending).await;
    n as f64 / started.elapsed().as_secs_f64()
}

fn config(brokers: &str, input: &str, output: &str, group: &str, geo: &Path) -> PipelineConfig {
    let debug = format!(
        "[source.properties]\n{}\"fetch.wait.max.ms\" = \"{wait}\"\n\"fetch.error.backoff.ms\" = \"{wait}\"",
        std::env::var("WEIR_BENCH_DEBUG")
            .map(|d| format!("debug = \"{d}\"\n"))
            .unwrap_or_default(),
        wait = fetch_wait_ms()
    );
    PipelineConfig::from_toml(&format!(
        r#"
name = "bench"
udfs = ["{geo}"]
sql = "SELECT id, user, scale_add(amount, 1.0) AS amount2, ts FROM source"
[source]
kind = "kafka"
brokers = "{brokers}"
topics = ["{input}"]
group = "{group}"
format = "json"
fields = [{{ name = "id", type = "int64" }}, {{ name = "user", type = "utf8" }},
          {{ name = "amount", type = "float64" }}, {{ name = "ts", type = "int64" }}]
{debug}
[sink]
kind = "kafka"
brokers = "{brokers}"
topic = "{output}"
[errors]
policy = "skip"
[batch]
max_records = 4096
max_linger_ms = 20
"#,
        geo = geo.display(),
    ))
    .unwrap()
}

async fn weir_run(config: PipelineConfig, n: usize) -> f64 {
    weir_run_for(config, n, &weir::tenant::Tenants::default(), false).await
}

/// Records/s until `n` records were read; `from_first`: timed from the
/// first batch read (the group join not counted).
async fn weir_run_for(
    config: PipelineConfig,
    n: usize,
    tenants: &weir::tenant::Tenants,
    from_first: bool,
) -> f64 {
    let sandbox = weir::Sandbox::with_options(weir::SandboxOptions::default()).unwrap();
    let pipeline = Pipeline::build_for(config, &sandbox, tenants)
        .await
        .unwrap();
    let stats: Arc<PipelineStats> = pipeline.stats();
    let (stop, stopped) = watch::channel(false);
    let mut started = Instant::now();
    // Records read when the clock started.
    let mut base = (!from_first).then_some(0);
    let task = tokio::spawn(pipeline.run(stopped));
    while (stats.records_in.get() as usize) < n || stats.batches.get() == 0 {
        if base.is_none() && stats.records_in.get() > 0 {
            base = Some(stats.records_in.get() as usize);
            started = Instant::now();
        }
        if task.is_finished() {
            let result = task.await.unwrap();
            panic!(
                "the pipeline stopped early after {} records: {result:?}",
                stats.records_in.get()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    (n - base.unwrap_or(0)) as f64 / started.elapsed().as_secs_f64()
}

/// A CPU-heavy UDF (`work`, 10 000 LCG rounds per row, from
/// tests/tenant/guest.wat, applied `WEIR_BENCH_HEAVY_DEPTH` times, 32 by
/// default) over a 4-partition topic with `workers` transform workers,
/// into a file (the broker on this machine takes a core's share already;
/// writing the output back to it would bound the run at its rate); the
/// tenant's cache is off (every input is new).
fn heavy_config(brokers: &str, input: &str, output: &Path, workers: usize) -> PipelineConfig {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tenant/guest.wat");
    let depth: usize = std::env::var("WEIR_BENCH_HEAVY_DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let call = (0..depth).fold("id".to_string(), |inner, _| format!("work({inner})"));
    PipelineConfig::from_toml(&format!(
        r#"
name = "heavy"
tenant = "bench"
udfs = ["{guest}"]
sql = "SELECT id, {call} AS w FROM source"
[source]
kind = "kafka"
brokers = "{brokers}"
topics = ["{input}"]
group = "heavy-{workers}"
format = "json"
fields = [{{ name = "id", type = "int64" }}]
[source.properties]
"fetch.wait.max.ms" = "{wait}"
"fetch.error.backoff.ms" = "{wait}"
[sink]
kind = "file"
path = "{output}"
[errors]
policy = "skip"
[batch]
max_records = 256
max_linger_ms = 20
workers = {workers}
"#,
        guest = guest.display(),
        output = output.display(),
        wait = fetch_wait_ms()
    ))
    .unwrap()
}

/// Produces to `input` at `rate` records/s for `secs` and reports p50 / p99
/// of the latency until a reader sees each record in `output`, from the
/// records' `ts`. With a pipeline, weir moves `input` to `output`; without,
/// the reader reads `input` itself (the broker's own floor).
async fn latency(
    brokers: &str,
    input: &str,
    output: &str,
    pipeline: Option<PipelineConfig>,
    rate: f64,
    secs: u64,
) -> (f64, f64) {
    let input = input.to_string();
    let running = match pipeline {
        Some(config) => {
            let sandbox = weir::Sandbox::with_options(weir::SandboxOptions::default()).unwrap();
            let pipeline = Pipeline::build(config, &sandbox).await.unwrap();
            let (stop, stopped) = watch::channel(false);
            Some((stop, tokio::spawn(pipeline.run(stopped))))
        }
        None => None,
    };
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-latency-reader")
        .set("fetch.wait.max.ms", fetch_wait_ms())
        .set("fetch.error.backoff.ms", fetch_wait_ms())
        .set("auto.offset.reset", "latest")
        .create()
        .unwrap();
    consumer.subscribe(&[output]).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let total = (rate * secs as f64) as usize;
    let brokers_owned = brokers.to_string();
    let producer_task = tokio::spawn(async move {
        let p = producer(&brokers_owned);
        let started = Instant::now();
        for i in 0..total {
            let due = Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            drop(enqueue(&p, &input, payload(i, now_us()).as_bytes()).await);
        }
        p
    });
    let mut lat = Vec::with_capacity(total);
    let mut stream = consumer.stream();
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    while lat.len() < total && Instant::now() < deadline {
        if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            let v: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
            lat.push((now_us() - v["ts"].as_i64().unwrap()) as f64 / 1000.0);
        }
    }
    drop(producer_task.await);
    if let Some((stop, task)) = running {
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    eprintln!(
        "latency p90 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms over {} records",
        pct(0.90),
        pct(0.999),
        lat[lat.len() - 1],
        lat.len()
    );
    (pct(0.50), pct(0.99))
}

/// Records/s of the CPU-heavy pipeline with 1 and 2 workers, same input.
async fn workers(brokers: &str) {
    let n: usize = std::env::var("WEIR_BENCH_HEAVY_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12_000);
    create_with(brokers, &["heavy-in"], 4).await;
    let dir = tempfile::tempdir().unwrap();
    fill(brokers, "heavy-in", n).await;
    let tenants = weir::tenant::Tenants::new(
        weir::tenant::Policy::from_toml("[tenants.bench]\ncache_bytes = 0\n").unwrap(),
    );
    let mut rates = Vec::new();
    for w in [1, 2] {
        let rate = weir_run_for(
            heavy_config(
                brokers,
                "heavy-in",
                &dir.path().join(format!("out-{w}.ndjson")),
                w,
            ),
            n,
            &tenants,
            true,
        )
        .await;
        println!(
            "CPU-heavy UDF, 4-partition topic -> file, {n} records, workers = {w}: {rate:.0} records/s"
        );
        rates.push(rate);
    }
    println!("2 workers vs 1: {:.2}x", rates[1] / rates[0]);
}

fn main() {
    let Ok(brokers) = std::env::var("WEIR_BENCH_BROKERS") else {
        eprintln!("kafka bench skipped: set WEIR_BENCH_BROKERS (scripts/bench-kafka.sh does)");
        return;
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let records: usize = std::env::var("WEIR_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RECORDS);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("udfs");
    let built = weir::toolchain::build_rust(&repo.join("udfs"), &target).expect("build guest UDFs");
    let geo = built
        .iter()
        .find(|p| p.file_stem().is_some_and(|s| s == "geo"))
        .unwrap()
        .clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
        .unwrap();
    rt.block_on(async {
        if std::env::var("WEIR_BENCH_ONLY").is_ok_and(|v| v == "workers") {
            return workers(&brokers).await;
        }
        create(&brokers, &["bench-in", "bench-bare-out", "bench-weir-out"]).await;
        eprintln!("filling bench-in with {records} records");
        fill(&brokers, "bench-in", records).await;
        eprintln!("running the bare loop");
        let bare = bare_loop(&brokers, "bench-in", "bench-bare-out", records).await;
        eprintln!("bare loop: {bare:.0} records/s; running weir");
        let weir_rate = weir_run(config(&brokers, "bench-in", "bench-weir-out", "bench-weir", &geo), records).await;
        println!("records: {records} x ~100-byte JSON, 2 partitions");
        println!("bare rdkafka consume->produce loop: {bare:.0} records/s");
        println!("weir pipeline (decode, SQL + WASM UDF, encode, produce, commit): {weir_rate:.0} records/s ({:.0} % of bare)", 100.0 * weir_rate / bare);
        let half = (weir_rate / 2.0).max(100.0);
        for (i, rate) in [half, 1000.0].into_iter().enumerate() {
            let (input, output) = (format!("lat-in-{i}"), format!("lat-out-{i}"));
            create(&brokers, &[&input, &output]).await;
            let group = format!("bench-lat-{i}");
            let config = config(&brokers, &input, &output, &group, &geo);
            let (p50, p99) = latency(&brokers, &input, &output, Some(config), rate, 10).await;
            println!("end-to-end latency through weir at {rate:.0} records/s: p50 {p50:.1} ms, p99 {p99:.1} ms");
            let (p50, p99) = latency(&brokers, &input, &input, None, rate, 10).await;
            println!("  the broker alone (produce -> consume, same rate): p50 {p50:.1} ms, p99 {p99:.1} ms");
        }
    });
}
