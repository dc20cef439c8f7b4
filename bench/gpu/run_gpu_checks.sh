#!/usr/bin/env bash
# The GPU checks of issue 14, in one go (GPU time is short): the CUDA test suite, the kernels' throughput beside
# the device's copy bandwidth, the attention kernel beside PyTorch's SDPA on the same shape. Runs from the bundle
# that bench/gpu/pack.sh makes (binaries + the libraries they need). Results go to $OUT (the device tool's output
# folder) or ./gpu-results.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUTDIR=${OUT:-$PWD/gpu-results}
mkdir -p "$OUTDIR"
export LD_LIBRARY_PATH="$HERE/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>&1 | tee "$OUTDIR/gpu.txt"
echo "== CUDA tests"
"$HERE/flashring_cuda_tests" --gtest_brief=1 2>&1 | tee "$OUTDIR/cuda_tests.txt"
tests_rc=${PIPESTATUS[0]}
echo "== kernel throughput"
"$HERE/flashring_cuda_bench" --json "$OUTDIR/cuda_bench.json" 2>&1 | tee "$OUTDIR/cuda_bench.txt"
echo "== PyTorch SDPA, same attention shape"
python3 "$HERE/sdpa_cuda.py" 2>&1 | tee "$OUTDIR/sdpa.txt"
echo "run_gpu_checks: tests rc=$tests_rc; results in $OUTDIR"
exit "$tests_rc"
