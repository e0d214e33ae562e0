//! Schema inference (`weir run --infer`): reads a sample of the source —
//! the first lines of the file, or the first records of the topic (a
//! consumer of its own that commits nothing) — and infers the `fields` of
//! a JSON or CSV source with Arrow's own inference.

use std::io::Cursor;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use datafusion::arrow::datatypes::{DataType, Schema};

use crate::config::{FieldConfig, Format, SourceConfig};

/// Records read at most for a sample.
pub const SAMPLE: usize = 1000;
/// How long a Kafka sample waits for records.
const KAFKA_WAIT: Duration = Duration::from_secs(10);

/// The fields of `source`, from up to `sample` of its records.
pub async fn infer_fields(
    source: &SourceConfig,
    sample: usize,
) -> anyhow::Result<Vec<FieldConfig>> {
    let format = source.format();
    if !matches!(format, Format::Json | Format::Csv) {
        bail!(
            "only json and csv sources need `fields` (raw has one column, avro takes its schema's)"
        );
    }
    let (records, header) = match source {
        SourceConfig::Nexmark { .. } => {
            bail!("a nexmark source has its fields already (the event stream's columns)")
        }
        SourceConfig::File { path, header, .. } => {
            let text = tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("cannot read {} for a sample", path.display()))?;
            let lines: Vec<Vec<u8>> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(sample + usize::from(*header))
                .map(|l| l.as_bytes().to_vec())
                .collect();
            (lines, *header)
        }
        SourceConfig::Kafka {
            brokers,
            topics,
            properties,
            ..
        } => {
            let (brokers, topics, properties) =
                (brokers.clone(), topics.clone(), properties.clone());
            let records = tokio::task::spawn_blocking(move || {
                kafka_sample(&brokers, &topics, &properties, sample)
            })
            .await
            .context("sampling the topic")??;
            (records, false)
        }
    };
    if records.is_empty() {
        bail!("the source has no records to infer `fields` from; declare them (docs/pipelines.md)");
    }
    let schema = match format {
        Format::Json => {
            let text = join_lines(&records);
            let (schema, _) = datafusion::arrow::json::reader::infer_json_schema(
                Cursor::new(&text),
                Some(sample),
            )
            .map_err(|e| anyhow::anyhow!("the sample is not JSON objects: {e}"))?;
            in_order_of_appearance(&schema, &text)
        }
        _ => {
            let text = join_lines(&records);
            let (schema, _) = datafusion::arrow::csv::reader::Format::default()
                .with_header(header)
                .infer_schema(Cursor::new(text), Some(sample))
                .map_err(|e| anyhow::anyhow!("the sample is not CSV: {e}"))?;
            schema
        }
    };
    Ok(fields_of(&schema))
}

/// Arrow's JSON inference sorts fields by name; the sample's own order
/// (where each key first appears) reads better in a pipeline file.
fn in_order_of_appearance(schema: &Schema, text: &[u8]) -> Schema {
    let text = String::from_utf8_lossy(text);
    let at = |name: &str| {
        let quoted = format!("\"{name}\"");
        text.match_indices(&quoted)
            .find(|(i, _)| text[i + quoted.len()..].trim_start().starts_with(':'))
            .map_or(usize::MAX, |(i, _)| i)
    };
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    fields.sort_by_key(|f| at(f.name()));
    Schema::new(fields)
}

fn join_lines(records: &[Vec<u8>]) -> Vec<u8> {
    let mut text = Vec::new();
    for r in records {
        text.extend_from_slice(r);
        text.push(b'\n');
    }
    text
}

/// Arrow's inferred types as ABI type names. Nested values (lists,
/// objects) are left out (a scalar column cannot hold them; the JSON
/// decoder ignores fields not declared), with a warning naming them.
fn fields_of(schema: &Schema) -> Vec<FieldConfig> {
    schema
        .fields()
        .iter()
        .filter_map(|f| {
            let ty = match f.data_type() {
                DataType::Int64 => "int64",
                DataType::Float64 => "float64",
                DataType::Boolean => "boolean",
                DataType::List(_) | DataType::Struct(_) => {
                    tracing::warn!(
                        "field `{}` holds nested values ({}); left out of `fields` (read it as a string in a `raw` pipeline, or flatten it upstream)",
                        f.name(),
                        f.data_type()
                    );
                    return None;
                }
                _ => "utf8",
            };
            Some(FieldConfig {
                name: f.name().clone(),
                ty: ty.to_string(),
                nullable: true,
            })
        })
        .collect()
}

/// The fields as a line for the pipeline file.
pub fn fields_toml(fields: &[FieldConfig]) -> String {
    let items: Vec<String> = fields
        .iter()
        .map(|f| {
            format!(
                "{{ name = {}, type = \"{}\" }}",
                toml::Value::String(f.name.clone()),
                f.ty
            )
        })
        .collect();
    format!("fields = [{}]", items.join(", "))
}

fn kafka_sample(
    brokers: &str,
    topics: &[String],
    properties: &std::collections::BTreeMap<String, String>,
    sample: usize,
) -> anyhow::Result<Vec<Vec<u8>>> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let mut config = ClientConfig::new();
    for (k, v) in properties {
        config.set(k, v);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let consumer: BaseConsumer = config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("weir-infer-{nanos}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .context("creating a consumer for the sample")?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .context("subscribing for the sample")?;
    let started = Instant::now();
    let mut out = Vec::new();
    while out.len() < sample && started.elapsed() < KAFKA_WAIT {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if let Some(p) = m.payload().filter(|p| !p.is_empty()) {
                    out.push(p.to_vec());
                }
            }
            Some(Err(e)) => tracing::debug!("sample: {e}"),
            None if !out.is_empty() && started.elapsed() > Duration::from_secs(2) => break,
            None => {}
        }
    }
    consumer.unsubscribe();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn json_and_csv_samples_give_fields() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("in.ndjson");
        std::fs::write(
            &json,
            "{\"id\":1,\"amount\":\"1.25 EUR\",\"ok\":true,\"km\":2.5}\n\n{\"id\":2,\"amount\":\"x\",\"ok\":false,\"km\":3,\"tags\":[1]}\n",
        )
        .unwrap();
        let source = SourceConfig::File {
            path: json,
            format: Format::Json,
            fields: Vec::new(),
            header: false,
        };
        let fields = infer_fields(&source, SAMPLE).await.unwrap();
        assert_eq!(
            fields_toml(&fields),
            r#"fields = [{ name = "id", type = "int64" }, { name = "amount", type = "utf8" }, { name = "ok", type = "boolean" }, { name = "km", type = "float64" }]"#
        );
        let csv = dir.path().join("in.csv");
        std::fs::write(&csv, "id,amount\n1,2.5\n2,3\n").unwrap();
        let source = SourceConfig::File {
            path: csv,
            format: Format::Csv,
            fields: Vec::new(),
            header: true,
        };
        let fields = infer_fields(&source, SAMPLE).await.unwrap();
        assert_eq!(
            fields_toml(&fields),
            r#"fields = [{ name = "id", type = "int64" }, { name = "amount", type = "float64" }]"#
        );
    }
}
