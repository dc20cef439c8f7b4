// AVX-512 (F, BW, VL, DQ) codecs; compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma
// and entered only when CPUID reports all of them. Same structure and per-lane arithmetic as the AVX2 file
// (see there); 16 lanes, clamping in int32 and narrowing with vpmovdb / vpmovwb instead of saturating packs.
// Not executed on the development machine (no AVX-512 there); QuantSimd.Avx512MatchesScalarBitForBit runs it
// against the scalar reference wherever the CPU has it.

// GCC 12's AVX-512 headers self-initialise their "undefined" vectors (`__m512i __Y = __Y;`), which
// -Wmaybe-uninitialized reports at every use (GCC PR 105593). The warning is silenced for the header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include "quant/cpu/codec_internal.h"

namespace flashring::quant::detail {
namespace {

constexpr size_t kMaxBatch = 8;
// Pass 1 prefetches the input this far ahead (8 KiB). The hardware prefetcher alone does not run far enough
// ahead of a loop this compute-heavy: on the development machine (Zen 3, 16 MiB input from DRAM) this cut
// quantize time by about a quarter. Prefetches past the end of the input are harmless (they never fault).
constexpr uintptr_t kPrefetchBytes = 8192;

// Prefetches the two cache lines holding p[0..31], kPrefetchBytes ahead. Integer arithmetic: the address
// may lie past the end of the array, where forming a pointer would be undefined.
inline void prefetchAhead(const float* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p) + kPrefetchBytes;
  _mm_prefetch(reinterpret_cast<const char*>(a), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(a + 64), _MM_HINT_T0);
}

struct SimdStats {
  float mn, mx;
  bool nonfinite;
};

// g is a multiple of 32. min/max are only meaningful when nonfinite is false.
inline SimdStats groupStats(const float* x, size_t g) {
  prefetchAhead(x);
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  __m512 mn0 = _mm512_loadu_ps(x), mn1 = _mm512_loadu_ps(x + 16);
  __m512 mx0 = mn0, mx1 = mn1;
  __m512i e0 = _mm512_and_si512(_mm512_castps_si512(mn0), abs_mask);
  __m512i e1 = _mm512_and_si512(_mm512_castps_si512(mn1), abs_mask);
  for (size_t i = 32; i < g; i += 32) {
    prefetchAhead(x + i);
    const __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + 16);
    mn0 = _mm512_min_ps(mn0, v0);
    mx0 = _mm512_max_ps(mx0, v0);
    mn1 = _mm512_min_ps(mn1, v1);
    mx1 = _mm512_max_ps(mx1, v1);
    e0 = _mm512_max_epu32(e0, _mm512_and_si512(_mm512_castps_si512(v0), abs_mask));
    e1 = _mm512_max_epu32(e1, _mm512_and_si512(_mm512_castps_si512(v1), abs_mask));
  }
  SimdStats st;
  st.nonfinite = _mm512_cmpgt_epu32_mask(_mm512_max_epu32(e0, e1), _mm512_set1_epi32(0x7F7FFFFF)) != 0;
  st.mn = _mm512_reduce_min_ps(_mm512_min_ps(mn0, mn1));
  st.mx = _mm512_reduce_max_ps(_mm512_max_ps(mx0, mx1));
  return st;
}

// Lane-for-lane the scalar fastAsymCode / fastSymCode (see codec_avx2.cc):
//   asymmetric: q = clamp(rne((x - z) * inv), 0, qmax)        (qmax = L-1: a Fast group has no flag)
//   symmetric:  q = clamp(rne(x * inv) + L/2, 1, L-1)
// Clamped in int32 (max, then vpmovusdb's unsigned saturation at 255 or an explicit min at 15), narrowed to bytes.
template <int Bits, bool Sym>
struct FastCoder {
  __m512 z, inv;

  explicit FastCoder(const GroupParams& p) : z(_mm512_set1_ps(p.z)), inv(_mm512_set1_ps(p.inv)) {}

  // 16 codes as bytes, in order.
  __m128i codes16(const float* x) const {
    __m512i q;
    if constexpr (Sym) {
      q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x), inv));  // rounds to nearest even (default MXCSR)
      q = _mm512_max_epi32(_mm512_add_epi32(q, _mm512_set1_epi32(1 << (Bits - 1))), _mm512_set1_epi32(1));
    } else {
      q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x), z), inv));
      q = _mm512_max_epi32(q, _mm512_setzero_si512());
    }
    if constexpr (Bits == 8) {
      return _mm512_cvtusepi32_epi8(q);  // q >= 0 here: unsigned saturation clamps at 255
    } else {
      return _mm512_cvtepi32_epi8(_mm512_min_epi32(q, _mm512_set1_epi32(15)));
    }
  }
};

template <int Bits, bool Sym>
inline void encodeFastGroupT(const float* x, size_t g, const GroupParams& p, uint8_t* codes) {
  const FastCoder<Bits, Sym> coder(p);
  if constexpr (Bits == 8) {
    for (size_t i = 0; i < g; i += 32) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), coder.codes16(x + i));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i + 16), coder.codes16(x + i + 16));
    }
  } else {
    const __m256i pair_weights = _mm256_set1_epi16(0x1001);  // even value * 1 + odd value * 16
    for (size_t i = 0; i < g; i += 32) {
      const __m256i q =
          _mm256_inserti128_si256(_mm256_castsi128_si256(coder.codes16(x + i)), coder.codes16(x + i + 16), 1);
      const __m256i w = _mm256_maddubs_epi16(q, pair_weights);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i / 2), _mm256_cvtepi16_epi8(w));
    }
  }
}

inline void encodeFastGroup(const float* x, size_t g, const GroupParams& p, int bits, uint8_t* codes) {
  if (bits == 8) {
    p.symmetric ? encodeFastGroupT<8, true>(x, g, p, codes) : encodeFastGroupT<8, false>(x, g, p, codes);
  } else {
    p.symmetric ? encodeFastGroupT<4, true>(x, g, p, codes) : encodeFastGroupT<4, false>(x, g, p, codes);
  }
}

void quantizeAvx512(const float* x, size_t n, const Config& cfg, uint8_t* out) {
  const size_t g = static_cast<size_t>(cfg.group_size);
  const int bits = cfg.bits;
  const size_t groups = numGroups(n, g), full = n / g;
  const size_t cb = fullGroupCodeBytes(g, bits);
  uint8_t* codes = out + groups * sizeof(GroupMeta);
  // Pass 1 and the metadata for a batch of groups first, then the codes. The metadata is a ~60-cycle chain
  // of scalar conversions and a divide per group; chains of different groups are independent, so the core
  // overlaps each with the next group's pass 1 instead of stalling pass 2 on it. A batch holds at most
  // 8 KiB of input (one group when g > 2048), so pass 2 reads it from L1.
  const size_t batch = clampOf<size_t>(2048 / g, 1, kMaxBatch);
  GroupParams params[kMaxBatch];
  for (size_t k0 = 0; k0 < full; k0 += batch) {
    const size_t nb = minOf(batch, full - k0);
    const float* xb = x + k0 * g;
    for (size_t j = 0; j < nb; ++j) {
      const SimdStats st = groupStats(xb + j * g, g);
      // NaN/Inf or max == min (constant, or a 0/-0 mix): the scalar rules decide from the values themselves.
      params[j] = (st.nonfinite || st.mn == st.mx) ? planGroup(xb + j * g, g, cfg)
                                                   : paramsFromStats(st.mn, st.mx, false, bits, cfg.symmetric);
      storeMeta(out + (k0 + j) * sizeof(GroupMeta), params[j].meta);
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
  if (groups > full) {
    const size_t r = n - full * g;
    const GroupParams p = planGroup(x + full * g, r, cfg);
    storeMeta(out + full * sizeof(GroupMeta), p.meta);
    encodeGroupScalar(x + full * g, r, p, bits, codes + full * cb, tailCodeBytes(r, bits));
  }
}

template <bool Accumulate>
inline void emit16(float* out, __m128i q8, __m512 s, __m512 z) {
  const __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q8)), s, z);
  if constexpr (Accumulate) {
    _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), v));
  } else {
    _mm512_storeu_ps(out, v);
  }
}

template <bool Accumulate>
inline void decodeFastGroup(const uint8_t* codes, size_t g, int bits, float sf, float zf, float* out) {
  const __m512 s = _mm512_set1_ps(sf), z = _mm512_set1_ps(zf);
  if (bits == 8) {
    for (size_t i = 0; i < g; i += 32) {
      emit16<Accumulate>(out + i, _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)), s, z);
      emit16<Accumulate>(out + i + 16, _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i + 16)), s, z);
    }
    return;
  }
  const __m128i nib = _mm_set1_epi8(0x0F);
  for (size_t i = 0; i < g; i += 32) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i / 2));
    const __m128i lo = _mm_and_si128(b, nib);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), nib);
    emit16<Accumulate>(out + i, _mm_unpacklo_epi8(lo, hi), s, z);       // codes 0..15
    emit16<Accumulate>(out + i + 16, _mm_unpackhi_epi8(lo, hi), s, z);  // codes 16..31
  }
}

template <bool Accumulate>
void dequantizeAvx512T(const uint8_t* in, size_t n, const Config& cfg, float* out) {
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

void dequantizeAvx512(const uint8_t* in, size_t n, const Config& cfg, float* out) {
  dequantizeAvx512T<false>(in, n, cfg, out);
}
void dequantizeAccumulateAvx512(const uint8_t* in, size_t n, const Config& cfg, float* acc) {
  dequantizeAvx512T<true>(in, n, cfg, acc);
}

// Exactly bf16Rne lane by lane.
inline __m256i bf16Rne16(__m512i u) {
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb);
  const __mmask16 is_nan =
      _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(0x7F800000));
  const __m512i res = _mm512_mask_mov_epi32(rounded, is_nan, _mm512_or_si512(u, _mm512_set1_epi32(0x00400000)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(res, 16));
}

void toBf16Avx512(const float* x, size_t n, uint16_t* out) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), bf16Rne16(_mm512_loadu_si512(x + i)));
  }
  for (; i < n; ++i) out[i] = bf16Rne(x[i]);
}

inline __m512 widenBf16(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

void fromBf16Avx512(const uint16_t* in, size_t n, float* out) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, widenBf16(in + i));
  for (; i < n; ++i) out[i] = bf16Value(in[i]);
}

void fromBf16AccumulateAvx512(const uint16_t* in, size_t n, float* acc) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(acc + i, _mm512_add_ps(_mm512_loadu_ps(acc + i), widenBf16(in + i)));
  for (; i < n; ++i) acc[i] = acc[i] + bf16Value(in[i]);
}

}  // namespace

const Kernels kAvx512Kernels = {quantizeAvx512, dequantizeAvx512, dequantizeAccumulateAvx512,
                                toBf16Avx512,   fromBf16Avx512,   fromBf16AccumulateAvx512};

}  // namespace flashring::quant::detail
