#!/usr/bin/env bash
# What `make bench` needs on top of `make setup`, idempotently: h2load (Debian's
# nghttp2-client), the independent HTTP/2 client that scripts/bench_matrix.py measures the
# loadgen's one-in-flight latency against. Not part of `make setup`: only the benchmarks use it.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(nghttp2-client)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  printf 'setup_bench: installing Debian packages: %s\n' "${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
command -v h2load >/dev/null || { echo "setup_bench: h2load not found after installing nghttp2-client" >&2; exit 1; }
