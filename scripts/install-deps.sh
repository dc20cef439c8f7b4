#!/usr/bin/env bash
# Installs what flashring needs to build, test and benchmark, on Debian 12 as root (or with sudo).
# Idempotent: when everything is present it only checks, and touches no registry.
set -euo pipefail

APT_PACKAGES=(
  build-essential cmake pkg-config      # compiler and build
  libopenmpi-dev openmpi-bin            # MPI transport, mpiexec for the MPI tests
  libcli11-dev                          # command-line parsing of the flashring tool
  libfmt-dev                            # formatting of messages and tables
  nlohmann-json3-dev                    # --json output of the benchmarks
  libgtest-dev libgmock-dev             # unit and multi-rank tests
  libbenchmark-dev                      # kernel benchmarks (Google Benchmark)
  libopenblas-dev                       # GEMMs of the attention kernel
  iproute2                              # bench/netem: network namespaces, veth, tc shaping
  clang-format                          # style check in CI
  python3 python3-pip                   # bench/plot.py
)
PIP_PACKAGES=(matplotlib)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-deps: not root and no sudo; install these Debian packages yourself: ${APT_PACKAGES[*]}" >&2
    exit 1
  fi
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python tools: use the python3 on PATH (it may be a pyenv or venv interpreter rather than Debian's).
PY=${PYTHON:-python3}
for p in "${PIP_PACKAGES[@]}"; do
  if ! "$PY" -c "import $p" >/dev/null 2>&1; then
    echo "install-deps: pip install $p"
    # Only bench/plot.py needs it: a failure here must not stop the build and the tests.
    "$PY" -m pip install -q "$p" 2>/dev/null || "$PY" -m pip install -q --break-system-packages "$p" ||
      echo "install-deps: warning: could not install $p; bench/plot.py will not work until it is installed" >&2
  fi
done
echo "install-deps: all dependencies present"
