#!/usr/bin/env bash
# Edge proxy throughput and latency: wrk straight to the backend ("direct"), through HAProxy and
# through the aloft edge, for HTTP/1.1 keep-alive and for HTTPS (TLS terminated at the proxy
# with the same certificate; "direct" HTTPS is nginx terminating TLS itself). All on loopback.
# Not part of the test suite. Needs root for HTTPS (wrk runs in a private mount namespace whose
# /etc/hosts maps the app's hostname to 127.0.0.1, so it sends the SNI name the edge expects).
#
#   bench/edge/run.sh
#     THREADS=1      HAProxy nbthread = edge runtime threads (1: a current-thread runtime)
#     LAYOUT=workers with THREADS > 1, the edge serves connections on THREADS connection
#                    workers (a single-threaded runtime each); "runtime": one multi-threaded
#                    tokio runtime of THREADS workers
#     PIN=split      wrk on core 0, backend + proxies on core 1 ("none": no pinning, every
#                    process on every core)
#     CONNS=50 DURATION=10s ROUNDS=1 PROTOS="http https"
#     PROFILE=release  the cargo profile the edge is built with ("dist": the production build,
#                    fat LTO and one codegen unit; see docs/edge.md)
#     EDGE_BASE=PATH   also measures another build of the example edge (e.g. a copy of an
#                    earlier target/release/examples/edge) as "base", in the same rounds
#
# Two wrk runs per target and protocol: a loaded one (CONNS connections) for req/s and the
# latency under load, and a one-connection run (one request at a time) for the latency a
# request sees when nothing queues; "added" is the proxy's one-connection latency minus the
# backend's own. The round with the median req/s is kept per target; every round's figures
# ("req/s p50 p99 c1-p50 c1-p99") go to stderr as they are measured.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10s}
THREADS=${THREADS:-1}
LAYOUT=${LAYOUT:-workers}
case "$LAYOUT" in
    workers) [ "$THREADS" -gt 1 ] && EDGE_ENV="ALOFT_EDGE_WORKERS=$THREADS" || EDGE_ENV="" ;;
    runtime) EDGE_ENV="" ;;
    *) echo "LAYOUT is workers or runtime" >&2; exit 2 ;;
esac
PIN=${PIN:-split}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-1}
PROTOS=${PROTOS:-http https}
HOST=bench.aloft.test
P_BACKEND=18081 P_HAPROXY=18082 P_EDGE=18083
P_BACKEND_TLS=18091 P_HAPROXY_TLS=18092 P_EDGE_TLS=18093

for tool in wrk haproxy nginx; do
    pkg=$tool
    [ "$tool" = nginx ] && pkg=nginx-light
    command -v "$tool" >/dev/null || { echo "installing $pkg" >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y "$pkg" >/dev/null; }
done
if [[ " $PROTOS " == *" https "* ]] && [ "$(id -u)" != 0 ]; then
    echo "HTTPS needs root (a mount namespace for wrk's /etc/hosts); measuring HTTP only" >&2
    PROTOS=http
fi

PROFILE=${PROFILE:-release}
cargo build --profile "$PROFILE" -q -p aloft-proxy --example edge
EDGE_BIN=target/$PROFILE/examples/edge
EDGE_BASE=${EDGE_BASE:-}
P_BASE=18084 P_BASE_TLS=18094

case "$PIN" in
    split) CLIENT="taskset -c 0" SERVER="taskset -c 1" ;;
    none) CLIENT="" SERVER="" ;;
    *) echo "PIN is split or none" >&2; exit 2 ;;
esac

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

# One certificate for every TLS terminator.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/haproxy.pem"
printf '127.0.0.1 localhost %s\n' "$HOST" >"$TMP/hosts"

# The backend: nginx, one worker, plain HTTP (and HTTPS for the direct TLS figure).
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx;
    proxy_temp_path $TMP/nginx;
    fastcgi_temp_path $TMP/nginx;
    uwsgi_temp_path $TMP/nginx;
    scgi_temp_path $TMP/nginx;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:$P_BACKEND;
        listen 127.0.0.1:$P_BACKEND_TLS ssl;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        location / { return 200 "hello from the backend\n"; }
    }
}
NGINX
$SERVER nginx -c "$TMP/nginx.conf" &
PIDS+=($!)
wait_port $P_BACKEND

# HAProxy with as many threads as the edge, keep-alive to the backend.
cat >"$TMP/haproxy.cfg" <<HAP
global
    nbthread $THREADS
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend edge
    bind 127.0.0.1:$P_HAPROXY
    bind 127.0.0.1:$P_HAPROXY_TLS ssl crt $TMP/haproxy.pem
    default_backend app
backend app
    http-reuse always
    server s1 127.0.0.1:$P_BACKEND
HAP
$SERVER haproxy -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 &
PIDS+=($!)
wait_port $P_HAPROXY

# The aloft edge with a one-app route table pointing at the same backend.
cat >"$TMP/routes.json" <<JSON
{"revision": 1, "apps": [{"app": "bench", "org": "bench",
  "services": [{"internal_port": $P_BACKEND,
                "ports": [{"port": 80, "handlers": ["http"]}, {"port": 443, "handlers": ["tls", "http"]}],
                "concurrency": {"kind": "requests", "soft_limit": 100000}}],
  "machines": [{"id": "m1", "region": "local", "host_id": "bench", "address": "127.0.0.1", "state": "started"}]}]}
JSON
env $EDGE_ENV ALOFT_EDGE_THREADS=$THREADS ALOFT_EDGE_HTTPS=127.0.0.1:$P_EDGE_TLS \
    ALOFT_EDGE_CERT="$TMP/cert.pem" ALOFT_EDGE_KEY="$TMP/key.pem" ALOFT_EDGE_CERT_HOSTS=$HOST \
    $SERVER "$EDGE_BIN" "$TMP/routes.json" "127.0.0.1:$P_EDGE" >"$TMP/edge.log" 2>&1 &
PIDS+=($!)
wait_port $P_EDGE
wait_port $P_EDGE_TLS
if [ -n "$EDGE_BASE" ]; then
    env $EDGE_ENV ALOFT_EDGE_THREADS=$THREADS ALOFT_EDGE_HTTPS=127.0.0.1:$P_BASE_TLS \
        ALOFT_EDGE_CERT="$TMP/cert.pem" ALOFT_EDGE_KEY="$TMP/key.pem" ALOFT_EDGE_CERT_HOSTS=$HOST \
        $SERVER "$EDGE_BASE" "$TMP/routes.json" "127.0.0.1:$P_BASE" >"$TMP/base.log" 2>&1 &
    PIDS+=($!)
    wait_port $P_BASE
    wait_port $P_BASE_TLS
fi

# Converts a wrk latency ("512.00us", "1.20ms", "1.00s") to ms.
to_ms() {
    local v=$1 n unit
    n=$(echo "$v" | sed 's/[a-z]*$//')
    unit=$(echo "$v" | sed 's/^[0-9.]*//')
    case "$unit" in
        us) awk "BEGIN {print $n / 1000}" ;;
        ms) echo "$n" ;;
        s) awk "BEGIN {print $n * 1000}" ;;
        *) echo "cannot read latency $v" >&2; exit 1 ;;
    esac
}

# wrk SCHEME PORT CONNS DURATION -> "rps p50_ms p99_ms"
measure() {
    local scheme=$1 port=$2 conns=$3 duration=$4 out rps p50 p99
    local cmd="wrk -t1 -c$conns -d$duration --latency -H 'Host: $HOST' $scheme://$HOST:$port/"
    if [ "$(id -u)" = 0 ]; then
        out=$($CLIENT unshare -m sh -c "mount --bind '$TMP/hosts' /etc/hosts && exec $cmd")
    else
        out=$($CLIENT sh -c "$(echo "$cmd" | sed "s|$scheme://$HOST|$scheme://127.0.0.1|")")
    fi
    if echo "$out" | grep -qE "Non-2xx|Socket errors"; then echo "errors on $scheme port $port" >&2; echo "$out" >&2; exit 1; fi
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
    p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
    echo "$rps $p50 $p99"
}

declare -A runs
targets() { # PROTO -> "name port" lines
    if [ "$1" = http ]; then
        printf '%s\n' "direct $P_BACKEND" "haproxy $P_HAPROXY" "aloft $P_EDGE"
        [ -z "$EDGE_BASE" ] || echo "base $P_BASE"
    else
        printf '%s\n' "direct $P_BACKEND_TLS" "haproxy $P_HAPROXY_TLS" "aloft $P_EDGE_TLS"
        [ -z "$EDGE_BASE" ] || echo "base $P_BASE_TLS"
    fi
}
for round in $(seq 1 "$ROUNDS"); do
    for proto in $PROTOS; do
        while read -r name port; do
            # "rps p50 p99 c1_p50 c1_p99" per round
            loaded=$(measure "$proto" "$port" "$CONNS" "$DURATION")
            single=$(measure "$proto" "$port" 1 "$DURATION")
            # Each round on stderr as it is measured, for the spread behind the medians.
            echo "round $round $proto $name: $loaded $(echo "$single" | cut -d' ' -f2-)" >&2
            runs[$proto.$name]+="$loaded $(echo "$single" | cut -d' ' -f2-)"$'\n'
        done < <(targets "$proto")
    done
done
median() { printf '%s' "${runs[$1]}" | sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }

echo
echo "wrk -t1 -c$CONNS -d$DURATION (and -c1 for the one-connection latency); nginx backend (1 worker);"
echo "edge built with profile $PROFILE$([ -n "$EDGE_BASE" ] && echo "; base: $EDGE_BASE");"
echo "proxy threads: $THREADS (HAProxy nbthread $THREADS; edge layout $LAYOUT); pinning: $PIN$([ "$PIN" = split ] && echo " (wrk on core 0; nginx, HAProxy, edge on core 1)");"
echo "$(nproc) cores, loopback, median of $ROUNDS round(s), load average $(cut -d' ' -f1 /proc/loadavg)"
printf '%-6s %-8s %10s %9s %9s %9s %9s %9s %9s %10s\n' proto path "req/s" "p50 ms" "p99 ms" "c1 p50" "c1 p99" "+p50 ms" "+p99 ms" "vs haproxy"
for proto in $PROTOS; do
    read -r d_rps d_p50 d_p99 d_c50 d_c99 < <(median "$proto.direct")
    read -r h_rps _ < <(median "$proto.haproxy")
    for name in direct haproxy aloft $([ -z "$EDGE_BASE" ] || echo base); do
        read -r rps p50 p99 c50 c99 < <(median "$proto.$name")
        printf '%-6s %-8s %10.0f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.2fx\n' "$proto" "$name" \
            "$rps" "$p50" "$p99" "$c50" "$c99" \
            "$(awk "BEGIN {print $c50 - $d_c50}")" "$(awk "BEGIN {print $c99 - $d_c99}")" \
            "$(awk "BEGIN {print $rps / $h_rps}")"
    done
done
echo "p50/p99: under load (-c$CONNS); c1: one connection; +p50/+p99: c1 latency minus direct's c1 latency"
