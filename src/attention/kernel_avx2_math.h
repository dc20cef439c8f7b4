// AVX2/FMA math shared by the attention kernel and the merge (include only from *_avx2.cc files).
//
// exp2 on [-126, 0]: 2^x = 2^n * 2^f with n = round(x), f in [-1/2, 1/2], 2^f by the Cephes degree-6
// polynomial (relative error ~2e-7, well inside the kernel's 1e-5 budget); x < -126 gives exactly 0 (the
// weight of such a key is below 2^-126 of the row maximum's), and masked scores (-inf) give 0.
//
// log1p on [0, 1]: log1p(e) = 2 atanh(z), z = e / (2 + e) in [0, 1/3], by its Taylor series up to z^15
// (truncation below 2e-9 relative; no cancellation for small e, unlike log(1 + e)).
//
// Internal linkage only, and no std:: inline functions (see kernel_internal.h).
#pragma once

#include <immintrin.h>

namespace flashring::attn::avx2 {
namespace {

inline __m256 exp2Ps(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-126.f);
  const __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);  // false for x < -126, -inf and NaN
  x = _mm256_max_ps(x, lo);
  x = _mm256_min_ps(x, _mm256_set1_ps(127.f));
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, n);
  __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

inline float exp2Scalar(float x) { return _mm256_cvtss_f32(exp2Ps(_mm256_set1_ps(x))); }

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Lane mask with the first n (0..8) lanes set.
inline __m256i firstLanes(int n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}

inline __m256 log1pUnit(__m256 e) {
  const __m256 z = _mm256_div_ps(e, _mm256_add_ps(_mm256_set1_ps(2.f), e));
  const __m256 z2 = _mm256_mul_ps(z, z);
  __m256 p = _mm256_set1_ps(1.f / 15.f);
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(1.f / 13.f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(1.f / 11.f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(1.f / 9.f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(1.f / 7.f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(1.f / 5.f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(1.f / 3.f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(1.f));
  return _mm256_mul_ps(_mm256_add_ps(z, z), p);
}

}  // namespace
}  // namespace flashring::attn::avx2
