//! Pipelines over the embedded file source: contents out, poison records to
//! dead letters with their neighbours delivered.

use std::path::Path;

use tokio::sync::watch;
use weir::pipeline::{Pipeline, PipelineConfig, PipelineStats};

use crate::support;
use crate::support::ndjson as lines;

fn pipeline_toml(dir: &Path, source: &str, format: &str, fields: &str, policy: &str) -> String {
    format!(
        r#"
name = "test"
udfs = ["{finance}", "{text}"]
sql = "SELECT id, parse_cents(amount) AS cents, redact_digits(card) AS card FROM source"
[source]
kind = "file"
path = "{source}"
format = "{format}"
fields = {fields}
[sink]
kind = "file"
path = "{out}"
[errors]
policy = "{policy}"
path = "{dlq}"
[batch]
max_records = 4
"#,
        finance = support::module_path("finance").display(),
        text = support::module_path("text").display(),
        out = dir.join("out.ndjson").display(),
        dlq = dir.join("dlq.ndjson").display(),
    )
}

const FIELDS: &str = r#"[{ name = "id", type = "int64" }, { name = "amount", type = "utf8" }, { name = "card", type = "utf8" }]"#;

async fn run(toml: &str) -> anyhow::Result<std::sync::Arc<PipelineStats>> {
    let config = PipelineConfig::from_toml(toml).map_err(anyhow::Error::msg)?;
    let pipeline = Pipeline::build(config, support::sandbox()).await?;
    let stats = pipeline.stats();
    let (_stop, stopped) = watch::channel(false);
    pipeline.run(stopped).await?;
    Ok(stats)
}

#[tokio::test]
async fn json_records_flow_and_poison_records_are_dead_lettered_alone() {
    let dir = tempfile::tempdir().unwrap();
    let source = support::repo().join("examples/data/payments-stream.ndjson");
    let toml = pipeline_toml(
        dir.path(),
        &source.display().to_string(),
        "json",
        FIELDS,
        "dead-letter",
    );
    let stats = run(&toml).await.unwrap();

    let out = lines(&dir.path().join("out.ndjson"));
    let ids: Vec<i64> = out.iter().map(|v| v["id"].as_i64().unwrap()).collect();
    assert_eq!(
        ids,
        vec![1, 2, 4, 6],
        "the poison record's neighbours in its batch are delivered"
    );
    assert_eq!(out[0]["cents"], 1234);
    assert_eq!(out[0]["card"], "#### #### #### ####");
    assert_eq!(out[3]["card"], serde_json::Value::Null);

    let dlq = lines(&dir.path().join("dlq.ndjson"));
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    let poison = dlq.iter().find(|d| d["stage"] == "transform").unwrap();
    assert_eq!(poison["source_offset"], 3);
    assert_eq!(poison["udf"], "parse_cents");
    assert!(
        poison["error"]
            .as_str()
            .unwrap()
            .contains("`oops` is not an amount")
    );
    assert_eq!(
        poison["payload"],
        r#"{"id":3,"amount":"oops","card":"none"}"#
    );
    let malformed = dlq.iter().find(|d| d["stage"] == "decode").unwrap();
    assert_eq!(malformed["source_offset"], 5);
    assert_eq!(malformed["pipeline"], "test");

    assert_eq!(stats.records_in.get(), 6);
    assert_eq!(stats.records_out.get(), 4);
    assert_eq!(stats.dead_letters.get(), 2);
}

#[tokio::test]
async fn csv_records_and_the_skip_policy() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("in.csv");
    std::fs::write(
        &source,
        "1,1.50 EUR,4111\n2,bad,1234\n3,2.00 USD,\n4,\"3.25 CHF\",\"12,34\"\n",
    )
    .unwrap();
    let toml = pipeline_toml(
        dir.path(),
        &source.display().to_string(),
        "csv",
        FIELDS,
        "skip",
    );
    let stats = run(&toml).await.unwrap();
    let out = lines(&dir.path().join("out.ndjson"));
    let cents: Vec<i64> = out.iter().map(|v| v["cents"].as_i64().unwrap()).collect();
    assert_eq!(cents, vec![150, 200, 325]);
    assert_eq!(out[2]["card"], "##,##");
    assert_eq!(stats.skipped.get(), 1);
    assert!(lines(&dir.path().join("dlq.ndjson")).is_empty());
}

#[tokio::test]
async fn the_fail_policy_stops_naming_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let source = support::repo().join("examples/data/payments-stream.ndjson");
    let toml = pipeline_toml(
        dir.path(),
        &source.display().to_string(),
        "json",
        FIELDS,
        "fail",
    );
    let err = format!("{:#}", run(&toml).await.unwrap_err());
    assert!(err.contains("pipeline `test`"), "{err}");
    assert!(err.contains("offset 3 failed to transform"), "{err}");
}

#[tokio::test]
async fn bad_sql_and_unknown_columns_fail_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let source = support::repo().join("examples/data/payments-stream.ndjson");
    let toml = pipeline_toml(
        dir.path(),
        &source.display().to_string(),
        "json",
        FIELDS,
        "skip",
    )
    .replace("redact_digits(card)", "redact_digits(nope)");
    let err = format!("{:#}", run(&toml).await.unwrap_err());
    assert!(
        err.contains("pipeline `test`: sql:") && err.contains("nope"),
        "{err}"
    );
}

/// Every folder of `tests/pipelines/` is a case: `pipeline.toml` (with
/// `{input}`, `{out}`, `{dead_letters}` and `{finance}`/`{text}`/`{guest}`
/// module paths filled in), `input.ndjson`, the exact output in
/// `expected.out.ndjson` and the dead letters in
/// `expected.dead-letters.ndjson` (each line's keys must match; `error` is a
/// substring).
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
        let toml = std::fs::read_to_string(case.join("pipeline.toml"))
            .unwrap()
            .replace("{input}", &case.join("input.ndjson").display().to_string())
            .replace("{out}", &out.display().to_string())
            .replace("{dead_letters}", &dead.display().to_string())
            .replace(
                "{finance}",
                &support::module_path("finance").display().to_string(),
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
        run(&toml)
            .await
            .unwrap_or_else(|e| panic!("case {name}: {e:#}"));
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
