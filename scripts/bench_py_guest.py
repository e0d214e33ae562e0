#!/usr/bin/env python3
"""The Python runtime guest (udfs/python/weir_py.wasm) on its own, in
wasmtime (the `wasmtime` PyPI package, cranelift like weir): instance
start-up (instantiate + weir_init: monty's session, the source run once,
the batch loops defined) and the guest's cost per row of `py_twice`
(BIGINT), `py_upper` (VARCHAR), `py_zone` (a dict lookup), and of a
string going in and out unchanged (`py_id`, per row, and `py_id_batch`,
`@batch`: the cost of the boundary alone) on 8192-row batches. The host's marshalling is not included (`cargo bench --bench
languages` does that); this isolates what the interpreter costs.

    pip install wasmtime && scripts/bench_py_guest.py
"""
import os, struct, sys, time
import wasmtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WASM = os.path.join(REPO, "udfs/python/weir_py.wasm")
engine = wasmtime.Engine()
t0 = time.perf_counter()
module = wasmtime.Module.from_file(engine, WASM)
print(f"module: {os.path.getsize(WASM)} bytes, compiled by cranelift in {time.perf_counter() - t0:.1f} s")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from guest_harness import (Guest as _Guest, ROWS, sample_columns, signature_table,  # noqa: E402
                           time_start_up)


def program(source, functions):
    blob = signature_table(b"WPY1", functions)
    return blob + struct.pack("<I", 8) + b"bench.py" + source.encode()


def Guest():
    return _Guest(engine, module)


def start(blob):
    return Guest().init(blob)


SOURCE = """
def py_twice(x):
    return x * 2

def py_upper(s):
    return s.upper()

ZONES = {'weir': 1, 'Dam': 2, 'river': 3, 'flow': 4, 'Kafka': 5, 'arrow': 6}

def py_zone(s):
    return ZONES.get(s.split(' ')[0], 0)

def py_id(s):
    return s

@batch
def py_id_batch(ss):
    return ss
"""
blob = program(SOURCE, [("py_twice", ["int64"], "int64"), ("py_upper", ["utf8"], "utf8"),
                        ("py_zone", ["utf8"], "int64"), ("py_id", ["utf8"], "utf8"),
                        ("py_id_batch", ["utf8"], "utf8")])

g = time_start_up(start, blob)
ints, words = sample_columns()
for k, name, cols in [(0, "py_twice", [(ints, None)]), (1, "py_upper", [words]), (2, "py_zone", [words]),
                          (3, "py_id", [words]), (4, "py_id_batch", [words])]:
    export = f"weir_py_fn_{k}"
    g.call(export, cols, ROWS)
    runs = []
    for _ in range(15):
        t0 = time.perf_counter()
        g.call(export, cols, ROWS)
        runs.append(time.perf_counter() - t0)
    runs.sort()
    print(f"{name}: {runs[len(runs)//2]/ROWS*1e9:.0f} ns/row (median of 15 batches of {ROWS})")
one = []
for _ in range(200):
    t0 = time.perf_counter()
    g.call("weir_py_fn_0", [(ints[:8], None)], 1)
    one.append(time.perf_counter() - t0)
one.sort()
print(f"py_twice, 1-row call after the first: median {one[len(one)//2]*1e6:.1f} us")
