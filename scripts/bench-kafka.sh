#!/usr/bin/env bash
# Starts a nisshi broker (SQLite storage in a temporary folder) on a free loopback port and runs the end-to-end
# Kafka benchmark (benches/kafka.rs) against it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
(cd "$dir" && exec nisshi broker --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine sqlite://broker.db) >/dev/null 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; rm -rf "$dir"' EXIT
until (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.1; done
WEIR_BENCH_BROKERS="127.0.0.1:$port" timeout "${WEIR_BENCH_TIMEOUT:-900}" cargo bench --bench kafka
