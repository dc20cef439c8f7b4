// The per-element and per-group math of the group-wise codecs (quant.h), shared by the CPU kernels and the
// CUDA kernels: every function here is __host__ __device__ under nvcc and plain inline C++ otherwise, so the
// CPU test suite checks the very code the GPU runs, even on machines without a GPU.
//
// What lives here: bf16 rounding, the wire-layout arithmetic, the metadata rules (paramsFromStats), the code
// of one element (codeOf) and its packing into the group's bytes (packedCodeByte), the decoding of one code
// (decodeCode), and the whole encoder and decoder of one group with spikes, rotation and clipping
// (encodeGroupRef / decodeGroupRef). The CPU scalar kernels are written with these functions; the SIMD
// kernels reproduce the per-element formulas lane by lane; the CUDA kernels call them per group or per
// element. Anything that is decided once per group is computed by this one code, which is why the wire
// bytes agree bit for bit everywhere.
//
// Rules of this header (see also codec_internal.h): internal linkage only (anonymous namespace: the SIMD
// translation units are compiled with -mavx2/-mavx512*, and a weak inline symbol instantiated there could be
// picked for baseline code); no std:: inline function or template (compiler builtins on the host, CUDA
// intrinsics on the device); default fp environment (round to nearest even, no flush-to-zero). Device code
// must be compiled with --fmad=false (flashring_cuda is): a contracted a*b+c would round differently.
#pragma once

#include <cfloat>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "common/host_device.h"
#include "flashring/quant.h"

namespace flashring::quant::detail {
namespace {

// ---------------------------------------------------------------------------------------------------------
// Internal-linkage replacements for std::min/max/clamp (same semantics, NaN and signed zeros included)
// and the <cmath> functions used here.

template <class T>
FR_HD T minOf(T a, T b) {
  return b < a ? b : a;
}
template <class T>
FR_HD T maxOf(T a, T b) {
  return a < b ? b : a;
}
template <class T>
FR_HD T clampOf(T v, T lo, T hi) {
  return v < lo ? lo : (hi < v ? hi : v);
}
#if defined(__CUDA_ARCH__)
FR_HD float fmaF(float a, float b, float c) { return __fmaf_rn(a, b, c); }
FR_HD float nearbyintF(float x) { return rintf(x); }  // device: always round half to even
FR_HD double nearbyintD(double x) { return rint(x); }
FR_HD bool isNan(float x) { return isnan(x); }
FR_HD bool isInf(float x) { return isinf(x); }
FR_HD bool isFinite(float x) { return isfinite(x); }
FR_HD float fabsF(float x) { return fabsf(x); }
FR_HD double sqrtD(double x) { return __dsqrt_rn(x); }
FR_HD uint32_t floatBits(float f) { return __float_as_uint(f); }
FR_HD float bitsFloat(uint32_t u) { return __uint_as_float(u); }
#else
FR_HD float fmaF(float a, float b, float c) { return __builtin_fmaf(a, b, c); }  // one rounding
FR_HD float nearbyintF(float x) { return __builtin_nearbyintf(x); }              // current mode: nearest even
FR_HD double nearbyintD(double x) { return __builtin_nearbyint(x); }
FR_HD bool isNan(float x) { return __builtin_isnan(x); }
FR_HD bool isInf(float x) { return __builtin_isinf(x); }
FR_HD bool isFinite(float x) { return __builtin_isfinite(x); }
FR_HD float fabsF(float x) { return __builtin_fabsf(x); }
FR_HD double sqrtD(double x) { return __builtin_sqrt(x); }  // IEEE: correctly rounded
FR_HD uint32_t floatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
FR_HD float bitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
#endif
FR_HD uint64_t doubleBits(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(d));
#else
  uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  return u;
#endif
}
inline constexpr float kInf = __builtin_huge_valf();
FR_HD float infF() { return bitsFloat(0x7F800000u); }

// ---------------------------------------------------------------------------------------------------------
// bf16.

FR_HD float bf16Value(uint16_t b) { return bitsFloat(static_cast<uint32_t>(b) << 16); }

// Round to nearest even; NaN keeps its sign and top payload bits and is made quiet. Large finite values
// round to Inf exactly as IEEE rounding does.
FR_HD uint16_t bf16Rne(float f) {
  const uint32_t u = floatBits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  const uint32_t rounded = u + 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

// Largest bf16 <= f, for finite f; saturates at the lowest finite bf16 (-0x1.FEp127) instead of -Inf.
FR_HD uint16_t bf16Down(float f) {
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

FR_HD uint16_t bf16UpAtLeastMin(double d) {
  if (!(d > 0x1p-126)) return kMinScaleBits;
  uint64_t u = doubleBits(d);
  u = (u + ((uint64_t{1} << 45) - 1)) >> 45;                      // (double exponent << 7) | 7 fraction bits
  return static_cast<uint16_t>(u - (uint64_t{1023 - 127} << 7));  // rebias the exponent to fp32's
}

#if !defined(__CUDACC__)
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
#else
// Under nvcc (host and device side of a .cu file): the IEEE division itself, which the table above equals
// bit for bit (RecipTableEqualsDivision in the unit tests).
FR_HD float bf16Reciprocal(uint16_t sb) { return 1.0f / bf16Value(sb); }
#endif

// ---------------------------------------------------------------------------------------------------------
// Layout.

FR_HD size_t numGroups(size_t n, size_t g) { return (n + g - 1) / g; }
// INT5/INT6 codes are split into planes (see quant.h): a nibble plane of ceil(r/2) bytes (the INT4 layout of
// the low 4 bits), then bits-4 bit planes of ceil(r/8) bytes each. For a full group (g a multiple of 32)
// that is g*bits/8 bytes, as for INT4 and INT8.
FR_HD bool isPlanar(int bits) { return bits == 5 || bits == 6; }
FR_HD size_t nibblePlaneBytes(size_t r) { return (r + 1) / 2; }
FR_HD size_t bitPlaneBytes(size_t r) { return (r + 7) / 8; }
FR_HD size_t fullGroupCodeBytes(size_t g, int bits) { return g * static_cast<size_t>(bits) / 8; }
FR_HD size_t tailCodeBytes(size_t r, int bits) {
  if (isPlanar(bits)) return maxOf<size_t>(2, nibblePlaneBytes(r) + static_cast<size_t>(bits - 4) * bitPlaneBytes(r));
  return maxOf<size_t>(2, (r * static_cast<size_t>(bits) + 7) / 8);
}
FR_HD size_t groupCodeBytes(size_t r, size_t g, int bits) {
  return r == g ? fullGroupCodeBytes(g, bits) : tailCodeBytes(r, bits);
}
// Offset of group q's codes from the start of the code section (every group before q is full).
FR_HD size_t groupCodeOffset(size_t q, size_t g, int bits) { return q * fullGroupCodeBytes(g, bits); }
// Spike section (Config::spikes > 0): uint16 index[G][k], then fp32 value[G][k].
FR_HD size_t spikeSectionBytes(size_t n, size_t g, int spikes) {
  return numGroups(n, g) * static_cast<size_t>(spikes) * (sizeof(uint16_t) + sizeof(float));
}
// Bytes of a run without its spike section (the offset of the spike section).
FR_HD size_t codedBytes(size_t n, size_t g, int bits) {
  if (n == 0) return 0;
  const size_t full = n / g, r = n % g;
  return numGroups(n, g) * sizeof(GroupMeta) + full * fullGroupCodeBytes(g, bits) +
         (r != 0 ? tailCodeBytes(r, bits) : 0);
}
inline size_t spikeSectionSize(size_t n, const Config& cfg) {
  return spikeSectionBytes(n, static_cast<size_t>(cfg.group_size), cfg.spikes);
}
inline size_t encodedSize(size_t n, const Config& cfg) {
  if (n == 0) return 0;
  return codedBytes(n, static_cast<size_t>(cfg.group_size), cfg.bits) + spikeSectionSize(n, cfg);
}

FR_HD void storeMeta(uint8_t* p, GroupMeta m) {
  p[0] = static_cast<uint8_t>(m.scale & 0xFFu);  // little-endian, as the wire layout pins
  p[1] = static_cast<uint8_t>(m.scale >> 8);
  p[2] = static_cast<uint8_t>(m.zero & 0xFFu);
  p[3] = static_cast<uint8_t>(m.zero >> 8);
}
FR_HD GroupMeta loadMeta(const uint8_t* p) {
  GroupMeta m;
  m.scale = static_cast<uint16_t>(p[0] | (p[1] << 8));
  m.zero = static_cast<uint16_t>(p[2] | (p[3] << 8));
  return m;
}
// Unaligned little-endian loads and stores of the spike section (it may start at an odd offset).
FR_HD void storeU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xFFu);
  p[1] = static_cast<uint8_t>(v >> 8);
}
FR_HD uint16_t loadU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
FR_HD void storeU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>((v >> (8 * i)) & 0xFFu);
}
FR_HD uint32_t loadU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
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

FR_HD GroupParams constantParams(uint32_t bits) {
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
FR_HD GroupParams paramsFromStats(float mn, float mx, bool has_nonfinite, int bits, bool symmetric) {
  const int L = 1 << bits;
  if (!(mn <= mx)) mn = mx = 0.0f;  // no finite value at all
  if (mn == 0.0f) mn = 0.0f;        // -0.0 -> +0.0
  if (mx == 0.0f) mx = 0.0f;
  GroupParams p;
  if (symmetric && !has_nonfinite) {
    const int half = L / 2;
    const float amax = maxOf(fabsF(mn), fabsF(mx));  // not max(-mn, mx): -(+0) is -0
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
  if (mx > 0x1p126f || range > 0x1p126) {
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

// Statistics of x[0, r) against the group's first value bits `first` (a slice of a group: the parallel
// decomposition of the CUDA kernels combines slices with combineStats).
FR_HD GroupStats sliceStats(const float* x, size_t r, uint32_t first) {
  GroupStats st;
  st.mn = infF();
  st.mx = -infF();
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
// Statistics of the union of two slices (any order, any split: equal to sliceStats over the whole group up
// to the sign of a zero min or max, which paramsFromStats normalises).
FR_HD GroupStats combineStats(GroupStats a, const GroupStats& b) {
  a.mn = b.mn < a.mn ? b.mn : a.mn;
  a.mx = b.mx > a.mx ? b.mx : a.mx;
  a.has_nonfinite = a.has_nonfinite || b.has_nonfinite;
  a.constant = a.constant && b.constant;
  return a;
}

FR_HD GroupStats scalarStats(const float* x, size_t r) { return sliceStats(x, r, floatBits(x[0])); }

// Metadata of a group from its statistics (x0: its first value); force_flag encodes a finite group flagged
// (rotation's overflow fallback, see quant.h).
FR_HD GroupParams planFromStats(const GroupStats& st, uint32_t first_bits, int bits, bool symmetric,
                                bool force_flag = false) {
  if (st.constant && !st.has_nonfinite && !force_flag) return constantParams(first_bits);
  return paramsFromStats(st.mn, st.mx, st.has_nonfinite || force_flag, bits, symmetric);
}

inline GroupParams planGroup(const float* x, size_t r, const Config& cfg) {
  return planFromStats(scalarStats(x, r), floatBits(x[0]), cfg.bits, cfg.symmetric);
}

// The spike rule of quant.h for an unrotated group: copy[pos[e]] = the first finite non-spike value of x[0, r)
// for the m spike positions pos (ascending).
FR_HD void replaceSpikes(const float* x, size_t r, const uint16_t* pos, int m, float* copy) {
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

FR_HD int fastAsymCode(float x, float z, float inv, int qmax) {
  const float t = (x - z) * inv;
  const float r = nearbyintF(t);
  return static_cast<int>(minOf(maxOf(r, 0.0f), static_cast<float>(qmax)));
}

FR_HD int fastSymCode(float x, float inv, int L) {
  const float r = nearbyintF(x * inv);
  const float q = r + static_cast<float>(L / 2);  // exact: |r| <= L/2 here
  return static_cast<int>(minOf(maxOf(q, 1.0f), static_cast<float>(L - 1)));
}

FR_HD int codeOf(float x, const GroupParams& p, int L) {
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

// Byte j (< groupCodeBytes) of the codes of a non-constant group of r values, from the codes of its values
// q[0, r) (each < 2^bits). Bytes that no value uses are zero. This is the packing of encodeGroupScalar, one
// output byte at a time (so that parallel code can write bytes independently).
FR_HD uint8_t packedCodeByte(const uint8_t* q, size_t r, int bits, size_t j) {
  if (bits == 8) return j < r ? q[j] : uint8_t{0};
  const size_t nib = nibblePlaneBytes(r);
  if (j < nib) {
    const unsigned lo = q[2 * j] & 0xFu;
    const unsigned hi = 2 * j + 1 < r ? (q[2 * j + 1] & 0xFu) : 0u;
    return static_cast<uint8_t>(lo | (hi << 4));
  }
  if (bits == 4) return 0;
  const size_t plane = bitPlaneBytes(r);
  const size_t k = j - nib, b = 4 + k / plane, byte = k % plane;
  if (b >= static_cast<size_t>(bits)) return 0;
  unsigned out = 0;
  for (size_t i = byte * 8; i < r && i < byte * 8 + 8; ++i) out |= ((q[i] >> b) & 1u) << (i % 8);
  return static_cast<uint8_t>(out);
}

// Encodes one group of r values (1 <= r <= g) into `codes` (code_bytes bytes) with the given parameters.
// Used by the scalar reference for every group and by the SIMD kernels for non-Fast and tail groups.
FR_HD void encodeGroupScalar(const float* x, size_t r, const GroupParams& p, int bits, uint8_t* codes,
                             size_t code_bytes) {
  for (size_t j = 0; j < code_bytes; ++j) codes[j] = 0;
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
FR_HD unsigned codeAt(const uint8_t* codes, size_t i, size_t r, int bits) {
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

// The value of code q in a non-constant group (meta.scale != 0).
FR_HD float decodeCode(GroupMeta m, unsigned q, int bits) {
  const unsigned L = 1u << bits;
  if ((m.scale & kScaleFlag) != 0 && q >= L - 3)
    return q == L - 1 ? bitsFloat(0x7FC00000u) : (q == L - 2 ? infF() : -infF());
  return fmaF(static_cast<float>(q), bf16Value(static_cast<uint16_t>(m.scale & 0x7FFFu)), bf16Value(m.zero));
}
// The value every element of a constant group (meta.scale == 0) decodes to.
FR_HD float constantValue(GroupMeta m, const uint8_t* codes) {
  const uint32_t lo = static_cast<uint32_t>(codes[0]) | (static_cast<uint32_t>(codes[1]) << 8);
  return bitsFloat((static_cast<uint32_t>(m.zero) << 16) | lo);
}
// Value i of a group of r values.
FR_HD float decodeAt(GroupMeta m, const uint8_t* codes, size_t i, size_t r, int bits) {
  if (m.scale == 0) return constantValue(m, codes);
  return decodeCode(m, codeAt(codes, i, r, bits), bits);
}

// Decodes one group; Accumulate adds the decoded value to out (two roundings: decode, then add).
template <bool Accumulate>
FR_HD void decodeGroupScalar(GroupMeta m, const uint8_t* codes, size_t r, int bits, float* out) {
  for (size_t i = 0; i < r; ++i) {
    const float v = decodeAt(m, codes, i, r, bits);
    if constexpr (Accumulate) {
      out[i] = out[i] + v;
    } else {
      out[i] = v;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Spikes, rotation, clipping: the reference rules of quant.h, one group at a time.

// Spikes of one group of r values (the rule of quant.h: finite values of largest |x|, ties to the lower index,
// at most min(k, f - 1) of them): writes their positions, ascending, to pos and returns how many.
FR_HD int selectSpikesRef(const float* x, size_t r, int k, uint16_t* pos) {
  uint32_t mag[kMaxSpikes];
  uint16_t at[kMaxSpikes];
  int count = 0;
  size_t finite = 0;
  for (size_t i = 0; i < r; ++i) {
    const uint32_t m = floatBits(x[i]) & 0x7FFFFFFFu;
    if (m >= 0x7F800000u) continue;
    ++finite;
    if (count == k && m <= mag[k - 1]) continue;  // strict: an equal later value does not displace
    int p = count < k ? count++ : k - 1;
    while (p > 0 && mag[p - 1] < m) {
      mag[p] = mag[p - 1];
      at[p] = at[p - 1];
      --p;
    }
    mag[p] = m;
    at[p] = static_cast<uint16_t>(i);
  }
  int used = count;
  if (finite == 0) {
    used = 0;
  } else if (static_cast<size_t>(used) >= finite) {
    used = static_cast<int>(finite) - 1;
  }
  for (int a = 0; a < used; ++a) {  // insertion sort by position
    const uint16_t v = at[a];
    int b = a;
    for (; b > 0 && pos[b - 1] > v; --b) pos[b] = pos[b - 1];
    pos[b] = v;
  }
  return used;
}

// d_i of the rotation (quant.h): -1 where bit 0 of mix(i) is 1.
FR_HD float rotationSignOf(uint32_t i) {
  uint32_t h = i * 0x9E3779B1u;
  h = (h ^ (h >> 15)) * 0x85EBCA77u;
  h = h ^ (h >> 13);
  return (h & 1u) ? -1.0f : 1.0f;
}
// c of the rotation: the fp32 nearest 1/sqrt(g).
FR_HD float rotationFactorOf(size_t g) { return static_cast<float>(1.0 / sqrtD(static_cast<double>(g))); }

// Forward y = c * H * (D * v), inverse v = D * (c * H * y) + 0.0, in place (g a power of two).
FR_HD void hadamardRotateRef(float* v, size_t g, bool inverse) {
  const float c = rotationFactorOf(g);
  if (!inverse)
    for (size_t i = 0; i < g; ++i) v[i] *= rotationSignOf(static_cast<uint32_t>(i));
  for (size_t h = 1; h < g; h <<= 1) {
    for (size_t j0 = 0; j0 < g; j0 += 2 * h) {
      for (size_t j = j0; j < j0 + h; ++j) {
        const float a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
    }
  }
  for (size_t i = 0; i < g; ++i) v[i] *= c;
  if (inverse)  // + 0.0f: -0.0 (a zero times a negative sign) becomes +0.0, nothing else changes
    for (size_t i = 0; i < g; ++i) v[i] = v[i] * rotationSignOf(static_cast<uint32_t>(i)) + 0.0f;
}

FR_HD bool allFiniteRef(const float* v, size_t r) {
  uint32_t bad = 0;
  for (size_t i = 0; i < r; ++i) bad |= static_cast<uint32_t>((floatBits(v[i]) & 0x7F800000u) == 0x7F800000u);
  return bad == 0;
}

// The clipping search's squared error of one candidate (quant.h: 8 lane sums by fma, then a fixed tree).
FR_HD float groupErrorRef(const float* v, size_t r, const GroupParams& p, int bits) {
  const int L = 1 << bits;
  float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (size_t i = 0; i < r; ++i) {
    const int q = codeOf(v[i], p, L);
    const float d = fmaF(static_cast<float>(q), p.s, p.z) - v[i];
    a[i % 8] = fmaF(d, d, a[i % 8]);
  }
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

inline constexpr int kClipCandidates = 6;  // c = 16/16 .. 11/16 (quant.h)

// Candidate k (1..5) of the clipping search of a Fast group with statistics mn, mx.
FR_HD GroupParams clipCandidate(int k, float mnf, float mxf, int bits, bool symmetric) {
  const double mn = mnf, mx = mxf;
  const double mid = 0.5 * (mn + mx), half = 0.5 * (mx - mn);
  const double c = (16 - k) / 16.0;
  const float lo = symmetric ? static_cast<float>(mn * c) : static_cast<float>(mid - c * half);
  const float hi = symmetric ? static_cast<float>(mx * c) : static_cast<float>(mid + c * half);
  return paramsFromStats(lo, hi, false, bits, symmetric);
}

// The clipping search (quant.h, "Clipping"), scalar: the parameters of the smallest squared error.
FR_HD GroupParams clipSearchRef(const float* v, size_t r, const GroupParams& p0, float mn, float mx, int bits,
                                bool symmetric) {
  if (p0.kind != GroupKind::Fast) return p0;
  GroupParams best = p0;
  float best_err = groupErrorRef(v, r, p0, bits);
  for (int k = 1; k < kClipCandidates; ++k) {
    const GroupParams c = clipCandidate(k, mn, mx, bits, symmetric);
    if (c.kind != GroupKind::Fast) continue;
    const float e = groupErrorRef(v, r, c, bits);
    if (e < best_err) {
      best = c;
      best_err = e;
    }
  }
  return best;
}

// The reference encoder of one group, every option included: the r values xg of group q (r == g unless it is
// the tail), `buf` scratch of r floats; writes the metadata (4 bytes), the codes (groupCodeBytes) and, with
// spikes > 0, the group's spikes entries idx[0, spikes) (uint16) and val[0, spikes) (fp32 bits).
FR_HD void encodeGroupRef(const float* xg, size_t r, size_t g, int bits, bool symmetric, int spikes, bool rotate,
                          bool clip, float* buf, uint8_t* meta, uint8_t* codes, uint8_t* idx, uint8_t* val) {
  uint16_t pos[kMaxSpikes];
  int m = 0;
  for (size_t i = 0; i < r; ++i) buf[i] = xg[i];
  if (spikes > 0) {
    m = selectSpikesRef(xg, r, spikes, pos);
    for (int e = 0; e < spikes; ++e) {
      storeU16(idx + 2 * e, e < m ? pos[e] : kNoSpike);
      storeU32(val + 4 * e, e < m ? floatBits(xg[pos[e]]) : 0u);
    }
  }
  bool rotated = false, force_flag = false;
  if (rotate && r == g && allFiniteRef(xg, r)) {
    for (int e = 0; e < m; ++e) buf[pos[e]] = 0.0f;
    hadamardRotateRef(buf, g, false);
    if (allFiniteRef(buf, g)) {
      rotated = true;
    } else {  // |x| near FLT_MAX: encode the group as it is, flagged so that the decoder does not rotate it
      for (size_t i = 0; i < r; ++i) buf[i] = xg[i];
      force_flag = true;
    }
  }
  if (!rotated) replaceSpikes(xg, r, pos, m, buf);
  const GroupStats st = scalarStats(buf, r);
  GroupParams p = planFromStats(st, floatBits(buf[0]), bits, symmetric, force_flag);
  if (clip) p = clipSearchRef(buf, r, p, st.mn, st.mx, bits, symmetric);
  storeMeta(meta, p.meta);
  encodeGroupScalar(buf, r, p, bits, codes, groupCodeBytes(r, g, bits));
}

// The reference decoder of one group (the inverse of encodeGroupRef): out[i] = decoded (or out[i] + decoded
// with accumulate). Spike indices must have been checked (inside the group or kNoSpike). buf: r floats.
FR_HD void decodeGroupRef(const uint8_t* meta_p, const uint8_t* codes, size_t r, size_t g, int bits, int spikes,
                          bool rotate, const uint8_t* idx, const uint8_t* val, float* buf, float* out,
                          bool accumulate) {
  const GroupMeta m = loadMeta(meta_p);
  for (size_t i = 0; i < r; ++i) buf[i] = decodeAt(m, codes, i, r, bits);
  if (rotate && r == g && (m.scale & kScaleFlag) == 0) hadamardRotateRef(buf, g, true);
  for (int e = 0; e < spikes; ++e) {
    const uint16_t p = loadU16(idx + 2 * e);
    if (p != kNoSpike) buf[p] = bitsFloat(loadU32(val + 4 * e));
  }
  for (size_t i = 0; i < r; ++i) out[i] = accumulate ? out[i] + buf[i] : buf[i];
}

}  // namespace
}  // namespace flashring::quant::detail
