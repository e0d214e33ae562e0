#!/usr/bin/env python3
"""The JavaScript runtime guest (udfs/js/weir_js.wasm) on its own, in
wasmtime (the `wasmtime` PyPI package, cranelift like weir): instance
start-up (instantiate + weir_init: QuickJS context, bytecode read, script
run) and the guest's cost per row of `js_add` (two BIGINT) and `js_upper`
(VARCHAR) on 8192-row batches. The host's marshalling is not included
(weir's own bench does that); this isolates what QuickJS costs.

    pip install wasmtime && scripts/bench_js_guest.py
"""
import os, struct, sys, time
import wasmtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WASM = os.path.join(REPO, "udfs/js/weir_js.wasm")
engine = wasmtime.Engine()
module = wasmtime.Module.from_file(engine, WASM)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from guest_harness import (Guest as _Guest, ROWS, sample_columns, signature_table,  # noqa: E402
                           strings, time_start_up)

def program(source, functions):
    g = Guest()
    f = g.call("weir_js_compile", [strings([b"bench.js"]), strings([source.encode()])], 1)
    code = g.read(f[3], f[4])
    blob = signature_table(b"WJS1", functions)
    return blob + code


def Guest():
    return _Guest(engine, module)


def start(blob):
    return Guest().init(blob)


SOURCE = """
function js_add(a, b) { return a + b; }
function js_upper(s) { return s.toUpperCase(); }
"""
blob = program(SOURCE, [("js_add", ["int64", "int64"], "int64"), ("js_upper", ["utf8"], "utf8")])

g = time_start_up(start, blob)
ints, words = sample_columns()
for name, cols in [("js_add", [(ints, None), (ints, None)]), ("js_upper", [words])]:
    export = "weir_js_fn_0" if name == "js_add" else "weir_js_fn_1"
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
    g.call("weir_js_fn_0", [(ints[:8], None), (ints[:8], None)], 1)
    one.append(time.perf_counter() - t0)
one.sort()
print(f"js_add, 1-row call after the first: median {one[len(one)//2]*1e6:.1f} us")
