#!/usr/bin/env bash
# Builds the CUDA test and benchmark binaries here (Hopper, sm_90) and packs them, with the shared libraries they
# need that a bare CUDA image may lack (fmt, OpenBLAS, PCRE2, ...; never libcuda or the CUDA runtime's driver
# parts), into .gpu-bundle/ (ignored by git): what the device tool's `carry` takes to a GPU machine, where
# bench/gpu/run_gpu_checks.sh runs it. Usage: [NCCL=ON] bash bench/gpu/pack.sh [build-dir]
# NCCL is left out unless NCCL=ON: libnccl alone is over 200 MB, past what the device tool carries (64 MiB); with
# NCCL=ON the bundle expects the GPU machine's own libnccl.so.2 (LD_LIBRARY_PATH) and does not pack it.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build-gpu}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DFLASHRING_WITH_CUDA=ON -DFLASHRING_WITH_NCCL=${NCCL:-OFF} \
  -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES=90 -DFLASHRING_WITH_MPI=OFF -DFLASHRING_BUILD_CLI=OFF \
  -DFLASHRING_BUILD_PYTHON=OFF $( command -v ccache >/dev/null && echo -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache ) >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target flashring_cuda_tests flashring_cuda_bench
rm -rf .gpu-bundle && mkdir -p .gpu-bundle/lib
cp "$BUILD"/bin/flashring_cuda_tests "$BUILD"/bin/flashring_cuda_bench bench/gpu/run_gpu_checks.sh bench/gpu/sdpa_cuda.py .gpu-bundle/
for bin in .gpu-bundle/flashring_cuda_tests .gpu-bundle/flashring_cuda_bench; do
  ldd "$bin" | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libcuda.so*|libgcc_s.so*|libnccl.so*) ;;  # the system's own
      *) cp -L "$lib" .gpu-bundle/lib/ ;;
    esac
  done
done
grep -qx '/.gpu-bundle/' .git/info/exclude 2>/dev/null || echo '/.gpu-bundle/' >> .git/info/exclude
du -sh .gpu-bundle
echo "pack: carry .gpu-bundle and run: bash .gpu-bundle/run_gpu_checks.sh"
