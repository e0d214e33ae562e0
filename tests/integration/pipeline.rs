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
/// `{input}`, `{out}`, `{dead_letters}` and `{finance}`/`{text}`/`{guest}`
/// module paths filled in) over `input.ndjson` or `input.csv`, and either
/// `expected.error.txt` (the run fails; each line is part of the error) or
/// the exact output in `expected.out.ndjson`, the dead letters in
/// `expected.dead-letters.ndjson` (each line's keys must match; `error` is a
/// substring) and optionally the counters in `expected.stats.json`.
#[tokio::test]
async fn pipeline_cases() {
    let cases = support::repo().join("tests/pipelines");
    let mut dirs: Vec<_> = std::fs::read_dir(&cases)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty());
    for case in dirs {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let dir = tempfile::tempdir().unwrap();
        let (out, dead) = (dir.path().join("out.ndjson"), dir.path().join("dlq.ndjson"));
        let input = ["input.ndjson", "input.csv"]
            .iter()
            .map(|f| case.join(f))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("case {name}: no input.ndjson or input.csv"));
        let toml = std::fs::read_to_string(case.join("pipeline.toml"))
            .unwrap()
            .replace("{input}", &input.display().to_string())
            .replace("{out}", &out.display().to_string())
            .replace("{dead_letters}", &dead.display().to_string())
            .replace(
                "{finance}",
                &support::module_path("finance").display().to_string(),
            )
            .replace(
                "{hostile}",
                &support::repo().join("tests/hostile").display().to_string(),
            )
            .replace(
                "{stats}",
                &support::module_path("stats").display().to_string(),
            )
            .replace(
                "{text}",
                &support::module_path("text").display().to_string(),
            )
            .replace(
                "{guest}",
                &support::repo()
                    .join("tests/tenant/guest.wat")
                    .display()
                    .to_string(),
            );
        let result = run(&toml).await;
        if let Ok(expected) = std::fs::read_to_string(case.join("expected.error.txt")) {
            let err = match result {
                Ok(_) => panic!("case {name}: ran, but expected.error.txt says it fails"),
                Err(e) => format!("{e:#}"),
            };
            for part in expected.lines().filter(|l| !l.is_empty()) {
                assert!(err.contains(part), "case {name}: {err:?} lacks {part:?}");
            }
            continue;
        }
        let stats = result.unwrap_or_else(|e| panic!("case {name}: {e:#}"));
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
        let mut letters = lines(&dead);
        letters.sort_by_key(|l| l["source_offset"].as_i64());
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
