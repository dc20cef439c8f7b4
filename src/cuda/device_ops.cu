// cuda::deviceOps() (cuda/context.h): the collectives' verbs on CUDA device memory.
#include <cuda_runtime.h>

#include "cuda/check.h"
#include "cuda/launch.h"
#include "flashring/cuda/codec.h"
#include "flashring/cuda/context.h"
#include "flashring/error.h"
#include "quant/common/group_math.h"

namespace flashring::cuda {
namespace {

namespace qd = flashring::quant::detail;
constexpr int kThreads = 256;
unsigned blocks(size_t work) { return detail::blocksFor(work, kThreads); }

__global__ void accumulateKernel(float* acc, const float* x, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    acc[i] = acc[i] + x[i];
}
__global__ void bf16ToF32Kernel(const uint16_t* in, size_t n, float* out, bool accumulate) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const float v = qd::bf16Value(in[i]);
    out[i] = accumulate ? out[i] + v : v;
  }
}
__global__ void f32ToBf16Kernel(const float* x, size_t n, uint16_t* out) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    out[i] = qd::bf16Rne(x[i]);
}

cudaStream_t st(void* s) { return static_cast<cudaStream_t>(s); }

class CudaOps final : public DeviceOps {
 public:
  MemoryKind memory() const override { return MemoryKind::Cuda; }
  const char* name() const override { return "cuda"; }
  void encode(const WireCodec& c, const float* x, size_t n, std::byte* out, void* s) const override {
    if (n == 0) return;
    if (c.kind == WireCodec::Quant) {
      quantize(x, DType::F32, n, c.cfg, out, ExecContext{s, this});
    } else if (c.kind == WireCodec::Bf16) {
      f32ToBf16Kernel<<<blocks(n), kThreads, 0, st(s)>>>(x, n, reinterpret_cast<uint16_t*>(out));
      FLASHRING_CUDA_CHECK(cudaGetLastError());
    } else {
      FLASHRING_CUDA_CHECK(cudaMemcpyAsync(out, x, n * 4, cudaMemcpyDeviceToDevice, st(s)));
    }
  }
  void decode(const WireCodec& c, const std::byte* in, size_t n, float* out, void* s) const override {
    if (n == 0) return;
    if (c.kind == WireCodec::Quant) {
      dequantize(in, n, c.cfg, out, DType::F32, ExecContext{s, this});
    } else if (c.kind == WireCodec::Bf16) {
      bf16ToF32Kernel<<<blocks(n), kThreads, 0, st(s)>>>(reinterpret_cast<const uint16_t*>(in), n, out, false);
      FLASHRING_CUDA_CHECK(cudaGetLastError());
    } else {
      FLASHRING_CUDA_CHECK(cudaMemcpyAsync(out, in, n * 4, cudaMemcpyDeviceToDevice, st(s)));
    }
  }
  void decodeAccumulate(const WireCodec& c, const std::byte* in, size_t n, float* acc, void* s) const override {
    if (n == 0) return;
    if (c.kind == WireCodec::Quant) {
      dequantizeAccumulate(in, n, c.cfg, acc, ExecContext{s, this});
    } else if (c.kind == WireCodec::Bf16) {
      bf16ToF32Kernel<<<blocks(n), kThreads, 0, st(s)>>>(reinterpret_cast<const uint16_t*>(in), n, acc, true);
      FLASHRING_CUDA_CHECK(cudaGetLastError());
    } else {
      accumulate(acc, reinterpret_cast<const float*>(in), n, s);
    }
  }
  void accumulate(float* acc, const float* x, size_t n, void* s) const override {
    if (n == 0) return;
    accumulateKernel<<<blocks(n), kThreads, 0, st(s)>>>(acc, x, n);
    FLASHRING_CUDA_CHECK(cudaGetLastError());
  }
  void zero(float* p, size_t n, void* s) const override {
    if (n > 0) FLASHRING_CUDA_CHECK(cudaMemsetAsync(p, 0, n * sizeof(float), st(s)));
  }
  void fromHost(void* dst, const void* host, size_t bytes, void* s) const override {
    if (bytes == 0) return;
    FLASHRING_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, st(s)));
    FLASHRING_CUDA_CHECK(cudaStreamSynchronize(st(s)));  // `host` may be a temporary
  }
  void toHost(void* host, const void* src, size_t bytes, void* s) const override {
    if (bytes == 0) return;
    FLASHRING_CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, st(s)));
    FLASHRING_CUDA_CHECK(cudaStreamSynchronize(st(s)));
  }
  void synchronize(void* s) const override { FLASHRING_CUDA_CHECK(cudaStreamSynchronize(st(s))); }
  void* allocate(size_t bytes, void* s) const override {
    void* p = nullptr;
    FLASHRING_CUDA_CHECK(cudaMallocAsync(&p, bytes == 0 ? 1 : bytes, st(s)));
    return p;
  }
  void release(void* p, void* s) const override {
    if (p != nullptr) (void)cudaFreeAsync(p, st(s));
  }
};

}  // namespace

const DeviceOps& deviceOps() {
  static const CudaOps ops;
  return ops;
}

}  // namespace flashring::cuda
