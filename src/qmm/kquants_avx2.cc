// AVX2 (+FMA, F16C) kernels of Q4_K, Q5_K, Q6_K and the Q8K activation quantizer. Built with -mavx2 -mfma
// -mf16c for this file only and entered only when the CPU has them (kquants.cc's kquantKernels).
//
// Dot products: per pair of sub-blocks of 32 (Q4_K/Q5_K: one 32-byte load of 4-bit codes holds both, in the
// low and high nibbles; Q6_K: one 32-value vector holds two sub-blocks of 16, one per 128-bit lane)
// vpmaddubsw multiplies the unsigned codes by the signed activation codes into int16 pairs (|pair| <=
// 2 * 63 * 127, no saturation) and vpmaddwd multiplies those by the sub-block scale broadcast by vpshufb
// and sums into int32 lanes: the integer sum of a block is exact. The minimum terms (Q4_K/Q5_K) come from
// the activation's bsums (sum_j m_j * (bsums[2j] + bsums[2j+1])), Q6_K's -32 offset from
// 32 * sum_j scale_j * bsums[j]. Per block one int32 -> fp32 conversion and one FMA into 8 fp32 lanes.
//
// Dequantization and the quantizer do the scalar reference's operations in the same order (exact integer
// to float conversions, then _mm256_mul_ps / _mm256_sub_ps, never fused), so they agree bit for bit.
#include <immintrin.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

#include "qmm/qmm_internal.h"

namespace flashring::qmm::detail {
namespace {

inline float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);  // exact, as the scalar halfToFloat
}
inline int loadI32(const uint8_t* p) {
  int v;
  std::memcpy(&v, p, 4);
  return v;
}
inline float loadFloat(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, 4);
  return f;
}
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hsum(__m128 s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// get_scale_min_k4 of all 8 sub-blocks at once: bytes 0..7 of the result are the 6-bit scales, bytes 8..15
// the mins. Reads 16 bytes at s (the 12 packed bytes and 4 of the codes that follow them in the block).
//   dword 0: s[0..3] & 63                        (scales 0..3)
//   dword 1: (s[8..11] & 15) | (s[0..3] >> 6) << 4  (scales 4..7)
//   dword 2: s[4..7] & 63                        (mins 0..3)
//   dword 3: (s[8..11] >> 4) | (s[4..7] >> 6) << 4  (mins 4..7)
inline __m128i scalesMinsK4(const uint8_t* s) {
  const __m128i v = load128(s);
  const __m128i a = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
  const __m128i b = _mm_shuffle_epi8(v, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
  const __m128i lo = _mm_and_si128(_mm_srlv_epi32(a, _mm_setr_epi32(0, 0, 0, 4)),
                                   _mm_setr_epi32(0x3F3F3F3F, 0x0F0F0F0F, 0x3F3F3F3F, 0x0F0F0F0F));
  const __m128i hi = _mm_and_si128(_mm_srli_epi32(b, 2), _mm_set1_epi8(0x30));  // bits 6-7 of a byte to 4-5
  return _mm_or_si128(lo, hi);
}

// vpshufb indices that broadcast int16 element k of each 128-bit lane over the lane.
inline __m256i broadcastWordIndex(int k) { return _mm256_set1_epi16(static_cast<int16_t>((2 * k + 1) << 8 | 2 * k)); }
// The same, element lo in the low lane and hi in the high lane.
inline __m256i broadcastWordIndex(int lo, int hi) {
  const auto w = [](int k) { return static_cast<int16_t>((2 * k + 1) << 8 | 2 * k); };
  return _mm256_setr_m128i(_mm_set1_epi16(w(lo)), _mm_set1_epi16(w(hi)));
}

// ------------------------------------------------------------------------------------------------------
// Dot products.

// Software prefetch of the weight bytes kPrefetchAhead past the block being read. A GEMV streams the matrix
// once, row after row (rows are contiguous, so this runs into the next rows); the hardware prefetcher stops
// at 4 KiB pages, and without these a single-row stream reached ~10 GB/s where sgemv's several rows reach
// 14 (bench_qmatmul_k, 11008 x 4096). 3 KiB ahead measured best of 1, 2, 3, 4 KiB. One prefetch per 64
// bytes of a block covers every line (consecutive blocks' windows leave gaps < 64 bytes); prefetches never
// fault, past the end of the matrix included.
constexpr size_t kPrefetchAhead = 3072;
template <size_t kBlockBytes>
inline void prefetchWeights(const uint8_t* w) {
  for (size_t o = 0; o < kBlockBytes; o += 64)
    _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchAhead + o), _MM_HINT_T0);
}

// The minimum term of a Q4_K/Q5_K block: sum_j m_j * (bsums[2j] + bsums[2j+1]) as 4 int32 lanes.
inline __m128i minTerm(__m128i mins16, const uint8_t* bsums) {
  const __m128i pair = _mm_hadd_epi16(load128(bsums), load128(bsums + 16));  // |.| <= 2 * 16 * 127
  return _mm_madd_epi16(mins16, pair);
}

// Q4_K and Q5_K: 4 iterations of 64 values (sub-blocks 2c, 2c+1).
template <bool kFive>
float dotScaleMin(size_t n, const uint8_t* w, const void* act) {
  constexpr size_t kBytes = kFive ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  constexpr size_t kQs = kFive ? offsetof(BlockQ5_K, qs) : offsetof(BlockQ4_K, qs);
  const auto* a = static_cast<const uint8_t*>(act);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i one = _mm256_set1_epi8(1), two = _mm256_set1_epi8(2);
  __m256i idx_lo[4], idx_hi[4];
  for (int c = 0; c < 4; ++c) {
    idx_lo[c] = broadcastWordIndex(2 * c);
    idx_hi[c] = broadcastWordIndex(2 * c + 1);
  }
  __m256 acc = _mm256_setzero_ps();
  __m128 accm = _mm_setzero_ps();
  for (size_t b = 0; b < n / kQKK; ++b, w += kBytes, a += sizeof(BlockQ8K)) {
    prefetchWeights<kBytes>(w);
    // [d * a.d, dmin * a.d, 0, 0]
    const __m128 dd = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(loadI32(w))), _mm_set1_ps(loadFloat(a)));
    const __m256i scm = _mm256_cvtepu8_epi16(scalesMinsK4(w + 4));
    const __m256i sc = _mm256_permute2x128_si256(scm, scm, 0x00);  // the 8 scales in both lanes
    const __m128i mt = minTerm(_mm256_extracti128_si256(scm, 1), a + offsetof(BlockQ8K, bsums));
    accm = _mm_fmadd_ps(_mm_permute_ps(dd, 0x55), _mm_cvtepi32_ps(mt), accm);
    const uint8_t* qs = w + kQs;
    const int8_t* q8 = reinterpret_cast<const int8_t*>(a + offsetof(BlockQ8K, qs));
    __m256i qh = kFive ? load256(w + offsetof(BlockQ5_K, qh)) : _mm256_setzero_si256();
    __m256i sumi[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int c = 0; c < 4; ++c) {
      const __m256i raw = load256(qs + 32 * c);
      __m256i lo = _mm256_and_si256(raw, m4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
      if constexpr (kFive) {
        // fifth bits of sub-blocks 2c, 2c+1: bits 0, 1 of qh after 2c bits of shifting (the bits a 16-bit
        // shift brings into a byte from its neighbour stay above bit 1 for the 3 shifts done).
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(qh, two), 3));
        qh = _mm256_srli_epi16(qh, 2);
      }
      const __m256i plo = _mm256_maddubs_epi16(lo, load256(q8 + 64 * c));
      const __m256i phi = _mm256_maddubs_epi16(hi, load256(q8 + 64 * c + 32));
      sumi[0] = _mm256_add_epi32(sumi[0], _mm256_madd_epi16(plo, _mm256_shuffle_epi8(sc, idx_lo[c])));
      sumi[1] = _mm256_add_epi32(sumi[1], _mm256_madd_epi16(phi, _mm256_shuffle_epi8(sc, idx_hi[c])));
    }
    acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(_mm256_add_epi32(sumi[0], sumi[1])), acc);
  }
  return hsum(acc) - hsum(accm);
}

float dotQ4K(size_t n, const uint8_t* w, const void* act) { return dotScaleMin<false>(n, w, act); }
float dotQ5K(size_t n, const uint8_t* w, const void* act) { return dotScaleMin<true>(n, w, act); }

// The 4 vectors of 32 unsigned 6-bit codes of half h of a Q6_K block: values 128h + 32g .. 128h + 32g + 31.
inline void codesQ6K(const uint8_t* ql, const uint8_t* qh, __m256i q[4]) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i l0 = load256(ql), l1 = load256(ql + 32), h = load256(qh);
  q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(0x03)), 4));
  q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(0x0C)), 2));
  q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, _mm256_set1_epi8(0x30)));
  q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                         _mm256_srli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(static_cast<char>(0xC0))), 2));
}

float dotQ6K(size_t n, const uint8_t* w, const void* act) {
  const auto* a = static_cast<const uint8_t*>(act);
  __m256i idx[4];
  for (int g = 0; g < 4; ++g) idx[g] = broadcastWordIndex(2 * g, 2 * g + 1);
  __m256 acc = _mm256_setzero_ps();
  for (size_t b = 0; b < n / kQKK; ++b, w += sizeof(BlockQ6_K), a += sizeof(BlockQ8K)) {
    prefetchWeights<sizeof(BlockQ6_K)>(w);
    const float ad = loadFloat(a + offsetof(BlockQ8K, d));
    const __m256i sc16 = _mm256_cvtepi8_epi16(load128(w + offsetof(BlockQ6_K, scales)));
    // 32 * sum_j scale_j * bsums_j: |.| <= 32 * 16 * 128 * 2032, in int32
    const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(a + offsetof(BlockQ8K, bsums))), 5);
    const int8_t* q8 = reinterpret_cast<const int8_t*>(a + offsetof(BlockQ8K, qs));
    __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(), offset);
    for (int h = 0; h < 2; ++h) {
      // scales 8h .. 8h+7 in both lanes; vector g takes 8h+2g (low lane) and 8h+2g+1 (high lane)
      const __m256i sc =
          h == 0 ? _mm256_permute2x128_si256(sc16, sc16, 0x00) : _mm256_permute2x128_si256(sc16, sc16, 0x11);
      __m256i q[4];
      codesQ6K(w + offsetof(BlockQ6_K, ql) + 64 * h, w + offsetof(BlockQ6_K, qh) + 32 * h, q);
      for (int g = 0; g < 4; ++g) {
        const __m256i p = _mm256_maddubs_epi16(q[g], load256(q8 + 128 * h + 32 * g));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_shuffle_epi8(sc, idx[g])));
      }
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half(w + offsetof(BlockQ6_K, d)) * ad), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum(acc);
}

// ------------------------------------------------------------------------------------------------------
// Dequantization.

// 32 unsigned codes (bytes of v) -> y[0..31] = d1 * q - m1.
inline void storeScaleMin(__m256i v, __m256 d1, __m256 m1, float* y) {
  const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int k = 0; k < 4; ++k) {
    const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[k]));
    _mm256_storeu_ps(y + 8 * k, _mm256_sub_ps(_mm256_mul_ps(d1, q), m1));
  }
}

template <bool kFive>
void dequantScaleMin(const uint8_t* src, float* dst, size_t n) {
  constexpr size_t kBytes = kFive ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  constexpr size_t kQs = kFive ? offsetof(BlockQ5_K, qs) : offsetof(BlockQ4_K, qs);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i one = _mm256_set1_epi8(1), two = _mm256_set1_epi8(2);
  for (size_t b = 0; b < n / kQKK; ++b, src += kBytes, dst += kQKK) {
    // d1_j = d * sc_j, m1_j = dmin * m_j: 8 lanes of exactly the scalar products
    const __m128i scm = scalesMinsK4(src + 4);
    const __m256 d1 = _mm256_mul_ps(_mm256_set1_ps(half(src)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(scm)));
    const __m256 m1 =
        _mm256_mul_ps(_mm256_set1_ps(half(src + 2)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(scm, 8))));
    alignas(32) float d1s[8], m1s[8];
    _mm256_store_ps(d1s, d1);
    _mm256_store_ps(m1s, m1);
    const uint8_t* qs = src + kQs;
    __m256i qh = kFive ? load256(src + offsetof(BlockQ5_K, qh)) : _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const __m256i raw = load256(qs + 32 * c);
      __m256i lo = _mm256_and_si256(raw, m4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
      if constexpr (kFive) {
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(qh, two), 3));
        qh = _mm256_srli_epi16(qh, 2);
      }
      storeScaleMin(lo, _mm256_set1_ps(d1s[2 * c]), _mm256_set1_ps(m1s[2 * c]), dst + 64 * c);
      storeScaleMin(hi, _mm256_set1_ps(d1s[2 * c + 1]), _mm256_set1_ps(m1s[2 * c + 1]), dst + 64 * c + 32);
    }
  }
}

void dequantQ4K(const uint8_t* src, float* dst, size_t n) { dequantScaleMin<false>(src, dst, n); }
void dequantQ5K(const uint8_t* src, float* dst, size_t n) { dequantScaleMin<true>(src, dst, n); }

void dequantQ6K(const uint8_t* src, float* dst, size_t n) {
  const __m256i k32 = _mm256_set1_epi8(32);
  for (size_t b = 0; b < n / kQKK; ++b, src += sizeof(BlockQ6_K), dst += kQKK) {
    const __m128i sc8 = load128(src + offsetof(BlockQ6_K, scales));
    const __m256 d = _mm256_set1_ps(half(src + offsetof(BlockQ6_K, d)));
    alignas(32) float ds[16];  // d * scale_j, as the scalar (d * scale) * (q - 32)
    _mm256_store_ps(ds, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc8))));
    _mm256_store_ps(ds + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc8, 8)))));
    for (int h = 0; h < 2; ++h) {
      __m256i q[4];
      codesQ6K(src + offsetof(BlockQ6_K, ql) + 64 * h, src + offsetof(BlockQ6_K, qh) + 32 * h, q);
      for (int g = 0; g < 4; ++g) {
        const __m256i v = _mm256_sub_epi8(q[g], k32);
        const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
        const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        float* y = dst + 128 * h + 32 * g;
        for (int k = 0; k < 4; ++k) {
          const __m256 s = _mm256_set1_ps(ds[8 * h + 2 * g + k / 2]);
          _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[k]))));
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------------
// The Q8K quantizer (kquants.cc's quantizeQ8K, lane for lane).

void quantizeQ8K(const float* x, size_t n, void* out) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 fmax = _mm256_set1_ps(std::numeric_limits<float>::max());
  for (size_t b = 0; b < n / kQ8KBlock; ++b, x += kQ8KBlock) {
    uint8_t* o = static_cast<uint8_t*>(out) + b * sizeof(BlockQ8K);
    __m256 amax = _mm256_setzero_ps();
    __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    for (size_t i = 0; i < kQ8KBlock; i += 8) {
      const __m256 av = _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask);
      ok = _mm256_and_ps(ok, _mm256_cmp_ps(av, fmax, _CMP_LE_OQ));  // false for NaN and Inf
      amax = _mm256_max_ps(amax, av);
    }
    float d;
    if (_mm256_movemask_ps(ok) != 0xFF) {
      d = std::numeric_limits<float>::quiet_NaN();
    } else {
      __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
      m = _mm_max_ps(m, _mm_movehl_ps(m, m));
      m = _mm_max_ss(m, _mm_movehdup_ps(m));
      d = _mm_cvtss_f32(m) / 127.f;
    }
    if (!(d >= FLT_MIN)) {  // non-finite (d = NaN), all-zero or tiny (d = 0): no codes
      std::memset(o, 0, sizeof(BlockQ8K));
      if (std::isnan(d)) std::memcpy(o + offsetof(BlockQ8K, d), &d, 4);
      continue;
    }
    std::memcpy(o + offsetof(BlockQ8K, d), &d, 4);
    const __m256 id = _mm256_set1_ps(1.f / d);
    int8_t* qs = reinterpret_cast<int8_t*>(o + offsetof(BlockQ8K, qs));
    __m256i sums[4];
    for (int g = 0; g < 8; ++g) {  // 32 values: bsums 2g, 2g+1
      __m256i i32[4];
      for (int k = 0; k < 4; ++k) i32[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 32 * g + 8 * k), id));
      // packs interleave the 128-bit lanes: dwords 0,4,1,5,2,6,3,7 back in order
      const __m256i p8 = _mm256_permutevar8x32_epi32(
          _mm256_packs_epi16(_mm256_packs_epi32(i32[0], i32[1]), _mm256_packs_epi32(i32[2], i32[3])),
          _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + 32 * g), p8);
      const __m256i h = _mm256_hadd_epi32(_mm256_add_epi32(i32[0], i32[1]), _mm256_add_epi32(i32[2], i32[3]));
      if (g % 2 == 0) {
        sums[g / 2] = h;
      } else {
        // [g-1 lo pair sums, g-1 hi, g lo, g hi] per lane; adding the lanes gives bsums 2g-2 .. 2g+1
        sums[g / 2] = _mm256_hadd_epi32(sums[g / 2], h);
      }
    }
    alignas(16) int32_t bs[16];
    for (int k = 0; k < 4; ++k)
      _mm_store_si128(reinterpret_cast<__m128i*>(bs + 4 * k),
                      _mm_add_epi32(_mm256_castsi256_si128(sums[k]), _mm256_extracti128_si256(sums[k], 1)));
    int16_t bs16[16];
    for (int j = 0; j < 16; ++j) bs16[j] = static_cast<int16_t>(bs[j]);
    std::memcpy(o + offsetof(BlockQ8K, bsums), bs16, sizeof bs16);
  }
}

const TypeKernels kQ4K{&dequantQ4K, &dotQ4K};
const TypeKernels kQ5K{&dequantQ5K, &dotQ5K};
const TypeKernels kQ6K{&dequantQ6K, &dotQ6K};

}  // namespace

const TypeKernels* kquantKernelsAvx2(TensorType t) {
  switch (t) {
    case TensorType::Q4_K:
      return &kQ4K;
    case TensorType::Q5_K:
      return &kQ5K;
    case TensorType::Q6_K:
      return &kQ6K;
    default:
      return nullptr;
  }
}

QuantizeFn q8kQuantizerAvx2() { return &quantizeQ8K; }

}  // namespace flashring::qmm::detail
