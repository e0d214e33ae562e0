//! Avro on Kafka (nisshi): the Confluent wire format with a schema registry
//! read and written by weir, produced and consumed by Python's own
//! Confluent client (an independent implementation of the framing and the
//! registry calls), and bad records dead-lettered with a reason.
//!
//! No schema-registry server installs from the package registries this
//! machine reaches, so the registry is `tests/registry/registry.py`: the
//! documented REST calls both clients make (docs/pipelines.md, "Avro").

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weir::pipeline::{Pipeline, PipelineConfig};

use crate::kafka::{broker, create_topics};
use crate::support;

struct Registry {
    child: Child,
    url: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry(user: &str, password: &str) -> Registry {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = support::repo().join("tests/registry/registry.py");
    let child = Command::new("python3")
        .arg(script)
        .args([&port.to_string(), user, password])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the registry");
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "registry did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Registry {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

fn has_python_avro() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import fastavro; from confluent_kafka.schema_registry.avro import AvroSerializer",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `tests/registry/avro_client.py`; its standard output.
fn client(args: &[&str]) -> String {
    let script = support::repo().join("tests/registry/avro_client.py");
    let out = Command::new("timeout")
        .arg("120")
        .arg("python3")
        .arg(script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "avro_client.py {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_avro_with_a_registry_end_to_end_and_bad_records_dead_lettered() {
    if !support::require_or_skip(
        "python3 with confluent-kafka[avro,schemaregistry] (pip install 'confluent-kafka[avro,schemaregistry]')",
        has_python_avro(),
    ) {
        return;
    }
    let Some(broker) = broker() else { return };
    let (user, password) = ("weir", "s3cret");
    let reg = registry(user, password);
    create_topics(&broker.addr, &[("rides", 2), ("rides-out", 2)]).await;
    let n = 40;
    client(&[
        "produce",
        &broker.addr,
        "rides",
        &reg.url,
        user,
        password,
        &n.to_string(),
    ]);

    let dir = tempfile::tempdir().unwrap();
    let dlq = dir.path().join("dlq.ndjson");
    // SAFETY: set before the pipeline reads it; no other test reads it.
    unsafe { std::env::set_var("WEIR_TEST_REGISTRY_PASSWORD", password) };
    let config = PipelineConfig::from_toml(&format!(
        r#"
name = "avro-rides"
sql = "SELECT id, upper(city) AS city, km * 2 AS km2 FROM source"
[source]
kind = "kafka"
brokers = "{brokers}"
topics = ["rides"]
group = "avro-rides"
format = "avro"
[source.avro]
registry = "{url}"
username = "{user}"
password_env = "WEIR_TEST_REGISTRY_PASSWORD"
[sink]
kind = "kafka"
brokers = "{brokers}"
topic = "rides-out"
format = "avro"
key = "id"
[sink.avro]
registry = "{url}"
username = "{user}"
password = "{password}"
[errors]
policy = "dead-letter"
path = "{dlq}"
[batch]
max_records = 16
max_linger_ms = 20
"#,
        brokers = broker.addr,
        url = reg.url,
        dlq = dlq.display(),
    ))
    .unwrap();
    let pipeline = Pipeline::build(config, support::sandbox()).await.unwrap();
    let stats = pipeline.stats();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stopped));
    let started = Instant::now();
    while stats.records_out.get() < n as u64 || stats.dead_letters.get() < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "out {} dead {}",
            stats.records_out.get(),
            stats.dead_letters.get()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();

    // Python's deserializer reads weir's output through the registry.
    let out = client(&[
        "consume",
        &broker.addr,
        "rides-out",
        &reg.url,
        user,
        password,
        &n.to_string(),
    ]);
    let mut got: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    got.sort_by_key(|r| r["value"]["id"].as_i64());
    assert_eq!(got.len(), n);
    for (i, r) in got.iter().enumerate() {
        let v = &r["value"];
        assert_eq!(v["id"], i as i64, "{r}");
        assert_eq!(r["key"], i.to_string(), "{r}");
        assert_eq!(v["city"], if i % 2 == 1 { "ZÜRICH" } else { "OSLO" }, "{r}");
        if i % 5 == 0 {
            assert!(v["km2"].is_null(), "{r}");
        } else {
            assert_eq!(v["km2"].as_f64(), Some(i as f64 * 3.0), "{r}");
        }
    }

    let letters = support::ndjson(&dlq);
    let reason = |key: &str| {
        letters
            .iter()
            .find(|l| l["key"] == key)
            .and_then(|l| l["error"].as_str())
            .unwrap_or_else(|| panic!("no dead letter `{key}`: {letters:?}"))
            .to_string()
    };
    assert_eq!(letters.len(), 4, "{letters:?}");
    assert!(
        reason("unknown-id").contains("unknown schema id 999"),
        "{letters:?}"
    );
    assert!(
        reason("truncated").contains("truncated or does not match"),
        "{letters:?}"
    );
    assert!(
        reason("not-avro").contains("Confluent wire format"),
        "{letters:?}"
    );
    assert!(
        reason("mismatch").contains("does not resolve to the reader schema"),
        "{letters:?}"
    );
    assert!(
        letters.iter().all(|l| l["stage"] == "decode"),
        "{letters:?}"
    );
}

#[test]
fn avro_keys_are_checked_with_the_fix() {
    let base = |format: &str, extra: &str| {
        format!(
            "name = \"p\"\nsql = \"SELECT * FROM source\"\n[source]\nkind = \"kafka\"\nbrokers = \"x\"\ntopics = [\"t\"]\ngroup = \"g\"\nformat = \"{format}\"\n{extra}[sink]\nkind = \"stdout\"\n[errors]\npolicy = \"skip\"\n"
        )
    };
    let err = PipelineConfig::from_toml(&base("avro", "")).unwrap_err();
    assert!(err.contains("needs [source.avro] with `schema`"), "{err}");
    let err = PipelineConfig::from_toml(&base(
        "json",
        "fields = [{ name = \"a\", type = \"int64\" }]\n[source.avro]\nschema = \"x.avsc\"\n",
    ))
    .unwrap_err();
    assert!(err.contains("is not \"avro\""), "{err}");
    let err = PipelineConfig::from_toml(&base(
        "avro",
        "fields = [{ name = \"a\", type = \"int64\" }]\n[source.avro]\nschema = \"x.avsc\"\n",
    ))
    .unwrap_err();
    assert!(err.contains("source.fields must be empty"), "{err}");
}

/// Registry answers that are not schemas stop the pipeline at start with
/// the registry, the subject and the fix: a wrong password (401) and a
/// subject that does not exist (404).
#[tokio::test]
async fn registry_refusals_at_start_name_the_registry_and_the_fix() {
    let reg = registry("weir", "right");
    let toml = |password: &str, subject: &str| {
        format!(
            "name = \"p\"\nsql = \"SELECT * FROM source\"\n[source]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9\"\ntopics = [\"t\"]\ngroup = \"g\"\nformat = \"avro\"\n[source.avro]\nregistry = \"{}\"\nsubject = \"{subject}\"\nusername = \"weir\"\npassword = \"{password}\"\n[sink]\nkind = \"stdout\"\n[errors]\npolicy = \"skip\"\n",
            reg.url
        )
    };
    let err = |text: String| async move {
        match Pipeline::build(
            PipelineConfig::from_toml(&text).unwrap(),
            support::sandbox(),
        )
        .await
        {
            Ok(_) => panic!("built"),
            Err(e) => format!("{e:#}"),
        }
    };
    let refused = err(toml("wrong", "t-value")).await;
    assert!(
        refused.contains("pipeline `p`")
            && refused.contains(&reg.url)
            && refused.contains("HTTP 401"),
        "{refused}"
    );
    let missing = err(toml("right", "nope-value")).await;
    assert!(
        missing.contains("has no subject `nope-value`") && missing.contains("set `subject`"),
        "{missing}"
    );
}

/// Issue 27 #11: a registry that answers 5xx mid-stream is a fault of
/// capacity, not of the records: the pipeline holds the batch and asks
/// again with backoff, nothing is dead-lettered or skipped, and every
/// record is delivered once the registry is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_holds_the_batch_until_the_registry_is_back() {
    if !support::require_or_skip(
        "python3 with confluent-kafka[avro,schemaregistry] (pip install 'confluent-kafka[avro,schemaregistry]')",
        has_python_avro(),
    ) {
        return;
    }
    let Some(broker) = broker() else { return };
    let (user, password) = ("weir", "outage-pw");
    let reg = registry(user, password);
    create_topics(&broker.addr, &[("rides-outage", 2)]).await;
    let n = 20;
    client(&[
        "produce",
        &broker.addr,
        "rides-outage",
        &reg.url,
        user,
        password,
        &n.to_string(),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let (out, dlq) = (dir.path().join("out.ndjson"), dir.path().join("dlq.ndjson"));
    let config = PipelineConfig::from_toml(&format!(
        r#"
name = "avro-outage"
sql = "SELECT id FROM source"
[source]
kind = "kafka"
brokers = "{brokers}"
topics = ["rides-outage"]
group = "avro-outage"
format = "avro"
[source.avro]
registry = "{url}"
username = "{user}"
password = "{password}"
[sink]
kind = "file"
path = "{out}"
[errors]
policy = "dead-letter"
path = "{dlq}"
[batch]
max_records = 64
max_linger_ms = 20
"#,
        brokers = broker.addr,
        url = reg.url,
        user = user,
        password = password,
        out = out.display(),
        dlq = dlq.display(),
    ))
    .unwrap();
    // Built while the registry answers (the reader schema is its latest).
    let pipeline = Pipeline::build(config, support::sandbox()).await.unwrap();
    let stats = pipeline.stats();
    let outage = |status: u16| {
        let addr = reg.url.trim_start_matches("http://").to_string();
        let body = format!("{{\"status\":{status}}}");
        let auth = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{user}:{password}")
            )
        );
        let (code, text) = crate::serve::http(
            &addr,
            "POST",
            "/test/outage",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &auth),
            ],
            body.as_bytes(),
        );
        assert_eq!(code, 200, "{text}");
    };
    outage(503);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stopped));
    let started = Instant::now();
    while stats.records_in.get() == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "nothing read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Held, not failed: the pipeline is still running, and nothing of the
    // batch went anywhere.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!task.is_finished(), "the outage ended the pipeline");
    assert_eq!(stats.records_out.get(), 0);
    assert_eq!(stats.dead_letters.get(), 0);
    assert_eq!(stats.skipped.get(), 0);
    outage(0);
    let started = Instant::now();
    while stats.records_out.get() < n as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "out {} dead {}",
            stats.records_out.get(),
            stats.dead_letters.get()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    let mut ids: Vec<i64> = support::ndjson(&out)
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..n as i64).collect::<Vec<_>>());
    // Only the client's deliberately bad records are dead letters.
    let letters = support::ndjson(&dlq);
    assert!(
        letters.iter().all(|l| l["stage"] == "decode") && letters.len() == 4,
        "{letters:?}"
    );
}
