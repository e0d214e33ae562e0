#!/usr/bin/env python3
"""End-to-end records/s of one Kafka pipeline run by 1, 2 and 3 `weir serve`
nodes over one PostgreSQL control plane, and the time from a publish on one
node to the new version running on another (docs/cluster.md).

Starts PostgreSQL (Debian's, as user postgres when run as root), a nisshi
broker (SQLite storage) and the nodes, all on loopback. Usage:

    scripts/bench_cluster.py [path/to/weir] [records]

Everything shares this machine's cores: broker, database, producer, reader
and every node.
"""
import glob, hashlib, json, os, pwd, shutil, socket, statistics, subprocess, sys, tempfile, time
import urllib.request

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = "root-secret"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait(cond, what, timeout=120):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            sys.exit(f"gave up waiting for {what}")
        time.sleep(0.05)


def call(addr, method, path, body=b"", ctype="application/json"):
    req = urllib.request.Request(f"http://{addr}{path}", data=body if method != "GET" else None, method=method)
    req.add_header("Authorization", f"Bearer {ROOT}")
    req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            try:
                return r.status, json.loads(text or b"null")
            except ValueError:
                return r.status, text.decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def start_postgres(tmp):
    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    data = os.path.join(tmp, "pg")
    os.makedirs(data)
    demote = None
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        os.chown(data, pw.pw_uid, pw.pw_gid)

        def demote():
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
    subprocess.run([f"{bindir}/initdb", "-D", data, "-U", "weir", "--auth=trust", "--no-sync"],
                   check=True, stdout=subprocess.DEVNULL, preexec_fn=demote)
    port = free_port()
    proc = subprocess.Popen([f"{bindir}/postgres", "-D", data, "-p", str(port), "-k", tmp,
                             "-c", "listen_addresses=127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "pg.log"), "w"),
                            preexec_fn=demote)
    wait(lambda: subprocess.run([f"{bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(port), "-q"]).returncode == 0,
         "PostgreSQL")
    return proc, f"postgres://weir@127.0.0.1:{port}/postgres"


def start_broker(tmp):
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    nisshi = shutil.which("nisshi") or os.path.expanduser("~/.cargo/bin/nisshi")
    proc = subprocess.Popen([nisshi, "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--group-initial-rebalance-delay", "500ms", "--storage-engine", "sqlite://broker.db"],
                            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    addr = f"127.0.0.1:{port}"

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False
    wait(up, "the broker")
    return proc, addr


def start_node(weir, tmp, name, db):
    addr = f"127.0.0.1:{free_port()}"
    cfg = os.path.join(tmp, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(f'''[serve]
listen = "{addr}"
data_dir = "{tmp}/{name}"
database = "{db}"
node = "{name}"
requests_per_s = 0
[[serve.tokens]]
name = "root"
sha256 = "{hashlib.sha256(ROOT.encode()).hexdigest()}"
tenant = "*"
role = "admin"
''')
    policy = os.path.join(tmp, "policy.toml")
    with open(policy, "w") as f:
        f.write('[tenants.acme]\nkafka_brokers = ["*"]\n')
    proc = subprocess.Popen([weir, "serve", "--config", cfg, "--policy", policy],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"{name}.log"), "a"),
                            env={**os.environ, "WEIR_LOG": "warn"})
    wait(lambda: urllib_ready(addr), f"node {name}")
    return proc, addr


def urllib_ready(addr):
    try:
        with urllib.request.urlopen(f"http://{addr}/readyz", timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def guest(factor):
    with open(os.path.join(REPO, "tests/tenant/guest.wat")) as f:
        return f.read().replace("(i64.const 2)", f"(i64.const {factor})").encode()


def pipeline(broker, topic_in, topic_out, group):
    return f'''name = "doubler"
udfs = ["tools"]
sql = "SELECT id, double(id) AS d FROM source"
[source]
kind = "kafka"
brokers = "{broker}"
topics = ["{topic_in}"]
group = "{group}"
format = "json"
fields = [{{ name = "id", type = "int64" }}]
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
[sink]
kind = "kafka"
brokers = "{broker}"
topic = "{topic_out}"
[errors]
policy = "skip"
[batch]
max_records = 4096
max_linger_ms = 20
'''.encode()


def count_until(broker, topic, n, timeout=600):
    """Reads `topic` until n records arrived: (first arrival, last arrival)."""
    c = Consumer({"bootstrap.servers": broker, "group.id": f"bench-reader-{topic}-{time.time()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 10})
    c.subscribe([topic])
    got, first, deadline = 0, None, time.time() + timeout
    while got < n:
        if time.time() > deadline:
            sys.exit(f"only {got} of {n} records reached {topic}")
        for m in c.consume(1000, 0.5):
            if m.error():
                continue
            got += 1
            if first is None:
                first = time.time()
    last = time.time()
    c.close()
    return first, last


def main():
    weir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "release/weir")
    records = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
    tmp = tempfile.mkdtemp(prefix="weir-bench-cluster-")
    procs = []
    try:
        pg, db = start_postgres(tmp)
        procs.append(pg)
        broker_proc, broker = start_broker(tmp)
        procs.append(broker_proc)
        admin = AdminClient({"bootstrap.servers": broker})
        results = []
        for n in (1, 2, 3):
            nodes = [start_node(weir, tmp, f"r{n}n{i}", db) for i in range(1, n + 1)]
            procs.extend(p for p, _ in nodes)
            addrs = [a for _, a in nodes]
            tin, tout = f"in{n}", f"out{n}"
            for f in admin.create_topics([NewTopic(tin, 6, 1), NewTopic(tout, 1, 1)]).values():
                f.result()
            status, v = call(addrs[0], "POST", "/v1/tenants/acme/udfs/tools", guest(2), "application/wasm")
            assert status == 201, (status, v)
            p = Producer({"bootstrap.servers": broker, "linger.ms": 20})
            for i in range(records):
                while True:
                    try:
                        p.produce(tin, json.dumps({"id": i}).encode(), str(i).encode())
                        break
                    except BufferError:
                        p.poll(0.05)
            p.flush()
            deployed = time.time()
            status, v = call(addrs[-1], "PUT", "/v1/tenants/acme/pipelines/doubler",
                             pipeline(broker, tin, tout, f"bench-{n}"), "application/toml")
            assert status in (200, 201), (status, v)
            first, last = count_until(broker, tout, records)
            rate = records / (last - deployed)
            steady = records / max(last - first, 1e-6)
            # publish on the first node, see it running on the last
            delays = []
            for k in range(5):
                start = time.time()
                status, v = call(addrs[0], "POST", "/v1/tenants/acme/udfs/tools", guest(3 + k), "application/wasm")
                assert status == 201, (status, v)
                want = f"tools@v{v['version']}"
                wait(lambda: want in json.dumps(call(addrs[-1], "GET", "/v1/tenants/acme/pipelines/doubler")[1]),
                     "the new version on another node", 60)
                delays.append((time.time() - start) * 1000)
            results.append((n, rate, steady, statistics.median(delays), max(delays)))
            print(f"{n} node(s): {records} records, {rate:,.0f} records/s from deploy, "
                  f"{steady:,.0f} records/s first→last output; publish on {nodes[0][1]} → running on "
                  f"{addrs[-1]}: median {statistics.median(delays):.0f} ms, max {max(delays):.0f} ms", flush=True)
            call(addrs[0], "DELETE", "/v1/tenants/acme/pipelines/doubler")
            for v in range(1, 7):
                call(addrs[0], "DELETE", f"/v1/tenants/acme/udfs/tools/versions/{v}")
            for proc, _ in nodes:
                proc.terminate()
                proc.wait(30)
        print("\n| nodes | records/s (deploy → last output) | records/s (first → last output) | publish → running elsewhere (median / max) |")
        print("|---|---|---|---|")
        for n, rate, steady, med, mx in results:
            print(f"| {n} | {rate:,.0f} | {steady:,.0f} | {med:.0f} ms / {mx:.0f} ms |")
    finally:
        for p in procs:
            p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
