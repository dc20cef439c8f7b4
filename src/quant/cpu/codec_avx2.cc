// AVX2 + FMA codecs (compiled with -mavx2 -mfma -mf16c; entered only when CPUID reports them).
//
// Quantize, per full group: pass 1 reads the group once for min, max and a NaN/Inf test (the largest
// |x| bit pattern reaching the all-ones exponent); the shared scalar rules turn that into the metadata;
// pass 2 (the group is still in L1) computes the codes of 32 values at a time and packs them with
// saturating packs (INT8) plus a multiply-add of nibble pairs (INT4). No per-element branch. Groups that
// hold NaN/Inf, constant groups, wide groups and the partial tail group go to the shared scalar encoder, so
// their bytes are those of the reference by construction.
// Dequantize: per fast group, widen codes to int32, convert, one fmadd per 8 values (and one add when
// accumulating). Flagged and constant groups use the shared scalar decoder.
#include <immintrin.h>

#include "quant/cpu/codec_internal.h"

namespace flashring::quant::detail {
namespace {

constexpr size_t kMaxBatch = 8;
// Pass 1 prefetches the input this far ahead (8 KiB). The hardware prefetcher alone does not run far enough
// ahead of a loop this compute-heavy: on the development machine (Zen 3, 16 MiB input from DRAM) this cut
// quantize time by about a quarter. Prefetches past the end of the input are harmless (they never fault).
constexpr uintptr_t kPrefetchBytes = 8192;

// Prefetches the two cache lines at address a (128 bytes: 32 floats). Integer arithmetic: the address may lie
// past the end of the array, where forming a pointer would be undefined.
inline void prefetch128(uintptr_t a) {
  _mm_prefetch(reinterpret_cast<const char*>(a), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(a + 64), _MM_HINT_T0);
}

struct SimdStats {
  float mn, mx;
  bool nonfinite;
};

inline float hmin(__m256 v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// g is a multiple of 32. min/max are only meaningful when nonfinite is false. While reading x[i..i+31] it
// prefetches the 128 bytes at address pf + 4 i (pf: x + kPrefetchBytes for input read from memory; the
// spike path, whose x is a copy in L1, passes the input of its next chunk).
inline SimdStats groupStats(const float* x, size_t g, uintptr_t pf) {
  prefetch128(pf);
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  __m256 mn0 = _mm256_loadu_ps(x), mn1 = _mm256_loadu_ps(x + 8);
  __m256 mn2 = _mm256_loadu_ps(x + 16), mn3 = _mm256_loadu_ps(x + 24);
  __m256 mx0 = mn0, mx1 = mn1, mx2 = mn2, mx3 = mn3;
  __m256i e0 = _mm256_and_si256(_mm256_castps_si256(mn0), abs_mask);
  __m256i e1 = _mm256_and_si256(_mm256_castps_si256(mn1), abs_mask);
  e0 = _mm256_max_epu32(e0, _mm256_and_si256(_mm256_castps_si256(mn2), abs_mask));
  e1 = _mm256_max_epu32(e1, _mm256_and_si256(_mm256_castps_si256(mn3), abs_mask));
  for (size_t i = 32; i < g; i += 32) {
    prefetch128(pf + i * sizeof(float));
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    const __m256 v2 = _mm256_loadu_ps(x + i + 16), v3 = _mm256_loadu_ps(x + i + 24);
    mn0 = _mm256_min_ps(mn0, v0);
    mx0 = _mm256_max_ps(mx0, v0);
    mn1 = _mm256_min_ps(mn1, v1);
    mx1 = _mm256_max_ps(mx1, v1);
    mn2 = _mm256_min_ps(mn2, v2);
    mx2 = _mm256_max_ps(mx2, v2);
    mn3 = _mm256_min_ps(mn3, v3);
    mx3 = _mm256_max_ps(mx3, v3);
    e0 = _mm256_max_epu32(e0, _mm256_and_si256(_mm256_castps_si256(v0), abs_mask));
    e1 = _mm256_max_epu32(e1, _mm256_and_si256(_mm256_castps_si256(v1), abs_mask));
    e0 = _mm256_max_epu32(e0, _mm256_and_si256(_mm256_castps_si256(v2), abs_mask));
    e1 = _mm256_max_epu32(e1, _mm256_and_si256(_mm256_castps_si256(v3), abs_mask));
  }
  const __m256i e = _mm256_max_epu32(e0, e1);
  // |x| bits > 0x7F7FFFFF <=> exponent all ones (Inf or NaN). Both sides are < 2^31: a signed compare works.
  const __m256i bad = _mm256_cmpgt_epi32(e, _mm256_set1_epi32(0x7F7FFFFF));
  SimdStats st;
  st.nonfinite = _mm256_movemask_epi8(bad) != 0;
  st.mn = hmin(_mm256_min_ps(_mm256_min_ps(mn0, mn1), _mm256_min_ps(mn2, mn3)));
  st.mx = hmax(_mm256_max_ps(_mm256_max_ps(mx0, mx1), _mm256_max_ps(mx2, mx3)));
  return st;
}

// Lane-for-lane the scalar fastAsymCode / fastSymCode:
//   asymmetric: q = clamp(rne((x - z) * inv), 0, qmax)        (qmax = L-1: a Fast group has no flag)
//   symmetric:  q = clamp(rne(x * inv) + L/2, 1, L-1)
// cvtps2dq rounds to nearest even (default MXCSR, like nearbyint in the reference). The saturating packs
// clamp to [0, 255], so only the clamps that differ from that remain.
template <int Bits, bool Sym>
struct FastCoder {
  __m256 z, inv;

  explicit FastCoder(const GroupParams& p) : z(_mm256_set1_ps(p.z)), inv(_mm256_set1_ps(p.inv)) {}

  __m256i codes8(const float* x) const {
    if constexpr (Sym) {
      const __m256i r = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), inv));
      return _mm256_add_epi32(r, _mm256_set1_epi32(1 << (Bits - 1)));
    } else {
      return _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x), z), inv));
    }
  }

  // 32 codes, one per byte, in order.
  __m256i codes32(const float* x) const {
    const __m256i a = codes8(x), b = codes8(x + 8), c = codes8(x + 16), d = codes8(x + 24);
    const __m256i ab = _mm256_packus_epi32(a, b);  // a0-3 b0-3 | a4-7 b4-7
    const __m256i cd = _mm256_packus_epi32(c, d);  // c0-3 d0-3 | c4-7 d4-7
    __m256i q = _mm256_packus_epi16(ab, cd);       // a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7
    q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    if constexpr (Sym) q = _mm256_max_epu8(q, _mm256_set1_epi8(1));
    if constexpr (Bits < 8) q = _mm256_min_epu8(q, _mm256_set1_epi8((1 << Bits) - 1));
    return q;
  }
};

// Two codes (each <= 15) per 16-bit word -> one byte: low nibble = even value, high nibble = odd value.
inline __m256i nibblePairs(__m256i q) { return _mm256_maddubs_epi16(q, _mm256_set1_epi16(0x1001)); }

// 32 codes (each <= 15) -> 16 bytes of nibble pairs at dst.
inline void storeNibbles32(uint8_t* dst, __m256i q) {
  const __m256i w = nibblePairs(q);
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi16(w, w), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_castsi256_si128(packed));
}

// Bit `b` of each of 32 byte codes, value i in bit i (the bit-plane layout of INT5/INT6 codes).
template <int B>
inline uint32_t bitPlane32(__m256i q) {
  // Within each 16-bit lane a left shift by 7-B moves bit B of both bytes to their bit 7.
  return static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_slli_epi16(q, 7 - B)));
}

template <int Bits, bool Sym>
inline void encodeFastGroupT(const float* x, size_t g, const GroupParams& p, uint8_t* codes) {
  const FastCoder<Bits, Sym> coder(p);
  if constexpr (Bits == 5 || Bits == 6) {
    // Nibble plane (g/2 bytes, the INT4 layout of the low 4 bits), then bit planes of g/8 bytes.
    const size_t nib = g / 2, plane = g / 8;
    const __m256i low = _mm256_set1_epi8(0x0F);
    for (size_t i = 0; i < g; i += 32) {
      const __m256i q = coder.codes32(x + i);
      storeNibbles32(codes + i / 2, _mm256_and_si256(q, low));
      const uint32_t b4 = bitPlane32<4>(q);
      __builtin_memcpy(codes + nib + i / 8, &b4, 4);
      if constexpr (Bits == 6) {
        const uint32_t b5 = bitPlane32<5>(q);
        __builtin_memcpy(codes + nib + plane + i / 8, &b5, 4);
      }
    }
  } else if constexpr (Bits == 8) {
    for (size_t i = 0; i < g; i += 32) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i), coder.codes32(x + i));
    }
  } else {
    size_t i = 0;
    for (; i + 64 <= g; i += 64) {
      const __m256i w0 = nibblePairs(coder.codes32(x + i));
      const __m256i w1 = nibblePairs(coder.codes32(x + i + 32));
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi16(w0, w1), 0xD8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i / 2), packed);
    }
    if (i < g) storeNibbles32(codes + i / 2, coder.codes32(x + i));  // g % 64 == 32
  }
}

inline void encodeFastGroup(const float* x, size_t g, const GroupParams& p, int bits, uint8_t* codes) {
  if (bits == 8) {
    p.symmetric ? encodeFastGroupT<8, true>(x, g, p, codes) : encodeFastGroupT<8, false>(x, g, p, codes);
  } else if (bits == 6) {
    p.symmetric ? encodeFastGroupT<6, true>(x, g, p, codes) : encodeFastGroupT<6, false>(x, g, p, codes);
  } else if (bits == 5) {
    p.symmetric ? encodeFastGroupT<5, true>(x, g, p, codes) : encodeFastGroupT<5, false>(x, g, p, codes);
  } else {
    p.symmetric ? encodeFastGroupT<4, true>(x, g, p, codes) : encodeFastGroupT<4, false>(x, g, p, codes);
  }
}

// Full groups x[0, count * g): metadata to meta[0, count), codes to codes (cb bytes per group). Pass 1 and
// the metadata for a batch of groups first, then the codes. The metadata is a ~60-cycle chain of scalar
// conversions and a divide per group; chains of different groups are independent, so the core overlaps each
// with the next group's pass 1 instead of stalling pass 2 on it. A batch holds at most 8 KiB of input (one
// group when g > 2048), so pass 2 reads it from L1.
// Pass 1 of x[i] prefetches the address pf + 4 i.
inline void quantizeFullGroups(const float* x, size_t count, const Config& cfg, uint8_t* meta, uint8_t* codes,
                               uintptr_t pf) {
  const size_t g = static_cast<size_t>(cfg.group_size);
  const int bits = cfg.bits;
  const size_t cb = fullGroupCodeBytes(g, bits);
  const size_t batch = clampOf<size_t>(2048 / g, 1, kMaxBatch);
  GroupParams params[kMaxBatch];
  for (size_t k0 = 0; k0 < count; k0 += batch) {
    const size_t nb = minOf(batch, count - k0);
    const float* xb = x + k0 * g;
    for (size_t j = 0; j < nb; ++j) {
      const SimdStats st = groupStats(xb + j * g, g, pf + (k0 + j) * g * sizeof(float));
      // NaN/Inf or max == min (constant, or a 0/-0 mix): the scalar rules decide from the values themselves.
      params[j] = (st.nonfinite || st.mn == st.mx) ? planGroup(xb + j * g, g, cfg)
                                                   : paramsFromStats(st.mn, st.mx, false, bits, cfg.symmetric);
      storeMeta(meta + (k0 + j) * sizeof(GroupMeta), params[j].meta);
    }
    for (size_t j = 0; j < nb; ++j) {
      uint8_t* cg = codes + (k0 + j) * cb;
      if (params[j].kind == GroupKind::Fast) {
        encodeFastGroup(xb + j * g, g, params[j], bits, cg);
      } else {
        encodeGroupScalar(xb + j * g, g, params[j], bits, cg, cb);
      }
    }
  }
}

void quantizeAvx2(const float* x, size_t n, const Config& cfg, uint8_t* out) {
  const size_t g = static_cast<size_t>(cfg.group_size);
  const int bits = cfg.bits;
  const size_t groups = numGroups(n, g), full = n / g;
  const size_t cb = fullGroupCodeBytes(g, bits);
  uint8_t* codes = out + groups * sizeof(GroupMeta);
  quantizeFullGroups(x, full, cfg, out, codes, reinterpret_cast<uintptr_t>(x) + kPrefetchBytes);
  if (groups > full) {
    const size_t r = n - full * g;
    const GroupParams p = planGroup(x + full * g, r, cfg);
    storeMeta(out + full * sizeof(GroupMeta), p.meta);
    encodeGroupScalar(x + full * g, r, p, bits, codes + full * cb, tailCodeBytes(r, bits));
  }
}

template <bool Accumulate>
inline void emit8(float* out, __m256i q, __m256 s, __m256 z) {
  const __m256 v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), s, z);
  if constexpr (Accumulate) {
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), v));
  } else {
    _mm256_storeu_ps(out, v);
  }
}

// 16 bytes of nibble pairs -> codes 0..15 in c0, 16..31 in c1, one per byte.
inline void loadNibbles32(const uint8_t* src, __m128i& c0, __m128i& c1) {
  const __m128i nib = _mm_set1_epi8(0x0F);
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
  const __m128i lo = _mm_and_si128(b, nib);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), nib);
  c0 = _mm_unpacklo_epi8(lo, hi);
  c1 = _mm_unpackhi_epi8(lo, hi);
}

// Decodes 32 byte codes (0..15 in c0, 16..31 in c1) to out[0, 32).
template <bool Accumulate>
inline void emit32(float* out, __m128i c0, __m128i c1, __m256 s, __m256 z) {
  emit8<Accumulate>(out, _mm256_cvtepu8_epi32(c0), s, z);
  emit8<Accumulate>(out + 8, _mm256_cvtepu8_epi32(_mm_srli_si128(c0, 8)), s, z);
  emit8<Accumulate>(out + 16, _mm256_cvtepu8_epi32(c1), s, z);
  emit8<Accumulate>(out + 24, _mm256_cvtepu8_epi32(_mm_srli_si128(c1, 8)), s, z);
}

// 32 bits (value i in bit i) -> 32 bytes, byte i = `val` where bit i is set, else 0.
inline __m256i expandBits32(const uint8_t* p, __m256i val) {
  uint32_t m;
  __builtin_memcpy(&m, p, 4);
  const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(m)),
                                        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                                         2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i sel = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel), val);
}

// INT5/INT6 full group: nibble plane, then bit planes (see encodeFastGroupT).
template <bool Accumulate>
inline void decodePlanarGroup(const uint8_t* codes, size_t g, int bits, __m256 s, __m256 z, float* out) {
  const size_t nib = g / 2, plane = g / 8;
  for (size_t i = 0; i < g; i += 32) {
    __m128i c0, c1;
    loadNibbles32(codes + i / 2, c0, c1);
    __m256i c = _mm256_set_m128i(c1, c0);  // codes 0..31, low 4 bits
    c = _mm256_or_si256(c, expandBits32(codes + nib + i / 8, _mm256_set1_epi8(0x10)));
    if (bits == 6) c = _mm256_or_si256(c, expandBits32(codes + nib + plane + i / 8, _mm256_set1_epi8(0x20)));
    emit32<Accumulate>(out + i, _mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1), s, z);
  }
}

template <bool Accumulate>
inline void decodeFastGroup(const uint8_t* codes, size_t g, int bits, float sf, float zf, float* out) {
  const __m256 s = _mm256_set1_ps(sf), z = _mm256_set1_ps(zf);
  if (bits == 8) {
    for (size_t i = 0; i < g; i += 32) {
      const uint8_t* c = codes + i;
      emit32<Accumulate>(out + i, _mm_loadu_si128(reinterpret_cast<const __m128i*>(c)),
                         _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + 16)), s, z);
    }
    return;
  }
  if (bits == 5 || bits == 6) {
    decodePlanarGroup<Accumulate>(codes, g, bits, s, z, out);
    return;
  }
  for (size_t i = 0; i < g; i += 32) {
    __m128i c0, c1;
    loadNibbles32(codes + i / 2, c0, c1);
    emit32<Accumulate>(out + i, c0, c1, s, z);
  }
}

template <bool Accumulate>
void dequantizeAvx2T(const uint8_t* in, size_t n, const Config& cfg, float* out) {
  const size_t g = static_cast<size_t>(cfg.group_size);
  const int bits = cfg.bits;
  const size_t groups = numGroups(n, g), full = n / g;
  const size_t cb = fullGroupCodeBytes(g, bits);
  const uint8_t* codes = in + groups * sizeof(GroupMeta);
  for (size_t k = 0; k < full; ++k) {
    const GroupMeta m = loadMeta(in + k * sizeof(GroupMeta));
    if (m.scale == 0 || (m.scale & kScaleFlag) != 0) {
      decodeGroupScalar<Accumulate>(m, codes + k * cb, g, bits, out + k * g);
    } else {
      decodeFastGroup<Accumulate>(codes + k * cb, g, bits, bf16Value(m.scale), bf16Value(m.zero), out + k * g);
    }
  }
  if (groups > full) {
    decodeGroupScalar<Accumulate>(loadMeta(in + full * sizeof(GroupMeta)), codes + full * cb, n - full * g, bits,
                                  out + full * g);
  }
}

void dequantizeAvx2(const uint8_t* in, size_t n, const Config& cfg, float* out) {
  dequantizeAvx2T<false>(in, n, cfg, out);
}
void dequantizeAccumulateAvx2(const uint8_t* in, size_t n, const Config& cfg, float* acc) {
  dequantizeAvx2T<true>(in, n, cfg, acc);
}

// bf16: round to nearest even in integer arithmetic, exactly bf16Rne lane by lane.
inline __m256i bf16Rne8(__m256i u) {
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb);
  const __m256i is_nan =
      _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)), _mm256_set1_epi32(0x7F800000));
  const __m256i quiet = _mm256_or_si256(u, _mm256_set1_epi32(0x00400000));
  return _mm256_srli_epi32(_mm256_blendv_epi8(rounded, quiet, is_nan), 16);
}

void toBf16Avx2(const float* x, size_t n, uint16_t* out) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i a = bf16Rne8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)));
    const __m256i b = bf16Rne8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 8)));
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);  // values < 2^16: no saturation
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), packed);
  }
  for (; i < n; ++i) out[i] = bf16Rne(x[i]);
}

inline __m256 widenBf16(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

void fromBf16Avx2(const uint16_t* in, size_t n, float* out) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_ps(out + i, widenBf16(in + i));
    _mm256_storeu_ps(out + i + 8, widenBf16(in + i + 8));
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, widenBf16(in + i));
  for (; i < n; ++i) out[i] = bf16Value(in[i]);
}

void fromBf16AccumulateAvx2(const uint16_t* in, size_t n, float* acc) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_ps(acc + i, _mm256_add_ps(_mm256_loadu_ps(acc + i), widenBf16(in + i)));
    _mm256_storeu_ps(acc + i + 8, _mm256_add_ps(_mm256_loadu_ps(acc + i + 8), widenBf16(in + i + 8)));
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(acc + i, _mm256_add_ps(_mm256_loadu_ps(acc + i), widenBf16(in + i)));
  for (; i < n; ++i) acc[i] = acc[i] + bf16Value(in[i]);
}

}  // namespace

void quantizeFullGroupsAvx2(const float* x, size_t count, const Config& cfg, uint8_t* meta, uint8_t* codes,
                            uintptr_t prefetch) {
  quantizeFullGroups(x, count, cfg, meta, codes, prefetch);
}

// ---------------------------------------------------------------------------------------------------------
// Pieces of the rotation/clipping path (transform.cc), each the lane-for-lane twin of its scalar reference there.

void encodeFastGroupAvx2(const float* x, size_t g, int bits, bool symmetric, float z, float inv, uint8_t* codes) {
  GroupParams p;
  p.symmetric = symmetric;
  p.z = z;
  p.inv = inv;
  encodeFastGroup(x, g, p, bits, codes);
}

void decodeFastGroupAvx2(const uint8_t* codes, size_t g, int bits, float s, float z, float* out) {
  decodeFastGroup<false>(codes, g, bits, s, z, out);
}

void clipErrorsAvx2(const float* x, size_t g, int bits, bool symmetric, const float* s, const float* z,
                    const float* inv, float* err) {
  constexpr int K = kClipCandidates;
  const int L = 1 << bits;
  const __m256i lo = _mm256_set1_epi32(symmetric ? 1 : 0), hi = _mm256_set1_epi32(L - 1);
  const __m256i half = _mm256_set1_epi32(L / 2);
  __m256 vs[K], vz[K], vinv[K], acc[K];
  for (int k = 0; k < K; ++k) {
    vs[k] = _mm256_set1_ps(s[k]);
    vz[k] = _mm256_set1_ps(z[k]);
    vinv[k] = _mm256_set1_ps(inv[k]);
    acc[k] = _mm256_setzero_ps();
  }
  // One pass over the group for all candidates: K independent accumulation chains instead of one at a time.
  for (size_t i = 0; i < g; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    for (int k = 0; k < K; ++k) {
      const __m256i r = symmetric ? _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v, vinv[k])), half)
                                  : _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(v, vz[k]), vinv[k]));
      const __m256 q = _mm256_cvtepi32_ps(_mm256_min_epi32(_mm256_max_epi32(r, lo), hi));
      const __m256 d = _mm256_sub_ps(_mm256_fmadd_ps(q, vs[k], vz[k]), v);
      acc[k] = _mm256_fmadd_ps(d, d, acc[k]);
    }
  }
  for (int k = 0; k < K; ++k) {
    float a[8];
    _mm256_storeu_ps(a, acc[k]);
    err[k] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  }
}

void minMaxAvx2(const float* x, size_t g, float* mn, float* mx, bool* constant) {
  __m256 vmn = _mm256_loadu_ps(x), vmx = vmn;
  const __m256i first = _mm256_set1_epi32(static_cast<int>(floatBits(x[0])));
  __m256i diff = _mm256_setzero_si256();
  for (size_t i = 0; i < g; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    vmn = _mm256_min_ps(vmn, v);
    vmx = _mm256_max_ps(vmx, v);
    diff = _mm256_or_si256(diff, _mm256_xor_si256(_mm256_castps_si256(v), first));
  }
  *mn = hmin(vmn);
  *mx = hmax(vmx);
  *constant = _mm256_testz_si256(diff, diff) != 0;
}

void hadamardRotateAvx2(float* v, size_t g, bool inverse, const float* d, float c) {
  if (!inverse)
    for (size_t i = 0; i < g; i += 8)
      _mm256_storeu_ps(v + i, _mm256_mul_ps(_mm256_loadu_ps(v + i), _mm256_loadu_ps(d + i)));
  // h = 1, 2, 4 inside each vector: lane j < j^h takes v[j] + v[j^h], lane j^h takes v[j] - v[j^h] (as the
  // scalar butterflies: additions are commutative, so v + swapped equals the scalar a + b bit for bit).
  for (size_t i = 0; i < g; i += 8) {
    __m256 x = _mm256_loadu_ps(v + i);
    __m256 w = _mm256_permute_ps(x, 0xB1);
    x = _mm256_blend_ps(_mm256_add_ps(x, w), _mm256_sub_ps(w, x), 0xAA);
    w = _mm256_permute_ps(x, 0x4E);
    x = _mm256_blend_ps(_mm256_add_ps(x, w), _mm256_sub_ps(w, x), 0xCC);
    w = _mm256_permute2f128_ps(x, x, 1);
    x = _mm256_blend_ps(_mm256_add_ps(x, w), _mm256_sub_ps(w, x), 0xF0);
    _mm256_storeu_ps(v + i, x);
  }
  for (size_t h = 8; h < g; h <<= 1) {
    for (size_t j0 = 0; j0 < g; j0 += 2 * h) {
      for (size_t j = j0; j < j0 + h; j += 8) {
        const __m256 a = _mm256_loadu_ps(v + j), b = _mm256_loadu_ps(v + j + h);
        _mm256_storeu_ps(v + j, _mm256_add_ps(a, b));
        _mm256_storeu_ps(v + j + h, _mm256_sub_ps(a, b));
      }
    }
  }
  const __m256 vc = _mm256_set1_ps(c), zero = _mm256_setzero_ps();
  for (size_t i = 0; i < g; i += 8) {
    __m256 x = _mm256_mul_ps(_mm256_loadu_ps(v + i), vc);
    if (inverse) x = _mm256_add_ps(_mm256_mul_ps(x, _mm256_loadu_ps(d + i)), zero);
    _mm256_storeu_ps(v + i, x);
  }
}

const Kernels kAvx2Kernels = {quantizeAvx2, dequantizeAvx2, dequantizeAccumulateAvx2,
                              toBf16Avx2,   fromBf16Avx2,   fromBf16AccumulateAvx2};

}  // namespace flashring::quant::detail
