// AVX2 spike selection (quant.h "Spike reserving"; compiled with -mavx2, entered only for Isa::Avx2 and
// Isa::Avx512, whose CPUs have AVX2). It picks exactly the spikes of the reference selection in spikes.cc
// (tests compare the two bit for bit); groups it does not handle (NaN/Inf, r % 32 != 0, r <= k) are left to
// the reference by returning -1.
//
// Magnitudes are the fp32 bits without the sign: for finite values their integer order is the order of |x|,
// and a maximum reaching the all-ones exponent means NaN/Inf. One pass reads the group from memory, stores
// the copy and takes the largest magnitude per lane (for k = 2 also the second largest, with multiplicity).
// Every value is then finite and r > k, so the group has exactly k spikes, found on the copy (in L1):
//   k = 1: the first position holding the largest magnitude;
//   k = 2: the two largest magnitudes counted with multiplicity are the spikes' magnitudes: the first
//          position of each (the first two positions if they are equal);
//   k > 2: one pass per magnitude level, from the top: the positions at the level are taken in index order
//          (the rule's tie order) until k are chosen, while the same pass takes the largest magnitude below
//          the level, the next one.
// The passes that only look for positions stop at the last one they need.
//
// Internal linkage and no std:: inline functions (codec_internal.h explains why).
#include <immintrin.h>
#include <stdlib.h>

#include "quant/cpu/codec_internal.h"

namespace flashring::quant::detail {
namespace {

constexpr int32_t kAbsMaskBits = 0x7FFFFFFF;
constexpr int32_t kInfMagnitude = 0x7F800000;
// The input is read from memory once, in the first pass: prefetch this far ahead (as codec_avx2.cc's pass 1).
constexpr uintptr_t kPrefetchBytes = 8192;

inline int32_t hmaxEpi32(__m256i v) {
  __m128i m = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4E));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0xB1));
  return _mm_cvtsi128_si32(m);
}

inline __m256i magnitudes(const float* p, __m256i abs_mask) {
  return _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), abs_mask);
}

// Takes the positions holding magnitude `level` of copy[0, r), in index order, until `need` are taken (to
// out); returns how many. With Below, *below = the largest magnitude under `level` (values of other levels are
// masked to 0 for the maximum: when the next level is 0 it matches only true zeros, as every value already at
// a level is above 0). Without, it stops at the need-th position.
template <bool Below>
inline int takeLevel(const float* copy, size_t r, int32_t level, int need, uint16_t* out, __m256i abs_mask,
                     int32_t* below) {
  const __m256i lv = _mm256_set1_epi32(level);
  __m256i b0 = _mm256_setzero_si256(), b1 = b0, b2 = b0, b3 = b0;
  int got = 0;
  for (size_t j = 0; j < r; j += 32) {
    const __m256i m0 = magnitudes(copy + j, abs_mask), m1 = magnitudes(copy + j + 8, abs_mask);
    const __m256i m2 = magnitudes(copy + j + 16, abs_mask), m3 = magnitudes(copy + j + 24, abs_mask);
    if constexpr (Below) {
      b0 = _mm256_max_epi32(b0, _mm256_and_si256(m0, _mm256_cmpgt_epi32(lv, m0)));
      b1 = _mm256_max_epi32(b1, _mm256_and_si256(m1, _mm256_cmpgt_epi32(lv, m1)));
      b2 = _mm256_max_epi32(b2, _mm256_and_si256(m2, _mm256_cmpgt_epi32(lv, m2)));
      b3 = _mm256_max_epi32(b3, _mm256_and_si256(m3, _mm256_cmpgt_epi32(lv, m3)));
    }
    const __m256i e0 = _mm256_cmpeq_epi32(m0, lv), e1 = _mm256_cmpeq_epi32(m1, lv);
    const __m256i e2 = _mm256_cmpeq_epi32(m2, lv), e3 = _mm256_cmpeq_epi32(m3, lv);
    const __m256i any = _mm256_or_si256(_mm256_or_si256(e0, e1), _mm256_or_si256(e2, e3));
    if (_mm256_testz_si256(any, any) != 0) continue;
    uint32_t hit = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(e0))) |
                   static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(e1))) << 8 |
                   static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(e2))) << 16 |
                   static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(e3))) << 24;
    while (hit != 0 && got < need) {
      out[got++] = static_cast<uint16_t>(j + static_cast<size_t>(__builtin_ctz(hit)));
      hit &= hit - 1;
    }
    if (got == need) return got;
  }
  if constexpr (Below) *below = hmaxEpi32(_mm256_max_epi32(_mm256_max_epi32(b0, b1), _mm256_max_epi32(b2, b3)));
  return got;
}

// The two largest magnitudes of a group, counted with multiplicity (first >= second).
struct Top2 {
  int32_t first, second;
};

// Per lane: the two largest of {a1 >= a2} and {b1 >= b2}, into a1 >= a2.
inline void mergeTop2(__m256i& a1, __m256i& a2, __m256i b1, __m256i b2) {
  const __m256i lo = _mm256_min_epi32(a1, b1);
  a1 = _mm256_max_epi32(a1, b1);
  a2 = _mm256_max_epi32(lo, _mm256_max_epi32(a2, b2));
}

// Copies x[0, r) (r % 32 == 0, r >= 2) to copy, reading x from memory once, and returns its two largest
// magnitudes (with Second; otherwise only first is computed). Magnitudes are < 2^31, so signed maxima order
// them (NaN bit patterns above Inf's included). Starting from 0 is safe: r >= 2 real magnitudes are >= 0.
template <bool Second>
inline Top2 copyAndTop2(const float* x, size_t r, float* copy, __m256i abs_mask) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;  // per lane: largest
  __m256i s0 = a0, s1 = a0, s2 = a0, s3 = a0;                      // per lane: second largest
  for (size_t i = 0; i < r; i += 32) {
    // Integer address arithmetic: past the end of the input is harmless for a prefetch, not a valid pointer.
    const uintptr_t ahead = reinterpret_cast<uintptr_t>(x + i) + kPrefetchBytes;
    _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(ahead + 64), _MM_HINT_T0);
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 8));
    const __m256i v2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 16));
    const __m256i v3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 24));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(copy + i), v0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(copy + i + 8), v1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(copy + i + 16), v2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(copy + i + 24), v3);
    const __m256i m0 = _mm256_and_si256(v0, abs_mask), m1 = _mm256_and_si256(v1, abs_mask);
    const __m256i m2 = _mm256_and_si256(v2, abs_mask), m3 = _mm256_and_si256(v3, abs_mask);
    if constexpr (Second) {
      s0 = _mm256_max_epi32(s0, _mm256_min_epi32(a0, m0));
      s1 = _mm256_max_epi32(s1, _mm256_min_epi32(a1, m1));
      s2 = _mm256_max_epi32(s2, _mm256_min_epi32(a2, m2));
      s3 = _mm256_max_epi32(s3, _mm256_min_epi32(a3, m3));
    }
    a0 = _mm256_max_epi32(a0, m0);
    a1 = _mm256_max_epi32(a1, m1);
    a2 = _mm256_max_epi32(a2, m2);
    a3 = _mm256_max_epi32(a3, m3);
  }
  Top2 t{0, 0};
  if constexpr (Second) {
    mergeTop2(a0, s0, a1, s1);
    mergeTop2(a2, s2, a3, s3);
    mergeTop2(a0, s0, a2, s2);
    // Across lanes: the other 128-bit half, then the other pair, then the neighbour.
    mergeTop2(a0, s0, _mm256_permute2x128_si256(a0, a0, 0x01), _mm256_permute2x128_si256(s0, s0, 0x01));
    mergeTop2(a0, s0, _mm256_shuffle_epi32(a0, 0x4E), _mm256_shuffle_epi32(s0, 0x4E));
    mergeTop2(a0, s0, _mm256_shuffle_epi32(a0, 0xB1), _mm256_shuffle_epi32(s0, 0xB1));
    t.first = _mm256_cvtsi256_si32(a0);
    t.second = _mm256_cvtsi256_si32(s0);
  } else {
    t.first = hmaxEpi32(_mm256_max_epi32(_mm256_max_epi32(a0, a1), _mm256_max_epi32(a2, a3)));
  }
  return t;
}

}  // namespace

int selectGroupSpikesFiniteAvx2(const float* x, size_t r, int k, float* copy, uint16_t* pos) {
  if (r % 32 != 0 || r <= static_cast<size_t>(k) || k <= 0 || k > kMaxSpikes) return -1;
  const __m256i abs_mask = _mm256_set1_epi32(kAbsMaskBits);
  const Top2 t = k == 2 ? copyAndTop2<true>(x, r, copy, abs_mask) : copyAndTop2<false>(x, r, copy, abs_mask);
  if (t.first >= kInfMagnitude) return -1;  // NaN/Inf: the reference handles the group

  uint16_t chosen[kMaxSpikes] = {};
  if (k == 1) {
    takeLevel<false>(copy, r, t.first, 1, chosen, abs_mask, nullptr);
    pos[0] = chosen[0];
    return 1;
  }
  if (k == 2) {
    if (t.first == t.second) {
      takeLevel<false>(copy, r, t.first, 2, chosen, abs_mask, nullptr);
    } else {
      takeLevel<false>(copy, r, t.first, 1, chosen, abs_mask, nullptr);
      takeLevel<false>(copy, r, t.second, 1, chosen + 1, abs_mask, nullptr);
    }
    pos[0] = chosen[0] < chosen[1] ? chosen[0] : chosen[1];
    pos[1] = chosen[0] < chosen[1] ? chosen[1] : chosen[0];
    return 2;
  }
  int32_t level = t.first;
  int used = 0;
  while (used + 1 < k) {  // more than one spike to go: the pass also finds the next level
    int32_t below = 0;
    used += takeLevel<true>(copy, r, level, k - used, chosen + used, abs_mask, &below);
    if (used == k) break;
    level = below;  // used < k < r and every value at a visited level is chosen: values below remain
  }
  if (used < k) takeLevel<false>(copy, r, level, 1, chosen + used, abs_mask, nullptr);
  for (int a = 0; a < k; ++a) {  // ascending positions (at most kMaxSpikes entries)
    const uint16_t v = chosen[a];
    int b = a;
    for (; b > 0 && pos[b - 1] > v; --b) pos[b] = pos[b - 1];
    pos[b] = v;
  }
  return k;
}

}  // namespace flashring::quant::detail
