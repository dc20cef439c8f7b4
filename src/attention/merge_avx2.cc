// AVX2 log-sum-exp merge: the weights of 8 (row, head) pairs at a time (see merge.cc for the formulas and
// the -inf rules), then one fp32 blend per pair over head_dim.
//
// No std:: inline function or template is called here (see kernel_internal.h).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "attention/kernel_avx2_math.h"
#include "attention/merge_internal.h"

namespace flashring::attn::avx2 {
namespace {

constexpr int kChunk = 64;  // pairs whose weights are computed before blending them

// Both sides finite (checked by the caller); any lanes past `n` are computed on copies and ignored.
void weights(const float* la_in, const float* lb_in, int n, float* wa, float* wb, float* lse_new) {
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
  const __m256 one = _mm256_set1_ps(1.f);
  for (int p = 0; p < n; p += 8) {
    const __m256i mask = firstLanes(n - p);
    const __m256 la = _mm256_maskload_ps(la_in + p, mask);
    const __m256 lb = _mm256_maskload_ps(lb_in + p, mask);
    const __m256 a_max = _mm256_cmp_ps(la, lb, _CMP_GE_OQ);
    const __m256 mx = _mm256_blendv_ps(lb, la, a_max);
    const __m256 mn = _mm256_blendv_ps(la, lb, a_max);
    const __m256 e = exp2Ps(_mm256_mul_ps(_mm256_sub_ps(mn, mx), log2e));
    const __m256 w_max = _mm256_div_ps(one, _mm256_add_ps(one, e));
    const __m256 w_min = _mm256_mul_ps(e, w_max);
    _mm256_maskstore_ps(wa + p, mask, _mm256_blendv_ps(w_min, w_max, a_max));
    _mm256_maskstore_ps(wb + p, mask, _mm256_blendv_ps(w_max, w_min, a_max));
    _mm256_maskstore_ps(lse_new + p, mask, _mm256_add_ps(mx, log1pUnit(e)));
  }
}

void blend(float* o, const float* ob, int n, float wa, float wb) {
  const __m256 va = _mm256_set1_ps(wa);
  const __m256 vb = _mm256_set1_ps(wb);
  int c = 0;
  for (; c + 16 <= n; c += 16) {
    const __m256 x0 = _mm256_mul_ps(va, _mm256_loadu_ps(o + c));
    const __m256 x1 = _mm256_mul_ps(va, _mm256_loadu_ps(o + c + 8));
    _mm256_storeu_ps(o + c, _mm256_add_ps(x0, _mm256_mul_ps(vb, _mm256_loadu_ps(ob + c))));
    _mm256_storeu_ps(o + c + 8, _mm256_add_ps(x1, _mm256_mul_ps(vb, _mm256_loadu_ps(ob + c + 8))));
  }
  for (; c < n; c += 8) {
    const __m256i mask = firstLanes(n - c);
    const __m256 x = _mm256_mul_ps(va, _mm256_maskload_ps(o + c, mask));
    _mm256_maskstore_ps(o + c, mask, _mm256_add_ps(x, _mm256_mul_ps(vb, _mm256_maskload_ps(ob + c, mask))));
  }
}

}  // namespace

void mergePairs(float* out, float* lse, const float* out_b, const float* lse_b, int64_t pairs, int head_dim) {
  const float neg_inf = -__builtin_inff();
  float wa[kChunk], wb[kChunk], lse_new[kChunk];
  for (int64_t p0 = 0; p0 < pairs; p0 += kChunk) {
    const int n = pairs - p0 < kChunk ? static_cast<int>(pairs - p0) : kChunk;
    weights(lse + p0, lse_b + p0, n, wa, wb, lse_new);  // lanes with an -inf side are not used below
    for (int t = 0; t < n; ++t) {
      const int64_t p = p0 + t;
      const float la = lse[p];
      const float lb = lse_b[p];
      if (lb == neg_inf) continue;
      float* o = out + p * head_dim;
      const float* ob = out_b + p * head_dim;
      if (la == neg_inf) {
        std::memcpy(o, ob, sizeof(float) * static_cast<size_t>(head_dim));
        lse[p] = lb;
        continue;
      }
      blend(o, ob, head_dim, wa[t], wb[t]);
      lse[p] = lse_new[t];
    }
  }
}

}  // namespace flashring::attn::avx2
