#!/usr/bin/env bash
# Builds udfs/python/weir_py.wasm, the Python runtime guest: monty 1.4.0
# (crates.io, locked by Cargo.lock) and weir's Rust SDK, for
# wasm32-unknown-unknown, importing nothing:
#   - chrono 0.4.45 (crates.io, checksum pinned below) with its `wasmbind`
#     feature emptied, so `Date.now` is never linked (its clock then panics,
#     and monty is configured never to read it);
#   - web-time replaced by ./web-time (a clock that reads zero);
#   - getrandom 0.3's custom backend, defined in src/lib.rs;
#   - ahash pinned to 0.8.12 (Cargo.toml).
# Needs rustc 1.96 (monty's minimum):
#   rustup toolchain install 1.96.0 --profile minimal
#   rustup +1.96.0 target add wasm32-unknown-unknown
# and, to shrink the module, binaryen's wasm-opt (`apt-get install binaryen`;
# skipped with a warning when absent).
# The output is checked in (weir embeds it).
set -euo pipefail
cd "$(dirname "$0")"
HERE=$PWD
OUT=${1:-weir_py.wasm}
TOOLCHAIN=${WEIR_PY_TOOLCHAIN:-1.96.0}
WORK=${WEIR_PY_WORK:-${TMPDIR:-/tmp}/weir-py-build}
CHRONO=chrono-0.4.45
CHRONO_SHA256=1aa79e62e7697b8e29b513a68abacf485adcd1fe8284a4316c5ae868e6633327

mkdir -p "$WORK"
if [ ! -f "$WORK/$CHRONO/.weir-patched" ]; then
    rm -rf "$WORK/$CHRONO"
    curl -sSfL -o "$WORK/$CHRONO.crate" "https://static.crates.io/crates/chrono/$CHRONO.crate"
    echo "$CHRONO_SHA256  $WORK/$CHRONO.crate" | sha256sum -c --quiet
    tar -xzf "$WORK/$CHRONO.crate" -C "$WORK"
    # The feature stays (monty's crates turn it on by default) but enables
    # nothing, and the code behind it is never compiled.
    perl -0pi -e 's/wasmbind = \[\s*"wasm-bindgen",\s*"js-sys",?\s*\]/wasmbind = []/' "$WORK/$CHRONO/Cargo.toml"
    grep -q '^wasmbind = \[\]' "$WORK/$CHRONO/Cargo.toml"
    grep -rl 'feature = "wasmbind"' "$WORK/$CHRONO/src" | xargs sed -i "s/feature = \"wasmbind\"/any()/"
    touch "$WORK/$CHRONO/.weir-patched"
fi

export CARGO_TARGET_DIR=${WEIR_PY_TARGET:-$WORK/target}
# Deterministic output: no local paths in panic messages.
export RUSTFLAGS="--cfg getrandom_backend=\"custom\" --remap-path-prefix=$HOME/.cargo/registry/src=crates --remap-path-prefix=$WORK=crates --remap-path-prefix=$HERE/../..=weir"
[ -f Cargo.lock ] || cargo "+$TOOLCHAIN" generate-lockfile --config "patch.crates-io.chrono.path=\"$WORK/$CHRONO\""
cargo "+$TOOLCHAIN" build --release --locked --target wasm32-unknown-unknown \
    --config "patch.crates-io.chrono.path=\"$WORK/$CHRONO\""
WASM=$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/weir_py.wasm
if command -v wasm-opt >/dev/null; then
    wasm-opt -Oz --enable-nontrapping-float-to-int --enable-bulk-memory --enable-sign-ext --enable-mutable-globals --strip-debug --strip-producers "$WASM" -o "$OUT"
else
    echo "warning: wasm-opt not found (apt-get install binaryen): the module is not shrunk" >&2
    cp "$WASM" "$OUT"
fi
echo "built $OUT ($(wc -c < "$OUT") bytes)"
