#!/usr/bin/env bash
# Machine start latency and per-machine footprint on one host: a real server, a real agent
# (64 CPUs, 16 GB declared), a busybox httpd image pushed into the built-in registry and
# already cached on the host (a warm-up machine pulls it first).
#   (a) stopped→started: POST …/start until the app accepts TCP on [private_ip]:8080
#   (b) create→started:  POST …/machines until the app accepts TCP on [private_ip]:8080
#   floor: `runc run -d` of the same image unpacked once with umoci (terminal off, network
#          namespace removed so its httpd listens on the host's loopback), until it accepts
#          TCP, then `runc delete -f`. The floor has no network namespace, veth, overlay
#          rootfs, cgroup limits beyond runc's defaults, or init, so it is a strict floor.
#   (c) memory the platform adds per running machine beyond the app: the RSS of every process
#       in the machine's cgroup that is not the app (aloft-init), and any process per machine
#       left on the host (runc leaves none: no shim).
# Prints p50/p99 of each, the ratios, and the footprint. N machines (default 50).
# BIN_DIR=DIR uses the aloft, latency and aloft-init-static binaries already built in DIR
# (e.g. to compare two builds) instead of building target/release. LOG_DIR=DIR keeps the
# server's and agent's logs there.
set -euo pipefail
export RUST_BACKTRACE=0
cd "$(dirname "$0")/.."
N=${N:-50}
if [ -n "${BIN_DIR:-}" ]; then
  bindir=$BIN_DIR
else
  scripts/build.sh --release >/dev/null
  bindir=target/release
fi
bin=$bindir/aloft
work=$(mktemp -d)
cleanup() {
  if [ -n "${LOG_DIR:-}" ]; then mkdir -p "$LOG_DIR" && cp "$work"/*.log "$LOG_DIR"/ 2>/dev/null || true; fi
  kill "${agent:-}" "${server:-}" 2>/dev/null || true
  for id in $(ls "$work/agent/machines/runc" 2>/dev/null); do
    runc --root "$work/agent/machines/runc" delete -f "$id" >/dev/null 2>&1 || true
    ip netns delete "aloft-$id" 2>/dev/null || true
  done
  grep -o " $work[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
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
  --config.entrypoint=httpd --config.entrypoint=-f --config.entrypoint=-p \
  --config.entrypoint=8080 --config.entrypoint=-h --config.entrypoint=/www

"$bin" server --listen 127.0.0.1:0 --data-dir "$work/server" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/server.log" | head -1)
token=$(cat "$work/server/admin-token")
export ALOFT_API_URL=$url ALOFT_API_TOKEN=$token
image="${url#http://}/bench/web:1"
skopeo copy --quiet --dest-tls-verify=false --dest-creds "a:$token" "oci:$work/layout:1" "docker://$image"
ALOFT_JOIN_TOKEN="$token" "$bin" agent --control "$url" --region ams --data-dir "$work/agent" \
  --cpus 64 --memory-mb 16384 --no-https >"$work/agent.log" 2>&1 &
agent=$!
for _ in $(seq 100); do grep -q " joined " "$work/agent.log" 2>/dev/null && break; sleep 0.1; done
"$bin" apps create bench >/dev/null

ours=$("$bindir/latency" aloft --url "$url" --token "$token" --app bench --image "$image" --machines "$N")
echo "$ours"

# (c) Footprint of the running machines (the N measured ones plus the warm-up).
ids=$("$bin" machine list --app bench --json | jq -r '.[] | select(.state == "started") | .id')
count=0 init_kb=0 app_kb=0
for id in $ids; do
  count=$((count + 1))
  for pid in $(cat "/sys/fs/cgroup/memory/aloft/$id/cgroup.procs" 2>/dev/null \
               || cat "/sys/fs/cgroup/aloft/$id/cgroup.procs"); do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    if tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q httpd; then
      app_kb=$((app_kb + ${rss:-0}))
    else
      init_kb=$((init_kb + ${rss:-0}))
    fi
  done
done
# Processes on the host outside the machines' cgroups that name a machine (a shim, a log
# forwarder): there should be none.
per_host=0
for id in $ids; do
  n=$(ps -eo pid,args | grep -v grep | grep -c "$id" || true)
  per_host=$((per_host + n))
done
agent_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$agent/status")

# The floor.
skopeo copy --quiet --src-tls-verify=false --src-creds "a:$token" "docker://$image" "oci:$work/pulled:1"
umoci unpack --image "$work/pulled:1" "$work/bundle" >/dev/null
jq '.process.terminal = false
    | .process.args = ["/bin/busybox", "httpd", "-f", "-p", "127.0.0.1:18080", "-h", "/www"]
    | .linux.namespaces |= map(select(.type != "network"))' \
  "$work/bundle/config.json" > "$work/bundle/config.tmp"
mv "$work/bundle/config.tmp" "$work/bundle/config.json"
floor=$("$bindir/latency" runc --bundle "$work/bundle" --root "$work/runc" --runs "$N")
echo "$floor"

p50() { echo "$1" | grep "$2" | sed -E 's/.* p50 ([0-9.]+) ms.*/\1/'; }
p99() { echo "$1" | grep "$2" | sed -E 's/.* p99 ([0-9.]+) ms.*/\1/'; }
f50=$(p50 "$floor" runc) f99=$(p99 "$floor" runc)
for what in "stopped→started" "create→started"; do
  o50=$(p50 "$ours" "$what") o99=$(p99 "$ours" "$what")
  printf "%-16s aloft p50 %s ms p99 %s ms | runc p50 %s ms p99 %s ms | ratio p50 %.2fx p99 %.2fx\n" \
    "$what" "$o50" "$o99" "$f50" "$f99" "$(echo "$o50 / $f50" | bc -l)" "$(echo "$o99 / $f99" | bc -l)"
done
printf "footprint over %d running machines: aloft-init %.0f KB RSS per machine (the app: %.0f KB), %d host processes per machine outside the sandbox; the agent itself %d KB in all\n" \
  "$count" "$(echo "$init_kb / $count" | bc -l)" "$(echo "$app_kb / $count" | bc -l)" "$((per_host / count))" "$agent_kb"
