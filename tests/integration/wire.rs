//! The PostgreSQL wire protocol of `weir serve` (issue 30), with the real
//! `psql` (Debian's postgresql-client): user = tenant, password = an API
//! token; the tenant's UDFs by name; errors with their SQLSTATE; another
//! tenant's UDFs invisible.

use std::process::Command;

use weir::serve::hash_token;

use crate::serve::{Killed, free_port, guest, http, wait_for};
use crate::support;

/// The `psql` command with `args`, as tenant `user` with password `token`
/// (unaligned, tuples only, stopping at the first error, SQLSTATEs shown).
fn psql_command(port: u16, user: &str, token: &str, args: &[&str]) -> Command {
    let mut command = Command::new("psql");
    command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-d",
            "weir",
        ])
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
        ])
        .args(args)
        .env("PGPASSWORD", token)
        .env("PGCONNECT_TIMEOUT", "10");
    command
}

/// `psql` with `args`, as tenant `user` with password `token`:
/// (exit success, stdout, stderr).
fn psql(port: u16, user: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = psql_command(port, user, token, args)
        .output()
        .expect("psql runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Publishes `tests/tenant/guest.wat` as tenant acme's UDF `tools`
/// (token `acme-secret`).
fn publish_tools(addr: &str) {
    let (status, body) = http(
        addr,
        "POST",
        "/v1/tenants/acme/udfs/tools",
        &[
            ("Authorization", "Bearer acme-secret"),
            ("Content-Type", "application/wasm"),
        ],
        &guest(),
    );
    assert_eq!(status, 201, "{body}");
}

/// Whether ADBC's Flight SQL driver and pyarrow import.
fn has_adbc() -> bool {
    Command::new("python3")
        .args(["-c", "import adbc_driver_flightsql, pyarrow"])
        .status()
        .is_ok_and(|s| s.success())
}

/// What `python3 args` printed: one JSON value (the client scripts' way
/// of answering); its output in the failure if it did not succeed.
fn python_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3").args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap()
}

/// `weir serve` with `[serve]` lines `extra` and a token per `(name,
/// token, tenant, role)`; answers once its HTTP listener is up.
fn serve_with(
    dir: &std::path::Path,
    extra: &str,
    tokens: &[(&str, &str, &str, &str)],
) -> (Killed, String) {
    serve_with_policy(dir, extra, tokens, "")
}

/// [`serve_with`], the tenants' policy file being `policy`.
fn serve_with_policy(
    dir: &std::path::Path,
    extra: &str,
    tokens: &[(&str, &str, &str, &str)],
    policy: &str,
) -> (Killed, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut text = format!(
        "[serve]\nlisten = \"{addr}\"\ndata_dir = \"{}\"\n{extra}",
        dir.join("data").display()
    );
    for (name, token, tenant, role) in tokens {
        text += &format!(
            "[[serve.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\ntenant = \"{tenant}\"\nrole = \"{role}\"\n",
            hash_token(token)
        );
    }
    let config = dir.join("weir.toml");
    std::fs::write(&config, text).unwrap();
    let policy_file = dir.join("policy.toml");
    std::fs::write(&policy_file, policy).unwrap();
    let weir = Killed(
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("WEIR_POLICY", &policy_file)
            .env("WEIR_CACHE_DIR", support::cache_dir())
            // glibc's mmap threshold fixed: the server's resident memory
            // then measures what it holds, not the allocator's caching.
            .env("MALLOC_MMAP_THRESHOLD_", "131072")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&addr);
    (weir, addr)
}

#[test]
fn psql_runs_a_tenants_udfs_with_a_token() {
    let has_psql = Command::new("psql").arg("--version").output().is_ok();
    if !support::require_or_skip("psql (apt-get install postgresql-client)", has_psql) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pg_port = free_port();
    let (_weir, addr) = serve_with(
        dir.path(),
        &format!(
            "postgres_listen = \"127.0.0.1:{pg_port}\"\nallow_insecure_password = true\npostgres_max_connections = 3\n"
        ),
        &[
            ("ci", "acme-secret", "acme", "publisher"),
            ("ci", "globex-secret", "globex", "publisher"),
            ("look", "acme-viewer", "acme", "viewer"),
            ("root", "root-secret", "*", "admin"),
        ],
    );
    wait_for(&format!("127.0.0.1:{pg_port}"));
    // Ready once the script languages' runtimes are compiled
    // (`serve.warm_languages`): the Python function below then loads them
    // from the code cache instead of compiling within its deadline.
    let ready_by = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while http(&addr, "GET", "/readyz", &[], b"").0 != 200 {
        assert!(
            std::time::Instant::now() < ready_by,
            "not ready within 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    publish_tools(&addr);

    // The tenant's UDF by name, in a query with built-ins.
    let (ok, out, err) = psql(
        pg_port,
        "acme",
        "acme-secret",
        &[
            "-c",
            "SELECT double(x) AS d, x > 1 AS big FROM (VALUES (CAST(1 AS BIGINT)), (2), (NULL)) AS t(x) ORDER BY x",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "2|f\n4|t\n|\n", "{err}");

    // A Python function created for the statement (issue 31).
    let (ok, out, err) = psql(
        pg_port,
        "acme",
        "acme-secret",
        &[
            "-c",
            "CREATE FUNCTION py_shout(s VARCHAR) RETURNS VARCHAR LANGUAGE python AS $$ return s.upper() + '!' $$; SELECT py_shout('straße')",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.ends_with("STRASSE!\n"), "{out}{err}");

    // Ctrl-C: psql sends a cancel request, and the statement stops at once
    // with 57014: one spinning while it is planned (`py_spin(1)` is folded
    // to a constant: not after the 1 s CPU budget with "ran out of CPU"),
    // and one whose 500 MB of rows are streaming (not at its last row).
    for (statement, after_ms) in [
        (
            "CREATE FUNCTION py_spin(x BIGINT) RETURNS BIGINT LANGUAGE python AS $$\nwhile True:\n    pass\n$$; SELECT py_spin(1)",
            400,
        ),
        (
            "SELECT x, repeat('x', 1000) AS pad FROM generate_series(1, 500000) AS t(x)",
            1000,
        ),
    ] {
        let child = psql_command(pg_port, "acme", "acme-secret", &["-c", statement])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(after_ms));
        let signalled = std::time::Instant::now();
        let killed = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let out = child.wait_with_output().unwrap();
        let took = signalled.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("57014"),
            "{statement}: {err}"
        );
        assert!(
            took < std::time::Duration::from_millis(900),
            "{statement}: the cancelled statement answered after {took:?}: {err}"
        );
    }

    // A syntax error and an unknown function, with their SQLSTATEs.
    let (ok, _, err) = psql(pg_port, "acme", "acme-secret", &["-c", "SELEC 1"]);
    assert!(!ok && err.contains("42601"), "{err}");
    let (ok, _, err) = psql(pg_port, "acme", "acme-secret", &["-c", "SELECT nope(1)"]);
    assert!(!ok && err.contains("42883"), "{err}");

    // Another tenant does not see acme's UDF.
    let (ok, _, err) = psql(
        pg_port,
        "globex",
        "globex-secret",
        &["-c", "SELECT double(CAST(1 AS BIGINT))"],
    );
    assert!(!ok && err.contains("42883"), "{err}");

    // psql's describe commands read the tenant's own catalog: `\df` its
    // functions with their types, `\dt` no tables, `\dn` and `\l` its
    // schema and database; `SHOW` answers what
    // the connection was told at startup. Another tenant's functions are
    // not in it.
    let (ok, out, err) = psql(pg_port, "acme", "acme-secret", &["-c", "\\df"]);
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l == "public|double|bigint|bigint|func"),
        "{out}"
    );
    let (ok, out, err) = psql(pg_port, "acme", "acme-secret", &["-c", "\\df doub*"]);
    assert!(ok, "{err}");
    assert_eq!(out, "public|double|bigint|bigint|func\n", "{err}");
    let (ok, out, err) = psql(pg_port, "globex", "globex-secret", &["-c", "\\df"]);
    assert!(ok && out.is_empty(), "{out}{err}");
    let (ok, out, err) = psql(pg_port, "acme", "acme-secret", &["-c", "\\dt"]);
    assert!(
        ok && out.is_empty() && err.contains("Did not find any relations"),
        "{out}{err}"
    );
    // `\dn` its one schema, `\l` its one database.
    let (ok, out, err) = psql(pg_port, "acme", "acme-secret", &["-c", "\\dn"]);
    assert!(ok && out == "public|acme\n", "{out}{err}");
    let (ok, out, err) = psql(pg_port, "acme", "acme-secret", &["-c", "\\l"]);
    assert!(ok && out.starts_with("weir|acme|UTF8|"), "{out}{err}");
    let (ok, out, err) = psql(pg_port, "acme", "acme-secret", &["-c", "SHOW TimeZone"]);
    assert!(ok && out == "Etc/UTC\n", "{out}{err}");
    let (ok, out, err) = psql(
        pg_port,
        "acme",
        "acme-secret",
        &["-c", "SHOW transaction isolation level"],
    );
    assert!(ok && out == "read committed\n", "{out}{err}");
    let (ok, _, err) = psql(
        pg_port,
        "acme",
        "acme-secret",
        &["-c", "SHOW shared_buffers"],
    );
    assert!(!ok && err.contains("42704"), "{err}");

    // A token is its tenant's only, and its role must allow SQL.
    let (ok, _, err) = psql(pg_port, "globex", "acme-secret", &["-c", "SELECT 1"]);
    // (psql prints no SQLSTATE for a refused connection.)
    assert!(!ok && err.contains("tenant not accessible"), "{err}");
    let (ok, _, err) = psql(pg_port, "acme", "acme-viewer", &["-c", "SELECT 1"]);
    assert!(
        !ok && err.contains("may not run staged runs or SQL"),
        "{err}"
    );
    // The user is one tenant's name: an every-tenant token must pick one.
    let (ok, _, err) = psql(pg_port, "*", "root-secret", &["-c", "SELECT 1"]);
    assert!(!ok && err.contains("invalid tenant"), "{err}");
    let (ok, out, err) = psql(pg_port, "acme", "root-secret", &["-c", "SELECT 1"]);
    assert!(ok && out == "1\n", "{err}");
    let (ok, _, err) = psql(pg_port, "acme", "wrong", &["-c", "SELECT 1"]);
    assert!(!ok && err.contains("unknown bearer token"), "{err}");

    // psycopg 3 (PyPI), client-side binding (the simple protocol) and its
    // default server-side binding (the extended protocol): every type weir
    // returns, in text and binary, parameters of every type, prepared
    // statements, and the SQLSTATE as psycopg's exception class.
    let has_psycopg = Command::new("python3")
        .args(["-c", "import psycopg"])
        .status()
        .is_ok_and(|s| s.success());
    if support::require_or_skip("psycopg (pip install 'psycopg[binary]')", has_psycopg) {
        // Its last statement returns 300 000 rows of 1 000 bytes (300 MB as
        // text) while the server's resident memory is sampled: the rows
        // stream, the server never holds the result. (The server runs with
        // glibc's mmap threshold fixed, below: with its dynamic threshold,
        // freed batches stay resident and RSS would measure the allocator.)
        let rss = |pid: u32| -> u64 {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0)
        };
        let server = _weir.0.id();
        let before = rss(server);
        let client = Command::new("python3")
            .arg(support::repo().join("tests/clients/psycopg_types.py"))
            .args([&pg_port.to_string(), "acme", "acme-secret", "300000"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let sampling = sampling.clone();
            std::thread::spawn(move || {
                let mut most = 0;
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    most = most.max(rss(server));
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                most
            })
        };
        let out = client.wait_with_output().unwrap();
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let peak = sampler.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(
            got["row"],
            serde_json::json!([
                42,
                "it's",
                1.5,
                true,
                "2026-01-01T10:00:00",
                "2026-01-02",
                "0102",
                null
            ]),
            "{got}"
        );
        // int8, text, float8, bool, timestamp, date, bytea, int8 (by OID).
        assert_eq!(
            got["types"],
            serde_json::json!([20, 25, 701, 16, 1114, 1082, 17, 20])
        );
        assert_eq!(got["rows"], 5000, "{got}");
        assert_eq!(
            got["error"],
            serde_json::json!(["UndefinedFunction", "42883"]),
            "{got}"
        );
        // More rows than the HTTP endpoint returns: every one, streamed.
        assert_eq!(got["many"], 20000, "{got}");
        assert_eq!(got["large"], serde_json::json!([300000, 300000]), "{got}");
        // 300 MB of rows went through; the server grew by its working set
        // only (a few batches of 8 192 rows, 8 MB each as Arrow, and their
        // encoding: ~100 MB in a debug build, the same at 50 000 rows).
        let grew_mb = peak.saturating_sub(before) / 1024;
        assert!(
            grew_mb < 150,
            "the server's memory grew by {grew_mb} MB while 300 MB of rows streamed"
        );
        // The extended protocol: parameters typed by the client where the
        // statement does not type them (`$2 AS s`), by the statement where
        // it does (`x > $8`).
        assert_eq!(
            got["ext_types"],
            serde_json::json!([20, 25, 701, 16, 1082, 17, 1114, 20]),
            "{got}"
        );
        let row = |x: i64| {
            serde_json::json!([
                42,
                "it's",
                1.5,
                true,
                "2026-01-02",
                "0102",
                "2026-01-01T10:00:00",
                x
            ])
        };
        assert_eq!(
            got["ext_rows"],
            serde_json::json!([row(2), row(3)]),
            "{got}"
        );
        // Binary results: int8, text, float8, float4, bool, int4, int2,
        // date, timestamp, bytea, numeric, and a NULL.
        assert_eq!(
            got["binary_types"],
            serde_json::json!([20, 25, 701, 700, 16, 23, 21, 1082, 1114, 17, 1700, 20]),
            "{got}"
        );
        assert_eq!(
            got["binary_row"],
            serde_json::json!([
                42,
                "ä",
                1.5,
                2.5,
                true,
                7,
                3,
                "2026-01-02",
                "2026-01-01T10:00:00",
                "0102",
                "-12.345",
                null
            ]),
            "{got}"
        );
        assert_eq!(got["prepared"], serde_json::json!([0, 2, 4]), "{got}");
        assert_eq!(
            got["ext_error"],
            serde_json::json!(["UndefinedFunction", "42883"]),
            "{got}"
        );
        assert_eq!(
            got["bad_value"],
            serde_json::json!(["InvalidTextRepresentation", "22P02", true]),
            "{got}"
        );
    }

    if has_psycopg {
        // At most `postgres_max_connections` (3 here) are open at once; one
        // more is closed at once, and a place is free again once one closes.
        let held = Command::new("python3")
            .args(["-c", &format!(
                "import psycopg\n\
                 c = lambda: psycopg.connect(host='127.0.0.1', port={pg_port}, user='acme', password='acme-secret', dbname='weir', connect_timeout=5)\n\
                 held = [c() for _ in range(3)]\n\
                 try:\n    c(); print('fourth connected')\n\
                 except psycopg.OperationalError:\n    print('fourth refused')\n\
                 held.pop().close()\n\
                 import time; time.sleep(0.5)\n\
                 c().close(); print('fifth connected')\n"
            )])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&held.stdout);
        assert_eq!(
            text,
            "fourth refused\nfifth connected\n",
            "{}",
            String::from_utf8_lossy(&held.stderr)
        );
    }

    // Every statement and login is in the audit log.
    let audit = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"object\":\"sql query (postgres)\""),
        "{audit}"
    );
    assert!(
        audit.contains("\"object\":\"postgres login\",\"decision\":\"denied\""),
        "{audit}"
    );
}

/// Cleartext tokens off loopback, or without the operator's consent, are
/// refused at start with the key to change; so is half a TLS identity.
/// Where Debian's PostgreSQL JDBC driver is (libpostgresql-jdbc-java).
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// A JDBC tool browsing a tenant's database (issue 30: DBeaver, IntelliJ,
/// Metabase go through these `DatabaseMetaData` calls): its schemas, no
/// tables, its own functions only, the types, a prepared statement with a
/// parameter and a UDF, and the SQLSTATE of an unknown function.
#[test]
fn jdbc_browses_a_tenants_catalog() {
    let has_jdbc = Command::new("java").arg("-version").output().is_ok()
        && std::path::Path::new(JDBC_JAR).exists();
    if !support::require_or_skip(
        "java and the PostgreSQL JDBC driver (apt-get install default-jdk-headless libpostgresql-jdbc-java)",
        has_jdbc,
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pg_port = free_port();
    let (_weir, addr) = serve_with(
        dir.path(),
        &format!(
            "postgres_listen = \"127.0.0.1:{pg_port}\"\nallow_insecure_password = true\nwarm_languages = false\n"
        ),
        &[
            ("ci", "acme-secret", "acme", "publisher"),
            ("ci", "globex-secret", "globex", "publisher"),
        ],
    );
    wait_for(&format!("127.0.0.1:{pg_port}"));
    publish_tools(&addr);
    let browse = |tenant: &str, token: &str| -> serde_json::Value {
        let out = Command::new("java")
            .args(["-cp", JDBC_JAR])
            .arg(support::repo().join("tests/clients/JdbcCatalog.java"))
            .args([&pg_port.to_string(), tenant, token])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let acme = browse("acme", "acme-secret");
    let column = |step: &str, i: usize| -> Vec<String> {
        acme[step]
            .as_array()
            .unwrap_or_else(|| panic!("{step}: {}", acme[step]))
            .iter()
            .map(|row| row[i].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(
        acme["session"],
        serde_json::json!([["public", "acme", "weir"]])
    );
    assert_eq!(
        column("schemas", 0),
        ["information_schema", "pg_catalog", "public"]
    );
    assert_eq!(column("catalogs", 0), ["weir"]);
    assert_eq!(acme["tables"], serde_json::json!([]));
    assert_eq!(acme["columns"], serde_json::json!([]));
    assert_eq!(
        column("functions", 2),
        ["double", "grow", "noisy", "spin", "work"]
    );
    assert_eq!(acme["procedures"], serde_json::json!([]));
    let types = column("types", 0);
    for t in ["bool", "int8", "float8", "text", "timestamptz", "numeric"] {
        assert!(types.iter().any(|n| n == t), "{t} not in {types:?}");
    }
    assert_eq!(
        acme["quote_ident"],
        serde_json::json!([["plain", "\"Mixed Case\""]])
    );
    assert_eq!(acme["prepared"], serde_json::json!([["42"]]));
    assert_eq!(acme["unknown"]["sqlstate"], "42883", "{}", acme["unknown"]);
    // Another tenant's catalog lists none of acme's functions.
    let globex = browse("globex", "globex-secret");
    assert_eq!(globex["functions"], serde_json::json!([]), "{globex}");
    assert_eq!(globex["prepared"]["sqlstate"], "42883", "{globex}");
}

/// CPU seconds process `pid` has used (user and system; Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis: utime is the 12th,
    // stime the 13th, in clock ticks (100 per second).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// The CPU the server uses over 1.5 s, starting 300 ms from now: what
/// a guest call still running after its statement ended would burn.
fn cpu_while_idle(pid: u32) -> f64 {
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = cpu_seconds(pid);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    cpu_seconds(pid) - before
}

/// A cancelled statement stops its guest call, not only its answer: with
/// a 20 s CPU budget a spinning UDF would otherwise run on until the
/// statement's deadline, holding a slot and a core nobody waits for.
/// The same when the client of an HTTP query goes away.
#[test]
fn a_cancel_stops_the_guest_call_in_flight() {
    let has_psql = Command::new("psql").arg("--version").output().is_ok();
    if !support::require_or_skip("psql (apt-get install postgresql-client)", has_psql) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pg_port = free_port();
    let (weir, addr) = serve_with_policy(
        dir.path(),
        &format!(
            "postgres_listen = \"127.0.0.1:{pg_port}\"\nallow_insecure_password = true\nwarm_languages = false\n[sandbox]\ncpu_ms_per_batch = 20000\n"
        ),
        &[("ci", "acme-secret", "acme", "publisher")],
        "[defaults]\ncpu_ms_per_batch = 20000\n",
    );
    wait_for(&format!("127.0.0.1:{pg_port}"));
    let pid = weir.0.id();
    publish_tools(&addr);
    let spin = "SELECT spin(x) AS s FROM (VALUES (CAST(1000000000000 AS BIGINT))) AS t(x)";

    // psql's Ctrl-C while the guest spins.
    let child = psql_command(pg_port, "acme", "acme-secret", &["-c", spin])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("57014"), "{err}");
    let used = cpu_while_idle(pid);
    assert!(
        used < 0.5,
        "the server used {used:.2} s of CPU in 1.5 s after the cancel: the guest call spins on"
    );

    // An HTTP client that leaves while its query's guest spins.
    let body = serde_json::json!({"sql": spin, "udfs": ["tools"]}).to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(
        &mut conn,
        format!(
            "POST /v1/tenants/acme/sql HTTP/1.1\r\nHost: weir\r\nAuthorization: Bearer acme-secret\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    drop(conn);
    let used = cpu_while_idle(pid);
    assert!(
        used < 0.5,
        "the server used {used:.2} s of CPU in 1.5 s after its client left: the guest call spins on"
    );

    // The tenant's next statement runs at once (its slot is free).
    let (ok, out, err) = psql(
        pg_port,
        "acme",
        "acme-secret",
        &["-c", "SELECT double(CAST(21 AS BIGINT))"],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "42\n");
}

#[test]
fn postgres_listen_needs_loopback_and_consent() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, says) in [
        (
            "postgres_listen = \"127.0.0.1:1\"\n",
            "allow_insecure_password = true",
        ),
        (
            "postgres_listen = \"0.0.0.0:1\"\nallow_insecure_password = true\n",
            "listen on loopback",
        ),
        // The Flight SQL listener is held to the same rule.
        (
            "flight_sql_listen = \"127.0.0.1:1\"\n",
            "serve.flight_sql_listen = \"127.0.0.1:1\" takes the token as a cleartext password",
        ),
        (
            "flight_sql_listen = \"0.0.0.0:1\"\nallow_insecure_password = true\n",
            "listen on loopback",
        ),
        // TLS: the certificate and its key together, and readable.
        (
            "postgres_listen = \"0.0.0.0:1\"\ntls_cert = \"/nonexistent/cert.pem\"\n",
            "serve.tls_cert and serve.tls_key go together",
        ),
        (
            "postgres_listen = \"0.0.0.0:1\"\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n",
            "serve.tls_cert = \"/nonexistent/cert.pem\": No such file",
        ),
    ] {
        let config = dir.path().join("weir.toml");
        std::fs::write(
            &config,
            format!(
                "[serve]\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n{extra}",
                free_port(),
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("WEIR_CACHE_DIR", support::cache_dir())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{err}");
    }
}

/// ADBC's Flight SQL driver (PyPI `adbc-driver-flightsql`) reads a
/// tenant's query with its UDF as Arrow: with user = tenant and password =
/// a token (the handshake), or a bearer token from the start; prepared
/// statements; the server's description and objects; a wrong token, bad
/// SQL and another tenant's use of the UDF are refused; at most
/// `flight_sql_max_connections` connections are open at once.
#[test]
fn adbc_reads_a_tenants_udfs_over_flight_sql() {
    if !support::require_or_skip(
        "adbc (pip install adbc-driver-flightsql pyarrow)",
        has_adbc(),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flight_port = free_port();
    let (_weir, addr) = serve_with(
        dir.path(),
        &format!(
            "flight_sql_listen = \"127.0.0.1:{flight_port}\"\nallow_insecure_password = true\nwarm_languages = false\nflight_sql_max_connections = 5\n"
        ),
        &[
            ("ci", "acme-secret", "acme", "publisher"),
            ("ci", "globex-secret", "globex", "publisher"),
            ("auditor", "acme-admin", "acme", "admin"),
        ],
    );
    wait_for(&format!("127.0.0.1:{flight_port}"));
    publish_tools(&addr);
    let script = support::repo().join("tests/clients/adbc_flight.py");
    let got = python_json(&[
        script.to_str().unwrap(),
        &flight_port.to_string(),
        "acme",
        "acme-secret",
        "globex",
        "globex-secret",
    ]);
    assert_eq!(
        got["rows"],
        serde_json::json!([{"x": 1, "d": 2}, {"x": 2, "d": 4}, {"x": null, "d": null}]),
        "{got}"
    );
    assert_eq!(got["schema"], serde_json::json!(["x:int64", "d:int64"]));
    // More rows than the HTTP endpoint returns, as Arrow batches.
    assert_eq!(got["many"], 200000, "{got}");
    assert_eq!(got["bearer"], serde_json::json!([{"d": 42}]), "{got}");
    assert_eq!(
        got["prepared_schema"],
        serde_json::json!(["d:int64"]),
        "{got}"
    );
    assert_eq!(
        got["prepared"],
        serde_json::json!([[{"d": 2}, {"d": 4}, {"d": 6}], [{"d": 2}, {"d": 4}, {"d": 6}]]),
        "{got}"
    );
    assert_eq!(
        got["params"],
        serde_json::json!([[{"d": 42, "s": "as bound"}], [{"d": 10, "s": "as bound"}]]),
        "{got}"
    );
    let refused = |key: &str, words: &str| {
        let message = got[key][1].as_str().unwrap_or_default();
        assert!(message.contains(words), "{key}: {got}");
    };
    // The value types the placeholder, and the function refuses it.
    refused(
        "bad_param",
        "udf `double` argument 1 must be int64, got Utf8",
    );
    // What ADBC asks before it queries: the server's description (GetSqlInfo)
    // and its objects: one catalog and schema, no stored table.
    assert_eq!(
        got["info"],
        serde_json::json!({
            "vendor_name": "weir",
            "vendor_version": env!("CARGO_PKG_VERSION"),
            "vendor_arrow_version": "1.3",
        }),
        "{got}"
    );
    assert_eq!(got["table_types"], serde_json::json!(["TABLE", "VIEW"]));
    let objects = &got["objects"];
    assert_eq!(objects[0]["catalog_name"], "datafusion", "{got}");
    let schemas = &objects[0]["catalog_db_schemas"];
    assert_eq!(schemas[0]["db_schema_name"], "public", "{got}");
    assert!(
        schemas[0]["db_schema_tables"]
            .as_array()
            .is_none_or(|t| t.is_empty()),
        "{got}"
    );
    // The client's schema pattern is applied.
    assert!(
        got["objects_filtered"][0]["catalog_db_schemas"]
            .as_array()
            .is_none_or(|s| s.is_empty()),
        "{got}"
    );
    refused("objects_wrong_token", "UNAUTHENTICATED");
    refused("wrong_token", "UNAUTHENTICATED");
    refused("bad_tenant", "invalid tenant");
    refused("syntax", "INVALID_ARGUMENT");
    // globex has no `double`: its statement does not plan.
    refused("other_tenant", "double");

    // Each statement is audited, and so is the refused token.
    let (status, body) = http(
        &addr,
        "GET",
        "/v1/audit",
        &[("Authorization", "Bearer acme-admin")],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sql query (flight sql)"), "{body}");

    // At most `flight_sql_max_connections` (5 here: the script's refused
    // logins leave their connections open until it exits) connections are
    // open at once, whoever opens them: a sixth is closed at once; once one
    // of the five closes, a new one stays open.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let flight = format!("127.0.0.1:{flight_port}");
    let mut held: Vec<_> = (0..5)
        .map(|_| std::net::TcpStream::connect(&flight).unwrap())
        .collect();
    let closed_at_once = |s: &mut std::net::TcpStream| {
        use std::io::{ErrorKind, Read};
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                // The server's HTTP/2 settings: read on.
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false;
                }
                Err(_) => return true,
            }
        }
    };
    let mut sixth = std::net::TcpStream::connect(&flight).unwrap();
    assert!(closed_at_once(&mut sixth), "a sixth connection stayed open");
    held.pop();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut fifth = std::net::TcpStream::connect(&flight).unwrap();
    assert!(!closed_at_once(&mut fifth), "a place did not free up");
}

/// With `serve.tls_cert` and `serve.tls_key` the token travels encrypted,
/// so `allow_insecure_password` is not needed: psql (`sslmode=verify-full`
/// against the certificate) and ADBC (`grpc+tls://`, the certificate as
/// its root) run a statement; a psql login without TLS is refused (28000)
/// before its password is asked for, and a Flight client without TLS
/// cannot talk to the listener.
#[test]
fn tls_carries_the_token_over_both_listeners() {
    let has_clients = Command::new("psql").arg("--version").output().is_ok()
        && Command::new("openssl").arg("version").output().is_ok()
        && has_adbc();
    if !support::require_or_skip("psql, openssl and adbc-driver-flightsql", has_clients) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    // A self-signed certificate for 127.0.0.1.
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (pg_port, flight_port) = (free_port(), free_port());
    let (_weir, _) = serve_with(
        dir.path(),
        &format!(
            "postgres_listen = \"127.0.0.1:{pg_port}\"\nflight_sql_listen = \"127.0.0.1:{flight_port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nwarm_languages = false\n",
            cert.display(),
            key.display()
        ),
        &[("ci", "acme-secret", "acme", "publisher")],
    );
    wait_for(&format!("127.0.0.1:{pg_port}"));
    wait_for(&format!("127.0.0.1:{flight_port}"));
    let psql_with = |mode: &str| {
        let out = psql_command(pg_port, "acme", "acme-secret", &["-c", "SELECT 40 + 2"])
            .env("PGSSLMODE", mode)
            .env("PGSSLROOTCERT", &cert)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = psql_with("verify-full");
    assert!(ok && out.trim() == "42", "{out}{err}");
    let (ok, _, err) = psql_with("disable");
    assert!(!ok && err.contains("over TLS only"), "{err}");

    let script = format!(
        "import json, adbc_driver_flightsql.dbapi as f\n\
         kw = {{'username': 'acme', 'password': 'acme-secret', 'adbc.flight.sql.client_option.tls_root_certs': open({cert:?}).read()}}\n\
         out = {{}}\n\
         with f.connect('grpc+tls://127.0.0.1:{flight_port}', db_kwargs=kw) as c, c.cursor() as cur:\n\
         \x20   cur.execute('SELECT 40 + 2 AS answer')\n\
         \x20   out['tls'] = cur.fetch_arrow_table().to_pylist()\n\
         try:\n\
         \x20   with f.connect('grpc://127.0.0.1:{flight_port}', db_kwargs={{'username': 'acme', 'password': 'acme-secret'}}) as c, c.cursor() as cur:\n\
         \x20       cur.execute('SELECT 1')\n\
         \x20       cur.fetch_arrow_table()\n\
         \x20   out['plain'] = 'answered'\n\
         except Exception as e:\n\
         \x20   out['plain'] = type(e).__name__\n\
         print(json.dumps(out))\n",
        cert = cert.display().to_string(),
    );
    let got = python_json(&["-c", &script]);
    assert_eq!(got["tls"], serde_json::json!([{"answer": 42}]), "{got}");
    assert_ne!(got["plain"], "answered", "{got}");
}
