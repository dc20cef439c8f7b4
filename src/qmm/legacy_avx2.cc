// AVX2 (+FMA, F16C) kernels of the 32-value weight types and the Q8 activation quantizer. Built with
// -mavx2 -mfma -mf16c for this file only and entered only when the CPU has them (legacy.cc's tables).
//
// Dot products, per block of 32: the weight codes are unpacked to 32 bytes in value order (nibbles with
// and/shift, Q5's fifth bits spread from qh by a byte shuffle and compare), and multiplied with the 32
// activation codes by vpmaddubsw (unsigned x signed, pairs summed to int16) + vpmaddwd (to 8 int32 lanes),
// or, with AVX-VNNI, by one vpdpbusd. Q4_0 / Q5_0 multiply their unsigned codes and subtract offset * (sum
// of the activation codes) per lane; Q8_0 uses the sign trick |w| x (a * sign(w)). Every int16 pair sum
// stays below 2^15, so the integer part is exact. The 8 lanes are converted to fp32 and accumulated with
// the block's d_w * d_a by one FMA; two blocks per iteration into two accumulators, their fp16 scales
// converted together. Q4_1 / Q5_1 add m_w * s_a per block.
// Dequantization and the quantizer do exactly the scalar reference's IEEE operations (exact conversions,
// one multiply, for Q4_1 / Q5_1 one add; cvtps2dq rounds half to even as nearbyint does), so they are
// bit-identical to it.
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "engine/dequant_internal.h"  // halfToFloat, bf16ToFloat, loadU16 (internal linkage)
#include "qmm/qmm_internal.h"

namespace flashring::qmm::detail {
namespace {

using gguf::detail::bf16ToFloat;
using gguf::detail::halfToFloat;
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

inline __m128i load128(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline uint32_t load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// ---- code unpacking -----------------------------------------------------------------------------------------

// The 32 4-bit codes of qs[0..15] as bytes 0..31 in value order (low nibbles, then high nibbles).
inline __m256i q4Bytes(const uint8_t* qs) {
  const __m128i raw = load128(qs);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
}

// 0xFF in byte j where bit j of the little-endian 32-bit qh is set, else 0.
inline __m256i q5HighMask(const uint8_t* qh) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)),
                                             _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                                              2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}

// Offset subtracted from the unsigned codes (0: none; Q8_0's codes are signed).
constexpr int codeOffset(TT t) { return t == TT::Q4_0 ? 8 : t == TT::Q5_0 ? 16 : 0; }

// The block's 32 weight codes as bytes in value order: the signed codes of Q8_0, the unsigned codes of the
// others (Q4: 0..15, Q5: 0..31, offset not applied).
template <TT T>
inline __m256i codes(const uint8_t* blk) {
  if constexpr (T == TT::Q8_0) {
    return load256(blk + 2);
  } else if constexpr (T == TT::Q4_0) {
    return q4Bytes(blk + 2);
  } else if constexpr (T == TT::Q4_1) {
    return q4Bytes(blk + 4);
  } else if constexpr (T == TT::Q5_0) {
    return _mm256_or_si256(q4Bytes(blk + 6), _mm256_and_si256(q5HighMask(blk + 2), _mm256_set1_epi8(16)));
  } else {
    static_assert(T == TT::Q5_1);
    return _mm256_or_si256(q4Bytes(blk + 8), _mm256_and_si256(q5HighMask(blk + 4), _mm256_set1_epi8(16)));
  }
}

// ---- integer dot products -----------------------------------------------------------------------------------

// Per int32 lane: the sum of 4 adjacent products u_i * s_i (u unsigned, s signed bytes); without VNNI the
// pair sums must fit int16 (true for every caller: u <= 128 and |s| <= 127).
template <bool kVnni>
inline __m256i dotU8S8(__m256i u, __m256i s) {
  if constexpr (kVnni) {
    // AVX-VNNI vpdpbusd (VEX) into a register zeroed by the xor idiom (no execution port). Inline assembly:
    // this file is built without -mavxvnni, and the intrinsic would need the target attribute on every
    // function it is inlined into.
    __m256i acc;
    asm("vpxor %x0, %x0, %x0\n\t%{vex%} vpdpbusd %2, %1, %0" : "=&x"(acc) : "x"(u), "x"(s));
    return acc;
  } else {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
  }
}

// 8 int32 lanes summing to the block's exact integer dot product: weight codes w (as codes<T> gives them)
// with activation codes a.
template <TT T, bool kVnni>
inline __m256i blockDot(__m256i w, __m256i a) {
  if constexpr (T == TT::Q8_0) {
    // |w| x (a * sign(w)): |-128| = 128 is exact as an unsigned byte; a is never -128 (codes in [-127, 127]).
    return dotU8S8<kVnni>(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
  } else if constexpr (codeOffset(T) != 0) {
    // sum (w - off) a = sum w a - sum off a, exactly: per pair |.| <= 2 * 31 * 127 before the subtraction.
    const __m256i off = _mm256_set1_epi8(codeOffset(T));
    if constexpr (kVnni) {
      return _mm256_sub_epi32(dotU8S8<true>(w, a), dotU8S8<true>(off, a));
    } else {
      return _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(w, a), _mm256_maddubs_epi16(off, a)),
                               _mm256_set1_epi16(1));
    }
  } else {
    return dotU8S8<kVnni>(w, a);
  }
}

// Software prefetch of the weight bytes kPrefetchAhead past the blocks being read: see legacy_avx512.cc.
constexpr size_t kPrefetchAhead = 3072;
template <size_t kBytes>
__attribute__((always_inline)) inline void prefetchWeights(const uint8_t* w) {
  for (size_t o = 0; o < kBytes; o += 64)
    _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchAhead + o), _MM_HINT_T0);
}

// The activation side of a pair of blocks: the codes of each, and the scales [d_a0, s_a0, d_a1, s_a1] (Q4_1 /
// Q5_1) or [d_a0, d_a1, 0, 0].
struct ActPair {
  __m256i q0, q1;
  __m128 ds;
};
template <TT T>
inline ActPair actPair(const BlockQ8& a0, const BlockQ8& a1) {
  ActPair p;
  p.q0 = load256(a0.qs);
  p.q1 = load256(a1.qs);
  if constexpr (isAffine(T)) {
    p.ds = _mm_castsi128_ps(_mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(&a0.d)),
                                               _mm_loadl_epi64(reinterpret_cast<const __m128i*>(&a1.d))));
  } else {
    p.ds = _mm_unpacklo_ps(_mm_load_ss(&a0.d), _mm_load_ss(&a1.d));
  }
  return p;
}

// The weight side of a pair of blocks: the codes of each, and their fp16 scales converted together,
// [d0, m0, d1, m1] (Q4_1 / Q5_1) or [d0, d1, 0, 0].
struct WeightPair {
  __m256i q0, q1;
  __m128 dm;
};
template <TT T>
inline WeightPair weightPair(const uint8_t* b0, const uint8_t* b1) {
  WeightPair p;
  p.q0 = codes<T>(b0);
  p.q1 = codes<T>(b1);
  if constexpr (isAffine(T)) {
    const uint64_t dm = static_cast<uint64_t>(load32(b0)) | static_cast<uint64_t>(load32(b1)) << 32;
    p.dm = _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(dm)));
  } else {
    const uint32_t dd = static_cast<uint32_t>(loadU16(b0)) | static_cast<uint32_t>(loadU16(b1)) << 16;
    p.dm = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(dd)));
  }
  return p;
}

// One pair of blocks of one (weight row, activation vector): acc0 += d_w0 d_a0 * the integer lanes of block 0,
// acc1 the same for block 1; for Q4_1 / Q5_1 macc += [., m_w0 s_a0, ., m_w1 s_a1] (lanes 1 and 3 summed at
// the end).
template <TT T, bool kVnni>
inline void pairStep(const WeightPair& w, const ActPair& a, __m256* acc0, __m256* acc1, __m128* macc) {
  const __m128 p = _mm_mul_ps(w.dm, a.ds);
  const __m256 s1 = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(p), _mm256_set1_epi32(isAffine(T) ? 2 : 1));
  const __m256 s0 = _mm256_broadcastss_ps(p);
  *acc0 = _mm256_fmadd_ps(s0, _mm256_cvtepi32_ps(blockDot<T, kVnni>(w.q0, a.q0)), *acc0);
  *acc1 = _mm256_fmadd_ps(s1, _mm256_cvtepi32_ps(blockDot<T, kVnni>(w.q1, a.q1)), *acc1);
  if constexpr (isAffine(T)) *macc = _mm_add_ps(*macc, p);
}

// A tile of dot products: kRows weight rows (row r at w + r * row_bytes) by kActs activation vectors (vector
// i at act + i * act_bytes), out[i * ldo + r] = the dot product of row r with vector i. Every output is
// computed by exactly the operations of the single dot product (dotBlocks is the 1 x 1 tile), in the same
// order: the tiles share the activation loads (over rows) and the weight decoding (over vectors) only.
// Per output: pairs of blocks, block b into acc0 and b+1 into acc1 (two FMA chains), a last odd block into
// acc0, then [m_w s_a terms] for Q4_1 / Q5_1.
template <TT T, bool kVnni, int kRows, int kActs>
__attribute__((always_inline)) inline void dotTile(size_t n, const uint8_t* w, size_t row_bytes, const void* act,
                                                   size_t act_bytes, float* out, size_t ldo) {
  constexpr size_t kBytes = bytesOfBlock(T);
  const size_t nb = n / kQK;
  const BlockQ8* a[kActs];
  for (int i = 0; i < kActs; ++i)
    a[i] = reinterpret_cast<const BlockQ8*>(static_cast<const uint8_t*>(act) + static_cast<size_t>(i) * act_bytes);
  __m256 acc0[kRows][kActs], acc1[kRows][kActs];
  __m128 macc[kRows][kActs];  // Q4_1, Q5_1: lanes 1 and 3 sum m_w * s_a
  for (int r = 0; r < kRows; ++r)
    for (int i = 0; i < kActs; ++i) {
      acc0[r][i] = acc1[r][i] = _mm256_setzero_ps();
      macc[r][i] = _mm_setzero_ps();
    }
  size_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    ActPair ap[kActs];
    for (int i = 0; i < kActs; ++i) ap[i] = actPair<T>(a[i][b], a[i][b + 1]);
    for (int r = 0; r < kRows; ++r) {
      const uint8_t* p = w + static_cast<size_t>(r) * row_bytes + b * kBytes;
      prefetchWeights<2 * kBytes>(p);
      const WeightPair wp = weightPair<T>(p, p + kBytes);
      for (int i = 0; i < kActs; ++i) pairStep<T, kVnni>(wp, ap[i], &acc0[r][i], &acc1[r][i], &macc[r][i]);
    }
  }
  float tail[kRows][kActs] = {};  // Q4_1, Q5_1: m_w s_a of the last odd block
  if (b < nb) {
    for (int r = 0; r < kRows; ++r) {
      const uint8_t* p = w + static_cast<size_t>(r) * row_bytes + b * kBytes;
      const __m256i q = codes<T>(p);
      __m128 wdm;
      if constexpr (isAffine(T)) {
        wdm = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(load32(p))));  // [d, m]
      } else {
        wdm = _mm_cvtph_ps(_mm_cvtsi32_si128(loadU16(p)));
      }
      for (int i = 0; i < kActs; ++i) {
        __m128 s;
        if constexpr (isAffine(T)) {
          s = _mm_mul_ps(wdm, _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(&a[i][b].d))));
          tail[r][i] = _mm_cvtss_f32(_mm_movehdup_ps(s));
        } else {
          s = _mm_mul_ss(wdm, _mm_load_ss(&a[i][b].d));
        }
        acc0[r][i] = _mm256_fmadd_ps(_mm256_broadcastss_ps(s),
                                     _mm256_cvtepi32_ps(blockDot<T, kVnni>(q, load256(a[i][b].qs))), acc0[r][i]);
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int i = 0; i < kActs; ++i) {
      float v = hsum(_mm256_add_ps(acc0[r][i], acc1[r][i]));
      if constexpr (isAffine(T)) {
        if (b < nb) v += tail[r][i];
        const __m128 h = _mm_movehdup_ps(macc[r][i]);
        v += _mm_cvtss_f32(_mm_add_ss(h, _mm_movehl_ps(h, h)));
      }
      out[static_cast<size_t>(i) * ldo + static_cast<size_t>(r)] = v;
    }
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
inline __m256 load8(const uint8_t* w, size_t i) {
  if constexpr (T == TT::F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(w) + i);
  } else if constexpr (T == TT::F16) {
    return _mm256_cvtph_ps(load128(w + 2 * i));
  } else {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load128(w + 2 * i)), 16));
  }
}

template <TT T>
inline float scalarAt(const uint8_t* w, size_t i) {
  if constexpr (T == TT::F32) {
    float f;
    std::memcpy(&f, w + 4 * i, 4);
    return f;
  } else if constexpr (T == TT::F16) {
    return halfToFloat(loadU16(w + 2 * i));
  } else {
    return bf16ToFloat(loadU16(w + 2 * i));
  }
}

template <TT T>
float dotFloat(size_t n, const uint8_t* w, const void* act) {
  const auto* x = static_cast<const float*>(act);
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (size_t k = 0; k < 4; ++k)
      acc[k] = _mm256_fmadd_ps(load8<T>(w, i + 8 * k), _mm256_loadu_ps(x + i + 8 * k), acc[k]);
  }
  for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(load8<T>(w, i), _mm256_loadu_ps(x + i), acc[0]);
  float r = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; i < n; ++i) r += scalarAt<T>(w, i) * x[i];
  return r;
}

// ---- dequantization ----------------------------------------------------------------------------------------

template <TT T>
void dequantFloat(const uint8_t* src, float* dst, size_t n) {
  if constexpr (T == TT::F32) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8<T>(src, i));
    for (; i < n; ++i) dst[i] = scalarAt<T>(src, i);
  }
}

// Bytes 8k .. 8k+7 of v as int32 (signed or unsigned codes).
template <bool kSigned>
inline __m256i widen8(__m128i v) {
  return kSigned ? _mm256_cvtepi8_epi32(v) : _mm256_cvtepu8_epi32(v);
}

template <TT T>
void dequantBlocks(const uint8_t* src, float* dst, size_t n) {
  constexpr size_t kBytes = bytesOfBlock(T);
  constexpr bool kSigned = !isAffine(T);
  for (size_t b = 0; b < n / kQK; ++b) {
    const uint8_t* blk = src + b * kBytes;
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(loadU16(blk)));
    __m256i q = codes<T>(blk);
    if constexpr (codeOffset(T) != 0) q = _mm256_sub_epi8(q, _mm256_set1_epi8(codeOffset(T)));
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    const __m256i parts[4] = {widen8<kSigned>(lo), widen8<kSigned>(_mm_srli_si128(lo, 8)), widen8<kSigned>(hi),
                              widen8<kSigned>(_mm_srli_si128(hi, 8))};
    float* out = dst + b * kQK;
    if constexpr (isAffine(T)) {
      const __m256 m = _mm256_set1_ps(_cvtsh_ss(loadU16(blk + 2)));
      for (size_t p = 0; p < 4; ++p)
        _mm256_storeu_ps(out + 8 * p, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(parts[p]), d), m));
    } else {
      for (size_t p = 0; p < 4; ++p) _mm256_storeu_ps(out + 8 * p, _mm256_mul_ps(_mm256_cvtepi32_ps(parts[p]), d));
    }
  }
}

// ---- the Q8 activation quantizer ---------------------------------------------------------------------------

void quantizeQ8(const float* x, size_t n, void* out) {
  auto* blocks = static_cast<BlockQ8*>(out);
  const __m256 sign = _mm256_set1_ps(-0.f);
  const __m256 fmax = _mm256_set1_ps(std::numeric_limits<float>::max());
  for (size_t b = 0; b < n / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    BlockQ8& o = blocks[b];
    const __m256 v[4] = {_mm256_loadu_ps(xb), _mm256_loadu_ps(xb + 8), _mm256_loadu_ps(xb + 16),
                         _mm256_loadu_ps(xb + 24)};
    __m256 amax8 = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    for (const __m256& vk : v) {
      const __m256 ak = _mm256_andnot_ps(sign, vk);
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(ak, fmax, _CMP_NLE_UQ));  // Inf or NaN
      amax8 = _mm256_max_ps(amax8, ak);
    }
    if (_mm256_movemask_ps(bad) != 0) {
      o.d = o.s = std::numeric_limits<float>::quiet_NaN();
      std::memset(o.qs, 0, sizeof(o.qs));
      continue;
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax8), _mm256_extractf128_ps(amax8, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    float d = amax / 127.f;
    float id = d != 0.f ? 1.f / d : 0.f;
    if (std::isinf(id)) d = id = 0.f;  // as the scalar reference: the block quantizes as all-zero
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (size_t k = 0; k < 4; ++k) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], vid));  // |q| <= 127
    // packs interleave the 128-bit lanes: bytes come out as dwords q0[0:4] q1[0:4] q2[0:4] q3[0:4] | q0[4:8] ...
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o.qs),
                        _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    const __m256i s8 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
    s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1));
    o.d = d;
    o.s = d * static_cast<float>(_mm_cvtsi128_si32(s4));
  }
}

template <TT T, bool kVnni>
constexpr TypeKernels kBlockKernels{dequantBlocks<T>,
                                    dotBlocks<T, kVnni>,
                                    {{nullptr, dotTile<T, kVnni, 1, 2>, dotTile<T, kVnni, 1, 4>},
                                     {dotTile<T, kVnni, 2, 1>, dotTile<T, kVnni, 2, 2>, nullptr},
                                     {nullptr, nullptr, nullptr}}};
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

const TypeKernels* legacyKernelsAvx2(TensorType t, bool vnni) { return vnni ? table<true>(t) : table<false>(t); }
QuantizeFn q8QuantizerAvx2() { return quantizeQ8; }

}  // namespace flashring::qmm::detail
