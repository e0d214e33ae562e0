//! Pipelines against a real Kafka-protocol broker (nisshi on loopback).
//!
//! The broker binary is `$NISSHI`, else `nisshi` on PATH or in ~/.cargo/bin.
//! Without it these tests are skipped, unless `WEIR_REQUIRE_BROKER` is set to
//! anything but "" or "0" (`.ci/run` sets it to 1 and installs nisshi),
//! which makes that a failure (`support::require_or_skip`). Each
//! broker keeps its data in SQLite in a temporary folder of its own.

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;
use weir::pipeline::{Pipeline, PipelineConfig};

use crate::support;

pub struct Broker {
    child: Child,
    pub addr: String,
    dir: Option<tempfile::TempDir>,
}

impl Broker {
    /// Stops the broker process and starts it again on the same port and
    /// storage.
    fn restart(mut self, storage: &str) -> Broker {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.addr.rsplit(':').next().unwrap().parse().unwrap();
        broker_with(storage, Some(port), self.dir.take()).unwrap()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nisshi() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NISSHI") {
        return Some(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nisshi"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/nisshi"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// The storage every test broker uses, relative to its working directory.
const STORAGE: &str = "sqlite://broker.db";

/// Starts a broker on a free loopback port, or returns None (test skipped).
pub fn broker() -> Option<Broker> {
    broker_with(STORAGE, None, None)
}

/// A broker with `storage`, on `port` (or a free one), in `dir` (or a new one).
fn broker_with(storage: &str, port: Option<u16>, dir: Option<tempfile::TempDir>) -> Option<Broker> {
    let bin = nisshi();
    if !support::require_or_skip(
        "the nisshi broker binary ($NISSHI, or `cargo +1.96.0 install nisshi --locked --no-default-features --features libsql`)",
        bin.is_some(),
    ) {
        return None;
    }
    let bin = bin.expect("checked above");
    let port = port.unwrap_or_else(|| {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    });
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("broker.log")).unwrap();
    let child = Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--group-initial-rebalance-delay",
            "500ms",
        ])
        .args(["--storage-engine", storage])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start nisshi");
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nisshi did not start: {}",
            std::fs::read_to_string(dir.path().join("broker.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Broker {
        child,
        addr,
        dir: Some(dir),
    })
}

pub async fn create_topics(addr: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

pub async fn produce(addr: &str, topic: &str, records: &[(Option<String>, String)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    // Enqueue everything first (librdkafka batches), then wait for every
    // delivery: awaiting `send` one record at a time costs a round trip each.
    let mut pending = Vec::new();
    for (key, payload) in records {
        loop {
            let mut r = FutureRecord::to(topic).payload(payload.as_bytes());
            if let Some(k) = key {
                r = r.key(k.as_bytes());
            }
            match producer.send_result(r) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err((e, _)) => panic!("producing to {topic}: {e}"),
            }
        }
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

pub type Received = (Option<String>, String, Vec<(String, String)>);

/// A consumer of `topic` from its start, in a group of its own.
pub fn reader(addr: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", format!("reader-{topic}-{}", rand_suffix()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// Reads `topic` from the start until `count` records arrived (or panics
/// after 60 s): (key, payload, headers) each.
pub async fn consume(addr: &str, topic: &str, count: usize) -> Vec<Received> {
    consume_until(addr, topic, |got| got.len() >= count).await
}

/// Reads `topic` from the start until `done` holds (or panics after 90 s).
pub async fn consume_until(
    addr: &str,
    topic: &str,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let consumer = reader(addr, topic);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !done(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("gave up after {} records on `{topic}`", out.len()))
            .unwrap();
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((
            m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            headers,
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_end_to_end_with_dead_letters() {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("payments", 3), ("clean", 1), ("payments-dlq", 1)]).await;

    let mut records = Vec::new();
    for id in 0..200 {
        let payload = match id {
            50 => r#"{"id":50,"amount":"oops","card":"1"}"#.to_string(),
            120 => "{not json".to_string(),
            _ => format!(r#"{{"id":{id},"amount":"{id}.25 EUR","card":"4111 {id}"}}"#),
        };
        records.push((Some(format!("k{id}")), payload));
    }
    produce(&addr, "payments", &records).await;

    let toml = format!(
        r#"
name = "payments"
udfs = ["{finance}", "{text}"]
sql = "SELECT id, parse_cents(amount) AS cents, redact_digits(card) AS card, _partition AS p FROM source"
[source]
kind = "kafka"
brokers = "{addr}"
topics = ["payments"]
group = "weir-e2e"
format = "json"
metadata = ["partition", "offset"]
fields = [{{ name = "id", type = "int64" }}, {{ name = "amount", type = "utf8" }}, {{ name = "card", type = "utf8" }}]
[sink]
kind = "kafka"
brokers = "{addr}"
topic = "clean"
key = "id"
[errors]
policy = "dead-letter"
topic = "payments-dlq"
[batch]
max_records = 64
max_linger_ms = 50
"#,
        finance = support::module_path("finance").display(),
        text = support::module_path("text").display(),
    );
    let config = PipelineConfig::from_toml(&toml).unwrap();
    let pipeline = Pipeline::build(config, support::sandbox()).await.unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stopped));

    let out = consume(&addr, "clean", 198).await;
    let ids: BTreeSet<i64> = out
        .iter()
        .map(|(_, p, _)| {
            serde_json::from_str::<serde_json::Value>(p).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let expected: BTreeSet<i64> = (0..200).filter(|i| *i != 50 && *i != 120).collect();
    assert_eq!(ids, expected);
    let seven = out
        .iter()
        .find(|(k, _, _)| k.as_deref() == Some("7"))
        .expect("keyed by id");
    assert!(seven.1.contains(r#""cents":725"#), "{}", seven.1);
    assert!(seven.1.contains("\"card\":\"#### #\""), "{}", seven.1);

    let dlq = consume(&addr, "payments-dlq", 2).await;
    let header = |r: &(Option<String>, String, Vec<(String, String)>), k: &str| {
        r.2.iter().find(|(hk, _)| hk == k).map(|(_, v)| v.clone())
    };
    let poison = dlq
        .iter()
        .find(|r| r.0.as_deref() == Some("k50"))
        .expect("poison record");
    assert_eq!(
        poison.1, r#"{"id":50,"amount":"oops","card":"1"}"#,
        "original payload kept"
    );
    assert_eq!(header(poison, "weir.stage").as_deref(), Some("transform"));
    assert_eq!(header(poison, "weir.udf").as_deref(), Some("parse_cents"));
    assert_eq!(header(poison, "weir.pipeline").as_deref(), Some("payments"));
    assert_eq!(
        header(poison, "weir.source.topic").as_deref(),
        Some("payments")
    );
    assert!(
        header(poison, "weir.error")
            .unwrap()
            .contains("`oops` is not an amount")
    );
    let malformed = dlq
        .iter()
        .find(|r| r.0.as_deref() == Some("k120"))
        .expect("malformed record");
    assert_eq!(header(malformed, "weir.stage").as_deref(), Some("decode"));

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("graceful stop")
        .unwrap()
        .unwrap();
}

/// A pipeline file moving JSON `{"id": n}` records from `input` to `output`.
pub fn passthrough_pipeline(
    dir: &std::path::Path,
    name: &str,
    addr: &str,
    input: &str,
    output: &str,
    group: &str,
) -> PathBuf {
    let toml = format!(
        r#"
name = "{name}"
udfs = ["{geo}"]
sql = "SELECT id, gcd(id, 6) AS g FROM source"
[source]
kind = "kafka"
brokers = "{addr}"
topics = ["{input}"]
group = "{group}"
format = "json"
fields = [{{ name = "id", type = "int64" }}]
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
[sink]
kind = "kafka"
brokers = "{addr}"
topic = "{output}"
[errors]
policy = "skip"
[batch]
max_records = 50
max_linger_ms = 20
"#,
        geo = support::module_path("geo").display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

pub struct Weir(Child);

impl Weir {
    /// Starts `weir run`; its log goes next to the pipeline file.
    pub fn start(pipeline: &std::path::Path) -> Weir {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(pipeline.with_extension("log"))
            .unwrap();
        Weir(
            Command::new(env!("CARGO_BIN_EXE_weir"))
                .args(["run", pipeline.to_str().unwrap()])
                .env("WEIR_CACHE_DIR", support::cache_dir())
                .env(
                    "WEIR_LOG",
                    std::env::var("WEIR_TEST_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()
            .unwrap();
    }

    /// SIGTERM, then the exit status (graceful shutdown exits 0).
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "weir did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn ids(records: &[Received]) -> BTreeSet<i64> {
    records
        .iter()
        .filter_map(|(_, p, _)| serde_json::from_str::<serde_json::Value>(p).ok()?["id"].as_i64())
        .collect()
}

/// The `id` of every record, repeats included, in arrival order.
pub fn ids_with_repeats(records: &[Received]) -> Vec<i64> {
    records
        .iter()
        .filter_map(|(_, p, _)| serde_json::from_str::<serde_json::Value>(p).ok()?["id"].as_i64())
        .collect()
}

pub fn json_ids(range: std::ops::Range<i64>) -> Vec<(Option<String>, String)> {
    range
        .map(|i| (Some(i.to_string()), format!(r#"{{"id":{i}}}"#)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_loses_nothing() {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("numbers", 2), ("numbers-out", 1)]).await;
    produce(&addr, "numbers", &json_ids(0..3000)).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = passthrough_pipeline(
        dir.path(),
        "numbers",
        &addr,
        "numbers",
        "numbers-out",
        "weir-kill",
    );

    let first = Weir::start(&pipeline);
    consume_until(&addr, "numbers-out", |got| got.len() >= 300).await;
    first.signal("-KILL");
    drop(first);

    let second = Weir::start(&pipeline);
    let all: BTreeSet<i64> = (0..3000).collect();
    let out = consume_until(&addr, "numbers-out", |got| ids(got) == all).await;
    // At least once: nothing lost (above), and a record is written again
    // only by the one replay from the last commit — never more than twice.
    let mut copies: std::collections::BTreeMap<i64, usize> = Default::default();
    for id in ids_with_repeats(&out) {
        *copies.entry(id).or_default() += 1;
    }
    let most = copies.values().max().copied().unwrap_or(0);
    assert!(most <= 2, "a record written {most} times: {copies:?}");
    assert!(second.stop().success(), "graceful shutdown exits 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_partitions_and_one_takes_over_when_the_other_stops() {
    share_then_take_over(Departure::Stop).await;
}

/// The killed member's session (`session.timeout.ms` = 6000) expires and
/// the survivor takes its partitions over from the last committed offsets.
/// (tansu 0.6 never expired a killed member; nisshi does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_partitions_and_one_takes_over_when_the_other_is_killed() {
    share_then_take_over(Departure::Kill).await;
}

enum Departure {
    /// SIGTERM: finish the batch, commit, leave the group.
    Stop,
    /// SIGKILL: the group notices when the session times out.
    Kill,
}

async fn share_then_take_over(departure: Departure) {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("shared", 4), ("out-a", 1), ("out-b", 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let a = Weir::start(&passthrough_pipeline(
        dir.path(),
        "a",
        &addr,
        "shared",
        "out-a",
        "weir-shared",
    ));
    let b = Weir::start(&passthrough_pipeline(
        dir.path(),
        "b",
        &addr,
        "shared",
        "out-b",
        "weir-shared",
    ));
    // Keep producing until both members received records: the group split
    // the partitions between the two processes.
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        produce(&addr, "shared", &json_ids(next..next + 200)).await;
        next += 200;
        let a_has = probe(&addr, "out-a").await;
        let b_has = probe(&addr, "out-b").await;
        if a_has > 0 && b_has > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partitions were never split (a: {a_has}, b: {b_has})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    match departure {
        Departure::Stop => assert!(a.stop().success()),
        Departure::Kill => drop(a),
    }
    produce(&addr, "shared", &json_ids(next..next + 1000)).await;
    next += 1000;
    // Everything produced reaches out-a or out-b: b took over a's partitions.
    let all: BTreeSet<i64> = (0..next).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut seen = ids(&read_all(&addr, "out-a").await);
        seen.extend(ids(&read_all(&addr, "out-b").await));
        if seen == all {
            break;
        }
        if Instant::now() > deadline {
            let log =
                std::fs::read_to_string(dir.path().join("b.log")).unwrap_or_else(|e| e.to_string());
            panic!(
                "{} of {} records arrived; b's log:\n{log}",
                seen.len(),
                all.len()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(b.stop().success());
}

/// Records currently in `topic` (reads until 2 s pass without a new one).
pub async fn read_all(addr: &str, topic: &str) -> Vec<Received> {
    let consumer = reader(addr, topic);
    let mut out = Vec::new();
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
        out.push((
            m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            Vec::new(),
        ));
    }
    out
}

async fn probe(addr: &str, topic: &str) -> usize {
    read_all(addr, topic).await.len()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    // sqlite storage, relative to the broker's working directory, survives
    // the restart.
    let storage = STORAGE;
    let Some(broker) = broker_with(storage, None, None) else {
        return;
    };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("restart-in", 2), ("restart-out", 1)]).await;
    produce(&addr, "restart-in", &json_ids(0..1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = passthrough_pipeline(
        dir.path(),
        "restart",
        &addr,
        "restart-in",
        "restart-out",
        "weir-restart",
    );
    let weir = Weir::start(&pipeline);
    consume_until(&addr, "restart-out", |got| got.len() >= 200).await;

    let broker = broker.restart(storage);
    produce(&addr, "restart-in", &json_ids(1500..2000)).await;
    let all: BTreeSet<i64> = (0..2000).collect();
    let log = pipeline.with_extension("log");
    let done = tokio::spawn({
        let addr = addr.clone();
        async move { consume_until(&addr, "restart-out", |got| ids(got) == all).await }
    });
    if let Err(e) = done.await {
        panic!(
            "{e}; weir's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    assert!(weir.stop().success());
    drop(broker);
}

/// The resident set size of process `pid`, in KiB. Panics when it cannot be
/// read: a memory bound that was never measured must not pass.
fn rss_kib(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {path} to measure RSS: {e}"));
    let rss: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS line in {path}:\n{status}"));
    assert!(rss > 0, "{path} reports an RSS of 0 KiB:\n{status}");
    rss
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sink_pauses_the_source_with_bounded_memory_then_resumes() {
    use std::io::BufRead;
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("bp-in", 2)]).await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("out.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let pipeline = passthrough_pipeline(dir.path(), "bp", &addr, "bp-in", "unused", "weir-bp");
    let toml = std::fs::read_to_string(&pipeline).unwrap().replace(
        &format!("[sink]\nkind = \"kafka\"\nbrokers = \"{addr}\"\ntopic = \"unused\""),
        &format!("[sink]\nkind = \"file\"\npath = \"{}\"", fifo.display()),
    );
    std::fs::write(&pipeline, toml).unwrap();
    let weir = Weir::start(&pipeline);
    // Open the read end but do not read: the sink stalls once the pipe is full.
    let reader = std::thread::spawn({
        let fifo = fifo.clone();
        move || std::fs::File::open(fifo).unwrap()
    })
    .join()
    .unwrap();

    let total = 20_000;
    let padding = "x".repeat(80);
    let records: Vec<(Option<String>, String)> = (0..total)
        .map(|i| (None, format!(r#"{{"id":{i},"pad":"{padding}"}}"#)))
        .collect();
    produce(&addr, "bp-in", &records).await;
    let log = pipeline.with_extension("log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("paused the source partitions")
    {
        if Instant::now() > deadline {
            panic!(
                "the source never paused; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = rss_kib(weir.0.id());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = rss_kib(weir.0.id());
    assert!(later < 400 * 1024, "RSS {later} KiB while stalled");
    assert!(
        later < first + 64 * 1024,
        "RSS grew from {first} to {later} KiB while stalled"
    );

    // Drain the pipe: everything arrives and the source resumes.
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen = BTreeSet::new();
        for line in std::io::BufReader::new(reader).lines() {
            let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            seen.insert(v["id"].as_i64().unwrap());
            if seen.len() == total {
                break;
            }
        }
        seen
    });
    let seen = tokio::time::timeout(Duration::from_secs(90), seen)
        .await
        .expect("all records arrive")
        .unwrap();
    assert_eq!(seen, (0..total as i64).collect::<BTreeSet<i64>>());
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("resumed the source partitions")
    );
    drop(weir);
}

/// The README's "Run on Kafka" walkthrough, as written: its Python
/// (confluent-kafka) producer, `weir run` on the example pipeline, its Python
/// reader — against a test broker instead of port 9092.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_kafka_walkthrough_works_with_an_independent_client() {
    let has_client = Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .status()
        .is_ok_and(|s| s.success());
    if !support::require_or_skip(
        "python3 with confluent-kafka (pip install confluent-kafka)",
        has_client,
    ) {
        return;
    }
    let Some(broker) = broker() else { return };
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let section = &readme[readme.find("## Run on Kafka").unwrap()..];
    let scripts: Vec<String> = section
        .split("python3 - <<'PY'\n")
        .skip(1)
        .take(2)
        .map(|s| s[..s.find("PY\n").unwrap()].replace("127.0.0.1:9092", &broker.addr))
        .collect();
    assert_eq!(scripts.len(), 2, "the README's producer and reader");
    let python = |script: &str| {
        let mut child = Command::new("timeout")
            .args(["90", "python3", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
        assert!(child.wait().unwrap().success(), "python failed:\n{script}");
        out
    };
    python(&scripts[0]);
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(repo.join("examples/pipelines/kafka-payments.toml")).unwrap();
    let pipeline = dir.path().join("kafka-payments.toml");
    let mut toml = example.replace("127.0.0.1:9092", &broker.addr);
    for module in ["finance", "text"] {
        toml = toml.replace(
            &format!("../../udfs/target/wasm32-unknown-unknown/release/{module}.wasm"),
            &support::module_path(module).display().to_string(),
        );
    }
    std::fs::write(&pipeline, toml).unwrap();
    let weir = Weir::start(&pipeline);
    let out = python(&scripts[1]);
    assert!(weir.stop().success());
    // The README's reader stops after 10 and 1 records by construction, so
    // what it printed is compared record by record: exactly the ten keys
    // 0..9, each once, each with its own transformed values.
    let mut clean: Vec<(String, i64, i64, String, String)> = out
        .lines()
        .filter(|l| l.starts_with("clean "))
        .map(|l| {
            let (key, value, _) = printed(l, "clean");
            let v: serde_json::Value =
                serde_json::from_str(&value).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(
                v["source_partition"]
                    .as_i64()
                    .is_some_and(|p| (0..3).contains(&p)),
                "{l}"
            );
            (
                key,
                v["id"].as_i64().unwrap_or_else(|| panic!("{l}")),
                v["cents"].as_i64().unwrap_or_else(|| panic!("{l}")),
                v["currency"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{l}"))
                    .to_string(),
                v["card"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{l}"))
                    .to_string(),
            )
        })
        .collect();
    clean.sort();
    let expected: Vec<(String, i64, i64, String, String)> = (0..10i64)
        .map(|i| {
            (
                i.to_string(),
                i,
                i * 100 + 50,
                "EUR".to_string(),
                "#### #".to_string(),
            )
        })
        .collect();
    assert_eq!(clean, expected, "{out}");
    let dlq: Vec<(String, String, String)> = out
        .lines()
        .filter(|l| l.starts_with("payments-dlq "))
        .map(|l| printed(l, "payments-dlq"))
        .collect();
    assert_eq!(dlq.len(), 1, "{out}");
    let (key, value, headers) = &dlq[0];
    assert_eq!(key, "bad", "{out}");
    assert_eq!(
        value, r#"{"id": 99, "amount": "oops", "card": ""}"#,
        "the original payload: {out}"
    );
    assert!(
        headers.contains("'weir.udf': b'parse_cents'")
            && headers.contains("'weir.stage': b'transform'"),
        "{out}"
    );
    // Nothing beyond what the reader stopped at: the topics hold exactly
    // these records (no duplicates, no strays).
    let mut ids: Vec<i64> = read_settled(&broker.addr, "clean", 10)
        .await
        .iter()
        .map(|(_, p, _)| {
            serde_json::from_str::<serde_json::Value>(p).unwrap()["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("{p}"))
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..10).collect::<Vec<i64>>());
    let letters: Vec<(Option<String>, String)> = read_settled(&broker.addr, "payments-dlq", 1)
        .await
        .into_iter()
        .map(|(k, p, _)| (k, p))
        .collect();
    assert_eq!(
        letters,
        vec![(
            Some("bad".to_string()),
            r#"{"id": 99, "amount": "oops", "card": ""}"#.to_string()
        )]
    );
}

/// (key, value, headers) of a line the README's reader printed:
/// `topic b'key' b'value' {headers}` (Python reprs; the values here hold no
/// quote or backslash to unescape).
fn printed(line: &str, topic: &str) -> (String, String, String) {
    let rest = line
        .strip_prefix(topic)
        .and_then(|r| r.strip_prefix(" b'"))
        .unwrap_or_else(|| panic!("no `{topic} b'key'` in {line}"));
    let (key, rest) = rest
        .split_once("' b'")
        .unwrap_or_else(|| panic!("no value in {line}"));
    let (value, headers) = rest
        .split_once("' {")
        .unwrap_or_else(|| panic!("no headers in {line}"));
    (key.to_string(), value.to_string(), format!("{{{headers}"))
}

/// Every record in `topic` from its start: reads until `at_least` arrived
/// (or panics after 90 s), then on until 3 s pass without another, so that
/// records beyond the expected ones are seen too.
pub async fn read_settled(addr: &str, topic: &str, at_least: usize) -> Vec<Received> {
    let consumer = reader(addr, topic);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let wait = if out.len() < at_least {
            deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(3)
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(m) => {
                let m = m.unwrap();
                out.push((
                    m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    Vec::new(),
                ));
            }
            Err(_) if out.len() >= at_least => return out,
            Err(_) => panic!("gave up after {} records on `{topic}`", out.len()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_records_end_to_end_with_a_udf_and_dead_letters() {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("trips", 2), ("trips-km", 1), ("trips-dlq", 1)]).await;
    let mut records = Vec::new();
    for id in 0..100 {
        let payload = match id {
            // Not a number in a float column: a decode failure.
            30 => "30,north,not-a-latitude".to_string(),
            _ => format!("{id},city-{},{}.5", id % 7, id % 90),
        };
        records.push((None, payload));
    }
    produce(&addr, "trips", &records).await;
    let toml = format!(
        r#"
name = "trips"
udfs = ["{geo}"]
sql = "SELECT id, city, scale_add(lat, 2.0) AS twice FROM source WHERE id % 2 = 0"
[source]
kind = "kafka"
brokers = "{addr}"
topics = ["trips"]
group = "weir-csv"
format = "csv"
fields = [{{ name = "id", type = "int64" }}, {{ name = "city", type = "utf8" }}, {{ name = "lat", type = "float64" }}]
[sink]
kind = "kafka"
brokers = "{addr}"
topic = "trips-km"
format = "csv"
[errors]
policy = "dead-letter"
topic = "trips-dlq"
[batch]
max_records = 32
max_linger_ms = 20
"#,
        geo = support::module_path("geo").display(),
    );
    let config = PipelineConfig::from_toml(&toml).unwrap();
    let pipeline = Pipeline::build(config, support::sandbox()).await.unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stopped));
    let out = consume(&addr, "trips-km", 49).await;
    let rows: BTreeSet<String> = out.into_iter().map(|(_, p, _)| p).collect();
    let expected: BTreeSet<String> = (0..100)
        .filter(|id| id % 2 == 0 && *id != 30)
        .map(|id| {
            format!(
                "{id},city-{},{}",
                id % 7,
                ((id % 90) as f64 + 0.5) * 1.5 + 2.0
            )
        })
        .collect();
    assert_eq!(rows, expected);
    let dlq = consume(&addr, "trips-dlq", 1).await;
    assert_eq!(dlq[0].1, "30,north,not-a-latitude", "original payload kept");
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// `weir serve`'s SQL endpoint over a topic's most recent records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_over_a_topics_recent_records() {
    use tower::ServiceExt;
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("recent", 1)]).await;
    produce(&addr, "recent", &json_ids(0..50)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = weir::serve::ServeConfig {
        data_dir: dir.path().to_path_buf(),
        tokens: vec![weir::serve::TokenConfig {
            name: "me".into(),
            sha256: weir::serve::hash_token("t"),
            tenant: "acme".into(),
            role: weir::serve::Role::Operator,
        }],
        ..Default::default()
    };
    // The tenant may use this broker (the default policy allows none).
    let policy = weir::tenant::Policy::from_toml(&format!(
        "[defaults]\nkafka_brokers = [\"{}\"]\n",
        broker.addr
    ))
    .unwrap();
    let tenants = std::sync::Arc::new(weir::tenant::Tenants::new(policy));
    let state = weir::serve::AppState::open(config, support::sandbox().clone(), tenants).unwrap();
    let app = weir::serve::router(std::sync::Arc::new(state));
    let body = serde_json::json!({
        "sql": "SELECT count(*) AS n, min(id) AS lo, max(id) AS hi, max(_offset) AS last_offset FROM recent",
        "topics": {"recent": {
            "brokers": addr, "topic": "recent", "format": "json",
            "fields": [{"name": "id", "type": "int64"}], "metadata": ["offset"], "last": 20
        }}
    });
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/tenants/acme/sql")
        .header("authorization", "Bearer t")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, axum::http::StatusCode::OK, "{answer}");
    assert_eq!(
        answer["rows"][0],
        serde_json::json!({"n": 20, "lo": 30, "hi": 49, "last_offset": 49})
    );
}

/// A second member joins mid-stream, then leaves: every record is delivered
/// and no committed offset of the group ever moves backwards (a revoked
/// partition's batches still in flight are not committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_then_leaving_never_moves_a_committed_offset_back() {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("rebalance", 4), ("rebalance-out", 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |name: &str| {
        passthrough_pipeline(
            dir.path(),
            name,
            &addr,
            "rebalance",
            "rebalance-out",
            "weir-rebalance",
        )
    };
    let a = Weir::start(&pipeline("ra"));
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let monitor = std::thread::spawn({
        let addr = addr.clone();
        move || watch_commits(&addr, "weir-rebalance", "rebalance", 4, finished)
    });
    let mut b = None;
    let mut next = 0;
    while next < 6000 {
        produce(&addr, "rebalance", &json_ids(next..next + 200)).await;
        next += 200;
        match next {
            1400 => b = Some(Weir::start(&pipeline("rb"))),
            4000 => {
                let b = b.take().expect("b started");
                assert!(b.stop().success());
                // The second member did own partitions and read records
                // of them (its log's last progress line), so the group did
                // rebalance twice under the monitor.
                let log = std::fs::read_to_string(dir.path().join("rb.log")).unwrap();
                let read: u64 = log
                    .lines()
                    .rev()
                    .find_map(|l| l.split("records_in=").nth(1))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                assert!(
                    log.contains("partitions assigned") && read > 0,
                    "the second member read nothing: {log}"
                );
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let all: BTreeSet<i64> = (0..next).collect();
    consume_until(&addr, "rebalance-out", |got| ids(got) == all).await;
    assert!(a.stop().success());
    done.send(()).unwrap();
    let (backwards, observed) = monitor.join().unwrap();
    assert!(observed > 0, "the group's commits were observed");
    assert!(
        backwards.is_empty(),
        "offsets moved backwards: {backwards:?}"
    );
}

/// Polls the committed offsets of `group` until told to stop: the moves
/// backwards seen, and how many commits were observed.
fn watch_commits(
    addr: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    finished: std::sync::mpsc::Receiver<()>,
) -> (Vec<String>, usize) {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let mut last = std::collections::HashMap::new();
    let (mut backwards, mut observed) = (Vec::new(), 0);
    // Until told to stop, or until the test is gone (a panic drops the sender).
    while let Err(std::sync::mpsc::TryRecvError::Empty) = finished.try_recv() {
        if let Ok(committed) = consumer.committed_offsets(tpl.clone(), Duration::from_secs(5)) {
            for e in committed.elements() {
                if let Offset::Offset(o) = e.offset() {
                    match last.insert(e.partition(), o) {
                        Some(before) if o < before => backwards
                            .push(format!("partition {} from {before} to {o}", e.partition())),
                        Some(before) if o > before => observed += 1,
                        None => observed += 1,
                        _ => {}
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (backwards, observed)
}

/// A group that stops with its committed offset in the middle of a
/// producer's record batch resumes there with no record skipped: 500
/// records produced as one record batch (one partition, long linger),
/// consumed in micro-batches of 7, stopped after about 60, resumed.
/// (tansu 0.6 answered such a fetch with the *next* batch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_from_an_offset_inside_a_producer_batch_with_no_record_skipped() {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::{Offset, TopicPartitionList};
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("inside", 1), ("inside-out", 1)]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("linger.ms", "1000")
        .set("batch.num.messages", "100000")
        .create()
        .unwrap();
    let pending: Vec<_> = (0..500)
        .map(|i| {
            let payload = format!(r#"{{"id":{i}}}"#);
            producer
                .send_result(FutureRecord::<(), _>::to("inside").payload(payload.as_bytes()))
                .unwrap()
        })
        .collect();
    for p in pending {
        p.await.unwrap().unwrap();
    }
    let toml = format!(
        r#"
name = "inside"
sql = "SELECT id FROM source"
[source]
kind = "kafka"
brokers = "{addr}"
topics = ["inside"]
group = "inside"
format = "json"
fields = [{{ name = "id", type = "int64" }}]
[sink]
kind = "kafka"
brokers = "{addr}"
topic = "inside-out"
[errors]
policy = "skip"
[batch]
max_records = 7
max_linger_ms = 5
workers = 1
"#
    );
    let run = |stop_after: Option<u64>| {
        let toml = toml.clone();
        async move {
            let config = PipelineConfig::from_toml(&toml).unwrap();
            let pipeline = Pipeline::build(config, support::sandbox()).await.unwrap();
            let stats = pipeline.stats();
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(pipeline.run(stopped));
            let target = stop_after.unwrap_or(u64::MAX);
            let started = Instant::now();
            while stats.records_out.get() < target && !task.is_finished() {
                assert!(started.elapsed() < Duration::from_secs(60), "no progress");
                tokio::time::sleep(Duration::from_millis(2)).await;
                if stop_after.is_none() && stats.records_in.get() >= 1 {
                    break;
                }
            }
            (stop, task, stats)
        }
    };
    let (stop, task, _) = run(Some(60)).await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    let committed = {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .set("group.id", "inside")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("inside", 0);
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        match got.find_partition("inside", 0).unwrap().offset() {
            Offset::Offset(o) => o,
            other => panic!("no committed offset: {other:?}"),
        }
    };
    assert!(
        committed > 0 && committed < 500,
        "the commit {committed} lies inside the one producer batch"
    );
    let (stop, task, _) = run(None).await;
    let all: BTreeSet<i64> = (0..500).collect();
    let out = consume_until(&addr, "inside-out", |got| ids(got) == all).await;
    // Every record arrived; none after the committed offset was skipped,
    // and none before it written again (the restart resumes at the commit).
    assert_eq!(out.len(), 500, "records written twice");
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// The Kafka cases of `tests/pipelines/` (`input.kafka.ndjson`, one record
/// per line: `{"partition": p, "key": "…", "value": {…} or "text"}`; the
/// topic gets as many partitions as the lines name): `{brokers}`,
/// `{input_topic}` and `{output_topic}` are filled in, the pipeline runs
/// until the output topic holds as many records as `expected.out.ndjson`,
/// then stops; the topic must hold exactly those (in any order: partitions
/// interleave), and the dead letters are checked as for a file case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_pipeline_cases() {
    use crate::pipeline::{
        case_name, case_toml, cases, check_dead_letters, check_error, is_kafka_case,
    };
    use rdkafka::consumer::BaseConsumer;
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    let kafka_cases: Vec<_> = cases().into_iter().filter(|c| is_kafka_case(c)).collect();
    assert!(!kafka_cases.is_empty());
    for case in kafka_cases {
        let name = case_name(&case);
        let (input, output) = (format!("case-{name}"), format!("case-{name}-out"));
        let records = support::ndjson(&case.join("input.kafka.ndjson"));
        let partition = |r: &serde_json::Value| r["partition"].as_i64().unwrap_or(0) as i32;
        let partitions = records.iter().map(partition).max().unwrap_or(0) + 1;
        create_topics(&addr, &[(&input, partitions), (&output, 1)]).await;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .create()
            .unwrap();
        for r in &records {
            let value = match &r["value"] {
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let mut record = FutureRecord::<str, str>::to(&input)
                .payload(&value)
                .partition(partition(r));
            if let Some(k) = r["key"].as_str() {
                record = record.key(k);
            }
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join("dlq.ndjson");
        let toml = case_toml(
            &case,
            &dead,
            &[
                ("{brokers}", &addr),
                ("{input_topic}", &input),
                ("{output_topic}", &output),
            ],
        );
        let built = async {
            let config = PipelineConfig::from_toml(&toml).map_err(anyhow::Error::msg)?;
            Ok::<_, anyhow::Error>(Pipeline::build(config, support::sandbox()).await?)
        };
        let Some(pipeline) = check_error(&case, built.await.map_err(|e| format!("{e:#}"))) else {
            continue;
        };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(pipeline.run(stopped));
        let expected = support::ndjson(&case.join("expected.out.ndjson"));
        let got = consume(&addr, &output, expected.len()).await;
        let _ = stop.send(true);
        task.await
            .unwrap()
            .unwrap_or_else(|e| panic!("case {name}: {e:#}"));
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .create()
            .unwrap();
        let (_, end) = reader
            .fetch_watermarks(&output, 0, Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            end as usize,
            expected.len(),
            "case {name}: records on the output topic"
        );
        let sorted = |mut v: Vec<serde_json::Value>| {
            v.sort_by_key(|x| x.to_string());
            v
        };
        let got: Vec<serde_json::Value> = got
            .iter()
            .map(|(_, p, _)| serde_json::from_str(p).unwrap())
            .collect();
        assert_eq!(sorted(got), sorted(expected), "case {name}: output");
        check_dead_letters(&case, &dead);
    }
}
