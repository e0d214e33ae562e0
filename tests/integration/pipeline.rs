//! Pipelines over the embedded file source: contents out, poison records to
//! dead letters with their neighbours delivered.

use tokio::sync::watch;
use weir::pipeline::{Pipeline, PipelineConfig, PipelineStats};

use crate::support;
use crate::support::ndjson as lines;

async fn run(toml: &str) -> anyhow::Result<std::sync::Arc<PipelineStats>> {
    let config = PipelineConfig::from_toml(toml).map_err(anyhow::Error::msg)?;
    let pipeline = Pipeline::build(config, support::sandbox()).await?;
    let stats = pipeline.stats();
    let (_stop, stopped) = watch::channel(false);
    pipeline.run(stopped).await?;
    Ok(stats)
}

/// Every folder of `tests/pipelines/` is a case: `pipeline.toml` (with
/// `{input}`, `{out}`, `{dead_letters}`, `{case}` (the case's folder) and
/// `{finance}`/`{text}`/`{guest}` module paths filled in) over `input.ndjson` or `input.csv`, and either
/// `expected.error.txt` (the run fails; each line is part of the error) or
/// the exact output in `expected.out.ndjson`, the dead letters in
/// `expected.dead-letters.ndjson` (each line's keys must match; `error` is a
/// substring) and optionally the counters in `expected.stats.json`.
/// A case with `input.kafka.ndjson` instead runs on a broker
/// ([`crate::kafka::kafka_pipeline_cases`]).
// Two runtime threads: a case with `batch.workers = 2` transforms in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_cases() {
    for case in cases().into_iter().filter(|c| !is_kafka_case(c)) {
        let name = case_name(&case);
        let dir = tempfile::tempdir().unwrap();
        let (out, dead) = (dir.path().join("out.ndjson"), dir.path().join("dlq.ndjson"));
        let input = ["input.ndjson", "input.csv"]
            .iter()
            .map(|f| case.join(f))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("case {name}: no input.ndjson or input.csv"));
        let toml = case_toml(
            &case,
            &dead,
            &[("{input}", &input.display()), ("{out}", &out.display())],
        );
        let result = run(&toml).await;
        let Some(stats) = check_error(&case, result.map_err(|e| format!("{e:#}"))) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(case.join("expected.stats.json")) {
            let want: serde_json::Value = serde_json::from_str(&text).unwrap();
            let got = serde_json::json!({
                "records_in": stats.records_in.get(),
                "records_out": stats.records_out.get(),
                "dead_letters": stats.dead_letters.get(),
                "skipped": stats.skipped.get(),
            });
            assert_eq!(got, want, "case {name}: counters");
        }
        let expected = lines(&case.join("expected.out.ndjson"));
        assert_eq!(lines(&out), expected, "case {name}: output");
        check_dead_letters(&case, &dead);
    }
}

/// The case folders of `tests/pipelines/`, sorted.
pub(crate) fn cases() -> Vec<std::path::PathBuf> {
    let root = support::repo().join("tests/pipelines");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty());
    dirs
}

pub(crate) fn case_name(case: &std::path::Path) -> String {
    case.file_name().unwrap().to_string_lossy().into_owned()
}

/// Whether `case` reads a topic (`input.kafka.ndjson`).
pub(crate) fn is_kafka_case(case: &std::path::Path) -> bool {
    case.join("input.kafka.ndjson").exists()
}

/// The case's `pipeline.toml` with `{dead_letters}`, `{case}`, the module
/// paths and `more` filled in.
pub(crate) fn case_toml(
    case: &std::path::Path,
    dead: &std::path::Path,
    more: &[(&str, &dyn std::fmt::Display)],
) -> String {
    let mut toml = std::fs::read_to_string(case.join("pipeline.toml"))
        .unwrap()
        .replace("{dead_letters}", &dead.display().to_string());
    for (name, module) in [
        ("{finance}", support::module_path("finance").to_path_buf()),
        ("{stats}", support::module_path("stats").to_path_buf()),
        ("{text}", support::module_path("text").to_path_buf()),
        ("{hostile}", support::repo().join("tests/hostile")),
        ("{guest}", support::repo().join("tests/tenant/guest.wat")),
        ("{case}", case.to_path_buf()),
    ] {
        toml = toml.replace(name, &module.display().to_string());
    }
    for (name, value) in more {
        toml = toml.replace(name, &value.to_string());
    }
    toml
}

/// With `expected.error.txt`, checks the run failed with each of its lines
/// (`None`: nothing more to check); otherwise the run's result.
pub(crate) fn check_error<T>(case: &std::path::Path, result: Result<T, String>) -> Option<T> {
    let name = case_name(case);
    if let Ok(expected) = std::fs::read_to_string(case.join("expected.error.txt")) {
        let err = match result {
            Ok(_) => panic!("case {name}: ran, but expected.error.txt says it fails"),
            Err(e) => e,
        };
        for part in expected.lines().filter(|l| !l.is_empty()) {
            assert!(err.contains(part), "case {name}: {err:?} lacks {part:?}");
        }
        return None;
    }
    Some(result.unwrap_or_else(|e| panic!("case {name}: {e}")))
}

/// The dead letters in `dead` against `expected.dead-letters.ndjson`, in
/// source offset order: each expected key matches (`error`: a substring).
pub(crate) fn check_dead_letters(case: &std::path::Path, dead: &std::path::Path) {
    let name = case_name(case);
    let mut letters = lines(dead);
    letters.sort_by_key(|l| (l["source_partition"].as_i64(), l["source_offset"].as_i64()));
    let expected = lines(&case.join("expected.dead-letters.ndjson"));
    assert_eq!(
        letters.len(),
        expected.len(),
        "case {name}: dead letters {letters:#?}"
    );
    for (got, want) in letters.iter().zip(&expected) {
        for (key, value) in want.as_object().unwrap() {
            if key == "error" {
                let error = got["error"].as_str().unwrap_or_default();
                assert!(
                    error.contains(value.as_str().unwrap()),
                    "case {name}: {error:?} lacks {value} in {got}"
                );
            } else {
                assert_eq!(&got[key], value, "case {name}: `{key}` of {got}");
            }
        }
    }
}

/// A batch that finds the instance pool full (issue 12 #3) is load, not
/// poison: the pipeline holds it and retries, and its record is delivered
/// once a slot is free — never dead-lettered or skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_holds_the_batch_instead_of_dead_lettering_it() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&input)
            .status()
            .unwrap()
            .success()
    );
    let (out, dead) = (dir.path().join("out.ndjson"), dir.path().join("dlq.ndjson"));
    // One instance slot in the whole sandbox; calls of tenant `t` stop at 50 ms.
    let sandbox = weir::Sandbox::with_options(weir::SandboxOptions {
        limits: weir::SandboxLimits {
            total_instances: 1,
            instances_per_module: 1,
            ..weir::SandboxLimits::default()
        },
        cache_dir: None,
    })
    .unwrap();
    let tenants = weir::tenant::Tenants::new(
        weir::tenant::Policy::from_toml("[tenants.t]\ncpu_ms_per_batch = 50\n").unwrap(),
    );
    let guest = support::repo().join("tests/tenant/guest.wat");
    let toml = format!(
        "name = \"full\"\ntenant = \"t\"\nudfs = [\"{}\"]\nsql = \"SELECT id, spin(n) AS s FROM source\"\n[source]\nkind = \"file\"\npath = \"{}\"\nformat = \"json\"\nfields = [{{ name = \"id\", type = \"int64\" }}, {{ name = \"n\", type = \"int64\" }}]\n[sink]\nkind = \"file\"\npath = \"{}\"\n[errors]\npolicy = \"dead-letter\"\npath = \"{}\"\n[batch]\nmax_records = 10\nmax_linger_ms = 10\n",
        guest.display(),
        input.display(),
        out.display(),
        dead.display()
    );
    let writer_path = input.clone();
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&writer_path)
            .unwrap();
        for line in line_rx {
            f.write_all(line.as_bytes()).unwrap();
            f.flush().unwrap();
        }
    });
    let config = PipelineConfig::from_toml(&toml).unwrap();
    let pipeline = Pipeline::build_for(config, &sandbox, &tenants)
        .await
        .unwrap();
    let (_stop, stopped) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stopped));
    let wait_for = |path: std::path::PathBuf, n: usize| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let got = lines(&path);
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: {got:?}",
                path.display()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    // Out of CPU: the function failed on this record (dead-lettered), and
    // its instance is thrown away, freeing the only slot…
    line_tx
        .send("{\"id\":1,\"n\":1000000000000}\n".to_string())
        .unwrap();
    wait_for(dead.clone(), 1).await;
    // …which another module takes.
    let squatter = sandbox.load_file(&guest).unwrap();
    line_tx.send("{\"id\":2,\"n\":3}\n".to_string()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(lines(&out).is_empty(), "no slot: nothing ran yet");
    assert_eq!(lines(&dead).len(), 1, "and nothing was dead-lettered");
    drop(squatter);
    let delivered = wait_for(out.clone(), 1).await;
    assert_eq!(delivered, vec![serde_json::json!({"id": 2, "s": 3})]);
    drop(line_tx);
    writer.join().unwrap();
    task.await.unwrap().unwrap();
    let letters = lines(&dead);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["source_offset"], 1);
}

/// Open windows over the tenant's `state_bytes` pause the source and say
/// why; nothing is dropped, and a shutdown meanwhile commits nothing of them.
/// (`count(DISTINCT …)` keeps the window's records.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_windows_over_state_bytes_pause_the_source_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    // One window that never closes (one partition, no later record).
    let lines: String = (0..200)
        .map(|i| {
            format!(
                "{{\"amount\":{i}.0,\"ts\":\"2026-01-01T00:00:{:02}Z\"}}\n",
                i % 60
            )
        })
        .collect();
    std::fs::write(&input, lines).unwrap();
    let out = dir.path().join("out.ndjson");
    let toml = format!(
        "name = \"full-state\"\ntenant = \"t\"\nsql = \"SELECT window_start, count(DISTINCT amount) AS n FROM tumble(source, ts, INTERVAL '1' HOUR) GROUP BY window_start\"\n[source]\nkind = \"file\"\npath = \"{}\"\nformat = \"json\"\nfields = [{{ name = \"amount\", type = \"float64\" }}, {{ name = \"ts\", type = \"timestamp_us\" }}]\n[sink]\nkind = \"file\"\npath = \"{}\"\n[errors]\npolicy = \"skip\"\n[batch]\nmax_records = 10\n",
        input.display(),
        out.display()
    );
    let tenants = weir::tenant::Tenants::new(
        weir::tenant::Policy::from_toml("[tenants.t]\nstate_bytes = 4096\n").unwrap(),
    );
    let config = PipelineConfig::from_toml(&toml).unwrap();
    let pipeline = Pipeline::build_for(config, support::sandbox(), &tenants)
        .await
        .unwrap();
    let stats = pipeline.stats();
    let (stop, stopped) = watch::channel(false);
    let run = tokio::spawn(pipeline.run(stopped));
    let started = std::time::Instant::now();
    let condition = loop {
        if let Some(c) = stats.condition() {
            break c;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "never paused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(condition.contains("tenants.t.state_bytes"), "{condition}");
    assert!(stats.records_in.get() < 200, "the source is held back");
    assert_eq!(stats.skipped.get(), 0, "nothing dropped");
    assert!(stats.window_state_bytes.get() > 4096);
    stop.send(true).unwrap();
    run.await.unwrap().unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap_or_default(), "");
}

/// The README's windowed pipeline (examples/pipelines/windowed-rides.toml)
/// runs as `weir run` and prints one row per city and minute.
#[test]
fn the_readme_windowed_pipeline_runs() {
    let repo = support::repo();
    let dir = tempfile::tempdir().unwrap();
    let toml = std::fs::read_to_string(repo.join("examples/pipelines/windowed-rides.toml"))
        .unwrap()
        .replace(
            "../../udfs/target/wasm32-unknown-unknown/release/stats.wasm",
            &support::module_path("stats").display().to_string(),
        )
        .replace(
            "../data/rides.ndjson",
            &repo
                .join("examples/data/rides.ndjson")
                .display()
                .to_string(),
        )
        .replace("../../out/", &format!("{}/", dir.path().display()));
    let file = dir.path().join("windowed-rides.toml");
    std::fs::write(&file, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", file.to_str().unwrap()])
        .env("WEIR_CACHE_DIR", support::cache_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // One row per (minute, city) that has rides, counting every on-time
    // ride of the data file (ride 99 is late), in order.
    let mut expected: std::collections::BTreeMap<(String, String), i64> = Default::default();
    for ride in support::ndjson(&repo.join("examples/data/rides.ndjson")) {
        if ride["ride"] == 99 {
            continue;
        }
        let minute = format!("{}:00", &ride["ts"].as_str().unwrap()[..16]);
        *expected
            .entry((minute, ride["city"].as_str().unwrap().to_string()))
            .or_default() += 1;
    }
    let got: Vec<((String, String), i64)> = rows
        .iter()
        .map(|r| {
            (
                (
                    r["window_start"].as_str().unwrap().to_string(),
                    r["city"].as_str().unwrap().to_string(),
                ),
                r["rides"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected.into_iter().collect::<Vec<_>>(), "{rows:#?}");
    assert!(
        rows.iter()
            .all(|r| r["median_fare"].is_f64() && r["top_fares"].is_string())
    );
    let letters =
        std::fs::read_to_string(dir.path().join("windowed-rides.dead-letters.ndjson")).unwrap();
    let letter: serde_json::Value = serde_json::from_str(letters.trim()).unwrap();
    assert_eq!(letter["stage"], "late", "{letter}");
    assert!(letter["payload"].as_str().unwrap().contains("\"ride\":99"));
}

/// A window's state is its groups, not its records (issue 28): one hour
/// of 2 000 000 records over 1 000 keys, read at full speed while the
/// window stays open, holds at most 10 MB (`weir_pipeline_window_state_bytes`),
/// and the window's result is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_window_holds_its_groups_not_its_records() {
    use std::io::Write;
    const RECORDS: usize = 2_000_000;
    const KEYS: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&input)
            .status()
            .unwrap()
            .success()
    );
    let out = dir.path().join("out.ndjson");
    let toml = format!(
        "name = \"long-window\"\nsql = \"SELECT window_start, k, count(*) AS n, sum(v) AS total, max(v) AS hi FROM tumble(source, ts, INTERVAL '1' HOUR) GROUP BY window_start, k\"\n[source]\nkind = \"file\"\npath = \"{}\"\nformat = \"json\"\nfields = [{{ name = \"k\", type = \"utf8\" }}, {{ name = \"v\", type = \"int64\" }}, {{ name = \"ts\", type = \"timestamp_us\" }}]\n[sink]\nkind = \"file\"\npath = \"{}\"\n[errors]\npolicy = \"fail\"\n[batch]\nmax_records = 8192\n",
        input.display(),
        out.display()
    );
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let writer_path = input.clone();
    let writer = std::thread::spawn(move || {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&writer_path)
            .unwrap();
        let mut f = std::io::BufWriter::with_capacity(1 << 20, f);
        for i in 0..RECORDS {
            // Every record in the hour 08:00–09:00, in order.
            let micros = (i as i64) * 3_600_000_000 / RECORDS as i64;
            writeln!(
                f,
                "{{\"k\":\"key-{:04}\",\"v\":{},\"ts\":{}}}",
                i % KEYS,
                i % 7,
                1_767_225_600_000_000i64 + 8 * 3_600_000_000 + micros
            )
            .unwrap();
        }
        f.flush().unwrap();
        // The window stays open until the test has read the gauge.
        close_rx.recv().unwrap();
    });
    let config = PipelineConfig::from_toml(&toml).unwrap();
    let pipeline = Pipeline::build(config, support::sandbox()).await.unwrap();
    let stats = pipeline.stats();
    let (_stop, stopped) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stopped));
    let started = std::time::Instant::now();
    let mut most = 0;
    while stats.records_in.get() < RECORDS as u64 {
        most = most.max(stats.window_state_bytes.get());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(600),
            "read {} records",
            stats.records_in.get()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The last batch is folded once it is counted in.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    most = most.max(stats.window_state_bytes.get());
    assert_eq!(stats.open_windows.get(), 1, "the hour is still open");
    eprintln!("window state of {RECORDS} records over {KEYS} keys: at most {most} bytes");
    assert!(most > 0, "the gauge reports the state");
    assert!(
        most <= 10 * 1024 * 1024,
        "an open window of {RECORDS} records over {KEYS} keys holds {most} bytes"
    );
    close_tx.send(()).unwrap();
    writer.join().unwrap();
    task.await.unwrap().unwrap();
    let rows = lines(&out);
    assert_eq!(rows.len(), KEYS, "one row per key");
    let per_key = RECORDS / KEYS;
    for row in &rows {
        let k: usize = row["k"].as_str().unwrap()[4..].parse().unwrap();
        let total: i64 = (0..per_key).map(|j| ((j * KEYS + k) % 7) as i64).sum();
        assert_eq!(row["n"], per_key, "{row}");
        assert_eq!(row["total"], total, "{row}");
        assert_eq!(row["window_start"], "2026-01-01T08:00:00", "{row}");
    }
}
