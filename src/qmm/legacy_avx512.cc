// AVX-512 (F, BW, VL, DQ; + FMA, F16C) kernels of the 32-value weight types and the Q8 activation quantizer.
// Built with the AVX-512 flags for this file only and entered only when the CPU has them (legacy.cc).
//
// Dot products: two blocks per 64-byte vector (block b in bytes 0..31, block b+1 in 32..63), four blocks
// per iteration into two accumulators. The integer part is exact: with AVX512-VNNI one vpdpbusd (unsigned
// weight codes x signed activation codes, 4 products per int32 lane), without it vpmaddubsw + vpmaddwd.
// AVX-512 has no vpsignb, so the offset types (Q4_0: q - 8, Q5_0: q - 16) multiply the unsigned codes and
// subtract offset * (sum of the activation codes) per lane, and Q8_0 takes |w| and negates the activation
// codes under the sign mask of w. The 16 int32 lanes are converted to fp32 and accumulated by one FMA with
// [d_w d_a of block b (8 lanes), of block b+1 (8 lanes)]; the fp16 scales of both blocks convert together.
// Dequantization and the quantizer do exactly the scalar reference's IEEE operations, so they are
// bit-identical to it.
// GCC 12's AVX-512 headers self-initialise their "undefined" vectors (`__m512i __Y = __Y;`), which
// -Wmaybe-uninitialized reports at every use (GCC PR 105593): silenced for the header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/dequant_internal.h"  // halfToFloat, bf16ToFloat, loadU16 (internal linkage)
#include "qmm/qmm_internal.h"

namespace flashring::qmm::detail {
namespace {

using gguf::detail::loadU16;
using TT = TensorType;

constexpr size_t bytesOfBlock(TT t) {
  switch (t) {
    case TT::Q8_0:
      return sizeof(BlockQ8_0);
    case TT::Q4_0:
      return sizeof(BlockQ4_0);
    case TT::Q4_1:
      return sizeof(BlockQ4_1);
    case TT::Q5_0:
      return sizeof(BlockQ5_0);
    case TT::Q5_1:
      return sizeof(BlockQ5_1);
    default:
      return 0;
  }
}
constexpr bool isAffine(TT t) { return t == TT::Q4_1 || t == TT::Q5_1; }
// Offset subtracted from the unsigned codes (0: none; Q8_0's codes are signed).
constexpr int codeOffset(TT t) { return t == TT::Q4_0 ? 8 : t == TT::Q5_0 ? 16 : 0; }
// Where the 16 nibble bytes and the 4 fifth-bit bytes start in a block.
constexpr size_t qsAt(TT t) { return t == TT::Q4_0 ? 2 : t == TT::Q4_1 ? 4 : t == TT::Q5_0 ? 6 : 8; }
constexpr size_t qhAt(TT t) { return t == TT::Q5_0 ? 2 : 4; }
constexpr bool isQ5(TT t) { return t == TT::Q5_0 || t == TT::Q5_1; }

inline __m128i load128(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline uint32_t load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---- code unpacking -----------------------------------------------------------------------------------------

// The unsigned codes of two blocks (Q4: 0..15, Q5: 0..31; Q8_0: the signed codes) as 64 bytes in value order.
template <TT T>
inline __m512i codes2(const uint8_t* b0, const uint8_t* b1) {
  if constexpr (T == TT::Q8_0) {
    return _mm512_mask_broadcast_i64x4(_mm512_castsi256_si512(load256(b0 + 2)), 0xF0, load256(b1 + 2));
  } else {
    // [qs0, qs0, qs1, qs1] per 128-bit lane, the second copy of each shifted down a nibble. (Broadcast
    // loads, the second one masked, rather than inserts: a blend runs on port 0 or 5, a shuffle on 5 only.)
    __m512i z =
        _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(load128(b0 + qsAt(T))), 0xFF00, load128(b1 + qsAt(T)));
    z = _mm512_and_si512(_mm512_mask_srli_epi16(z, 0xFF00FF00u, z, 4), _mm512_set1_epi8(0x0F));
    if constexpr (isQ5(T)) {
      const __mmask64 h = static_cast<uint64_t>(load32(b0 + qhAt(T))) | static_cast<uint64_t>(load32(b1 + qhAt(T)))
                                                                            << 32;
      z = _mm512_mask_add_epi8(z, h, z, _mm512_set1_epi8(16));
    }
    return z;
  }
}

// The same for one block, 32 bytes.
template <TT T>
inline __m256i codes1(const uint8_t* b) {
  if constexpr (T == TT::Q8_0) {
    return load256(b + 2);
  } else {
    const __m128i raw = load128(b + qsAt(T));
    __m256i z = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
    if constexpr (isQ5(T)) z = _mm256_mask_add_epi8(z, load32(b + qhAt(T)), z, _mm256_set1_epi8(16));
    return z;
  }
}

// ---- integer dot products -----------------------------------------------------------------------------------

// Per int32 lane: the sum of 4 adjacent products u_i * s_i (u unsigned, s signed bytes); without VNNI the
// pair sums must fit int16 (true for every caller: |u| <= 128, |s| <= 127, or u <= 31).
template <bool kVnni>
inline __m512i dotU8S8(__m512i u, __m512i s) {
  if constexpr (kVnni) {
    // AVX512-VNNI vpdpbusd into a register zeroed by the xor idiom (no execution port; a copy of a zero
    // register would take one). Inline assembly: this file is built without -mavx512vnni, and the
    // intrinsic would need the target attribute on every function it is inlined into.
    __m512i acc;
    asm("vpxor %x0, %x0, %x0\n\tvpdpbusd %2, %1, %0" : "=&x"(acc) : "v"(u), "v"(s));
    return acc;
  } else {
    return _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1));
  }
}

// Software prefetch of the weight bytes kPrefetchAhead past the blocks being read (as kquants_avx512.cc): a
// GEMV streams the matrix once, row after row, and the hardware prefetcher stops at 4 KiB pages. Without it
// a Q4_1 GEMV on 184320 x 576 (66 MB: the default model's Q4_1 weights, out of cache) read ~6 GB/s of
// weights, with it ~10.5 (bench_qmatmul); 3 KiB measured as good as 4.5, 6 and 8 KiB, better than 1.5.
// One prefetch per 64 bytes of a pair of blocks covers every line (consecutive pairs' windows leave gaps
// < 64 bytes); prefetches never fault, past the end of the matrix included.
constexpr size_t kPrefetchAhead = 3072;
template <size_t kBytes>
__attribute__((always_inline)) inline void prefetchWeights(const uint8_t* w) {
  for (size_t o = 0; o < kBytes; o += 64)
    _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchAhead + o), _MM_HINT_T0);
}

// 16 int32 lanes, 8 per block, summing to the two blocks' exact integer dot products: weight codes w (as
// codes2 gives them) with activation codes a.
template <TT T, bool kVnni>
inline __m512i pairDot(__m512i w, __m512i a) {
  if constexpr (T == TT::Q8_0) {
    // |w| x (a negated where w < 0); |-128| = 128 is exact as an unsigned byte, a is never -128.
    const __m512i sa = _mm512_mask_sub_epi8(a, _mm512_movepi8_mask(w), _mm512_setzero_si512(), a);
    return dotU8S8<kVnni>(_mm512_abs_epi8(w), sa);
  } else if constexpr (codeOffset(T) != 0) {
    const __m512i off = _mm512_set1_epi8(codeOffset(T));
    if constexpr (kVnni) {
      return _mm512_sub_epi32(dotU8S8<true>(w, a), dotU8S8<true>(off, a));
    } else {
      // sum (w - off) a over each pair fits int16 (|.| <= 2 * 16 * 127); then pairs of pairs to int32.
      return _mm512_madd_epi16(_mm512_sub_epi16(_mm512_maddubs_epi16(w, a), _mm512_maddubs_epi16(off, a)),
                               _mm512_set1_epi16(1));
    }
  } else {
    return dotU8S8<kVnni>(w, a);
  }
}

// The activation side of a pair of blocks: the 64 codes, and the scales [d_a0, s_a0, d_a1, s_a1] (Q4_1 /
// Q5_1) or [d_a0, d_a1, 0, 0].
struct ActPair {
  __m512i q;
  __m128 ds;
};
template <TT T>
inline ActPair actPair(const BlockQ8& a0, const BlockQ8& a1) {
  ActPair p;
  p.q = _mm512_mask_broadcast_i64x4(_mm512_castsi256_si512(load256(a0.qs)), 0xF0, load256(a1.qs));
  if constexpr (isAffine(T)) {
    p.ds = _mm_castsi128_ps(_mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(&a0.d)),
                                               _mm_loadl_epi64(reinterpret_cast<const __m128i*>(&a1.d))));
  } else {
    p.ds = _mm_unpacklo_ps(_mm_load_ss(&a0.d), _mm_load_ss(&a1.d));
  }
  return p;
}

// The weight side of a pair of blocks: the codes (codes2), and the fp16 scales of both converted together,
// [d0, m0, d1, m1] (Q4_1 / Q5_1) or [d0, d1, 0, 0].
struct WeightPair {
  __m512i q;
  __m128 dm;
};
template <TT T>
inline WeightPair weightPair(const uint8_t* b0, const uint8_t* b1) {
  WeightPair p;
  p.q = codes2<T>(b0, b1);
  if constexpr (isAffine(T)) {
    const uint64_t dm = static_cast<uint64_t>(load32(b0)) | static_cast<uint64_t>(load32(b1)) << 32;
    p.dm = _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(dm)));
  } else {
    const uint32_t dd = static_cast<uint32_t>(loadU16(b0)) | static_cast<uint32_t>(loadU16(b1)) << 16;
    p.dm = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(dd)));
  }
  return p;
}

// One pair of blocks of one (weight row, activation vector) into its accumulators: acc += [d_w0 d_a0 (8
// lanes), d_w1 d_a1 (8 lanes)] * the integer lanes; for Q4_1 / Q5_1 macc += [., m_w0 s_a0, ., m_w1 s_a1].
template <TT T, bool kVnni>
inline void pairStep(const WeightPair& w, const ActPair& a, __m512* acc, __m128* macc) {
  const __m128 p = _mm_mul_ps(w.dm, a.ds);
  const __m512i spread = isAffine(T) ? _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2)
                                     : _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512 s = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(p));
  *acc = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(pairDot<T, kVnni>(w.q, a.q)), *acc);
  if constexpr (isAffine(T)) *macc = _mm_add_ps(*macc, p);
}

// The scales of four consecutive blocks at g as fp32: [d0, m0, d1, m1, d2, m2, d3, m3] (Q4_1 / Q5_1) or
// [d0, d1, d2, d3, 0, 0, 0, 0]: their fp16 words picked out of one 64-byte load (inside the group: 72 or 80
// bytes) by one word permute and converted together (a load, a vpermw and a vcvtph2ps for four blocks, where
// a pair of blocks takes two scalar loads, a shift, an or, a move and a vcvtph2ps).
// Used where the four blocks' scales lie in their first 64 bytes (Q4_0, Q4_1) and by tiles of one activation
// vector: for the types whose words would need a second (masked) load, Q8_0, Q5_0 and Q5_1, it measured
// slower than pair by pair (Q8_0 4 x 1 tile 0.92x), Q4_1's 4 x 1 tile 1.1-1.15x faster; tiles of several
// vectors run out of registers holding a group's activation codes (2 x 4: 0.95x).
template <TT T>
constexpr size_t kQuadSpan = 3 * bytesOfBlock(T) + (isAffine(T) ? 4 : 2);
template <TT T>
constexpr bool kQuadScales = kQuadSpan<T> <= 64;
template <TT T>
inline __m256 quadWeightScales(const uint8_t* g) {
  constexpr int kW = static_cast<int>(bytesOfBlock(T) / 2);  // words a block
  constexpr size_t kSpan = kQuadSpan<T>;
  // Word indices: [d0, m0, d1, m1, d2, m2, d3, m3] (Q4_1 / Q5_1) or [d0, d1, d2, d3] (the rest 0).
  alignas(64) static constexpr std::array<uint16_t, 32> kIdx = [] {
    std::array<uint16_t, 32> idx{};
    for (int k = 0; k < 4; ++k) {
      if constexpr (isAffine(T)) {
        idx[2 * k] = static_cast<uint16_t>(k * kW);
        idx[2 * k + 1] = static_cast<uint16_t>(k * kW + 1);
      } else {
        idx[k] = static_cast<uint16_t>(k * kW);
      }
    }
    return idx;
  }();
  static_assert(kSpan <= 64, "the four blocks' scales lie in their first 64 bytes");
  __m512i v = _mm512_permutexvar_epi16(_mm512_load_si512(kIdx.data()), _mm512_loadu_si512(g));
  if constexpr (!isAffine(T)) v = _mm512_maskz_mov_epi16(0xF, v);
  return _mm256_cvtph_ps(_mm512_castsi512_si128(v));
}

// The activation scales of four consecutive blocks: [d_a0, s_a0, ..., d_a3, s_a3] (Q4_1 / Q5_1) or [d_a0,
// d_a1, d_a2, d_a3, 0, 0, 0, 0].
template <TT T>
inline __m256 quadActScales(const BlockQ8* a) {
  if constexpr (isAffine(T)) {
    const auto ds = [](const BlockQ8& x) { return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(&x.d)); };
    const __m128i lo = _mm_unpacklo_epi64(ds(a[0]), ds(a[1])), hi = _mm_unpacklo_epi64(ds(a[2]), ds(a[3]));
    return _mm256_castsi256_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
  } else {
    const __m128 lo = _mm_unpacklo_ps(_mm_load_ss(&a[0].d), _mm_load_ss(&a[1].d));
    const __m128 hi = _mm_unpacklo_ps(_mm_load_ss(&a[2].d), _mm_load_ss(&a[3].d));
    return _mm256_zextps128_ps256(_mm_movelh_ps(lo, hi));
  }
}

// The 64 activation codes of two blocks.
inline __m512i actCodes2(const BlockQ8& a0, const BlockQ8& a1) {
  return _mm512_mask_broadcast_i64x4(_mm512_castsi256_si512(load256(a0.qs)), 0xF0, load256(a1.qs));
}

// The sum of the 16 lanes of v: (hi 256 + lo 256), then (hi 128 + lo 128), then lanes (0 + 2) + (1 + 3).
// Spelt out (the order of GCC's _mm512_reduce_add_ps; another compiler's may differ) because sum16x4 below
// must give the same bits for each of its four vectors.
inline float sum16(__m512 v) {
  const __m256 t3 = _mm256_add_ps(_mm512_extractf32x8_ps(v, 1), _mm512_castps512_ps256(v));
  const __m128 t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
  const __m128 t8 = _mm_add_ps(t6, _mm_permute_ps(t6, 0x4E));
  return _mm_cvtss_f32(_mm_add_ss(t8, _mm_movehdup_ps(t8)));
}

// The m_w s_a terms of an output: lanes 1 and 3 of (lo 128 + hi 128) of m, summed.
inline float offsetTerms(__m256 m) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  const __m128 h = _mm_movehdup_ps(s);
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehl_ps(h, h)));
}

// sum16 of four vectors (and, with kOffset, plus offsetTerms of four more) at once, into out[0..3]: the same
// additions of the same lanes in the same order, a quarter of the shuffles.
template <bool kOffset>
inline void sum16x4(const __m512* v, const __m256* m, float* out) {
  // [hi 256 + lo 256 of v0 | of v1], [... of v2 | of v3]
  const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], 0xEE), _mm512_shuffle_f32x4(v[0], v[1], 0x44));
  const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(v[2], v[3], 0xEE), _mm512_shuffle_f32x4(v[2], v[3], 0x44));
  // hi 128 + lo 128 of each: one 128-bit lane per vector
  const __m512 t6 = _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0xDD), _mm512_shuffle_f32x4(s01, s23, 0x88));
  const __m512 t8 = _mm512_add_ps(t6, _mm512_permute_ps(t6, 0x4E));
  __m512 r = _mm512_add_ps(t8, _mm512_permute_ps(t8, 0x01));  // lane 0 of each 128: t8[0] + t8[1]
  if constexpr (kOffset) {
    const __m512 m01 = _mm512_insertf32x8(_mm512_castps256_ps512(m[0]), m[1], 1);
    const __m512 m23 = _mm512_insertf32x8(_mm512_castps256_ps512(m[2]), m[3], 1);
    const __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(m01, m23, 0x88), _mm512_shuffle_f32x4(m01, m23, 0xDD));
    const __m512 h = _mm512_movehdup_ps(s);
    r = _mm512_add_ps(r, _mm512_add_ps(h, _mm512_permute_ps(h, 0x0E)));  // + (h0 + h2)
  }
  _mm_storeu_ps(out, _mm512_castps512_ps128(
                         _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), r)));
}

// dotTile (below) pair by pair of blocks. Per output: blocks in groups of four, pairs (b, b+1) into acc0 and
// (b+2, b+3) into acc1, a last pair into acc0, a last odd block paired with an all-zero one (scale 0, codes 0:
// adds exactly 0) into acc1; the m_w s_a terms (Q4_1 / Q5_1) of the acc0 pairs into macc0, of the others into
// macc1.
template <TT T, bool kVnni, int kRows, int kActs>
__attribute__((always_inline)) inline void dotTilePairs(size_t n, const uint8_t* w, size_t row_bytes, const void* act,
                                                        size_t act_bytes, float* out, size_t ldo) {
  constexpr size_t kBytes = bytesOfBlock(T);
  const size_t nb = n / kQK;
  const BlockQ8* a[kActs];
  for (int i = 0; i < kActs; ++i)
    a[i] = reinterpret_cast<const BlockQ8*>(static_cast<const uint8_t*>(act) + static_cast<size_t>(i) * act_bytes);
  __m512 acc[kRows][kActs][2];
  __m128 macc[kRows][kActs][2];
  for (int r = 0; r < kRows; ++r)
    for (int i = 0; i < kActs; ++i)
      for (int h = 0; h < 2; ++h) {
        acc[r][i][h] = _mm512_setzero_ps();
        macc[r][i][h] = _mm_setzero_ps();
      }
  // Pair (b, b+1) of every output into accumulator h.
  const auto step = [&](size_t b, int h) __attribute__((always_inline)) {
    ActPair ap[kActs];
    for (int i = 0; i < kActs; ++i) ap[i] = actPair<T>(a[i][b], a[i][b + 1]);
    for (int r = 0; r < kRows; ++r) {
      const uint8_t* p = w + static_cast<size_t>(r) * row_bytes + b * kBytes;
      prefetchWeights<2 * kBytes>(p);
      const WeightPair wp = weightPair<T>(p, p + kBytes);
      for (int i = 0; i < kActs; ++i) pairStep<T, kVnni>(wp, ap[i], &acc[r][i][h], &macc[r][i][h]);
    }
  };
  size_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    step(b, 0);
    step(b + 2, 1);
  }
  if (b + 2 <= nb) {
    step(b, 0);
    b += 2;
  }
  if (b < nb) {
    const uint8_t zero_w[kBytes] = {};
    const BlockQ8 zero_a{};
    ActPair ap[kActs];
    for (int i = 0; i < kActs; ++i) ap[i] = actPair<T>(a[i][b], zero_a);
    for (int r = 0; r < kRows; ++r) {
      const WeightPair wp = weightPair<T>(w + static_cast<size_t>(r) * row_bytes + b * kBytes, zero_w);
      for (int i = 0; i < kActs; ++i) pairStep<T, kVnni>(wp, ap[i], &acc[r][i][1], &macc[r][i][1]);
    }
  }
  const auto offsets = [&](int r, int i) __attribute__((always_inline)) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(macc[r][i][0]), macc[r][i][1], 1);
  };
  if constexpr (kRows == 4 && kActs == 1) {
    const __m512 v[4] = {_mm512_add_ps(acc[0][0][0], acc[0][0][1]), _mm512_add_ps(acc[1][0][0], acc[1][0][1]),
                         _mm512_add_ps(acc[2][0][0], acc[2][0][1]), _mm512_add_ps(acc[3][0][0], acc[3][0][1])};
    const __m256 m[4] = {offsets(0, 0), offsets(1, 0), offsets(2, 0), offsets(3, 0)};
    sum16x4<isAffine(T)>(v, m, out);
  } else {
    for (int r = 0; r < kRows; ++r) {
      for (int i = 0; i < kActs; ++i) {
        float v = sum16(_mm512_add_ps(acc[r][i][0], acc[r][i][1]));
        if constexpr (isAffine(T)) v += offsetTerms(offsets(r, i));
        out[static_cast<size_t>(i) * ldo + static_cast<size_t>(r)] = v;
      }
    }
  }
}

// dotTile group by group of four blocks (Q4_0 / Q4_1, one activation vector): the same products into the same
// accumulators as dotTilePairs, the scales of a group's four blocks taken at once (quadWeightScales), and
// macc0 / macc1 kept as the halves of one vector.
template <TT T, bool kVnni, int kRows, int kActs>
__attribute__((always_inline)) inline void dotTileQuad(size_t n, const uint8_t* w, size_t row_bytes, const void* act,
                                                       size_t act_bytes, float* out, size_t ldo) {
  constexpr size_t kBytes = bytesOfBlock(T);
  const size_t nb = n / kQK;
  const BlockQ8* a[kActs];
  for (int i = 0; i < kActs; ++i)
    a[i] = reinterpret_cast<const BlockQ8*>(static_cast<const uint8_t*>(act) + static_cast<size_t>(i) * act_bytes);
  // Per output: acc[0] takes pairs (b, b+1), acc[1] pairs (b+2, b+3); macc lanes 0-3 the m_w s_a terms of the
  // former, lanes 4-7 of the latter (Q4_1 / Q5_1).
  __m512 acc[kRows][kActs][2];
  __m256 macc[kRows][kActs];
  for (int r = 0; r < kRows; ++r)
    for (int i = 0; i < kActs; ++i) {
      acc[r][i][0] = acc[r][i][1] = _mm512_setzero_ps();
      macc[r][i] = _mm256_setzero_ps();
    }
  // Lanes of [d_w d_a] products spread over each pair's 16 lanes: blocks 0, 1 and blocks 2, 3 of a group.
  const __m512i spread0 = isAffine(T) ? _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2)
                                      : _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i spread1 = isAffine(T) ? _mm512_setr_epi32(4, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 6, 6)
                                      : _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  size_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    __m256 as[kActs];
    __m512i aq0[kActs], aq1[kActs];
    for (int i = 0; i < kActs; ++i) {
      as[i] = quadActScales<T>(a[i] + b);
      aq0[i] = actCodes2(a[i][b], a[i][b + 1]);
      aq1[i] = actCodes2(a[i][b + 2], a[i][b + 3]);
    }
    for (int r = 0; r < kRows; ++r) {
      const uint8_t* g = w + static_cast<size_t>(r) * row_bytes + b * kBytes;
      prefetchWeights<4 * kBytes>(g);
      const __m256 ws = quadWeightScales<T>(g);
      const __m512i q0 = codes2<T>(g, g + kBytes), q1 = codes2<T>(g + 2 * kBytes, g + 3 * kBytes);
      for (int i = 0; i < kActs; ++i) {
        const __m256 p = _mm256_mul_ps(ws, as[i]);
        const __m512 p5 = _mm512_castps256_ps512(p);
        acc[r][i][0] = _mm512_fmadd_ps(_mm512_permutexvar_ps(spread0, p5),
                                       _mm512_cvtepi32_ps(pairDot<T, kVnni>(q0, aq0[i])), acc[r][i][0]);
        acc[r][i][1] = _mm512_fmadd_ps(_mm512_permutexvar_ps(spread1, p5),
                                       _mm512_cvtepi32_ps(pairDot<T, kVnni>(q1, aq1[i])), acc[r][i][1]);
        if constexpr (isAffine(T)) macc[r][i] = _mm256_add_ps(macc[r][i], p);
      }
    }
  }
  // A last pair into acc[0], a last odd block paired with an all-zero one (scale 0, codes 0: adds exactly 0)
  // into acc[1].
  const auto tailPair = [&](const uint8_t* const* w1, const BlockQ8* a1, int h) __attribute__((always_inline)) {
    ActPair ap[kActs];
    for (int i = 0; i < kActs; ++i) ap[i] = actPair<T>(a[i][b], a1 != nullptr ? a1[i] : a[i][b + 1]);
    for (int r = 0; r < kRows; ++r) {
      const uint8_t* p = w + static_cast<size_t>(r) * row_bytes + b * kBytes;
      const WeightPair wp = weightPair<T>(p, w1 != nullptr ? w1[0] : p + kBytes);
      for (int i = 0; i < kActs; ++i) {
        __m128 m = _mm_setzero_ps();
        pairStep<T, kVnni>(wp, ap[i], &acc[r][i][h], &m);
        if constexpr (isAffine(T)) {
          const __m256 m8 = h == 0 ? _mm256_zextps128_ps256(m) : _mm256_insertf128_ps(_mm256_setzero_ps(), m, 1);
          macc[r][i] = _mm256_add_ps(macc[r][i], m8);
        }
      }
    }
  };
  if (b + 2 <= nb) {
    tailPair(nullptr, nullptr, 0);
    b += 2;
  }
  if (b < nb) {
    const uint8_t zero_w[kBytes] = {};
    const uint8_t* zw = zero_w;
    const BlockQ8 zero_a[kActs] = {};
    tailPair(&zw, zero_a, 1);
  }
  if constexpr (kRows == 4 && kActs == 1) {
    const __m512 v[4] = {_mm512_add_ps(acc[0][0][0], acc[0][0][1]), _mm512_add_ps(acc[1][0][0], acc[1][0][1]),
                         _mm512_add_ps(acc[2][0][0], acc[2][0][1]), _mm512_add_ps(acc[3][0][0], acc[3][0][1])};
    const __m256 m[4] = {macc[0][0], macc[1][0], macc[2][0], macc[3][0]};
    sum16x4<isAffine(T)>(v, m, out);
  } else {
    for (int r = 0; r < kRows; ++r) {
      for (int i = 0; i < kActs; ++i) {
        float v = sum16(_mm512_add_ps(acc[r][i][0], acc[r][i][1]));
        if constexpr (isAffine(T)) v += offsetTerms(macc[r][i]);
        out[static_cast<size_t>(i) * ldo + static_cast<size_t>(r)] = v;
      }
    }
  }
}

// A tile of dot products: kRows weight rows (row r at w + r * row_bytes) by kActs activation vectors (vector
// i at act + i * act_bytes), out[i * ldo + r] = the dot product of row r with vector i. Every output is
// computed by exactly the operations of the single dot product (dotBlocks is the 1 x 1 tile): the tiles share
// the activation loads (over rows) and the weight decoding (over vectors) only. The two ways below give the
// same bits too (the same products into the same accumulators in the same order; the group way keeps the
// m_w s_a terms of both halves in one vector), so tiles of one and of several vectors agree.
template <TT T, bool kVnni, int kRows, int kActs>
__attribute__((always_inline)) inline void dotTile(size_t n, const uint8_t* w, size_t row_bytes, const void* act,
                                                   size_t act_bytes, float* out, size_t ldo) {
  if constexpr (kQuadScales<T> && kActs == 1) {
    dotTileQuad<T, kVnni, kRows, kActs>(n, w, row_bytes, act, act_bytes, out, ldo);
  } else {
    dotTilePairs<T, kVnni, kRows, kActs>(n, w, row_bytes, act, act_bytes, out, ldo);
  }
}

template <TT T, bool kVnni>
float dotBlocks(size_t n, const uint8_t* w, const void* act) {
  float r;
  dotTile<T, kVnni, 1, 1>(n, w, 0, act, 0, &r, 0);
  return r;
}

// ---- F32 / F16 / BF16 -------------------------------------------------------------------------------------

template <TT T>
inline __m512 load16(const uint8_t* w, size_t i) {
  if constexpr (T == TT::F32) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(w) + i);
  } else if constexpr (T == TT::F16) {
    return _mm512_cvtph_ps(load256(w + 2 * i));
  } else {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(load256(w + 2 * i)), 16));
  }
}

// The first `count` (< 16) values at i; the rest 0. Masked loads do not touch the bytes they skip.
template <TT T>
inline __m512 load16Masked(const uint8_t* w, size_t i, __mmask16 k) {
  if constexpr (T == TT::F32) {
    return _mm512_maskz_loadu_ps(k, reinterpret_cast<const float*>(w) + i);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(k, w + 2 * i);
    if constexpr (T == TT::F16) {
      return _mm512_cvtph_ps(h);
    } else {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
  }
}

template <TT T>
float dotFloat(size_t n, const uint8_t* w, const void* act) {
  const auto* x = static_cast<const float*>(act);
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    for (size_t k = 0; k < 4; ++k)
      acc[k] = _mm512_fmadd_ps(load16<T>(w, i + 16 * k), _mm512_loadu_ps(x + i + 16 * k), acc[k]);
  }
  for (; i + 16 <= n; i += 16) acc[0] = _mm512_fmadd_ps(load16<T>(w, i), _mm512_loadu_ps(x + i), acc[0]);
  if (i < n) {
    const auto k = static_cast<__mmask16>((1u << (n - i)) - 1);
    acc[1] = _mm512_fmadd_ps(load16Masked<T>(w, i, k), _mm512_maskz_loadu_ps(k, x + i), acc[1]);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

// ---- dequantization ----------------------------------------------------------------------------------------

template <TT T>
void dequantFloat(const uint8_t* src, float* dst, size_t n) {
  if constexpr (T == TT::F32) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load16<T>(src, i));
    if (i < n) {
      const auto k = static_cast<__mmask16>((1u << (n - i)) - 1);
      _mm512_mask_storeu_ps(dst + i, k, load16Masked<T>(src, i, k));
    }
  }
}

template <TT T>
void dequantBlocks(const uint8_t* src, float* dst, size_t n) {
  constexpr size_t kBytes = bytesOfBlock(T);
  for (size_t b = 0; b < n / kQK; ++b) {
    const uint8_t* blk = src + b * kBytes;
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(loadU16(blk)));
    __m256i q = codes1<T>(blk);
    if constexpr (codeOffset(T) != 0) q = _mm256_sub_epi8(q, _mm256_set1_epi8(codeOffset(T)));
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    __m512i parts[2];
    if constexpr (isAffine(T)) {
      parts[0] = _mm512_cvtepu8_epi32(lo);
      parts[1] = _mm512_cvtepu8_epi32(hi);
    } else {
      parts[0] = _mm512_cvtepi8_epi32(lo);
      parts[1] = _mm512_cvtepi8_epi32(hi);
    }
    float* out = dst + b * kQK;
    if constexpr (isAffine(T)) {
      const __m512 m = _mm512_set1_ps(_cvtsh_ss(loadU16(blk + 2)));
      for (size_t p = 0; p < 2; ++p)
        _mm512_storeu_ps(out + 16 * p, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(parts[p]), d), m));
    } else {
      for (size_t p = 0; p < 2; ++p) _mm512_storeu_ps(out + 16 * p, _mm512_mul_ps(_mm512_cvtepi32_ps(parts[p]), d));
    }
  }
}

// ---- the Q8 activation quantizer ---------------------------------------------------------------------------

void quantizeQ8(const float* x, size_t n, void* out) {
  auto* blocks = static_cast<BlockQ8*>(out);
  const __m512 fmax = _mm512_set1_ps(std::numeric_limits<float>::max());
  for (size_t b = 0; b < n / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    BlockQ8& o = blocks[b];
    const __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
    const __m512 a0 = _mm512_abs_ps(v0), a1 = _mm512_abs_ps(v1);
    // Inf or NaN anywhere: not (|x| <= max float).
    if ((_mm512_cmp_ps_mask(a0, fmax, _CMP_NLE_UQ) | _mm512_cmp_ps_mask(a1, fmax, _CMP_NLE_UQ)) != 0) {
      o.d = o.s = std::numeric_limits<float>::quiet_NaN();
      std::memset(o.qs, 0, sizeof(o.qs));
      continue;
    }
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
    float d = amax / 127.f;
    float id = d != 0.f ? 1.f / d : 0.f;
    if (std::isinf(id)) d = id = 0.f;  // as the scalar reference: the block quantizes as all-zero
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vid));  // |q| <= 127: truncation to bytes is exact
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vid));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o.qs), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o.qs + 16), _mm512_cvtepi32_epi8(q1));
    o.d = d;
    o.s = d * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)));
  }
}

template <TT T, bool kVnni>
constexpr TypeKernels kBlockKernels{dequantBlocks<T>,
                                    dotBlocks<T, kVnni>,
                                    {{nullptr, dotTile<T, kVnni, 1, 2>, dotTile<T, kVnni, 1, 4>},
                                     {dotTile<T, kVnni, 2, 1>, dotTile<T, kVnni, 2, 2>, dotTile<T, kVnni, 2, 4>},
                                     {dotTile<T, kVnni, 4, 1>, dotTile<T, kVnni, 4, 2>, nullptr}}};
template <TT T>
constexpr TypeKernels kFloatKernels{dequantFloat<T>, dotFloat<T>};

template <bool kVnni>
const TypeKernels* table(TT t) {
  switch (t) {
    case TT::F32:
      return &kFloatKernels<TT::F32>;
    case TT::F16:
      return &kFloatKernels<TT::F16>;
    case TT::BF16:
      return &kFloatKernels<TT::BF16>;
    case TT::Q8_0:
      return &kBlockKernels<TT::Q8_0, kVnni>;
    case TT::Q4_0:
      return &kBlockKernels<TT::Q4_0, kVnni>;
    case TT::Q4_1:
      return &kBlockKernels<TT::Q4_1, kVnni>;
    case TT::Q5_0:
      return &kBlockKernels<TT::Q5_0, kVnni>;
    case TT::Q5_1:
      return &kBlockKernels<TT::Q5_1, kVnni>;
    default:
      return nullptr;
  }
}

}  // namespace

const TypeKernels* legacyKernelsAvx512(TensorType t, bool vnni) { return vnni ? table<true>(t) : table<false>(t); }
QuantizeFn q8QuantizerAvx512() { return quantizeQ8; }

}  // namespace flashring::qmm::detail
