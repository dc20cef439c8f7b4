// Block attention and the lse merge on a CUDA device (cuda/attention.h): one thread per (batch, query, head) row
// running the shared online-softmax row (attention/common/attention_math.h), one thread per (row, head) pair for
// the merge. The simple schedule, certainly equal to the CPU twin's math; a tiled tensor-core kernel is the next
// step, held to the same tests.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "attention/common/attention_math.h"
#include "cuda/check.h"
#include "cuda/launch.h"
#include "flashring/cuda/attention.h"
#include "flashring/error.h"

namespace flashring::cuda {
namespace {

namespace ad = flashring::attn::detail;
constexpr int kThreads = 128;
unsigned blocks(size_t work) { return detail::blocksFor(work, kThreads); }

struct LoadF32 {
  __device__ float operator()(const float* p, int64_t i) const { return p[i]; }
};
struct StoreF32 {
  __device__ void operator()(float* p, int64_t i, float v) const { p[i] = v; }
};
struct LoadF16 {
  __device__ float operator()(const __half* p, int64_t i) const { return __half2float(p[i]); }
};
struct StoreF16 {
  __device__ void operator()(__half* p, int64_t i, float v) const { p[i] = __float2half_rn(v); }
};
struct LoadBf16 {
  __device__ float operator()(const __nv_bfloat16* p, int64_t i) const { return __bfloat162float(p[i]); }
};
struct StoreBf16 {
  __device__ void operator()(__nv_bfloat16* p, int64_t i, float v) const { p[i] = __float2bfloat16_rn(v); }
};

template <class T, class Load, class Store>
__global__ void blockAttentionKernel(const T* q, const T* k, const T* v, ad::RowGeometry g, int batch, T* out,
                                     float* lse) {
  const int64_t rows = static_cast<int64_t>(batch) * g.q_len * g.heads;
  float acc[kMaxHeadDim];
  for (int64_t r = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; r < rows; r += int64_t{gridDim.x} * blockDim.x) {
    const int h = static_cast<int>(r % g.heads);
    const int i = static_cast<int>((r / g.heads) % g.q_len);
    const int b = static_cast<int>(r / (static_cast<int64_t>(g.heads) * g.q_len));
    ad::attentionRow(q, k, v, g, b, i, h, acc, out, lse, Load{}, Store{});
  }
}

__global__ void mergeKernel(float* out, float* lse, const float* out_b, const float* lse_b, int64_t pairs,
                            int head_dim) {
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < pairs; p += int64_t{gridDim.x} * blockDim.x)
    ad::mergePair(out + p * head_dim, lse + p, out_b + p * head_dim, lse_b[p], head_dim);
}

}  // namespace

void blockAttention(const void* q, const void* k, const void* v, DType dtype, const AttentionShape& shape,
                    const BlockAttentionOptions& options, void* out, float* lse, ExecContext ctx) {
  validate(shape);
  if (shape.head_dim > kMaxHeadDim) {
    throw InvalidArgument("cuda::blockAttention: head_dim " + std::to_string(shape.head_dim) + " above " +
                          std::to_string(kMaxHeadDim));
  }
  if (q == nullptr || k == nullptr || v == nullptr || out == nullptr || lse == nullptr)
    throw InvalidArgument("cuda::blockAttention: null pointer");
  ad::RowGeometry g{shape.q_len,    shape.kv_len,     shape.heads,      shape.kv_heads, shape.head_dim,
                    options.causal, options.q_offset, options.k_offset, options.scale};
  if (g.scale == 0.0f) g.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(shape.head_dim)));
  const int64_t rows = static_cast<int64_t>(shape.batch) * shape.q_len * shape.heads;
  const cudaStream_t s = detail::streamOf(ctx.stream);
  switch (dtype) {
    case DType::F32:
      blockAttentionKernel<float, LoadF32, StoreF32><<<blocks(rows), kThreads, 0, s>>>(
          static_cast<const float*>(q), static_cast<const float*>(k), static_cast<const float*>(v), g, shape.batch,
          static_cast<float*>(out), lse);
      break;
    case DType::F16:
      blockAttentionKernel<__half, LoadF16, StoreF16><<<blocks(rows), kThreads, 0, s>>>(
          static_cast<const __half*>(q), static_cast<const __half*>(k), static_cast<const __half*>(v), g, shape.batch,
          static_cast<__half*>(out), lse);
      break;
    case DType::BF16:
      blockAttentionKernel<__nv_bfloat16, LoadBf16, StoreBf16><<<blocks(rows), kThreads, 0, s>>>(
          static_cast<const __nv_bfloat16*>(q), static_cast<const __nv_bfloat16*>(k),
          static_cast<const __nv_bfloat16*>(v), g, shape.batch, static_cast<__nv_bfloat16*>(out), lse);
      break;
  }
  FLASHRING_CUDA_CHECK(cudaGetLastError());
}

void mergeAttention(float* out, float* lse, const float* out_b, const float* lse_b, int64_t rows, int heads,
                    int head_dim, ExecContext ctx) {
  if (rows < 0 || heads <= 0 || head_dim <= 0)
    throw InvalidArgument("cuda::mergeAttention: rows must be >= 0, heads and head_dim positive");
  if (rows == 0) return;
  if (out == nullptr || lse == nullptr || out_b == nullptr || lse_b == nullptr)
    throw InvalidArgument("cuda::mergeAttention: null pointer");
  const int64_t pairs = rows * heads;
  mergeKernel<<<blocks(pairs), kThreads, 0, detail::streamOf(ctx.stream)>>>(out, lse, out_b, lse_b, pairs, head_dim);
  FLASHRING_CUDA_CHECK(cudaGetLastError());
}

}  // namespace flashring::cuda
