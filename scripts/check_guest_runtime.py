#!/usr/bin/env python3
"""Checks a rebuilt guest runtime against the checked-in one: it imports
nothing and its size is within 1 % (used by scripts/test.sh for
udfs/python/weir_py.wasm, whose builds differ in the order of string
constants only)."""
import sys


def sections(data):
    if data[:8] != b"\0asm\1\0\0\0":
        sys.exit("not a wasm module")
    i = 8
    while i < len(data):
        sid = data[i]
        i += 1
        size = shift = 0
        while True:
            byte = data[i]
            i += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        yield sid, data[i:i + size]
        i += size


rebuilt, checked_in = (open(p, "rb").read() for p in sys.argv[1:3])
imports = [body for sid, body in sections(rebuilt) if sid == 2 and body[:1] != b"\0"]
if imports:
    sys.exit(f"{sys.argv[1]} imports something: a guest runtime must import nothing")
ratio = len(rebuilt) / len(checked_in)
if abs(ratio - 1) > 0.01:
    sys.exit(f"{sys.argv[1]} is {len(rebuilt)} bytes, {sys.argv[2]} {len(checked_in)}: rebuild it and commit")
print(f"{sys.argv[1]}: no imports, {len(rebuilt)} bytes ({ratio:.4f} of the checked-in module)")
