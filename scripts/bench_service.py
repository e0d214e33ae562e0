#!/usr/bin/env python3
"""Noisy neighbour at the service level (issue 12): one `weir serve`, two tenants.

Tenant `quiet` runs a file pipeline (NDJSON -> `SELECT id, work(id)` -> NDJSON,
the CPU-heavy `work` of tests/tenant/guest.wat) and answers API probes: a UDF
listing (no guest) and a one-row SQL query through its UDF (a guest slot).
Tenant `calm` sends an HTTP SQL load: 20 queries/s, each aggregating 20 000
generated rows through its UDF. `/healthz` is probed throughout. First
alone, then while tenant `noisy` runs, at the same time and without pause:
  * staged runs of a spinning function (4 clients; each run spins to its CPU
    budget on every row),
  * SQL queries that sort and aggregate millions of generated rows (memory
    and CPU heavy, bounded by its `query_memory_bytes`),
  * pipeline churn: deploy, run briefly and delete a pipeline, in a loop.
Reported: quiet's pipeline records/s, its API p50/p99 per probe, calm's SQL
p50/p99, /healthz max; and the targets (>= 90 % of solo throughput, p99 <= 2x
solo, /healthz < 100 ms). Last, the weights: tenants `heavy` (weight 3) and
`light` (weight 1) each run the same pipeline with four batch workers and
`max_concurrent_calls = 4` (each wants more than the machine), together; reported: heavy's share of the records
(target 75 % +- 10).

    scripts/bench_service.py [path/to/weir]   # default: release build
WEIR_BENCH_PHASE_S sets each phase's seconds; WEIR_BENCH_EXTRA is appended
to the server's weir.toml (e.g. $'[sandbox]\nepoch_tick_ms = 1\n').
Only the standard library; the binary must be built (cargo build --release).
"""

import hashlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
WEIR = sys.argv[1] if len(sys.argv) > 1 else os.path.join(TARGET, "release", "weir")
PHASE_S = float(os.environ.get("WEIR_BENCH_PHASE_S", "20"))
RECORDS = 3_000_000
# The quiet pipeline's batch workers: one wants one guest slot, which is
# within its fair share of two (equal weights); two want the whole machine,
# and under contention get their share, half (see BENCHMARKS.md).
QUIET_WORKERS = int(os.environ.get("WEIR_BENCH_QUIET_WORKERS", "1"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Client:
    def __init__(self, base, token):
        self.base, self.token = base, token

    def call(self, method, path, body=None, ctype=None, timeout=60):
        req = urllib.request.Request(self.base + path, data=body, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if ctype:
            req.add_header("Content-Type", ctype)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=timeout) as res:
                status, data = res.status, res.read()
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read()
        except OSError as e:
            status, data = 0, str(e).encode()
        return status, data, time.monotonic() - started


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    work = tempfile.mkdtemp(prefix="weir-bench-service-")
    tokens = {}
    token_cfg = ""
    names = ("quiet", "calm", "noisy", "heavy", "light")
    for tenant in names:
        tok = "weir_" + secrets.token_hex(16)
        tokens[tenant] = tok
        token_cfg += (
            f'[[serve.tokens]]\nname = "{tenant}-admin"\n'
            f'sha256 = "{hashlib.sha256(tok.encode()).hexdigest()}"\n'
            f'tenant = "{tenant}"\nrole = "admin"\n'
        )
    port = free_port()
    files = os.path.join(work, "files")
    for tenant in names:
        os.makedirs(os.path.join(files, tenant))
    policy = os.path.join(work, "policy.toml")
    with open(policy, "w") as f:
        # Each of the two wants more than both slots (four workers, four
        # calls at once), so that the weights alone decide their shares.
        f.write("[tenants.heavy]\nweight = 3\nmax_concurrent_calls = 4\n"
                "[tenants.light]\nweight = 1\nmax_concurrent_calls = 4\n")
    with open(os.path.join(work, "weir.toml"), "w") as f:
        f.write(
            f'cache_dir = "{work}/cache"\n[serve]\nlisten = "127.0.0.1:{port}"\n'
            f'data_dir = "{work}/data"\nrequests_per_s = 0\n'
            f'file_roots = ["{files}/{{tenant}}"]\n{token_cfg}'
            # More of the server's config, appended (e.g. a `[sandbox]` table).
            + os.environ.get("WEIR_BENCH_EXTRA", "")
        )
    log = open(os.path.join(work, "serve.log"), "w")
    server = subprocess.Popen(
        [WEIR, "--config", os.path.join(work, "weir.toml"), "serve"],
        stdout=log, stderr=log, env={**os.environ, "WEIR_POLICY": policy},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if Client(base, None).call("GET", "/healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        clients = {t: Client(base, tokens[t]) for t in names}
        quiet, calm, noisy = clients["quiet"], clients["calm"], clients["noisy"]
        guest = open(os.path.join(REPO, "tests/tenant/guest.wat"), "rb").read()
        for t, c in clients.items():
            st, body, _ = c.call("POST", f"/v1/tenants/{t}/udfs/tools", guest, "application/wasm")
            assert st in (200, 201), body

        source = os.path.join(files, "quiet", "in.ndjson")
        with open(source, "w") as f:
            for i in range(RECORDS):
                f.write(f'{{"id":{i}}}\n')

        def deploy(tenant, name, workers):
            path = os.path.join(files, tenant, "in.ndjson")
            if not os.path.exists(path):
                os.link(source, path)
            toml = (
                f'name = "{name}"\nudfs = ["tools"]\nsql = "SELECT id, work(id) AS w FROM source"\n'
                f'[source]\nkind = "file"\npath = "{path}"\nformat = "json"\n'
                f'fields = [{{ name = "id", type = "int64" }}]\n'
                f'[sink]\nkind = "file"\npath = "{files}/{tenant}/{name}.out"\n'
                f'[errors]\npolicy = "skip"\n[batch]\nmax_records = 1024\nworkers = {workers}\n'
            )
            st, body, _ = clients[tenant].call("PUT", f"/v1/tenants/{tenant}/pipelines/{name}",
                                               toml.encode(), "application/toml")
            assert st in (200, 201), body

        def deploy_quiet(name):
            deploy("quiet", name, QUIET_WORKERS)

        def records_out(name, tenant="quiet"):
            st, body, _ = clients[tenant].call("GET", f"/v1/tenants/{tenant}/pipelines/{name}")
            return json.loads(body).get("records_out", 0) if st == 200 else 0

        def measure(label, noisy_on):
            name = f"quiet-{label}"
            stop = threading.Event()
            lat = {"list": [], "sql": [], "healthz": [], "calm": []}
            errors = []

            def probe(kind, method, path, body=None, ctype=None, client=quiet):
                while not stop.is_set():
                    st, _, dt = client.call(method, path, body, ctype)
                    if st != 200:
                        errors.append((kind, st))
                    lat[kind].append(dt)
                    time.sleep(0.1)

            sql = json.dumps({"sql": "SELECT double(7) AS d", "udfs": ["tools"]}).encode()
            calm_sql = json.dumps({"sql": "SELECT count(*) AS n, max(double(value)) AS m "
                                          "FROM generate_series(1, 20000)", "udfs": ["tools"]}).encode()

            def calm_load():
                while not stop.is_set():
                    st, _, dt = calm.call("POST", "/v1/tenants/calm/sql", calm_sql, "application/json")
                    if st != 200:
                        errors.append(("calm", st))
                    lat["calm"].append(dt)
                    time.sleep(max(0.0, 0.05 - dt))

            threads = [
                threading.Thread(target=calm_load),
                threading.Thread(target=probe, args=("list", "GET", "/v1/tenants/quiet/udfs")),
                threading.Thread(target=probe, args=("sql", "POST", "/v1/tenants/quiet/sql", sql, "application/json")),
                threading.Thread(target=probe, args=("healthz", "GET", "/healthz"), kwargs={"client": Client(base, None)}),
            ]
            noisy_counts = {"staged": 0, "sql": 0, "churn": 0}
            if noisy_on:
                spin = json.dumps({"function": "spin", "rows": [[10**12]] * 8}).encode()
                heavy = json.dumps({"sql": "SELECT v % 1000 AS k, count(*), max(v) FROM "
                                           "(SELECT value AS v FROM generate_series(1, 3000000) ORDER BY value DESC) "
                                           "GROUP BY k ORDER BY k"}).encode()

                def loop(kind, fn):
                    while not stop.is_set():
                        fn()
                        noisy_counts[kind] += 1

                def churn():
                    toml = (
                        'name = "churn"\nudfs = ["tools"]\nsql = "SELECT id, work(id) AS w FROM source"\n'
                        f'[source]\nkind = "file"\npath = "{files}/noisy/in.ndjson"\nformat = "json"\n'
                        'fields = [{ name = "id", type = "int64" }]\n'
                        f'[sink]\nkind = "file"\npath = "{files}/noisy/out.ndjson"\n'
                        '[errors]\npolicy = "skip"\n'
                    )
                    noisy.call("PUT", "/v1/tenants/noisy/pipelines/churn", toml.encode(), "application/toml")
                    time.sleep(0.5)
                    noisy.call("DELETE", "/v1/tenants/noisy/pipelines/churn")

                with open(f"{files}/noisy/in.ndjson", "w") as f:
                    for i in range(200_000):
                        f.write(f'{{"id":{i}}}\n')
                for _ in range(4):
                    threads.append(threading.Thread(target=loop, args=("staged", lambda: noisy.call(
                        "POST", "/v1/tenants/noisy/udfs/tools/versions/latest/try", spin, "application/json"))))
                threads.append(threading.Thread(target=loop, args=("sql", lambda: noisy.call(
                    "POST", "/v1/tenants/noisy/sql", heavy, "application/json"))))
                threads.append(threading.Thread(target=loop, args=("churn", churn)))
            for t in threads:
                t.start()
            time.sleep(2)  # noisy load established
            deploy_quiet(name)
            time.sleep(2)  # warm-up: instances, first batches
            r0, t0 = records_out(name), time.monotonic()
            time.sleep(PHASE_S)
            r1, t1 = records_out(name), time.monotonic()
            stop.set()
            for t in threads:
                t.join()
            quiet.call("DELETE", f"/v1/tenants/quiet/pipelines/{name}")
            return {
                "records_per_s": (r1 - r0) / (t1 - t0),
                "p50": {k: pct(v, 50) * 1000 for k, v in lat.items()},
                "p99": {k: pct(v, 99) * 1000 for k, v in lat.items()},
                "max": {k: max(v) * 1000 if v else float("nan") for k, v in lat.items()},
                "n": {k: len(v) for k, v in lat.items()},
                "errors": errors[:5],
                "noisy": noisy_counts,
            }

        def weights():
            """heavy (weight 3) and light (weight 1), each wanting both slots."""
            for t in ("heavy", "light"):
                deploy(t, "share", 4)
            time.sleep(2)
            r0 = {t: records_out("share", t) for t in ("heavy", "light")}
            time.sleep(PHASE_S)
            r1 = {t: records_out("share", t) for t in ("heavy", "light")}
            for t in ("heavy", "light"):
                clients[t].call("DELETE", f"/v1/tenants/{t}/pipelines/share")
            return {t: (r1[t] - r0[t]) / PHASE_S for t in r0}

        solo = measure("solo", False)
        loaded = measure("noisy", True)
        shares = weights()
        print(f"weir serve, {PHASE_S:.0f} s per phase, quiet pipeline with {QUIET_WORKERS} worker(s), binary {WEIR}")
        for label, r in (("solo", solo), ("with noisy", loaded)):
            print(f"\n{label}: quiet pipeline {r['records_per_s']:.0f} records/s; noisy did {r['noisy']}")
            for k in ("list", "sql", "calm", "healthz"):
                print(f"  {k:8} n={r['n'][k]:4} p50 {r['p50'][k]:7.1f} ms  p99 {r['p99'][k]:7.1f} ms  max {r['max'][k]:7.1f} ms")
            if r["errors"]:
                print("  non-200 answers:", r["errors"])
        ratio = loaded["records_per_s"] / solo["records_per_s"]
        print(f"\nquiet pipeline keeps {100 * ratio:.0f} % of solo throughput (target >= 90 %)")
        for k in ("list", "sql"):
            print(f"quiet {k} p99: {loaded['p99'][k] / solo['p99'][k]:.2f}x solo (target <= 2x)")
        print(f"calm SQL load p99: {loaded['p99']['calm'] / solo['p99']['calm']:.2f}x solo (target <= 2x)")
        print(f"/healthz max with noisy: {loaded['max']['healthz']:.1f} ms (target < 100 ms)")
        total = shares["heavy"] + shares["light"]
        share = 100 * shares["heavy"] / total if total else float("nan")
        print(f"weights 3:1: heavy {shares['heavy']:.0f} records/s, light {shares['light']:.0f} records/s; "
              f"heavy's share {share:.0f} % (target 75 % +- 10)")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        if os.environ.get("WEIR_BENCH_KEEP"):
            print("kept", work)
        else:
            subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
