#!/usr/bin/env bash
# From a fresh clone: install the wasm target, build weir and the example
# UDFs, then run SQL with those UDFs over examples/data/. No broker needed.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown
cargo build --release --locked --bin weir
weir="${CARGO_TARGET_DIR:-target}/release/weir"

echo "== building the example UDFs (udfs/) to wasm"
"$weir" udf build udfs --target-dir udfs/target
m=udfs/target/wasm32-unknown-unknown/release

echo "== what a module says about itself"
"$weir" udf inspect "$m/geo.wasm"

echo "== SQL over a CSV file with Rust and hand-written WAT UDFs"
"$weir" sql \
  --udf "$m/geo.wasm" --udf "$m/text.wasm" --udf udfs/examples/wat/fahrenheit.wat \
  --table trips=examples/data/trips.csv \
  "SELECT id, mask_email(rider_email) AS rider,
          round(haversine_km(from_lat, from_lon, to_lat, to_lon), 1) AS km,
          celsius_to_fahrenheit(temp_c) AS temp_f
   FROM trips WHERE haversine_km(from_lat, from_lon, to_lat, to_lon) > 50 ORDER BY km DESC"

echo "== JSON lines over NDJSON, with a UDF that returns NULL instead of failing"
"$weir" sql --format json \
  --udf "$m/finance.wasm" --udf "$m/text.wasm" \
  --table payments=examples/data/payments.ndjson \
  "SELECT id, currency(amount) AS currency, redact_digits(card) AS card FROM payments ORDER BY id"

echo "== a UDF error names the UDF, the row and the reason (exit status 1)"
if "$weir" sql --udf "$m/finance.wasm" --table payments=examples/data/payments.ndjson \
    "SELECT parse_cents(amount) FROM payments"; then
  echo "expected an error" >&2
  exit 1
fi
echo "== demo done"
