#!/usr/bin/env bash
# Mesh throughput and latency between two hosts: Aloft's userspace WireGuard mesh
# (aloft-mesh: boringtun over TUN) vs wireguard-go (Debian package) configured the same way.
#   two network namespaces joined by a veth pair (10.88.0.1 <-> 10.88.0.2), one WireGuard
#   peer each way, MTU 1420, the same key pair, the TUN holding fdaa:0:0:0:H::1/128 and
#   routing fdaa::/16; then iperf3 (TCP, one stream, DURATION seconds, both directions in
#   turn) and ping -6 (COUNT echoes, 0.2 s apart) from host 1 to host 2's infra address.
# Prints each figure for both and the ratio aloft / wireguard-go (higher is better for
# throughput, lower is better for latency). Needs root, iperf3, wireguard-go, wg.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10}
COUNT=${COUNT:-50}
for tool in iperf3 wireguard-go wg; do
  command -v "$tool" >/dev/null || { echo "mesh bench: $tool is missing (scripts/setup.sh)" >&2; exit 1; }
done
cargo build --release -q -p aloft-bench --bin mesh
bin=target/release/mesh
tag="mb$$"
A="$tag-a"; B="$tag-b"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$A"; ip netns add "$B"
ip link add "${tag}a" netns "$A" type veth peer name "${tag}b" netns "$B"
ip -n "$A" link set lo up; ip -n "$B" link set lo up
ip -n "$A" addr add 10.88.0.1/24 dev "${tag}a"; ip -n "$A" link set "${tag}a" up
ip -n "$B" addr add 10.88.0.2/24 dev "${tag}b"; ip -n "$B" link set "${tag}b" up

umask 077
wg genkey > "$work/a.key"; wg genkey > "$work/b.key"
pub_a=$(wg pubkey < "$work/a.key"); pub_b=$(wg pubkey < "$work/b.key")
dst=fdaa::2:0:0:1

wait_addr() { # ns dev
  for _ in $(seq 100); do
    ip -n "$1" -6 addr show dev "$2" 2>/dev/null | grep -q "fdaa" && return 0
    sleep 0.1
  done
  echo "mesh bench: $2 never came up in $1" >&2; exit 1
}

measure() { # label -> sets tput_fwd tput_rev rtt
  ip netns exec "$B" iperf3 -s -D -1 -B "$dst" -p 5201 --logfile "$work/iperf-s.log"
  sleep 0.3
  ping_out=$(ip netns exec "$A" ping -6 -q -c 3 -i 0.2 "$dst") || true  # warm up the handshake
  tput_fwd=$(ip netns exec "$A" iperf3 -c "$dst" -p 5201 -t "$DURATION" -J | jq '.end.sum_received.bits_per_second / 1e6')
  ip netns exec "$B" iperf3 -s -D -1 -B "$dst" -p 5202 --logfile "$work/iperf-s2.log"
  sleep 0.3
  tput_rev=$(ip netns exec "$A" iperf3 -c "$dst" -p 5202 -t "$DURATION" -R -J | jq '.end.sum_received.bits_per_second / 1e6')
  ping_out=$(ip netns exec "$A" ping -6 -q -c "$COUNT" -i 0.2 "$dst")
  rtt=$(echo "$ping_out" | awk -F'/' '/^rtt/ {print $5}')
  printf '%-14s throughput A->B %8.1f Mbit/s   B->A %8.1f Mbit/s   ping RTT avg %6.3f ms\n' \
    "$1" "$tput_fwd" "$tput_rev" "$rtt"
}

# --- Aloft mesh ---
ip netns exec "$A" "$bin" --index 1 --listen 10.88.0.1:51820 --key-file "$work/a.key" \
  --peer "2=$pub_b@10.88.0.2:51820" > "$work/mesh-a.log" 2>&1 & pids+=($!)
ip netns exec "$B" "$bin" --index 2 --listen 10.88.0.2:51820 --key-file "$work/b.key" \
  --peer "1=$pub_a@10.88.0.1:51820" > "$work/mesh-b.log" 2>&1 & pids+=($!)
wait_addr "$A" alwg0; wait_addr "$B" alwg0
measure "aloft-mesh"
aloft_fwd=$tput_fwd; aloft_rev=$tput_rev; aloft_rtt=$rtt
for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
wait "${pids[@]}" 2>/dev/null || true
pids=()

# --- wireguard-go, configured the same way ---
for side in A B; do
  # Distinct names: wireguard-go's control sockets (/var/run/wireguard/<name>.sock) are not
  # per namespace.
  if [ $side = A ]; then ns=$A; me=1; key=a.key; peer=$pub_b; ep=10.88.0.2; else ns=$B; me=2; key=b.key; peer=$pub_a; ep=10.88.0.1; fi
  dev="${tag}w$me"
  ip netns exec "$ns" wireguard-go -f "$dev" > "$work/wg-$side.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do ip -n "$ns" link show "$dev" >/dev/null 2>&1 && break; sleep 0.1; done
  ip netns exec "$ns" wg set "$dev" private-key "$work/$key" listen-port 51820 \
    peer "$peer" endpoint "$ep:51820" allowed-ips fdaa::/16
  ip -n "$ns" link set "$dev" mtu 1420 up
  ip -n "$ns" addr add "fdaa::$me:0:0:1/128" dev "$dev"
  ip -n "$ns" route add fdaa::/16 dev "$dev"
done
wait_addr "$A" "${tag}w1"; wait_addr "$B" "${tag}w2"
measure "wireguard-go"
wg_fwd=$tput_fwd; wg_rev=$tput_rev; wg_rtt=$rtt

echo
echo "peer: $(wireguard-go --version 2>/dev/null | head -1)"
printf 'ratio aloft/wireguard-go: throughput A->B %.2f, B->A %.2f (target >= 1.0); RTT %.2f (lower is better)\n' \
  "$(echo "$aloft_fwd / $wg_fwd" | bc -l)" "$(echo "$aloft_rev / $wg_rev" | bc -l)" "$(echo "$aloft_rtt / $wg_rtt" | bc -l)"
