#!/bin/sh
# Start cost of a per-machine disk (`aloft agent --machine-disk-mb`): N machines (default 10)
# started twice with a 1 GB disk (first start: mkfs.ext4 + loop mount; later starts: the disk
# is already mounted) and twice without, in one run. Needs root, runc, mkfs.ext4 and
# busybox-static.
# Usage: bench/machine-disk.sh [N]
set -eu
cd "$(dirname "$0")/.."
ALOFT_BENCH_MACHINES="${1:-10}" exec cargo test -q -p aloft-agent --lib \
    runtime::tests::bench_disk_starts -- --exact --ignored --nocapture
