#!/usr/bin/env python3
"""Tenant weights (issue 29): two tenants' pipelines contend for one guest
thread in one `weir run` process; their throughputs should follow their
`weight`s.

Tenants `heavy` (weight W, default 3) and `light` (weight 1) each run
`SELECT id, work(id) FROM source` (the CPU-heavy `work` of
tests/tenant/guest.wat, ~10 000 LCG rounds per row) over the same NDJSON
file, with `sandbox.guest_threads = 1`. Reported: each pipeline's
records/s while both run (from the progress lines, every 10 s), their
ratio, and the target (W : 1 within 10 %).

    scripts/bench_weights.py [path/to/weir]   # default: release build
    WEIR_BENCH_WEIGHT=3 WEIR_BENCH_RECORDS=400000
Only the standard library; the binary must be built (cargo build --release).
"""

import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
WEIR = sys.argv[1] if len(sys.argv) > 1 else os.path.join(TARGET, "release", "weir")
WEIGHT = int(os.environ.get("WEIR_BENCH_WEIGHT", "3"))
RECORDS = int(os.environ.get("WEIR_BENCH_RECORDS", "400000"))


def main():
    work = tempfile.mkdtemp(prefix="weir-bench-weights-")
    data = os.path.join(work, "in.ndjson")
    with open(data, "w") as f:
        for i in range(RECORDS):
            f.write(f'{{"id":{i}}}\n')
    with open(os.path.join(work, "weir.toml"), "w") as f:
        f.write(f'cache_dir = "{work}/cache"\n[sandbox]\nguest_threads = 1\n')
    with open(os.path.join(work, "policy.toml"), "w") as f:
        f.write(f"[tenants.heavy]\nweight = {WEIGHT}\n[tenants.light]\nweight = 1\n")
    pipelines = os.path.join(work, "pipelines")
    os.makedirs(pipelines)
    guest = os.path.join(REPO, "tests/tenant/guest.wat")
    for tenant in ("heavy", "light"):
        with open(os.path.join(pipelines, f"{tenant}.toml"), "w") as f:
            f.write(
                f'name = "{tenant}"\ntenant = "{tenant}"\nudfs = ["{guest}"]\n'
                'sql = "SELECT id, work(id) AS w FROM source"\n'
                f'[source]\nkind = "file"\npath = "{data}"\nformat = "json"\n'
                'fields = [{ name = "id", type = "int64" }]\n'
                f'[sink]\nkind = "file"\npath = "{work}/{tenant}.out"\n'
                '[errors]\npolicy = "fail"\n[batch]\nmax_records = 1024\n'
            )
    env = dict(os.environ, WEIR_LOG="info")
    out = subprocess.run(
        [WEIR, "--config", os.path.join(work, "weir.toml"), "run",
         "--policy", os.path.join(work, "policy.toml"), pipelines],
        capture_output=True, text=True, env=env, timeout=3600,
    )
    if out.returncode != 0:
        print(out.stderr[-3000:])
        sys.exit(1)
    # Progress lines while both run: the first ones of each pipeline, before
    # either finished.
    rates = {"heavy": [], "light": []}
    finished = False
    for line in out.stderr.splitlines():
        if "pipeline stopped" in line:
            finished = True
        m = re.search(r"progress pipeline=(\w+) .*records_per_s=([0-9.]+)", line)
        if m and not finished:
            rates[m.group(1)].append(float(m.group(2)))
    heavy, light = rates["heavy"], rates["light"]
    if not heavy or not light:
        print("no progress line while both ran (raise WEIR_BENCH_RECORDS)")
        print(out.stderr[-2000:])
        sys.exit(1)
    h = sum(heavy) / len(heavy)
    l = sum(light) / len(light)
    ratio = h / l if l else float("inf")
    ok = abs(ratio / WEIGHT - 1) <= 0.10
    print(f"weights {WEIGHT}:1, one guest thread, {RECORDS} records each")
    print(f"  heavy: {h:,.0f} records/s ({len(heavy)} samples)")
    print(f"  light: {l:,.0f} records/s ({len(light)} samples)")
    print(f"  ratio {ratio:.2f} (target {WEIGHT} within 10 %: {'met' if ok else 'missed'})")


if __name__ == "__main__":
    main()
