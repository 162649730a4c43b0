#!/usr/bin/env bash
# Installs everything seqcore needs on a Debian 12 machine, idempotently:
#   1. Debian packages for building (hwloc for NUMA/affinity, a C++ compiler for the OpenVINO shim);
#   2. a project-local Python venv (.venv) with the OpenVINO wheel (the runtime we link against)
#      and the Python test clients;
#   3. the generated demo/test models (models/).
# Each step is skipped when its result is already present.
set -euo pipefail
cd "$(dirname "$0")/.."

OPENVINO_VERSION=2026.4.1
APT_PACKAGES=(libhwloc-dev libudev-dev pkg-config g++ make curl openssl)
VENV=.venv
PY_STAMP="$VENV/.seqcore-requirements"

say() { printf 'setup: %s\n' "$*"; }

command -v cargo >/dev/null || {
  echo "setup: cargo not found: install Rust >= 1.85 (https://rustup.rs), then run make again" >&2
  exit 1
}

# Debian's own python3 needs python3-venv for 'python3 -m venv' (ensurepip).
python3 -c 'import venv, ensurepip' 2>/dev/null || APT_PACKAGES+=(python3-venv)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating Python venv in $VENV"
  python3 -m venv "$VENV"
fi
if ! cmp -s requirements.txt "$PY_STAMP"; then
  say "installing Python packages (OpenVINO $OPENVINO_VERSION, test clients)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
  cp requirements.txt "$PY_STAMP"
fi

# The OpenVINO runtime directory seqcore loads from: the wheel's libraries, minus TBB's
# affinity hook (libtbbbind), which would otherwise cost two sched_setaffinity calls per
# inference and widen the pinned shard's CPU mask. See ARCHITECTURE.md, "OpenVINO runtime".
"$VENV/bin/python" scripts/ov_runtime_dir.py

"$VENV/bin/python" scripts/gen_models.py --out models
say "ready"
