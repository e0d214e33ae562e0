//! Lookup tables (`[[tables]]`): a file rewritten while the stream runs,
//! a compacted topic (nisshi) updated and tombstoned while the stream runs,
//! and table files that are malformed or vanish.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weir::pipeline::{Pipeline, PipelineConfig};

use crate::kafka::{broker, create_topics, produce};
use crate::support;
use crate::support::ndjson as lines;

/// A FIFO the test writes lines into while the pipeline reads it.
fn fifo(dir: &Path) -> (PathBuf, std::sync::mpsc::Sender<String>) {
    let path = dir.join("in.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap()
            .success()
    );
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let writer = path.clone();
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&writer)
            .unwrap();
        for line in rx {
            f.write_all(line.as_bytes()).unwrap();
            f.flush().unwrap();
        }
    });
    (path, tx)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pipeline_toml(input: &Path, out: &Path, table: &str) -> String {
    format!(
        r#"
name = "enrich"
sql = "SELECT s.id, c.name FROM source s LEFT JOIN customers c ON s.customer = c.customer_id"
[source]
kind = "file"
path = "{input}"
format = "json"
fields = [{{ name = "id", type = "int64" }}, {{ name = "customer", type = "int64" }}]
{table}
[sink]
kind = "file"
path = "{out}"
[errors]
policy = "skip"
[batch]
max_records = 10
max_linger_ms = 10
"#,
        input = input.display(),
        out = out.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_file_rewritten_while_the_stream_runs_is_joined_from_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (input, tx) = fifo(dir.path());
    let table = dir.path().join("customers.csv");
    std::fs::write(&table, "customer_id,name\n1,Ada\n2,Grace\n").unwrap();
    let out = dir.path().join("out.ndjson");
    let toml = pipeline_toml(
        &input,
        &out,
        &format!(
            "[[tables]]\nname = \"customers\"\nkind = \"file\"\npath = \"{}\"\n",
            table.display()
        ),
    );
    let pipeline = Pipeline::build(
        PipelineConfig::from_toml(&toml).unwrap(),
        support::sandbox(),
    )
    .await
    .unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stopped));
    tx.send("{\"id\":1,\"customer\":1}\n".into()).unwrap();
    until("the first record", || lines(&out).len() == 1).await;
    assert_eq!(lines(&out)[0]["name"], "Ada");

    // Rewritten (Ada renamed, a customer added): the next batches join it.
    std::fs::write(&table, "customer_id,name\n1,Ada L.\n2,Grace\n3,Linus\n").unwrap();
    let mut id = 2;
    until("the new version", || {
        tx.send(format!("{{\"id\":{id},\"customer\":1}}\n"))
            .unwrap();
        id += 1;
        std::thread::sleep(Duration::from_millis(100));
        lines(&out).last().is_some_and(|l| l["name"] == "Ada L.")
    })
    .await;
    // Malformed, then gone: the version in force stays, nothing stops.
    std::fs::write(&table, "customer_id,name\n\"unclosed\n").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    tx.send("{\"id\":1000,\"customer\":3}\n".into()).unwrap();
    until("a record after the bad version", || {
        lines(&out).last().is_some_and(|l| l["id"] == 1000)
    })
    .await;
    assert_eq!(lines(&out).last().unwrap()["name"], "Linus");
    std::fs::remove_file(&table).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    tx.send("{\"id\":1001,\"customer\":2}\n".into()).unwrap();
    until("a record after the file vanished", || {
        lines(&out).last().is_some_and(|l| l["id"] == 1001)
    })
    .await;
    assert_eq!(lines(&out).last().unwrap()["name"], "Grace");
    stop.send(true).unwrap();
    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_missing_or_malformed_table_at_start_names_the_table_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, "{\"id\":1,\"customer\":1}\n").unwrap();
    let out = dir.path().join("out.ndjson");
    let missing = dir.path().join("nope.csv");
    let toml = pipeline_toml(
        &input,
        &out,
        &format!(
            "[[tables]]\nname = \"customers\"\nkind = \"file\"\npath = \"{}\"\n",
            missing.display()
        ),
    );
    let err = match Pipeline::build(
        PipelineConfig::from_toml(&toml).unwrap(),
        support::sandbox(),
    )
    .await
    {
        Ok(_) => panic!("built with a missing table"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("pipeline `enrich`")
            && err.contains("table `customers`")
            && err.contains("nope.csv"),
        "{err}"
    );
    let err = PipelineConfig::from_toml(&toml.replace("name = \"customers\"", "name = \"source\""))
        .unwrap_err();
    assert!(err.contains("`source` is the stream itself"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_table_follows_updates_and_tombstones_while_the_stream_runs() {
    let Some(broker) = broker() else { return };
    let addr = broker.addr.clone();
    create_topics(&addr, &[("customers", 2)]).await;
    produce(
        &addr,
        "customers",
        &[
            (Some("1".into()), r#"{"name":"Ada"}"#.into()),
            (Some("2".into()), r#"{"name":"Grace"}"#.into()),
            (Some("1".into()), r#"{"name":"Ada L."}"#.into()),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (input, tx) = fifo(dir.path());
    let out = dir.path().join("out.ndjson");
    let toml = pipeline_toml(
        &input,
        &out,
        &format!(
            "[[tables]]\nname = \"customers\"\nkind = \"kafka\"\nbrokers = \"{addr}\"\ntopic = \"customers\"\nformat = \"json\"\nfields = [{{ name = \"name\", type = \"utf8\" }}]\n"
        ),
    )
    .replace("c.customer_id", "CAST(c._key AS BIGINT)");
    let pipeline = Pipeline::build(
        PipelineConfig::from_toml(&toml).unwrap(),
        support::sandbox(),
    )
    .await
    .unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stopped));
    // Caught up before the first batch: the latest value of key 1.
    tx.send("{\"id\":1,\"customer\":1}\n{\"id\":2,\"customer\":2}\n".into())
        .unwrap();
    until("the first records", || lines(&out).len() == 2).await;
    let names: Vec<_> = lines(&out).iter().map(|l| l["name"].clone()).collect();
    assert_eq!(names, vec!["Ada L.", "Grace"]);

    // An update and a tombstone while the stream runs.
    produce(
        &addr,
        "customers",
        &[(Some("2".into()), r#"{"name":"Grace H."}"#.into())],
    )
    .await;
    tombstone(&addr, "customers", "1").await;
    let mut id = 3;
    until("the update and the tombstone", || {
        tx.send(format!(
            "{{\"id\":{id},\"customer\":1}}\n{{\"id\":{},\"customer\":2}}\n",
            id + 1
        ))
        .unwrap();
        id += 2;
        std::thread::sleep(Duration::from_millis(150));
        // (Within a batch, a LEFT JOIN puts rows without a match last.)
        let got = lines(&out);
        got.iter().any(|l| l["name"].is_null()) && got.iter().any(|l| l["name"] == "Grace H.")
    })
    .await;
    stop.send(true).unwrap();
    drop(tx);
    task.await.unwrap().unwrap();
}

/// A record with a key and no value.
async fn tombstone(addr: &str, topic: &str, key: &str) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::<str, [u8]>::to(topic).key(key),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}
