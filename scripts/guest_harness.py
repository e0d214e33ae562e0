"""A weir runtime guest driven from Python through wasmtime (the `wasmtime`
PyPI package, cranelift like weir), with no weir host: the harness of
scripts/bench_js_guest.py and scripts/bench_py_guest.py. It writes
arguments and reads results as docs/abi.md lays them out."""
import struct, sys
import wasmtime

TYPES = ["boolean", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
         "uint64", "float32", "float64", "utf8", "binary", "timestamp_us", "date32"]


class Guest:
    """One instance of `module`."""

    def __init__(self, engine, module):
        self.store = wasmtime.Store(engine)
        self.ex = wasmtime.Instance(self.store, module, []).exports(self.store)
        self.mem = self.ex["memory"]

    def write(self, ptr, data):
        self.mem.write(self.store, data, ptr)

    def read(self, ptr, n):
        return bytes(self.mem.read(self.store, ptr, ptr + n))

    def call(self, export, columns, rows):
        """columns: list of (values bytes, offsets bytes or None)."""
        total = 16 * len(columns) + sum(len(v) + len(o or b"") + 16 for v, o in columns)
        base = self.ex["weir_alloc"](self.store, total)
        p = base + 16 * len(columns)
        for i, (values, offsets) in enumerate(columns):
            vp = p
            self.write(vp, values)
            p += (len(values) + 7) // 8 * 8 + 8
            op = 0
            if offsets is not None:
                op = p
                self.write(op, offsets)
                p += (len(offsets) + 7) // 8 * 8 + 8
            self.write(base + 16 * i, struct.pack("<4I", 0, vp, len(values), op))
        res = self.ex[export](self.store, base, rows)
        f = struct.unpack("<10I", self.read(res, 40))
        if f[0] != 0:
            sys.exit(f"{export} failed (status {f[0]}): {self.read(f[7], min(f[8], 4096)).decode(errors='replace')}")
        return f

    def init(self, program):
        """Hands `program` to `weir_init`, as the host does with `weir.init`."""
        base = self.ex["weir_alloc"](self.store, len(program))
        self.write(base, program)
        res = self.ex["weir_init"](self.store, base, len(program))
        assert struct.unpack("<I", self.read(res, 4))[0] == 0
        return self


def strings(vals):
    data = b"".join(vals)
    offs = [0]
    for v in vals:
        offs.append(offs[-1] + len(v))
    return data, struct.pack(f"<{len(offs)}i", *offs)


def signature_table(magic, functions):
    """The start of a program (lang/runtime.rs): magic, count, signatures."""
    blob = magic + struct.pack("<I", len(functions))
    for name, args, ret in functions:
        blob += struct.pack("<I", len(name)) + name.encode() + struct.pack("<I", len(args))
        blob += bytes(TYPES.index(a) for a in args) + bytes([TYPES.index(ret), 1])
    return blob


ROWS = 8192


def time_start_up(start, blob, runs=20):
    """Starts `runs` instances of `blob` with `start`, prints the median and
    least start-up time; returns the last instance."""
    import time
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        g = start(blob)
        t.append(time.perf_counter() - t0)
    t.sort()
    print(f"instance start-up (instantiate + weir_init): median {t[len(t)//2]*1e3:.2f} ms, min {t[0]*1e3:.2f} ms")
    return g


def sample_columns():
    """The benches' inputs: ROWS int64s 0.., and ROWS short non-ASCII strings."""
    ints = struct.pack(f"<{ROWS}q", *range(ROWS))
    words = strings([f"straße größe {i}".encode() for i in range(ROWS)])
    return ints, words
