#!/usr/bin/env python3
"""A large result through `weir serve`'s PostgreSQL and Flight SQL protocols, by client.

Starts `weir serve` (the binary given) on loopback, then reads the same
statement's rows (ROWS rows: a BIGINT, a DOUBLE and a 20-byte string) with
  - psql (the simple protocol, text), output discarded;
  - psycopg 3, server-side binding (the extended protocol), text results;
  - psycopg 3, binary results;
  - ADBC's Flight SQL driver (Arrow batches), into a pyarrow Table;
and, for reference, `weir sql --format csv` of the same query (one process,
no server). Then a second server with TLS (`serve.tls_cert`, a certificate
made by openssl) is read by psql (`sslmode=require`), psycopg's binary
results and ADBC (`grpc+tls://`): what TLS costs. Each is timed
wall-clock, best of RUNS; the server's peak resident memory during the
psycopg runs is reported too.

Usage: scripts/bench_pg.py WEIR_BINARY   (WEIR_BENCH_ROWS, default 1 000 000;
WEIR_BENCH_RUNS, default 3)
"""
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import adbc_driver_flightsql.dbapi as flight_sql
import psycopg

weir = sys.argv[1]
rows = int(os.environ.get("WEIR_BENCH_ROWS", "1000000"))
runs = int(os.environ.get("WEIR_BENCH_RUNS", "3"))
query = (f"SELECT x, CAST(x AS DOUBLE) * 1.5 AS y, concat('row-', CAST(x AS VARCHAR), '-abcdefgh') AS s "
         f"FROM generate_series(1, {rows}) AS t(x)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def best(f):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        n = f()
        times.append(time.perf_counter() - t)
        assert n == rows, f"{n} rows, expected {rows}"
    return min(times)


work = tempfile.mkdtemp()
token = "bench-secret"
cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
               check=True, capture_output=True)


def start(name, tls):
    """A `weir serve` (with TLS or with cleartext on loopback): the
    process and its PostgreSQL and Flight SQL ports."""
    http, pg, flight = free_port(), free_port(), free_port()
    secure = (f'tls_cert = "{cert}"\ntls_key = "{key}"' if tls
              else "allow_insecure_password = true")
    config = os.path.join(work, f"{name}.toml")
    with open(config, "w") as f:
        f.write(f'''[serve]
listen = "127.0.0.1:{http}"
data_dir = "{work}/{name}"
postgres_listen = "127.0.0.1:{pg}"
flight_sql_listen = "127.0.0.1:{flight}"
{secure}
warm_languages = false
[[serve.tokens]]
name = "bench"
sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"
tenant = "bench"
role = "publisher"
''')
    process = subprocess.Popen([weir, "serve", "--config", config],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for port in (pg, flight):
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
    return process, pg, flight


def psql(pg, tls=False):
    def read():
        env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "require" if tls else "disable"}
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(pg), "-U", "bench", "-d", "weir", "-X", "-A", "-t",
             "-v", "ON_ERROR_STOP=1", "-c", query],
            env=env, capture_output=True, check=True)
        return out.stdout.count(b"\n")
    return read


def psycopg_read(pg, binary, tls=False):
    def read():
        with psycopg.connect(host="127.0.0.1", port=pg, user="bench", password=token,
                             dbname="weir", sslmode="require" if tls else "disable") as conn:
            cur = conn.cursor(binary=binary)
            cur.execute(query)
            return sum(1 for _ in cur)
    return read


def adbc(flight, tls=False):
    def read():
        kw = {"username": "bench", "password": token}
        if tls:
            kw["adbc.flight.sql.client_option.tls_root_certs"] = open(cert).read()
        scheme = "grpc+tls" if tls else "grpc"
        with flight_sql.connect(f"{scheme}://127.0.0.1:{flight}", db_kwargs=kw) as conn:
            with conn.cursor() as cur:
                cur.execute(query)
                return cur.fetch_arrow_table().num_rows
    return read


server, pg, flight = start("plain", tls=False)
secure = None
try:

    def weir_csv():
        out = subprocess.run([weir, "sql", "--format", "csv", query], capture_output=True, check=True)
        return out.stdout.count(b"\n") - 1  # the header

    peak = [0]
    sampling = [True]

    def sample():
        while sampling[0]:
            peak[0] = max(peak[0], rss_kb(server.pid))
            time.sleep(0.01)

    before = rss_kb(server.pid)
    results = {}
    results["psql (simple protocol, text)"] = best(psql(pg))
    sampler = threading.Thread(target=sample)
    sampler.start()
    results["psycopg (extended protocol, text)"] = best(psycopg_read(pg, False))
    results["psycopg (extended protocol, binary)"] = best(psycopg_read(pg, True))
    results["ADBC Flight SQL (Arrow)"] = best(adbc(flight))
    sampling[0] = False
    sampler.join()
    results["weir sql --format csv (no server)"] = best(weir_csv)
    secure, tls_pg, tls_flight = start("tls", tls=True)
    results["psql over TLS"] = best(psql(tls_pg, tls=True))
    results["psycopg binary over TLS"] = best(psycopg_read(tls_pg, True, tls=True))
    results["ADBC Flight SQL over TLS"] = best(adbc(tls_flight, tls=True))
    print(f"{rows} rows (BIGINT, DOUBLE, ~20-byte VARCHAR), best of {runs}:")
    for name, secs in results.items():
        print(f"  {name:40s} {secs:6.2f} s  {rows / secs / 1e3:7.0f} k rows/s")
    print(f"  server resident memory: {before // 1024} MB before, {peak[0] // 1024} MB at most while psycopg and ADBC read")
finally:
    for process in (server, secure):
        if process is not None:
            process.terminate()
            process.wait()
    shutil.rmtree(work, ignore_errors=True)
