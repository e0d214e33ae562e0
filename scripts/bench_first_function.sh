#!/usr/bin/env bash
# A tenant's first Python function after `weir serve` starts, with an empty
# code cache: seconds until /readyz, then the first `CREATE FUNCTION …
# LANGUAGE python` statement's time, with `serve.warm_languages` off and on.
# Usage: scripts/bench_first_function.sh WEIR_BINARY   (BENCHMARKS.md)
set -euo pipefail
bin=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sha=$(printf secret | sha256sum | cut -d' ' -f1)
port=18480
for warm in false true true; do
  rm -rf "$work/cache" "$work/data"
  cat > "$work/weir.toml" <<TOML
[serve]
listen = "127.0.0.1:$port"
data_dir = "$work/data"
warm_languages = $warm
[[serve.tokens]]
name = "ci"
sha256 = "$sha"
tenant = "acme"
role = "publisher"
TOML
  WEIR_CACHE_DIR="$work/cache" "$bin" serve --config "$work/weir.toml" >/dev/null 2>&1 &
  pid=$!
  t0=$(date +%s.%N)
  until curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" | grep -q 200; do sleep 0.05; done
  t1=$(date +%s.%N)
  q='{"sql": "CREATE FUNCTION py_shout(s VARCHAR) RETURNS VARCHAR LANGUAGE python AS $$ return s.upper() $$; SELECT py_shout('"'x'"') AS y"}'
  took=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -H 'Authorization: Bearer secret' \
    -H 'Content-Type: application/json' -d "$q" "http://127.0.0.1:$port/v1/tenants/acme/sql")
  echo "warm_languages=$warm  /readyz after $(echo "$t1 - $t0" | bc) s  first Python statement: HTTP $took s"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
