#!/usr/bin/env bash
# Runs every test, and the checks CI runs: installs what the tests need
# and a fresh machine lacks (the broker, Prometheus, clang, the Python
# Kafka client, the wasm target), then formatting, lints, docs and tests.
# Nothing is skipped: a missing tool fails the test that needs it
# (WEIR_REQUIRE_BROKER=0 turns that back into a skip, for quick local runs).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
export PATH="$HOME/.cargo/bin:$PATH"
# Reuse compiled dependencies across clean clones (DataFusion + wasmtime
# take ~15 minutes cold on 2 cores).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
# Keep compiled UDF modules of test runs out of the user's cache.
export WEIR_CACHE_DIR="${WEIR_CACHE_DIR:-$CARGO_TARGET_DIR/weir-code-cache}"
export WEIR_REQUIRE_BROKER="${WEIR_REQUIRE_BROKER:-1}"

apt_install() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  fi
}

if [ "$WEIR_REQUIRE_BROKER" != 0 ]; then
  # The Kafka-protocol broker the streaming tests start on loopback: nisshi
  # (tansu's successor; it expires killed group members). It needs rustc
  # 1.96; about 11 minutes to build once; the binary stays in ~/.cargo/bin.
  if ! command -v nisshi >/dev/null 2>&1; then
    rustup toolchain install 1.96.0 --profile minimal
    cargo +1.96.0 install nisshi --version 0.8.1 --locked --no-default-features --features libsql
  fi
  # The real Prometheus server the metrics test scrapes weir with (Debian).
  command -v prometheus >/dev/null 2>&1 || apt_install prometheus
  # The cluster tests' shared control plane: PostgreSQL from Debian, started
  # by the tests themselves as an unprivileged user on loopback.
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
  # The PostgreSQL client the wire-protocol tests connect to `weir serve` with.
  command -v psql >/dev/null 2>&1 || apt_install postgresql-client
  # Java and the PostgreSQL JDBC driver (Debian): the JDBC client of the
  # same tests (wire::jdbc_browses_a_tenants_catalog).
  command -v javac >/dev/null 2>&1 || apt_install default-jdk-headless
  [ -f /usr/share/java/postgresql.jar ] || apt_install libpostgresql-jdbc-java
  # openssl makes the TLS test's certificate (wire::tls_carries_the_token_over_both_listeners).
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  # psycopg 3 (PyPI), the Python PostgreSQL client of the same tests.
  python3 -c 'import psycopg' 2>/dev/null ||
    python3 -m pip install --quiet 'psycopg[binary]' ||
    python3 -m pip install --quiet --break-system-packages 'psycopg[binary]'
  # ADBC's Flight SQL driver and pyarrow (PyPI): the Arrow Flight SQL client
  # of the same tests.
  python3 -c 'import adbc_driver_flightsql, pyarrow' 2>/dev/null ||
    python3 -m pip install --quiet adbc-driver-flightsql pyarrow ||
    python3 -m pip install --quiet --break-system-packages adbc-driver-flightsql pyarrow
  # clang + wasm-ld for C UDFs (the second authoring language) (Debian).
  { command -v clang >/dev/null 2>&1 && command -v wasm-ld >/dev/null 2>&1; } || apt_install clang lld
  # The JavaScript runtime guest's toolchain: clang's wasm32 runtime and
  # wasi-libc (Debian), to rebuild udfs/js/weir_js.wasm below.
  { [ -f /usr/lib/wasm32-wasi/libc.a ] && ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1; } ||
    apt_install libclang-rt-14-dev-wasm32 wasi-libc
  # The Python runtime guest's toolchain: rustc 1.96 for wasm32 and
  # binaryen's wasm-opt (Debian), to rebuild udfs/python/weir_py.wasm below.
  rustup toolchain list | grep -q '^1.96.0' || rustup toolchain install 1.96.0 --profile minimal
  rustup +1.96.0 target add wasm32-unknown-unknown
  command -v wasm-opt >/dev/null 2>&1 || apt_install binaryen
  # AssemblyScript's compiler for the AssemblyScript UDF tests (npm).
  command -v asc >/dev/null 2>&1 || npm install -g --no-fund --no-audit assemblyscript@0.28.20
  # The independent Kafka client of the README walkthrough test, with its
  # Avro serializer and schema-registry client (the Avro tests).
  if ! python3 -c 'import fastavro; from confluent_kafka.schema_registry.avro import AvroSerializer' 2>/dev/null; then
    python3 -m pip install --quiet 'confluent-kafka[avro,schemaregistry]' ||
      python3 -m pip install --quiet --break-system-packages 'confluent-kafka[avro,schemaregistry]'
  fi
fi
rustup target add wasm32-unknown-unknown
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt

cargo fmt --all --check
if [ "$WEIR_REQUIRE_BROKER" != 0 ]; then
  # The checked-in JavaScript runtime is what its sources give (QuickJS-NG
  # from crates.io, weir_js.c): rebuilt and compared byte for byte.
  rebuilt="$(mktemp -d)/weir_js.wasm"
  ./udfs/js/build.sh "$rebuilt" >/dev/null
  cmp "$rebuilt" udfs/js/weir_js.wasm ||
    { echo "udfs/js/weir_js.wasm differs from what udfs/js/build.sh builds; rebuild it and commit" >&2; exit 1; }
  # The checked-in Python runtime (monty from crates.io, udfs/python/src):
  # rebuilt; rustc lays its string constants out in a different order from
  # one build to the next, so the check is that it builds, imports nothing
  # and is the checked-in size within 1 %.
  rebuilt="$(mktemp -d)/weir_py.wasm"
  ./udfs/python/build.sh "$rebuilt" >/dev/null
  python3 scripts/check_guest_runtime.py "$rebuilt" udfs/python/weir_py.wasm
fi
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" \
  cargo doc --workspace --no-deps --locked
cargo test --workspace --locked
# The HTTP API against its own OpenAPI document: schemathesis, every phase
# and check, on the binary the tests just built (scripts/schemathesis.sh).
# The seed follows the commit: each tree explores new cases, and a run on a
# given tree is reproducible (schemathesis prints it; WEIR_ST_SEED=N replays,
# WEIR_ST_SEED= (empty) draws one at random).
commit_seed=$(( 16#$(git rev-parse --short=7 HEAD 2>/dev/null || echo 1) ))
WEIR_ST_SEED="${WEIR_ST_SEED-$commit_seed}" WEIR_ST_MAX_EXAMPLES="${WEIR_ST_MAX_EXAMPLES:-50}" \
  ./scripts/schemathesis.sh "${CARGO_TARGET_DIR:-target}/debug/weir"
