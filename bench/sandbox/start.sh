#!/bin/sh
# Stopped -> started latency (p50/p99) of one machine with the hardened sandbox (its own user
# namespace over idmapped layers, the seccomp allowlist, no NET_RAW/MKNOD, nosuid/nodev), the
# same machine without a user namespace, and raw `runc run --detach` of the same bundle, in
# one run; prints the ratio hardened / raw runc (target: p50 <= 1.3).
# Needs root, runc, iproute2 and busybox-static (the machine runs a busybox rootfs).
# Usage: bench/sandbox/start.sh [STARTS]   (default 50)
set -eu
cd "$(dirname "$0")/../.."
ALOFT_BENCH_STARTS="${1:-50}" exec cargo test -q -p aloft-agent --lib \
    runtime::tests::bench_stopped_to_started -- --exact --ignored --nocapture
