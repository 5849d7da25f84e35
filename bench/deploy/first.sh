#!/usr/bin/env bash
# A user's first deploy: in `aloft dev` (three regions), the time from `aloft deploy --image`
# of an ordinary Debian image (bookworm with Python, ~260 MB unpacked, an OCI layout) to the
# app answering through the edge from the primary region's city. Each round deploys a new app
# from a new directory with a four-line fly.toml. The first round fills the caches (registry
# blobs, the hosts' layer stores) and is reported apart; the others are "cached" deploys.
# Target: p50 <= 5 s (Fly documents a machine create P90 under 5 s, for the machine alone).
#
#   bench/deploy/first.sh                          # ROUNDS=5
#   BIN=target/debug/aloft bench/deploy/first.sh   # an already built binary
set -euo pipefail
export RUST_BACKTRACE=0 NO_COLOR=1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-5}

if [ -n "${BIN:-}" ]; then
  bin=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
  profile=$(basename "$(dirname "$bin")")
else
  scripts/build.sh --release >/dev/null
  bin=$ROOT/target/release/aloft
  profile=release
fi
cargo build -q --locked -p aloft-bench --bin debian-image $([ "$profile" = release ] && echo --release)
image=$("$ROOT/target/$profile/debian-image")

work=$(mktemp -d)
# Machines' roots (in their user namespaces) pass through the data dir to their rootfs.
chmod 711 "$work"
prefix=bfh$$
cleanup() {
  [ -n "${dev:-}" ] && kill -INT "$dev" 2>/dev/null && wait "$dev" 2>/dev/null || true
  "$bin" dev down --prefix "$prefix" --data-dir "$work/dev" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" dev --prefix "$prefix" --data-dir "$work/dev" --listen 127.0.0.1:0 --http 127.0.0.1:0 \
  --https 127.0.0.1:0 >"$work/dev.log" 2>&1 &
dev=$!
for _ in $(seq 600); do grep -q "^Try:" "$work/dev.log" 2>/dev/null && break; sleep 0.2; done
grep -q "^Try:" "$work/dev.log" || { cat "$work/dev.log"; echo "bench: aloft dev did not come up" >&2; exit 1; }
export ALOFT_API_URL=$(awk '/^control plane/ {print $3; exit}' "$work/dev.log")
export ALOFT_API_TOKEN=$(cat "$work/dev/server/admin-token")

now() { date +%s.%N; }
deploy_once() {
  local app=$1 dir=$work/$1
  mkdir -p "$dir"
  printf 'app = "%s"\nprimary_region = "ams"\n[http_service]\ninternal_port = 8080\n' "$app" >"$dir/fly.toml"
  "$bin" apps create "$app" >/dev/null
  local start end
  start=$(now)
  (cd "$dir" && "$bin" deploy --image "$image" >"$dir/deploy.log" 2>&1) || { cat "$dir/deploy.log"; exit 1; }
  until "$bin" dev exec --prefix "$prefix" --data-dir "$work/dev" --from ams -- \
      curl -sf -m 5 -o /dev/null "http://$app.localhost/" 2>/dev/null; do
    sleep 0.05
  done
  end=$(now)
  echo "$end - $start" | bc
}

first=$(deploy_once fh0)
times=()
for i in $(seq 1 "$ROUNDS"); do
  times+=("$(deploy_once "fh$i")")
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
p50=$(echo "$sorted" | awk -v n="${#times[@]}" 'NR == int((n + 1) / 2) {print; exit}')
printf 'first deploy (cold caches):          %6.2f s\n' "$first"
printf 'cached deploys (%d): %s\n' "$ROUNDS" "$(printf '%.2f ' "${times[@]}")"
printf 'cached deploy p50:                   %6.2f s   (target <= 5 s)\n' "$p50"
