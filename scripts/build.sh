#!/usr/bin/env bash
# Builds every binary, plus a statically linked aloft-init (PID 1 inside machines must run in
# any image, even one with no C library) as target/<profile>/aloft-init-static.
#   scripts/build.sh            debug build
#   scripts/build.sh --release  release build
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
flags=()
if [ "${1:-}" = "--release" ]; then
  profile=release
  flags=(--release)
fi
cargo build "${flags[@]}" --workspace --bins --locked
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build "${flags[@]}" --locked -p aloft-init --bin aloft-init \
  --target "$host" --target-dir target/static
# Copy then rename: running machines may hold the old file open.
cp "target/static/$host/$profile/aloft-init" "target/$profile/.aloft-init-static.tmp"
mv -f "target/$profile/.aloft-init-static.tmp" "target/$profile/aloft-init-static"
echo "build: ok (target/$profile)"
