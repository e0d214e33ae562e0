//! The tenant boundary on every key (issue 27): each resource a pipeline
//! names goes through one walk (`PipelineConfig::resources`) and one
//! policy check (weir-serve `services/boundary.rs`). The first test
//! enumerates the pipeline file's schema, so a key added later that names
//! a resource and is not walked fails here; the others are the probes an
//! attacker with one tenant's operator token tried.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::Value;
use weir::pipeline::PipelineConfig;
use weir::serve::{AppState, router};
use weir::tenant::{Policy, Tenants};

use crate::serve::{config, send};
use crate::support;

/// Keys whose value names something outside the pipeline: the walk must
/// yield each (`[]`: any element, `*`: any property name).
const RESOURCE_KEYS: &[&str] = &[
    "udfs[]",
    "source.path",
    "source.brokers",
    "source.topics[]",
    "source.group",
    "source.properties.*",
    "source.avro.schema",
    "source.avro.registry",
    "source.avro.password_env",
    "source.avro.subject",
    "sink.path",
    "sink.brokers",
    "sink.topic",
    "sink.properties.*",
    "sink.avro.schema",
    "sink.avro.registry",
    "sink.avro.password_env",
    "sink.avro.subject",
    "sink.transactional_id",
    "errors.topic",
    "errors.path",
    "tables[].path",
    "tables[].brokers",
    "tables[].topic",
    "tables[].properties.*",
];

/// Keys that are the pipeline's own data (names, formats, sizes, SQL,
/// credentials sent only where a resource key above points).
const PLAIN_KEYS: &[&str] = &[
    "name",
    "tenant",
    "sql",
    "source.kind",
    "source.format",
    "source.fields[].name",
    "source.fields[].type",
    "source.fields[].nullable",
    "source.header",
    "source.start",
    "source.metadata[]",
    "source.stall_warn_ms",
    // Re-keying goes to an internal topic named after the source topic
    // and a group named after the source group, so under their checks.
    "source.repartition",
    // The Nexmark generator names nothing.
    "source.events",
    "source.rate",
    "source.seed",
    "source.avro.username",
    "source.avro.password",
    "sink.kind",
    "sink.format",
    "sink.key",
    "sink.delivery",
    "sink.avro.username",
    "sink.avro.password",
    "errors.policy",
    "batch.max_records",
    "batch.max_linger_ms",
    "batch.max_in_flight_batches",
    "batch.max_in_flight_bytes",
    "batch.workers",
    "watermark.max_out_of_order_ms",
    "watermark.idle_partition_ms",
    "watermark.allowed_lateness_ms",
    "state.checkpoint_ms",
    "tables[].kind",
    "tables[].name",
    "tables[].format",
    "tables[].fields[].name",
    "tables[].fields[].type",
    "tables[].fields[].nullable",
];

/// Every leaf key of the pipeline file's JSON schema.
fn schema_keys() -> BTreeSet<String> {
    let schema = PipelineConfig::json_schema();
    let mut keys = BTreeSet::new();
    leaves(&schema, &schema, "", &mut keys);
    keys
}

fn leaves(root: &Value, node: &Value, at: &str, out: &mut BTreeSet<String>) {
    if node.get("type") == Some(&Value::from("null")) {
        return; // the absent branch of an optional table
    }
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap();
        return leaves(root, &root["$defs"][name], at, out);
    }
    let mut inner = false;
    for alt in ["oneOf", "anyOf", "allOf"] {
        if let Some(items) = node.get(alt).and_then(Value::as_array) {
            for item in items {
                leaves(root, item, at, out);
            }
            inner = true;
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, value) in props {
            let key = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}.{name}")
            };
            leaves(root, value, &key, out);
        }
        inner = true;
    }
    if let Some(items) = node.get("items") {
        leaves(root, items, &format!("{at}[]"), out);
        inner = true;
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        leaves(root, extra, &format!("{at}.*"), out);
        inner = true;
    }
    if !inner && !at.is_empty() {
        out.insert(at.to_string());
    }
}

/// `tables[2].properties.linger.ms` → `tables[].properties.*`.
fn pattern(key: &str) -> String {
    let mut out = String::new();
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '[' {
            while chars.peek().is_some_and(|c| c.is_ascii_digit()) {
                chars.next();
            }
        }
    }
    match out.find(".properties.") {
        Some(i) => format!("{}.properties.*", &out[..i]),
        None => out,
    }
}

/// Two pipelines that set every resource key between them.
const FULL_KAFKA: &str = r#"
name = "full"
udfs = ["tools"]
sql = "SELECT * FROM source"
[source]
kind = "kafka"
brokers = "b:9092"
topics = ["in"]
group = "g"
format = "avro"
properties = { "linger.ms" = "5" }
[source.avro]
schema = "r.avsc"
registry = "http://registry"
subject = "in-value"
password_env = "PW"
[sink]
kind = "kafka"
brokers = "b:9092"
topic = "out"
format = "avro"
delivery = "exactly-once"
properties = { "linger.ms" = "5" }
[sink.avro]
schema = "w.avsc"
registry = "http://registry"
subject = "out-value"
password_env = "PW"
[errors]
topic = "dead"
[[tables]]
kind = "file"
name = "f"
path = "t.csv"
[[tables]]
kind = "kafka"
name = "k"
brokers = "b:9092"
topic = "t"
format = "raw"
properties = { "linger.ms" = "5" }
"#;

const FULL_FILE: &str = r#"
name = "full"
sql = "SELECT * FROM source"
[source]
kind = "file"
path = "in.ndjson"
format = "raw"
[sink]
kind = "file"
path = "out.ndjson"
[errors]
path = "dead.ndjson"
"#;

/// The walk covers every key of the schema that names a resource, and
/// every key is classified: a new key fails this test until it is either
/// walked (and checked: the match in `services/boundary.rs` is
/// exhaustive) or declared plain data here.
#[test]
fn every_key_is_walked() {
    let schema = schema_keys();
    let resource: BTreeSet<String> = RESOURCE_KEYS.iter().map(|s| s.to_string()).collect();
    let plain: BTreeSet<String> = PLAIN_KEYS.iter().map(|s| s.to_string()).collect();
    let unclassified: Vec<_> = schema
        .iter()
        .filter(|k| !resource.contains(*k) && !plain.contains(*k))
        .collect();
    assert!(
        unclassified.is_empty(),
        "keys of the pipeline file neither walked nor declared plain: {unclassified:?}; a key that names a file, URL, broker, topic, id, variable or property goes into PipelineConfig::resources"
    );
    let stale: Vec<_> = resource
        .union(&plain)
        .filter(|k| !schema.contains(*k))
        .collect();
    assert!(stale.is_empty(), "not keys of the schema: {stale:?}");
    let mut walked = BTreeSet::new();
    for text in [FULL_KAFKA, FULL_FILE] {
        let config = PipelineConfig::from_toml(text).unwrap();
        walked.extend(config.resources().iter().map(|n| pattern(&n.key)));
    }
    assert_eq!(walked, resource, "the walk and the resource keys differ");
}

/// A server whose tenant `acme` has roots `files/{tenant}`, one broker, a
/// topic prefix, one registry and one environment variable.
fn app(dir: &std::path::Path) -> axum::Router {
    app_with(dir, "")
}

/// [`app`] with more keys in `acme`'s section.
fn app_with(dir: &std::path::Path, acme: &str) -> axum::Router {
    let policy = Policy::from_toml(&format!(
        "[tenants.acme]\nkafka_brokers = [\"127.0.0.1:9092\"]\ntopic_prefix = \"acme.\"\nregistries = [\"http://127.0.0.1:8081\"]\nenv_vars = [\"ACME_REGISTRY_PW\"]\n{acme}"
    ))
    .unwrap();
    let mut config = config(dir, 1 << 20);
    config.file_roots = vec![dir.join("files/{tenant}")];
    for t in ["acme", "globex"] {
        std::fs::create_dir_all(dir.join("files").join(t)).unwrap();
    }
    let state = AppState::open(
        config,
        support::sandbox().clone(),
        Arc::new(Tenants::new(policy)),
    )
    .unwrap();
    router(Arc::new(state))
}

/// `body` to `acme`'s SQL endpoint as its operator.
async fn post_sql(app: &axum::Router, body: Value) -> (StatusCode, Value) {
    send(
        app,
        "POST",
        "/v1/tenants/acme/sql",
        Some("acme-operator"),
        None,
        body.to_string().into_bytes(),
    )
    .await
}

async fn deploy(app: &axum::Router, toml: &str) -> (StatusCode, Value) {
    send(
        app,
        "PUT",
        "/v1/tenants/acme/pipelines/p",
        Some("acme-operator"),
        None,
        toml.as_bytes().to_vec(),
    )
    .await
}

/// A file pipeline of `acme` with `extra` appended (tables, …).
fn file_pipeline(dir: &std::path::Path, sql: &str, extra: &str) -> String {
    let own = dir.join("files/acme");
    std::fs::write(own.join("in.ndjson"), "{\"id\": 1}\n").unwrap();
    format!(
        "name = \"p\"\nsql = \"{sql}\"\n[source]\nkind = \"file\"\npath = \"{}\"\nformat = \"json\"\nfields = [{{ name = \"id\", type = \"int64\" }}]\n[sink]\nkind = \"file\"\npath = \"{}\"\n[errors]\npolicy = \"skip\"\n{extra}",
        own.join("in.ndjson").display(),
        own.join("out.ndjson").display(),
    )
}

/// A Kafka pipeline of `acme` on its allowed broker and prefix, with
/// `extra` keys in `[source]` and then `after` (tables, a sink …).
fn kafka_pipeline(source_extra: &str, sink: &str, after: &str) -> String {
    format!(
        "name = \"p\"\nsql = \"SELECT * FROM source\"\n[source]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"acme.in\"]\ngroup = \"acme.g\"\n{source_extra}\n{sink}\n[errors]\npolicy = \"skip\"\n{after}"
    )
}

fn refused(status: StatusCode, answer: &Value, names: &[&str]) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    for n in names {
        assert!(error.contains(n), "`{n}` not in: {error}");
    }
}

/// Findings 1 and 4: a Kafka lookup table's properties (librdkafka would
/// load `plugin.library.paths` into the server), brokers and topic are
/// held to the policy like the source's; a transactional id names the
/// tenant's own producer.
#[tokio::test]
async fn kafka_tables_and_transactional_ids_follow_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let table = |brokers: &str, topic: &str, property: &str| {
        format!(
            "[[tables]]\nkind = \"kafka\"\nname = \"t\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\nformat = \"raw\"\n{property}\n"
        )
    };
    let lib = dir.path().join("files/acme/lib.so");
    let plugin = format!(
        "properties = {{ \"plugin.library.paths\" = \"{}\" }}",
        lib.display()
    );
    let stdout = "[sink]\nkind = \"stdout\"";
    for (toml, names) in [
        (
            kafka_pipeline(
                "format = \"raw\"",
                stdout,
                &table("127.0.0.1:9092", "acme.t", &plugin),
            ),
            &["tables[0].properties.plugin.library.paths"][..],
        ),
        (
            kafka_pipeline(
                "format = \"raw\"",
                stdout,
                &table(
                    "127.0.0.1:9092",
                    "acme.t",
                    "properties = { \"sasl.kerberos.kinit.cmd\" = \"touch /tmp/x\" }",
                ),
            ),
            &["tables[0].properties.sasl.kerberos.kinit.cmd"][..],
        ),
        (
            kafka_pipeline(
                "format = \"raw\"\nproperties = { \"sasl.mechanism\" = \"GSSAPI\" }",
                stdout,
                "",
            ),
            &["source.properties.sasl.mechanism", "GSSAPI"][..],
        ),
        (
            kafka_pipeline(
                "format = \"raw\"\nproperties = { \"statistics.interval.ms\" = \"1\" }",
                stdout,
                "",
            ),
            &["source.properties.statistics.interval.ms", "below"][..],
        ),
        (
            kafka_pipeline(
                "format = \"raw\"",
                stdout,
                &table("10.1.2.3:9092", "acme.t", ""),
            ),
            &["tables[0].brokers", "tenants.acme.kafka_brokers"][..],
        ),
        (
            kafka_pipeline(
                "format = \"raw\"",
                stdout,
                &table("127.0.0.1:9092", "globex.orders", ""),
            ),
            &["tables[0].topic", "tenants.acme.topic_prefix"][..],
        ),
        (
            kafka_pipeline(
                "format = \"raw\"",
                "[sink]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopic = \"acme.out\"\ndelivery = \"exactly-once\"\ntransactional_id = \"weir.globex.payments\"",
                "",
            ),
            &["sink.transactional_id", "weir.acme."][..],
        ),
    ] {
        let (status, answer) = deploy(&app, &toml).await;
        refused(status, &answer, names);
    }
}

/// Finding 2: a file table and an Avro schema file are held to the
/// tenant's root like the source: absolute, `..`, relative and symbolic
/// links out are refused, and the refusal does not quote the file.
#[tokio::test]
async fn table_and_schema_files_stay_inside_the_tenants_root() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let secret = dir.path().join("files/globex/dead-letters.ndjson");
    std::fs::write(&secret, "{\"card\": \"4111-SECRET\"}\n").unwrap();
    let link = dir.path().join("files/acme/link.ndjson");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let dotdot = dir.path().join("files/acme/../globex/dead-letters.ndjson");
    for path in [
        secret.display().to_string(),
        dotdot.display().to_string(),
        link.display().to_string(),
        "/etc/passwd".to_string(),
        "../../../../../../etc/passwd".to_string(),
    ] {
        let table = format!("[[tables]]\nkind = \"file\"\nname = \"t\"\npath = \"{path}\"\n");
        let toml = file_pipeline(dir.path(), "SELECT * FROM source", &table);
        let (status, answer) = deploy(&app, &toml).await;
        refused(status, &answer, &["tables[0].path", "serve.file_roots"]);
        assert!(!answer.to_string().contains("SECRET"), "{answer}");
    }
    let avro = format!(
        "format = \"avro\"\n[source.avro]\nschema = \"{}\"",
        secret.display()
    );
    let (status, answer) = deploy(
        &app,
        &kafka_pipeline(&avro, "[sink]\nkind = \"stdout\"", ""),
    )
    .await;
    refused(status, &answer, &["source.avro.schema"]);
    assert!(!answer.to_string().contains("SECRET"), "{answer}");
    // Inside the root: allowed (and the table joins).
    let own = dir.path().join("files/acme/rates.ndjson");
    std::fs::write(&own, "{\"id\": 1, \"rate\": 2}\n").unwrap();
    let table = format!(
        "[[tables]]\nkind = \"file\"\nname = \"rates\"\npath = \"{}\"\n",
        own.display()
    );
    let toml = file_pipeline(
        dir.path(),
        "SELECT source.id, rates.rate FROM source JOIN rates ON source.id = rates.id",
        &table,
    );
    let (status, answer) = deploy(&app, &toml).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}

/// Finding 3: the server sends requests only to the registries the
/// policy lists (no user information hidden in the URL), and reads only
/// the environment variables the policy names.
#[tokio::test]
async fn registries_and_environment_variables_follow_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let stdout = "[sink]\nkind = \"stdout\"";
    for (avro, names) in [
        (
            "registry = \"http://127.0.0.1:9100/metrics\"",
            &["source.avro.registry", "tenants.acme.registries"][..],
        ),
        (
            "registry = \"http://127.0.0.1:8081@127.0.0.1:9100/\"",
            &["source.avro.registry"][..],
        ),
        (
            "registry = \"http://127.0.0.1:8081\"\nusername = \"u\"\npassword_env = \"WEIR_DATABASE_PASSWORD\"",
            &["source.avro.password_env", "tenants.acme.env_vars"][..],
        ),
        (
            "registry = \"http://127.0.0.1:8081/../metrics\"",
            &["source.avro.registry"][..],
        ),
        (
            "registry = \"http://127.0.0.1:8081/%2e%2e/metrics\"",
            &["source.avro.registry"][..],
        ),
        (
            "registry = \"http://127.0.0.1:8081\"\nsubject = \"globex.orders-value\"",
            &["source.avro.subject", "tenants.acme.topic_prefix"][..],
        ),
    ] {
        let toml = kafka_pipeline(
            &format!("format = \"avro\"\n[source.avro]\n{avro}"),
            stdout,
            "",
        );
        let (status, answer) = deploy(&app, &toml).await;
        refused(status, &answer, names);
    }
    // The sink's registry too.
    let toml = kafka_pipeline(
        "format = \"raw\"",
        "[sink]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopic = \"acme.out\"\nformat = \"avro\"\n[sink.avro]\nregistry = \"http://169.254.169.254/latest\"",
        "",
    );
    let (status, answer) = deploy(&app, &toml).await;
    refused(status, &answer, &["sink.avro.registry"]);
}

/// A registry the policy allows that does not answer: the deploy is not
/// refused as the pipeline's fault (422) but answered 503, to be tried
/// again, naming the registry; nothing is stored as deployed.
#[tokio::test]
async fn a_registry_that_does_not_answer_is_a_503_not_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    // Allowed by the policy; nothing listens there in the tests.
    let toml = kafka_pipeline(
        "format = \"avro\"\n[source.avro]\nregistry = \"http://127.0.0.1:8081\"",
        "[sink]\nkind = \"stdout\"",
        "",
    );
    let (status, answer) = deploy(&app, &toml).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("pipeline `p`")
            && error.contains("http://127.0.0.1:8081")
            && error.contains("cannot be reached")
            && error.contains("try again"),
        "{error}"
    );
    let (status, answer) = send(
        &app,
        "GET",
        "/v1/tenants/acme/pipelines/p",
        Some("acme-operator"),
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
}

/// Finding 5: SQL over the bounds is refused before anything recursive
/// runs (the server used to abort on a stack overflow), in the SQL
/// endpoint and in a pipeline's `sql`; a text at the bound plans on a
/// guest thread without harm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_sql_is_refused_before_planning() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let sql = |text: String| post_sql(&app, serde_json::json!({ "sql": text }));
    let terms = |n: usize| format!("SELECT {} AS s", vec!["1"; n].join("+"));
    for (text, key) in [
        (terms(20_000), "sql_max_terms"),
        (vec!["SELECT 1"; 5_000].join(" UNION ALL "), "sql_max_terms"),
        (
            format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000)),
            "sql_max_depth",
        ),
    ] {
        let (status, answer) = sql(text).await;
        assert!(status.is_client_error(), "{status} {answer}");
        assert!(
            answer["error"].as_str().unwrap_or_default().contains(key),
            "{answer}"
        );
    }
    // At the bound: answered.
    let (status, answer) = sql(terms(1_000)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["rows"][0]["s"], 1_000, "{answer}");
    let (status, answer) = sql(vec!["SELECT 1 AS x"; 500].join(" UNION ALL ")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // A pipeline's SQL is held to the same bounds.
    let toml = file_pipeline(
        dir.path(),
        &format!(
            "SELECT id + {} AS s FROM source",
            vec!["1"; 10_000].join("+")
        ),
        "",
    );
    let (status, answer) = deploy(&app, &toml).await;
    assert!(status.is_client_error(), "{status} {answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("sql_max_terms"),
        "{answer}"
    );
}

/// Finding 10: a password inside a URL is not shown to a viewer.
#[test]
fn passwords_inside_urls_are_redacted() {
    let shown = weir::serve::services::pipelines::redact(
        "name = \"p\"\n[source.avro]\nregistry = \"http://user:hunter2@registry:8081\"\npassword = \"pw\"\n",
    );
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("\"pw\""), "{shown}");
    assert!(shown.contains("registry:8081"), "{shown}");
}

/// Finding 9: `query_memory_bytes` bounds the whole query, not each call:
/// twelve constant strings just under it (folded at plan time, outside
/// the pool) and an answer over it are refused naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_memory_covers_the_whole_query() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), "query_memory_bytes = 16777216\n");
    let query = |body: Value| post_sql(&app, body);
    let columns = (0..12)
        .map(|i| format!("repeat('x', 15000000) AS c{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (status, answer) = query(serde_json::json!({ "sql": format!("SELECT {columns}") })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("tenants.acme.query_memory_bytes"),
        "{answer}"
    );
    // Not constants: each call is under the bound, the answer is not.
    let columns = (0..4)
        .map(|i| format!("repeat(s, 6000000) AS c{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (status, answer) = query(serde_json::json!({
        "sql": format!("SELECT {columns} FROM t"),
        "tables": {"t": [{"s": "x"}]},
    }))
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("tenants.acme.query_memory_bytes"),
        "{answer}"
    );
    // Not constants, not the answer: three strings alive together as the
    // arguments of one call (18 MB) while the answer is one number.
    let (status, answer) = query(serde_json::json!({
        "sql": "SELECT length(concat(repeat(s, 6000000), repeat(s, 6000001), repeat(s, 6000002))) AS n FROM t",
        "tables": {"t": [{"s": "x"}]},
    }))
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("tenants.acme.query_memory_bytes"),
        "{answer}"
    );
    // Alive one after the other: each is released with its array.
    let (status, answer) = query(serde_json::json!({
        "sql": "SELECT length(repeat(s, 6000000)) AS a, length(repeat(s, 6000001)) AS b, length(repeat(s, 6000002)) AS c FROM t",
        "tables": {"t": [{"s": "x"}]},
    }))
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["rows"][0]["c"], 6000002, "{answer}");
    // Under it: answered.
    let (status, answer) =
        query(serde_json::json!({ "sql": "SELECT repeat('x', 1000) AS c" })).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// Issue 28: every node of a cluster runs a plain Kafka pipeline (the
/// group shares the partitions), but a windowed one only on the node
/// holding its lease: on several nodes each would emit partial windows.
#[test]
fn a_cluster_runs_a_windowed_pipeline_on_one_node() {
    use weir::serve::services::pipelines::shared;
    let plain = kafka_pipeline("format = \"raw\"", "[sink]\nkind = \"stdout\"", "");
    assert!(shared(&plain));
    let windowed = plain.replace(
        "sql = \"SELECT * FROM source\"",
        "sql = \"SELECT window_start, count(*) AS n FROM tumble(source, _timestamp, INTERVAL '1' MINUTE) GROUP BY window_start\"",
    );
    assert_ne!(plain, windowed);
    assert!(!shared(&windowed));
}

/// The SQL endpoint's topic tables are bounded in number (each one a
/// read of up to 10 000 records per partition, held in memory).
#[tokio::test]
async fn sql_topic_tables_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let topic =
        serde_json::json!({"brokers": "127.0.0.1:9092", "topic": "acme.t", "format": "raw"});
    let topics: serde_json::Map<String, Value> =
        (0..5).map(|i| (format!("t{i}"), topic.clone())).collect();
    let body = serde_json::json!({"sql": "SELECT 1", "topics": topics});
    let (status, answer) = post_sql(&app, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 4"),
        "{answer}"
    );
}
