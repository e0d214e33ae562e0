//! `weir replay` over a dead-letter file, as a user runs it (no broker).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn weir(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(dir)
        .env_remove("WEIR_CONFIG")
        .output()
        .unwrap()
}

fn succeeded(out: &Output) -> (Vec<Value>, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "weir replay failed: {stderr}");
    let reports: Vec<Value> = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    (reports, stderr)
}

const TRANSFORM_PAYLOAD: &str = r#"{"id":3,"amount":"oops","card":"none"}"#;

/// A dead-letter file with a decode letter, a transform letter (no
/// `headers`, as older files) and a truncated one; and the output path.
fn dead_letters(dir: &Path) -> (PathBuf, PathBuf) {
    let letters = [
        json!({
            "pipeline": "payments", "stage": "decode",
            "error": "expected value at line 1 column 1", "udf": null,
            "source_topic": "in/payments.ndjson", "source_partition": 0, "source_offset": 5,
            "key": null, "payload": "not json{", "headers": [],
        }),
        json!({
            "pipeline": "payments", "stage": "transform",
            "error": "udf `parse_cents` failed on row 0: `oops` is not an amount",
            "udf": "parse_cents",
            "source_topic": "in/payments.ndjson", "source_partition": 0, "source_offset": 3,
            "key": null, "payload": TRANSFORM_PAYLOAD,
        }),
        json!({
            "pipeline": "payments", "stage": "sink", "error": "record too large", "udf": null,
            "source_topic": "in/payments.ndjson", "source_partition": 0, "source_offset": 9,
            "key": null, "payload_base64": "e30=", "truncated": 5000,
        }),
    ];
    let file = dir.join("dlq.ndjson");
    let text: String = letters.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, text).unwrap();
    (file, dir.join("out/retry.ndjson"))
}

#[test]
fn replays_the_matching_letter_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (file, out) = dead_letters(dir.path());
    let (f, o) = (file.display().to_string(), out.display().to_string());
    let run = weir(
        dir.path(),
        &[
            "replay",
            "--file",
            &f,
            "--to-file",
            &o,
            "--stage",
            "transform",
        ],
    );
    let (reports, stderr) = succeeded(&run);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("{TRANSFORM_PAYLOAD}\n"),
        "exactly the transform letter's payload"
    );
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = &reports[0];
    assert_eq!(r["replayed"], true);
    assert_eq!(r["source_topic"], "in/payments.ndjson");
    assert_eq!(r["source_partition"], 0);
    assert_eq!(r["source_offset"], 3);
    assert_eq!(r["dead_letter"], format!("{f}:2"));
    assert_eq!(r["stage"], "transform");
    assert_eq!(r["udf"], "parse_cents");
    assert_eq!(r["to"], o);
    assert!(
        r["error"].as_str().unwrap().contains("not an amount"),
        "{r}"
    );
    assert!(
        stderr.contains("replayed 1 of 3 dead letters (2 filtered out, 0 skipped)"),
        "{stderr}"
    );
}

#[test]
fn a_dry_run_reports_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (file, out) = dead_letters(dir.path());
    let (f, o) = (file.display().to_string(), out.display().to_string());

    let (reports, stderr) = succeeded(&weir(
        dir.path(),
        &["replay", "--file", &f, "--to-file", &o, "--dry-run"],
    ));
    assert!(!out.exists(), "a dry run writes nothing");
    let offsets: Vec<(i64, bool)> = reports
        .iter()
        .map(|r| {
            (
                r["source_offset"].as_i64().unwrap(),
                r["replayed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(offsets, vec![(5, true), (3, true), (9, false)]);
    let truncated = &reports[2];
    assert_eq!(truncated["dead_letter"], format!("{f}:3"));
    let reason = truncated["reason"].as_str().unwrap();
    assert!(
        reason.contains("truncated") && reason.contains("5000"),
        "{reason}"
    );
    assert!(
        stderr.contains("would replay 2 of 3 dead letters (0 filtered out, 1 skipped)"),
        "{stderr}"
    );

    // Filters combine: all must match.
    let (reports, _) = succeeded(&weir(
        dir.path(),
        &[
            "replay",
            "--file",
            &f,
            "--to-file",
            &o,
            "--dry-run",
            "--udf",
            "parse_cents",
            "--error-contains",
            "oops",
            "--pipeline",
            "payments",
        ],
    ));
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["source_offset"], 3);
    let (reports, stderr) = succeeded(&weir(
        dir.path(),
        &[
            "replay",
            "--file",
            &f,
            "--to-file",
            &o,
            "--dry-run",
            "--pipeline",
            "other",
        ],
    ));
    assert!(reports.is_empty(), "{reports:?}");
    assert!(stderr.contains("(3 filtered out, 0 skipped)"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (file, out) = dead_letters(dir.path());
    let (f, o) = (file.display().to_string(), out.display().to_string());

    let run = weir(dir.path(), &["replay", "--file", &f]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("--to-brokers"), "{stderr}");

    let bad = dir.path().join("bad.ndjson");
    std::fs::write(&bad, "{\"stage\":\"decode\",\"payload\":\"x\"}\n{oops\n").unwrap();
    let b = bad.display().to_string();
    let run = weir(dir.path(), &["replay", "--file", &b, "--to-file", &o]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains(&format!("{b}:2")), "{stderr}");
    assert!(stderr.contains("fix or delete that line"), "{stderr}");
    assert!(
        !out.exists(),
        "nothing is replayed when a line is malformed"
    );
}
