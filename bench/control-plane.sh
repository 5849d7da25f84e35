#!/usr/bin/env bash
# Control-plane throughput and latency (create + get + list) on SQLite, and placement time for
# 10,000 machines over 1,000 hosts. Prints the figures.
set -euo pipefail
export RUST_BACKTRACE=0
cd "$(dirname "$0")/.."
cargo build --release -q -p aloft -p aloft-bench
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
target/release/aloft server --listen 127.0.0.1:0 --data-dir "$dir" > "$dir/out" 2>/dev/null &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$dir/out" | head -1)
token=$(cat "$dir/admin-token")
target/release/control-load --url "$url" --token "$token" --machines "${MACHINES:-4000}" --concurrency "${CONCURRENCY:-32}"
target/release/placement
