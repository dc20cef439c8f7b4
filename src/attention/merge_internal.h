// Internals of the log-sum-exp merge: the implementations that tests and benchmarks compare.
//
// The AVX2 file calls no std:: inline function or template (see kernel_internal.h for why).
#pragma once

#include <cstdint>

namespace flashring::attn {

enum class MergeImpl {
  Auto,      // Avx2 with AVX2+FMA, else Portable
  Portable,  // per (row, head) weights with std::exp / std::log1p in fp32, fp32 blend the compiler vectorises
  Avx2,      // weights for 8 (row, head) pairs at a time (polynomial exp2 and log1p), AVX2 blend
};

const char* mergeImplName(MergeImpl impl);
bool mergeImplSupported(MergeImpl impl);

// mergeAttention with a chosen implementation (arguments checked like mergeAttention).
void mergeAttentionWith(MergeImpl impl, float* out, float* lse, const float* out_b, const float* lse_b, int64_t rows,
                        int heads, int head_dim);

namespace avx2 {
// pairs = rows * heads (row, head) pairs, each head_dim floats; arguments already checked.
void mergePairs(float* out, float* lse, const float* out_b, const float* lse_b, int64_t pairs, int head_dim);
}  // namespace avx2

}  // namespace flashring::attn
