#!/usr/bin/env bash
# Time to start 20 machines on one host from an image the host has not cached: a real server,
# a real agent with an empty data dir, a busybox image pushed into the built-in registry.
# Beside it, the floor: the same image pulled with skopeo, unpacked once with umoci and
# started 20 times with `runc run -d` directly. Prints both and the ratio.
set -euo pipefail
export RUST_BACKTRACE=0
cd "$(dirname "$0")/.."
N=${N:-20}
scripts/build.sh --release >/dev/null
bin=target/release/aloft
work=$(mktemp -d)
cleanup() {
  kill "${agent:-}" "${server:-}" 2>/dev/null || true
  for i in $(seq "$N"); do runc --root "$work/runc" delete -f "peer$i" >/dev/null 2>&1 || true; done
  sleep 0.5
  rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

# The image.
mkdir -p "$work/rootfs/bin" "$work/rootfs/www"
cp /bin/busybox "$work/rootfs/bin/"
ln -s busybox "$work/rootfs/bin/sh"
echo ok > "$work/rootfs/www/index.html"
umoci init --layout "$work/layout" && umoci new --image "$work/layout:1"
umoci insert --image "$work/layout:1" "$work/rootfs" / >/dev/null
umoci config --image "$work/layout:1" --config.entrypoint=/bin/busybox \
  --config.entrypoint=httpd --config.entrypoint=-f --config.entrypoint=-p --config.entrypoint=8080

"$bin" server --listen 127.0.0.1:0 --data-dir "$work/server" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/server.log" | head -1)
token=$(cat "$work/server/admin-token")
export ALOFT_API_URL=$url ALOFT_API_TOKEN=$token
skopeo copy --quiet --dest-tls-verify=false --dest-creds "a:$token" "oci:$work/layout:1" "docker://${url#http://}/bench/web:1"
ALOFT_JOIN_TOKEN="$token" "$bin" agent --control "$url" --region ams --data-dir "$work/agent" --cpus 64 --memory-mb 16384 --no-https >"$work/agent.log" 2>&1 &
agent=$!
for _ in $(seq 100); do grep -q " joined " "$work/agent.log" 2>/dev/null && break; sleep 0.1; done
"$bin" apps create bench >/dev/null

start=$(date +%s.%N)
for i in $(seq "$N"); do
  "$bin" machine run "${url#http://}/bench/web:1" --app bench --region ams --memory 128 --detach >/dev/null &
done
wait $(jobs -p | grep -v -e "^$agent$" -e "^$server$") 2>/dev/null || true
deadline=$(( $(date +%s) + 120 ))
while [ "$("$bin" machine list --app bench --json | jq '[.[] | select(.state == "started")] | length')" -lt "$N" ]; do
  if [ "$(date +%s)" -gt "$deadline" ]; then echo "machines did not all start within 120 s" >&2; exit 1; fi
  sleep 0.05
done
ours=$(echo "$(date +%s.%N) - $start" | bc)

# The floor: skopeo pull, one unpack, N x runc run -d.
start=$(date +%s.%N)
skopeo copy --quiet --src-tls-verify=false --src-creds "a:$token" "docker://${url#http://}/bench/web:1" "oci:$work/pulled:1"
umoci unpack --image "$work/pulled:1" "$work/bundle" >/dev/null
jq '.process.terminal = false' "$work/bundle/config.json" > "$work/bundle/config.tmp"
mv "$work/bundle/config.tmp" "$work/bundle/config.json"
for i in $(seq "$N"); do
  runc --root "$work/runc" run -d --bundle "$work/bundle" "peer$i" >/dev/null </dev/null
done
peer=$(echo "$(date +%s.%N) - $start" | bc)

printf "start %d machines from an uncached image: aloft %.2f s, skopeo+umoci+runc %.2f s, ratio %.2fx\n" \
  "$N" "$ours" "$peer" "$(echo "$ours / $peer" | bc -l)"
