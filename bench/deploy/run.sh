#!/usr/bin/env bash
# Deploy timing and lost requests: for groups of 1, 10 and 50 machines of a busybox httpd
# image with an HTTP check (interval 1 s), the time from `aloft deploy` to every machine
# healthy on the new image, for rolling, canary and bluegreen, and the time of a deploy whose
# image never passes its check (it rolls back by itself). During each deploy wrk sends
# constant load through the agent's edge; failed requests (socket errors and non-2xx
# answers) are counted per deploy. Target: 0. Real server, real agent, runc. Not part of the
# test suite.
#
#   bench/deploy/run.sh              # SIZES="1 10 50" STRATEGIES="rolling canary bluegreen"
#   BIN=target/debug/aloft bench/deploy/run.sh   # an already built binary, no release build
set -euo pipefail
export RUST_BACKTRACE=0 NO_COLOR=1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
SIZES=${SIZES:-1 10 50}
STRATEGIES=${STRATEGIES:-rolling canary bluegreen}
EDGE_PORT=${EDGE_PORT:-18190}

for tool in wrk skopeo umoci jq bc; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done
if [ -n "${BIN:-}" ]; then
  bin=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
else
  scripts/build.sh --release >/dev/null
  bin=$ROOT/target/release/aloft
fi
work=$(mktemp -d)
agent_dir=$work/agent
cleanup() {
  [ -n "${wrk_pid:-}" ] && kill "$wrk_pid" 2>/dev/null || true
  [ -n "${agent:-}" ] && kill -9 "$agent" 2>/dev/null || true
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null || true
  # Machines outlive their agent by design: remove them and their mounts here.
  if [ -d "$agent_dir/machines/runc" ]; then
    for id in $(ls "$agent_dir/machines/runc"); do
      runc --root "$agent_dir/machines/runc" delete -f "$id" >/dev/null 2>&1 || true
      ip netns delete "aloft-$id" 2>/dev/null || true
    done
  fi
  grep -o " $work[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

# Three images: page one, page two, and one that never answers its check.
image() { # name entrypoint...
  local name=$1; shift
  rm -rf "$work/rootfs" && mkdir -p "$work/rootfs/bin" "$work/rootfs/www"
  cp /bin/busybox "$work/rootfs/bin/" && ln -s busybox "$work/rootfs/bin/sh"
  echo "$name" > "$work/rootfs/www/index.html"
  umoci init --layout "$work/$name" && umoci new --image "$work/$name:1"
  umoci insert --image "$work/$name:1" "$work/rootfs" / >/dev/null
  local args=()
  for a in "$@"; do args+=("--config.entrypoint=$a"); done
  umoci config --image "$work/$name:1" "${args[@]}"
}
image one /bin/busybox httpd -f -p 8080 -h /www
image two /bin/busybox httpd -f -p 8080 -h /www
image deaf /bin/busybox sleep 3600

"$bin" server --listen 127.0.0.1:0 --data-dir "$work/server" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/server.log" | head -1)
token=$(cat "$work/server/admin-token")
export ALOFT_API_URL=$url ALOFT_API_TOKEN=$token HOME=$work
registry=${url#http://}
ALOFT_JOIN_TOKEN="$token" "$bin" agent --control "$url" --region ams --data-dir "$agent_dir" \
  --cpus 512 --memory-mb 65536 --http "127.0.0.1:$EDGE_PORT" --no-https >"$work/agent.log" 2>&1 &
agent=$!
for _ in $(seq 100); do grep -q " joined " "$work/agent.log" 2>/dev/null && break; sleep 0.1; done

now() { date +%s.%N; }
# Starts wrk against the app through the edge; `stop_load` counts the failed requests.
start_load() {
  wrk -t1 -c4 -d1h -H "Host: $1.localhost" "http://127.0.0.1:$EDGE_PORT/" >"$work/wrk.out" 2>&1 &
  wrk_pid=$!
  sleep 0.5
}
stop_load() { # sets $failed to FAILED/REQUESTS
  kill -INT "$wrk_pid" 2>/dev/null || true
  wait "$wrk_pid" 2>/dev/null || true
  wrk_pid=
  local errors non2xx total
  errors=$(sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1+\2+\3+\4/p' "$work/wrk.out")
  non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: \([0-9]*\).*/\1/p' "$work/wrk.out")
  total=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$work/wrk.out")
  failed="$(( ${errors:-0} + ${non2xx:-0} ))/${total:-0}"
}

printf "%-9s %5s %12s %16s %13s %16s\n" strategy n deploy_s failed/requests rollback_s failed/requests
for strategy in $STRATEGIES; do
  for n in $SIZES; do
    app="b-$strategy-$n"
    mkdir -p "$work/$app"
    cd "$work/$app"
    printf 'app = "%s"\nprimary_region = "ams"\n[http_service]\ninternal_port = 8080\n[[http_service.checks]]\npath = "/"\ninterval = "1s"\ntimeout = "1s"\n' "$app" > aloft.toml
    "$bin" apps create "$app" >/dev/null
    for name in one two deaf; do
      skopeo copy --quiet --dest-tls-verify=false --dest-creds "a:$token" "oci:$work/$name:1" "docker://$registry/$app/web:$name"
    done
    "$bin" deploy --image "$registry/$app/web:one" >/dev/null
    [ "$n" -gt 1 ] && "$bin" scale count "$n" --yes >/dev/null

    start_load "$app"
    t0=$(now)
    "$bin" deploy --image "$registry/$app/web:two" --strategy "$strategy" >"$work/deploy.log" 2>&1 \
      || { cat "$work/deploy.log" >&2; exit 1; }
    deploy_s=$(echo "$(now) - $t0" | bc)
    stop_load
    deploy_failed=$failed

    start_load "$app"
    t0=$(now)
    if "$bin" deploy --image "$registry/$app/web:deaf" --strategy "$strategy" --wait-timeout 5s >"$work/bad.log" 2>&1; then
      echo "bench: the deaf image deployed" >&2; exit 1
    fi
    rollback_s=$(echo "$(now) - $t0" | bc)
    stop_load
    rollback_failed=$failed

    printf "%-9s %5d %12.2f %16s %13.2f %16s\n" "$strategy" "$n" "$deploy_s" "$deploy_failed" "$rollback_s" "$rollback_failed"
    "$bin" scale count 0 --yes >/dev/null
    cd "$ROOT"
  done
done
echo "(rollback_s includes the 5 s --wait-timeout the deaf image is given before it fails)"
