//! Nexmark (issue 28): each query of `examples/nexmark/` runs as a
//! streaming pipeline over the generated events and gives exactly what the
//! same query gives as batch SQL (`qN.batch.sql`, in plain DataFusion over
//! the same events written to a file: windows as `date_bin`, no weir code
//! on that side).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{JsonReadOptions, SessionContext};
use serde_json::Value;
use tokio::sync::watch;
use weir::pipeline::source::nexmark;
use weir::pipeline::{Pipeline, PipelineConfig};

use crate::support;

const EVENTS: u64 = 20_000;
/// 1 000 events per second of event time: 20 s, two or three windows.
const RATE: u64 = 1_000;
const SEED: u64 = 1;

/// One row as text, floats to 9 significant digits (a mean summed in
/// another order differs in the last bits), for comparing multisets.
fn canonical(row: &Value) -> String {
    let Value::Object(map) = row else {
        return row.to_string();
    };
    let fields: BTreeMap<&String, String> = map
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::Number(n) if n.is_f64() => format!("{:.8e}", n.as_f64().unwrap_or(0.0)),
                other => other.to_string(),
            };
            (k, text)
        })
        .collect();
    format!("{fields:?}")
}

fn sorted(rows: &[Value]) -> Vec<String> {
    let mut rows: Vec<String> = rows.iter().map(canonical).collect();
    rows.sort();
    rows
}

/// The events as NDJSON, and a DataFusion session with view `source` over
/// them (times as timestamps).
async fn batch_session(dir: &std::path::Path) -> SessionContext {
    let path = dir.join("events.json");
    let mut text = Vec::new();
    for n in 0..EVENTS {
        nexmark::event(SEED, RATE, n, &mut text);
        text.push(b'\n');
    }
    std::fs::write(&path, text).unwrap();
    let fields: Vec<Field> = nexmark::fields()
        .iter()
        .map(|f| {
            let ty = match f.ty.as_str() {
                "int32" => DataType::Int32,
                "int64" | "timestamp_us" => DataType::Int64,
                _ => DataType::Utf8,
            };
            Field::new(&f.name, ty, true)
        })
        .collect();
    let schema = Schema::new(fields);
    let ctx = SessionContext::new();
    ctx.register_json(
        "events",
        path.to_str().unwrap(),
        JsonReadOptions::default().schema(&schema),
    )
    .await
    .unwrap();
    let columns: Vec<String> = nexmark::fields()
        .iter()
        .map(|f| match f.ty.as_str() {
            "timestamp_us" => format!("to_timestamp_micros({0}) AS {0}", f.name),
            _ => f.name.clone(),
        })
        .collect();
    ctx.sql(&format!(
        "CREATE VIEW source AS SELECT {} FROM events",
        columns.join(", ")
    ))
    .await
    .unwrap();
    ctx
}

async fn batch_rows(ctx: &SessionContext, sql: &str) -> Vec<Value> {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut buf = Vec::new();
    {
        let mut writer = datafusion::arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, datafusion::arrow::json::writer::LineDelimited>(&mut buf);
        for b in &batches {
            writer.write(b).unwrap();
        }
        writer.finish().unwrap();
    }
    String::from_utf8(buf)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nexmark_query_streams_what_it_gives_in_batch() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = batch_session(dir.path()).await;
    let examples = support::repo().join("examples/nexmark");
    let mut queries: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    queries.sort();
    assert!(queries.len() >= 9, "{queries:?}");
    for query in queries {
        let name = query.file_stem().unwrap().to_string_lossy().into_owned();
        let out = dir.path().join(format!("{name}.ndjson"));
        let toml = std::fs::read_to_string(&query)
            .unwrap()
            .replace("events = 1000000", &format!("events = {EVENTS}"))
            .replace("rate = 10000", &format!("rate = {RATE}"))
            .replace(
                "[sink]\nkind = \"stdout\"",
                &format!("[sink]\nkind = \"file\"\npath = \"{}\"", out.display()),
            );
        assert!(
            toml.contains(&format!("events = {EVENTS}")),
            "{name}: {toml}"
        );
        let config = PipelineConfig::from_toml(&toml).unwrap();
        let pipeline = Pipeline::build(config, support::sandbox())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let stats = pipeline.stats();
        let (_stop, stopped) = watch::channel(false);
        pipeline
            .run(stopped)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(stats.records_in.get(), EVENTS, "{name}");
        assert_eq!(stats.dead_letters.get() + stats.skipped.get(), 0, "{name}");
        let streamed = support::ndjson(&out);
        let sql = std::fs::read_to_string(examples.join(format!("{name}.batch.sql"))).unwrap();
        let batch = batch_rows(&ctx, &sql).await;
        assert!(!batch.is_empty(), "{name}: the batch query found nothing");
        let (streamed, batch) = (sorted(&streamed), sorted(&batch));
        assert_eq!(
            streamed.len(),
            batch.len(),
            "{name}: {} rows streamed, {} in batch",
            streamed.len(),
            batch.len()
        );
        let differ: Vec<_> = streamed
            .iter()
            .zip(&batch)
            .filter(|(s, b)| s != b)
            .take(3)
            .collect();
        assert!(differ.is_empty(), "{name}: streamed ≠ batch: {differ:#?}");
        let _ = Arc::new(());
    }
}
