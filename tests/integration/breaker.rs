//! Circuit breakers count failures of the function, never row errors; an
//! open breaker pauses the pipeline (or, opted in, dead-letters), and the
//! pipeline resumes after a successful probe or with a fixed version.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weir::pipeline::{Pipeline, PipelineConfig, PipelineStats};
use weir::tenant::{BreakerState, Policy, Tenants};

use crate::support;
use crate::support::ndjson as lines;

fn broken() -> PathBuf {
    support::repo().join("tests/breaker/broken_double.wat")
}

fn fixed() -> PathBuf {
    support::repo().join("tests/tenant/guest.wat")
}

/// `records` JSON lines `{"id": i, "amount": …}`: every `error_every`-th
/// amount is `oops` (a row error of `parse_cents`), every 200th line is not
/// JSON. Returns the ids of the good records and the line numbers of the bad.
fn dirty_file(path: &Path, records: usize, error_every: usize) -> (Vec<i64>, Vec<i64>) {
    let mut text = String::new();
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for i in 1..=records {
        if i % 200 == 0 {
            text.push_str("{\"id\": not json\n");
            bad.push(i as i64);
        } else if i % error_every == 0 {
            text.push_str(&format!("{{\"id\":{i},\"amount\":\"oops\"}}\n"));
            bad.push(i as i64);
        } else {
            text.push_str(&format!("{{\"id\":{i},\"amount\":\"{i}.25 EUR\"}}\n"));
            good.push(i as i64);
        }
    }
    std::fs::write(path, text).unwrap();
    (good, bad)
}

fn file_pipeline(dir: &Path, udf: &Path, sql: &str, max_records: usize) -> PipelineConfig {
    PipelineConfig::from_toml(&format!(
        r#"
name = "dirty"
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
policy = "dead-letter"
path = "{dlq}"
[batch]
max_records = {max_records}
"#,
        udf = udf.display(),
        input = dir.join("in.ndjson").display(),
        out = dir.join("out.ndjson").display(),
        dlq = dir.join("dlq.ndjson").display(),
    ))
    .unwrap()
}

#[tokio::test]
async fn row_errors_never_open_a_breaker_and_every_good_record_is_delivered() {
    for error_every in [100, 20, 2] {
        let dir = tempfile::tempdir().unwrap();
        let (good, bad) = dirty_file(&dir.path().join("in.ndjson"), 10_000, error_every);
        let config = file_pipeline(
            dir.path(),
            support::module_path("finance"),
            "SELECT id, parse_cents(amount) AS cents FROM source",
            500,
        );
        let tenants = Tenants::new(Policy::default());
        let pipeline = Pipeline::build_for(config, support::sandbox(), &tenants)
            .await
            .unwrap();
        let modules = pipeline.modules();
        let (_stop, stopped) = watch::channel(false);
        pipeline.run(stopped).await.unwrap();

        let out: Vec<i64> = lines(&dir.path().join("out.ndjson"))
            .iter()
            .map(|v| v["id"].as_i64().unwrap())
            .collect();
        assert_eq!(
            out, good,
            "1 in {error_every} rows failing: every good record"
        );
        let mut dead: Vec<i64> = lines(&dir.path().join("dlq.ndjson"))
            .iter()
            .map(|v| v["source_offset"].as_i64().unwrap())
            .collect();
        dead.sort();
        assert_eq!(dead, bad, "1 in {error_every}: exactly the bad ones");
        let modules = modules.read().clone();
        assert_eq!(
            modules[0].breaker(0).unwrap().state(),
            BreakerState::Closed,
            "row errors are not failures of the function"
        );
    }
}

/// Runs a pipeline over `records` lines `{"id": i}` with `SELECT double(id)`.
struct Running {
    dir: tempfile::TempDir,
    stats: Arc<PipelineStats>,
    reload: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), weir::pipeline::PipelineError>>,
}

async fn run_double(
    policy: &str,
    first: &Path,
    next: Arc<Mutex<PathBuf>>,
    records: usize,
    prepare: impl FnOnce(&Arc<weir::UdfModule>),
) -> (Running, Arc<weir::UdfModule>) {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (1..=records).map(|i| format!("{{\"id\":{i}}}\n")).collect();
    std::fs::write(dir.path().join("in.ndjson"), text).unwrap();
    let config = PipelineConfig::from_toml(&format!(
        r#"
name = "doubling"
tenant = "acme"
sql = "SELECT id, double(id) AS twice FROM source"
[source]
kind = "file"
path = "{input}"
format = "json"
fields = [{{ name = "id", type = "int64" }}]
[sink]
kind = "file"
path = "{out}"
[errors]
policy = "dead-letter"
path = "{dlq}"
[batch]
max_records = 10
"#,
        input = dir.path().join("in.ndjson").display(),
        out = dir.path().join("out.ndjson").display(),
        dlq = dir.path().join("dlq.ndjson").display(),
    ))
    .unwrap();
    let tenants = Tenants::new(Policy::from_toml(policy).unwrap());
    let tenant = tenants.get("acme");
    let module = support::sandbox().load_file_for(first, &tenant).unwrap();
    let (reload, changed) = watch::channel(0u64);
    let resolve_tenant = tenant.clone();
    let resolve: weir::pipeline::runner::ModuleResolver = Arc::new(move || {
        let path = next.lock().unwrap().clone();
        Ok(vec![
            support::sandbox().load_file_for(&path, &resolve_tenant)?,
        ])
    });
    let pipeline = Pipeline::build_with_modules(
        config,
        support::sandbox(),
        vec![module.clone()],
        &tenants,
        Some(weir::pipeline::runner::Reload { changed, resolve }),
    )
    .await
    .unwrap();
    let stats = pipeline.stats();
    prepare(&module);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stopped));
    (
        Running {
            dir,
            stats,
            reload,
            stop,
            task,
        },
        module,
    )
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

#[tokio::test]
async fn a_broken_function_pauses_the_pipeline_until_a_fixed_version_is_in_effect() {
    let policy = "[defaults]\nbreaker_failures = 2\nbreaker_cooldown_ms = 600000\n";
    let next = Arc::new(Mutex::new(broken()));
    let (run, module) = run_double(policy, &broken(), next.clone(), 100, |_| {}).await;
    let stats = run.stats.clone();
    until("the breaker to pause the pipeline", || {
        stats.breaker_paused.get() == 1
    })
    .await;
    assert_eq!(module.breaker(0).unwrap().state(), BreakerState::Open);
    // Two failing batches of 10 opened it; nothing else was dead-lettered
    // (a batch read ahead by a second worker is held, not failed).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!((20..=30).contains(&stats.records_in.get()));
    assert_eq!(stats.dead_letters.get(), 20);
    assert_eq!(stats.records_out.get(), 0);
    let condition = stats.condition().unwrap();
    assert!(
        condition.contains("udf `double`")
            && condition.contains("2 failing batches in a row")
            && condition.contains("breaker_cooldown_ms"),
        "{condition}"
    );

    // A fixed version is published: the pipeline resumes by itself.
    *next.lock().unwrap() = fixed();
    run.reload.send_modify(|v| *v += 1);
    let out = run.task.await.unwrap();
    out.unwrap();
    assert_eq!(stats.breaker_paused.get(), 0);
    // Exactly the records after the two failing batches, each doubled by
    // the fixed version; exactly those two batches dead-lettered.
    let delivered = lines(&run.dir.path().join("out.ndjson"));
    let ids: Vec<i64> = delivered
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (21..=100).collect::<Vec<_>>());
    assert!(
        delivered
            .iter()
            .all(|r| r["twice"] == 2 * r["id"].as_i64().unwrap()),
        "{delivered:?}"
    );
    let dead = lines(&run.dir.path().join("dlq.ndjson"));
    let mut offsets: Vec<i64> = dead
        .iter()
        .map(|d| d["source_offset"].as_i64().unwrap())
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=20).collect::<Vec<_>>());
    assert!(
        dead.iter()
            .all(|d| d["error"].as_str().unwrap().contains("trap")
                || d["error"].as_str().unwrap().contains("unreachable")),
        "{dead:?}"
    );
    drop(run.stop);
}

#[tokio::test]
async fn after_the_cool_down_one_record_probes_and_success_closes_the_breaker() {
    let policy = "[defaults]\nbreaker_failures = 1\nbreaker_cooldown_ms = 500\n";
    let next = Arc::new(Mutex::new(fixed()));
    // The healthy function's breaker is open when the pipeline starts (as
    // failures of another pipeline of the same version would leave it).
    let (run, module) = run_double(policy, &fixed(), next, 50, |m| {
        m.record_batch("double", false);
        assert_eq!(m.breaker(0).unwrap().state(), BreakerState::Open);
    })
    .await;
    let stats = run.stats.clone();
    let started = Instant::now();
    run.task.await.unwrap().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "it waited for the cool-down"
    );
    assert_eq!(module.breaker(0).unwrap().state(), BreakerState::Closed);
    assert_eq!(lines(&run.dir.path().join("out.ndjson")).len(), 50);
    assert!(lines(&run.dir.path().join("dlq.ndjson")).is_empty());
    // One probe record, then full batches of 10.
    assert_eq!(stats.batches.get(), 1 + 5);
    drop(run.stop);
    drop(run.reload);
}

#[tokio::test]
async fn with_breaker_action_dead_letter_records_are_dead_lettered_naming_the_breaker() {
    let policy = "[defaults]\nbreaker_failures = 2\nbreaker_cooldown_ms = 600000\nbreaker_action = \"dead-letter\"\n";
    let next = Arc::new(Mutex::new(broken()));
    let (run, _module) = run_double(policy, &broken(), next, 100, |_| {}).await;
    run.task.await.unwrap().unwrap();
    let dead = lines(&run.dir.path().join("dlq.ndjson"));
    assert_eq!(
        dead.len(),
        100,
        "nothing is lost: every record is a dead letter"
    );
    let open: Vec<_> = dead
        .iter()
        .filter(|d| d["error"].as_str().unwrap().contains("circuit open"))
        .collect();
    assert_eq!(open.len(), 80);
    assert!(open.iter().all(|d| d["udf"] == "double"));
    drop(run.stop);
    drop(run.reload);
}
