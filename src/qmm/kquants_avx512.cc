// AVX-512 (F, BW, VL, DQ) kernels of Q4_K, Q5_K, Q6_K and the Q8K activation quantizer, entered only when
// the CPU has them (kquants.cc's kquantKernels). kquants_avx512vnni.cc compiles this file a second time
// with -mavx512vnni and FLASHRING_KQ_VNNI = 1 (kquantKernelsAvx512Vnni, chosen when cpu::hasAvx512Vnni()):
// the same code extraction, another multiply-accumulate (below); dequantization is the same code.
//
// Dot products, one 512-bit vector = 64 values = two sub-blocks of 32 (Q4_K/Q5_K) or four of 16 (Q6_K),
// matching 64 contiguous activation codes:
//   Q4_K/Q5_K: the 32 bytes of sub-blocks 2c, 2c+1 are broadcast to both 256-bit halves and shifted right
//              by 0 / 4 bits per half (vpsrlvq), so one mask gives the low nibbles (sub-block 2c) in the low
//              half and the high nibbles (2c+1) in the high half; Q5_K's fifth bits are a vptestmb of the
//              broadcast qh against bit 2c / 2c+1 per half and a masked byte add of 16.
//   Q6_K:      64 bytes of ql give the low 4 bits of 64 values (low or high nibbles); the 2 high bits come
//              from the broadcast qh shifted per half (vpsllvq / vpsrlvq) to bits 4-5.
// Multiply-accumulate, exact in int32 (one conversion and FMA per block):
//   AVX-512BW: vpmaddubsw (unsigned codes x signed activation codes -> int16 pairs, no saturation:
//              2 * 63 * 127 < 2^15), then vpmaddwd + vpaddd with the sub-block scales spread over their
//              lanes (vpshufb / vpermw).
//   VNNI:      vpdpbusd sums 4 code products into each int32 lane (|.| <= 4 * 63 * 127, an int16 still), two
//              such vectors are packed to int16 (vpackssdw, exact) and one vpdpwssd multiplies them by their
//              scales and accumulates: 1.5 multiply uops per 64 values instead of 2 (+ the add).
// Mins and Q6_K's -32 come from the activation's bsums.
//
// Dequantization and the quantizer do the scalar reference's operations in the same order (exact integer
// to float conversions, _mm512_mul_ps / _mm512_sub_ps, never fused): bit for bit the scalar results.

// GCC 12's AVX-512 headers self-initialise their "undefined" vectors (`__m512i __Y = __Y;`), which
// -Wmaybe-uninitialized reports at every use (GCC PR 105593). The warning is silenced for the header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

#include "qmm/qmm_internal.h"

#ifndef FLASHRING_KQ_VNNI
#define FLASHRING_KQ_VNNI 0
#endif

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
inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
// 32 bytes at p in both 256-bit halves.
inline __m512i broadcast256(const void* p) { return _mm512_broadcast_i64x4(load256(p)); }

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

inline int16_t wordIndex(int k) { return static_cast<int16_t>((2 * k + 1) << 8 | 2 * k); }
// vpshufb indices: int16 element lo of each 128-bit lane over the low 256 bits, element hi over the high.
inline __m512i halvesWordIndex(int lo, int hi) {
  return _mm512_inserti64x4(_mm512_zextsi256_si512(_mm256_set1_epi16(wordIndex(lo))), _mm256_set1_epi16(wordIndex(hi)),
                            1);
}

// A 512-bit vector from four 128-bit lanes (lane 0 lowest).
inline __m512i fromLanes(__m128i l0, __m128i l1, __m128i l2, __m128i l3) {
  return _mm512_inserti64x4(_mm512_zextsi256_si512(_mm256_setr_m128i(l0, l1)), _mm256_setr_m128i(l2, l3), 1);
}
// 8 int16 of one lane: w0 four times, then w1 four times (as vpshufb byte indices when `bytes`).
inline __m128i wordsLane(int w0, int w1, bool bytes) {
  const auto e = [bytes](int k) { return static_cast<int16_t>(bytes ? ((2 * k + 1) << 8 | 2 * k) : k); };
  return _mm_setr_epi16(e(w0), e(w0), e(w0), e(w0), e(w1), e(w1), e(w1), e(w1));
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

// The 64 codes of sub-blocks 2c (low half) and 2c+1 (high half) of a Q4_K/Q5_K block (without Q5_K's bit).
inline __m512i nibblePair(const uint8_t* qs32, __m512i shift, __m512i m4) {
  return _mm512_and_si512(_mm512_srlv_epi64(broadcast256(qs32), shift), m4);
}

template <bool kFive>
float dotScaleMin(size_t n, const uint8_t* w, const void* act) {
  constexpr size_t kBytes = kFive ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  constexpr size_t kQs = kFive ? offsetof(BlockQ5_K, qs) : offsetof(BlockQ4_K, qs);
  const auto* a = static_cast<const uint8_t*>(act);
  const __m512i m4 = _mm512_set1_epi8(0x0F), k16 = _mm512_set1_epi8(16);
  const __m512i shift = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
  __m512i bit[4];
#if !FLASHRING_KQ_VNNI
  __m512i idx[4];
  for (int c = 0; c < 4; ++c) idx[c] = halvesWordIndex(2 * c, 2 * c + 1);
#endif
  for (int c = 0; c < 4; ++c) {
    bit[c] = _mm512_inserti64x4(_mm512_zextsi256_si512(_mm256_set1_epi8(static_cast<char>(1 << (2 * c)))),
                                _mm256_set1_epi8(static_cast<char>(1 << (2 * c + 1))), 1);
  }
#if FLASHRING_KQ_VNNI
  // vpackssdw of chunks c, c+1 holds in 128-bit lane L: 4 words of chunk c's sub-block 2c + L/2, then 4 of
  // chunk c+1's sub-block 2c + 2 + L/2. packed_idx[k] spreads those scales (c = 2k).
  __m512i packed_idx[2];
  for (int k = 0; k < 2; ++k) {
    const int s0 = 4 * k;
    packed_idx[k] = fromLanes(wordsLane(s0, s0 + 2, true), wordsLane(s0, s0 + 2, true), wordsLane(s0 + 1, s0 + 3, true),
                              wordsLane(s0 + 1, s0 + 3, true));
  }
#endif
  __m512 acc = _mm512_setzero_ps();
  __m128 accm = _mm_setzero_ps();
  for (size_t b = 0; b < n / kQKK; ++b, w += kBytes, a += sizeof(BlockQ8K)) {
    prefetchWeights<kBytes>(w);
    // [d * a.d, dmin * a.d, 0, 0]
    const __m128 dd = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(loadI32(w))), _mm_set1_ps(loadFloat(a)));
    const __m128i scm = scalesMinsK4(w + 4);
    const __m128i pair = _mm_hadd_epi16(load128(a + offsetof(BlockQ8K, bsums)),
                                        load128(a + offsetof(BlockQ8K, bsums) + 16));  // bsums[2j] + bsums[2j+1]
    const __m128i mt = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_srli_si128(scm, 8)), pair);
    accm = _mm_fmadd_ps(_mm_permute_ps(dd, 0x55), _mm_cvtepi32_ps(mt), accm);
    const __m512i sc = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(scm));  // 8 int16 scales in every lane
    const uint8_t* qs = w + kQs;
    const int8_t* q8 = reinterpret_cast<const int8_t*>(a + offsetof(BlockQ8K, qs));
    __m512i qh = _mm512_setzero_si512();
    if constexpr (kFive) qh = broadcast256(w + offsetof(BlockQ5_K, qh));
#if FLASHRING_KQ_VNNI
    // vpdpbusd: sums of 4 code products per int32 lane (|.| <= 4 * 31 * 127, an int16), lanes 0-7 sub-block
    // 2c, 8-15 sub-block 2c+1; two chunks packed to int16 and multiplied by their scales with vpdpwssd.
    __m512i dp[4];
    for (int c = 0; c < 4; ++c) {
      __m512i v = nibblePair(qs + 32 * c, shift, m4);
      if constexpr (kFive) v = _mm512_mask_add_epi8(v, _mm512_test_epi8_mask(qh, bit[c]), v, k16);
      dp[c] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v, load512(q8 + 64 * c));
    }
    __m512i sumi = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_packs_epi32(dp[0], dp[1]),
                                       _mm512_shuffle_epi8(sc, packed_idx[0]));
    sumi = _mm512_dpwssd_epi32(sumi, _mm512_packs_epi32(dp[2], dp[3]), _mm512_shuffle_epi8(sc, packed_idx[1]));
    acc = _mm512_fmadd_ps(_mm512_broadcastss_ps(dd), _mm512_cvtepi32_ps(sumi), acc);
#else
    __m512i sumi[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};  // two chains of accumulation
    for (int c = 0; c < 4; ++c) {
      __m512i v = nibblePair(qs + 32 * c, shift, m4);
      if constexpr (kFive) v = _mm512_mask_add_epi8(v, _mm512_test_epi8_mask(qh, bit[c]), v, k16);
      const __m512i p = _mm512_maddubs_epi16(v, load512(q8 + 64 * c));
      sumi[c & 1] = _mm512_add_epi32(sumi[c & 1], _mm512_madd_epi16(p, _mm512_shuffle_epi8(sc, idx[c])));
    }
    acc = _mm512_fmadd_ps(_mm512_broadcastss_ps(dd), _mm512_cvtepi32_ps(_mm512_add_epi32(sumi[0], sumi[1])), acc);
#endif
  }
  return _mm512_reduce_add_ps(acc) - hsum(accm);
}

float dotQ4K(size_t n, const uint8_t* w, const void* act) { return dotScaleMin<false>(n, w, act); }
float dotQ5K(size_t n, const uint8_t* w, const void* act) { return dotScaleMin<true>(n, w, act); }

// Unsigned 6-bit codes of half h of a Q6_K block: v[0] = values 128h + 0..63, v[1] = 128h + 64..127.
inline void codesQ6K(const uint8_t* ql, const uint8_t* qh, __m512i v[2]) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  const __m512i l = load512(ql), h = broadcast256(qh);
  // values 0..31: qh bits 0-1 (<< 4); 32..63: bits 2-3 (<< 2); 64..95: bits 4-5; 96..127: bits 6-7 (>> 2)
  const __m512i h0 = _mm512_and_si512(_mm512_sllv_epi64(h, _mm512_setr_epi64(4, 4, 4, 4, 2, 2, 2, 2)), m30);
  const __m512i h1 = _mm512_and_si512(_mm512_srlv_epi64(h, _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2)), m30);
  v[0] = _mm512_or_si512(_mm512_and_si512(l, m4), h0);
  v[1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4), h1);
}

float dotQ6K(size_t n, const uint8_t* w, const void* act) {
  const auto* a = static_cast<const uint8_t*>(act);
#if !FLASHRING_KQ_VNNI
  // vpermw indices: vector k of half h covers sub-blocks 8h + 4k + L in its 128-bit lanes L = 0..3
  __m512i perm[2][2];
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 2; ++k) {
      const int s = 8 * h + 4 * k;
      perm[h][k] = _mm512_inserti64x4(
          _mm512_castsi256_si512(
              _mm256_setr_m128i(_mm_set1_epi16(static_cast<int16_t>(s)), _mm_set1_epi16(static_cast<int16_t>(s + 1)))),
          _mm256_setr_m128i(_mm_set1_epi16(static_cast<int16_t>(s + 2)), _mm_set1_epi16(static_cast<int16_t>(s + 3))),
          1);
    }
#endif
#if FLASHRING_KQ_VNNI
  // vpackssdw of half h's two vectors holds in lane L 4 words of sub-block 8h + L, then 4 of 8h + 4 + L.
  __m512i packed_perm[2];
  for (int h = 0; h < 2; ++h)
    packed_perm[h] = fromLanes(wordsLane(8 * h, 8 * h + 4, false), wordsLane(8 * h + 1, 8 * h + 5, false),
                               wordsLane(8 * h + 2, 8 * h + 6, false), wordsLane(8 * h + 3, 8 * h + 7, false));
#endif
  __m512 acc = _mm512_setzero_ps();
  for (size_t b = 0; b < n / kQKK; ++b, w += sizeof(BlockQ6_K), a += sizeof(BlockQ8K)) {
    prefetchWeights<sizeof(BlockQ6_K)>(w);
    const float ad = loadFloat(a + offsetof(BlockQ8K, d));
    const __m256i sc16 = _mm256_cvtepi8_epi16(load128(w + offsetof(BlockQ6_K, scales)));
    // 32 * sum_j scale_j * bsums_j (|.| <= 32 * 16 * 128 * 2032) subtracted up front
    const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(a + offsetof(BlockQ8K, bsums))), 5);
    __m512i sumi = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), offset));
    const __m512i sc = _mm512_zextsi256_si512(sc16);
    const int8_t* q8 = reinterpret_cast<const int8_t*>(a + offsetof(BlockQ8K, qs));
    for (int h = 0; h < 2; ++h) {
      __m512i v[2];
      codesQ6K(w + offsetof(BlockQ6_K, ql) + 64 * h, w + offsetof(BlockQ6_K, qh) + 32 * h, v);
#if FLASHRING_KQ_VNNI
      // vpdpbusd: 4 code products per int32 lane (|.| <= 4 * 63 * 127, an int16), one sub-block a 128-bit
      // lane; both vectors packed to int16 and multiplied by their scales with one vpdpwssd.
      const __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v[0], load512(q8 + 128 * h));
      const __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v[1], load512(q8 + 128 * h + 64));
      sumi = _mm512_dpwssd_epi32(sumi, _mm512_packs_epi32(d0, d1), _mm512_permutexvar_epi16(packed_perm[h], sc));
#else
      for (int k = 0; k < 2; ++k) {
        const __m512i p = _mm512_maddubs_epi16(v[k], load512(q8 + 128 * h + 64 * k));
        sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p, _mm512_permutexvar_epi16(perm[h][k], sc)));
      }
#endif
    }
    acc = _mm512_fmadd_ps(_mm512_set1_ps(half(w + offsetof(BlockQ6_K, d)) * ad), _mm512_cvtepi32_ps(sumi), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// ------------------------------------------------------------------------------------------------------
// Dequantization.

// Bytes 16k .. 16k+15 of v as 16 int32 lanes (zero- or sign-extended).
inline __m512i widenU8(__m512i v, int k) {
  switch (k) {
    case 0:
      return _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(v, 0));
    case 1:
      return _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(v, 1));
    case 2:
      return _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(v, 2));
    default:
      return _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(v, 3));
  }
}
inline __m512i widenI8(__m512i v, int k) {
  switch (k) {
    case 0:
      return _mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(v, 0));
    case 1:
      return _mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(v, 1));
    case 2:
      return _mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(v, 2));
    default:
      return _mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(v, 3));
  }
}

template <bool kFive>
void dequantScaleMin(const uint8_t* src, float* dst, size_t n) {
  constexpr size_t kBytes = kFive ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  constexpr size_t kQs = kFive ? offsetof(BlockQ5_K, qs) : offsetof(BlockQ4_K, qs);
  const __m512i m4 = _mm512_set1_epi8(0x0F), k16 = _mm512_set1_epi8(16);
  const __m512i shift = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
  for (size_t b = 0; b < n / kQKK; ++b, src += kBytes, dst += kQKK) {
    // d1_j = d * sc_j, m1_j = dmin * m_j (lanes 0..7 scales, 8..15 mins): exactly the scalar products
    const __m512 dd = _mm512_insertf32x8(_mm512_set1_ps(half(src)), _mm256_set1_ps(half(src + 2)), 1);
    alignas(64) float dm[16];
    _mm512_store_ps(dm, _mm512_mul_ps(dd, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(scalesMinsK4(src + 4)))));
    const uint8_t* qs = src + kQs;
    __m512i qh = _mm512_setzero_si512();
    if constexpr (kFive) qh = broadcast256(src + offsetof(BlockQ5_K, qh));
    for (int c = 0; c < 4; ++c) {
      __m512i v = nibblePair(qs + 32 * c, shift, m4);
      if constexpr (kFive) {
        const __m512i bit =
            _mm512_inserti64x4(_mm512_zextsi256_si512(_mm256_set1_epi8(static_cast<char>(1 << (2 * c)))),
                               _mm256_set1_epi8(static_cast<char>(1 << (2 * c + 1))), 1);
        v = _mm512_mask_add_epi8(v, _mm512_test_epi8_mask(qh, bit), v, k16);
      }
      for (int k = 0; k < 4; ++k) {
        const int j = 2 * c + k / 2;  // sub-block of these 16 values
        const __m512 q = _mm512_cvtepi32_ps(widenU8(v, k));
        _mm512_storeu_ps(dst + 64 * c + 16 * k,
                         _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(dm[j]), q), _mm512_set1_ps(dm[8 + j])));
      }
    }
  }
}

void dequantQ4K(const uint8_t* src, float* dst, size_t n) { dequantScaleMin<false>(src, dst, n); }
void dequantQ5K(const uint8_t* src, float* dst, size_t n) { dequantScaleMin<true>(src, dst, n); }

void dequantQ6K(const uint8_t* src, float* dst, size_t n) {
  const __m512i k32 = _mm512_set1_epi8(32);
  for (size_t b = 0; b < n / kQKK; ++b, src += sizeof(BlockQ6_K), dst += kQKK) {
    alignas(64) float ds[16];  // d * scale_j, as the scalar (d * scale) * (q - 32)
    _mm512_store_ps(
        ds, _mm512_mul_ps(_mm512_set1_ps(half(src + offsetof(BlockQ6_K, d))),
                          _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load128(src + offsetof(BlockQ6_K, scales))))));
    for (int h = 0; h < 2; ++h) {
      __m512i v[2];
      codesQ6K(src + offsetof(BlockQ6_K, ql) + 64 * h, src + offsetof(BlockQ6_K, qh) + 32 * h, v);
      for (int k = 0; k < 2; ++k) {
        const __m512i s = _mm512_sub_epi8(v[k], k32);
        for (int l = 0; l < 4; ++l) {  // 16 values = sub-block 8h + 4k + l
          const __m512 q = _mm512_cvtepi32_ps(widenI8(s, l));
          _mm512_storeu_ps(dst + 128 * h + 64 * k + 16 * l, _mm512_mul_ps(_mm512_set1_ps(ds[8 * h + 4 * k + l]), q));
        }
      }
    }
  }
}

#if !FLASHRING_KQ_VNNI
// ------------------------------------------------------------------------------------------------------
// The Q8K quantizer (kquants.cc's quantizeQ8K, lane for lane); one vector of 16 codes per bsums entry.

void quantizeQ8K(const float* x, size_t n, void* out) {
  const __m512 fmax = _mm512_set1_ps(std::numeric_limits<float>::max());
  for (size_t b = 0; b < n / kQ8KBlock; ++b, x += kQ8KBlock) {
    uint8_t* o = static_cast<uint8_t*>(out) + b * sizeof(BlockQ8K);
    __m512 amax = _mm512_setzero_ps();
    __mmask16 ok = 0xFFFF;
    for (size_t i = 0; i < kQ8KBlock; i += 16) {
      const __m512 av = _mm512_abs_ps(_mm512_loadu_ps(x + i));
      ok = static_cast<__mmask16>(ok & _mm512_cmp_ps_mask(av, fmax, _CMP_LE_OQ));  // false for NaN and Inf
      amax = _mm512_max_ps(amax, av);
    }
    const float d = ok != 0xFFFF ? std::numeric_limits<float>::quiet_NaN() : _mm512_reduce_max_ps(amax) / 127.f;
    if (!(d >= FLT_MIN)) {  // non-finite (d = NaN), all-zero or tiny (d = 0): no codes
      std::memset(o, 0, sizeof(BlockQ8K));
      if (std::isnan(d)) std::memcpy(o + offsetof(BlockQ8K, d), &d, 4);
      continue;
    }
    std::memcpy(o + offsetof(BlockQ8K, d), &d, 4);
    const __m512 id = _mm512_set1_ps(1.f / d);
    int16_t bs[16];
    for (int j = 0; j < 16; ++j) {
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * j), id));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + offsetof(BlockQ8K, qs) + 16 * j), _mm512_cvtsepi32_epi8(q));
      bs[j] = static_cast<int16_t>(_mm512_reduce_add_epi32(q));
    }
    std::memcpy(o + offsetof(BlockQ8K, bsums), bs, sizeof bs);
  }
}
#endif

const TypeKernels kQ4K{&dequantQ4K, &dotQ4K};
const TypeKernels kQ5K{&dequantQ5K, &dotQ5K};
const TypeKernels kQ6K{&dequantQ6K, &dotQ6K};

const TypeKernels* table(TensorType t) {
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

}  // namespace

#if FLASHRING_KQ_VNNI
const TypeKernels* kquantKernelsAvx512Vnni(TensorType t) { return table(t); }
#else
const TypeKernels* kquantKernelsAvx512(TensorType t) { return table(t); }
QuantizeFn q8kQuantizerAvx512() { return &quantizeQ8K; }
#endif

}  // namespace flashring::qmm::detail
