#!/usr/bin/env bash
# Runs every test. The guest UDFs are built to wasm by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown
cargo test --workspace --locked
