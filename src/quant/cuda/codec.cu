// The group-wise codecs on a CUDA device (cuda/codec.h): the per-group math of quant/common/group_math.h,
// launched over the groups or elements of a run.
//
// Layout of the work. Encoding: one thread per group runs the shared reference encoder (plain groups straight
// from the input; with spikes, rotation or clipping through a per-group fp32 copy in a scratch buffer allocated
// on the stream). Decoding: one thread per element for unrotated runs (the element's code, its group's metadata
// and spike entries), one thread per group for rotated runs (the inverse transform needs the whole group).
// These are the simple, certainly-identical schedules; a warp-per-group encoder is the next step and will be
// held to the same bytes by the same tests.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda/check.h"
#include "cuda/launch.h"
#include "flashring/cuda/codec.h"
#include "flashring/error.h"
#include "quant/common/group_math.h"

namespace flashring::cuda {
namespace {

namespace qd = flashring::quant::detail;

constexpr int kThreads = 128;
unsigned blocks(size_t work) { return detail::blocksFor(work, kThreads); }

// A run's parameters as the kernels need them.
struct Run {
  size_t n = 0, g = 0, groups = 0;
  int bits = 8, spikes = 0;
  bool symmetric = false, rotate = false, clip = false;
  size_t codes_off = 0;  // start of the code section
  size_t spike_off = 0;  // start of the spike section
};

Run runOf(size_t n, const quant::Config& cfg) {
  Run r;
  r.n = n;
  r.g = static_cast<size_t>(cfg.group_size);
  r.groups = qd::numGroups(n, r.g);
  r.bits = cfg.bits;
  r.spikes = cfg.spikes;
  r.symmetric = cfg.symmetric;
  r.rotate = cfg.rotate;
  r.clip = cfg.clip;
  r.codes_off = r.groups * sizeof(quant::GroupMeta);
  r.spike_off = qd::codedBytes(n, r.g, r.bits);
  return r;
}

__device__ size_t groupLen(const Run& run, size_t q) {
  const size_t rest = run.n - q * run.g;
  return rest < run.g ? rest : run.g;
}

__global__ void widenKernel(const void* x, DType dtype, size_t n, float* out) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    if (dtype == DType::F16) {
      out[i] = __half2float(static_cast<const __half*>(x)[i]);
    } else {
      const uint16_t b = static_cast<const uint16_t*>(x)[i];
      out[i] = qd::bf16Value(b);  // exact
    }
  }
}

__global__ void encodePlainKernel(const float* x, Run run, uint8_t* out) {
  for (size_t q = blockIdx.x * size_t{blockDim.x} + threadIdx.x; q < run.groups; q += size_t{gridDim.x} * blockDim.x) {
    const size_t r = groupLen(run, q);
    const float* xg = x + q * run.g;
    const qd::GroupStats st = qd::scalarStats(xg, r);
    const qd::GroupParams p = qd::planFromStats(st, qd::floatBits(xg[0]), run.bits, run.symmetric);
    qd::storeMeta(out + q * sizeof(quant::GroupMeta), p.meta);
    qd::encodeGroupScalar(xg, r, p, run.bits, out + run.codes_off + qd::groupCodeOffset(q, run.g, run.bits),
                          qd::groupCodeBytes(r, run.g, run.bits));
  }
}

__global__ void encodeRefKernel(const float* x, Run run, float* scratch, uint8_t* out) {
  const size_t k = static_cast<size_t>(run.spikes);
  uint8_t* idx = out + run.spike_off;
  uint8_t* val = idx + run.groups * k * sizeof(uint16_t);
  for (size_t q = blockIdx.x * size_t{blockDim.x} + threadIdx.x; q < run.groups; q += size_t{gridDim.x} * blockDim.x) {
    const size_t r = groupLen(run, q);
    qd::encodeGroupRef(x + q * run.g, r, run.g, run.bits, run.symmetric, run.spikes, run.rotate, run.clip,
                       scratch + q * run.g, out + q * sizeof(quant::GroupMeta),
                       out + run.codes_off + qd::groupCodeOffset(q, run.g, run.bits), idx + q * k * 2, val + q * k * 4);
  }
}

// Sets *bad to 1 if a spike index is neither kNoSpike nor inside its group.
__global__ void checkSpikesKernel(const uint8_t* in, Run run, int* bad) {
  const size_t k = static_cast<size_t>(run.spikes);
  const uint8_t* idx = in + run.spike_off;
  for (size_t q = blockIdx.x * size_t{blockDim.x} + threadIdx.x; q < run.groups; q += size_t{gridDim.x} * blockDim.x) {
    const size_t r = groupLen(run, q);
    for (size_t e = 0; e < k; ++e) {
      const uint16_t p = qd::loadU16(idx + (q * k + e) * 2);
      if (p != quant::kNoSpike && p >= r) atomicExch(bad, 1);
    }
  }
}

enum class Out : uint8_t { F32, F16, BF16, Accumulate };

__device__ void storeOut(void* out, size_t i, float v, Out mode) {
  switch (mode) {
    case Out::F32:
      static_cast<float*>(out)[i] = v;
      break;
    case Out::Accumulate: {
      float* acc = static_cast<float*>(out);
      acc[i] = acc[i] + v;
      break;
    }
    case Out::F16:
      static_cast<__half*>(out)[i] = __float2half_rn(v);
      break;
    case Out::BF16:
      static_cast<uint16_t*>(out)[i] = qd::bf16Rne(v);
      break;
  }
}

__global__ void decodeElemKernel(const uint8_t* in, Run run, void* out, Out mode) {
  const size_t k = static_cast<size_t>(run.spikes);
  const uint8_t* idx = in + run.spike_off;
  const uint8_t* val = idx + run.groups * k * sizeof(uint16_t);
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < run.n; i += size_t{gridDim.x} * blockDim.x) {
    const size_t q = i / run.g, local = i - q * run.g, r = groupLen(run, q);
    const quant::GroupMeta m = qd::loadMeta(in + q * sizeof(quant::GroupMeta));
    float v = qd::decodeAt(m, in + run.codes_off + qd::groupCodeOffset(q, run.g, run.bits), local, r, run.bits);
    for (size_t e = 0; e < k; ++e) {  // the later entry wins when an index repeats, as on the CPU
      if (qd::loadU16(idx + (q * k + e) * 2) == local) v = qd::bitsFloat(qd::loadU32(val + (q * k + e) * 4));
    }
    storeOut(out, i, v, mode);
  }
}

// Rotated runs: one thread per group; decodes into f32 `dst` (the output, the accumulator, or a scratch run
// that narrowKernel then rounds).
__global__ void decodeGroupKernel(const uint8_t* in, Run run, float* scratch, float* dst, bool accumulate) {
  const size_t k = static_cast<size_t>(run.spikes);
  const uint8_t* idx = in + run.spike_off;
  const uint8_t* val = idx + run.groups * k * sizeof(uint16_t);
  for (size_t q = blockIdx.x * size_t{blockDim.x} + threadIdx.x; q < run.groups; q += size_t{gridDim.x} * blockDim.x) {
    const size_t r = groupLen(run, q);
    qd::decodeGroupRef(in + q * sizeof(quant::GroupMeta), in + run.codes_off + qd::groupCodeOffset(q, run.g, run.bits),
                       r, run.g, run.bits, run.spikes, run.rotate, idx + q * k * 2, val + q * k * 4,
                       scratch + q * run.g, dst + q * run.g, accumulate);
  }
}

__global__ void narrowKernel(const float* x, size_t n, void* out, Out mode) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    storeOut(out, i, x[i], mode);
}

// Stream-ordered scratch (cudaMallocAsync): freed on the stream after the kernels that use it.
class StreamScratch {
 public:
  StreamScratch(size_t bytes, cudaStream_t s) : stream_(s) {
    if (bytes > 0) FLASHRING_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, s));
  }
  ~StreamScratch() {
    if (ptr_ != nullptr) (void)cudaFreeAsync(ptr_, stream_);
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  float* f32() const { return static_cast<float*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

void checkPointers(const void* a, const void* b, const char* what) {
  if (a == nullptr || b == nullptr) throw InvalidArgument(std::string("cuda::") + what + ": null pointer");
}

void decodeInto(const void* in, size_t n, const quant::Config& cfg, void* out, Out mode, ExecContext ctx,
                const char* what) {
  quant::validate(cfg);
  if (n == 0) return;
  checkPointers(in, out, what);
  const cudaStream_t s = detail::streamOf(ctx.stream);
  const Run run = runOf(n, cfg);
  const auto* bytes = static_cast<const uint8_t*>(in);
  if (run.spikes > 0) {  // the whole spike section first, so that a corrupt run leaves `out` untouched
    StreamScratch flag(sizeof(int), s);
    int* bad = reinterpret_cast<int*>(flag.f32());
    FLASHRING_CUDA_CHECK(cudaMemsetAsync(bad, 0, sizeof(int), s));
    checkSpikesKernel<<<blocks(run.groups), kThreads, 0, s>>>(bytes, run, bad);
    FLASHRING_CUDA_CHECK(cudaGetLastError());
    int host_bad = 0;
    FLASHRING_CUDA_CHECK(cudaMemcpyAsync(&host_bad, bad, sizeof(int), cudaMemcpyDeviceToHost, s));
    FLASHRING_CUDA_CHECK(cudaStreamSynchronize(s));
    if (host_bad != 0) {
      throw InvalidArgument(std::string("cuda::") + what + ": corrupt spike section (an index outside its group)");
    }
  }
  if (!run.rotate) {
    decodeElemKernel<<<blocks(n), kThreads, 0, s>>>(bytes, run, out, mode);
    FLASHRING_CUDA_CHECK(cudaGetLastError());
    return;
  }
  const bool f32_dst = mode == Out::F32 || mode == Out::Accumulate;
  StreamScratch scratch(n * sizeof(float) * (f32_dst ? 1 : 2), s);
  float* dst = f32_dst ? static_cast<float*>(out) : scratch.f32() + n;
  decodeGroupKernel<<<blocks(run.groups), kThreads, 0, s>>>(bytes, run, scratch.f32(), dst, mode == Out::Accumulate);
  FLASHRING_CUDA_CHECK(cudaGetLastError());
  if (!f32_dst) {
    narrowKernel<<<blocks(n), kThreads, 0, s>>>(dst, n, out, mode);
    FLASHRING_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

void quantize(const void* x, DType dtype, size_t n, const quant::Config& cfg, void* out, ExecContext ctx) {
  quant::validate(cfg);
  if (n == 0) return;
  checkPointers(x, out, "quantize");
  const cudaStream_t s = detail::streamOf(ctx.stream);
  const Run run = runOf(n, cfg);
  const bool transformed = cfg.spikes > 0 || cfg.rotate || cfg.clip;
  const bool wide = dtype != DType::F32;
  StreamScratch scratch(n * sizeof(float) * ((wide ? 1 : 0) + (transformed ? 1 : 0)), s);
  const float* xf = static_cast<const float*>(x);
  if (wide) {
    widenKernel<<<blocks(n), kThreads, 0, s>>>(x, dtype, n, scratch.f32());
    FLASHRING_CUDA_CHECK(cudaGetLastError());
    xf = scratch.f32();
  }
  auto* o = static_cast<uint8_t*>(out);
  if (transformed) {
    float* buf = scratch.f32() + (wide ? n : 0);
    encodeRefKernel<<<blocks(run.groups), kThreads, 0, s>>>(xf, run, buf, o);
  } else {
    encodePlainKernel<<<blocks(run.groups), kThreads, 0, s>>>(xf, run, o);
  }
  FLASHRING_CUDA_CHECK(cudaGetLastError());
}

void dequantize(const void* in, size_t n, const quant::Config& cfg, void* out, DType out_dtype, ExecContext ctx) {
  const Out mode = out_dtype == DType::F32 ? Out::F32 : (out_dtype == DType::F16 ? Out::F16 : Out::BF16);
  decodeInto(in, n, cfg, out, mode, ctx, "dequantize");
}

void dequantizeAccumulate(const void* in, size_t n, const quant::Config& cfg, float* acc, ExecContext ctx) {
  decodeInto(in, n, cfg, acc, Out::Accumulate, ctx, "dequantizeAccumulate");
}

}  // namespace flashring::cuda
