// Internals of the CPU codecs: the wire-layout arithmetic, the per-group metadata rules and the scalar
// per-group encoder/decoder that every instruction-set version shares.
//
// Bit-for-bit agreement between the scalar reference and the SIMD kernels rests on one rule: everything
// that is decided once per group (statistics -> s, z, flags, 1/s, which path) is computed here, by the same
// inline code, in every translation unit. SIMD kernels only vectorise the per-element formulas of the
// "fast" groups, which are written so that one vector lane does exactly what the scalar code does for one
// element. Groups that are rare or awkward (constant, NaN/Inf, extreme ranges, the partial tail group) are
// handed to the shared scalar encoder/decoder below by every kernel.
//
// Everything here has internal linkage (anonymous namespace): the SIMD files are compiled with -mavx2 or
// -mavx512*, and an inline function with external linkage instantiated there could be picked by the linker
// for baseline code and execute AVX instructions on a CPU without them. For the same reason this header and
// the SIMD files call no std:: inline function or template (std::min, std::fma, std::isnan...: in an
// unoptimised build they are emitted as weak symbols compiled for AVX); they use the helpers and compiler
// builtins below (the memcpy/memset library functions are fine).
#pragma once

#include <cfloat>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "flashring/quant.h"

namespace flashring::quant::detail {

// One instruction set's kernels. Arguments are already validated (cfg valid, pointers non-null, n > 0).
struct Kernels {
  void (*quantize)(const float* x, size_t n, const Config& cfg, uint8_t* out);
  void (*dequantize)(const uint8_t* in, size_t n, const Config& cfg, float* out);
  void (*dequantizeAccumulate)(const uint8_t* in, size_t n, const Config& cfg, float* acc);
  void (*toBf16)(const float* x, size_t n, uint16_t* out);
  void (*fromBf16)(const uint16_t* in, size_t n, float* out);
  void (*fromBf16Accumulate)(const uint16_t* in, size_t n, float* acc);
};

extern const Kernels kScalarKernels;  // codec_scalar.cc
extern const Kernels kAvx2Kernels;    // codec_avx2.cc
extern const Kernels kAvx512Kernels;  // codec_avx512.cc

// Spike reserving (spikes.cc), around any ISA's kernels, for cfg.spikes > 0; the kernels themselves never
// see spikes (they are called with spikes = 0 on a copy of the input whose spike positions are replaced).
// `isa` picks the spike selection (Scalar: the SSE2 reference; Avx2 and Avx512: the AVX2 one), k the kernels.
void quantizeWithSpikes(Isa isa, const Kernels& k, const float* x, size_t n, const Config& cfg, uint8_t* out);
void dequantizeWithSpikes(const Kernels& k, const uint8_t* in, size_t n, const Config& cfg, float* out);
// Spike selection of one group of r values (1 <= r <= kMaxGroup, 1 <= k <= kMaxSpikes): copies x[0, r) to
// copy and writes the group's spike positions (quant.h's rule), ascending, to pos; returns how many.
// selectGroupSpikes uses the selection of `isa` (spikes.cc; tests compare them bit for bit).
int selectGroupSpikes(Isa isa, const float* x, size_t r, int k, float* copy, uint16_t* pos);
// The AVX2 selection (spikes_avx2.cc): returns -1, having maybe written part of copy, for the groups it
// leaves to the reference (NaN/Inf in the group, r % 32 != 0, r <= k).
int selectGroupSpikesFiniteAvx2(const float* x, size_t r, int k, float* copy, uint16_t* pos);
// The AVX2 kernel's encoding of `count` full groups of x (cfg.spikes is ignored) with the metadata to
// meta[0, count) and the codes to `codes` (codec_avx2.cc). Reading x[i], it prefetches the address
// prefetch + 4 i (any address: prefetches never fault); the spike path passes the input of its next chunk.
void quantizeFullGroupsAvx2(const float* x, size_t count, const Config& cfg, uint8_t* meta, uint8_t* codes,
                            uintptr_t prefetch);
void dequantizeAccumulateWithSpikes(const Kernels& k, const uint8_t* in, size_t n, const Config& cfg, float* acc);
// Throws InvalidArgument if an index of the spike section `idx` (of a run of n values) is neither kNoSpike nor
// inside its group (spikes.cc).
void checkSpikeIndices(const uint8_t* idx, size_t n, const Config& cfg);
// Rotation and clipping (quant.h, "Rotation"; transform.cc): one scalar implementation that every ISA calls,
// spikes included. quantizeTransformed serves cfg.rotate || cfg.clip; dequantizeTransformed serves cfg.rotate
// (clip does not change decoding), writing out = decoded or, with accumulate, out = out + decoded.
void quantizeTransformed(Isa isa, const float* x, size_t n, const Config& cfg, uint8_t* out);
void dequantizeTransformed(Isa isa, const uint8_t* in, size_t n, const Config& cfg, float* out, bool accumulate);
// The group rotation itself (g a power of two, 1 < g <= kMaxGroup): forward y = c * H * (D * v), inverse
// v = D * (c * H * y), in place. Exposed for the tests.
void hadamardRotate(float* v, size_t g, bool inverse);
// d_i of quant.h's rotation: -1.0f or +1.0f.
float rotationSign(size_t i);
// AVX2 twins of transform.cc's per-group steps (codec_avx2.cc; g a multiple of 32, all values finite), bit for
// bit their scalar references: the codes of a Fast group with the given z / inv; the decoding of a Fast group;
// the clipping search's squared errors of all candidates in one pass (8 lane sums each, lane j over i = j mod 8
// by fma, then a fixed tree); min, max
// and the constant test; the rotation with signs d and factor c.
void encodeFastGroupAvx2(const float* x, size_t g, int bits, bool symmetric, float z, float inv, uint8_t* codes);
void decodeFastGroupAvx2(const uint8_t* codes, size_t g, int bits, float s, float z, float* out);
inline constexpr int kClipCandidates = 6;  // c = 16/16 .. 11/16 (quant.h)
void clipErrorsAvx2(const float* x, size_t g, int bits, bool symmetric, const float* s, const float* z,
                    const float* inv, float* err);  // kClipCandidates of each
void minMaxAvx2(const float* x, size_t g, float* mn, float* mx, bool* constant);
void hadamardRotateAvx2(float* v, size_t g, bool inverse, const float* d, float c);

// Forgets setActiveIsa() and the FLASHRING_ISA reading, so that the next activeIsa() reads the environment
// again. Tests only.
using cpu::detail::resetIsaSelectionForTesting;

namespace {

// ---------------------------------------------------------------------------------------------------------
// Internal-linkage replacements for std::min/max/clamp (same semantics, NaN and signed zeros included)
// and the <cmath> functions used here.

template <class T>
inline T minOf(T a, T b) {
  return b < a ? b : a;
}
template <class T>
inline T maxOf(T a, T b) {
  return a < b ? b : a;
}
template <class T>
inline T clampOf(T v, T lo, T hi) {
  return v < lo ? lo : (hi < v ? hi : v);
}
inline float fmaF(float a, float b, float c) { return __builtin_fmaf(a, b, c); }  // one rounding
inline float nearbyintF(float x) { return __builtin_nearbyintf(x); }              // current mode: nearest even
inline double nearbyintD(double x) { return __builtin_nearbyint(x); }
inline bool isNan(float x) { return __builtin_isnan(x); }
inline bool isInf(float x) { return __builtin_isinf(x); }
inline bool isFinite(float x) { return __builtin_isfinite(x); }
inline constexpr float kInf = __builtin_inff();

// ---------------------------------------------------------------------------------------------------------
// Bits and bf16.

inline uint32_t floatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float bf16Value(uint16_t b) { return bitsFloat(static_cast<uint32_t>(b) << 16); }

// Round to nearest even; NaN keeps its sign and top payload bits and is made quiet. Large finite values
// round to Inf exactly as IEEE rounding does.
inline uint16_t bf16Rne(float f) {
  const uint32_t u = floatBits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  const uint32_t rounded = u + 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

// Largest bf16 <= f, for finite f; saturates at the lowest finite bf16 (-0x1.FEp127) instead of -Inf.
inline uint16_t bf16Down(float f) {
  const uint32_t u = floatBits(f);
  uint32_t hi = u >> 16;
  if ((u & 0x80000000u) != 0 && (u & 0xFFFFu) != 0) ++hi;  // negative: a larger magnitude is lower
  if (hi == 0xFF80u) hi = 0xFF7Fu;
  return static_cast<uint16_t>(hi);
}

// max(smallest bf16 >= d, 2^-126) for d < 2^126 (the callers guarantee d <= 2^129 / 12). Rounds the double's
// significand up to 7 fraction bits in the integer domain (a carry into the exponent is the right answer);
// d <= 2^-126, zero, -0.0 and negative d give the floor 2^-126, so a sign bit can never appear.
inline constexpr uint16_t kMinScaleBits = 0x0080u;  // bf16 2^-126: keeps 1/s finite in fp32

inline uint16_t bf16UpAtLeastMin(double d) {
  if (!(d > 0x1p-126)) return kMinScaleBits;
  uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  u = (u + ((uint64_t{1} << 45) - 1)) >> 45;                      // (double exponent << 7) | 7 fraction bits
  return static_cast<uint16_t>(u - (uint64_t{1023 - 127} << 7));  // rebias the exponent to fp32's
}

// 1.0f / s for a positive bf16 s, bit-identical to the fp32 division: s = 2^(E-127) * (1 + m/128)
// gives 1/s = 2^(127-E) * RN(1 / (1 + m/128)), the scaling by a power of two being exact while the result
// stays normal (it does for this range). A 128-entry table instead of a 10+ cycle divide per group.
struct RecipTable {
  uint32_t bits[128];
  constexpr RecipTable() : bits{} {
    for (int m = 0; m < 128; ++m) {
      const float r = 1.0f / (1.0f + static_cast<float>(m) / 128.0f);  // constant-folded: IEEE, round to nearest
      bits[m] = __builtin_bit_cast(uint32_t, r);
    }
  }
};
inline constexpr RecipTable kRecip{};

inline float bf16Reciprocal(uint16_t sb) {
  const uint32_t e = (sb >> 7) & 0xFFu;  // biased exponent
  const uint32_t m = sb & 0x7Fu;
  // Subnormal s, or 1/s subnormal (s >= 2^126): never produced by the metadata rules, divide anyway.
  if (e == 0 || e >= 253) [[unlikely]]
    return 1.0f / bf16Value(sb);
  return bitsFloat(kRecip.bits[m] + ((127u - e) << 23));  // unsigned wrap-around adds a negative exponent
}

// ---------------------------------------------------------------------------------------------------------
// Layout.

inline size_t numGroups(size_t n, size_t g) { return (n + g - 1) / g; }
// INT5/INT6 codes are split into planes (see quant.h): a nibble plane of ceil(r/2) bytes (the INT4 layout of
// the low 4 bits), then bits-4 bit planes of ceil(r/8) bytes each. For a full group (g a multiple of 32)
// that is g*bits/8 bytes, as for INT4 and INT8.
inline bool isPlanar(int bits) { return bits == 5 || bits == 6; }
inline size_t nibblePlaneBytes(size_t r) { return (r + 1) / 2; }
inline size_t bitPlaneBytes(size_t r) { return (r + 7) / 8; }
inline size_t fullGroupCodeBytes(size_t g, int bits) { return g * static_cast<size_t>(bits) / 8; }
inline size_t tailCodeBytes(size_t r, int bits) {
  if (isPlanar(bits)) return maxOf<size_t>(2, nibblePlaneBytes(r) + static_cast<size_t>(bits - 4) * bitPlaneBytes(r));
  return maxOf<size_t>(2, (r * static_cast<size_t>(bits) + 7) / 8);
}
// Spike section (Config::spikes > 0): uint16 index[G][k], then fp32 value[G][k].
inline size_t spikeSectionSize(size_t n, const Config& cfg) {
  return numGroups(n, static_cast<size_t>(cfg.group_size)) * static_cast<size_t>(cfg.spikes) *
         (sizeof(uint16_t) + sizeof(float));
}
inline size_t encodedSize(size_t n, const Config& cfg) {
  if (n == 0) return 0;
  const size_t g = static_cast<size_t>(cfg.group_size);
  const size_t full = n / g, r = n % g;
  return numGroups(n, g) * sizeof(GroupMeta) + full * fullGroupCodeBytes(g, cfg.bits) +
         (r != 0 ? tailCodeBytes(r, cfg.bits) : 0) + spikeSectionSize(n, cfg);
}

inline void storeMeta(uint8_t* p, GroupMeta m) { std::memcpy(p, &m, sizeof m); }
inline GroupMeta loadMeta(const uint8_t* p) {
  GroupMeta m;
  std::memcpy(&m, p, sizeof m);
  return m;
}

// ---------------------------------------------------------------------------------------------------------
// Per-group metadata.

enum class GroupKind : uint8_t {
  Constant,  // scale 0: value bits stored verbatim
  Fast,      // the vectorisable fp32 formula (asymmetric or symmetric), no NaN/Inf in the group
  General,   // scalar only: NaN/Inf present and/or a wide group (double formula, top-code clamp)
};

struct GroupParams {
  GroupMeta meta{};
  GroupKind kind = GroupKind::Fast;
  bool symmetric = false;  // Fast symmetric: q = clamp(rne(x * inv) + L/2, 1, L-1)
  bool wide = false;       // General: q from the double formula
  float s = 0.0f, z = 0.0f, inv = 0.0f;
  int qmax = 0;             // largest code a finite value may take
  uint32_t const_bits = 0;  // Constant: the value
};

inline constexpr uint16_t kScaleFlag = 0x8000u;

inline GroupParams constantParams(uint32_t bits) {
  GroupParams p;
  p.kind = GroupKind::Constant;
  p.meta.scale = 0;
  p.meta.zero = static_cast<uint16_t>(bits >> 16);
  p.const_bits = bits;
  return p;
}

// Metadata of a non-constant group from its statistics: mn/mx over the finite values (mn > mx when there
// are none), has_nonfinite when a NaN or Inf is present. Every kernel calls this with identical inputs
// (min/max are order independent up to the sign of zero, which is normalised here).
[[gnu::always_inline]] inline GroupParams paramsFromStats(float mn, float mx, bool has_nonfinite, int bits,
                                                          bool symmetric) {
  const int L = 1 << bits;
  if (!(mn <= mx)) mn = mx = 0.0f;  // no finite value at all
  if (mn == 0.0f) mn = 0.0f;        // -0.0 -> +0.0
  if (mx == 0.0f) mx = 0.0f;
  GroupParams p;
  if (symmetric && !has_nonfinite) {
    const int half = L / 2;
    const float amax = maxOf(__builtin_fabsf(mn), __builtin_fabsf(mx));  // not max(-mn, mx): -(+0) is -0
    const uint16_t sb = bf16UpAtLeastMin(static_cast<double>(amax) / (half - 1));
    const float s = bf16Value(sb);
    const float z = -static_cast<float>(half) * s;  // exact: a power of two times a bf16
    if (isFinite(z)) {
      p.kind = GroupKind::Fast;
      p.symmetric = true;
      p.s = s;
      p.z = z;
      p.inv = bf16Reciprocal(sb);
      p.qmax = L - 1;
      p.meta.scale = sb;
      p.meta.zero = static_cast<uint16_t>(floatBits(z) >> 16);
      return p;
    }
    // -(L/2)*s overflows: fall through to the asymmetric encoding.
  }
  const int qmax = has_nonfinite ? L - 4 : L - 1;
  const uint16_t zb = bf16Down(mn);
  const float z = bf16Value(zb);
  // Exact in double unless the exponents of mx and z are far apart. Negative only when every value lies
  // below the saturated z (all within 0.4% of -FLT_MAX); bf16UpAtLeastMin then gives the floor.
  const double range = static_cast<double>(mx) - static_cast<double>(z);
  const uint16_t sb = bf16UpAtLeastMin(range / qmax);
  const float s = bf16Value(sb);
  p.s = s;
  p.z = z;
  p.inv = bf16Reciprocal(sb);
  p.qmax = qmax;
  p.meta.scale = static_cast<uint16_t>(sb | (has_nonfinite ? kScaleFlag : 0u));
  p.meta.zero = zb;
  // Wide group: x - z can overflow fp32, or the top code would decode past FLT_MAX. Since s*qmax exceeds
  // range by at most 2^-7 of it, z + qmax*s <= mx + range/128: neither can happen while mx and range are
  // below 2^126, which skips the exact test for all but extreme groups.
  if (mx > 0x1p126f || range > 0x1p126) [[unlikely]] {
    constexpr double kFltMax = static_cast<double>(FLT_MAX);
    const double ds = static_cast<double>(s), dz = static_cast<double>(z);
    if (range > kFltMax || dz + qmax * ds > kFltMax) {
      p.wide = true;
      // Largest code whose decoded value stays finite (the exact value z + q*s <= FLT_MAX rounds to at most
      // FLT_MAX in fp32).
      int q = qmax;
      while (q > 0 && dz + q * ds > kFltMax) --q;
      p.qmax = q;
    }
  }
  p.kind = (has_nonfinite || p.wide) ? GroupKind::General : GroupKind::Fast;
  return p;
}

struct GroupStats {
  float mn = kInf, mx = -kInf;  // over finite values
  bool has_nonfinite = false;
  bool constant = true;  // all values bit-identical (and finite, see planGroup)
};

inline GroupStats scalarStats(const float* x, size_t r) {
  GroupStats st;
  const uint32_t first = floatBits(x[0]);
  for (size_t i = 0; i < r; ++i) {
    const float v = x[i];
    const uint32_t u = floatBits(v);
    if (u != first) st.constant = false;
    if ((u & 0x7F800000u) == 0x7F800000u) {
      st.has_nonfinite = true;
      continue;
    }
    st.mn = v < st.mn ? v : st.mn;
    st.mx = v > st.mx ? v : st.mx;
  }
  return st;
}

inline GroupParams planGroup(const float* x, size_t r, const Config& cfg) {
  const GroupStats st = scalarStats(x, r);
  if (st.constant && !st.has_nonfinite) return constantParams(floatBits(x[0]));
  return paramsFromStats(st.mn, st.mx, st.has_nonfinite, cfg.bits, cfg.symmetric);
}

// The spike rule of quant.h for an unrotated group: copy[pos[e]] = the first finite non-spike value of x[0, r)
// for the m spike positions pos (ascending).
inline void replaceSpikes(const float* x, size_t r, const uint16_t* pos, int m, float* copy) {
  if (m <= 0) return;
  float repl = 0.0f;  // there is one: m <= finite values - 1
  for (size_t i = 0, e = 0; i < r; ++i) {
    if (e < static_cast<size_t>(m) && pos[e] == i) {
      ++e;
      continue;
    }
    if ((floatBits(x[i]) & 0x7FFFFFFFu) < 0x7F800000u) {
      repl = x[i];
      break;
    }
  }
  for (int e = 0; e < m; ++e) copy[pos[e]] = repl;
}

// ---------------------------------------------------------------------------------------------------------
// Per-element formulas. The SIMD fast paths reproduce fastAsymCode / fastSymCode lane by lane.

inline int fastAsymCode(float x, float z, float inv, int qmax) {
  const float t = (x - z) * inv;
  const float r = nearbyintF(t);
  return static_cast<int>(minOf(maxOf(r, 0.0f), static_cast<float>(qmax)));
}

inline int fastSymCode(float x, float inv, int L) {
  const float r = nearbyintF(x * inv);
  const float q = r + static_cast<float>(L / 2);  // exact: |r| <= L/2 here
  return static_cast<int>(minOf(maxOf(q, 1.0f), static_cast<float>(L - 1)));
}

inline int codeOf(float x, const GroupParams& p, int L) {
  if (isNan(x)) return L - 1;
  if (isInf(x)) return x > 0 ? L - 2 : L - 3;
  if (p.symmetric) return fastSymCode(x, p.inv, L);
  if (p.wide) {
    const double t = (static_cast<double>(x) - static_cast<double>(p.z)) / static_cast<double>(p.s);
    const double r = nearbyintD(t);
    return static_cast<int>(minOf(maxOf(r, 0.0), static_cast<double>(p.qmax)));
  }
  return fastAsymCode(x, p.z, p.inv, p.qmax);
}

// Encodes one group of r values (1 <= r <= g) into `codes` (code_bytes bytes) with the given parameters.
// Used by the scalar reference for every group and by the SIMD kernels for non-Fast and tail groups.
inline void encodeGroupScalar(const float* x, size_t r, const GroupParams& p, int bits, uint8_t* codes,
                              size_t code_bytes) {
  std::memset(codes, 0, code_bytes);
  if (p.kind == GroupKind::Constant) {
    codes[0] = static_cast<uint8_t>(p.const_bits & 0xFFu);
    codes[1] = static_cast<uint8_t>((p.const_bits >> 8) & 0xFFu);
    return;
  }
  const int L = 1 << bits;
  if (bits == 8) {
    for (size_t i = 0; i < r; ++i) codes[i] = static_cast<uint8_t>(codeOf(x[i], p, L));
  } else {
    const size_t nib = nibblePlaneBytes(r), plane = bitPlaneBytes(r);
    for (size_t i = 0; i < r; ++i) {
      const unsigned q = static_cast<unsigned>(codeOf(x[i], p, L));
      codes[i / 2] = static_cast<uint8_t>(codes[i / 2] | ((q & 0xFu) << (4 * (i & 1))));
      for (int b = 4; b < bits; ++b) {  // INT5/INT6: bit b of the code in bit plane b-4
        uint8_t& byte = codes[nib + static_cast<size_t>(b - 4) * plane + i / 8];
        byte = static_cast<uint8_t>(byte | (((q >> b) & 1u) << (i % 8)));
      }
    }
  }
}

// Code of value i of a group of r values.
inline unsigned codeAt(const uint8_t* codes, size_t i, size_t r, int bits) {
  if (bits == 8) return codes[i];
  unsigned q = (codes[i / 2] >> (4 * (i & 1))) & 0xFu;
  if (bits > 4) {
    const size_t nib = nibblePlaneBytes(r), plane = bitPlaneBytes(r);
    for (int b = 4; b < bits; ++b) {
      q |= ((codes[nib + static_cast<size_t>(b - 4) * plane + i / 8] >> (i % 8)) & 1u) << b;
    }
  }
  return q;
}

// Decodes one group; Accumulate adds the decoded value to out (two roundings: decode, then add).
template <bool Accumulate>
inline void decodeGroupScalar(GroupMeta m, const uint8_t* codes, size_t r, int bits, float* out) {
  if (m.scale == 0) {
    const uint32_t lo = static_cast<uint32_t>(codes[0]) | (static_cast<uint32_t>(codes[1]) << 8);
    const float v = bitsFloat((static_cast<uint32_t>(m.zero) << 16) | lo);
    for (size_t i = 0; i < r; ++i) {
      if constexpr (Accumulate) {
        out[i] = out[i] + v;
      } else {
        out[i] = v;
      }
    }
    return;
  }
  const unsigned L = 1u << bits;
  const bool flagged = (m.scale & kScaleFlag) != 0;
  const float s = bf16Value(static_cast<uint16_t>(m.scale & 0x7FFFu));
  const float z = bf16Value(m.zero);
  for (size_t i = 0; i < r; ++i) {
    const unsigned q = codeAt(codes, i, r, bits);
    float v;
    if (flagged && q >= L - 3) {
      v = q == L - 1 ? bitsFloat(0x7FC00000u) : (q == L - 2 ? kInf : -kInf);
    } else {
      v = fmaF(static_cast<float>(q), s, z);
    }
    if constexpr (Accumulate) {
      out[i] = out[i] + v;
    } else {
      out[i] = v;
    }
  }
}

}  // namespace
}  // namespace flashring::quant::detail
