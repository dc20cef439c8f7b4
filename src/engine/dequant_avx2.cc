// AVX2 (+F16C) dequantization kernels. Built with -mavx2 -mfma -mf16c for this file only and entered only
// when CPUID says so (dequant.cc). Each lane does exactly the scalar reference's operations: exact
// conversions, then _mm256_mul_ps and, for Q4_1, _mm256_add_ps (no FMA: fused rounding would differ).
#include <immintrin.h>

#include "engine/dequant_internal.h"

namespace flashring::gguf::detail {
namespace {

// 8 fp16 at p -> 8 fp32. vcvtph2ps is exact and quiets NaNs like halfToFloat().
inline __m256 load8Half(const uint8_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline __m256 broadcastHalf(const uint8_t* p) { return _mm256_set1_ps(halfToFloat(loadU16(p))); }

void f16Rows(const uint8_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8Half(src + 2 * i));
  for (; i < n; ++i) dst[i] = halfToFloat(loadU16(src + 2 * i));
}

void bf16Rows(const uint8_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i)));
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)));
  }
  for (; i < n; ++i) dst[i] = bf16ToFloat(loadU16(src + 2 * i));
}

void q8_0Rows(const uint8_t* src, float* dst, size_t n) {
  for (size_t b = 0; b < n / kQK; ++b) {
    const uint8_t* blk = src + b * sizeof(BlockQ8_0);
    const __m256 d = broadcastHalf(blk);
    const uint8_t* qs = blk + 2;
    float* out = dst + b * kQK;
    for (size_t k = 0; k < kQK; k += 8) {
      const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + k));
      const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
      _mm256_storeu_ps(out + k, _mm256_mul_ps(q, d));
    }
  }
}

// The 32 nibbles of a Q4 block as two vectors of 16 bytes: values 0..15 (low nibbles), 16..31 (high).
inline void nibbles(const uint8_t* qs, __m128i* lo, __m128i* hi) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0F);
  *lo = _mm_and_si128(raw, mask);
  *hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
}

// Bytes 0..7 and 8..15 of v, widened to int32 lanes.
inline __m256i widenLow8(__m128i v) { return _mm256_cvtepu8_epi32(v); }
inline __m256i widenHigh8(__m128i v) { return _mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)); }

void q4_0Rows(const uint8_t* src, float* dst, size_t n) {
  const __m256i eight = _mm256_set1_epi32(8);
  for (size_t b = 0; b < n / kQK; ++b) {
    const uint8_t* blk = src + b * sizeof(BlockQ4_0);
    const __m256 d = broadcastHalf(blk);
    __m128i lo, hi;
    nibbles(blk + 2, &lo, &hi);
    const __m256i parts[4] = {widenLow8(lo), widenHigh8(lo), widenLow8(hi), widenHigh8(hi)};
    float* out = dst + b * kQK;
    for (int p = 0; p < 4; ++p) {
      const __m256 q = _mm256_cvtepi32_ps(_mm256_sub_epi32(parts[p], eight));
      _mm256_storeu_ps(out + 8 * p, _mm256_mul_ps(q, d));
    }
  }
}

void q4_1Rows(const uint8_t* src, float* dst, size_t n) {
  for (size_t b = 0; b < n / kQK; ++b) {
    const uint8_t* blk = src + b * sizeof(BlockQ4_1);
    const __m256 d = broadcastHalf(blk);
    const __m256 m = broadcastHalf(blk + 2);
    __m128i lo, hi;
    nibbles(blk + 4, &lo, &hi);
    const __m256i parts[4] = {widenLow8(lo), widenHigh8(lo), widenLow8(hi), widenHigh8(hi)};
    float* out = dst + b * kQK;
    for (int p = 0; p < 4; ++p) {
      const __m256 q = _mm256_cvtepi32_ps(parts[p]);
      _mm256_storeu_ps(out + 8 * p, _mm256_add_ps(_mm256_mul_ps(q, d), m));
    }
  }
}

}  // namespace

void dequantizeAvx2(TensorType t, const uint8_t* src, float* dst, size_t n) {
  switch (t) {
    case TensorType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case TensorType::F16:
      f16Rows(src, dst, n);
      return;
    case TensorType::BF16:
      bf16Rows(src, dst, n);
      return;
    case TensorType::Q8_0:
      q8_0Rows(src, dst, n);
      return;
    case TensorType::Q4_0:
      q4_0Rows(src, dst, n);
      return;
    case TensorType::Q4_1:
      q4_1Rows(src, dst, n);
      return;
    default:
      break;  // the other types go through qmm (dequant.cc never sends them here)
  }
  dequantizeReference(t, src, dst, n);
}

}  // namespace flashring::gguf::detail
