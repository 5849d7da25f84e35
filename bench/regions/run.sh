#!/usr/bin/env bash
# Multi-region figures on one box, with `aloft dev --regions ams,iad,syd`:
#
#  1. routable at every edge: from the Machines API call that starts a stopped machine (in syd)
#     to the first answer from that machine through each region's edge (asked from each city,
#     forcing the instance), p50/p99 per edge and for "every edge" (the slowest of the three).
#     An edge that cannot reach the machine (another region's, before the mesh carries
#     backhaul) is reported as "never".
#  2. failover: a client in syd asks the anycast address one request at a time while syd's host
#     is killed (`aloft dev kill`); the time from the kill to the first answer from another
#     region, and the requests that failed.
#
# Usage: bench/regions/run.sh [ITERATIONS]   (as root; default 20; ALOFT_BIN to pick a binary)
set -euo pipefail
cd "$(dirname "$0")/../.."

N="${1:-20}"
BIN="${ALOFT_BIN:-target/release/aloft}"
[ -x "$BIN" ] || BIN=target/debug/aloft
[ -x "$BIN" ] || { echo "build aloft first (scripts/build.sh --release)" >&2; exit 1; }
PROBE="$(pwd)/bench/regions/probe.py"
PREFIX="bnch$((RANDOM % 1000))"
DATA="$(mktemp -d /tmp/aloft-bench-regions.XXXXXX)"
DATA_DEV="$DATA/dev"
CITIES=(ams iad syd)

cleanup() {
  [ -n "${DEV_PID:-}" ] && kill -INT "$DEV_PID" 2>/dev/null && wait "$DEV_PID" 2>/dev/null || true
  "$BIN" dev down --purge --prefix "$PREFIX" --data-dir "$DATA_DEV" >/dev/null 2>&1 || true
  rm -rf "$DATA"
}
trap cleanup EXIT

"$BIN" dev --prefix "$PREFIX" --data-dir "$DATA_DEV" --listen 127.0.0.1:0 --http 127.0.0.1:0 \
  >"$DATA/dev.log" 2>&1 &
DEV_PID=$!
for _ in $(seq 1 300); do grep -q '^Try:' "$DATA/dev.log" && break; sleep 0.2; done
grep -q '^Try:' "$DATA/dev.log" || { cat "$DATA/dev.log" >&2; exit 1; }
API="$(awk '/^control plane/ {print $3}' "$DATA/dev.log")"
TOKEN="$(cat "$DATA_DEV/server/admin-token")"
IMAGE="$(awk '/^image/ {print $2}' "$DATA/dev.log" | sed 's/@.*//')"
api() { curl -sS -f -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' "$@"; }

# A probe app with one machine in syd that only starts when asked (no autostart).
api -X POST "$API/v1/apps" -d '{"app_name":"probe"}' >/dev/null
ID="$(api -X POST "$API/v1/apps/probe/machines" -d "{\"region\":\"syd\",\"config\":{\"image\":\"$IMAGE\",
  \"services\":[{\"protocol\":\"tcp\",\"internal_port\":8080,\"autostart\":false,
  \"ports\":[{\"port\":80,\"handlers\":[\"http\"]}]}]}}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
wait_state() { api "$API/v1/apps/probe/machines/$ID/wait?state=$1&timeout=60" >/dev/null; }
wait_state started
api -X POST "$API/v1/apps/probe/machines/$ID/stop" -d '{}' >/dev/null
wait_state stopped

echo "== routable at every edge: machine start (API call) -> first answer through each edge, $N runs"
: >"$DATA/routable.txt"
for i in $(seq 1 "$N"); do
  rm -f "$DATA"/go "$DATA"/out-*
  pids=()
  for c in "${CITIES[@]}"; do
    "$BIN" dev exec --prefix "$PREFIX" --from "$c" -- \
      python3 "$PROBE" routable probe.localhost "$ID" "$DATA/go" "$DATA/out-$c" &
    pids+=($!)
  done
  sleep 0.5
  t0="$(date +%s.%N)"
  touch "$DATA/go"
  api -X POST "$API/v1/apps/probe/machines/$ID/start" -d '{}' >/dev/null
  wait "${pids[@]}"
  line="$t0"
  for c in "${CITIES[@]}"; do line="$line $(cat "$DATA/out-$c")"; done
  echo "$line" >>"$DATA/routable.txt"
  api -X POST "$API/v1/apps/probe/machines/$ID/stop" -d '{}' >/dev/null
  wait_state stopped
done
python3 - "$DATA/routable.txt" "${CITIES[@]}" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
cities = sys.argv[2:]
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
def show(name, vals, never):
    if not vals:
        print(f"  {name:<11} never routable ({never}/{len(rows)} runs)")
        return
    extra = f", never in {never}/{len(rows)} runs" if never else ""
    print(f"  {name:<11} p50 {pct(vals, 50)*1000:7.1f} ms   p99 {pct(vals, 99)*1000:7.1f} ms{extra}")
every, every_never = [], 0
for i, c in enumerate(cities):
    vals = [float(r[i + 1]) - float(r[0]) for r in rows if r[i + 1] != "never"]
    show(f"edge {c}", vals, len(rows) - len(vals))
for r in rows:
    if "never" in r[1:]:
        every_never += 1
    else:
        every.append(max(float(x) for x in r[1:]) - float(r[0]))
show("every edge", every, every_never)
EOF

echo "== failover: a client in syd while syd's host dies"
"$BIN" dev exec --prefix "$PREFIX" --from syd -- \
  python3 "$PROBE" load hello.localhost 10 "$DATA/load.txt" &
LOAD=$!
sleep 4
tk="$(date +%s.%N)"
"$BIN" dev kill --prefix "$PREFIX" --data-dir "$DATA_DEV" --region syd >/dev/null
wait "$LOAD"
python3 - "$DATA/load.txt" "$tk" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
tk = float(sys.argv[2])
before = [r for r in rows if float(r[1]) < tk]
after = [r for r in rows if float(r[1]) >= tk]
failed = [r for r in rows if r[2] == "error"]
moved = next((r for r in after if r[2] not in ("error", "syd")), None)
print(f"  requests    {len(rows)} ({len(before)} before the kill, all from {sorted(set(r[2] for r in before))})")
print(f"  failed      {len(failed)}")
if moved:
    print(f"  failover    {(float(moved[1]) - tk) * 1000:.1f} ms (kill -> first answer from {moved[2]})")
else:
    print("  failover    never (no answer from another region)")
EOF
