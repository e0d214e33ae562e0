#!/usr/bin/env bash
# Nexmark (issue 28): each query of examples/nexmark/ over N generated events
# (default 1 000 000) by one `weir run` process, output to /dev/null.
# Prints a markdown table: wall time, CPU time (user + system), events/s and
# events/s per core (events / CPU seconds, the figure Nexmark reports).
#
#   scripts/bench-nexmark.sh [EVENTS]        (builds weir --release first)
#   WEIR_BIN=path/to/weir scripts/bench-nexmark.sh 200000
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-1000000}
if [ -z "${WEIR_BIN:-}" ]; then
  cargo build --release --quiet
  WEIR_BIN="${CARGO_TARGET_DIR:-target}/release/weir"
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
echo "| query | events | wall s | CPU s | events/s | events/s per core |"
echo "|---|---:|---:|---:|---:|---:|"
for toml in $(ls examples/nexmark/q*.toml | sort -V); do
  q=$(basename "$toml" .toml)
  sed "s/^events = .*/events = $events/" "$toml" > "$dir/$q.toml"
  /usr/bin/time -f "%e %U %S" -o "$dir/time" "$WEIR_BIN" run "$dir/$q.toml" > /dev/null
  read -r wall user sys < "$dir/time"
  python3 - "$q" "$events" "$wall" "$user" "$sys" <<'PY'
import sys
q, n, wall, user, sys_ = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:6])
cpu = user + sys_
print(f"| {q} | {n:,} | {wall:.2f} | {cpu:.2f} | {n / wall:,.0f} | {n / cpu:,.0f} |")
PY
done
