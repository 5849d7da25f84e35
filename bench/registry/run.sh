#!/usr/bin/env bash
# Push and pull throughput of a ~200 MB multi-layer image with `skopeo copy`, against
# Aloft's registry and Debian's docker-registry (CNCF distribution), with `cp -r` of the
# same OCI layout as the floor. Each run starts both registries on empty storage.
#
# Usage: bench/registry/run.sh [runs]   (needs skopeo, umoci, docker-registry, python3)
set -euo pipefail

RUNS=${1:-3}
LAYERS=${LAYERS:-4}
LAYER_MB=${LAYER_MB:-50}
ALOFT_PORT=${ALOFT_PORT:-5001}
PEER_PORT=${PEER_PORT:-5002}
TOKEN=bench-token
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/aloft-registry-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

for tool in skopeo umoci docker-registry python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

echo "building the standalone registry (release)..." >&2
(cd "$ROOT" && cargo build --release -q -p aloft-registry --example serve)
SERVE="$ROOT/target/release/examples/serve"

echo "building a ${LAYERS}x${LAYER_MB} MB image with umoci..." >&2
umoci init --layout "$WORK/layout" >/dev/null
umoci new --image "$WORK/layout:latest" >/dev/null
for i in $(seq 1 "$LAYERS"); do
  head -c "$((LAYER_MB * 1024 * 1024))" /dev/urandom > "$WORK/layer$i.bin"
  umoci insert --image "$WORK/layout:latest" "$WORK/layer$i.bin" "/data/layer$i.bin" >/dev/null
  rm "$WORK/layer$i.bin"
done
umoci gc --layout "$WORK/layout" >/dev/null
BYTES=$(du -sb "$WORK/layout/blobs" | cut -f1)

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }

wait_http() {
  for _ in $(seq 1 200); do
    curl -s -o /dev/null "http://$1/v2/" && return 0
    sleep 0.05
  done
  echo "registry on $1 did not come up" >&2; exit 1
}

start_aloft() {
  rm -rf "$WORK/aloft-data"
  "$SERVE" --listen "127.0.0.1:$ALOFT_PORT" --data-dir "$WORK/aloft-data" --token "$TOKEN" >"$WORK/aloft.log" 2>&1 &
  PIDS+=($!); ALOFT_PID=$!
  wait_http "127.0.0.1:$ALOFT_PORT"
}

start_peer() {
  rm -rf "$WORK/peer-data"
  cat > "$WORK/peer.yml" <<YAML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $WORK/peer-data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PEER_PORT
YAML
  docker-registry serve "$WORK/peer.yml" >"$WORK/peer.log" 2>&1 &
  PIDS+=($!); PEER_PID=$!
  wait_http "127.0.0.1:$PEER_PORT"
}

stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

# push <target> <creds-args...>: seconds for one push of the layout.
push() {
  local target=$1; shift
  local t0; t0=$(now)
  skopeo copy -q --preserve-digests --dest-tls-verify=false "$@" "oci:$WORK/layout:latest" "docker://$target" >/dev/null
  elapsed "$t0" "$(now)"
}
pull() {
  local target=$1; shift
  rm -rf "$WORK/pulled"
  local t0; t0=$(now)
  skopeo copy -q --src-tls-verify=false "$@" "docker://$target" "oci:$WORK/pulled:latest" >/dev/null
  local t; t=$(elapsed "$t0" "$(now)")
  diff -rq "$WORK/layout/blobs" "$WORK/pulled/blobs" >/dev/null || { echo "pulled blobs differ" >&2; exit 1; }
  echo "$t"
}

declare -a A_PUSH A_PULL P_PUSH P_PULL CP
for run in $(seq 1 "$RUNS"); do
  echo "run $run/$RUNS" >&2
  sync
  start_aloft
  A_PUSH+=("$(push "127.0.0.1:$ALOFT_PORT/bench/img:v1" --dest-creds "x:$TOKEN")")
  A_PULL+=("$(pull "127.0.0.1:$ALOFT_PORT/bench/img:v1" --src-creds "x:$TOKEN")")
  stop "$ALOFT_PID"
  sync
  start_peer
  P_PUSH+=("$(push "127.0.0.1:$PEER_PORT/bench/img:v1")")
  P_PULL+=("$(pull "127.0.0.1:$PEER_PORT/bench/img:v1")")
  stop "$PEER_PID"
  rm -rf "$WORK/cp"
  sync
  t0=$(now); cp -r "$WORK/layout" "$WORK/cp"; CP+=("$(elapsed "$t0" "$(now)")")
done

python3 - "$BYTES" "${A_PUSH[*]}" "${A_PULL[*]}" "${P_PUSH[*]}" "${P_PULL[*]}" "${CP[*]}" <<'PY'
import statistics, sys
size = int(sys.argv[1])
names = ["aloft push", "aloft pull", "distribution push", "distribution pull", "cp -r (floor)"]
series = [list(map(float, s.split())) for s in sys.argv[2:]]
med = {n: statistics.median(s) for n, s in zip(names, series)}
mbs = {n: size / 1e6 / t for n, t in med.items()}
print(f"image: {size / 1e6:.1f} MB of blobs; median of {len(series[0])} runs")
print(f"{'':20} {'seconds':>8} {'MB/s':>8}")
for n in names:
    print(f"{n:20} {med[n]:8.2f} {mbs[n]:8.1f}")
print(f"aloft/distribution  push {mbs['aloft push'] / mbs['distribution push']:.2f}x   pull {mbs['aloft pull'] / mbs['distribution pull']:.2f}x")
print(f"aloft/cp floor      push {mbs['aloft push'] / mbs['cp -r (floor)']:.2f}x   pull {mbs['aloft pull'] / mbs['cp -r (floor)']:.2f}x")
PY
