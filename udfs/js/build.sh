#!/usr/bin/env bash
# Builds udfs/js/weir_js.wasm, the JavaScript runtime guest: QuickJS-NG
# 0.16.2 and its wasm shim from the `rquickjs-sys` 0.14.0 crate on crates.io
# (checksum pinned below), weir_js.c, and Debian's wasi-libc (its libc.a
# only as a library of pure functions: the shim and weir_js.c define every
# function that would import WASI, so the module imports nothing).
#
# Needs clang 14 and wasm-ld, the wasm32 compiler runtime and wasi-libc:
#   apt-get install clang lld libclang-rt-14-dev-wasm32 wasi-libc
# The output is checked in (weir embeds it); CI rebuilds it and checks that
# the bytes are the same (`scripts/test.sh`), so the checked-in module is
# what these sources give.
set -euo pipefail
cd "$(dirname "$0")"
CRATE=rquickjs-sys-0.14.0
SHA256=cee271d0eeba64f0915b846cb7ae02e16faf3dfdffdca91731101d9d30fe3423
WORK=${WEIR_JS_WORK:-${TMPDIR:-/tmp}/weir-js-build}
OUT=${1:-weir_js.wasm}
CC=${WEIR_CLANG:-clang}

mkdir -p "$WORK"
if [ ! -d "$WORK/$CRATE" ]; then
    curl -sSfL -o "$WORK/$CRATE.crate" "https://static.crates.io/crates/rquickjs-sys/$CRATE.crate"
    echo "$SHA256  $WORK/$CRATE.crate" | sha256sum -c --quiet
    tar -xzf "$WORK/$CRATE.crate" -C "$WORK"
fi
SRC=$WORK/$CRATE
# Deterministic output: no paths, no timestamps in the module.
SYSROOT=${WEIR_WASI_SYSROOT:-/usr}
# wasm32-wasi for wasi-libc's headers; the objects are plain wasm32.
FLAGS=(--target=wasm32-wasi -O2 -std=gnu11 -D_GNU_SOURCE -DEMSCRIPTEN=1
       -DFE_DOWNWARD=0 -DFE_UPWARD=0 -DNDEBUG -isystem "$SYSROOT/include/wasm32-wasi"
       -I "$SRC/quickjs" -ffile-prefix-map="$SRC"=. -ffile-prefix-map="$PWD"=.
       -Wno-everything)
OBJ=$WORK/obj
mkdir -p "$OBJ"
for f in quickjs libregexp libunicode dtoa; do
    "$CC" "${FLAGS[@]}" -c "$SRC/quickjs/$f.c" -o "$OBJ/$f.o" &
done
"$CC" "${FLAGS[@]}" -c "$SRC/wasm-shim/shim.c" -o "$OBJ/shim.o" &
"$CC" "${FLAGS[@]}" -c weir_js.c -o "$OBJ/weir_js.o" &
wait
# A 1 MiB C stack for the interpreter (JS_SetMaxStackSize stops JS
# recursion at 768 KiB of it); no entry point; exports only what weir_js.c
# marks with export_name.
# Any symbol left undefined is an error (it would be an import).
"$CC" --target=wasm32-unknown-unknown -nostdlib -Wl,--no-entry -Wl,--strip-all \
    -Wl,-z,stack-size=1048576 -Wl,--gc-sections \
    "$OBJ/weir_js.o" "$OBJ/quickjs.o" "$OBJ/libregexp.o" "$OBJ/libunicode.o" \
    "$OBJ/dtoa.o" "$OBJ/shim.o" "$SYSROOT/lib/wasm32-wasi/libc.a" \
    "$("$CC" --target=wasm32-wasi -print-libgcc-file-name)" \
    -o "$OUT"
echo "built $OUT ($(wc -c < "$OUT") bytes)"
