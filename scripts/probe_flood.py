#!/usr/bin/env python3
"""Issue 27's flood probe: one `weir serve`, two tenants.

Tenant `flood` deploys pipelines whose inline JavaScript spins (16 deploy
clients, each deploying and deleting in a loop; the query folds the
spinning function over a constant, so the build itself spins) and runs
JavaScript SQL queries that spin to their CPU budget (50 clients). Tenant
`calm` sends a trivial SQL query (`SELECT 1`, no UDF) and lists its UDFs;
`/healthz` is probed throughout. Reported: calm's p50/p99 alone and under
the flood, and the slowest `/healthz`. Targets: `/healthz` < 100 ms and
calm's SQL p99 <= 2x alone.

    scripts/probe_flood.py [path/to/weir]   # default: release build
Only the standard library (it reuses scripts/bench_service.py's client).
"""

import hashlib
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_service", os.path.join(HERE, "bench_service.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
Client, free_port, pct = bench.Client, bench.free_port, bench.pct

WEIR = sys.argv[1] if len(sys.argv) > 1 else bench.WEIR
PHASE_S = float(os.environ.get("WEIR_BENCH_PHASE_S", "20"))
# WEIR_FLOOD_DEPLOYS / WEIR_FLOOD_QUERIES: clients of each kind (16 / 50).

SPIN = "CREATE FUNCTION spin(x BIGINT) RETURNS BIGINT LANGUAGE javascript AS $$ for (;;) {} $$;"


def main():
    work = tempfile.mkdtemp(prefix="weir-probe-flood-")
    tokens, token_cfg = {}, ""
    for tenant in ("calm", "flood"):
        tok = "weir_" + secrets.token_hex(16)
        tokens[tenant] = tok
        token_cfg += (
            f'[[serve.tokens]]\nname = "{tenant}-admin"\n'
            f'sha256 = "{hashlib.sha256(tok.encode()).hexdigest()}"\n'
            f'tenant = "{tenant}"\nrole = "admin"\n'
        )
    files = os.path.join(work, "files")
    for tenant in ("calm", "flood"):
        os.makedirs(os.path.join(files, tenant))
    with open(os.path.join(files, "flood", "in.ndjson"), "w") as f:
        f.write('{"id": 1}\n')
    port = free_port()
    with open(os.path.join(work, "weir.toml"), "w") as f:
        f.write(
            f'cache_dir = "{work}/cache"\n[serve]\nlisten = "127.0.0.1:{port}"\n'
            f'data_dir = "{work}/data"\nrequests_per_s = 0\n'
            f'file_roots = ["{files}/{{tenant}}"]\n{token_cfg}'
        )
    log = open(os.path.join(work, "serve.log"), "w")
    server = subprocess.Popen([WEIR, "--config", os.path.join(work, "weir.toml"), "serve"],
                              stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if Client(base, None).call("GET", "/healthz", timeout=1)[0] == 200:
                break
            time.sleep(0.1)
        calm, flood = Client(base, tokens["calm"]), Client(base, tokens["flood"])

        def phase(flooding):
            stop = threading.Event()
            lat = {"sql": [], "list": [], "healthz": []}
            counts = {"deploys": 0, "queries": 0}
            sql = json.dumps({"sql": "SELECT 1 AS x"}).encode()

            def probe(kind, method, path, body=None, client=calm):
                while not stop.is_set():
                    st, _, dt = client.call(method, path, body, "application/json" if body else None)
                    lat[kind].append(dt if st == 200 else float("inf"))
                    time.sleep(0.1)

            threads = [
                threading.Thread(target=probe, args=("sql", "POST", "/v1/tenants/calm/sql", sql)),
                threading.Thread(target=probe, args=("list", "GET", "/v1/tenants/calm/udfs")),
                threading.Thread(target=probe, args=("healthz", "GET", "/healthz"),
                                 kwargs={"client": Client(base, None)}),
            ]
            if flooding:
                def deploys(i):
                    toml = (
                        f'name = "spin{i}"\nsql = """\n{SPIN}\nSELECT id, spin(1) AS s FROM source\n"""\n'
                        f'[source]\nkind = "file"\npath = "{files}/flood/in.ndjson"\nformat = "json"\n'
                        'fields = [{ name = "id", type = "int64" }]\n'
                        f'[sink]\nkind = "file"\npath = "{files}/flood/out{i}.ndjson"\n'
                        '[errors]\npolicy = "skip"\n'
                    ).encode()
                    while not stop.is_set():
                        flood.call("PUT", f"/v1/tenants/flood/pipelines/spin{i}", toml, "application/toml")
                        flood.call("DELETE", f"/v1/tenants/flood/pipelines/spin{i}")
                        counts["deploys"] += 1

                def queries():
                    body = json.dumps({"sql": f"{SPIN} SELECT spin(x) AS s FROM t",
                                       "tables": {"t": [{"x": 1}]}}).encode()
                    while not stop.is_set():
                        flood.call("POST", "/v1/tenants/flood/sql", body, "application/json")
                        counts["queries"] += 1

                n_deploys = int(os.environ.get("WEIR_FLOOD_DEPLOYS", "16"))
                n_queries = int(os.environ.get("WEIR_FLOOD_QUERIES", "50"))
                threads += [threading.Thread(target=deploys, args=(i,)) for i in range(n_deploys)]
                threads += [threading.Thread(target=queries) for _ in range(n_queries)]
            for t in threads:
                t.start()
            time.sleep(PHASE_S)
            stop.set()
            for t in threads:
                t.join()
            return lat, counts

        alone, _ = phase(False)
        flooded, counts = phase(True)
        print(f"flood: {counts['deploys']} deploys, {counts['queries']} JavaScript queries in {PHASE_S:.0f} s")
        for kind in ("sql", "list", "healthz"):
            a, f = alone[kind], flooded[kind]
            print(f"calm {kind:8} alone p50 {pct(a, 50) * 1e3:7.1f} ms p99 {pct(a, 99) * 1e3:7.1f} ms | "
                  f"flooded p50 {pct(f, 50) * 1e3:7.1f} ms p99 {pct(f, 99) * 1e3:7.1f} ms "
                  f"max {max(f) * 1e3:7.1f} ms (n={len(f)})")
        ratio = pct(flooded["sql"], 99) / pct(alone["sql"], 99)
        worst = max(flooded["healthz"])
        print(f"targets: calm SQL p99 {ratio:.2f}x alone (<= 2x: {'met' if ratio <= 2 else 'MISSED'}); "
              f"/healthz max {worst * 1e3:.1f} ms (< 100 ms: {'met' if worst < 0.1 else 'MISSED'})")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
