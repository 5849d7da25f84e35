#!/bin/sh
# Start and stop N machines (default 20) with the sandbox runtime driver, then `runc run`
# the same OCI bundle N times, and print both figures and their ratio.
# Needs root, runc and busybox-static (the machines run a busybox rootfs).
# Usage: bench/sandbox-start.sh [N]
set -eu
cd "$(dirname "$0")/.."
ALOFT_BENCH_MACHINES="${1:-20}" exec cargo test -q -p aloft-agent --lib \
    runtime::tests::bench_start_stop -- --exact --ignored --nocapture
