//! `weir serve`: every endpoint through the router, the authorization
//! matrix, malformed input, the registry across a restart, audit, metrics.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;
use weir::serve::{AppState, Role, ServeConfig, TokenConfig, hash_token, router};
use weir::tenant::{Policy, Tenants};

use crate::support;

const ROLES: [(&str, Role); 4] = [
    ("viewer", Role::Viewer),
    ("operator", Role::Operator),
    ("publisher", Role::Publisher),
    ("admin", Role::Admin),
];

pub(crate) fn config(dir: &Path, max_body_bytes: usize) -> ServeConfig {
    let mut tokens = Vec::new();
    for tenant in ["acme", "globex"] {
        for (name, role) in ROLES {
            tokens.push(TokenConfig {
                name: format!("{tenant}-{name}"),
                sha256: hash_token(&format!("{tenant}-{name}-secret")),
                tenant: tenant.to_string(),
                role,
            });
        }
    }
    tokens.push(TokenConfig {
        name: "root".into(),
        sha256: hash_token("root-secret"),
        tenant: "*".into(),
        role: Role::Admin,
    });
    ServeConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        max_body_bytes,
        tokens,
        file_roots: vec![dir.to_path_buf(), support::repo().join("examples")],
        requests_per_s: 1,
        burst_requests: 1000,
        metrics_listen: None,
        ..ServeConfig::default()
    }
}

fn app(dir: &Path) -> Router {
    app_with(dir, 1 << 20)
}

fn app_with(dir: &Path, max_body_bytes: usize) -> Router {
    let tenants = Arc::new(Tenants::new(Policy::default()));
    let state = AppState::open(
        config(dir, max_body_bytes),
        support::sandbox().clone(),
        tenants,
    )
    .unwrap();
    router(Arc::new(state))
}

pub(crate) async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}-secret"));
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 24)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

async fn get(app: &Router, uri: &str, token: &str) -> (StatusCode, Value) {
    send(app, "GET", uri, Some(token), None, vec![]).await
}

async fn delete(app: &Router, uri: &str, token: &str) -> (StatusCode, Value) {
    send(app, "DELETE", uri, Some(token), None, vec![]).await
}

pub(crate) fn guest() -> Vec<u8> {
    std::fs::read(support::repo().join("tests/tenant/guest.wat")).unwrap()
}

pub(crate) async fn publish(
    app: &Router,
    token: &str,
    tenant: &str,
    name: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    send(
        app,
        "POST",
        &format!("/v1/tenants/{tenant}/udfs/{name}"),
        Some(token),
        Some("application/wasm"),
        body,
    )
    .await
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    assert_eq!(
        send(&app, "GET", "/healthz", None, None, vec![]).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, "GET", "/readyz", None, None, vec![]).await.0,
        StatusCode::OK
    );
    // The recorder is process-wide: a tenant no other test publishes to.
    let (status, _) = publish(&app, "root", "metrics-probe", "tools", guest()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, text) = send(&app, "GET", "/metrics", None, None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap().to_string();
    assert!(
        text.contains("weir_udf_publishes_total{tenant=\"metrics-probe\"} 1"),
        "{text}"
    );
    assert!(text.contains("weir_api_requests_total"), "{text}");
}

#[tokio::test]
async fn publish_versions_get_list_delete() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let (status, v1) = publish(&app, "acme-publisher", "acme", "tools", guest()).await;
    assert_eq!(status, StatusCode::CREATED, "{v1}");
    assert_eq!(v1["version"], 1);
    assert!(
        v1["functions"]
            .to_string()
            .contains("double(int64) -> int64"),
        "{v1}"
    );
    // The same bytes again: the same version, not a new one.
    let (status, again) = publish(&app, "acme-publisher", "acme", "tools", guest()).await;
    assert_eq!(
        (status, &again["version"]),
        (StatusCode::OK, &v1["version"])
    );
    // Changed code: version 2, which `latest` follows.
    let v2_text = String::from_utf8(guest())
        .unwrap()
        .replace("(i64.const 2)", "(i64.const 3)");
    let (status, v2) = publish(
        &app,
        "acme-publisher",
        "acme",
        "tools",
        v2_text.into_bytes(),
    )
    .await;
    assert_eq!(
        (status, &v2["version"]),
        (StatusCode::CREATED, &Value::from(2))
    );
    assert_ne!(v1["sha256"], v2["sha256"]);
    let (_, latest) = get(
        &app,
        "/v1/tenants/acme/udfs/tools/versions/latest",
        "acme-viewer",
    )
    .await;
    assert_eq!(latest["version"], 2);
    let (_, versions) = get(&app, "/v1/tenants/acme/udfs/tools", "acme-viewer").await;
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);
    let (_, list) = get(&app, "/v1/tenants/acme/udfs", "acme-viewer").await;
    assert_eq!(list["udfs"].as_array().unwrap().len(), 1);
    assert_eq!(list["udfs"][0]["version"], 2);
    // Rollback by deleting v2: latest is v1 again.
    let (status, _) = delete(&app, "/v1/tenants/acme/udfs/tools/versions/2", "acme-admin").await;
    assert_eq!(status, StatusCode::OK);
    let (_, latest) = get(
        &app,
        "/v1/tenants/acme/udfs/tools/versions/latest",
        "acme-viewer",
    )
    .await;
    assert_eq!(latest["version"], 1);
    let (status, _) = get(
        &app,
        "/v1/tenants/acme/udfs/tools/versions/2",
        "acme-viewer",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Each role × each action × own and other tenant (and no token).
#[tokio::test]
async fn the_authorization_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    for tenant in ["acme", "globex"] {
        let (status, _) = publish(&app, "root", tenant, "tools", guest()).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let v2 = String::from_utf8(guest())
        .unwrap()
        .replace("(i64.const 2)", "(i64.const 5)");
    // (action, method, uri, allowed for roles)
    for (role, _) in ROLES {
        for (tenant, own) in [("acme", true), ("globex", false)] {
            let token = format!("acme-{role}");
            let cases: [(&str, &str, String, bool); 5] = [
                ("list", "GET", format!("/v1/tenants/{tenant}/udfs"), true),
                (
                    "read",
                    "GET",
                    format!("/v1/tenants/{tenant}/udfs/tools"),
                    true,
                ),
                (
                    "read",
                    "GET",
                    format!("/v1/tenants/{tenant}/udfs/tools/versions/1"),
                    true,
                ),
                (
                    "publish",
                    "POST",
                    format!("/v1/tenants/{tenant}/udfs/tools"),
                    matches!(role, "publisher" | "admin"),
                ),
                (
                    "delete",
                    "DELETE",
                    format!("/v1/tenants/{tenant}/udfs/other/versions/1"),
                    role == "admin",
                ),
            ];
            for (action, method, uri, role_ok) in cases {
                let body = if method == "POST" {
                    v2.clone().into_bytes()
                } else {
                    vec![]
                };
                let ct = (method == "POST").then_some("application/wasm");
                let (status, answer) = send(&app, method, &uri, Some(&token), ct, body).await;
                let expected = if !own {
                    vec![StatusCode::NOT_FOUND]
                } else if !role_ok {
                    vec![StatusCode::FORBIDDEN]
                } else if action == "delete" {
                    vec![StatusCode::NOT_FOUND] // allowed; that version does not exist
                } else {
                    vec![StatusCode::OK, StatusCode::CREATED]
                };
                assert!(
                    expected.contains(&status),
                    "{role} {action} {uri}: {status} {answer}"
                );
                if !own {
                    // Nothing about the other tenant's objects leaks.
                    assert!(!answer.to_string().contains("sha256"), "{answer}");
                }
            }
        }
    }
    let (status, _) = send(&app, "GET", "/v1/tenants/acme/udfs", None, None, vec![]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get(&app, "/v1/tenants/acme/udfs", "nobody").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // globex's module was never overwritten by acme.
    let (_, versions) = get(&app, "/v1/tenants/globex/udfs/tools", "globex-viewer").await;
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn malformed_input_gets_a_clear_4xx_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), 64 << 10);
    // (name, content type, body, status, what the error says)
    type Case = (
        &'static str,
        Option<&'static str>,
        Vec<u8>,
        StatusCode,
        &'static str,
    );
    let cases: [Case; 5] = [
        (
            "junk",
            Some("application/wasm"),
            b"\x00\x01garbage bytes".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not binary wasm",
        ),
        (
            "junk",
            Some("application/json"),
            guest(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/wasm",
        ),
        (
            "junk",
            Some("application/wasm"),
            vec![b' '; 100 << 10],
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
        (
            "Bad Name",
            Some("application/wasm"),
            guest(),
            StatusCode::BAD_REQUEST,
            "invalid name",
        ),
        (
            "junk",
            Some("application/wasm"),
            std::fs::read(support::repo().join("tests/hostile/forbidden_import.wat")).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "import",
        ),
    ];
    for (name, ct, body, expected, says) in cases {
        let uri = format!("/v1/tenants/acme/udfs/{}", name.replace(' ', "%20"));
        let (status, answer) = send(&app, "POST", &uri, Some("acme-publisher"), ct, body).await;
        assert_eq!(status, expected, "{answer}");
        assert!(answer.to_string().contains(says), "{answer}");
    }
    let (_, list) = get(&app, "/v1/tenants/acme/udfs", "acme-viewer").await;
    assert_eq!(list["udfs"].as_array().unwrap().len(), 0, "{list}");
}

#[tokio::test]
async fn the_registry_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let app = app(dir.path());
        assert_eq!(
            publish(&app, "acme-publisher", "acme", "tools", guest())
                .await
                .0,
            StatusCode::CREATED
        );
    }
    let app = app(dir.path());
    let (status, v) = get(
        &app,
        "/v1/tenants/acme/udfs/tools/versions/1",
        "acme-viewer",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["published_by"], "acme-publisher");
}

#[tokio::test]
async fn the_audit_log_records_decisions_for_admins() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    publish(&app, "acme-viewer", "acme", "tools", guest()).await; // denied
    publish(&app, "acme-publisher", "acme", "tools", guest()).await; // allowed
    let (status, _) = get(&app, "/v1/audit", "acme-viewer").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, audit) = get(&app, "/v1/audit", "acme-admin").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let records = audit["records"].as_array().unwrap();
    let denied = records
        .iter()
        .find(|r| r["who"] == "acme-viewer" && r["action"] == "publish")
        .unwrap();
    assert_eq!(denied["decision"], "denied");
    assert!(
        denied["reason"]
            .as_str()
            .unwrap()
            .contains("may not publish"),
        "{denied}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["who"] == "acme-publisher" && r["status"] == 201)
    );
    // Another tenant's admin sees none of acme's records.
    let (_, theirs) = get(&app, "/v1/audit", "globex-admin").await;
    assert!(
        theirs["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant"] != "acme"),
        "{theirs}"
    );
}

/// A minimal HTTP/1.0 exchange (no client library needed): (status, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wait_for(addr: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {addr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub(crate) struct Killed(pub(crate) std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real Prometheus server (Debian's `prometheus`) scrapes `weir serve`
/// and a weir metric is read back through Prometheus's query API.
#[test]
fn prometheus_scrapes_weir_serve() {
    let prometheus = which("prometheus");
    if !support::require_or_skip(
        "the prometheus binary (apt-get install prometheus)",
        prometheus.is_ok(),
    ) {
        return;
    }
    let prometheus = prometheus.expect("checked above");
    let dir = tempfile::tempdir().unwrap();
    let weir_addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[serve]\nlisten = \"{weir_addr}\"\ndata_dir = \"{}\"\n[[serve.tokens]]\nname = \"ci\"\nsha256 = \"{}\"\ntenant = \"acme\"\nrole = \"publisher\"\n",
            dir.path().join("data").display(),
            hash_token("ci-secret")
        ),
    )
    .unwrap();
    let _weir = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("WEIR_CACHE_DIR", support::cache_dir())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&weir_addr);
    // Issue 27 #10: a fresh server's scrape is not empty: the counters of
    // the tenants it knows start at zero (`rate()` and alerts need them).
    let (status, fresh) = http(&weir_addr, "GET", "/metrics", &[], &[]);
    assert_eq!(status, 200, "{fresh}");
    assert!(
        fresh.contains("weir_udf_publishes_total{tenant=\"acme\"} 0")
            && fresh.contains("weir_cache_hits_total{tenant=\"acme\"} 0"),
        "{fresh}"
    );
    let (status, body) = http(
        &weir_addr,
        "POST",
        "/v1/tenants/acme/udfs/tools",
        &[
            ("Authorization", "Bearer ci-secret"),
            ("Content-Type", "application/wasm"),
        ],
        &guest(),
    );
    assert_eq!(status, 201, "{body}");
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: weir\n    static_configs:\n      - targets: ['{weir_addr}']\n"
        ),
    )
    .unwrap();
    let _prom = Killed(
        std::process::Command::new(prometheus)
            .args([
                &format!("--config.file={}", prom_config.display()),
                &format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
                &format!("--web.listen-address={prom_addr}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&prom_addr);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, body) = http(
            &prom_addr,
            "GET",
            "/api/v1/query?query=weir_udf_publishes_total",
            &[],
            &[],
        );
        if status == 200 && body.contains("\"tenant\":\"acme\"") && body.contains("\"1\"]") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus never had the metric: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Issue 27 #10: the series of a deleted pipeline's functions (here an
/// inline JavaScript one) leave `/metrics` once idle for
/// `WEIR_METRICS_IDLE_SECS` (15 minutes by default), rather than piling
/// up with every redeploy.
#[test]
fn series_of_a_deleted_pipelines_functions_leave_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[serve]\nlisten = \"{addr}\"\ndata_dir = \"{}\"\nfile_roots = [\"{}\"]\n[[serve.tokens]]\nname = \"ci\"\nsha256 = \"{}\"\ntenant = \"acme\"\nrole = \"operator\"\n",
            dir.path().join("data").display(),
            dir.path().display(),
            hash_token("ci-secret")
        ),
    )
    .unwrap();
    let _weir = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("WEIR_CACHE_DIR", support::cache_dir())
            .env("WEIR_METRICS_IDLE_SECS", "2")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&addr);
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, "{\"id\":1}\n{\"id\":2}\n").unwrap();
    let pipeline = format!(
        "name = \"gone\"\nsql = \"\"\"\nCREATE FUNCTION js_gone(x BIGINT) RETURNS BIGINT LANGUAGE javascript AS $$ return 2 * x; $$;\nSELECT id, js_gone(id) AS d FROM source\n\"\"\"\n[source]\nkind = \"file\"\npath = \"{}\"\nformat = \"json\"\nfields = [{{ name = \"id\", type = \"int64\" }}]\n[sink]\nkind = \"file\"\npath = \"{}\"\n[errors]\npolicy = \"fail\"\n",
        input.display(),
        dir.path().join("out.ndjson").display()
    );
    let auth = [
        ("Authorization", "Bearer ci-secret"),
        ("Content-Type", "application/toml"),
    ];
    let (status, answer) = http(
        &addr,
        "PUT",
        "/v1/tenants/acme/pipelines/gone",
        &auth,
        pipeline.as_bytes(),
    );
    assert_eq!(status, 201, "{answer}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, metrics) = http(&addr, "GET", "/metrics", &[], &[]);
        if metrics.contains("udf=\"js_gone\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (status, answer) = http(
        &addr,
        "DELETE",
        "/v1/tenants/acme/pipelines/gone",
        &auth,
        b"",
    );
    assert!(status == 200 || status == 204, "{status} {answer}");
    // The exporter times a series' idleness from the first scrape that
    // sees its last value (as Prometheus's regular scrapes would): one
    // scrape after the delete, then one past the idle time.
    let _ = http(&addr, "GET", "/metrics", &[], &[]);
    std::thread::sleep(std::time::Duration::from_secs(4));
    let (_, metrics) = http(&addr, "GET", "/metrics", &[], &[]);
    assert!(
        !metrics.contains("udf=\"js_gone\""),
        "the deleted pipeline's function series are still there: {metrics}"
    );
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[tokio::test]
async fn staged_runs_on_sample_rows_report_outputs_errors_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    publish(&app, "acme-publisher", "acme", "tools", guest()).await;
    let run = |uri: &str, token: &str, body: Value| {
        let (app, uri, token) = (app.clone(), uri.to_string(), token.to_string());
        async move {
            send(
                &app,
                "POST",
                &uri,
                Some(&token),
                Some("application/json"),
                body.to_string().into_bytes(),
            )
            .await
        }
    };
    let uri = "/v1/tenants/acme/udfs/tools/versions/latest/try";
    let (status, out) = run(
        uri,
        "acme-operator",
        serde_json::json!({"function": "double", "rows": [[1], [2], [null]]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["outputs"], serde_json::json!([2, 4, null]));
    assert!(out["errors"].as_array().unwrap().is_empty());
    // One guest call for the three rows (none failed), and it took time.
    assert_eq!(out["calls"], 1, "{out}");
    assert!(out["guest_ms"].as_f64().unwrap() > 0.0, "{out}");
    // An infinite loop stops at the dry-run CPU limit, as a per-row error.
    let (status, out) = run(
        uri,
        "acme-operator",
        serde_json::json!({"function": "spin", "rows": [[1], [1000000000000i64]]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["outputs"][0], 1);
    assert_eq!(out["errors"][0]["row"], 1);
    assert!(
        out["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("ran out of CPU"),
        "{out}"
    );
    // Not yet published: the module travels in the request.
    let text = String::from_utf8(guest()).unwrap();
    let (status, out) = run(
        "/v1/tenants/acme/try",
        "acme-operator",
        serde_json::json!({"function": "double", "rows": [[21]], "module_text": text}),
    )
    .await;
    assert_eq!(
        (status, &out["outputs"]),
        (StatusCode::OK, &serde_json::json!([42])),
        "{out}"
    );
    // Clear errors: rows that do not fit the module are 422 (the request
    // is well-formed), malformed JSON 400; viewers may not run code.
    let (status, out) = run(
        uri,
        "acme-operator",
        serde_json::json!({"function": "nope", "rows": []}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        out["error"]
            .as_str()
            .unwrap()
            .contains("no function `nope`"),
        "{out}"
    );
    let (status, out) = run(
        uri,
        "acme-operator",
        serde_json::json!({"function": "double", "rows": [["x", 2]]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{out}");
    let (status, _) = send(
        &app,
        "POST",
        uri,
        Some("acme-operator"),
        Some("application/json"),
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = run(
        uri,
        "acme-viewer",
        serde_json::json!({"function": "double", "rows": [[1]]}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn every_route_is_served_and_in_the_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let (status, doc) = send(&app, "GET", "/openapi.json", None, None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    // Routes and documentation come from one table: every documented
    // operation is routed (and there are as many as the API has).
    let mut operations = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            operations += 1;
            let uri = path
                .replace("{tenant}", "acme")
                .replace("{name}", "tools")
                .replace("{version}", "1");
            let (status, answer) =
                send(&app, &method.to_uppercase(), &uri, None, None, vec![]).await;
            assert!(
                status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {uri} is not routed: {status} {answer}"
            );
        }
    }
    assert_eq!(operations, 23, "{doc}");
}

/// Issue 12 (schemathesis): the document says what a client generator
/// needs — unique operation ids, the bearer scheme and the statuses every
/// `/v1` route answers, the module body as bytes, JSON bodies' schemas,
/// parameter patterns — and every error is JSON, also those answered
/// before a handler runs.
#[tokio::test]
async fn the_openapi_document_is_complete_and_every_error_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), 1024);
    let (_, doc) = send(&app, "GET", "/openapi.json", None, None, vec![]).await;
    let mut ids = std::collections::HashSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap().to_string();
            assert!(ids.insert(id.clone()), "operationId {id} twice");
            if path.starts_with("/v1") {
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"bearer": []}]),
                    "{method} {path}"
                );
                for code in ["400", "401", "429"] {
                    assert!(
                        op["responses"][code].is_object(),
                        "{method} {path} lacks {code}"
                    );
                }
            }
            for (code, r) in op["responses"].as_object().unwrap() {
                if !code.starts_with('2') {
                    assert!(
                        r["content"]["application/json"].is_object(),
                        "{method} {path} {code}"
                    );
                }
            }
        }
    }
    let publish = &doc["paths"]["/v1/tenants/{tenant}/udfs/{name}"]["post"];
    assert_eq!(
        publish["requestBody"]["content"]["application/wasm"]["schema"],
        serde_json::json!({"type": "string", "format": "binary"})
    );
    let sql = &doc["paths"]["/v1/tenants/{tenant}/sql"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    assert_eq!(sql["required"], serde_json::json!(["sql"]), "{sql}");
    let version =
        doc["paths"]["/v1/tenants/{tenant}/udfs/{name}/versions/{version}"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "version")
            .unwrap()
            .clone();
    assert!(version["schema"]["pattern"].is_string(), "{version}");

    // Errors axum answers itself are JSON too.
    let (status, body) = send(
        &app,
        "GET",
        "/v1/audit?limit=-1",
        Some("acme-admin"),
        None,
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = send(&app, "GET", "/no/such/route", None, None, vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = send(
        &app,
        "POST",
        "/v1/tenants/acme/sql",
        Some("acme-operator"),
        Some("application/json"),
        vec![b' '; 4096],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["error"].is_string(), "{body}");

    // What schemathesis generated within the document: a whole number
    // written as 255.0 is a valid `max_rows`; rows that are valid JSON but
    // cannot form one table are 422, not 400.
    let roomy = app_with(dir.path(), 1 << 20);
    let sql = |body: Value| {
        let app = roomy.clone();
        async move {
            send(
                &app,
                "POST",
                "/v1/tenants/acme/sql",
                Some("acme-operator"),
                Some("application/json"),
                body.to_string().into_bytes(),
            )
            .await
        }
    };
    let (status, body) = sql(serde_json::json!({"sql": "SELECT 1 AS x", "max_rows": 255.0})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Any integer is schema-valid, even one beyond u64 (schemathesis sent
    // 7242067819294789468160): the cap applies.
    let (status, body) = send(
        &roomy,
        "POST",
        "/v1/tenants/acme/sql",
        Some("acme-operator"),
        Some("application/json"),
        br#"{"sql": "SELECT 1 AS x", "max_rows": 7242067819294789468160}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = sql(serde_json::json!({
        "sql": "SELECT 1 AS x",
        "tables": {"t": [{"a": [[], {}]}]},
    }))
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test]
async fn each_token_is_rate_limited_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1 << 20);
    config.requests_per_s = 1;
    config.burst_requests = 3;
    let tenants = Arc::new(Tenants::new(Policy::default()));
    let app = router(Arc::new(
        AppState::open(config, support::sandbox().clone(), tenants).unwrap(),
    ));
    for _ in 0..3 {
        let (status, _) = get(&app, "/v1/tenants/acme/udfs", "acme-viewer").await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, answer) = get(&app, "/v1/tenants/acme/udfs", "acme-viewer").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        answer["error"].as_str().unwrap().contains("acme-viewer"),
        "{answer}"
    );
    // Another token is not affected.
    let (status, _) = get(&app, "/v1/tenants/acme/udfs", "acme-admin").await;
    assert_eq!(status, StatusCode::OK);
}

/// Issue 12 #8: token names are unique per tenant only, so the rate bucket
/// is per (tenant, token): globex's `ci` does not spend acme's `ci`.
#[tokio::test]
async fn same_named_tokens_of_two_tenants_have_their_own_rate() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1 << 20);
    for tenant in ["acme", "globex"] {
        config.tokens.push(TokenConfig {
            name: "ci".into(),
            sha256: hash_token(&format!("{tenant}-ci-secret")),
            tenant: tenant.into(),
            role: Role::Viewer,
        });
    }
    config.requests_per_s = 1;
    config.burst_requests = 3;
    let tenants = Arc::new(Tenants::new(Policy::default()));
    let app = router(Arc::new(
        AppState::open(config, support::sandbox().clone(), tenants).unwrap(),
    ));
    for _ in 0..3 {
        let (status, _) = get(&app, "/v1/tenants/globex/udfs", "globex-ci").await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = get(&app, "/v1/tenants/globex/udfs", "globex-ci").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, answer) = get(&app, "/v1/tenants/acme/udfs", "acme-ci").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// Issue 12 #8: a tenant named in the URL by a caller who is refused is
/// never a metric label (anyone could grow the label set without bound).
#[tokio::test]
async fn refused_callers_never_become_metric_labels() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    for probe in ["labelprobe-a", "labelprobe-b"] {
        let (status, _) = get(&app, &format!("/v1/tenants/{probe}/udfs"), "acme-viewer").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (_, text) = send(&app, "GET", "/metrics", None, None, vec![]).await;
    let text = text.as_str().unwrap().to_string();
    assert!(text.contains("weir_api_requests_total"), "{text}");
    assert!(!text.contains("labelprobe"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_path_metrics_count_records_calls_failures_and_cache() {
    use weir::pipeline::{Pipeline, PipelineConfig};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    let mut lines: String = (0..100)
        .map(|i| format!("{{\"id\":{}}}\n", i % 10))
        .collect();
    lines.push_str("not json\n");
    std::fs::write(&input, lines).unwrap();
    let config = PipelineConfig::from_toml(&format!(
        r#"
name = "numbers"
tenant = "datapath"
udfs = ["{guest}"]
sql = "SELECT double(id) AS d FROM source"
[source]
kind = "file"
path = "{input}"
format = "json"
fields = [{{ name = "id", type = "int64" }}]
[sink]
kind = "file"
path = "{out}"
[errors]
policy = "skip"
# One batch after the other: the second is served from the cache the
# first filled (two at once would both miss).
[batch]
max_records = 50
workers = 1
"#,
        guest = support::repo().join("tests/tenant/guest.wat").display(),
        input = input.display(),
        out = dir.path().join("out.ndjson").display(),
    ))
    .unwrap();
    // The recorder before the pipeline: series register when it is built.
    weir::serve::exporter::handle().expect("the test process installs no other recorder");
    let tenants = Arc::new(Tenants::new(Policy::default()));
    let pipeline = Pipeline::build_for(config, support::sandbox(), &tenants)
        .await
        .unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    pipeline.run(stopped).await.unwrap();
    let text = weir::serve::exporter::render();
    for expected in [
        r#"weir_pipeline_records_in_total{tenant="datapath",pipeline="numbers"} 101"#,
        r#"weir_pipeline_records_out_total{tenant="datapath",pipeline="numbers"} 100"#,
        r#"weir_pipeline_skipped_records_total{tenant="datapath",pipeline="numbers"} 1"#,
        r#"weir_udf_breaker_state{tenant="datapath",pipeline="numbers",udf="double"} 0"#,
        // Batch 1 (50 rows) computes; batch 2 is served from the cache.
        r#"weir_cache_hits_total{tenant="datapath"} 50"#,
        r#"weir_cache_misses_total{tenant="datapath"} 50"#,
        r#"weir_udf_invocations_total{tenant="datapath",pipeline="numbers",udf="double"} 1"#,
        r#"weir_udf_call_seconds_count{tenant="datapath",pipeline="numbers",udf="double"} 1"#,
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[tokio::test]
async fn sql_with_published_udfs_answers_json_or_arrow_within_caps() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    publish(&app, "acme-publisher", "acme", "tools", guest()).await;
    let query = |body: Value, accept: Option<&'static str>, token: &'static str| {
        let app = app.clone();
        async move {
            let mut req = Request::builder()
                .method("POST")
                .uri("/v1/tenants/acme/sql")
                .header("authorization", format!("Bearer {token}-secret"))
                .header("content-type", "application/json");
            if let Some(a) = accept {
                req = req.header("accept", a);
            }
            let res = app
                .oneshot(req.body(Body::from(body.to_string())).unwrap())
                .await
                .unwrap();
            let status = res.status();
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 24)
                .await
                .unwrap();
            (status, bytes)
        }
    };
    let body = serde_json::json!({
        "sql": "SELECT x, double(x) AS d FROM t ORDER BY x",
        "udfs": ["tools@1"],
        "tables": {"t": [{"x": 3}, {"x": 1}, {"x": null}]},
    });
    let (status, bytes) = query(body.clone(), None, "acme-operator").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        answer["rows"],
        serde_json::json!([{"x": 1, "d": 2}, {"x": 3, "d": 6}, {"x": null, "d": null}])
    );
    assert_eq!(answer["truncated"], false);
    // Arrow IPC when asked.
    let (status, bytes) = query(
        body.clone(),
        Some("application/vnd.apache.arrow.stream"),
        "acme-operator",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(
        std::io::Cursor::new(bytes.to_vec()),
        None,
    )
    .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 3);
    // Row cap.
    let mut capped = body.clone();
    capped["max_rows"] = 1.into();
    let (_, bytes) = query(capped, None, "acme-operator").await;
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (
            answer["rows"].as_array().unwrap().len(),
            &answer["truncated"]
        ),
        (1, &Value::Bool(true))
    );
    // Clear errors.
    let (status, bytes) = query(
        serde_json::json!({"sql": "SELECT nope(1)"}),
        None,
        "acme-operator",
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let (status, _) = query(
        serde_json::json!({"sql": "SELECT 1", "udfs": ["missing"]}),
        None,
        "acme-operator",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A UDF listed twice is well-formed but cannot be loaded twice: a
    // conflict (422), not a malformed request (schemathesis seed 222510947).
    let (status, bytes) = query(
        serde_json::json!({"sql": "SELECT 1", "udfs": ["tools", "tools@1"]}),
        None,
        "acme-operator",
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(String::from_utf8_lossy(&bytes).contains("listed twice"));
    let (status, _) = query(body.clone(), None, "acme-viewer").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = query(body, None, "globex-admin").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A FIFO as a file source: the test writes records while the pipeline runs.
fn fifo(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap()
            .success()
    );
    path
}

fn pipeline_toml(name: &str, input: &Path, output: &Path, udf: &str) -> String {
    format!(
        r#"
name = "{name}"
udfs = ["{udf}"]
sql = "SELECT id, double(id) AS d FROM source"
[source]
kind = "file"
path = "{input}"
format = "json"
fields = [{{ name = "id", type = "int64" }}]
[sink]
kind = "file"
path = "{output}"
[errors]
policy = "fail"
[batch]
max_records = 10
max_linger_ms = 10
"#,
        input = input.display(),
        output = output.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_takes_effect_mid_stream_without_losing_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    publish(&app, "acme-publisher", "acme", "tools", guest()).await;
    let input = fifo(dir.path(), "in.fifo");
    let output = dir.path().join("out.ndjson");
    // The writer: 400 records, slowly, then closes (the source ends).
    let writer_path = input.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(writer_path)
            .unwrap();
        for id in 0..400 {
            writeln!(f, "{{\"id\":{id}}}").unwrap();
            f.flush().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    });
    let (status, answer) = send(
        &app,
        "PUT",
        "/v1/tenants/acme/pipelines/doubler",
        Some("acme-operator"),
        Some("application/toml"),
        pipeline_toml("doubler", &input, &output, "tools").into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    // Once output flows, publish v2 (triples).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_to_string(&output)
        .unwrap_or_default()
        .lines()
        .count()
        < 50
    {
        assert!(std::time::Instant::now() < deadline, "no output");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let v2 = String::from_utf8(guest())
        .unwrap()
        .replace("(i64.const 2)", "(i64.const 3)");
    assert_eq!(
        publish(&app, "acme-publisher", "acme", "tools", v2.into_bytes())
            .await
            .0,
        StatusCode::CREATED
    );
    writer.join().unwrap();
    // The source ends with the writer: wait until the pipeline finished.
    loop {
        let (_, st) = get(&app, "/v1/tenants/acme/pipelines/doubler", "acme-viewer").await;
        if st["state"] == "finished" {
            assert_eq!(st["records_in"], 400);
            assert!(st["udfs"].to_string().contains("tools@v2"), "{st}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{st}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let rows: Vec<(i64, i64)> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["id"].as_i64().unwrap(), v["d"].as_i64().unwrap())
        })
        .collect();
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        ids,
        (0..400).collect::<Vec<_>>(),
        "every record exactly once, in order"
    );
    let factors: Vec<i64> = rows.iter().filter(|r| r.0 > 0).map(|r| r.1 / r.0).collect();
    let switch = factors
        .iter()
        .position(|f| *f == 3)
        .expect("v2 took effect");
    assert!(switch > 0, "v1 ran first");
    assert!(
        factors[switch..].iter().all(|f| *f == 3),
        "no going back to v1 after the switch"
    );
    assert!(factors[..switch].iter().all(|f| *f == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_version_cannot_be_deleted_while_its_pipeline_runs() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    publish(&app, "acme-publisher", "acme", "tools", guest()).await;
    let input = fifo(dir.path(), "idle.fifo");
    let writer_path = input.clone();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let _f = std::fs::OpenOptions::new()
            .write(true)
            .open(writer_path)
            .unwrap();
        let _ = done_rx.recv();
    });
    let toml = pipeline_toml("pinned", &input, &dir.path().join("out.ndjson"), "tools@1");
    let (status, answer) = send(
        &app,
        "PUT",
        "/v1/tenants/acme/pipelines/pinned",
        Some("acme-operator"),
        Some("application/toml"),
        toml.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (status, answer) =
        delete(&app, "/v1/tenants/acme/udfs/tools/versions/1", "acme-admin").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("pipeline `pinned`"),
        "{answer}"
    );
    // Viewers cannot stop it; operators can.
    let (status, _) = send(
        &app,
        "POST",
        "/v1/tenants/acme/pipelines/pinned/stop",
        Some("acme-viewer"),
        None,
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, st) = send(
        &app,
        "POST",
        "/v1/tenants/acme/pipelines/pinned/stop",
        Some("acme-operator"),
        None,
        vec![],
    )
    .await;
    assert_eq!(
        (status, &st["state"]),
        (StatusCode::OK, &Value::from("stopped")),
        "{st}"
    );
    let (_, list) = get(&app, "/v1/tenants/acme/pipelines", "acme-viewer").await;
    assert_eq!(list["pipelines"][0]["desired"], "stopped");
    let (status, _) = delete(&app, "/v1/tenants/acme/udfs/tools/versions/1", "acme-admin").await;
    assert_eq!(status, StatusCode::OK);
    // Another tenant sees nothing of it.
    let (status, _) = get(&app, "/v1/tenants/acme/pipelines/pinned", "globex-admin").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = delete(&app, "/v1/tenants/acme/pipelines/pinned", "acme-operator").await;
    assert_eq!(status, StatusCode::OK);
    done_tx.send(()).unwrap();
    writer.join().unwrap();
}

/// The README's serve walkthrough: publish `finance`, try it, deploy
/// examples/pipelines/serve-payments.toml, read its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_serve_walkthrough() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let finance = std::fs::read(support::module_path("finance")).unwrap();
    assert_eq!(
        publish(&app, "acme-admin", "acme", "finance", finance)
            .await
            .0,
        StatusCode::CREATED
    );
    let (status, tried) = send(
        &app,
        "POST",
        "/v1/tenants/acme/udfs/finance/versions/latest/try",
        Some("acme-admin"),
        Some("application/x-www-form-urlencoded"), // what `curl -d` sends
        br#"{"function": "parse_cents", "rows": [["12.50 EUR"], ["oops"]]}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tried}");
    assert_eq!(tried["outputs"][0], 1250);
    assert_eq!(tried["errors"][0]["row"], 1);
    // Run from a scratch directory so that the example's relative paths
    // (input from the repository, output under out/) resolve.
    let example =
        std::fs::read_to_string(support::repo().join("examples/pipelines/serve-payments.toml"))
            .unwrap()
            .replace(
                "examples/data/",
                &format!("{}/examples/data/", support::repo().display()),
            )
            .replace("out/", &format!("{}/out/", dir.path().display()));
    let (status, answer) = send(
        &app,
        "PUT",
        "/v1/tenants/acme/pipelines/payments",
        Some("acme-admin"),
        None,
        example.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, st) = get(&app, "/v1/tenants/acme/pipelines/payments", "acme-admin").await;
        if st["state"] == "finished" {
            // payments-stream.ndjson: ids 1, 2, 4 and 6 are good; 3 is
            // not an amount and 5 is not JSON.
            assert_eq!(st["records_in"], 6, "{st}");
            assert_eq!(st["records_out"], 4, "{st}");
            assert_eq!(st["dead_letters"], 2, "{st}");
            let out =
                std::fs::read_to_string(dir.path().join("out/serve-payments.ndjson")).unwrap();
            let ids: Vec<i64> = out
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["id"]
                        .as_i64()
                        .unwrap()
                })
                .collect();
            assert_eq!(ids, [1, 2, 4, 6]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{st}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn not_ready_while_a_running_pipelines_brokers_are_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = Arc::new(Tenants::new(Policy::default()));
    let state = Arc::new(
        AppState::open(
            config(dir.path(), 1 << 20),
            support::sandbox().clone(),
            tenants,
        )
        .unwrap(),
    );
    let app = router(state.clone());
    assert_eq!(
        send(&app, "GET", "/readyz", None, None, vec![]).await.0,
        StatusCode::OK
    );
    let toml = r#"
name = "orders"
sql = "SELECT * FROM source"
[source]
kind = "kafka"
brokers = "127.0.0.1:1"
topics = ["orders"]
group = "g"
format = "raw"
[sink]
kind = "stdout"
[errors]
policy = "skip"
"#;
    state
        .registry
        .save_pipeline(&weir::serve::registry::StoredPipeline {
            tenant: "acme".into(),
            name: "orders".into(),
            config: toml.into(),
            running: true,
            updated_at: 0,
            updated_by: "test".into(),
        })
        .unwrap();
    let (status, why) = send(&app, "GET", "/readyz", None, None, vec![]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!why.to_string().contains("orders"), "no names leak: {why}");
}

#[tokio::test]
async fn admins_create_list_and_revoke_tokens_of_their_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let body = br#"{"name": "ci", "role": "publisher"}"#.to_vec();
    let (status, created) = send(
        &app,
        "POST",
        "/v1/tenants/acme/tokens",
        Some("acme-admin"),
        Some("application/json"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["sha256"], hash_token(&token));
    // The new token works, for its tenant and role only.
    let with = |method: &str, uri: &str, ct: Option<&str>, body: Vec<u8>| {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"));
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let app = app.clone();
        let req = req.body(Body::from(body)).unwrap();
        async move { app.oneshot(req).await.unwrap().status() }
    };
    assert_eq!(
        with(
            "POST",
            "/v1/tenants/acme/udfs/tools",
            Some("application/wasm"),
            guest()
        )
        .await,
        StatusCode::CREATED
    );
    assert_eq!(
        with(
            "POST",
            "/v1/tenants/globex/udfs/tools",
            Some("application/wasm"),
            guest()
        )
        .await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        with(
            "DELETE",
            "/v1/tenants/acme/udfs/tools/versions/1",
            None,
            vec![]
        )
        .await,
        StatusCode::FORBIDDEN
    );
    // Only the tenant's admins manage its tokens; names are unique.
    let (status, _) = send(
        &app,
        "POST",
        "/v1/tenants/acme/tokens",
        Some("acme-viewer"),
        None,
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send(
        &app,
        "POST",
        "/v1/tenants/acme/tokens",
        Some("globex-admin"),
        None,
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(
        &app,
        "POST",
        "/v1/tenants/acme/tokens",
        Some("acme-admin"),
        None,
        body,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, list) = get(&app, "/v1/tenants/acme/tokens", "acme-admin").await;
    assert_eq!(
        list["tokens"],
        serde_json::json!([{"name": "ci", "role": "publisher"}])
    );
    assert!(
        !list.to_string().contains(&token),
        "tokens are never shown again"
    );
    // Revoked: refused from then on.
    let (status, _) = delete(&app, "/v1/tenants/acme/tokens/ci", "acme-admin").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        with("GET", "/v1/tenants/acme/udfs", None, vec![]).await,
        StatusCode::UNAUTHORIZED
    );
}

/// Pipelines that should run are started again when `weir serve` restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_pipelines_start_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, "{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n").unwrap();
    let out = dir.path().join("out.ndjson");
    let toml = pipeline_toml("steady", &input, &out, "tools");
    let config = || config(dir.path(), 1 << 20);
    {
        let state = Arc::new(
            AppState::open(
                config(),
                support::sandbox().clone(),
                Arc::new(Tenants::new(Policy::default())),
            )
            .unwrap(),
        );
        let app = router(state.clone());
        publish(&app, "acme-publisher", "acme", "tools", guest()).await;
        let (status, answer) = send(
            &app,
            "PUT",
            "/v1/tenants/acme/pipelines/steady",
            Some("acme-operator"),
            None,
            toml.into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        // Shut down as `weir serve` does: pipelines stop, their stored
        // desired state stays `running`.
        state.pipelines.stop_all().await;
    }
    // Nothing runs now: the output is cleared to see what the restart does.
    std::fs::write(&out, "").unwrap();
    // "Restart": a new state over the same data directory.
    let state = Arc::new(
        AppState::open(
            config(),
            support::sandbox().clone(),
            Arc::new(Tenants::new(Policy::default())),
        )
        .unwrap(),
    );
    weir::serve::services::pipelines::start_stored(&state).await;
    let app = router(state.clone());
    let (_, st) = get(&app, "/v1/tenants/acme/pipelines/steady", "acme-viewer").await;
    assert_eq!(st["desired"], "running", "{st}");
    assert_ne!(st["state"], "stopped", "{st}");
    // The restarted pipeline carries the records through (the file source
    // reads its file from the start).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let rows: Vec<(i64, i64)> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|r| (r["id"].as_i64().unwrap(), r["d"].as_i64().unwrap()))
            .collect();
        if rows == [(1, 2), (2, 4), (3, 6)] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the restart: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    state.pipelines.stop_all().await;
}

/// `weir udf publish` against a running `weir serve`.
#[test]
fn weir_udf_publish_uploads_to_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[serve]\nlisten = \"{addr}\"\ndata_dir = \"{}\"\n[[serve.tokens]]\nname = \"ci\"\nsha256 = \"{}\"\ntenant = \"acme\"\nrole = \"publisher\"\n",
            dir.path().join("data").display(),
            hash_token("ci-secret")
        ),
    )
    .unwrap();
    let weir = env!("CARGO_BIN_EXE_weir");
    let _server = Killed(
        std::process::Command::new(weir)
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("WEIR_CACHE_DIR", support::cache_dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&addr);
    let module = support::repo().join("tests/tenant/guest.wat");
    let publish = |token: &str| {
        std::process::Command::new(weir)
            .args([
                "udf",
                "publish",
                module.to_str().unwrap(),
                "--tenant",
                "acme",
                "--name",
                "tools",
            ])
            .args(["--server", &format!("http://{addr}")])
            .env("WEIR_TOKEN", token)
            .output()
            .unwrap()
    };
    let out = publish("ci-secret");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("published tools version 1"), "{text}");
    let out = publish("wrong");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        text.contains("401") && text.contains("bearer token"),
        "{text}"
    );
}

/// Deployed pipelines cannot reach the server's files outside
/// `serve.file_roots`, nor load modules from paths.
#[tokio::test]
async fn deployed_pipelines_stay_inside_the_file_roots() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    publish(&app, "acme-publisher", "acme", "tools", guest()).await;
    let inside = dir.path().join("out.ndjson");
    for (input, output, says) in [
        (
            std::path::PathBuf::from("/etc/passwd"),
            inside.clone(),
            "source.path",
        ),
        (
            dir.path().join("../../etc/hosts"),
            inside.clone(),
            "source.path",
        ),
        (
            support::repo().join("examples/data/payments.ndjson"),
            std::path::PathBuf::from("/tmp/escape.ndjson"),
            "sink.path",
        ),
    ] {
        let toml = pipeline_toml("escape", &input, &output, "tools");
        let (status, answer) = send(
            &app,
            "PUT",
            "/v1/tenants/acme/pipelines/escape",
            Some("acme-operator"),
            None,
            toml.into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }
    let toml = pipeline_toml("escape", &inside, &inside, "/tmp/evil.wasm");
    let (status, answer) = send(
        &app,
        "PUT",
        "/v1/tenants/acme/pipelines/escape",
        Some("acme-operator"),
        None,
        toml.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("registry UDFs"),
        "{answer}"
    );
    // A file naming another tenant is refused, not silently re-owned.
    let toml = format!(
        "tenant = \"globex\"\n{}",
        pipeline_toml("escape", &inside, &inside, "tools")
    );
    let (status, answer) = send(
        &app,
        "PUT",
        "/v1/tenants/acme/pipelines/escape",
        Some("acme-operator"),
        None,
        toml.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("globex"),
        "{answer}"
    );
}

/// A pipeline stopped on request keeps its counters in its status (they
/// used to read 0 after a stop), until it starts again or is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_pipeline_keeps_its_counters() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    publish(&app, "acme-publisher", "acme", "tools", guest()).await;
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, "{\"id\": 1}\n{\"id\": 2}\n{\"id\": 3}\n").unwrap();
    let output = dir.path().join("out.ndjson");
    let toml = pipeline_toml("counted", &input, &output, "tools");
    let uri = "/v1/tenants/acme/pipelines/counted";
    let (status, answer) = send(
        &app,
        "PUT",
        uri,
        Some("acme-operator"),
        None,
        toml.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let mut seen = Value::Null;
    for _ in 0..200 {
        seen = get(&app, uri, "acme-viewer").await.1;
        if seen["records_out"] == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen["records_out"], 3, "{seen}");
    let (status, _) = send(
        &app,
        "POST",
        &format!("{uri}/stop"),
        Some("acme-operator"),
        None,
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, after) = get(&app, uri, "acme-viewer").await;
    assert_eq!(after["state"], "stopped", "{after}");
    assert_eq!(after["records_in"], 3, "{after}");
    assert_eq!(after["records_out"], 3, "{after}");
    assert_eq!(after["udfs"].as_array().map(Vec::len), Some(5), "{after}");
}

/// Deployed pipelines use only the brokers, topic prefix and librdkafka
/// properties their tenant's policy allows; SQL topic tables too.
#[tokio::test]
async fn deployed_kafka_pipelines_follow_the_tenants_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy::from_toml(
        "[tenants.acme]\nkafka_brokers = [\"127.0.0.1:9092\"]\ntopic_prefix = \"acme.\"\n",
    )
    .unwrap();
    let state = AppState::open(
        config(dir.path(), 1 << 20),
        support::sandbox().clone(),
        Arc::new(Tenants::new(policy)),
    )
    .unwrap();
    let app = router(Arc::new(state));
    let pipeline = |brokers: &str, topic: &str, group: &str, property: &str| {
        format!(
            "name = \"k\"\nsql = \"SELECT * FROM source\"\n[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\ngroup = \"{group}\"\nformat = \"raw\"\n{property}\n[sink]\nkind = \"stdout\"\n[errors]\npolicy = \"skip\"\n"
        )
    };
    for (toml, says) in [
        (
            pipeline("10.0.0.1:9092", "acme.in", "acme.g", ""),
            "kafka_brokers",
        ),
        (
            pipeline("127.0.0.1:9092", "globex.orders", "acme.g", ""),
            "topic_prefix",
        ),
        (
            pipeline("127.0.0.1:9092", "acme.in", "globex.g", ""),
            "source.group",
        ),
        (
            pipeline(
                "127.0.0.1:9092",
                "acme.in",
                "acme.g",
                "properties = { \"plugin.library.paths\" = \"/tmp/x.so\" }",
            ),
            "plugin.library.paths",
        ),
    ] {
        let (status, answer) = send(
            &app,
            "PUT",
            "/v1/tenants/acme/pipelines/k",
            Some("acme-operator"),
            None,
            toml.into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }
    // Another tenant's policy names no brokers: none may be used (the
    // server never connects wherever a tenant says by default).
    let (status, answer) = send(
        &app,
        "PUT",
        "/v1/tenants/globex/pipelines/k",
        Some("globex-operator"),
        None,
        pipeline("127.0.0.1:9092", "in", "g", "").into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("`defaults.kafka_brokers` is empty"),
        "{answer}"
    );
    let body = serde_json::json!({
        "sql": "SELECT 1 FROM t",
        "topics": {"t": {"brokers": "127.0.0.1:9092", "topic": "globex.orders", "format": "raw"}}
    });
    let (status, answer) = send(
        &app,
        "POST",
        "/v1/tenants/acme/sql",
        Some("acme-operator"),
        None,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    // And SQL cannot write files.
    let body = serde_json::json!({"sql": "COPY (SELECT 1) TO '/tmp/weir-copy-test.csv'"});
    let (status, answer) = send(
        &app,
        "POST",
        "/v1/tenants/acme/sql",
        Some("acme-operator"),
        None,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(!std::path::Path::new("/tmp/weir-copy-test.csv").exists());
}

/// `kill -HUP` makes `weir serve` re-read its policy and keep serving (it
/// used to die of the signal).
#[test]
fn sighup_reloads_the_policy_and_weir_serve_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[serve]\nlisten = \"{addr}\"\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[tenants.acme]\ncpu_ms_per_batch = 1000\n").unwrap();
    let log = dir.path().join("serve.log");
    let mut weir = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .args(["--policy", policy.to_str().unwrap()])
            .env("WEIR_CACHE_DIR", support::cache_dir())
            .env("WEIR_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&addr);
    std::fs::write(&policy, "[tenants.acme]\ncpu_ms_per_batch = 500\n").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &weir.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("policy reloaded")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload logged: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        weir.0.try_wait().unwrap().is_none(),
        "weir serve is still running"
    );
    let (status, body) = http(&addr, "GET", "/healthz", &[], b"");
    assert_eq!(status, 200, "{body}");
}

/// A pipeline file's secrets (`sasl.password`, …) are stored but never
/// shown: every role of the tenant may read the file back.
#[tokio::test]
async fn secrets_in_a_pipeline_file_are_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy::from_toml("[defaults]\nkafka_brokers = [\"127.0.0.1:9\"]\n").unwrap();
    let state = AppState::open(
        config(dir.path(), 1 << 20),
        support::sandbox().clone(),
        Arc::new(Tenants::new(policy)),
    )
    .unwrap();
    let app = router(Arc::new(state));
    let toml = "name = \"k\"\nsql = \"SELECT * FROM source\"\n[source]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9\"\ntopics = [\"in\"]\ngroup = \"g\"\nformat = \"raw\"\n[source.properties]\n\"sasl.username\" = \"acme\"\n\"sasl.password\" = \"hunter2\"\n[sink]\nkind = \"stdout\"\n[errors]\npolicy = \"skip\"\n";
    let (status, answer) = send(
        &app,
        "PUT",
        "/v1/tenants/acme/pipelines/k",
        Some("acme-operator"),
        None,
        toml.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    for token in ["acme-viewer", "acme-admin"] {
        let (status, st) = get(&app, "/v1/tenants/acme/pipelines/k", token).await;
        assert_eq!(status, StatusCode::OK, "{st}");
        let config = st["config"].as_str().unwrap();
        assert!(
            !config.contains("hunter2")
                && config.contains("<redacted>")
                && config.contains("sasl.username"),
            "{config}"
        );
    }
    let (status, _) = delete(&app, "/v1/tenants/acme/pipelines/k", "acme-operator").await;
    assert_eq!(status, StatusCode::OK);
}

/// A query that would build a terabyte string (issue 12 #2) is refused
/// with a 4xx naming the key — at plan time, where DataFusion folds
/// constants outside any memory pool — and the process lives on.
#[tokio::test]
async fn string_bombs_in_sql_are_refused_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    for sql in [
        "SELECT length(repeat(arrow_cast('x', 'LargeUtf8'), 1000000000000)) AS n",
        "SELECT length(repeat('x', 2147483647)) AS n",
        "SELECT length(lpad('x', 2147483647)) AS n",
        // 4 bytes per padding character: 1 GiB.
        "SELECT length(lpad('', 268435456, '😀')) AS n",
        // Each argument is small; the nested replaces would build 64 GiB
        // (the inner one 1 MiB, cheap even in a debug build on a busy CI).
        "SELECT length(replace(replace(repeat('x', 1024), 'x', repeat('y', 1024)), 'y', repeat('z', 65536))) AS n",
    ] {
        let body = serde_json::json!({ "sql": sql });
        let (status, answer) = send(
            &app,
            "POST",
            "/v1/tenants/acme/sql",
            Some("acme-operator"),
            None,
            body.to_string().into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{sql}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains("raise `defaults.query_memory_bytes`"),
            "{sql}: {error}"
        );
    }
    // A reasonable one still answers.
    let body = serde_json::json!({ "sql": "SELECT length(repeat('ab', 1000)) AS n" });
    let (status, answer) = send(
        &app,
        "POST",
        "/v1/tenants/acme/sql",
        Some("acme-operator"),
        None,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["rows"][0]["n"], 2000);
}

/// Issue 12: a tenant in a URL is a name — `*` (every tenant, in a token)
/// is refused, so no API call can mint a token for every tenant — and the
/// librdkafka properties that size buffers are bounded.
#[tokio::test]
async fn star_is_not_a_tenant_and_buffer_properties_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy::from_toml("[defaults]\nkafka_brokers = [\"127.0.0.1:9\"]\n").unwrap();
    let state = AppState::open(
        config(dir.path(), 1 << 20),
        support::sandbox().clone(),
        Arc::new(Tenants::new(policy)),
    )
    .unwrap();
    let app = router(Arc::new(state));
    let (status, answer) = send(
        &app,
        "POST",
        "/v1/tenants/*/tokens",
        Some("root"),
        None,
        br#"{"name": "everything", "role": "admin"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    // A tenant that is not UTF-8 never falls back to the token's (`*`).
    for uri in ["/v1/tenants/%FF/tokens", "/v1/tenants/%FF/tokens?tenant=x"] {
        let (status, answer) = send(
            &app,
            "POST",
            uri,
            Some("root"),
            None,
            br#"{"name": "everything", "role": "admin"}"#.to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {answer}");
    }
    let toml = "name = \"k\"\nsql = \"SELECT * FROM source\"\n[source]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9\"\ntopics = [\"in\"]\ngroup = \"g\"\nformat = \"raw\"\n[source.properties]\n\"queued.max.messages.kbytes\" = \"2097151\"\n[sink]\nkind = \"stdout\"\n[errors]\npolicy = \"skip\"\n";
    let (status, answer) = send(
        &app,
        "PUT",
        "/v1/tenants/acme/pipelines/k",
        Some("acme-operator"),
        None,
        toml.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("queued.max.messages.kbytes"),
        "{answer}"
    );
}

/// Sends four requests of tenant `acme` that spin in a guest, then, while
/// every one of them still runs, checks that `/healthz` and a request of
/// tenant `globex` are answered; returns the four answers.
async fn spin_four_and_probe(
    app: &Router,
    uri: &str,
    content_type: Option<&'static str>,
    body: &str,
) -> Vec<(StatusCode, Value)> {
    let spinning: Vec<_> = (0..4)
        .map(|_| {
            let (app, uri, body) = (app.clone(), uri.to_string(), body.to_string());
            tokio::spawn(async move {
                send(
                    &app,
                    "POST",
                    &uri,
                    Some("acme-operator"),
                    content_type,
                    body.into_bytes(),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, _) = send(app, "GET", "/healthz", None, None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, other) = get(app, "/v1/tenants/globex/udfs", "globex-viewer").await;
    assert_eq!(status, StatusCode::OK, "{other}");
    assert!(
        spinning.iter().all(|t| !t.is_finished()),
        "answered while every spinning request was still running"
    );
    let mut answers = Vec::new();
    for t in spinning {
        answers.push(t.await.unwrap());
    }
    answers
}

/// Issue 12 #1: staged runs of a spinning module run off the async
/// workers, so the server stays responsive while they spin: `/healthz`
/// and another tenant's request are answered while every one of them is
/// still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_staged_runs_do_not_freeze_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    publish(&app, "acme-publisher", "acme", "tools", guest()).await;
    publish(&app, "globex-publisher", "globex", "tools", guest()).await;
    let rows: Vec<Value> = (0..12)
        .map(|_| serde_json::json!([1_000_000_000_000i64]))
        .collect();
    let body = serde_json::json!({ "function": "spin", "rows": rows }).to_string();
    let spinning = spin_four_and_probe(
        &app,
        "/v1/tenants/acme/udfs/tools/versions/latest/try",
        None,
        &body,
    )
    .await;
    for (status, out) in spinning {
        assert_eq!(status, StatusCode::OK, "{out}");
        assert_eq!(out["errors"].as_array().unwrap().len(), 12, "{out}");
    }
}

/// Issue 12 (guest executor): SQL queries whose UDF spins run on the guest
/// threads, not on the threads that answer the API: with every query still
/// spinning, `/healthz` and another tenant's request are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_sql_queries_do_not_freeze_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    publish(&app, "acme-publisher", "acme", "tools", guest()).await;
    publish(&app, "globex-publisher", "globex", "tools", guest()).await;
    let body = serde_json::json!({
        "sql": "SELECT spin(v) FROM t",
        "udfs": ["tools"],
        "tables": {"t": [{"v": 1_000_000_000_000i64}]},
    })
    .to_string();
    let spinning = spin_four_and_probe(
        &app,
        "/v1/tenants/acme/sql",
        Some("application/json"),
        &body,
    )
    .await;
    for (status, out) in spinning {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{out}");
        assert!(out.to_string().contains("ran out of CPU"), "{out}");
    }
}

/// Issue 12 #8: unauthenticated requests cannot grow the audit log without
/// bound (10 at once, then one per second are written; all are counted).
#[tokio::test]
async fn anonymous_requests_are_audited_within_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    for i in 0..300 {
        let uri = format!("/v1/tenants/acme/udfs/{}", "x".repeat(i % 50 + 1));
        let (status, _) = send(&app, "GET", &uri, None, None, vec![]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default();
    let anonymous = audit
        .lines()
        .filter(|l| l.contains("\"anonymous\""))
        .count();
    assert!(
        (10..=20).contains(&anonymous),
        "{anonymous} anonymous records"
    );
}

/// Issue 12 #8: `serve.metrics_listen` moves `/metrics` (every tenant's
/// pipeline and UDF names) off the API's address.
#[tokio::test]
async fn metrics_can_move_off_the_api_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1 << 20);
    config.metrics_listen = Some(format!("127.0.0.1:{}", free_port()));
    let state = AppState::open(
        config,
        support::sandbox().clone(),
        Arc::new(Tenants::new(Policy::default())),
    )
    .unwrap();
    let app = router(Arc::new(state));
    let (status, _) = send(&app, "GET", "/metrics", None, None, vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, doc) = send(&app, "GET", "/openapi.json", None, None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/healthz"].is_object(), "{doc}");
    assert!(doc["paths"]["/metrics"].is_null(), "{doc}");
}

/// Issue 12 #5: `{tenant}` in `serve.file_roots` gives each tenant a folder
/// of its own: one tenant's pipeline cannot read another's dead letters.
#[tokio::test]
async fn tenant_file_roots_keep_tenants_out_of_each_others_files() {
    let dir = tempfile::tempdir().unwrap();
    for t in ["acme", "globex"] {
        std::fs::create_dir_all(dir.path().join("files").join(t)).unwrap();
        std::fs::write(
            dir.path().join("files").join(t).join("in.ndjson"),
            "{\"id\":1}\n",
        )
        .unwrap();
    }
    let mut config = config(dir.path(), 1 << 20);
    config.file_roots = vec![dir.path().join("files/{tenant}")];
    let state = AppState::open(
        config,
        support::sandbox().clone(),
        Arc::new(Tenants::new(Policy::default())),
    )
    .unwrap();
    let app = router(Arc::new(state));
    publish(&app, "acme-publisher", "acme", "tools", guest()).await;
    let files = dir.path().join("files");
    let toml = |input: &str, output: &str| {
        pipeline_toml("mine", &files.join(input), &files.join(output), "tools")
    };
    // Its own folder: allowed.
    let (status, answer) = send(
        &app,
        "PUT",
        "/v1/tenants/acme/pipelines/mine",
        Some("acme-operator"),
        None,
        toml("acme/in.ndjson", "acme/out.ndjson").into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    // Another tenant's folder: refused, reading or writing.
    for (input, output) in [
        ("globex/in.ndjson", "acme/out2.ndjson"),
        ("acme/in.ndjson", "globex/out.ndjson"),
    ] {
        let (status, answer) = send(
            &app,
            "PUT",
            "/v1/tenants/acme/pipelines/theirs",
            Some("acme-operator"),
            None,
            toml(input, output)
                .replace("name = \"mine\"", "name = \"theirs\"")
                .into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{input} {output}: {answer}");
    }
    let (status, _) = delete(&app, "/v1/tenants/acme/pipelines/mine", "acme-operator").await;
    assert_eq!(status, StatusCode::OK);
}

/// A published WebAssembly aggregate answers in the SQL endpoint (under the
/// tenant's limits, as the request's own session) and in a staged run.
#[tokio::test]
async fn published_aggregates_work_in_sql_and_staged_runs() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let stats = std::fs::read(support::module_path("stats")).unwrap();
    let (status, out) = publish(&app, "acme-publisher", "acme", "stats", stats).await;
    assert_eq!(status, StatusCode::CREATED, "{out}");
    assert!(
        out["functions"]
            .to_string()
            .contains("median(float64) -> float64 [aggregate, state: binary]"),
        "{out}"
    );
    let body = serde_json::json!({
        "sql": "SELECT g, median(x) AS med, top3(x) AS top FROM t GROUP BY g ORDER BY g",
        "udfs": ["stats@1"],
        "tables": {"t": [{"g": 1, "x": 3.0}, {"g": 1, "x": 1.0}, {"g": 2, "x": 5.0}, {"g": 1, "x": 2.0}]},
    });
    let (status, answer) = send(
        &app,
        "POST",
        "/v1/tenants/acme/sql",
        Some("acme-operator"),
        Some("application/json"),
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["rows"],
        serde_json::json!([{"g": 1, "med": 2.0, "top": "[3,2,1]"}, {"g": 2, "med": 5.0, "top": "[5]"}])
    );
    let (status, out) = send(
        &app,
        "POST",
        "/v1/tenants/acme/udfs/stats/versions/latest/try",
        Some("acme-operator"),
        Some("application/json"),
        serde_json::json!({"function": "median", "rows": [[4.0], [1.0], [null], [2.0]]})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["outputs"], serde_json::json!([2.0]), "{out}");
    assert!(out["errors"].as_array().unwrap().is_empty(), "{out}");
}

/// A service whose tenant acme has a 200 ms CPU budget per batch and
/// globex 1 MiB of guest memory (the inline-function tests).
fn tight_tenants_app(dir: &Path) -> Router {
    let tenants = Arc::new(Tenants::new(
        Policy::from_toml(
            "[tenants.acme]\ncpu_ms_per_batch = 200\n[tenants.globex]\nmemory_bytes = 1048576\n",
        )
        .unwrap(),
    ));
    let state = AppState::open(config(dir, 1 << 20), support::sandbox().clone(), tenants).unwrap();
    router(Arc::new(state))
}

/// Issue 31: `CREATE FUNCTION … LANGUAGE python` in the SQL endpoint, like
/// JavaScript: the request's session only, under the tenant's limits (the
/// CPU budget and the memory in force name their keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_functions_created_in_a_request_live_in_that_request_only() {
    let dir = tempfile::tempdir().unwrap();
    let app = tight_tenants_app(dir.path());
    let sql = |tenant: &'static str, text: &str| {
        let body = serde_json::json!({ "sql": text }).to_string().into_bytes();
        let path = format!("/v1/tenants/{tenant}/sql");
        let token = format!("{tenant}-operator");
        let app = app.clone();
        async move {
            send(
                &app,
                "POST",
                &path,
                Some(&token),
                Some("application/json"),
                body,
            )
            .await
        }
    };
    let (status, answer) = sql(
        "acme",
        "CREATE FUNCTION py_twice(x BIGINT) RETURNS BIGINT LANGUAGE python AS $$ def py_twice(x): return 2 * x $$; \
         SELECT py_twice(21) AS v",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["rows"], serde_json::json!([{"v": 42}]), "{answer}");
    // The next request does not see it.
    let (status, answer) = sql("acme", "SELECT py_twice(1)").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer.to_string().contains("py_twice"), "{answer}");
    // A spinning function is stopped by the tenant's CPU budget.
    let (status, answer) = sql(
        "acme",
        "CREATE FUNCTION py_spin(x BIGINT) RETURNS BIGINT LANGUAGE python AS $$\nwhile True:\n    pass\n$$; \
         SELECT py_spin(v) FROM (VALUES (1), (2)) t(v)",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let text = answer.to_string();
    assert!(
        text.contains("ran out of CPU") && text.contains("tenants.acme.cpu_ms_per_batch"),
        "{answer}"
    );
    // The interpreter runs under the tenant's memory: globex's 1 MiB cannot
    // hold it.
    let (status, answer) = sql(
        "globex",
        "CREATE FUNCTION py_one(x BIGINT) RETURNS BIGINT LANGUAGE python AS $$ return 1 $$; SELECT py_one(1)",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer.to_string().contains("tenants.globex.memory_bytes"),
        "{answer}"
    );
}

/// Issue 16: `CREATE FUNCTION … LANGUAGE javascript` before a query in the
/// SQL endpoint adds the function to that request's session only, loaded
/// under the tenant's limits (the CPU budget in force names its key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_functions_created_in_a_request_live_in_that_request_only() {
    let dir = tempfile::tempdir().unwrap();
    let app = tight_tenants_app(dir.path());
    let sql = |text: &str| {
        let body = serde_json::json!({ "sql": text }).to_string().into_bytes();
        send(
            &app,
            "POST",
            "/v1/tenants/acme/sql",
            Some("acme-operator"),
            Some("application/json"),
            body,
        )
    };
    let (status, answer) = sql("CREATE FUNCTION js_twice(x BIGINT) RETURNS BIGINT LANGUAGE javascript AS $$ return 2 * x; $$; \
             SELECT js_twice(21) AS v")
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["rows"], serde_json::json!([{"v": 42}]), "{answer}");
    // The next request does not see it.
    let (status, answer) = sql("SELECT js_twice(1)").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer.to_string().contains("js_twice"), "{answer}");
    // A spinning function is stopped by the tenant's CPU budget.
    let (status, answer) = sql("CREATE FUNCTION js_spin(x BIGINT) RETURNS BIGINT LANGUAGE javascript AS $$ for (;;) {} $$; \
             SELECT js_spin(v) FROM (VALUES (1), (2)) t(v)")
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let text = answer.to_string();
    assert!(
        text.contains("ran out of CPU") && text.contains("tenants.acme.cpu_ms_per_batch"),
        "{answer}"
    );
    // Other DDL stays closed.
    let (status, answer) = sql("CREATE TABLE x AS SELECT 1").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    // The compiler itself runs under the tenant's limits: globex's 1 MiB
    // cannot hold it.
    let body = serde_json::json!({
        "sql": "CREATE FUNCTION js_one(x BIGINT) RETURNS BIGINT LANGUAGE javascript AS $$ return 1; $$; SELECT js_one(1)"
    });
    let (status, answer) = send(
        &app,
        "POST",
        "/v1/tenants/globex/sql",
        Some("globex-operator"),
        Some("application/json"),
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let text = answer.to_string();
    assert!(
        text.contains("javascript compiler") && text.contains("tenants.globex.memory_bytes"),
        "{answer}"
    );
}
