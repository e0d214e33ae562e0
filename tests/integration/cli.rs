//! The `weir` binary, as a user runs it.

use std::process::{Command, Output};

use crate::support;

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(support::repo())
        .env("WEIR_CACHE_DIR", support::cache_dir())
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "weir failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn path(name: &str) -> String {
    support::module_path(name).display().to_string()
}

#[test]
fn sql_over_csv_as_json_lines() {
    let out = weir(&[
        "sql",
        "--table",
        "t=examples/data/numbers.csv",
        "--format",
        "json",
        "SELECT a+b AS s FROM t ORDER BY s",
    ]);
    assert_eq!(
        stdout(&out),
        "{\"s\":0}\n{\"s\":1}\n{\"s\":3}\n{\"s\":30}\n"
    );
}

#[test]
fn sql_with_udfs_in_every_format() {
    let geo = path("geo");
    let text = path("text");
    let base = [
        "sql",
        "--udf",
        &geo,
        "--udf",
        &text,
        "--table",
        "trips=examples/data/trips.csv",
    ];
    let query = "SELECT id, mask_email(rider_email) AS rider, gcd(id, 4) AS g FROM trips WHERE id <= 2 ORDER BY id";
    let run = |format: &str| {
        let mut args = base.to_vec();
        args.extend(["--format", format, query]);
        stdout(&weir(&args))
    };
    assert_eq!(
        run("json"),
        "{\"id\":1,\"rider\":\"a***@example.com\",\"g\":1}\n{\"id\":2,\"rider\":\"g***@navy.mil\",\"g\":2}\n"
    );
    assert_eq!(
        run("csv"),
        "id,rider,g\n1,a***@example.com,1\n2,g***@navy.mil,2\n"
    );
    let table = run("table");
    assert!(table.contains("| 1  | a***@example.com | 1 |"), "{table}");
}

#[test]
fn ndjson_and_parquet_tables() {
    let dir = tempfile::tempdir().unwrap();
    let parquet = dir.path().join("numbers.parquet");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_csv("n", "examples/data/numbers.csv", Default::default())
            .await
            .unwrap();
        ctx.sql(&format!(
            "COPY n TO '{}' STORED AS PARQUET",
            parquet.display()
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    });
    let table = format!("n={}", parquet.display());
    let out = weir(&[
        "sql",
        "--table",
        &table,
        "--format",
        "csv",
        "SELECT sum(a) AS s FROM n",
    ]);
    assert_eq!(stdout(&out), "s\n108\n");
    let finance = path("finance");
    let out = weir(&[
        "sql",
        "--udf",
        &finance,
        "--table",
        "p=examples/data/payments.ndjson",
        "--format",
        "json",
        "SELECT id, currency(amount) AS c FROM p WHERE id < 3 ORDER BY id",
    ]);
    assert_eq!(
        stdout(&out),
        "{\"id\":1,\"c\":\"EUR\"}\n{\"id\":2,\"c\":\"USD\"}\n"
    );
}

#[test]
fn errors_exit_non_zero_with_the_message_on_stderr() {
    let finance = path("finance");
    let out = weir(&[
        "sql",
        "--udf",
        &finance,
        "--table",
        "p=examples/data/payments.ndjson",
        "SELECT parse_cents(amount) FROM p",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("udf `parse_cents`"), "{stderr}");
    assert!(stderr.contains("`oops` is not an amount"), "{stderr}");
    assert!(out.stdout.is_empty());

    for (args, expected) in [
        (vec!["sql", "SELEC 1"], "expected: an sql statement"),
        (
            vec!["sql", "--table", "t=missing.csv", "SELECT 1"],
            "does not exist",
        ),
        (
            vec!["sql", "--table", "nonsense", "SELECT 1"],
            "is not NAME=PATH",
        ),
        (
            vec!["sql", "--udf", "Cargo.toml", "SELECT 1"],
            "is not a WebAssembly module",
        ),
        (
            vec!["sql", "--format", "xml", "SELECT 1"],
            "invalid value 'xml'",
        ),
    ] {
        let out = weir(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            stderr.contains(&expected.to_lowercase()),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn every_example_module_passes_inspect() {
    for name in ["geo", "text", "finance", "sampling", "fahrenheit", "stats"] {
        let out = stdout(&weir(&["udf", "inspect", &path(name)]));
        assert!(out.contains("abi version  1"), "{name}: {out}");
    }
    let out = stdout(&weir(&["udf", "inspect", "--json", &path("sampling")]));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let f = &doc["functions"].as_array().unwrap()[0];
    assert_eq!(doc["abi_version"], 1);
    assert_eq!(f["deterministic"], false);
    let out = stdout(&weir(&["udf", "inspect", &path("stats")]));
    assert!(
        out.contains("median(float64) -> float64 [aggregate, state: binary]  [deterministic]"),
        "{out}"
    );
    let out = stdout(&weir(&["udf", "inspect", &path("geo")]));
    assert!(
        out.contains(
            "haversine_km(float64, float64, float64, float64) -> float64  [deterministic]"
        ),
        "{out}"
    );
}

#[test]
fn a_bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, "[sandbox]\nmemory_bytez = 1\n").unwrap();
    let out = weir(&["--config", config.to_str().unwrap(), "sql", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("memory_bytez"));
    let out = weir(&[
        "--config",
        "config/weir.toml",
        "sql",
        "--format",
        "csv",
        "SELECT 1 AS one",
    ]);
    assert_eq!(stdout(&out), "one\n1\n");
}

/// docs/udf-guide.md §1, as written: new → build → test → SQL, in Rust.
#[test]
fn the_udf_guide_from_scaffold_to_sql() {
    follow_the_guide(
        "rust",
        "target/wasm32-unknown-unknown/release/my_score.wasm",
    );
}

/// The same in C (clang's wasm32 target; Debian `clang` and `lld`).
#[test]
fn the_udf_guide_from_scaffold_to_sql_in_c() {
    let has_clang = std::process::Command::new("clang")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !support::require_or_skip(
        "clang with wasm32 support (apt-get install clang lld)",
        has_clang,
    ) {
        return;
    }
    follow_the_guide("c", "target/my_score.wasm");
}

/// The same in JavaScript: nothing to install, weir compiles the script.
#[test]
fn the_udf_guide_from_scaffold_to_sql_in_javascript() {
    follow_the_guide("js", "target/my_score.wasm");
}

/// The same in Python: nothing to install, weir carries the interpreter.
#[test]
fn the_udf_guide_from_scaffold_to_sql_in_python() {
    follow_the_guide("py", "target/my_score.wasm");
}

/// The same in AssemblyScript (its compiler `asc`, from npm).
#[test]
fn the_udf_guide_from_scaffold_to_sql_in_assemblyscript() {
    if !support::require_asc() {
        return;
    }
    follow_the_guide("as", "target/my_score.wasm");
}

fn follow_the_guide(lang: &str, module: &str) {
    let dir = tempfile::tempdir().unwrap();
    // The SDK comes out of the binary, not from this checkout.
    let sdk_home = tempfile::tempdir().unwrap();
    let weir = env!("CARGO_BIN_EXE_weir");
    let run = |args: &[&str], cwd: &std::path::Path| {
        let out = std::process::Command::new(weir)
            .args(args)
            .current_dir(cwd)
            .env("WEIR_CACHE_DIR", crate::support::cache_dir())
            .env("WEIR_SDK_HOME", sdk_home.path())
            .env_remove("WEIR_SDK_DIR")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "weir {args:?} failed:\n{text}");
        text
    };
    run(&["udf", "new", "my_score", "--lang", lang], dir.path());
    let project = dir.path().join("my_score");
    if lang == "rust" {
        let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
        let checkout = crate::support::repo().display().to_string();
        assert!(
            !manifest.contains(&checkout)
                && manifest.contains(&sdk_home.path().display().to_string()),
            "the scaffold must use the SDK shipped in the binary:\n{manifest}"
        );
    }
    let built = run(&["udf", "build"], &project);
    assert!(built.contains("my_score.wasm"), "{built}");
    let tested = run(&["udf", "test", module, "--input", "rows.json"], &project);
    assert!(tested.contains("my_score(20) = 41"), "{tested}");
    assert!(tested.contains("3 rows, 0 failed"), "{tested}");
    let sql = run(
        &["sql", "--udf", module, "SELECT my_score(20) AS s"],
        &project,
    );
    assert!(sql.contains("41"), "{sql}");
    if lang == "rust" {
        // The aggregate of the template: tested (its state merges back to
        // the same value), then in a GROUP BY.
        let tested = run(&["udf", "test", module, "--input", "spread.json"], &project);
        assert!(
            tested.contains("aggregate my_score_spread over 4 rows = 6.0 (state exported and merged: same value)"),
            "{tested}"
        );
        let sql = run(
            &[
                "sql",
                "--udf",
                module,
                "--format",
                "csv",
                "SELECT x % 2 AS g, my_score_spread(x) AS s FROM generate_series(1, 9) AS t(x) GROUP BY x % 2 ORDER BY g",
            ],
            &project,
        );
        assert!(sql.contains("g,s\n0,6.0\n1,8.0"), "{sql}");
    } else if lang == "js" || lang == "py" || lang == "as" {
        // The embedded runtimes import nothing: no capability at all.
        if lang != "as" {
            let inspected = run(&["udf", "inspect", module], &project);
            assert!(inspected.contains("capabilities none"), "{inspected}");
        }
        let tested = run(&["udf", "test", module, "--input", "title.json"], &project);
        assert!(
            tested.contains(r#"my_score_title("ça va") = "Ça Va""#),
            "{tested}"
        );
    } else {
        let tested = run(&["udf", "test", module, "--input", "total.json"], &project);
        assert!(
            tested.contains(
                "aggregate my_score_total over 4 rows = 3.5 (state exported and merged: same value)"
            ),
            "{tested}"
        );
        let sql = run(
            &[
                "sql",
                "--udf",
                module,
                "--format",
                "csv",
                "SELECT x % 2 AS g, my_score_total(x) AS s FROM generate_series(1, 9) AS t(x) GROUP BY x % 2 ORDER BY g",
            ],
            &project,
        );
        assert!(sql.contains("g,s\n0,20.0\n1,25.0"), "{sql}");
    }
    // A failing row fails `weir udf test` and says why.
    std::fs::write(
        project.join("bad.json"),
        r#"{"function": "my_score_ratio", "rows": [[1.0, 2.0], [1.0, 0.0]]}"#,
    )
    .unwrap();
    let out = std::process::Command::new(weir)
        .args(["udf", "test", module, "--input", "bad.json"])
        .current_dir(&project)
        .env("WEIR_CACHE_DIR", crate::support::cache_dir())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("by zero"), "{text}");
    assert!(text.contains("0.5"), "{text}");
}

/// The pipeline shown in docs/udf-guide.md is a valid pipeline file.
#[test]
fn the_udf_guides_pipeline_is_valid() {
    let guide = std::fs::read_to_string(crate::support::repo().join("docs/udf-guide.md")).unwrap();
    let start = guide.find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + guide[start..].find("```").unwrap();
    weir::pipeline::PipelineConfig::from_toml(&guide[start..end]).unwrap();
}

/// `weir run --infer`: a pipeline without `fields` gets them from a sample
/// of its source, printed as a line to paste; `--dry-run` stops there, and
/// without `--dry-run` the pipeline runs with them.
#[test]
fn run_infer_prints_the_fields_and_runs_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(
        &input,
        "{\"id\":1,\"amount\":\"1.25 EUR\",\"paid\":true}\n{\"id\":2,\"amount\":\"2.50 EUR\",\"paid\":false}\n",
    )
    .unwrap();
    let out_path = dir.path().join("out.ndjson");
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"inferred\"\nsql = \"SELECT id, paid FROM source WHERE id > 1\"\n[source]\nkind = \"file\"\npath = \"{}\"\nformat = \"json\"\n[sink]\nkind = \"file\"\npath = \"{}\"\n[errors]\npolicy = \"skip\"\n",
            input.display(),
            out_path.display()
        ),
    )
    .unwrap();
    let p = pipeline.to_str().unwrap();
    // Without --infer the missing fields are refused, naming the flag.
    let refused = weir(&["run", p]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("weir run --infer"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let printed = stdout(&weir(&["run", "--infer", "--dry-run", p]));
    assert!(
        printed.contains(r#"fields = [{ name = "id", type = "int64" }, { name = "amount", type = "utf8" }, { name = "paid", type = "boolean" }]"#),
        "{printed}"
    );
    assert!(!out_path.exists(), "--dry-run ran nothing");
    stdout(&weir(&["run", "--infer", p]));
    assert_eq!(
        std::fs::read_to_string(&out_path).unwrap(),
        "{\"id\":2,\"paid\":false}\n"
    );
}

/// `weir run --dry-run` plans a pipeline and says how its open windows
/// keep state: folded groups for built-in aggregates, records (and why)
/// for the rest; nothing is read or written.
#[test]
fn dry_run_says_how_windows_keep_state() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.ndjson");
    let write = |name: &str, select: &str| {
        let pipeline = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &pipeline,
            format!(
                "name = \"{name}\"\nsql = \"SELECT window_start, {select} FROM tumble(source, ts, INTERVAL '1' MINUTE) GROUP BY window_start\"\n[source]\nkind = \"file\"\npath = \"{}\"\nformat = \"json\"\nfields = [{{ name = \"v\", type = \"int64\" }}, {{ name = \"ts\", type = \"timestamp_us\" }}]\n[sink]\nkind = \"file\"\npath = \"{}\"\n[errors]\npolicy = \"skip\"\n",
                dir.path().join("missing.ndjson").display(),
                out_path.display()
            ),
        )
        .unwrap();
        pipeline
    };
    let folded = write("folded", "count(*) AS n, sum(v) AS total");
    let printed = stdout(&weir(&["run", "--dry-run", folded.to_str().unwrap()]));
    assert!(
        printed.contains("output columns: window_start Timestamp(µs), n Int64, total Int64"),
        "{printed}"
    );
    assert!(printed.contains("running aggregates"), "{printed}");
    assert!(
        printed.contains("recovery: a file is read from its start"),
        "{printed}"
    );
    let kept = write("kept", "count(DISTINCT v) AS n");
    let printed = stdout(&weir(&["run", "--dry-run", kept.to_str().unwrap()]));
    assert!(
        printed.contains(
            "keeps its records until it closes, because the query aggregates more than once"
        ),
        "{printed}"
    );
    // An interval join says its bound and how long rows are kept.
    let joined = dir.path().join("joined.toml");
    let text = std::fs::read_to_string(&kept).unwrap().replace(
        "SELECT window_start, count(DISTINCT v) AS n FROM tumble(source, ts, INTERVAL '1' MINUTE) GROUP BY window_start",
        "SELECT a.v, b.v AS w FROM source a JOIN source b ON a.v = b.v AND b.ts BETWEEN a.ts - INTERVAL '2' SECOND AND a.ts + INTERVAL '5' SECOND",
    );
    std::fs::write(&joined, text).unwrap();
    let printed = stdout(&weir(&["run", "--dry-run", joined.to_str().unwrap()]));
    assert!(
        printed.contains("pairing rows whose times differ by -2000 ms to 5000 ms; each row is kept until the watermark is 5000 ms past it"),
        "{printed}"
    );
    assert!(!out_path.exists(), "--dry-run ran nothing");
}

/// AssemblyScript whose types differ from its `@udf` line, or that would
/// need an import (a clock, randomness), fails at `weir udf build` and
/// says why.
#[test]
fn assemblyscript_mistakes_fail_the_build_with_the_reason() {
    if !support::require_asc() {
        return;
    }
    let build = |source: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.ts"), source).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["udf", "build"])
            .current_dir(dir.path())
            .env("WEIR_CACHE_DIR", crate::support::cache_dir())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let text = build(
        "// @udf bad_add(a BIGINT, b VARCHAR) RETURNS BIGINT\n\
         export function bad_add(a: i64, b: i64): i64 { return a + b; }\n",
    );
    assert!(
        text.contains("not assignable") && text.contains("differ from its @udf line"),
        "{text}"
    );
    let text = build(
        "// @udf now_ms(a BIGINT) RETURNS DOUBLE\n\
         export function now_ms(a: i64): f64 { return <f64>Date.now() + Math.random(); }\n",
    );
    assert!(text.contains("which is not granted"), "{text}");
}
