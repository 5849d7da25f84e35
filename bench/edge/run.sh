#!/usr/bin/env bash
# Edge proxy throughput and tail latency: wrk straight to a backend, through HAProxy (1 thread),
# and through the aloft edge (one thread: a current-thread runtime; and two threads), all on loopback on the same machine.
# Prints requests/s and p99 side by side with ratios. Not part of the test suite.
#
#   bench/edge/run.sh            # BACKEND=nginx (default) or hello, DURATION=10s, ROUNDS=1
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10s}
BACKEND=${BACKEND:-nginx}
P_BACKEND=18081 P_HAPROXY=18082 P_EDGE1=18083 P_EDGE2=18084

for tool in wrk haproxy; do
    command -v "$tool" >/dev/null || { echo "installing $tool" >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y "$tool" >/dev/null; }
done
if [ "$BACKEND" = nginx ] && ! command -v nginx >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light >/dev/null
fi

cargo build --release -q -p aloft-proxy --example edge
[ "$BACKEND" = hello ] && cargo build --release -q -p hello

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

# The backend.
if [ "$BACKEND" = nginx ]; then
    mkdir -p "$TMP/nginx"
    cat >"$TMP/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx;
    proxy_temp_path $TMP/nginx;
    fastcgi_temp_path $TMP/nginx;
    uwsgi_temp_path $TMP/nginx;
    scgi_temp_path $TMP/nginx;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$P_BACKEND;
        location / { return 200 "hello from the backend\n"; }
    }
}
NGINX
    nginx -c "$TMP/nginx.conf" &
    PIDS+=($!)
else
    PORT=$P_BACKEND target/release/hello >/dev/null &
    PIDS+=($!)
fi
wait_port $P_BACKEND

# HAProxy, one thread, keep-alive to the backend.
cat >"$TMP/haproxy.cfg" <<HAP
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend edge
    bind 127.0.0.1:$P_HAPROXY
    default_backend app
backend app
    http-reuse always
    server s1 127.0.0.1:$P_BACKEND
HAP
haproxy -f "$TMP/haproxy.cfg" -db >/dev/null 2>&1 &
PIDS+=($!)
wait_port $P_HAPROXY

# The aloft edge with a one-app route table pointing at the same backend.
cat >"$TMP/routes.json" <<JSON
{"revision": 1, "apps": [{"app": "bench", "org": "bench",
  "services": [{"internal_port": $P_BACKEND, "ports": [{"port": 80, "handlers": ["http"]}],
                "concurrency": {"kind": "requests", "soft_limit": 100000}}],
  "machines": [{"id": "m1", "region": "local", "host_id": "bench", "address": "127.0.0.1", "state": "started"}]}]}
JSON
ALOFT_EDGE_THREADS=1 target/release/examples/edge "$TMP/routes.json" "127.0.0.1:$P_EDGE1" >/dev/null &
PIDS+=($!)
ALOFT_EDGE_THREADS=2 target/release/examples/edge "$TMP/routes.json" "127.0.0.1:$P_EDGE2" >/dev/null &
PIDS+=($!)
wait_port $P_EDGE1
wait_port $P_EDGE2

# wrk -> "rps p99_ms"
measure() {
    local out rps p99 unit
    out=$(wrk -t2 -c50 -d"$DURATION" --latency -H "Host: bench.aloft.test" "http://127.0.0.1:$1/")
    if echo "$out" | grep -q "Non-2xx"; then echo "non-2xx answers on port $1" >&2; echo "$out" >&2; exit 1; fi
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    unit=$(echo "$p99" | sed 's/[0-9.]*//')
    p99=$(echo "$p99" | sed 's/[a-z]*$//')
    case "$unit" in
        us) p99=$(awk "BEGIN {print $p99 / 1000}") ;;
        s) p99=$(awk "BEGIN {print $p99 * 1000}") ;;
    esac
    echo "$rps $p99"
}

# ROUNDS runs interleave the four targets; the round with the median req/s is kept per target.
ROUNDS=${ROUNDS:-1}
declare -A runs
for _ in $(seq 1 "$ROUNDS"); do
    for port in $P_BACKEND $P_HAPROXY $P_EDGE1 $P_EDGE2; do
        runs[$port]+="$(measure "$port")"$'\n'
    done
done
median() { printf '%s' "${runs[$1]}" | sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
read -r d_rps d_p99 < <(median $P_BACKEND)
read -r h_rps h_p99 < <(median $P_HAPROXY)
read -r e1_rps e1_p99 < <(median $P_EDGE1)
read -r e2_rps e2_p99 < <(median $P_EDGE2)

echo
echo "wrk -t2 -c50 -d$DURATION, backend: $BACKEND, $(nproc) cores, loopback, median of $ROUNDS round(s), load average $(cut -d' ' -f1 /proc/loadavg)"
printf '%-24s %12s %10s %14s %14s\n' "path" "req/s" "p99 ms" "vs direct" "vs haproxy"
row() {
    printf '%-24s %12.0f %10.2f %13.2fx %13.2fx\n' "$1" "$2" "$3" \
        "$(awk "BEGIN {print $2 / $d_rps}")" "$(awk "BEGIN {print $2 / $h_rps}")"
}
row "direct" "$d_rps" "$d_p99"
row "haproxy (1 thread)" "$h_rps" "$h_p99"
row "aloft edge (1 thread)" "$e1_rps" "$e1_p99"
row "aloft edge (2 threads)" "$e2_rps" "$e2_p99"
