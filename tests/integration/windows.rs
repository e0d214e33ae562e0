//! Windowed pipelines on a real broker (nisshi): event time across
//! partitions, a SIGKILL while windows are open, the restart that rebuilds
//! them by replaying from the committed offsets, and an idle partition.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::kafka::{Weir, broker, consume_until, create_topics};
use crate::support;

/// Event time of second `s`, as the JSON the pipeline decodes.
fn at(s: i64) -> String {
    format!(
        "2026-01-{:02}T{:02}:{:02}:{:02}Z",
        1 + s / 86_400,
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60
    )
}

/// Produces one record per second `s` of `seconds` (amount = s) to
/// partition `s % partitions`.
async fn produce_seconds(addr: &str, topic: &str, seconds: std::ops::Range<i64>, partitions: i32) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for s in seconds {
        let payload = format!(r#"{{"amount":{s}.0,"ts":"{}"}}"#, at(s));
        let record = FutureRecord::<(), _>::to(topic)
            .payload(payload.as_bytes())
            .partition((s % i64::from(partitions)) as i32);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

fn windowed_pipeline(
    dir: &std::path::Path,
    addr: &str,
    input: &str,
    output: &str,
    idle_ms: u64,
) -> std::path::PathBuf {
    let toml = format!(
        r#"
name = "windows"
udfs = ["{stats}"]
sql = """
SELECT window_start, count(*) AS n, wsum(amount) AS total, median(amount) AS med
FROM tumble(source, ts, INTERVAL '10' SECOND)
GROUP BY window_start
"""
[source]
kind = "kafka"
brokers = "{addr}"
topics = ["{input}"]
group = "weir-windows"
format = "json"
fields = [{{ name = "amount", type = "float64" }}, {{ name = "ts", type = "timestamp_us" }}]
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
[watermark]
idle_partition_ms = {idle_ms}
[sink]
kind = "kafka"
brokers = "{addr}"
topic = "{output}"
[errors]
policy = "dead-letter"
path = "{dlq}"
[batch]
max_records = 25
max_linger_ms = 20
"#,
        stats = support::module_path("stats").display(),
        dlq = dir.join("dlq.ndjson").display(),
    );
    let path = dir.join("windows.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Every window's emitted values by key (window start), in arrival order.
fn by_window(records: &[crate::kafka::Received]) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut windows: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (key, payload, _) in records {
        let value: serde_json::Value = serde_json::from_str(payload).unwrap();
        let key = key
            .clone()
            .expect("a windowed result is keyed by its window");
        windows.entry(key).or_default().push(value);
    }
    windows
}

/// The result window `w` (seconds 10w..10w+10) must have.
fn expected(w: i64) -> (i64, f64, f64) {
    let sum: i64 = (10 * w..10 * w + 10).sum();
    (10, sum as f64, 10.0 * w as f64 + 4.5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_open_windows_then_restart_emits_every_window_with_its_value() {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("events", 2), ("events-windows", 1)]).await;
    // Windows 0..30 of 10 s, one record per second over two partitions.
    produce_seconds(&addr, "events", 0..300, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = windowed_pipeline(dir.path(), &addr, "events", "events-windows", 0);
    let first = Weir::start(&pipeline);
    // Up to [280 s, 290 s) can close; [290 s, 300 s) stays open.
    consume_until(&addr, "events-windows", |got| by_window(got).len() >= 20).await;
    first.signal("-KILL");
    drop(first);
    // The rest of the stream, then a record far ahead in each partition
    // that closes every window before it.
    produce_seconds(&addr, "events", 300..600, 2).await;
    produce_seconds(&addr, "events", 100_000..100_002, 2).await;
    let second = Weir::start(&pipeline);
    let got = consume_until(&addr, "events-windows", |got| by_window(got).len() >= 60).await;
    let windows = by_window(&got);
    assert_eq!(windows.len(), 60, "{:?}", windows.keys());
    let mut duplicates = 0;
    for (w, (key, values)) in windows.iter().enumerate() {
        assert!(
            key.contains(&at(10 * w as i64).replace('Z', "")),
            "key {key} of window {w}"
        );
        let (n, total, med) = expected(w as i64);
        for v in values {
            assert_eq!(v["n"], n, "window {w}: {v}");
            assert_eq!(v["total"].as_f64(), Some(total), "window {w}: {v}");
            assert_eq!(v["med"].as_f64(), Some(med), "window {w}: {v}");
        }
        duplicates += values.len() - 1;
    }
    // At-least-once: windows emitted before the kill but not yet committed
    // come again, with the same value (a compacted topic keeps one).
    eprintln!("windows re-emitted after the restart: {duplicates}");
    assert!(second.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_partition_stops_holding_the_windows_back() {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("quiet", 2), ("quiet-windows", 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = windowed_pipeline(dir.path(), &addr, "quiet", "quiet-windows", 2000);
    let weir = Weir::start(&pipeline);
    // Partition 1 gets one early record and then nothing; partition 0 goes
    // on. Once partition 1 is idle (2 s), partition 0 alone moves the
    // watermark and the windows close.
    produce_seconds(&addr, "quiet", 1..2, 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let evens: Vec<i64> = (0..100).step_by(2).collect();
    for chunk in evens.chunks(10) {
        produce_seconds_at(&addr, "quiet", chunk, 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let got = consume_until(&addr, "quiet-windows", |got| by_window(got).len() >= 5).await;
    let windows = by_window(&got);
    let first = windows.values().next().unwrap().last().unwrap();
    // Window [0, 10): the evens 0..8 and the early odd 1.
    assert_eq!(first["n"], 6, "{first}");
    assert_eq!(first["total"].as_f64(), Some(21.0), "{first}");
    assert!(weir.stop().success());
}

async fn produce_seconds_at(addr: &str, topic: &str, seconds: &[i64], partition: i32) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    for &s in seconds {
        let payload = format!(r#"{{"amount":{s}.0,"ts":"{}"}}"#, at(s));
        let record = FutureRecord::<(), _>::to(topic)
            .payload(payload.as_bytes())
            .partition(partition);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Issue 28: two `weir run` processes of one windowed pipeline split the
/// partitions and each would emit partial windows (597 and 601 instead of
/// 1198). Until key-partitioned state lands, each says so: a log line at
/// error level naming the partitions it owns (and the gauge
/// `weir_pipeline_partial_windows`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_of_a_windowed_pipeline_say_their_windows_are_partial() {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("partial-in", 4), ("partial-out", 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::create_dir_all(&two).unwrap();
    let a = Weir::start(&windowed_pipeline(
        &one,
        &addr,
        "partial-in",
        "partial-out",
        0,
    ));
    let b = Weir::start(&windowed_pipeline(
        &two,
        &addr,
        "partial-in",
        "partial-out",
        0,
    ));
    let said = |d: &std::path::Path| {
        std::fs::read_to_string(d.join("windows.log"))
            .unwrap_or_default()
            .contains("of its source's 4 partitions")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut s = 0;
    while !(said(&one) && said(&two)) {
        produce_seconds(&addr, "partial-in", s..s + 8, 4).await;
        s += 8;
        assert!(
            std::time::Instant::now() < deadline,
            "the members never said their windows were partial:\n{}\n{}",
            std::fs::read_to_string(one.join("windows.log")).unwrap_or_default(),
            std::fs::read_to_string(two.join("windows.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop((a, b));
}

/// Rides keyed by ride id over `partitions` partitions (ride i to partition
/// i % partitions), `minutes` minutes of event time from 08:00, five
/// cities; the true (window, city) → (count, sum of fares in cents) of
/// those produced.
pub(crate) async fn produce_rides(
    addr: &str,
    topic: &str,
    rides: std::ops::Range<i64>,
    partitions: i32,
    truth: &mut BTreeMap<(String, String), (i64, i64)>,
) {
    produce_rides_routed(
        addr,
        topic,
        rides,
        |i, _| (i % i64::from(partitions)) as i32,
        truth,
    )
    .await;
}

/// [`produce_rides`], ride `i` of `city` to partition `route(i, city)`.
async fn produce_rides_routed(
    addr: &str,
    topic: &str,
    rides: std::ops::Range<i64>,
    route: impl Fn(i64, &str) -> i32,
    truth: &mut BTreeMap<(String, String), (i64, i64)>,
) {
    const CITIES: [&str; 5] = ["rome", "oslo", "lima", "kyiv", "baku"];
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for i in rides {
        // 2 400 rides per minute of event time, in order per partition.
        let second = 8 * 3600 + i / 40;
        let city = CITIES[(i * 7 % 5) as usize];
        let fare = 100 + i % 900;
        let ts = at(second);
        let minute = format!(
            "2026-01-01T{:02}:{:02}:00",
            second / 3600,
            (second / 60) % 60
        );
        let e = truth.entry((minute, city.to_string())).or_default();
        e.0 += 1;
        e.1 += fare;
        let payload = format!(r#"{{"ride":{i},"city":"{city}","fare":{fare},"ts":"{ts}"}}"#);
        let key = i.to_string();
        let record = FutureRecord::to(topic)
            .key(key.as_bytes())
            .payload(payload.as_bytes())
            .partition(route(i, city));
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

/// The issue's windowed pipeline (rides by city per minute), re-keyed;
/// `errors` is its `[errors]` section.
pub(crate) fn rides_toml(addr: &str, input: &str, output: &str, errors: &str) -> String {
    format!(
        r#"
name = "rides"
sql = """
SELECT window_start, city, count(*) AS n, sum(fare) AS cents
FROM tumble(source, ts, INTERVAL '1' MINUTE)
GROUP BY window_start, city
"""
[source]
kind = "kafka"
brokers = "{addr}"
topics = ["{input}"]
group = "weir-{input}"
format = "json"
fields = [{{ name = "ride", type = "int64" }}, {{ name = "city", type = "utf8" }}, {{ name = "fare", type = "int64" }}, {{ name = "ts", type = "timestamp_us" }}]
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
repartition = true
[watermark]
idle_partition_ms = 0
[state]
checkpoint_ms = 100
[sink]
kind = "kafka"
brokers = "{addr}"
topic = "{output}"
[errors]
{errors}
[batch]
max_records = 100
max_linger_ms = 20
"#
    )
}

fn repartitioned_pipeline(
    dir: &std::path::Path,
    addr: &str,
    input: &str,
    output: &str,
) -> std::path::PathBuf {
    let errors = format!(
        "policy = \"dead-letter\"\npath = \"{}\"",
        dir.join("dlq.ndjson").display()
    );
    let path = dir.join("rides.toml");
    std::fs::write(&path, rides_toml(addr, input, output, &errors)).unwrap();
    path
}

/// Waits until `output` has a result for every (window, city) of `truth`,
/// then checks each result (repeats included) equals the truth: the
/// windows, and how many results were repeats.
pub(crate) async fn assert_whole_windows(
    addr: &str,
    output: &str,
    truth: &BTreeMap<(String, String), (i64, i64)>,
) -> (usize, usize) {
    let expected: BTreeMap<String, (i64, i64)> = truth
        .iter()
        .map(|((minute, city), v)| {
            (
                format!(r#"{{"window_start":"{minute}","city":"{city}"}}"#),
                *v,
            )
        })
        .collect();
    let keys: std::collections::BTreeSet<String> = expected.keys().cloned().collect();
    let got = consume_until(addr, output, |got| {
        got.iter()
            .filter_map(|(k, _, _)| k.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .is_superset(&keys)
    })
    .await;
    let mut repeats = 0;
    for (key, values) in by_window(&got) {
        let Some((n, cents)) = expected.get(&key) else {
            panic!("a result for a window that is not complete yet: {key} {values:?}");
        };
        for v in &values {
            assert_eq!(
                (v["n"].as_i64(), v["cents"].as_i64()),
                (Some(*n), Some(*cents)),
                "{key}: a partial or wrong result among {values:?}"
            );
        }
        repeats += values.len() - 1;
    }
    (expected.len(), repeats)
}

/// Issue 28: N `weir run` processes of one windowed pipeline with
/// `repartition = true` (the issue's case: a 4-partition topic of rides
/// keyed by ride id, windows by city), optionally with one more joining
/// and one SIGKILLed mid-stream: every (window, city) result equals the
/// truth computed from the produced records. A result repeated with the
/// same value (a replay) is allowed and counted; a partial one never.
async fn members_give_whole_windows(members: usize, kill_one: bool) {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    let (input, output) = (
        format!("rides-{members}-{kill_one}"),
        format!("rides-out-{members}-{kill_one}"),
    );
    create_topics(&addr, &[(&input, 4), (&output, 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Vec::new();
    for m in 0..members {
        let d = dir.path().join(format!("m{m}"));
        std::fs::create_dir_all(&d).unwrap();
        procs.push(Weir::start(&repartitioned_pipeline(
            &d, &addr, &input, &output,
        )));
    }
    // Every member owns partitions of both stages before records come.
    let joined = |m: usize| {
        let log =
            std::fs::read_to_string(dir.path().join(format!("m{m}/rides.log"))).unwrap_or_default();
        let assigned: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("partitions assigned"))
            .collect();
        assigned.iter().any(|l| l.contains("weir-repartition"))
            && assigned.iter().any(|l| l.contains(&format!("\"{input}\"")))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(0..members).all(joined) {
        assert!(
            std::time::Instant::now() < deadline,
            "the members never all owned partitions of both stages"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut truth = BTreeMap::new();
    // Five minutes of rides in steps; with `kill_one`, a member is killed
    // once the first windows were emitted, with windows of its keys open.
    // …and, with `kill_one`, one more member joins while windows are open
    // (taking partitions, with their open windows, from the others).
    for step in 0..6i64 {
        produce_rides(&addr, &input, step * 2400..(step + 1) * 2400, 4, &mut truth).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        if kill_one && step == 1 {
            let d = dir.path().join(format!("m{members}"));
            std::fs::create_dir_all(&d).unwrap();
            procs.push(Weir::start(&repartitioned_pipeline(
                &d, &addr, &input, &output,
            )));
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !joined(members) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the new member never joined"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if kill_one && step == 3 {
            consume_until(&addr, &output, |got| !got.is_empty()).await;
            procs.remove(0).signal("-KILL");
        }
    }
    // Rides of every city two minutes later on every partition move each
    // member's watermark past the five minutes (their windows stay open).
    let mut later = BTreeMap::new();
    produce_rides(&addr, &input, 8 * 2400..8 * 2400 + 40, 4, &mut later).await;
    let (windows, repeats) = assert_whole_windows(&addr, &output, &truth).await;
    println!(
        "{members} members{}: {} windows whole, {repeats} repeated with the same value",
        if kill_one {
            ", one joining and one killed"
        } else {
            ""
        },
        windows
    );
    for p in procs {
        let _ = p.stop();
    }
}

/// Issue 28: a watermark travels through the internal topic as marks, not
/// only with the records. Source partition 1 carries only `baku`, whose
/// key goes to internal partition 0; internal partition 1 (`rome`) gets no
/// record of source partition 1 at all. Without marks its watermark waits
/// for source partition 1 for ever (`idle_partition_ms = 0`; with the
/// default it waited 30 s, then took partition 1 for idle and made its
/// later records late): rome's windows never closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_partition_that_sends_a_key_nothing_still_moves_its_watermark() {
    use rdkafka::Message;
    use rdkafka::consumer::Consumer;
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("sparse", 2), ("sparse-out", 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(&repartitioned_pipeline(
        dir.path(),
        &addr,
        "sparse",
        "sparse-out",
    ));
    let route = |_: i64, city: &str| i32::from(city == "baku");
    let mut truth = BTreeMap::new();
    produce_rides_routed(&addr, "sparse", 0..3 * 2400, route, &mut truth).await;
    // Two minutes later on both partitions: every window of the first three
    // minutes is behind the watermark.
    let mut later = BTreeMap::new();
    produce_rides_routed(&addr, "sparse", 5 * 2400..5 * 2400 + 40, route, &mut later).await;
    let (windows, repeats) = assert_whole_windows(&addr, "sparse-out", &truth).await;
    assert_eq!((windows, repeats), (15, 0));
    // The case is the one described: an internal partition with records
    // of one source partition only, and marks of both.
    let consumer = crate::kafka::reader(&addr, "sparse.weir-repartition.rides");
    let mut records: BTreeMap<i32, std::collections::BTreeSet<i64>> = BTreeMap::new();
    let mut marks: BTreeMap<i32, std::collections::BTreeSet<i64>> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while records.values().map(|s| s.len()).sum::<usize>() < 3
        || marks.values().map(|s| s.len()).sum::<usize>() < 4
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{records:?} {marks:?}"
        );
        let m = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let origin = v["__weir_origin_partition"].as_i64().unwrap();
        let to = if v["__weir_origin_offset"] == -1 {
            &mut marks
        } else {
            // Only the columns the query reads cross the internal topic.
            let columns: std::collections::BTreeSet<&str> =
                v.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(
                columns,
                [
                    "__weir_key",
                    "__weir_origin_offset",
                    "__weir_origin_partition",
                    "city",
                    "fare",
                    "ts"
                ]
                .into(),
                "{v}"
            );
            &mut records
        };
        to.entry(m.partition()).or_default().insert(origin);
    }
    consumer.unsubscribe();
    assert_eq!(records.get(&1).map(|s| s.len()), Some(1), "{records:?}");
    assert_eq!(marks.get(&1).map(|s| s.len()), Some(2), "{marks:?}");
    assert!(weir.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_of_a_repartitioned_pipeline_emit_whole_windows() {
    members_give_whole_windows(2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_of_a_repartitioned_pipeline_emit_whole_windows() {
    members_give_whole_windows(3, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_killed_mid_stream_emit_whole_windows() {
    members_give_whole_windows(2, true).await;
}

/// Issue 28: the watermark is committed with the offsets (Kafka's offset
/// metadata). After a SIGKILL, a window emitted before it is not emitted
/// again — in particular not from the part of its records that lies past
/// the committed offset, which would be a partial value (the known gap of
/// replaying without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_emitted_before_a_crash_is_not_emitted_again() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("gap-in", 1), ("gap-out", 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
name = "gap"
sql = "SELECT window_start, count(*) AS n, sum(amount) AS total FROM tumble(source, ts, INTERVAL '10' SECOND) GROUP BY window_start"
[source]
kind = "kafka"
brokers = "{addr}"
topics = ["gap-in"]
group = "weir-gap"
format = "json"
fields = [{{ name = "amount", type = "float64" }}, {{ name = "ts", type = "timestamp_us" }}]
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
[watermark]
max_out_of_order_ms = 10000
idle_partition_ms = 0
# Without a changelog: the committed watermark alone keeps the window
# from being emitted again.
[state]
checkpoint_ms = 0
[sink]
kind = "kafka"
brokers = "{addr}"
topic = "gap-out"
[errors]
policy = "dead-letter"
path = "{}"
[batch]
max_records = 1
max_linger_ms = 5
"#,
        dir.path().join("dlq.ndjson").display()
    );
    let pipeline = dir.path().join("gap.toml");
    std::fs::write(&pipeline, toml).unwrap();
    // Offsets 0..4 at seconds 3, 15, 5, 22: window [0 s, 10 s) holds offsets
    // 0 and 2 and closes at offset 3 (watermark 12 s); the commit then stops
    // below offset 1, the oldest record of a window still open.
    produce_seconds_at(&addr, "gap-in", &[3, 15, 5, 22], 0).await;
    let first = Weir::start(&pipeline);
    let got = consume_until(&addr, "gap-out", |got| !got.is_empty()).await;
    let first_value: serde_json::Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!(
        (first_value["n"].as_i64(), first_value["total"].as_f64()),
        (Some(2), Some(8.0))
    );
    // Wait for that commit (offset 1, and the watermark 12 s with it in the
    // watermarks' group) to land, then kill.
    let committed = |group: &str| {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .set("group.id", group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("gap-in", 0);
        consumer
            .committed_offsets(tpl, Duration::from_secs(5))
            .ok()
            .and_then(|c| c.find_partition("gap-in", 0).map(|e| e.offset()))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(committed("weir-gap") == Some(Offset::Offset(1))
        && matches!(committed("weir-gap.weir-watermarks"), Some(Offset::Offset(o)) if o > 0))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?} {:?}",
            committed("weir-gap"),
            committed("weir-gap.weir-watermarks")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.signal("-KILL");
    drop(first);
    // After the restart, a record far ahead closes the other windows.
    produce_seconds_at(&addr, "gap-in", &[45], 0).await;
    let second = Weir::start(&pipeline);
    let got = consume_until(&addr, "gap-out", |got| by_window(got).len() >= 3).await;
    let windows = by_window(&got);
    type Emitted = Vec<(Option<i64>, Option<f64>)>;
    let values: Vec<(String, Emitted)> = windows
        .iter()
        .map(|(k, vs)| {
            (
                k.clone(),
                vs.iter()
                    .map(|v| (v["n"].as_i64(), v["total"].as_f64()))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        values.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        vec![
            vec![(Some(2), Some(8.0))],
            vec![(Some(1), Some(15.0))],
            vec![(Some(1), Some(22.0))],
        ],
        "each window once, whole: {values:?}"
    );
    assert!(second.stop().success());
    // The group's offsets reset by hand (to reprocess the topic): the
    // committed watermark no longer goes with them and is not used, so
    // the windows are computed again, whole, rather than skipped.
    let reset: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("group.id", "weir-gap")
        .create()
        .unwrap();
    let mut to_start = TopicPartitionList::new();
    to_start
        .add_partition_offset("gap-in", 0, Offset::Offset(0))
        .unwrap();
    reset
        .commit(&to_start, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    let third = Weir::start(&pipeline);
    let got = consume_until(&addr, "gap-out", |got| {
        by_window(got).values().all(|v| v.len() >= 2) && by_window(got).len() >= 3
    })
    .await;
    for (key, values) in by_window(&got) {
        let first = (values[0]["n"].as_i64(), values[0]["total"].as_f64());
        assert!(
            values
                .iter()
                .all(|v| (v["n"].as_i64(), v["total"].as_f64()) == first),
            "{key}: {values:?}"
        );
    }
    assert!(third.stop().success());
}

/// The committed offsets of `group` on `topic`, summed, and the topic's
/// end offsets, summed.
fn committed_and_end(addr: &str, group: &str, topic: &str, partitions: i32) -> (i64, i64) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed: i64 = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .map(|c| {
            c.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0);
    let end: i64 = (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(0, |(_, high)| high)
        })
        .sum();
    (committed, end)
}

/// Issue 28, item 3: a one-hour window open over 20 000 rides; the
/// pipeline checkpoints its folded state to the changelog topic, so its
/// offsets are committed to the head of the topic although the window is
/// open (without the changelog they stay at the window's first record).
/// SIGKILL, restart: the restarted member reads only what came after, yet
/// the window's result per city equals the truth, once — its state came
/// back from the changelog, not from a replay. The same for a windows
/// stage (`repartition = true`), whose internal partitions are the scopes.
///
/// With `static_member`, the process is a static member of its groups
/// (`group.instance.id`) and the session timeout is 45 s: the restarted
/// process takes its partitions back at once instead of after it.
async fn a_long_window_survives_a_sigkill_from_its_checkpoint(
    repartition: bool,
    static_member: bool,
) {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    let (input, output) = (
        format!("long-{repartition}-{static_member}"),
        format!("long-out-{repartition}-{static_member}"),
    );
    create_topics(&addr, &[(&input, 4), (&output, 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = rides_toml(
        &addr,
        &input,
        &output,
        &format!(
            "policy = \"dead-letter\"\npath = \"{}\"",
            dir.path().join("dlq.ndjson").display()
        ),
    )
    .replace("INTERVAL '1' MINUTE", "INTERVAL '1' HOUR")
    .replace(
        "repartition = true",
        &format!("repartition = {repartition}"),
    );
    let toml = if static_member {
        toml.replace(
            r#""session.timeout.ms" = "6000""#,
            r#""session.timeout.ms" = "45000", "group.instance.id" = "rides-1""#,
        )
    } else {
        toml
    };
    let pipeline = dir.path().join("long.toml");
    std::fs::write(&pipeline, toml).unwrap();
    let mut truth = BTreeMap::new();
    // 20 000 rides: 08:00 to 08:08, all in the window [08:00, 09:00).
    produce_rides(&addr, &input, 0..20_000, 4, &mut truth).await;
    let first = Weir::start(&pipeline);
    let (group, topic) = if repartition {
        (
            format!("weir-{input}.windows"),
            format!("{input}.weir-repartition.rides"),
        )
    } else {
        (format!("weir-{input}"), input.clone())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (committed, end) = committed_and_end(&addr, &group, &topic, 4);
        if end >= 20_000 && committed == end {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the offsets of `{group}` never reached the head of `{topic}` with the window open: {committed} of {end}\n{}",
            std::fs::read_to_string(pipeline.with_extension("log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    first.signal("-KILL");
    drop(first);
    // More rides in the same window, then rides at 10:00 that close it:
    // twenty, one per (city, partition), so that every internal partition
    // of a windows stage hears from every source partition.
    produce_rides(&addr, &input, 20_000..20_400, 4, &mut truth).await;
    let mut later = BTreeMap::new();
    produce_rides(&addr, &input, 288_000..288_020, 4, &mut later).await;
    let mut hour: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for ((minute, city), (n, cents)) in &truth {
        assert!(minute.starts_with("2026-01-01T08:"), "{minute}");
        let e = hour
            .entry(("2026-01-01T08:00:00".to_string(), city.clone()))
            .or_default();
        e.0 += n;
        e.1 += cents;
    }
    let restarted = std::time::Instant::now();
    let second = Weir::start(&pipeline);
    let (windows, repeats) = assert_whole_windows(&addr, &output, &hour).await;
    let took = restarted.elapsed();
    eprintln!(
        "first output {:.1} s after the restart (weir start included), {windows} results",
        took.as_secs_f64()
    );
    assert_eq!(repeats, 0, "a window emitted twice");
    if static_member {
        // Not a benchmark: a member that waited for the session to time
        // out would take 45 s at least.
        assert!(
            took < Duration::from_secs(30),
            "the restarted static member waited {took:?}: for the session timeout?"
        );
    }
    let log = std::fs::read_to_string(pipeline.with_extension("log")).unwrap_or_default();
    assert!(log.contains("open windows restored from"), "{log}");
    assert!(second.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_window_survives_a_sigkill_from_its_checkpoint_in_one_process() {
    a_long_window_survives_a_sigkill_from_its_checkpoint(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_window_of_a_windows_stage_survives_a_sigkill_from_its_checkpoint() {
    a_long_window_survives_a_sigkill_from_its_checkpoint(true, false).await;
}

/// Static membership: a restarted windows stage takes its partitions (and
/// their checkpoints) back without waiting for the session timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarted_after_a_sigkill_takes_its_windows_back_at_once() {
    a_long_window_survives_a_sigkill_from_its_checkpoint(true, true).await;
}
