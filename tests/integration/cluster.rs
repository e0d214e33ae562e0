//! Several `weir serve` nodes over one PostgreSQL database (Debian's
//! `postgresql`, started here as an unprivileged user on loopback) and one
//! broker (nisshi): the control plane is shared, pipelines spread over the
//! nodes through Kafka's consumer groups.
//!
//! What the broker used here cannot show: nisshi is a single broker, so a
//! broker failure is a restart (kafka.rs), never a failover; it expires a
//! killed member only after its `session.timeout.ms` (6 s here), so a
//! killed node's partitions move after that, not at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir::serve::hash_token;

use crate::kafka::{self, Broker};
use crate::serve::{free_port, http};
use crate::support;

/// A PostgreSQL server of its own in a temporary folder.
pub struct Postgres {
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// (uid, gid) of `postgres` when the tests run as root (it refuses root).
    user: Option<(u32, u32)>,
}

fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop()
}

fn id_of(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

impl Postgres {
    /// Initializes and starts a server, or None (test skipped).
    pub fn start() -> Option<Postgres> {
        let bin = postgres_bin();
        if !support::require_or_skip(
            "PostgreSQL server binaries (apt-get install postgresql)",
            bin.is_some(),
        ) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let user = root.then(|| (id_of("-u"), id_of("-g")));
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut pg = Postgres {
            child: None,
            dir,
            bin: bin.expect("checked above"),
            port: free_port(),
            user,
        };
        let data = pg.dir.path().join("data");
        let status = pg
            .command("initdb")
            .args(["-D", data.to_str().unwrap(), "-U", "weir", "--auth=trust"])
            .args(["-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        pg.spawn();
        Some(pg)
    }

    fn command(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .unwrap();
        let data = self.dir.path().join("data");
        let child = self
            .command("postgres")
            .args(["-D", data.to_str().unwrap(), "-p", &self.port.to_string()])
            .args(["-k", self.dir.path().to_str().unwrap()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fast shutdown (clients are disconnected), then waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    pub fn start_again(&mut self) {
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("postgres://weir@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const ROOT: &str = "root-secret";

/// One `weir serve` process of the cluster.
pub struct Node {
    child: Option<Child>,
    pub name: String,
    pub addr: String,
    config: PathBuf,
    policy: PathBuf,
    log: PathBuf,
}

impl Node {
    /// Starts node `name` over `database`; `extra` goes into `[serve]`.
    pub fn start(dir: &Path, name: &str, database: &str, extra: &str) -> Node {
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"[serve]
listen = "{addr}"
data_dir = "{data}"
database = "{database}"
node = "{name}"
heartbeat_ms = 500
lease_ms = 3000
reconcile_ms = 1000
# No script functions here: readiness is the database's alone.
warm_languages = false
{rate}
file_roots = ["{dir}"]
{extra}
[[serve.tokens]]
name = "root"
sha256 = "{root}"
tenant = "*"
role = "admin"
"#,
                data = dir.join(name).display(),
                dir = dir.display(),
                root = hash_token(ROOT),
                rate = if extra.contains("requests_per_s") {
                    ""
                } else {
                    "requests_per_s = 0"
                },
            ),
        )
        .unwrap();
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, "[tenants.acme]\nkafka_brokers = [\"*\"]\n").unwrap();
        let mut node = Node {
            child: None,
            name: name.to_string(),
            addr,
            config,
            policy,
            log: dir.join(format!("{name}.log")),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config", self.config.to_str().unwrap()])
            .args(["--policy", self.policy.to_str().unwrap()])
            .env("WEIR_CACHE_DIR", support::cache_dir())
            .env(
                "WEIR_LOG",
                std::env::var("WEIR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_until(|n| n.ready(), "ready");
    }

    /// `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        std::net::TcpStream::connect(&self.addr).is_ok()
            && http(&self.addr, "GET", "/readyz", &[], b"").0 == 200
    }

    /// Waits (up to 60 s) until `done` holds, else fails with the log.
    pub fn wait_until(&self, done: impl Fn(&Node) -> bool, what: &str) {
        self.wait_within(Duration::from_secs(60), done, what);
    }

    /// Waits up to `limit` until `done` holds, else fails with the log.
    pub fn wait_within(&self, limit: Duration, done: impl Fn(&Node) -> bool, what: &str) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            if Instant::now() > deadline {
                panic!(
                    "node {} never got {what}; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A JSON exchange with `token`.
    pub fn call(&self, method: &str, path: &str, token: &str, body: &[u8]) -> (u16, Value) {
        let auth = format!("Bearer {token}");
        let (status, text) = http(
            &self.addr,
            method,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        );
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn root(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        self.call(method, path, ROOT, body)
    }

    /// SIGTERM and the exit: pipelines commit, leases are released.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "node {} exited with {status}", self.name);
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} ignored SIGTERM",
                    self.name
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGKILL: no goodbye to the group, the database or the leases.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn start_again(&mut self) {
        self.spawn();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The cluster view: node -> partitions of pipeline `doubler` it reads.
fn partitions(node: &Node) -> BTreeMap<String, Vec<String>> {
    let (status, view) = node.root("GET", "/v1/cluster", b"");
    assert_eq!(status, 200, "{view}");
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["alive"] == true)
        .map(|n| {
            let parts = n["pipelines"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["pipeline"] == "doubler")
                .flat_map(|p| p["partitions"].as_array().cloned().unwrap_or_default())
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect();
            (n["node"].as_str().unwrap().to_string(), parts)
        })
        .collect()
}

/// Every node in `names` reads some of the `count` partitions of `in`, and
/// each partition is read by exactly one of them.
fn split_over(view: &BTreeMap<String, Vec<String>>, names: &[&str], count: usize) -> bool {
    let mut all = Vec::new();
    for name in names {
        match view.get(*name) {
            Some(p) if !p.is_empty() => all.extend(p.iter().cloned()),
            _ => return false,
        }
    }
    let unique: BTreeSet<_> = all.iter().cloned().collect();
    unique.len() == all.len() && all.len() == count
}

fn doubler(broker: &str) -> String {
    format!(
        r#"name = "doubler"
udfs = ["tools"]
sql = "SELECT id, double(id) AS d FROM source"
[source]
kind = "kafka"
brokers = "{broker}"
topics = ["in"]
group = "doubler"
format = "json"
fields = [{{ name = "id", type = "int64" }}]
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
[sink]
kind = "kafka"
brokers = "{broker}"
topic = "out"
[errors]
policy = "skip"
[batch]
max_records = 50
max_linger_ms = 20
"#
    )
}

fn guest(factor: i64) -> Vec<u8> {
    std::fs::read_to_string(support::repo().join("tests/tenant/guest.wat"))
        .unwrap()
        .replace("(i64.const 2)", &format!("(i64.const {factor})"))
        .into_bytes()
}

fn publish(node: &Node, factor: i64) -> Value {
    let auth = format!("Bearer {ROOT}");
    let (status, text) = http(
        &node.addr,
        "POST",
        "/v1/tenants/acme/udfs/tools",
        &[
            ("authorization", &auth),
            ("content-type", "application/wasm"),
        ],
        &guest(factor),
    );
    assert_eq!(status, 201, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn deploy(node: &Node, toml: &str) {
    let auth = format!("Bearer {ROOT}");
    let (status, text) = http(
        &node.addr,
        "PUT",
        "/v1/tenants/acme/pipelines/doubler",
        &[
            ("authorization", &auth),
            ("content-type", "application/toml"),
        ],
        toml.as_bytes(),
    );
    assert!(status == 201 || status == 200, "{status} {text}");
}

/// Ids that reached `out`, and how many arrived more than once.
async fn delivered(addr: &str) -> (BTreeSet<i64>, usize) {
    let records = kafka::read_all(addr, "out").await;
    let ids = kafka::ids(&records);
    (ids.clone(), records.len() - ids.len())
}

async fn wait_delivered(addr: &str, all: &BTreeSet<i64>, nodes: &[&Node]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (seen, duplicates) = delivered(addr).await;
        if &seen == all {
            return duplicates;
        }
        if Instant::now() > deadline {
            let logs: String = nodes
                .iter()
                .map(|n| format!("--- {}\n{}", n.name, n.log()))
                .collect();
            panic!("{} of {} records arrived\n{logs}", seen.len(), all.len());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

struct Cluster {
    _pg: Postgres,
    broker: Broker,
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

async fn cluster(nodes: usize) -> Option<Cluster> {
    let pg = Postgres::start()?;
    let broker = kafka::broker()?;
    kafka::create_topics(&broker.addr, &[("in", 6), ("out", 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let nodes = (1..=nodes)
        .map(|i| Node::start(dir.path(), &format!("node{i}"), &pg.url(), ""))
        .collect();
    Some(Cluster {
        _pg: pg,
        broker,
        dir,
        nodes,
    })
}

/// Publish on node 1, try on node 3; deploy on node 2 and the pipeline runs
/// on all three, the partitions split between them; every record arrives;
/// a new version published on node 1 runs on node 3; a token created on
/// node 1 works on node 2 until node 3 revokes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_control_plane() {
    let Some(c) = cluster(3).await else { return };
    let [n1, n2, n3] = &c.nodes[..] else {
        unreachable!()
    };
    let v1 = publish(n1, 2);
    assert_eq!(v1["version"], 1, "{v1}");
    let (status, tried) = n3.root(
        "POST",
        "/v1/tenants/acme/udfs/tools/versions/latest/try",
        br#"{"function": "double", "rows": [[21]]}"#,
    );
    assert_eq!(status, 200, "{tried}");
    assert!(tried.to_string().contains("42"), "{tried}");

    deploy(n2, &doubler(&c.broker.addr));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let view = partitions(n1);
        if split_over(&view, &["node1", "node2", "node3"], 6) {
            println!("partitions: {view:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partitions never split: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    kafka::produce(&c.broker.addr, "in", &kafka::json_ids(0..3000)).await;
    let all: BTreeSet<i64> = (0..3000).collect();
    let duplicates = wait_delivered(&c.broker.addr, &all, &[n1, n2, n3]).await;
    // The partitions were split before the records came and stayed so: no
    // replay, so no record twice.
    assert_eq!(duplicates, 0, "3000 records over 3 nodes");
    let values = |records: &[kafka::Received]| -> BTreeMap<i64, i64> {
        records
            .iter()
            .filter_map(|(_, p, _)| {
                let v: Value = serde_json::from_str(p).ok()?;
                Some((v["id"].as_i64()?, v["d"].as_i64()?))
            })
            .collect()
    };
    let v1_values = values(&kafka::read_all(&c.broker.addr, "out").await);
    assert!(
        v1_values.iter().all(|(id, d)| *d == 2 * id),
        "v1 doubles on every node"
    );

    // A new version published on node 1 reaches every node's pipeline, and
    // what they write is v2's (triples), not a status saying so.
    let published = Instant::now();
    let v2 = publish(n1, 3);
    assert_eq!(v2["version"], 2, "{v2}");
    for node in [n1, n2, n3] {
        loop {
            let (_, st) = node.root("GET", "/v1/tenants/acme/pipelines/doubler", b"");
            if st["udfs"].to_string().contains("tools@v2") {
                break;
            }
            assert!(published.elapsed() < Duration::from_secs(30), "{st}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    kafka::produce(&c.broker.addr, "in", &kafka::json_ids(3000..3060)).await;
    let later: BTreeSet<i64> = (3000..3060).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let tripled = loop {
        let got = values(&kafka::read_all(&c.broker.addr, "out").await);
        let after: BTreeMap<i64, i64> = got.into_iter().filter(|(id, _)| *id >= 3000).collect();
        if after.keys().copied().collect::<BTreeSet<_>>() == later {
            break after;
        }
        assert!(Instant::now() < deadline, "{after:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        tripled.iter().all(|(id, d)| *d == 3 * id),
        "records after v2 ran everywhere are tripled: {tripled:?}"
    );

    // A token created on node 1 works on node 2; revoked on node 3, it is
    // refused by all.
    let (status, created) = n1.root(
        "POST",
        "/v1/tenants/acme/tokens",
        br#"{"name": "ci", "role": "viewer"}"#,
    );
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    assert_eq!(n2.call("GET", "/v1/tenants/acme/udfs", &token, b"").0, 200);
    let (status, revoked) = n3.root("DELETE", "/v1/tenants/acme/tokens/ci", b"");
    assert!(status == 200 || status == 204, "{revoked}");
    for n in [n1, n2, n3] {
        assert_eq!(n.call("GET", "/v1/tenants/acme/udfs", &token, b"").0, 401);
    }
    // The cluster view names every node, alive, with its heartbeat.
    let (_, view) = n2.root("GET", "/v1/cluster", b"");
    let names: Vec<_> = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["alive"] == true && n["heartbeat_age_ms"].as_i64().is_some())
        .map(|n| n["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["node1", "node2", "node3"], "{view}");
    // Only admins of every tenant see it.
    let (status, boss) = n1.root(
        "POST",
        "/v1/tenants/acme/tokens",
        br#"{"name": "boss", "role": "admin"}"#,
    );
    assert_eq!(status, 201, "{boss}");
    let (status, refused) = n3.call("GET", "/v1/cluster", boss["token"].as_str().unwrap(), b"");
    assert_eq!(status, 403, "{refused}");
}

/// Every node restarted in turn while records stream: none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_record() {
    let Some(mut c) = cluster(3).await else {
        return;
    };
    publish(&c.nodes[0], 2);
    deploy(&c.nodes[1], &doubler(&c.broker.addr));
    let addr = c.broker.addr.clone();
    let producer = tokio::spawn(async move {
        let mut next = 0;
        while next < 6000 {
            kafka::produce(&addr, "in", &kafka::json_ids(next..next + 100)).await;
            next += 100;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        next
    });
    for i in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let node = &mut c.nodes[i];
        node.stop();
        node.start_again();
        let name = node.name.clone();
        node.wait_until(
            |n| partitions(n).get(&name).is_some_and(|p| !p.is_empty()),
            "partitions after its restart",
        );
    }
    let produced = producer.await.unwrap();
    let all: BTreeSet<i64> = (0..produced).collect();
    let nodes: Vec<&Node> = c.nodes.iter().collect();
    let duplicates = wait_delivered(&c.broker.addr, &all, &nodes).await;
    println!(
        "rolling restart of 3 nodes: {produced} records, none lost, {duplicates} duplicates (at-least-once)"
    );
}

/// A node stopped (SIGTERM) and then one killed (SIGKILL): their partitions
/// move to the survivor, and so does the lease of a pipeline that runs on
/// one node (a file source).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_and_killed_nodes_hand_their_partitions_and_leases_over() {
    let Some(mut c) = cluster(3).await else {
        return;
    };
    publish(&c.nodes[0], 2);
    deploy(&c.nodes[0], &doubler(&c.broker.addr));
    // A file pipeline: one node holds its lease.
    let input = c.dir.path().join("slow.ndjson");
    std::fs::write(&input, "{\"id\":1}\n").unwrap();
    let file = format!(
        "name = \"tail\"\nsql = \"SELECT * FROM source\"\n[source]\nkind = \"file\"\npath = \"{}\"\nformat = \"json\"\nfields = [{{ name = \"id\", type = \"int64\" }}]\n[sink]\nkind = \"file\"\npath = \"{}\"\n[errors]\npolicy = \"skip\"\n",
        input.display(),
        c.dir.path().join("tail-out.ndjson").display()
    );
    let auth = format!("Bearer {ROOT}");
    let (status, text) = http(
        &c.nodes[2].addr,
        "PUT",
        "/v1/tenants/acme/pipelines/tail",
        &[("authorization", &auth)],
        file.as_bytes(),
    );
    assert_eq!(status, 201, "{text}");
    let holder = |n: &Node| -> Option<String> {
        let (_, view) = n.root("GET", "/v1/cluster", b"");
        view["leases"]
            .as_array()?
            .iter()
            .find(|l| l["pipeline"] == "tail")
            .and_then(|l| l["node"].as_str().map(str::to_string))
    };
    assert_eq!(
        holder(&c.nodes[0]).as_deref(),
        Some("node3"),
        "the deploying node took the lease"
    );
    c.nodes[0].wait_until(
        |n| split_over(&partitions(n), &["node1", "node2", "node3"], 6),
        "partitions split over three nodes",
    );
    kafka::produce(&c.broker.addr, "in", &kafka::json_ids(0..1000)).await;

    // SIGTERM node 3: it leaves the group and releases its lease at once —
    // well before the 3 s lease would run out, and before the group's
    // 6 s session timeout would notice it gone.
    let stopped = Instant::now();
    c.nodes[2].stop();
    c.nodes[0].wait_within(
        Duration::from_secs(20),
        |n| matches!(holder(n).as_deref(), Some("node1" | "node2")),
        "the file pipeline's lease",
    );
    c.nodes[0].wait_within(
        Duration::from_secs(20),
        |n| split_over(&partitions(n), &["node1", "node2"], 6),
        "node3's partitions",
    );
    println!(
        "SIGTERM hand-over of lease and partitions: {} ms",
        stopped.elapsed().as_millis()
    );
    kafka::produce(&c.broker.addr, "in", &kafka::json_ids(1000..2000)).await;

    // SIGKILL the lease holder: its session and its lease expire.
    let held = holder(&c.nodes[0]).unwrap();
    let (killed, survivor) = if held == "node1" { (0, 1) } else { (1, 0) };
    c.nodes[killed].kill();
    let survivor_name = c.nodes[survivor].name.clone();
    c.nodes[survivor].wait_until(
        |n| split_over(&partitions(n), &[&survivor_name], 6),
        "every partition after the kill",
    );
    c.nodes[survivor].wait_until(
        |n| holder(n).as_deref() == Some(survivor_name.as_str()),
        "the lease of the killed node",
    );
    // It ran again there (the file source reads its file from the start).
    c.nodes[survivor].wait_until(
        |n| {
            let (_, st) = n.root("GET", "/v1/tenants/acme/pipelines/tail", b"");
            st["state"] == "running" || st["state"] == "finished"
        },
        "the file pipeline running after the lease moved",
    );
    // …and wrote its file's record (again: a file source reads from the
    // start on the node that takes the lease).
    let out = c.dir.path().join("tail-out.ndjson");
    c.nodes[survivor].wait_until(
        |_| support::ndjson(&out).contains(&serde_json::json!({"id": 1})),
        "the file pipeline's output",
    );
    kafka::produce(&c.broker.addr, "in", &kafka::json_ids(2000..3000)).await;
    let all: BTreeSet<i64> = (0..3000).collect();
    let duplicates = wait_delivered(&c.broker.addr, &all, &[&c.nodes[survivor]]).await;
    // At least once: each hand-over replays at most what its node had not
    // committed, so a record is written at most once per hand-over, plus
    // its first time.
    let mut copies: BTreeMap<i64, usize> = BTreeMap::new();
    for id in kafka::ids_with_repeats(&kafka::read_all(&c.broker.addr, "out").await) {
        *copies.entry(id).or_default() += 1;
    }
    let most = copies.values().max().copied().unwrap_or(0);
    assert!(
        most <= 3,
        "a record written {most} times after two hand-overs"
    );
    println!("stop + kill: 3000 records, none lost, {duplicates} duplicates");
}

/// The database restarted under load: nodes report not ready, then recover
/// by themselves; what was published stays; records keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_restarting_under_load_costs_nothing() {
    let Some(mut c) = cluster(2).await else {
        return;
    };
    publish(&c.nodes[0], 2);
    deploy(&c.nodes[1], &doubler(&c.broker.addr));
    // A token created through the API lives in the database.
    let (status, created) = c.nodes[0].root(
        "POST",
        "/v1/tenants/acme/tokens",
        br#"{"name": "ci", "role": "viewer"}"#,
    );
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    let addr = c.broker.addr.clone();
    let producer = tokio::spawn(async move {
        for next in (0..3000).step_by(100) {
            kafka::produce(&addr, "in", &kafka::json_ids(next..next + 100)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    c._pg.stop();
    for n in &c.nodes {
        n.wait_until(|n| !n.ready(), "not ready while the database is down");
        let (status, answer) = n.root("GET", "/v1/tenants/acme/udfs", b"");
        assert_eq!(status, 503, "{answer}");
        // Its tokens cannot be checked: "retry", not "unknown token".
        let (status, answer) = n.call("GET", "/v1/tenants/acme/udfs", &token, b"");
        assert_eq!(status, 503, "{answer}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    c._pg.start_again();
    for n in &c.nodes {
        n.wait_until(|n| n.ready(), "ready after the database came back");
    }
    let (status, versions) = c.nodes[1].call("GET", "/v1/tenants/acme/udfs/tools", &token, b"");
    assert_eq!(status, 200, "{versions}");
    assert!(versions.to_string().contains("\"version\":1"), "{versions}");
    let v2 = publish(&c.nodes[1], 3);
    assert_eq!(v2["version"], 2);
    producer.await.unwrap();
    let all: BTreeSet<i64> = (0..3000).collect();
    let nodes: Vec<&Node> = c.nodes.iter().collect();
    let duplicates = wait_delivered(&c.broker.addr, &all, &nodes).await;
    println!("database restart: 3000 records, none lost, {duplicates} duplicates");
}

/// A token's rate is one budget whichever node it calls, and every node's
/// requests are in the one audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_the_audit_log_are_the_same_on_every_node() {
    let Some(pg) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let extra = "requests_per_s = 1\nburst_requests = 4";
    let a = Node::start(dir.path(), "a", &pg.url(), extra);
    let b = Node::start(dir.path(), "b", &pg.url(), extra);
    let mut statuses = Vec::new();
    for i in 0..6 {
        let node = if i % 2 == 0 { &a } else { &b };
        statuses.push(node.root("GET", "/v1/tenants/acme/udfs", b"").0);
    }
    assert_eq!(&statuses[..4], [200, 200, 200, 200], "{statuses:?}");
    assert!(
        statuses[4..].contains(&429),
        "one budget over both nodes: {statuses:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let (status, audit) = b.root("GET", "/v1/audit?limit=100", b"");
    assert_eq!(status, 200, "{audit}");
    // Both nodes' allowed requests, read through node b.
    let listed = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["object"] == "udfs" && r["decision"] == "allowed")
        .count();
    assert_eq!(listed, 4, "{audit}");
}

/// Issue 28: a windowed pipeline re-keyed by its grouping columns
/// (`source.repartition`) runs on every node of a 3-node cluster, the
/// internal topic's partitions split between them, and every
/// (window, city) result is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repartitioned_windowed_pipeline_runs_on_every_node_with_whole_windows() {
    let Some(c) = cluster(3).await else { return };
    let addr = c.broker.addr.clone();
    kafka::create_topics(&addr, &[("rides", 4), ("rides-out", 1)]).await;
    let toml = crate::windows::rides_toml(&addr, "rides", "rides-out", "policy = \"skip\"");
    let auth = format!("Bearer {ROOT}");
    let (status, text) = http(
        &c.nodes[1].addr,
        "PUT",
        "/v1/tenants/acme/pipelines/rides",
        &[
            ("authorization", &auth),
            ("content-type", "application/toml"),
        ],
        toml.as_bytes(),
    );
    assert_eq!(status, 201, "{text}");
    // Every node owns some of the internal topic's 4 partitions.
    let internal = |n: &Node| -> BTreeMap<String, usize> {
        let (_, view) = n.root("GET", "/v1/cluster", b"");
        view["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["alive"] == true)
            .map(|n| {
                let owned = n["pipelines"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["pipeline"] == "rides")
                    .flat_map(|p| p["partitions"].as_array().cloned().unwrap_or_default())
                    .filter(|p| p.as_str().is_some_and(|p| p.contains("weir-repartition")))
                    .count();
                (n["node"].as_str().unwrap_or_default().to_string(), owned)
            })
            .collect()
    };
    c.nodes[0].wait_until(
        |n| {
            let view = internal(n);
            view.len() == 3 && view.values().all(|&k| k > 0) && view.values().sum::<usize>() == 4
        },
        "the internal topic's partitions split over three nodes",
    );
    let mut truth = BTreeMap::new();
    for step in 0..4i64 {
        crate::windows::produce_rides(
            &addr,
            "rides",
            step * 2400..(step + 1) * 2400,
            4,
            &mut truth,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut later = BTreeMap::new();
    crate::windows::produce_rides(&addr, "rides", 6 * 2400..6 * 2400 + 40, 4, &mut later).await;
    let (windows, repeats) = crate::windows::assert_whole_windows(&addr, "rides-out", &truth).await;
    println!("3 nodes: {windows} windows whole, {repeats} repeated with the same value");

    // Deleted, its internal topic goes with it.
    let topics = || -> Vec<String> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .create()
            .unwrap();
        c.fetch_metadata(None, Duration::from_secs(10))
            .map(|m| m.topics().iter().map(|t| t.name().to_string()).collect())
            .unwrap_or_default()
    };
    assert!(topics().iter().any(|t| t == "rides.weir-repartition.rides"));
    let (status, text) = http(
        &c.nodes[2].addr,
        "DELETE",
        "/v1/tenants/acme/pipelines/rides",
        &[("authorization", &auth)],
        b"",
    );
    assert!(status == 200 || status == 204, "{status} {text}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while topics().iter().any(|t| t == "rides.weir-repartition.rides") {
        assert!(
            Instant::now() < deadline,
            "the internal topic outlived its pipeline"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
