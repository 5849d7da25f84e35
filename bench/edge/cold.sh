#!/usr/bin/env bash
# Cold-request latency through the edge: a machine is stopped through the Machines API, the
# edge learns it, then one request is timed from send to first byte (curl's
# time_starttransfer) while the edge wakes the machine. Prints p50/p99 over ROUNDS (default 20),
# with a warm request and a start through the Machines API (first byte polled straight from the
# machine) for context.
# Needs root (runc), busybox-static, umoci and skopeo (scripts/setup.sh). Not part of the suite.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-20}
P_API=${P_API:-18290} P_EDGE=${P_EDGE:-18291}
# The release binary, and a statically linked aloft-init for the machine's PID 1 (the busybox
# image has no C library for a dynamically linked one), built as scripts/build.sh does.
cargo build --release -q -p aloft
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q -p aloft-init --bin aloft-init \
    --target "$host" --target-dir target/static
cp "target/static/$host/release/aloft-init" target/release/.aloft-init-static.tmp
mv -f target/release/.aloft-init-static.tmp target/release/aloft-init-static
BIN="$ROOT/target/release/aloft"

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # Machines' rootfs overlays left mounted by a failed run.
    grep -o " $TMP[^ ]*" /proc/mounts | sort -r | while read -r m; do umount "$m" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

"$BIN" server --data-dir "$TMP/server" --listen "127.0.0.1:$P_API" >"$TMP/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$TMP/server/admin-token" ] && break; sleep 0.1; done
export ALOFT_API_URL="http://127.0.0.1:$P_API" ALOFT_API_TOKEN
ALOFT_API_TOKEN=$(tr -d '\n' <"$TMP/server/admin-token")
JOIN=$("$BIN" tokens create --join | tr -d '\n')
ALOFT_JOIN_TOKEN="$JOIN" "$BIN" agent --control "$ALOFT_API_URL" --region ams --data-dir "$TMP/agent" \
    --host-id "coldbench$$" --http "127.0.0.1:$P_EDGE" --no-https >"$TMP/agent.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 200); do grep -q " joined " "$TMP/agent.log" && break; sleep 0.1; done

# A busybox httpd image in an OCI layout, pushed to the built-in registry.
mkdir -p "$TMP/rootfs/bin" "$TMP/rootfs/www"
cp /bin/busybox "$TMP/rootfs/bin/busybox"
echo "cold" >"$TMP/rootfs/www/index.html"
umoci init --layout "$TMP/layout" && umoci new --image "$TMP/layout:1"
umoci insert --image "$TMP/layout:1" "$TMP/rootfs" / >/dev/null
umoci config --image "$TMP/layout:1" --clear=config.entrypoint --clear=config.cmd \
    --config.entrypoint=/bin/busybox --config.entrypoint=httpd --config.entrypoint=-f \
    --config.entrypoint=-p --config.entrypoint=8080 --config.entrypoint=-h --config.entrypoint=/www
skopeo copy --quiet --dest-tls-verify=false --dest-creds "aloft:$ALOFT_API_TOKEN" \
    "oci:$TMP/layout:1" "docker://127.0.0.1:$P_API/cold/busybox:1"
"$BIN" apps create cold >/dev/null
ID=$("$BIN" machine run "127.0.0.1:$P_API/cold/busybox:1" --app cold --region ams \
    --port 80:8080/tcp:http --json | jq -r .id)

saved_state() { jq -r --arg id "$ID" '.apps[] | select(.app=="cold") | .machines[] | select(.id==$id) | .state' \
    "$TMP/agent/edge/routes.json" 2>/dev/null || true; }
for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'host: cold.localhost' "http://127.0.0.1:$P_EDGE/")" = 200 ] && break
    sleep 0.1
done

: >"$TMP/times"
for _ in $(seq 1 "$ROUNDS"); do
    "$BIN" machine stop "$ID" --app cold >/dev/null
    for _ in $(seq 1 300); do [ "$(saved_state)" = stopped ] && break; sleep 0.05; done
    curl -s -o /dev/null -H 'host: cold.localhost' -w '%{http_code} %{time_starttransfer}\n' \
        "http://127.0.0.1:$P_EDGE/" >>"$TMP/times"
done

# For context: the same request once the machine runs (warm), and a start through the Machines
# API with the first byte fetched straight from the machine (polled; no edge involved).
: >"$TMP/warm"
for _ in $(seq 1 "$ROUNDS"); do
    curl -s -o /dev/null -H 'host: cold.localhost' -w '%{http_code} %{time_starttransfer}\n' \
        "http://127.0.0.1:$P_EDGE/" >>"$TMP/warm"
done
ADDR=$(jq -r --arg id "$ID" '.apps[] | select(.app=="cold") | .machines[] | select(.id==$id) | .address' \
    "$TMP/agent/edge/routes.json")
case "$ADDR" in *:*) ADDR="[$ADDR]" ;; esac
: >"$TMP/api"
for _ in $(seq 1 "$ROUNDS"); do
    "$BIN" machine stop "$ID" --app cold >/dev/null
    for _ in $(seq 1 300); do [ "$(saved_state)" = stopped ] && break; sleep 0.05; done
    t0=$(date +%s%N)
    "$BIN" machine start "$ID" --app cold >/dev/null
    code=000
    for _ in $(seq 1 3000); do
        code=$(curl -s -o /dev/null --max-time 1 -w '%{http_code}' "http://$ADDR:8080/" || true)
        [ "$code" = 200 ] && break
    done
    echo "$code $(( ($(date +%s%N) - t0) / 1000 ))e-6" >>"$TMP/api"
done
"$BIN" machine destroy "$ID" --app cold --force >/dev/null || true

report() { # FILE LABEL
    local bad
    bad=$(awk '$1 != 200' "$1" | wc -l)
    sort -k2 -g "$1" | awk -v bad="$bad" -v label="$2" '{ t[NR] = $2 * 1000 } END {
        p50 = t[int((NR + 1) * 0.50)]; p99 = t[NR < 100 ? NR : int(NR * 0.99)];
        printf "%-58s p50 %7.1f ms  p99 %7.1f ms  min %7.1f ms  max %7.1f ms  (%d rounds, %d non-200)\n",
            label, p50, p99, t[1], t[NR], NR, bad }'
}
echo
report "$TMP/times" "cold request via edge (machine stopped -> first byte)"
report "$TMP/warm" "warm request via edge (machine started)"
report "$TMP/api" "Machines API start, then first byte direct (polled)"
