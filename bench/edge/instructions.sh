#!/usr/bin/env bash
# Instructions the edge executes per request (valgrind's callgrind), HTTP/1.1 keep-alive and
# HTTPS, for this tree's edge and optionally another build: a figure that, unlike requests/s, does
# not move with what else the machine is doing, so two builds can be compared on a busy machine.
# Not part of the test suite. Needs root for HTTPS (as bench/edge/run.sh).
#
#   bench/edge/instructions.sh
#     EDGE_BASE=PATH  also measures another build of the example edge, as "base"
#     ENGINE=relay    "hyper": every request carries `Connection: keep-alive, x-hop`, which the
#                     relay hands to hyper, so hyper's path is measured instead
#     SHORT=3s LONG=9s CONNS=10
#
# Per protocol, after a warm-up: a short and a long wrk run, each with CONNS new connections,
# the edge's counters zeroed before and dumped after each. The figure is the long run's
# instructions minus the short run's, over its requests minus the short run's: the cost of one
# more request, with connection setup (TLS handshakes) cancelled out. The edge runs under
# callgrind, so it serves far fewer requests per second than it does natively.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
SHORT=${SHORT:-3s}
LONG=${LONG:-9s}
CONNS=${CONNS:-10}
PROTOS=${PROTOS:-http https}
ENGINE=${ENGINE:-relay}
case "$ENGINE" in
    relay) EXTRA="" ;;
    hyper) EXTRA="-H 'Connection: keep-alive, x-hop'" ;;
    *) echo "ENGINE is relay or hyper" >&2; exit 2 ;;
esac
HOST=bench.aloft.test
P_BACKEND=18181 P_EDGE=18183 P_EDGE_TLS=18193

for tool in wrk nginx valgrind; do
    pkg=$tool
    [ "$tool" = nginx ] && pkg=nginx-light
    command -v "$tool" >/dev/null || { echo "installing $pkg" >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y "$pkg" >/dev/null; }
done
if [[ " $PROTOS " == *" https "* ]] && [ "$(id -u)" != 0 ]; then
    echo "HTTPS needs root (a mount namespace for wrk's /etc/hosts); measuring HTTP only" >&2
    PROTOS=http
fi

cargo build --release -q -p aloft-proxy --example edge
EDGE_BIN=$ROOT/target/release/examples/edge
EDGE_BASE=${EDGE_BASE:-}

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
printf '127.0.0.1 localhost %s\n' "$HOST" >"$TMP/hosts"

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
        location / { return 200 "hello from the backend\n"; }
    }
}
NGINX
nginx -c "$TMP/nginx.conf" &
PIDS+=($!)
wait_port $P_BACKEND

cat >"$TMP/routes.json" <<JSON
{"revision": 1, "apps": [{"app": "bench", "org": "bench",
  "services": [{"internal_port": $P_BACKEND,
                "ports": [{"port": 80, "handlers": ["http"]}, {"port": 443, "handlers": ["tls", "http"]}],
                "concurrency": {"kind": "requests", "soft_limit": 100000}}],
  "machines": [{"id": "m1", "region": "local", "host_id": "bench", "address": "127.0.0.1", "state": "started"}]}]}
JSON

# wrk SCHEME PORT DURATION -> requests served
requests() {
    local cmd="wrk -t1 -c$CONNS -d$3 -H 'Host: $HOST' $EXTRA $1://$HOST:$2/" out
    if [ "$(id -u)" = 0 ]; then
        out=$(unshare -m sh -c "mount --bind '$TMP/hosts' /etc/hosts && exec $cmd")
    else
        out=$(sh -c "$(echo "$cmd" | sed "s|$1://$HOST|$1://127.0.0.1|")")
    fi
    if echo "$out" | grep -qE "Non-2xx|Socket errors"; then echo "errors on $1 port $2" >&2; echo "$out" >&2; exit 1; fi
    echo "$out" | awk '/requests in/ {print $1}'
}

# The instructions counted since the last zeroing, dumped into a new file.
instructions() {
    callgrind_control -d "$1" >/dev/null 2>&1
    local f
    f=$(ls -v "$TMP"/cg.out."$1".* | tail -1)
    awk '/^(summary|totals):/ {print $2; exit}' "$f"
}

# NAME BINARY -> one line per protocol
measure() {
    local name=$1 bin=$2 vpid scheme port n1 n2 i1 i2
    env ALOFT_EDGE_THREADS=1 ALOFT_EDGE_HTTPS=127.0.0.1:$P_EDGE_TLS \
        ALOFT_EDGE_CERT="$TMP/cert.pem" ALOFT_EDGE_KEY="$TMP/key.pem" ALOFT_EDGE_CERT_HOSTS=$HOST \
        valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out.%p" \
        "$bin" "$TMP/routes.json" "127.0.0.1:$P_EDGE" >"$TMP/$name.log" 2>&1 &
    vpid=$!
    PIDS+=($vpid)
    wait_port $P_EDGE
    wait_port $P_EDGE_TLS
    for scheme in $PROTOS; do
        port=$P_EDGE
        [ "$scheme" = https ] && port=$P_EDGE_TLS
        requests "$scheme" "$port" 2s >/dev/null
        callgrind_control -z "$vpid" >/dev/null 2>&1
        n1=$(requests "$scheme" "$port" "$SHORT")
        i1=$(instructions "$vpid")
        n2=$(requests "$scheme" "$port" "$LONG")
        i2=$(instructions "$vpid")
        printf '%-6s %-6s %12.0f %10d %10d\n' "$scheme" "$name" \
            "$(awk "BEGIN {print ($i2 - $i1) / ($n2 - $n1)}")" "$n1" "$n2"
    done
    kill "$vpid" 2>/dev/null || true
    wait "$vpid" 2>/dev/null || true
}

echo "callgrind, wrk -t1 -c$CONNS, $SHORT and $LONG runs; edge on a current-thread runtime; $ENGINE engine"
printf '%-6s %-6s %12s %10s %10s\n' proto edge "instr/req" "short req" "long req"
measure aloft "$EDGE_BIN"
[ -z "$EDGE_BASE" ] || measure base "$EDGE_BASE"
