//! Dirty data on a real broker: every good record reaches the output and
//! exactly the bad ones the dead-letter topic, each with its own
//! coordinates; nothing poison stops the pipeline; `weir replay` re-runs
//! dead letters after a fix; a pipeline that reads nothing says so.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;
use weir::pipeline::{Pipeline, PipelineConfig, PipelineStats};
use weir::tenant::{BreakerState, Policy, Tenants};

use crate::kafka::{Received, broker, consume, create_topics, produce};
use crate::support;

fn header<'a>(r: &'a Received, name: &str) -> Option<&'a str> {
    r.2.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn payments_pipeline(addr: &str, name: &str, input: &str, out: &str, dlq: &str) -> String {
    format!(
        r#"
name = "{name}"
udfs = ["{finance}"]
sql = "SELECT id, parse_cents(amount) AS cents FROM source"
[source]
kind = "kafka"
brokers = "{addr}"
topics = ["{input}"]
group = "{name}"
format = "json"
fields = [{{ name = "id", type = "int64" }}, {{ name = "amount", type = "utf8" }}]
properties = {{ "fetch.wait.max.ms" = "10", "fetch.error.backoff.ms" = "10" }}
[sink]
kind = "kafka"
brokers = "{addr}"
topic = "{out}"
[errors]
policy = "dead-letter"
topic = "{dlq}"
[batch]
max_records = 500
max_linger_ms = 20
"#,
        finance = support::module_path("finance").display(),
    )
}

/// 1 %, 5 % and 50 % of the records make `parse_cents` report a row error
/// (the function working as designed) and 0.5 % are not JSON: every good
/// record is delivered, exactly the bad ones are dead-lettered, and the
/// breaker never opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirty_streams_deliver_every_good_record_and_dead_letter_exactly_the_bad() {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    const RECORDS: i64 = 50_000;
    for (percent, every) in [(1, 100), (5, 20), (50, 2)] {
        let (input, out, dlq) = (
            format!("dirty-{percent}"),
            format!("dirty-{percent}-out"),
            format!("dirty-{percent}-dlq"),
        );
        create_topics(&addr, &[(&input, 3), (&out, 1), (&dlq, 1)]).await;
        let mut records = Vec::new();
        let (mut good, mut bad) = (BTreeSet::new(), BTreeSet::new());
        for id in 0..RECORDS {
            let payload = if id % 200 == 199 {
                bad.insert(id);
                format!("{{\"id\": {id}, not json")
            } else if id % every == 0 {
                bad.insert(id);
                format!(r#"{{"id":{id},"amount":"oops"}}"#)
            } else {
                good.insert(id);
                format!(r#"{{"id":{id},"amount":"{id}.25 EUR"}}"#)
            };
            records.push((Some(id.to_string()), payload));
        }
        produce(&addr, &input, &records).await;

        let name = format!("dirty{percent}");
        let config =
            PipelineConfig::from_toml(&payments_pipeline(&addr, &name, &input, &out, &dlq))
                .unwrap();
        let tenants = Tenants::new(Policy::default());
        let pipeline = Pipeline::build_for(config, support::sandbox(), &tenants)
            .await
            .unwrap();
        let modules = pipeline.modules();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(pipeline.run(stopped));

        let delivered = consume(&addr, &out, good.len()).await;
        let ids: BTreeSet<i64> = delivered
            .iter()
            .map(|(_, p, _)| {
                serde_json::from_str::<serde_json::Value>(p).unwrap()["id"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids, good, "{percent} %: every good record");
        let letters = consume(&addr, &dlq, bad.len()).await;
        let keys: BTreeSet<i64> = letters
            .iter()
            .map(|(k, _, _)| k.as_deref().unwrap().parse().unwrap())
            .collect();
        assert_eq!(keys, bad, "{percent} %: exactly the bad records");
        assert!(
            letters
                .iter()
                .all(|l| header(l, "weir.error").is_some_and(|e| !e.contains("circuit open"))),
            "{percent} %: no record was refused by a breaker"
        );
        let modules = modules.read().clone();
        assert_eq!(modules[0].breaker(0).unwrap().state(), BreakerState::Closed);
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
    }
}

/// Creates `topic` with room for records of up to `max_bytes`.
async fn create_large_topic(addr: &str, topic: &str, max_bytes: usize) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    let max = max_bytes.to_string();
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", &max);
    for r in admin
        .create_topics(&[new], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_poison_record_is_dead_lettered_with_its_own_coordinates() {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_large_topic(&addr, "poison-in", 8 << 20).await;
    create_topics(&addr, &[("poison-out", 1), ("poison-dlq", 1)]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("message.max.bytes", "8000000")
        .set("linger.ms", "50")
        .create()
        .unwrap();
    let big = format!(r#"{{"id":2,"note":"{}"}}"#, "x".repeat(2_000_000));
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("1", br#"{"id":1,"note":"fine"}"#.to_vec()),
        ("2", big.clone().into_bytes()),
        ("3", b"{\"id\":3,\"note\":\"\xff\xfe\"}".to_vec()),
        ("4", br#"{"id":4,"note":"a"} {"id":44,"note":"b"}"#.to_vec()),
        ("5", b"   ".to_vec()),
        ("6", br#"{"id":6,"note":"fine too"}"#.to_vec()),
    ];
    // One producer batch: the records share a micro-batch in weir too.
    let pending: Vec<_> = payloads
        .iter()
        .map(|(k, p)| {
            producer.send(
                FutureRecord::to("poison-in").key(*k).payload(p.as_slice()),
                Duration::from_secs(10),
            )
        })
        .collect();
    let mut offsets = BTreeMap::new();
    for ((k, _), p) in payloads.iter().zip(pending) {
        let delivery = p.await.unwrap();
        offsets.insert(k.to_string(), delivery.offset);
    }

    let toml = format!(
        r#"
name = "poison"
sql = "SELECT id, note FROM source"
[source]
kind = "kafka"
brokers = "{addr}"
topics = ["poison-in"]
group = "poison"
format = "json"
fields = [{{ name = "id", type = "int64" }}, {{ name = "note", type = "utf8" }}]
[sink]
kind = "kafka"
brokers = "{addr}"
topic = "poison-out"
[errors]
policy = "dead-letter"
topic = "poison-dlq"
"#
    );
    let pipeline = Pipeline::build(
        PipelineConfig::from_toml(&toml).unwrap(),
        support::sandbox(),
    )
    .await
    .unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stopped));

    let out = consume(&addr, "poison-out", 2).await;
    let ids: Vec<&str> = out.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(
        ids,
        [r#"{"id":1,"note":"fine"}"#, r#"{"id":6,"note":"fine too"}"#],
        "the neighbours are delivered"
    );
    let letters = consume(&addr, "poison-dlq", 4).await;
    let by_key: BTreeMap<&str, &Received> = letters
        .iter()
        .map(|l| (l.0.as_deref().unwrap(), l))
        .collect();
    for (key, stage, error) in [
        ("2", "sink", "over the sink's limit of"),
        ("3", "decode", "not valid UTF-8"),
        ("4", "decode", "holds several JSON values"),
        ("5", "decode", "holds no JSON value"),
    ] {
        let l = by_key
            .get(key)
            .unwrap_or_else(|| panic!("record {key} dead-lettered: {letters:?}"));
        assert_eq!(header(l, "weir.stage"), Some(stage), "record {key}");
        assert!(
            header(l, "weir.error").unwrap().contains(error),
            "record {key}: {:?}",
            header(l, "weir.error")
        );
        assert_eq!(
            header(l, "weir.source.offset"),
            Some(offsets[key].to_string().as_str()),
            "record {key}: its own coordinates"
        );
    }
    // The 2 MB record did not fit the dead-letter producer either: cut, and
    // the header says how long it was.
    let large = by_key["2"];
    assert_eq!(
        header(large, "weir.truncated"),
        Some(big.len().to_string().as_str())
    );
    assert!(large.1.len() < 1_000_000 && big.starts_with(&large.1));
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_dead_letters_of_a_broken_version_land_in_the_output_after_the_fix() {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(
        &addr,
        &[("replay-in", 2), ("replay-out", 1), ("replay-dlq", 1)],
    )
    .await;
    let records: Vec<(Option<String>, String)> = (0..300)
        .map(|i| (Some(format!("k{i}")), format!(r#"{{"id":{i}}}"#)))
        .collect();
    produce(&addr, "replay-in", &records).await;
    let toml = |module: &std::path::Path| {
        format!(
            r#"
name = "replay"
udfs = ["{module}"]
sql = "SELECT id, double(id) AS twice FROM source"
[source]
kind = "kafka"
brokers = "{addr}"
topics = ["replay-in"]
group = "replay"
format = "json"
fields = [{{ name = "id", type = "int64" }}]
[sink]
kind = "kafka"
brokers = "{addr}"
topic = "replay-out"
[errors]
policy = "dead-letter"
topic = "replay-dlq"
[batch]
max_records = 100
"#,
            module = module.display()
        )
    };
    // The broken version traps on every call; with the breaker out of the
    // way every record is dead-lettered.
    let tenants = Tenants::new(
        Policy::from_toml("[defaults]\nbreaker_failures = 1000\nbreaker_window = 1000\n").unwrap(),
    );
    let broken = support::repo().join("tests/breaker/broken_double.wat");
    let pipeline = Pipeline::build_for(
        PipelineConfig::from_toml(&toml(&broken)).unwrap(),
        support::sandbox(),
        &tenants,
    )
    .await
    .unwrap();
    let stats = pipeline.stats();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stopped));
    consume(&addr, "replay-dlq", 300).await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(stats.records_out.get(), 0);

    // Replay the letters of `double` to their source topic.
    let replay = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "replay",
            "--topic",
            "replay-dlq",
            "--brokers",
            &addr,
            "--udf",
            "double",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let reported: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reported.len(), 300);
    assert!(reported.iter().all(|r| r["replayed"] == true
        && r["source_topic"] == "replay-in"
        && r["source_offset"].is_i64()));

    // The fixed version, same group: the replayed records are new records
    // of the source topic.
    let fixed = support::repo().join("tests/tenant/guest.wat");
    let pipeline = Pipeline::build_for(
        PipelineConfig::from_toml(&toml(&fixed)).unwrap(),
        support::sandbox(),
        &tenants,
    )
    .await
    .unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stopped));
    let out = consume(&addr, "replay-out", 300).await;
    let all: BTreeSet<i64> = (0..300).collect();
    let got: BTreeSet<i64> = out
        .iter()
        .map(|(_, p, _)| {
            let v: serde_json::Value = serde_json::from_str(p).unwrap();
            assert_eq!(v["twice"].as_i64().unwrap(), 2 * v["id"].as_i64().unwrap());
            v["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(got, all);
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_without_partitions_reports_a_stall_naming_group_and_topics() {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    let toml = format!(
        r#"
name = "stalled"
sql = "SELECT id FROM source"
[source]
kind = "kafka"
brokers = "{addr}"
topics = ["no-such-topic"]
group = "stall-group"
format = "json"
fields = [{{ name = "id", type = "int64" }}]
stall_warn_ms = 1000
properties = {{ "allow.auto.create.topics" = "false" }}
[sink]
kind = "stdout"
[errors]
policy = "skip"
"#
    );
    let pipeline = Pipeline::build(
        PipelineConfig::from_toml(&toml).unwrap(),
        support::sandbox(),
    )
    .await
    .unwrap();
    let stats: Arc<PipelineStats> = pipeline.stats();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stopped));
    let started = Instant::now();
    while stats.stalled.get() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no stall reported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let condition = stats.condition().unwrap();
    assert!(
        condition.contains("no partitions assigned")
            && condition.contains("`stall-group`")
            && condition.contains("no-such-topic"),
        "{condition}"
    );
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// Issue 29 (ABI 1.1): a batch with several bad rows costs one guest call.
/// The Rust SDK reports every failing row with the column (status 2); the
/// host takes the column and dead-letters exactly those rows. The host used
/// to re-call around each failing row (about three more calls per error).
#[test]
fn every_row_error_of_a_batch_comes_back_from_one_call() {
    use datafusion::arrow::array::{Array, ArrayRef, Int64Array, StringArray};
    let module = support::load("finance");
    let index = module.function_index("parse_cents").unwrap();
    let text: Vec<&str> = (0..100)
        .map(|i| if i % 20 == 3 { "not money" } else { "1.25 EUR" })
        .collect();
    let args: Vec<ArrayRef> = vec![Arc::new(StringArray::from(text))];
    let calls = |m: &weir::UdfModule| {
        m.function_stats(index)
            .unwrap()
            .invocations
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = calls(&module);
    let (out, errors) = module.call_collecting(index, &args, 100).unwrap();
    assert_eq!(calls(&module) - before, 1, "one guest call for the batch");
    let failed: Vec<usize> = errors.rows().collect();
    assert_eq!(failed, vec![3, 23, 43, 63, 83]);
    assert!(
        errors.describe().next().unwrap().1.contains("not money"),
        "{errors:?}"
    );
    let out = out.as_any().downcast_ref::<Int64Array>().unwrap();
    for row in 0..100 {
        if failed.contains(&row) {
            assert!(out.is_null(row), "row {row} failed: NULL");
        } else {
            assert_eq!(out.value(row), 125, "row {row}");
        }
    }
}

/// The same for JavaScript: the runtime reports every row that threw,
/// with the column, in one call (ABI 1.1).
#[test]
fn every_thrown_row_of_a_javascript_batch_comes_back_from_one_call() {
    use datafusion::arrow::array::{Array, ArrayRef, Int64Array};
    let source = "// @udf halve(x BIGINT) RETURNS BIGINT\nfunction halve(x) {\n  if (x % 2 !== 0) throw new Error(`${x} is odd`);\n  return x / 2;\n}\n// @udf name(x BIGINT) RETURNS VARCHAR\nfunction name(x) {\n  if (x % 2 !== 0) throw new Error(`${x} is odd`);\n  return `n${x}`;\n}\n";
    let functions = weir::lang::declarations("halve.js", source).unwrap();
    let wasm =
        weir::lang::javascript::module(support::sandbox(), "halve.js", source, &functions).unwrap();
    let module = support::sandbox().load("halve.js", &wasm).unwrap();
    let index = module.function_index("halve").unwrap();
    let args: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![2, 3, 4, 5, 6, 8, 9]))];
    let (out, errors) = module.call_collecting(index, &args, 7).unwrap();
    assert_eq!(
        module
            .function_stats(index)
            .unwrap()
            .invocations
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one guest call for the batch"
    );
    let failed: Vec<usize> = errors.rows().collect();
    assert_eq!(failed, vec![1, 3, 6]);
    assert!(
        errors.describe().nth(1).unwrap().1.contains("5 is odd"),
        "{errors:?}"
    );
    let out = out.as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(
        (0..7)
            .map(|i| (!out.is_null(i)).then(|| out.value(i)))
            .collect::<Vec<_>>(),
        vec![Some(1), None, Some(2), None, Some(3), Some(4), None]
    );
    // Many failing rows of a text result (each message kept in one block).
    let index = module.function_index("name").unwrap();
    let args: Vec<ArrayRef> = vec![Arc::new(Int64Array::from((0..40).collect::<Vec<i64>>()))];
    let (out, errors) = module.call_collecting(index, &args, 40).unwrap();
    let failed: Vec<usize> = errors.rows().collect();
    assert_eq!(failed, (0..40).filter(|i| i % 2 == 1).collect::<Vec<_>>());
    assert!(
        errors.describe().nth(19).unwrap().1.contains("39 is odd"),
        "{errors:?}"
    );
    let out = out
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
        .unwrap();
    assert_eq!(out.value(38), "n38");
    assert!(out.is_null(39));
}

/// With the tenant's result cache on (a deterministic function), a large
/// batch is probed through the cache and the rest called directly: the row
/// errors of both parts come back without a call per bad row, and no
/// failed row is cached (a second run reports the same errors).
#[test]
fn row_errors_through_the_result_cache_cost_no_extra_calls() {
    use datafusion::arrow::array::{ArrayRef, StringArray};
    let tenants = Tenants::new(Policy::default());
    let tenant = tenants.get("cached");
    let module = support::sandbox()
        .load_file_for(support::module_path("finance"), &tenant)
        .unwrap();
    let index = module.function_index("parse_cents").unwrap();
    let text: Vec<String> = (0..4096)
        .map(|i| {
            if i % 20 == 7 {
                format!("bad {i}")
            } else {
                format!("{i}.25 EUR")
            }
        })
        .collect();
    let args: Vec<ArrayRef> = vec![Arc::new(StringArray::from(text))];
    let calls = || {
        module
            .function_stats(index)
            .unwrap()
            .invocations
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let bad: Vec<usize> = (0..4096).filter(|i| i % 20 == 7).collect();
    for round in 0..2 {
        let before = calls();
        let (_, errors) = module.call_collecting(index, &args, 4096).unwrap();
        let failed: Vec<usize> = errors.rows().collect();
        assert_eq!(failed, bad, "round {round}");
        assert!(
            calls() - before <= 2,
            "round {round}: {} guest calls for one batch",
            calls() - before
        );
    }
}

/// The same for AssemblyScript (`fail<T>`): every failed row of the batch
/// in one call, each NULL, the others computed.
#[test]
fn every_failed_row_of_an_assemblyscript_batch_comes_back_from_one_call() {
    use datafusion::arrow::array::{Array, ArrayRef, Int64Array, StringArray};
    if !support::require_asc() {
        return;
    }
    let module = support::load("text_as");
    let index = module.function_index("as_parse_cents").unwrap();
    let text: Vec<String> = (0..30)
        .map(|i| {
            if i % 3 == 0 {
                format!("bad{i}")
            } else {
                format!("{i}.5 EUR")
            }
        })
        .collect();
    let args: Vec<ArrayRef> = vec![Arc::new(StringArray::from(text))];
    let (out, errors) = module.call_collecting(index, &args, 30).unwrap();
    assert_eq!(
        module
            .function_stats(index)
            .unwrap()
            .invocations
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one guest call for the batch"
    );
    let failed: Vec<usize> = errors.rows().collect();
    assert_eq!(failed, (0..30).filter(|i| i % 3 == 0).collect::<Vec<_>>());
    assert!(
        errors.describe().nth(9).unwrap().1.contains("`bad27`"),
        "{errors:?}"
    );
    let out = out.as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(out.value(1), 150);
    assert!(out.is_null(27));
}
