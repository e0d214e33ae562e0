#!/usr/bin/env bash
# Fuzzes the HTTP API of `weir serve` with schemathesis 4 (property-based
# tests generated from GET /openapi.json): every phase (examples, coverage,
# fuzzing, stateful) and every check, against a throwaway server.
#
#   scripts/schemathesis.sh [WEIR_BINARY] [extra `st run` options...]
#
# WEIR_BINARY defaults to $CARGO_TARGET_DIR/debug/weir (target/debug/weir).
# Nothing is built here: build weir first. Extra options go to `st run`, e.g.
# `--exclude-checks positive_data_acceptance` or `--baseline FILE`.
#
# What it does: installs schemathesis into a venv under
# ${XDG_CACHE_HOME:-~/.cache}/weir-st-venv (once), writes a temporary config
# with fresh tokens (an `admin` of tenant `acme`; no rate limit; a file root
# per tenant), starts `weir serve` on a free loopback port, publishes
# tests/tenant/guest.wat as UDF `tools` and deploys pipeline `p1` (so that
# reads, staged runs and pipeline operations reach real objects) in tenant
# `acme` and again in tenant `globex` (with its own admin token), runs
# schemathesis as `acme`'s admin with the path parameter `tenant` drawn from
# both tenants and generated names, a check that no request of `acme`'s
# token reaches another tenant's objects (a 2xx or 409 for a path of
# another tenant fails), and stops the server on exit. Exit status: schemathesis's (non-zero on any failure),
# or 1 if the server panicked or died.
#
# Environment:
#   WEIR_ST_SPEC          pip requirement (default schemathesis==4.32.5, tested)
#   WEIR_ST_MAX_EXAMPLES  test cases per operation and phase (default 100)
#   WEIR_ST_WORKERS       concurrent schemathesis workers (default 2)
#   WEIR_ST_SEED          seed, to replay a run (default: random, printed)
#   WEIR_ST_TIMEOUT       hard limit on the schemathesis run, seconds (default 300)
#   WEIR_ST_REPORT_DIR    JUnit + NDJSON reports (default $CARGO_TARGET_DIR/schemathesis)
# About 1-2 minutes on 2 cores with the defaults.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
weir="${1:-$target/debug/weir}"
[ $# -gt 0 ] && shift
case "$weir" in /*) ;; *) weir="$PWD/$weir" ;; esac
if [ ! -x "$weir" ]; then
  echo "schemathesis.sh: no weir binary at $weir (build it first, or pass its path)" >&2
  exit 2
fi

spec="${WEIR_ST_SPEC:-schemathesis==4.32.5}"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/weir-st-venv"
max_examples="${WEIR_ST_MAX_EXAMPLES:-100}"
workers="${WEIR_ST_WORKERS:-2}"
st_timeout="${WEIR_ST_TIMEOUT:-300}"
report_dir="${WEIR_ST_REPORT_DIR:-$target/schemathesis}"

# --- schemathesis, in its own venv -------------------------------------------
if [ ! -x "$venv/bin/st" ] || [ "$(cat "$venv/.weir-spec" 2>/dev/null)" != "$spec" ]; then
  echo "installing $spec into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "$spec"
  echo "$spec" >"$venv/.weir-spec"
fi
"$venv/bin/st" --version

# --- a throwaway server --------------------------------------------------------
tmp="$(mktemp -d "${TMPDIR:-/tmp}/weir-st.XXXXXX")"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

new_token() { # prints "TOKEN SHA256"
  "$weir" token new | awk '/^token:/ {t = $2} /^sha256:/ {h = $2} END {print t, h}'
}
read -r admin_token admin_sha < <(new_token)
read -r other_token other_sha < <(new_token)
if [ -z "$admin_token" ] || [ -z "$admin_sha" ]; then
  echo "schemathesis.sh: could not read the output of \`weir token new\`" >&2
  exit 1
fi

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
mkdir -p "$tmp/data" "$tmp/cache" "$tmp/files/acme"
cat >"$tmp/weir.toml" <<EOF
cache_dir = "$tmp/cache"

[serve]
listen = "127.0.0.1:$port"
data_dir = "$tmp/data"
requests_per_s = 0
file_roots = ["$tmp/files/{tenant}"]

[[serve.tokens]]
name = "st-admin"
sha256 = "$admin_sha"
tenant = "acme"
role = "admin"

[[serve.tokens]]
name = "st-other"
sha256 = "$other_sha"
tenant = "globex"
role = "admin"
EOF

"$weir" --config "$tmp/weir.toml" serve >"$tmp/serve.log" 2>&1 &
server_pid=$!
# Ready, as a load balancer waits for it: the script languages' runtimes
# compile at start (`serve.warm_languages`; ~10 s in a debug build, from
# the code cache after).
for _ in $(seq 600); do
  curl -fsS "$base/readyz" >/dev/null 2>&1 && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "schemathesis.sh: weir serve exited at start:" >&2
    cat "$tmp/serve.log" >&2
    exit 1
  fi
  sleep 0.2
done
curl -fsS "$base/readyz" >/dev/null || { echo "schemathesis.sh: $base not ready after 120 s" >&2; cat "$tmp/serve.log" >&2; exit 1; }
echo "weir serve on $base (pid $server_pid)"

# --- objects for the tests to find ---------------------------------------------
seed_as() { # TOKEN METHOD PATH CONTENT-TYPE FILE
  local status
  status="$(curl -sS -o "$tmp/seed.out" -w '%{http_code}' -X "$2" -H "Authorization: Bearer $1" \
    -H "Content-Type: $4" --data-binary "@$5" "$base$3")"
  case "$status" in
    2??) ;;
    *) echo "schemathesis.sh: seeding $2 $3 answered $status: $(cat "$tmp/seed.out")" >&2; exit 1 ;;
  esac
}
if [ -f "$repo/tests/tenant/guest.wat" ]; then
  for pair in "acme $admin_token" "globex $other_token"; do
    read -r tenant token <<<"$pair"
    mkdir -p "$tmp/files/$tenant"
    seed_as "$token" POST "/v1/tenants/$tenant/udfs/tools" application/wasm "$repo/tests/tenant/guest.wat"
    printf '{"x": 1}\n{"x": 2}\n' >"$tmp/files/$tenant/in.ndjson"
    cat >"$tmp/p1-$tenant.toml" <<EOF
name = "p1"
tenant = "$tenant"
udfs = ["tools"]
sql = "SELECT x, double(x) AS y FROM source"

[source]
kind = "file"
path = "$tmp/files/$tenant/in.ndjson"
format = "json"
fields = [{ name = "x", type = "int64" }]

[sink]
kind = "stdout"

[errors]
policy = "skip"
EOF
    seed_as "$token" PUT "/v1/tenants/$tenant/pipelines/p1" application/toml "$tmp/p1-$tenant.toml"
  done
fi

# --- schemathesis ----------------------------------------------------------------
# Bodies of these media types have no built-in serializer: send the bytes.
cat >"$tmp/weir_st_hooks.py" <<'EOF'
import schemathesis
from schemathesis.transport.serialization import serialize_binary


@schemathesis.serializer("application/wasm")
def wasm(ctx, value):
    # A module: bytes; an array of small integers (a Vec<u8> in the schema) is those bytes.
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return bytes(v & 0xFF for v in value)
    return serialize_binary(value)


@schemathesis.serializer("application/toml")
def toml(ctx, value):
    if isinstance(value, str):
        return value.encode()
    return serialize_binary(value)


@schemathesis.check
def another_tenants_objects_are_absent(ctx, response, case):
    # The token is `acme`'s admin: a path of any other tenant (`globex`
    # holds the same objects) never succeeds, nor tells an object is there
    # (409); a refusal of the request's form (400, 405, 413, 415) tells
    # nothing about the tenant.
    tenant = (case.path_parameters or {}).get("tenant")
    if tenant is not None and tenant != "acme" and (response.status_code < 300 or response.status_code == 409):
        raise AssertionError(
            f"acme's token got {response.status_code} on tenant {tenant!r}: {case.method} {case.formatted_path}"
        )
EOF
cat >"$tmp/schemathesis.toml" <<'EOF'
[headers]
Authorization = "Bearer ${WEIR_ST_TOKEN}"

# Names and versions that exist, some of the time; the rest are generated.
[dictionaries.names]
values = ["tools", "p1"]
[dictionaries.versions]
values = ["1", "latest"]
[dictionaries.tenants]
values = ["acme", "globex"]

# A well-formed request the server understands but refuses on its meaning
# is part of the contract: an SQL string that is not a valid query, a body
# that is not a WebAssembly module, rows that do not fit the function (422).
# A pipeline file's TOML has no JSON schema: its errors are 400.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]

[[operations]]
include-path = "/v1/tenants/{tenant}/pipelines/{name}"
include-method = "PUT"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422", "429"]

[parameters]
"path.tenant" = { dictionary = "tenants", probability = 0.9 }
"path.name" = { dictionary = "names", probability = 0.3 }
"path.version" = { dictionary = "versions", probability = 0.3 }
EOF

mkdir -p "$report_dir"
report_dir="$(cd "$report_dir" && pwd)"
st_args=(
  run "$base/openapi.json"
  --checks all
  --phases examples,coverage,fuzzing,stateful
  --max-examples "$max_examples"
  --workers "$workers"
  --continue-on-failure
  --request-timeout 20
  --report junit,ndjson
  --report-dir "$report_dir"
  --no-color
)
[ -n "${WEIR_ST_SEED:-}" ] && st_args+=(--seed "$WEIR_ST_SEED")

run_st() {
  # In $tmp: schemathesis keeps its example database in the working directory.
  (
    cd "$tmp"
    WEIR_ST_TOKEN="$admin_token" SCHEMATHESIS_HOOKS=weir_st_hooks PYTHONPATH="$tmp" \
      timeout --kill-after=10 "$st_timeout" \
      "$venv/bin/st" --config-file "$tmp/schemathesis.toml" "${st_args[@]}" "$@"
  ) 2>&1 | tee "$tmp/st.out"
  return "${PIPESTATUS[0]}"
}
set +e
run_st "$@"
status=$?
# An internal error of schemathesis itself (seen: hypothesis's "AST
# constructor recursion depth mismatch" while it generated cases), with no
# finding about the API, is run once more; a finding never is.
if [ "$status" = 1 ] && grep -q 'Runtime Error' "$tmp/st.out" && ! grep -q '^Failures:' "$tmp/st.out"; then
  echo "schemathesis.sh: schemathesis failed inside itself, not on the API; running it once more" >&2
  run_st "$@"
  status=$?
fi
set -e
if [ "$status" = 124 ]; then
  echo "schemathesis.sh: schemathesis ran over ${st_timeout} s" >&2
fi

if grep -q 'panicked at' "$tmp/serve.log"; then
  echo "schemathesis.sh: weir serve panicked:" >&2
  grep -B2 -A10 'panicked at' "$tmp/serve.log" >&2
  [ "$status" = 0 ] && status=1
fi
if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "schemathesis.sh: weir serve died during the run:" >&2
  tail -50 "$tmp/serve.log" >&2
  [ "$status" = 0 ] && status=1
fi
echo "reports: $report_dir"
exit "$status"
