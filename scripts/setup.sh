#!/usr/bin/env bash
# Installs everything Aloft needs to build, run and test on a Debian/Ubuntu host (as root).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (Aloft manages namespaces, cgroups and mounts)" >&2
  exit 1
fi

packages=(
  build-essential pkg-config ca-certificates curl jq git bc
  iproute2 iptables nftables e2fsprogs
  runc busybox-static
  skopeo umoci debootstrap
  docker-registry wrk wireguard-go wireguard-tools iperf3 iputils-ping
  bird2
  pebble
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The bench's peer registry is started on demand, never as a system service.
if systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
# bird2 runs per agent (and per simulated city) with its own config and socket, never as the
# system's routing daemon.
if systemctl is-enabled --quiet bird 2>/dev/null || systemctl is-active --quiet bird 2>/dev/null; then
  systemctl disable --now bird >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: installing a Rust toolchain from the distribution"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cargo rustc >/dev/null
fi

echo "setup: ok ($(cargo --version), $(runc --version | head -1))"
