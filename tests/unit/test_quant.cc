// Tests of the group-wise codecs (include/flashring/quant.h): wire layout, error bounds, exact constant
// groups, NaN/Inf positions, and bit-for-bit agreement of every SIMD version with the scalar reference.
// SIMD versions the CPU lacks are skipped with a message (AVX-512 on most development machines).
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "flashring/error.h"
#include "flashring/quant.h"
#include "quant/cpu/codec_internal.h"  // resetIsaSelectionForTesting

namespace flashring::quant {
namespace {

// ------------------------------------------------------------------------------------------------------
// Helpers (an independent re-statement of the layout, not the library's own arithmetic).

uint32_t bitsOf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float fromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float bf16(uint16_t b) { return fromBits(static_cast<uint32_t>(b) << 16); }

size_t groupsOf(size_t n, const Config& c) { return (n + c.group_size - 1) / c.group_size; }
size_t fullCodeBytes(const Config& c) { return static_cast<size_t>(c.group_size) * c.bits / 8; }

GroupMeta metaAt(const std::vector<uint8_t>& buf, size_t k) {
  GroupMeta m;
  std::memcpy(&m, buf.data() + k * sizeof(GroupMeta), sizeof m);
  return m;
}
const uint8_t* codesAt(const std::vector<uint8_t>& buf, size_t n, const Config& c, size_t k) {
  return buf.data() + groupsOf(n, c) * sizeof(GroupMeta) + k * fullCodeBytes(c);
}
// Code bytes of a group of r values (quant.h): INT8 one byte a value, INT4 two a byte, INT5/INT6 a nibble
// plane of ceil(r/2) bytes then bits-4 bit planes of ceil(r/8) bytes; at least 2 bytes.
size_t groupCodeBytes(size_t r, int bits) {
  const size_t b = (bits == 5 || bits == 6) ? (r + 1) / 2 + static_cast<size_t>(bits - 4) * ((r + 7) / 8)
                                            : (r * static_cast<size_t>(bits) + 7) / 8;
  return std::max<size_t>(2, b);
}
unsigned codeOf(const std::vector<uint8_t>& buf, size_t n, const Config& c, size_t i) {
  const size_t k = i / c.group_size, j = i % c.group_size;
  const size_t r = std::min<size_t>(c.group_size, n - k * c.group_size);
  const uint8_t* codes = codesAt(buf, n, c, k);
  if (c.bits == 8) return codes[j];
  unsigned q = (codes[j / 2] >> (4 * (j % 2))) & 0xFu;
  for (int b = 4; b < c.bits; ++b) {
    q |= ((codes[(r + 1) / 2 + static_cast<size_t>(b - 4) * ((r + 7) / 8) + j / 8] >> (j % 8)) & 1u) << b;
  }
  return q;
}

std::vector<Isa> supportedIsas() {
  std::vector<Isa> v{Isa::Scalar};
  if (isaSupported(Isa::Avx2)) v.push_back(Isa::Avx2);
  if (isaSupported(Isa::Avx512)) v.push_back(Isa::Avx512);
  return v;
}
std::vector<Isa> simdIsas() {
  std::vector<Isa> v;
  if (isaSupported(Isa::Avx2)) v.push_back(Isa::Avx2);
  if (isaSupported(Isa::Avx512)) v.push_back(Isa::Avx512);
  return v;
}

constexpr uint8_t kGuard = 0xA5;
constexpr size_t kGuardBytes = 64;

// Encodes with `isa`; the buffer is pre-filled with `fill` so unwritten bytes show up in comparisons, and
// guard bytes past encodedBytes() must stay untouched.
std::vector<uint8_t> encode(Isa isa, const std::vector<float>& x, const Config& c, uint8_t fill = 0xCD) {
  const size_t bytes = encodedBytes(x.size(), c);
  std::vector<uint8_t> buf(bytes + kGuardBytes, fill);
  std::memset(buf.data() + bytes, kGuard, kGuardBytes);
  quantize(isa, x.data(), x.size(), c, buf.data());
  for (size_t i = bytes; i < buf.size(); ++i) {
    EXPECT_EQ(buf[i], kGuard) << "quantize wrote past encodedBytes at +" << (i - bytes) << " isa " << isaName(isa);
  }
  buf.resize(bytes);
  return buf;
}

std::vector<float> decode(Isa isa, const std::vector<uint8_t>& buf, size_t n, const Config& c) {
  std::vector<float> out(n + 16, fromBits(0x7FBADBADu));
  dequantize(isa, buf.data(), n, c, out.data());
  for (size_t i = n; i < out.size(); ++i) {
    EXPECT_EQ(bitsOf(out[i]), 0x7FBADBADu) << "dequantize wrote past n, isa " << isaName(isa);
  }
  out.resize(n);
  return out;
}

::testing::AssertionResult sameBits(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes " << a.size() << " vs " << b.size();
  for (size_t i = 0; i < a.size(); ++i) {
    if (bitsOf(a[i]) != bitsOf(b[i])) {
      return ::testing::AssertionFailure() << "element " << i << ": " << a[i] << " (0x" << std::hex << bitsOf(a[i])
                                           << ") vs " << b[i] << " (0x" << bitsOf(b[i]) << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult sameBytes(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes " << a.size() << " vs " << b.size();
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i]) {
      return ::testing::AssertionFailure() << "byte " << i << ": 0x" << std::hex << int(a[i]) << " vs 0x" << int(b[i]);
    }
  }
  return ::testing::AssertionSuccess();
}

// Checks every decoded value against its group's stored metadata:
//  constant group  -> bit-exact;  NaN -> NaN;  +-Inf -> same Inf;
//  finite          -> |y - x| <= s/2 plus slack for the fp32 arithmetic of encode and decode: the code is
//                     computed from (x - z) * (1/s), three roundings of relative size 2^-24 on a value of at
//                     most qmax, i.e. < 1e-4 * s; the decode fma rounds once (half an ulp of |y|).
//  wide_ok         -> allow s instead of s/2 (groups at the edge of the fp32 range, see quant.h).
::testing::AssertionResult withinBound(const std::vector<float>& x, const std::vector<float>& y,
                                       const std::vector<uint8_t>& buf, const Config& c, bool wide_ok = false) {
  const size_t n = x.size();
  for (size_t i = 0; i < n; ++i) {
    const GroupMeta m = metaAt(buf, i / c.group_size);
    const float xi = x[i], yi = y[i];
    if (m.scale == 0) {
      if (bitsOf(xi) != bitsOf(yi)) {
        return ::testing::AssertionFailure() << "constant group, element " << i << ": " << xi << " -> " << yi;
      }
      continue;
    }
    if (std::isnan(xi)) {
      if (!std::isnan(yi)) return ::testing::AssertionFailure() << "element " << i << ": NaN -> " << yi;
      if ((m.scale & 0x8000u) == 0) return ::testing::AssertionFailure() << "NaN in a group without the flag";
      continue;
    }
    if (std::isinf(xi)) {
      if (bitsOf(xi) != bitsOf(yi))
        return ::testing::AssertionFailure() << "element " << i << ": " << xi << " -> " << yi;
      if ((m.scale & 0x8000u) == 0) return ::testing::AssertionFailure() << "Inf in a group without the flag";
      continue;
    }
    const double s = bf16(static_cast<uint16_t>(m.scale & 0x7FFFu));
    const double z = bf16(m.zero);
    if (!std::isfinite(yi)) {
      return ::testing::AssertionFailure() << "element " << i << ": finite " << xi << " decoded to " << yi;
    }
    const double err = std::fabs(static_cast<double>(yi) - static_cast<double>(xi));
    const double tol = s * ((wide_ok ? 1.0 : 0.5) + 1e-4) + 1.2e-7 * std::fabs(static_cast<double>(xi));
    if (!(err <= tol)) {
      return ::testing::AssertionFailure()
             << "element " << i << " (group " << i / c.group_size << "): x=" << xi << " y=" << yi << " err=" << err
             << " > tol=" << tol << " (s=" << s << ", z=" << z << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

// Structural invariants of every group's metadata, independent of the error bound:
//  - the flag is set exactly when the group holds a NaN or an Inf;
//  - scale == 0 only for a group of bit-identical finite values (and then zero/code bytes hold the value);
//  - otherwise s is a finite bf16 >= 2^-126 and z is finite.
::testing::AssertionResult metaInvariants(const std::vector<float>& x, const std::vector<uint8_t>& buf,
                                          const Config& c) {
  const size_t n = x.size();
  for (size_t k = 0; k < groupsOf(n, c); ++k) {
    const size_t b = k * c.group_size, e = std::min(n, b + c.group_size);
    bool nonfinite = false, same = true;
    for (size_t i = b; i < e; ++i) {
      nonfinite |= !std::isfinite(x[i]);
      same &= bitsOf(x[i]) == bitsOf(x[b]);
    }
    const GroupMeta m = metaAt(buf, k);
    const bool flag = (m.scale & 0x8000u) != 0;
    if (flag != nonfinite) {
      return ::testing::AssertionFailure() << "group " << k << ": flag " << flag << " but non-finite " << nonfinite
                                           << " (scale 0x" << std::hex << m.scale << ")";
    }
    if (m.scale == 0) {
      if (!same || nonfinite) return ::testing::AssertionFailure() << "group " << k << " encoded as constant";
      continue;
    }
    if (same && !nonfinite) return ::testing::AssertionFailure() << "constant group " << k << " not encoded as such";
    const float s = bf16(static_cast<uint16_t>(m.scale & 0x7FFFu)), z = bf16(m.zero);
    if (!(std::isfinite(s) && s >= FLT_MIN && std::isfinite(z))) {
      return ::testing::AssertionFailure() << "group " << k << ": s=" << s << " z=" << z;
    }
  }
  return ::testing::AssertionSuccess();
}

// ------------------------------------------------------------------------------------------------------
// Data.

enum class Dist { Normal, Large, Offset, Tiny, Denormal, MixedScale, Sparse };
const char* distName(Dist d) {
  switch (d) {
    case Dist::Normal:
      return "normal";
    case Dist::Large:
      return "large1e4";
    case Dist::Offset:
      return "offset1000";
    case Dist::Tiny:
      return "tiny1e-30";
    case Dist::Denormal:
      return "denormal";
    case Dist::MixedScale:
      return "mixedscale";
    case Dist::Sparse:
      return "sparse";
  }
  return "?";
}
const Dist kDists[] = {Dist::Normal,   Dist::Large,      Dist::Offset, Dist::Tiny,
                       Dist::Denormal, Dist::MixedScale, Dist::Sparse};

std::vector<float> makeData(Dist d, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> x(n);
  float scale = 1.0f;
  for (size_t i = 0; i < n; ++i) {
    switch (d) {
      case Dist::Normal:
        x[i] = normal(rng);
        break;
      case Dist::Large:
        x[i] = 1e4f * uni(rng);
        break;
      case Dist::Offset:
        x[i] = 1000.0f + 0.01f * normal(rng);
        break;
      case Dist::Tiny:
        x[i] = 1e-30f * normal(rng);
        break;
      case Dist::Denormal:
        x[i] = 1e-39f * uni(rng);
        break;
      case Dist::MixedScale:
        if (i % 32 == 0) scale = std::pow(10.0f, 40.0f * (uni(rng) + 1.0f) / 2.0f - 20.0f);
        x[i] = scale * normal(rng);
        break;
      case Dist::Sparse:
        x[i] = (rng() % 16 == 0) ? normal(rng) : 0.0f;
        break;
    }
  }
  return x;
}

const int kGroupSizes[] = {32, 64, 96, 128, 256, 4096};
const size_t kSizes[] = {1, 2, 3, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 1000, 4097, 5000};

std::vector<Config> allConfigs() {
  std::vector<Config> v;
  for (int bits : {8, 6, 5, 4}) {
    for (bool sym : {false, true}) {
      for (int g : kGroupSizes) v.push_back(Config{bits, g, sym});
    }
  }
  return v;
}

std::string label(const Config& c, size_t n, Isa isa) {
  return describe(c) + " n=" + std::to_string(n) + " isa=" + isaName(isa);
}

// ------------------------------------------------------------------------------------------------------
// Layout.

static_assert(sizeof(GroupMeta) == 4);
static_assert(offsetof(GroupMeta, scale) == 0);
static_assert(offsetof(GroupMeta, zero) == 2);
static_assert(std::is_trivially_copyable_v<GroupMeta> && std::is_standard_layout_v<GroupMeta>);

TEST(QuantLayout, EncodedBytesByHand) {
  EXPECT_EQ(encodedBytes(0, Config{8, 128, false}), 0u);
  EXPECT_EQ(encodedBytes(256, Config{8, 128, false}), 2u * 4 + 256);
  EXPECT_EQ(encodedBytes(300, Config{8, 128, false}), 3u * 4 + 256 + 44);
  EXPECT_EQ(encodedBytes(300, Config{4, 128, false}), 3u * 4 + 128 + 22);
  EXPECT_EQ(encodedBytes(301, Config{4, 128, true}), 3u * 4 + 128 + 23);
  EXPECT_EQ(encodedBytes(1, Config{8, 32, false}), 4u + 2);  // a 1-value tail still has 2 code bytes
  EXPECT_EQ(encodedBytes(1, Config{4, 32, false}), 4u + 2);
  EXPECT_EQ(encodedBytes(3, Config{4, 32, false}), 4u + 2);
  EXPECT_EQ(encodedBytes(5, Config{4, 32, false}), 4u + 3);
  EXPECT_EQ(encodedBytes(4096, Config{4, 4096, false}), 4u + 2048);
  EXPECT_EQ(encodedBytes(4u << 20, Config{8, 128, false}), (4u << 20) / 128 * 4 + (4u << 20));
  EXPECT_EQ(encodedBytes(4u << 20, Config{4, 128, false}), (4u << 20) / 128 * 4 + (2u << 20));
}

TEST(QuantLayout, Int8GroupByHand) {
  // x = 0..31: z = 0, s = bf16_up(31/255) = 1.9453125 * 2^-4 = 0x3DF9, 1/s = 8.2249...
  const Config c{8, 32, false};
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i);
  for (Isa isa : supportedIsas()) {
    const auto buf = encode(isa, x, c);
    ASSERT_EQ(buf.size(), 36u);
    EXPECT_EQ(metaAt(buf, 0).scale, 0x3DF9u) << isaName(isa);
    EXPECT_EQ(metaAt(buf, 0).zero, 0x0000u) << isaName(isa);
    EXPECT_EQ(codeOf(buf, 32, c, 0), 0u);
    EXPECT_EQ(codeOf(buf, 32, c, 1), 8u);     // 8.22
    EXPECT_EQ(codeOf(buf, 32, c, 2), 16u);    // 16.45
    EXPECT_EQ(codeOf(buf, 32, c, 3), 25u);    // 24.67
    EXPECT_EQ(codeOf(buf, 32, c, 31), 255u);  // 254.97
  }
}

TEST(QuantLayout, Int4NibbleOrder) {
  // 0, 15, 0, 15, ...: z = 0, s = 15/15 = 1 exactly; value 2i (0) low nibble, 2i+1 (15) high nibble.
  const Config c{4, 32, false};
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = (i % 2) ? 15.0f : 0.0f;
  x[4] = 3.0f;
  x[7] = 9.0f;
  for (Isa isa : supportedIsas()) {
    const auto buf = encode(isa, x, c);
    ASSERT_EQ(buf.size(), 4u + 16);
    EXPECT_EQ(metaAt(buf, 0).scale, 0x3F80u);
    EXPECT_EQ(metaAt(buf, 0).zero, 0x0000u);
    for (int b = 0; b < 16; ++b) {
      const unsigned expect = b == 2 ? 0xF3u : (b == 3 ? 0x90u : 0xF0u);
      EXPECT_EQ(buf[4 + b], expect) << "byte " << b << " isa " << isaName(isa);
    }
  }
}

TEST(QuantLayout, Int6AndInt5BitPlanesByHand) {
  // x_i = i % L over a group of 32 (L = 2^bits): z = 0, s = (L-1)/(L-1) = 1, so code i = x_i exactly.
  // Nibble plane: 16 bytes, low nibble = code of value 2j, high nibble = code of 2j+1 (low 4 bits only).
  // Then bit plane b (b = 4, 5): 4 bytes, value i's bit b in byte i/8, bit i%8.
  for (int bits : {6, 5}) {
    const unsigned L = 1u << bits;
    const Config c{bits, 32, false};
    std::vector<float> x(32);
    for (unsigned i = 0; i < 32; ++i) x[i] = static_cast<float>((i * 7 + 3) % L);
    x[0] = 0.0f;
    x[31] = static_cast<float>(L - 1);
    std::vector<uint8_t> expect(4 + 32 * static_cast<size_t>(bits) / 8, 0);
    expect[0] = 0x80, expect[1] = 0x3F;  // s = bf16 1.0; z = 0
    for (unsigned i = 0; i < 32; ++i) {
      const unsigned q = static_cast<unsigned>(x[i]);
      expect[4 + i / 2] |= static_cast<uint8_t>((q & 0xFu) << (4 * (i % 2)));
      for (int b = 4; b < bits; ++b)
        expect[4 + 16 + 4 * (b - 4) + i / 8] |= static_cast<uint8_t>(((q >> b) & 1u) << (i % 8));
    }
    // A hand-written spot check of the rule above: value 1 = 10 (0b001010) -> high nibble of byte 0 = 0xA.
    ASSERT_EQ(expect[4] >> 4, 0xAu);
    for (Isa isa : supportedIsas()) {
      const auto buf = encode(isa, x, c);
      ASSERT_EQ(buf.size(), expect.size()) << isaName(isa);
      EXPECT_TRUE(sameBytes(buf, expect)) << describe(c) << " " << isaName(isa);
      const auto y = decode(isa, buf, 32, c);
      for (size_t i = 0; i < 32; ++i) EXPECT_EQ(y[i], x[i]) << describe(c) << " " << isaName(isa) << " i=" << i;
    }
  }
  // A tail of 5 values: ceil(5/2) = 3 nibble bytes, then one byte per bit plane.
  EXPECT_EQ(encodedBytes(37, Config{6, 32, false}), 2u * 4 + 24 + 3 + 2);
  EXPECT_EQ(encodedBytes(37, Config{5, 32, false}), 2u * 4 + 20 + 3 + 1);
  EXPECT_EQ(encodedBytes(33, Config{5, 32, false}), 2u * 4 + 20 + 2);  // a 1-value tail keeps 2 bytes
}

TEST(QuantLayout, ConstantGroupBytes) {
  // 0.1f = 0x3DCCCCCD: scale 0, zero = high half, codes[0..1] = low half little-endian, rest zero.
  for (int bits : {8, 6, 5, 4}) {
    const Config c{bits, 64, false};
    const std::vector<float> x(64 + 5, 0.1f);  // one full group, one tail of 5
    for (Isa isa : supportedIsas()) {
      const auto buf = encode(isa, x, c);
      for (size_t k = 0; k < 2; ++k) {
        EXPECT_EQ(metaAt(buf, k).scale, 0u);
        EXPECT_EQ(metaAt(buf, k).zero, 0x3DCCu);
        const uint8_t* codes = codesAt(buf, x.size(), c, k);
        EXPECT_EQ(codes[0], 0xCDu);
        EXPECT_EQ(codes[1], 0xCCu);
        const size_t nbytes = k == 0 ? fullCodeBytes(c) : groupCodeBytes(5, bits);
        for (size_t b = 2; b < nbytes; ++b) EXPECT_EQ(codes[b], 0u) << "padding byte " << b;
      }
    }
  }
}

TEST(QuantLayout, NonFiniteCodesAndFlag) {
  const Config c{4, 32, false};
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i % 13);  // finite values 0..12
  x[0] = std::numeric_limits<float>::quiet_NaN();
  x[1] = INFINITY;
  x[2] = -INFINITY;
  for (Isa isa : supportedIsas()) {
    const auto buf = encode(isa, x, c);
    const GroupMeta m = metaAt(buf, 0);
    EXPECT_EQ(m.scale & 0x8000u, 0x8000u);
    EXPECT_EQ(m.scale & 0x7FFFu, 0x3F80u);  // (12 - 0) / (16 - 4) = 1
    EXPECT_EQ(m.zero, 0u);
    EXPECT_EQ(codeOf(buf, 32, c, 0), 15u);
    EXPECT_EQ(codeOf(buf, 32, c, 1), 14u);
    EXPECT_EQ(codeOf(buf, 32, c, 2), 13u);
    for (size_t i = 3; i < 32; ++i) EXPECT_EQ(codeOf(buf, 32, c, i), i % 13);
    const auto y = decode(isa, buf, 32, c);
    EXPECT_EQ(bitsOf(y[0]), 0x7FC00000u);  // canonical quiet NaN
    EXPECT_EQ(y[1], INFINITY);
    EXPECT_EQ(y[2], -INFINITY);
    for (size_t i = 3; i < 32; ++i) EXPECT_EQ(y[i], static_cast<float>(i % 13));
  }
}

TEST(QuantLayout, RoundHalfEvenCodes) {
  // Values 0..255 give z = 0 and s = 1 exactly (1/s = 1): x + 0.5 is an exact tie.
  const Config c{8, 256, false};
  std::vector<float> x(256);
  for (int i = 0; i < 256; ++i) x[i] = static_cast<float>(i);
  x[10] = 2.5f;    // -> 2
  x[11] = 3.5f;    // -> 4
  x[12] = 0.5f;    // -> 0
  x[13] = 254.5f;  // -> 254
  x[14] = 253.5f;  // -> 254
  for (Isa isa : supportedIsas()) {
    const auto buf = encode(isa, x, c);
    EXPECT_EQ(metaAt(buf, 0).scale, 0x3F80u);
    EXPECT_EQ(codeOf(buf, 256, c, 10), 2u) << isaName(isa);
    EXPECT_EQ(codeOf(buf, 256, c, 11), 4u) << isaName(isa);
    EXPECT_EQ(codeOf(buf, 256, c, 12), 0u) << isaName(isa);
    EXPECT_EQ(codeOf(buf, 256, c, 13), 254u) << isaName(isa);
    EXPECT_EQ(codeOf(buf, 256, c, 14), 254u) << isaName(isa);
  }
}

TEST(QuantLayout, SymmetricMetadata) {
  for (int bits : {8, 6, 5, 4}) {
    const int L = 1 << bits;
    const Config c{bits, 128, true};
    auto x = makeData(Dist::Normal, 128 * 8, 7);
    for (Isa isa : supportedIsas()) {
      const auto buf = encode(isa, x, c);
      for (size_t k = 0; k < 8; ++k) {
        const GroupMeta m = metaAt(buf, k);
        const float s = bf16(m.scale);
        ASSERT_EQ(m.scale & 0x8000u, 0u);
        EXPECT_EQ(bf16(m.zero), -static_cast<float>(L / 2) * s) << "z = -(L/2) s exactly";
        float amax = 0;
        for (size_t i = 0; i < 128; ++i) amax = std::max(amax, std::fabs(x[k * 128 + i]));
        EXPECT_GE(s * static_cast<float>(L / 2 - 1), amax);
        for (size_t i = 0; i < 128; ++i) {
          const unsigned q = codeOf(buf, x.size(), c, k * 128 + i);
          EXPECT_GE(q, 1u);
          EXPECT_LE(q, static_cast<unsigned>(L - 1));
        }
      }
    }
  }
}

TEST(QuantLayout, AsymmetricMetadataRoundsZDownAndSUp) {
  const Config c{8, 128, false};
  auto x = makeData(Dist::Large, 128 * 16, 11);
  const auto buf = encode(Isa::Scalar, x, c);
  for (size_t k = 0; k < 16; ++k) {
    float mn = INFINITY, mx = -INFINITY;
    for (size_t i = 0; i < 128; ++i) {
      mn = std::min(mn, x[k * 128 + i]);
      mx = std::max(mx, x[k * 128 + i]);
    }
    const GroupMeta m = metaAt(buf, k);
    const double z = bf16(m.zero), s = bf16(m.scale);
    EXPECT_LE(z, mn);
    EXPECT_GT(z, mn - std::fabs(mn) / 128.0);
    EXPECT_GE(s * 255.0, mx - z);
    EXPECT_LT(s * 255.0, (mx - z) * (1.0 + 1.0 / 128.0));
  }
}

// The metadata rules of quant.h restated independently (long double, 64-bit significand: products of a
// bf16 and a code, and differences of fp32 values of similar magnitude, are exact):
//   asymmetric: z = largest bf16 <= min, s = smallest bf16 >= 2^-126 with s * qmax >= max - z;
//   symmetric:  s = smallest bf16 >= 2^-126 with s * (L/2 - 1) >= max|x|, z = -(L/2) s.
TEST(QuantLayout, MetadataIsTheExactRoundedValue) {
  auto nextUp = [](uint16_t b) {
    return static_cast<uint16_t>((b & 0x8000u) ? (b == 0x8000u ? 0x0001u : b - 1) : b + 1);
  };
  auto nextDown = [](uint16_t b) { return static_cast<uint16_t>((b & 0x8000u) ? b + 1 : (b == 0 ? 0x8001u : b - 1)); };
  uint32_t seed = 900;
  for (const Config& c : allConfigs()) {
    if (c.group_size > 256) continue;
    const int L = 1 << c.bits;
    for (Dist d : kDists) {
      if (d == Dist::Denormal) continue;  // the floor decides there; covered by TinyGroupsUseMinimumScale
      const size_t n = static_cast<size_t>(c.group_size) * 6;
      const auto x = makeData(d, n, seed++);
      const auto buf = encode(Isa::Scalar, x, c);
      for (size_t k = 0; k < n / c.group_size; ++k) {
        float mn = INFINITY, mx = -INFINITY;
        for (size_t i = k * c.group_size; i < (k + 1) * c.group_size; ++i) {
          mn = std::min(mn, x[i]);
          mx = std::max(mx, x[i]);
        }
        const GroupMeta m = metaAt(buf, k);
        if (m.scale == 0) continue;  // constant
        const long double s = bf16(m.scale), z = bf16(m.zero);
        const long double s_below = bf16(nextDown(m.scale));
        const bool at_floor = m.scale == 0x0080u;
        if (c.symmetric) {
          const long double amax = std::max(std::fabs(mn), std::fabs(mx));
          EXPECT_GE(s * (L / 2 - 1), amax) << describe(c) << " group " << k;
          if (!at_floor) {
            EXPECT_LT(s_below * (L / 2 - 1), amax) << describe(c) << " group " << k << ": s not minimal";
          }
          EXPECT_EQ(z, -(L / 2) * s);
        } else {
          EXPECT_LE(z, static_cast<long double>(mn) + 0.0L) << describe(c) << " group " << k;
          EXPECT_GT(static_cast<long double>(bf16(nextUp(m.zero))), mn + 0.0L)
              << describe(c) << " group " << k << ": z not the largest bf16 <= min";
          const long double range = static_cast<long double>(mx) - z;
          EXPECT_GE(s * (L - 1), range) << describe(c) << " group " << k;
          if (!at_floor) {
            EXPECT_LT(s_below * (L - 1), range) << describe(c) << " group " << k << ": s not minimal";
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------------
// Round trips.

TEST(QuantRoundTrip, ErrorWithinHalfScale) {
  uint32_t seed = 1;
  for (const Config& c : allConfigs()) {
    for (size_t n : kSizes) {
      for (Dist d : kDists) {
        const auto x = makeData(d, n, seed++);
        for (Isa isa : supportedIsas()) {
          const auto buf = encode(isa, x, c);
          const auto y = decode(isa, buf, n, c);
          ASSERT_TRUE(metaInvariants(x, buf, c)) << label(c, n, isa) << " " << distName(d);
          ASSERT_TRUE(withinBound(x, y, buf, c)) << label(c, n, isa) << " " << distName(d);
        }
      }
    }
  }
}

TEST(QuantRoundTrip, LargeRunInt8AndInt4) {
  // A realistic size through the dispatching entry points; also checks the mean error is sane.
  const size_t n = (1u << 20) + 77;
  const auto x = makeData(Dist::Normal, n, 99);
  for (int bits : {8, 6, 5, 4}) {
    const Config c{bits, 128, false};
    std::vector<uint8_t> buf(encodedBytes(n, c));
    quantize(x.data(), n, c, buf.data());
    std::vector<float> y(n);
    dequantize(buf.data(), n, c, y.data());
    ASSERT_TRUE(withinBound(x, y, buf, c)) << describe(c);
    double se = 0, sx = 0;
    for (size_t i = 0; i < n; ++i) {
      se += (y[i] - x[i]) * (y[i] - x[i]);
      sx += x[i] * x[i];
    }
    // Uniform quantisation noise: NMSE ~ (range/qmax)^2/12 / var; range of 128 normals ~ 5.
    const double nmse = se / sx;
    // Each bit divides it by 4: INT4 ~1e-2, INT5 ~2.5e-3, INT6 ~6e-4, INT8 ~4e-5.
    const double expect = 1.6e-2 / std::pow(4.0, bits - 4);
    EXPECT_LT(nmse, 2.0 * expect) << describe(c);
    EXPECT_GT(nmse, 0.25 * expect) << describe(c);
  }
}

TEST(QuantRoundTrip, ConstantGroupsAreBitExact) {
  const float values[] = {0.1f,     -3.7e5f, 0.0f,  -0.0f,       1e-40f,   -1e-45f, FLT_MIN,   FLT_MAX,
                          -FLT_MAX, 1.0f,    -1.0f, 3.14159265f, 65504.0f, 1e30f,   -7.77e-20f};
  for (const Config& c : allConfigs()) {
    if (c.group_size > 256) continue;
    for (size_t n : {size_t{1}, size_t{2}, size_t{31}, static_cast<size_t>(c.group_size),
                     static_cast<size_t>(c.group_size) * 2 + 7}) {
      for (float v : values) {
        const std::vector<float> x(n, v);
        for (Isa isa : supportedIsas()) {
          const auto buf = encode(isa, x, c);
          for (size_t k = 0; k < groupsOf(n, c); ++k) ASSERT_EQ(metaAt(buf, k).scale, 0u) << v;
          ASSERT_TRUE(sameBits(decode(isa, buf, n, c), x)) << label(c, n, isa) << " value " << v;
        }
      }
    }
  }
}

TEST(QuantRoundTrip, MixedSignedZerosDecodeToZero) {
  // 0.0 and -0.0 compare equal but have different bits: not a constant group; both decode to +0.
  for (int bits : {8, 4}) {
    for (bool sym : {false, true}) {
      const Config c{bits, 32, sym};
      std::vector<float> x(40, 0.0f);
      for (size_t i = 0; i < x.size(); i += 3) x[i] = -0.0f;
      for (Isa isa : supportedIsas()) {
        const auto buf = encode(isa, x, c);
        ASSERT_TRUE(metaInvariants(x, buf, c)) << label(c, x.size(), isa);
        const auto y = decode(isa, buf, x.size(), c);
        for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(bitsOf(y[i]), 0u) << label(c, x.size(), isa) << " i=" << i;
      }
    }
  }
}

TEST(QuantRoundTrip, NanAndInfKeepTheirPositions) {
  uint32_t seed = 1000;
  for (const Config& c : allConfigs()) {
    for (size_t n : {size_t{1}, size_t{33}, size_t{129}, size_t{1000}, size_t{5000}}) {
      std::mt19937 rng(seed++);
      auto x = makeData(Dist::Large, n, seed++);
      const size_t specials = 1 + n / 50;
      for (size_t j = 0; j < specials; ++j) {
        const size_t pos = rng() % n;
        const int kind = static_cast<int>(rng() % 3);
        x[pos] = kind == 0 ? std::numeric_limits<float>::quiet_NaN() : (kind == 1 ? INFINITY : -INFINITY);
      }
      x[n - 1] = -std::numeric_limits<float>::quiet_NaN();  // also in the tail group, with the sign bit
      for (Isa isa : supportedIsas()) {
        const auto buf = encode(isa, x, c);
        const auto y = decode(isa, buf, n, c);
        ASSERT_TRUE(withinBound(x, y, buf, c)) << label(c, n, isa);
        ASSERT_TRUE(metaInvariants(x, buf, c)) << label(c, n, isa);
      }
    }
  }
}

TEST(QuantRoundTrip, AllNonFiniteAndConstantFiniteWithNan) {
  for (int bits : {8, 6, 5, 4}) {
    const Config c{bits, 32, false};
    std::vector<float> all(32);
    for (size_t i = 0; i < 32; ++i) {
      all[i] = i % 3 == 0 ? NAN : (i % 3 == 1 ? INFINITY : -INFINITY);
    }
    std::vector<float> mixed(32, 0.1f);
    mixed[5] = NAN;
    std::vector<float> inf_only(32, INFINITY);
    for (Isa isa : supportedIsas()) {
      for (const auto* x : {&all, &mixed, &inf_only}) {
        const auto buf = encode(isa, *x, c);
        ASSERT_TRUE(metaInvariants(*x, buf, c)) << isaName(isa);
        ASSERT_TRUE(withinBound(*x, decode(isa, buf, 32, c), buf, c)) << isaName(isa);
      }
    }
  }
}

TEST(QuantRoundTrip, ExtremeRangesNeverDecodeToInf) {
  // Groups at the edge of fp32: the double formula and the top-code clamp (see quant.h).
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  for (int bits : {8, 6, 5, 4}) {
    for (bool sym : {false, true}) {
      const Config c{bits, 64, sym};
      std::vector<float> wide(64 * 4);
      for (auto& v : wide) v = 3.0e38f * uni(rng);  // range > FLT_MAX
      wide[3] = FLT_MAX;
      wide[70] = -FLT_MAX;
      std::vector<float> top(64 * 2);
      for (auto& v : top) v = FLT_MAX * (0.5f + 0.5f * uni(rng));  // fma(qmax, s, z) would overflow
      top[0] = FLT_MAX;
      top[64] = 0.0f;
      top[65] = FLT_MAX;
      for (Isa isa : supportedIsas()) {
        for (const auto* x : {&wide, &top}) {
          const auto buf = encode(isa, *x, c);
          const auto y = decode(isa, buf, x->size(), c);
          ASSERT_TRUE(metaInvariants(*x, buf, c)) << label(c, x->size(), isa);
          ASSERT_TRUE(withinBound(*x, y, buf, c, /*wide_ok=*/true)) << label(c, x->size(), isa);
        }
      }
    }
  }
}

TEST(QuantRoundTrip, ValuesBelowLowestBf16Saturate) {
  // bf16 cannot hold a zero point below -0x1.FEp127: such values decode within 2^-8 relative.
  const Config c{8, 32, false};
  std::vector<float> x(32);
  for (size_t i = 0; i < 32; ++i) x[i] = -FLT_MAX * (1.0f - static_cast<float>(i) * 1e-4f);
  for (Isa isa : supportedIsas()) {
    const auto buf = encode(isa, x, c);
    EXPECT_EQ(metaAt(buf, 0).zero, 0xFF7Fu);
    const auto y = decode(isa, buf, 32, c);
    for (size_t i = 0; i < 32; ++i) {
      ASSERT_TRUE(std::isfinite(y[i]));
      EXPECT_LE(std::fabs(static_cast<double>(y[i]) - x[i]), std::fabs(static_cast<double>(x[i])) / 256.0) << i;
    }
  }
}

TEST(QuantRoundTrip, TinyGroupsUseMinimumScale) {
  const Config c{8, 32, false};
  std::vector<float> x(32);
  for (size_t i = 0; i < 32; ++i) x[i] = fromBits(static_cast<uint32_t>(i * 7));  // denormals 0..217 ulp
  for (Isa isa : supportedIsas()) {
    const auto buf = encode(isa, x, c);
    EXPECT_EQ(metaAt(buf, 0).scale, 0x0080u);  // 2^-126: 1/s stays finite
    ASSERT_TRUE(withinBound(x, decode(isa, buf, 32, c), buf, c));
  }
}

// ------------------------------------------------------------------------------------------------------
// Accumulate.

TEST(QuantAccumulate, EqualsAccPlusDequantizeBitwise) {
  uint32_t seed = 300;
  for (const Config& c : allConfigs()) {
    for (size_t n : {size_t{1}, size_t{33}, size_t{129}, size_t{1000}, size_t{5000}}) {
      auto x = makeData(Dist::Normal, n, seed++);
      x[n / 2] = NAN;  // flagged group too
      const auto acc0 = makeData(Dist::Large, n, seed++);
      for (Isa isa : supportedIsas()) {
        const auto buf = encode(isa, x, c);
        const auto y = decode(isa, buf, n, c);
        std::vector<float> expect(n), acc = acc0;
        for (size_t i = 0; i < n; ++i) expect[i] = acc0[i] + y[i];
        dequantizeAccumulate(isa, buf.data(), n, c, acc.data());
        ASSERT_TRUE(sameBits(acc, expect)) << label(c, n, isa);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------------
// SIMD == scalar, bit for bit.

void expectMatchesScalar(Isa isa) {
  uint32_t seed = 5000;
  std::vector<std::vector<float>> extra;
  {  // Special groups mixed into ordinary data: constant, signed zeros, NaN/Inf, wide, tiny.
    auto x = makeData(Dist::Normal, 4096 + 50, 42);
    for (size_t i = 0; i < 128; ++i) x[i] = 2.5f;
    for (size_t i = 128; i < 256; ++i) x[i] = (i % 2) ? 0.0f : -0.0f;
    x[300] = NAN;
    x[301] = -INFINITY;
    x[700] = INFINITY;
    for (size_t i = 1024; i < 1152; ++i) x[i] = (i % 2 ? 3e38f : -3e38f) * static_cast<float>(i % 7) / 7.0f;
    for (size_t i = 2048; i < 2176; ++i) x[i] = fromBits(static_cast<uint32_t>(i));
    x[4096 + 10] = NAN;
    extra.push_back(std::move(x));
  }
  for (const Config& c : allConfigs()) {
    std::vector<std::vector<float>> inputs = extra;
    for (size_t n : kSizes) {
      for (Dist d : kDists) inputs.push_back(makeData(d, n, seed++));
    }
    for (const auto& x : inputs) {
      const size_t n = x.size();
      const auto ref = encode(Isa::Scalar, x, c, 0xAB);
      const auto got = encode(isa, x, c, 0x5C);  // a different fill: unwritten bytes would differ
      ASSERT_TRUE(sameBytes(got, ref)) << "quantize " << label(c, n, isa);
      ASSERT_TRUE(sameBits(decode(isa, ref, n, c), decode(Isa::Scalar, ref, n, c)))
          << "dequantize " << label(c, n, isa);
      const auto acc0 = makeData(Dist::Normal, n, seed++);
      auto a = acc0, b = acc0;
      dequantizeAccumulate(isa, ref.data(), n, c, a.data());
      dequantizeAccumulate(Isa::Scalar, ref.data(), n, c, b.data());
      ASSERT_TRUE(sameBits(a, b)) << "dequantizeAccumulate " << label(c, n, isa);
    }
  }
}

TEST(QuantSimd, Avx2MatchesScalarBitForBit) {
  if (!isaSupported(Isa::Avx2)) {
    GTEST_SKIP() << "this CPU has no AVX2+FMA: the AVX2 kernels cannot run here";
  }
  expectMatchesScalar(Isa::Avx2);
}

TEST(QuantSimd, Avx512MatchesScalarBitForBit) {
  if (!isaSupported(Isa::Avx512)) {
    GTEST_SKIP() << "this CPU has no AVX-512 F/BW/VL/DQ: the AVX-512 kernels are compiled but not run here";
  }
  expectMatchesScalar(Isa::Avx512);
}

TEST(QuantSimd, DecodesArbitraryBytesLikeScalar) {
  // Decoders must agree on any input bytes, not just on what our encoder emits (random metadata too).
  std::mt19937 rng(77);
  for (Isa isa : simdIsas()) {
    for (const Config& c : allConfigs()) {
      const size_t n = static_cast<size_t>(c.group_size) * 3 + 17;
      std::vector<uint8_t> buf(encodedBytes(n, c));
      for (auto& b : buf) b = static_cast<uint8_t>(rng());
      // Keep scales finite-or-not at random, but make some groups flagged and some constant.
      buf[0] = 0;
      buf[1] = 0;      // group 0 constant
      buf[5] |= 0x80;  // group 1 flagged
      // Random scales can be NaN/Inf; NaN payloads may legitimately differ, so NaN matches any NaN here.
      const auto a = decode(isa, buf, n, c), b = decode(Isa::Scalar, buf, n, c);
      for (size_t i = 0; i < n; ++i) {
        if (std::isnan(a[i]) && std::isnan(b[i])) continue;
        ASSERT_EQ(bitsOf(a[i]), bitsOf(b[i])) << label(c, n, isa) << " i=" << i;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------------
// bf16 payload conversions.

TEST(QuantBf16, RoundToNearestEvenByHand) {
  struct Case {
    uint32_t in;
    uint16_t out;
  };
  const Case cases[] = {
      {0x3F800000u, 0x3F80u},  // 1.0
      {0x3F808000u, 0x3F80u},  // tie, even below: stays
      {0x3F818000u, 0x3F82u},  // tie, odd below: up to even
      {0x3F808001u, 0x3F81u},  // just above the tie
      {0x3F807FFFu, 0x3F80u},  // just below the tie
      {0xBF808000u, 0xBF80u},  // negative tie, even
      {0xBF818000u, 0xBF82u},  // negative tie, odd: magnitude up
      {0x7F7FFFFFu, 0x7F80u},  // FLT_MAX rounds to +Inf
      {0x7F7F7FFFu, 0x7F7Fu},  // largest value that stays finite
      {0x7F800000u, 0x7F80u},  // +Inf
      {0xFF800000u, 0xFF80u},  // -Inf
      {0x00000000u, 0x0000u},  // +0
      {0x80000000u, 0x8000u},  // -0
      {0x00008000u, 0x0000u},  // denormal tie to even (0)
      {0x00018000u, 0x0002u},  // denormal tie to even (2)
      {0x007FFFFFu, 0x0080u},  // largest denormal rounds to FLT_MIN
      {0x7FC00000u, 0x7FC0u},  // quiet NaN
      {0x7F800001u, 0x7FC0u},  // signalling NaN, payload only in the low half: stays NaN, made quiet
      {0xFFA00000u, 0xFFE0u},  // negative signalling NaN: quiet, sign and payload top kept
  };
  for (const Case& t : cases) {
    EXPECT_EQ(floatToBf16(fromBits(t.in)), t.out) << std::hex << "0x" << t.in;
    for (Isa isa : supportedIsas()) {
      // Put the case at every lane position of a vector, plus a scalar tail.
      std::vector<float> x(37, 1.0f);
      for (size_t pos = 0; pos < x.size(); ++pos) {
        std::vector<float> v = x;
        v[pos] = fromBits(t.in);
        std::vector<uint16_t> out(v.size());
        toBf16(isa, v.data(), v.size(), out.data());
        ASSERT_EQ(out[pos], t.out) << std::hex << "0x" << t.in << " pos " << std::dec << pos << " " << isaName(isa);
      }
    }
  }
  for (uint32_t b : {0x0000u, 0x8000u, 0x3F80u, 0x7F80u, 0xFF80u, 0x7FC0u, 0x0001u, 0x7F7Fu}) {
    EXPECT_EQ(bitsOf(bf16ToFloat(static_cast<uint16_t>(b))), b << 16);
  }
}

TEST(QuantBf16, SimdMatchesScalarOnRandomBits) {
  std::mt19937 rng(123);
  for (size_t n :
       {size_t{1}, size_t{7}, size_t{8}, size_t{15}, size_t{16}, size_t{17}, size_t{33}, size_t{1000}, size_t{65537}}) {
    std::vector<float> x(n);
    for (auto& v : x) v = fromBits(static_cast<uint32_t>(rng()));  // every class: NaN, Inf, denormal, ties
    for (size_t i = 0; i < n; i += 5) x[i] = fromBits((static_cast<uint32_t>(rng()) & 0xFFFF0000u) | 0x8000u);
    std::vector<uint16_t> ref(n);
    toBf16(Isa::Scalar, x.data(), n, ref.data());
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(ref[i], floatToBf16(x[i]));
    std::vector<float> wref(n), aref(n, 0.25f);
    fromBf16(Isa::Scalar, ref.data(), n, wref.data());
    fromBf16Accumulate(Isa::Scalar, ref.data(), n, aref.data());
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(bitsOf(wref[i]), static_cast<uint32_t>(ref[i]) << 16);
      if (std::isnan(x[i])) {
        ASSERT_TRUE(std::isnan(wref[i]));
      }
    }
    for (Isa isa : simdIsas()) {
      std::vector<uint16_t> out(n);
      toBf16(isa, x.data(), n, out.data());
      ASSERT_EQ(out, ref) << isaName(isa) << " n=" << n;
      std::vector<float> w(n), a(n, 0.25f);
      fromBf16(isa, ref.data(), n, w.data());
      fromBf16Accumulate(isa, ref.data(), n, a.data());
      ASSERT_TRUE(sameBits(w, wref)) << isaName(isa) << " n=" << n;
      ASSERT_TRUE(sameBits(a, aref)) << isaName(isa) << " n=" << n;
    }
  }
}

TEST(QuantBf16, RoundTripErrorAndAccumulate) {
  const auto x = makeData(Dist::Large, 1000, 3);
  std::vector<uint16_t> b(x.size());
  toBf16(x.data(), x.size(), b.data());
  std::vector<float> y(x.size()), acc(x.size(), 1.0f);
  fromBf16(b.data(), b.size(), y.data());
  fromBf16Accumulate(b.data(), b.size(), acc.data());
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_LE(std::fabs(y[i] - x[i]), std::fabs(x[i]) * (1.0f / 256.0f));  // half a bf16 ulp: 2^-8 relative
    EXPECT_EQ(bitsOf(acc[i]), bitsOf(1.0f + y[i]));
  }
}

// ------------------------------------------------------------------------------------------------------
// Arguments, configuration and dispatch.

TEST(QuantConfig, InvalidConfigsThrowNamingTheField) {
  auto expectThrowWith = [](const Config& c, const std::string& field) {
    try {
      validate(c);
      ADD_FAILURE() << "no throw for " << describe(c);
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  for (int bits : {0, 1, 2, 3, 7, 16, -8}) expectThrowWith(Config{bits, 128, false}, "bits");
  for (int g : {0, 16, 31, 33, 100, 4097, 4128, 8192, -128}) expectThrowWith(Config{8, g, false}, "group_size");
  for (int g : {32, 64, 96, 4064, 4096}) EXPECT_NO_THROW(validate(Config{4, g, false}));

  const Config bad{3, 128, false};
  std::vector<float> x(64, 1.0f), y(64);
  std::vector<uint8_t> buf(1024);
  EXPECT_THROW(encodedBytes(64, bad), InvalidArgument);
  EXPECT_THROW(quantize(x.data(), 64, bad, buf.data()), InvalidArgument);
  EXPECT_THROW(dequantize(buf.data(), 64, bad, y.data()), InvalidArgument);
  EXPECT_THROW(dequantizeAccumulate(buf.data(), 64, bad, y.data()), InvalidArgument);
}

TEST(QuantConfig, NullPointersAndEmptyRuns) {
  const Config c{8, 128, false};
  std::vector<float> x(64, 1.0f);
  std::vector<uint8_t> buf(1024);
  std::vector<uint16_t> b(64);
  for (Isa isa : supportedIsas()) {
    EXPECT_THROW(quantize(isa, nullptr, 64, c, buf.data()), InvalidArgument);
    EXPECT_THROW(quantize(isa, x.data(), 64, c, nullptr), InvalidArgument);
    EXPECT_THROW(dequantize(isa, nullptr, 64, c, x.data()), InvalidArgument);
    EXPECT_THROW(dequantize(isa, buf.data(), 64, c, nullptr), InvalidArgument);
    EXPECT_THROW(dequantizeAccumulate(isa, buf.data(), 64, c, nullptr), InvalidArgument);
    EXPECT_THROW(toBf16(isa, nullptr, 64, b.data()), InvalidArgument);
    EXPECT_THROW(fromBf16(isa, b.data(), 64, nullptr), InvalidArgument);
    EXPECT_THROW(fromBf16Accumulate(isa, nullptr, 64, x.data()), InvalidArgument);
    // n = 0 is valid and touches nothing, null pointers included.
    EXPECT_NO_THROW(quantize(isa, nullptr, 0, c, nullptr));
    EXPECT_NO_THROW(dequantize(isa, nullptr, 0, c, nullptr));
    EXPECT_NO_THROW(dequantizeAccumulate(isa, nullptr, 0, c, nullptr));
    EXPECT_NO_THROW(toBf16(isa, nullptr, 0, nullptr));
    EXPECT_NO_THROW(fromBf16(isa, nullptr, 0, nullptr));
    EXPECT_NO_THROW(fromBf16Accumulate(isa, nullptr, 0, nullptr));
  }
  try {
    quantize(Isa::Scalar, nullptr, 64, c, buf.data());
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("x"), std::string::npos) << e.what();
  }
  EXPECT_EQ(encodedBytes(0, c), 0u);
}

TEST(QuantConfig, DescribeAndIsaNames) {
  EXPECT_EQ(describe(Config{}), "int8-g128");
  EXPECT_EQ(describe(Config{4, 64, true}), "int4-g64-sym");
  EXPECT_STREQ(isaName(Isa::Scalar), "scalar");
  EXPECT_STREQ(isaName(Isa::Avx2), "avx2");
  EXPECT_STREQ(isaName(Isa::Avx512), "avx512");
}

TEST(QuantDispatch, SelectionAndOverride) {
  EXPECT_TRUE(isaSupported(Isa::Scalar));
  EXPECT_TRUE(isaSupported(bestIsa()));
  if (isaSupported(Isa::Avx512)) {
    EXPECT_EQ(bestIsa(), Isa::Avx512);
  } else if (isaSupported(Isa::Avx2)) {
    EXPECT_EQ(bestIsa(), Isa::Avx2);
  } else {
    EXPECT_EQ(bestIsa(), Isa::Scalar);
  }
  const Isa before = activeIsa();
  for (Isa isa : supportedIsas()) {
    setActiveIsa(isa);
    EXPECT_EQ(activeIsa(), isa);
    // The dispatching entry points then produce exactly that ISA's output.
    const auto x = makeData(Dist::Normal, 1000, 8);
    const Config c{4, 64, false};
    std::vector<uint8_t> buf(encodedBytes(x.size(), c));
    quantize(x.data(), x.size(), c, buf.data());
    EXPECT_TRUE(sameBytes(buf, encode(isa, x, c)));
  }
  for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
    if (!isaSupported(isa)) {
      EXPECT_THROW(setActiveIsa(isa), InvalidArgument);
      const Config c{8, 128, false};
      std::vector<float> x(128, 1.0f);
      std::vector<uint8_t> buf(1024);
      EXPECT_THROW(quantize(isa, x.data(), x.size(), c, buf.data()), InvalidArgument) << "unsupported ISA must not run";
    }
  }
  setActiveIsa(before);
}

TEST(QuantDispatch, EnvironmentVariableSelectsIsa) {
  const Isa before = activeIsa();
  const char* old = std::getenv("FLASHRING_ISA");
  const std::string saved = old ? old : "";
  auto withEnv = [](const char* value) {
    if (value) {
      setenv("FLASHRING_ISA", value, 1);
    } else {
      unsetenv("FLASHRING_ISA");
    }
    detail::resetIsaSelectionForTesting();
  };
  withEnv("scalar");
  EXPECT_EQ(activeIsa(), Isa::Scalar);
  withEnv(nullptr);
  EXPECT_EQ(activeIsa(), bestIsa());
  withEnv("");
  EXPECT_EQ(activeIsa(), bestIsa());
  for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
    withEnv(isaName(isa));
    if (isaSupported(isa)) {
      EXPECT_EQ(activeIsa(), isa);
    } else {
      EXPECT_THROW(activeIsa(), InvalidArgument) << "FLASHRING_ISA=" << isaName(isa) << " on a CPU without it";
    }
  }
  withEnv("sse9");
  try {
    activeIsa();
    ADD_FAILURE() << "FLASHRING_ISA=sse9 accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("FLASHRING_ISA"), std::string::npos) << e.what();
  }
  // setActiveIsa overrides the environment.
  setActiveIsa(Isa::Scalar);
  EXPECT_EQ(activeIsa(), Isa::Scalar);
  withEnv(old ? saved.c_str() : nullptr);
  setActiveIsa(before);
}

// ------------------------------------------------------------------------------------------------------
// Spike reserving (Config::spikes > 0).

// The spikes of one group by the rule of quant.h, restated independently: finite values by |x| descending,
// ties to the lower index (a stable sort), at most min(k, finite - 1), returned in ascending position order.
std::vector<size_t> refSpikes(const float* x, size_t r, int k) {
  std::vector<size_t> idx;
  for (size_t i = 0; i < r; ++i)
    if (std::isfinite(x[i])) idx.push_back(i);
  const size_t m = std::min<size_t>(static_cast<size_t>(k), idx.empty() ? 0 : idx.size() - 1);
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
  idx.resize(m);
  std::sort(idx.begin(), idx.end());
  return idx;
}

void putU16(std::vector<uint8_t>& v, uint16_t u) {
  v.push_back(static_cast<uint8_t>(u & 0xFF));
  v.push_back(static_cast<uint8_t>(u >> 8));
}
void putU32(std::vector<uint8_t>& v, uint32_t u) {
  for (int b = 0; b < 4; ++b) v.push_back(static_cast<uint8_t>((u >> (8 * b)) & 0xFF));
}

// The expected bytes with spikes: the scalar encoding (spikes = 0) of the copy whose spike positions hold the
// group's first finite non-spike value, then index[G][k] (0xFFFF unused), then value[G][k] (0 unused), LE.
std::vector<uint8_t> refEncodeWithSpikes(const std::vector<float>& x, const Config& c) {
  Config c0 = c;
  c0.spikes = 0;
  const size_t n = x.size(), g = static_cast<size_t>(c.group_size), k = static_cast<size_t>(c.spikes);
  std::vector<float> copy = x;
  std::vector<uint8_t> idx, val;
  for (size_t b = 0; b < n; b += g) {
    const size_t r = std::min(g, n - b);
    const auto sp = refSpikes(x.data() + b, r, c.spikes);
    for (size_t e = 0; e < k; ++e) {
      putU16(idx, e < sp.size() ? static_cast<uint16_t>(sp[e]) : uint16_t{0xFFFF});
      putU32(val, e < sp.size() ? bitsOf(x[b + sp[e]]) : 0u);
    }
    if (sp.empty()) continue;
    float repl = 0;
    for (size_t i = 0; i < r; ++i) {
      if (std::isfinite(x[b + i]) && std::find(sp.begin(), sp.end(), i) == sp.end()) {
        repl = x[b + i];
        break;
      }
    }
    for (size_t i : sp) copy[b + i] = repl;
  }
  std::vector<uint8_t> out = n == 0 ? std::vector<uint8_t>{} : encode(Isa::Scalar, copy, c0);
  out.insert(out.end(), idx.begin(), idx.end());
  out.insert(out.end(), val.begin(), val.end());
  return out;
}

// Activation-like data with massive values: `dist` plus 0..3 values of magnitude ~1e4 per 32, some NaN/Inf.
std::vector<float> spikyData(Dist d, size_t n, uint32_t seed) {
  auto x = makeData(d, n, seed);
  std::mt19937 rng(seed ^ 0x5EEDu);
  for (size_t b = 0; b < n; b += 32) {
    const unsigned count = rng() % 4;
    for (unsigned j = 0; j < count; ++j) {
      const size_t i = b + rng() % 32;
      if (i < n) x[i] = (rng() % 2 ? 1.0f : -1.0f) * (5000.0f + static_cast<float>(rng() % 10000));
    }
  }
  if (n > 40 && seed % 3 == 0) x[n / 3] = NAN;
  if (n > 40 && seed % 5 == 0) x[n / 2] = -INFINITY;
  return x;
}

std::vector<Config> spikeConfigs() {
  std::vector<Config> v;
  for (int bits : {8, 6, 5, 4}) {
    for (bool sym : {false, true}) {
      for (int g : {32, 128, 4096}) {
        for (int k : {1, 2, 4, 8}) v.push_back(Config{bits, g, sym, k});
      }
    }
  }
  return v;
}
const size_t kSpikeSizes[] = {1, 2, 3, 31, 33, 129, 1000, 9000, 3 * 4096 + 5};

TEST(QuantSpikes, WireBytesOfASmallExampleByHand) {
  // INT4 g32, k = 2, n = 34: group 0 = 0..15, 0..15 (z = 0, s = 1: codes are the values) with spikes 1000
  // at 5 and -2000 at 20 (replaced by x[0] = 0 before encoding); tail group {1.5, -3}: one spike (f - 1 = 1),
  // -3 at 1, the rest {1.5, 1.5} is a constant group.
  const Config c{4, 32, false, 2};
  std::vector<float> x(34);
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i % 16);
  x[5] = 1000.0f;
  x[20] = -2000.0f;
  x[32] = 1.5f;
  x[33] = -3.0f;
  const std::vector<uint8_t> expect = {
      0x80, 0x3F, 0x00, 0x00,                          // meta 0: s = 1, z = 0
      0x00, 0x00, 0xC0, 0x3F,                          // meta 1: constant 1.5 = 0x3FC00000
      0x10, 0x32, 0x04, 0x76, 0x98, 0xBA, 0xDC, 0xFE,  // codes 0..15, value 5 -> code 0
      0x10, 0x32, 0x50, 0x76, 0x98, 0xBA, 0xDC, 0xFE,  // codes 16..31, value 20 -> code 0
      0x00, 0x00,                                      // tail: low half of 1.5
      0x05, 0x00, 0x14, 0x00, 0x01, 0x00, 0xFF, 0xFF,  // indices: {5, 20}, {1, unused}
      0x00, 0x00, 0x7A, 0x44, 0x00, 0x00, 0xFA, 0xC4,  // values: 1000, -2000
      0x00, 0x00, 0x40, 0xC0, 0x00, 0x00, 0x00, 0x00,  // -3, unused
  };
  EXPECT_EQ(encodedBytes(34, c), expect.size());
  for (Isa isa : supportedIsas()) {
    const auto buf = encode(isa, x, c);
    EXPECT_TRUE(sameBytes(buf, expect)) << isaName(isa);
    EXPECT_TRUE(sameBits(decode(isa, buf, 34, c), x)) << isaName(isa);
  }
}

TEST(QuantSpikes, EncodedBytesAndDescribe) {
  EXPECT_EQ(encodedBytes(0, Config{4, 128, false, 1}), 0u);
  EXPECT_EQ(encodedBytes(256, Config{4, 128, false, 1}), 2u * 4 + 128 + 2 * 6);
  EXPECT_EQ(encodedBytes(300, Config{8, 128, false, 3}), 3u * 4 + 256 + 44 + 3 * 3 * 6);
  EXPECT_EQ(encodedBytes(4u << 20, Config{4, 128, false, 1}), (4u << 20) / 128 * 10 + (2u << 20));
  EXPECT_EQ(describe(Config{4, 128, false, 1}), "int4-g128-s1");
  EXPECT_EQ(describe(Config{8, 64, true, 4}), "int8-g64-sym-s4");
  EXPECT_EQ(describe(Config{4, 128, false, 0}), "int4-g128");
}

TEST(QuantSpikes, InvalidSpikeCountsThrowNamingTheField) {
  for (const Config& c : {Config{4, 128, false, -1}, Config{4, 128, false, 9}, Config{8, 32, false, 32},
                          Config{8, 32, false, 33}, Config{4, 4096, false, 4096}}) {
    try {
      validate(c);
      ADD_FAILURE() << "no throw for spikes=" << c.spikes;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("spikes"), std::string::npos) << e.what();
    }
    std::vector<float> x(64, 1.0f);
    std::vector<uint8_t> buf(4096);
    EXPECT_THROW(encodedBytes(64, c), InvalidArgument);
    EXPECT_THROW(quantize(x.data(), 64, c, buf.data()), InvalidArgument);
    EXPECT_THROW(dequantize(buf.data(), 64, c, x.data()), InvalidArgument);
  }
  for (int k = 0; k <= 8; ++k) EXPECT_NO_THROW(validate(Config{4, 32, false, k}));
}

TEST(QuantSpikes, EveryIsaMatchesTheRuleBitForBit) {
  // Bytes equal the independent restatement of the rule (which encodes with the scalar kernels), so every
  // SIMD version agrees with the scalar reference; decoding and accumulating agree bit for bit too.
  uint32_t seed = 9000;
  for (const Config& c : spikeConfigs()) {
    for (size_t n : kSpikeSizes) {
      for (Dist d : {Dist::Normal, Dist::Large, Dist::Tiny, Dist::MixedScale, Dist::Sparse}) {
        const auto x = spikyData(d, n, seed++);
        const auto expect = refEncodeWithSpikes(x, c);
        const auto acc0 = makeData(Dist::Normal, n, seed++);
        const auto ref_y = decode(Isa::Scalar, expect, n, c);
        for (Isa isa : supportedIsas()) {
          const auto buf = encode(isa, x, c, isa == Isa::Scalar ? 0xAB : 0x5C);
          ASSERT_TRUE(sameBytes(buf, expect)) << label(c, n, isa) << " " << distName(d);
          ASSERT_TRUE(sameBits(decode(isa, buf, n, c), ref_y)) << label(c, n, isa) << " " << distName(d);
          auto acc = acc0;
          dequantizeAccumulate(isa, buf.data(), n, c, acc.data());
          for (size_t i = 0; i < n; ++i) {
            ASSERT_EQ(bitsOf(acc[i]), bitsOf(acc0[i] + ref_y[i])) << label(c, n, isa) << " i=" << i;
          }
        }
      }
    }
  }
}

TEST(QuantSpikes, SpikesExactAndTheRestWithinHalfTheirScale) {
  uint32_t seed = 12000;
  for (const Config& c : spikeConfigs()) {
    for (size_t n : kSpikeSizes) {
      const auto x = spikyData(Dist::Normal, n, seed++);
      for (Isa isa : supportedIsas()) {
        const auto buf = encode(isa, x, c);
        const auto y = decode(isa, buf, n, c);
        // Spike positions decode to their fp32 bits; the other values obey the bound of quant.h against the
        // group's stored s, which was computed without the spikes (EveryIsaMatchesTheRuleBitForBit pins that
        // the metadata are the spike-free copy's; a spike of 5000+ would give s >= 300 here).
        size_t spikes = 0;
        for (size_t b = 0; b < n; b += static_cast<size_t>(c.group_size)) {
          const size_t r = std::min<size_t>(static_cast<size_t>(c.group_size), n - b);
          for (size_t i : refSpikes(x.data() + b, r, c.spikes)) {
            ASSERT_EQ(bitsOf(y[b + i]), bitsOf(x[b + i])) << label(c, n, isa) << " spike at " << b + i;
            ++spikes;
          }
        }
        // Every value (spikes trivially) within s/2 of its group's stored s, exact in constant groups.
        ASSERT_TRUE(withinBound(x, y, buf, c)) << label(c, n, isa);
        if (n >= 33) {
          EXPECT_GT(spikes, 0u);
        }
      }
    }
  }
}

TEST(QuantSpikes, MassiveActivationKeepsTheRestOfItsGroup) {
  // The motivating case (SmolLM2 layer 28): one value of ~14000 in a group of rms ~27. Without spikes INT4
  // g128 has s ~ 1000 and the other 127 values mostly decode to the same code; with one spike they keep ~4 bits.
  std::mt19937 rng(28);
  std::normal_distribution<float> normal(0.0f, 27.0f);
  const size_t n = 128 * 64;
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  for (size_t b = 0; b < n; b += 128) x[b + rng() % 128] = (rng() % 2 ? 14000.0f : -14000.0f);
  auto err = [&](int k) {
    const Config c{4, 128, false, k};
    std::vector<uint8_t> buf(encodedBytes(n, c));
    quantize(x.data(), n, c, buf.data());
    std::vector<float> y(n);
    dequantize(buf.data(), n, c, y.data());
    double se = 0, sx = 0;
    for (size_t i = 0; i < n; ++i) {
      if (std::fabs(x[i]) >= 14000.0f) continue;  // error on the ordinary values
      se += (y[i] - x[i]) * (y[i] - x[i]);
      sx += x[i] * x[i];
    }
    return std::sqrt(se / sx);
  };
  const double e0 = err(0), e1 = err(1);
  EXPECT_GT(e0, 0.5);   // the group's values are crushed
  EXPECT_LT(e1, 0.15);  // (range/15)/sqrt(12)/rms with range ~5.3 rms: ~10%
  EXPECT_LT(e1 * 5, e0) << e0 << " vs " << e1;
}

TEST(QuantSpikes, EdgeCases) {
  for (Isa isa : supportedIsas()) {
    const std::string tag = isaName(isa);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    {  // Fewer finite values than k + 1: f - 1 spikes, NaN/Inf keep their flag and positions.
      const Config c{4, 32, false, 4};
      std::vector<float> x(32, nan);
      x[3] = INFINITY;
      x[10] = 5.0f;
      x[11] = -7.0f;
      x[30] = 2.0f;
      const auto buf = encode(isa, x, c);
      EXPECT_TRUE(sameBytes(buf, refEncodeWithSpikes(x, c))) << tag;
      const size_t sec = encodedBytes(32, Config{4, 32, false, 0});
      EXPECT_EQ(buf[sec + 0], 10u) << tag;  // spikes -7 (11) and 5 (10), ascending: 10, 11; 2 stays
      EXPECT_EQ(buf[sec + 2], 11u) << tag;
      EXPECT_EQ(buf[sec + 4], 0xFFu) << tag;
      EXPECT_EQ(buf[sec + 7], 0xFFu) << tag;
      EXPECT_EQ(metaAt(buf, 0).scale & 0x8000u, 0x8000u) << tag;
      const auto y = decode(isa, buf, 32, c);
      EXPECT_EQ(y[10], 5.0f);
      EXPECT_EQ(y[11], -7.0f);
      EXPECT_EQ(y[30], 2.0f);  // the group's only non-spike finite value: z = 2, exact
      EXPECT_EQ(y[3], INFINITY);
      for (size_t i : {0, 1, 2, 4, 31}) EXPECT_TRUE(std::isnan(y[i])) << tag << " " << i;
    }
    {  // No finite value: no spikes at all.
      const Config c{8, 32, false, 2};
      std::vector<float> x(32, -INFINITY);
      x[7] = nan;
      const auto buf = encode(isa, x, c);
      const size_t sec = encodedBytes(32, Config{8, 32, false, 0});
      for (size_t b = sec; b < sec + 4; ++b) EXPECT_EQ(buf[b], 0xFFu) << tag;
      for (size_t b = sec + 4; b < buf.size(); ++b) EXPECT_EQ(buf[b], 0u) << tag;
      const auto y = decode(isa, buf, 32, c);
      EXPECT_TRUE(std::isnan(y[7]));
      EXPECT_EQ(y[8], -INFINITY);
    }
    {  // Constant group: spikes are its first k positions, everything bit-exact.
      const Config c{4, 64, false, 3};
      const std::vector<float> x(64 + 2, -0.3f);
      const auto buf = encode(isa, x, c);
      EXPECT_TRUE(sameBytes(buf, refEncodeWithSpikes(x, c))) << tag;
      EXPECT_EQ(metaAt(buf, 0).scale, 0u);
      EXPECT_EQ(metaAt(buf, 1).scale, 0u);
      EXPECT_TRUE(sameBits(decode(isa, buf, x.size(), c), x)) << tag;
    }
    {  // One massive value in zeros: the rest is a constant group, and the run round-trips exactly.
      const Config c{4, 128, false, 1};
      std::vector<float> x(128, 0.0f);
      x[77] = -14000.0f;
      const auto buf = encode(isa, x, c);
      EXPECT_EQ(metaAt(buf, 0).scale, 0u) << tag;
      EXPECT_TRUE(sameBits(decode(isa, buf, 128, c), x)) << tag;
    }
    {  // Ties go to the lower index; -0.0, subnormals and FLT_MAX come back bit for bit.
      const Config c{8, 32, false, 2};
      std::vector<float> x(32, 1.0f);
      x[3] = 7.0f;
      x[9] = -7.0f;
      x[30] = 7.0f;
      const auto buf = encode(isa, x, c);
      const size_t sec = encodedBytes(32, Config{8, 32, false, 0});
      EXPECT_EQ(buf[sec], 3u) << tag;
      EXPECT_EQ(buf[sec + 2], 9u) << tag;
      std::vector<float> z(64, 0.0f);
      z[1] = -0.0f;  // ties with every 0: index 0 and 1 are the spikes of group 0
      z[40] = fromBits(0x80000001u);
      z[50] = FLT_MAX;
      const auto bz = encode(isa, z, c);
      EXPECT_TRUE(sameBytes(bz, refEncodeWithSpikes(z, c))) << tag;
      EXPECT_TRUE(sameBits(decode(isa, bz, 64, c), z)) << tag;
    }
    {  // A one-value tail has no spike (its value is its own constant group).
      const Config c{8, 32, false, 1};
      std::vector<float> x(33, 2.0f);
      x[32] = 1e30f;
      const auto buf = encode(isa, x, c);
      EXPECT_EQ(buf[buf.size() - 10], 0xFFu);  // the tail's index entry, then 2 groups x 4 value bytes
      EXPECT_EQ(buf[buf.size() - 9], 0xFFu);
      EXPECT_EQ(buf.size(), encodedBytes(33, Config{8, 32, false, 0}) + 2 * 6);
      EXPECT_TRUE(sameBits(decode(isa, buf, 33, c), x)) << tag;
    }
  }
}

TEST(QuantSpikes, CorruptIndicesAreRejected) {
  const Config c{4, 32, false, 1};
  const auto x = spikyData(Dist::Normal, 40, 1);  // a full group and a tail of 8
  for (Isa isa : supportedIsas()) {
    auto buf = encode(isa, x, c);
    const size_t sec = encodedBytes(40, Config{4, 32, false, 0});
    std::vector<float> y(40), acc(40, 0.0f);
    for (uint16_t bad : {uint16_t{8}, uint16_t{31}, uint16_t{4096}, uint16_t{0xFFFE}}) {
      auto b = buf;
      std::memcpy(b.data() + sec + 2, &bad, 2);  // the tail group holds 8 values
      EXPECT_THROW(dequantize(isa, b.data(), 40, c, y.data()), InvalidArgument) << bad;
      EXPECT_THROW(dequantizeAccumulate(isa, b.data(), 40, c, acc.data()), InvalidArgument) << bad;
    }
    for (float v : acc) EXPECT_EQ(v, 0.0f) << "acc touched before the check";
    // A repeated index: the later value wins, in dequantize and dequantizeAccumulate alike.
    const Config c2{8, 32, false, 2};
    std::vector<float> z(32, 1.0f);
    auto b2 = encode(isa, z, c2);
    const size_t sec2 = encodedBytes(32, Config{8, 32, false, 0});
    const uint16_t i5 = 5;
    const float v1 = 10.0f, v2 = 20.0f;
    std::memcpy(b2.data() + sec2, &i5, 2);
    std::memcpy(b2.data() + sec2 + 2, &i5, 2);
    std::memcpy(b2.data() + sec2 + 4, &v1, 4);
    std::memcpy(b2.data() + sec2 + 8, &v2, 4);
    const auto dz = decode(isa, b2, 32, c2);
    EXPECT_EQ(dz[5], 20.0f);
    std::vector<float> a2(32, 0.5f);
    dequantizeAccumulate(isa, b2.data(), 32, c2, a2.data());
    EXPECT_EQ(a2[5], 20.5f);
  }
}

TEST(QuantSpikes, ZeroSpikesIsTheOriginalFormat) {
  // spikes = 0 is the default: same bytes as a Config written before the field existed.
  const auto x = spikyData(Dist::Normal, 1000, 3);
  for (Isa isa : supportedIsas()) {
    EXPECT_TRUE(sameBytes(encode(isa, x, Config{4, 128, false, 0}), encode(isa, x, Config{4, 128, false})));
    EXPECT_EQ(encodedBytes(1000, Config{4, 128, false, 0}), 8u * 4 + 7 * 64 + 52);
  }
}

// Group data for the selection tests: `kind` picks ties (few distinct magnitudes, both signs), constant or
// signed-zero groups, wide ranges with subnormals and FLT_MAX, and NaN/Inf at random places.
std::vector<float> selectionData(int kind, size_t r, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(r);
  for (size_t i = 0; i < r; ++i) {
    switch (kind % 6) {
      case 0:  // distinct magnitudes
        x[i] = normal(rng);
        break;
      case 1:  // heavy ties: magnitudes 0..3, either sign
        x[i] = static_cast<float>(rng() % 4) * (rng() % 2 ? 1.0f : -1.0f);
        break;
      case 2:  // one magnitude: every value ties (+-2, or +-0)
        x[i] = (rng() % 2 ? 1.0f : -1.0f) * (kind % 12 == 2 ? 2.0f : 0.0f);
        break;
      case 3:  // subnormals, tiny and huge values
        x[i] = fromBits(static_cast<uint32_t>(rng() % 2) << 31 |
                        static_cast<uint32_t>(rng() % 4 == 0 ? 0x7F7FFFFFu - rng() % 3 : rng() % 0x00800000u));
        break;
      case 4:  // a few massive values in normal data, some repeated
        x[i] = rng() % 16 == 0 ? (rng() % 2 ? 14000.0f : -14000.0f) : normal(rng);
        break;
      default:  // bf16-like: few mantissa bits, so many ties
        x[i] = bf16(static_cast<uint16_t>(floatToBf16(normal(rng)) & 0xFFF0u));
        break;
    }
  }
  if (kind % 5 == 1) {  // NaN/Inf at random places, sometimes most of the group
    const size_t extra = static_cast<size_t>(rng() % 3);
    const size_t bad = std::min(r, rng() % 3 == 0 ? r - std::min(r, extra) : 1 + extra);
    for (size_t j = 0; j < bad; ++j) {
      const auto u = rng() % 3;
      x[rng() % r] = u == 0 ? NAN : (u == 1 ? INFINITY : -INFINITY);
    }
  }
  return x;
}

TEST(QuantSpikes, Avx2SelectionEqualsTheScalarOne) {
  // The AVX2 spike selection (spikes_avx2.cc, used by Isa::Avx2 and Isa::Avx512) against the SSE2/scalar
  // reference (Isa::Scalar) and the rule restated by refSpikes, group by group: ties, NaN/Inf, tails
  // (r % 32 != 0, r <= k) and every k = 1..8.
  if (!isaSupported(Isa::Avx2)) GTEST_SKIP() << "no AVX2";
  std::mt19937 rng(2026);
  const size_t sizes[] = {1, 2, 3, 5, 8, 9, 16, 31, 32, 33, 40, 64, 96, 127, 128, 160, 256, 1000, 4096};
  size_t cases = 0;
  for (int k = 1; k <= kMaxSpikes; ++k) {
    for (size_t r : sizes) {
      for (int kind = 0; kind < 60; ++kind) {
        const auto x = selectionData(kind, r, rng);
        std::vector<float> copy_s(r, 1.5f), copy_a(r, -2.5f);
        uint16_t pos_s[kMaxSpikes], pos_a[kMaxSpikes];
        const int ms = detail::selectGroupSpikes(Isa::Scalar, x.data(), r, k, copy_s.data(), pos_s);
        const int ma = detail::selectGroupSpikes(Isa::Avx2, x.data(), r, k, copy_a.data(), pos_a);
        const std::string tag = "k=" + std::to_string(k) + " r=" + std::to_string(r) + " kind=" + std::to_string(kind);
        ASSERT_EQ(ma, ms) << tag;
        const auto ref = refSpikes(x.data(), r, k);
        ASSERT_EQ(static_cast<size_t>(ms), ref.size()) << tag;
        for (int e = 0; e < ms; ++e) {
          ASSERT_EQ(pos_a[e], pos_s[e]) << tag << " entry " << e;
          ASSERT_EQ(pos_s[e], ref[static_cast<size_t>(e)]) << tag << " entry " << e;
        }
        ASSERT_TRUE(sameBits(copy_a, x)) << tag;
        ASSERT_TRUE(sameBits(copy_s, x)) << tag;
        ++cases;
      }
    }
  }
  EXPECT_GT(cases, 8000u);
}

TEST(QuantSpikes, TieHeavyRunsMatchTheRuleForEveryK) {
  // Whole runs (several AVX2 chunks, tails) of tie-heavy and non-finite data for k = 1..8 in every ISA.
  std::mt19937 rng(77);
  for (int k = 1; k <= kMaxSpikes; ++k) {
    for (int g : {32, 128, 256}) {
      for (size_t n : {size_t{1000}, size_t{4 * 1024 + 96}, size_t{9 * 128}}) {
        std::vector<float> x;
        for (size_t b = 0; b < n; b += static_cast<size_t>(g)) {
          const auto part = selectionData(static_cast<int>(rng() % 60), static_cast<size_t>(g), rng);
          x.insert(x.end(), part.begin(), part.end());
        }
        x.resize(n);
        for (int bits : {8, 6, 4}) {
          const Config c{bits, g, false, k};
          const auto expect = refEncodeWithSpikes(x, c);
          for (Isa isa : supportedIsas()) {
            ASSERT_TRUE(sameBytes(encode(isa, x, c), expect)) << label(c, n, isa);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace flashring::quant
