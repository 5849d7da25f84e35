#!/usr/bin/env bash
# Runs every gate and test: formatting, lints, then the whole test suite against real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build (binaries used by the end-to-end tests, and a static aloft-init)"
scripts/build.sh

echo "== cargo test"
cargo test --workspace --locked --no-fail-fast -- --test-threads="${ALOFT_TEST_THREADS:-4}"
