// Tests of the codec's rotation and clipping (quant.h, "Rotation"; src/quant/cpu/transform.cc): the Hadamard
// transform against the dense matrix and the sign rule restated here, error bounds of rotated groups, clipping
// never worse than no clipping, the unrotated fallbacks (NaN/Inf, fp32 overflow, tail), spikes, every ISA
// giving the same bytes, and the argument checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flashring/error.h"
#include "flashring/quant.h"
#include "quant/cpu/codec_internal.h"  // hadamardRotate, rotationSign

namespace flashring::quant {
namespace {

std::vector<float> gaussian(size_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  return x;
}

std::vector<float> laplace(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::exponential_distribution<float> d(1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = (rng() & 1 ? 1.0f : -1.0f) * d(rng);
  return x;
}

std::vector<uint8_t> enc(const std::vector<float>& x, const Config& c, Isa isa = Isa::Scalar) {
  std::vector<uint8_t> out(encodedBytes(x.size(), c));
  quantize(isa, x.data(), x.size(), c, out.data());
  return out;
}

std::vector<float> dec(const std::vector<uint8_t>& b, size_t n, const Config& c, Isa isa = Isa::Scalar) {
  std::vector<float> out(n);
  dequantize(isa, b.data(), n, c, out.data());
  return out;
}

GroupMeta metaOf(const std::vector<uint8_t>& b, size_t group) {
  GroupMeta m;
  std::memcpy(&m, b.data() + group * sizeof(GroupMeta), sizeof m);
  return m;
}

float scaleOf(GroupMeta m) { return bf16ToFloat(static_cast<uint16_t>(m.scale & 0x7FFF)); }

// quant.h's sign rule, restated.
float signRule(uint32_t i) {
  uint32_t h = i * 0x9E3779B1u;
  h ^= h >> 15;
  h *= 0x85EBCA77u;
  h ^= h >> 13;
  return (h & 1u) ? -1.0f : 1.0f;
}

double l2(const float* a, const float* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return std::sqrt(s);
}

TEST(QuantRotate, SignsFollowTheRuleAndAreBalanced) {
  int minus = 0;
  for (uint32_t i = 0; i < static_cast<uint32_t>(kMaxGroup); ++i) {
    ASSERT_EQ(detail::rotationSign(i), signRule(i)) << i;
    minus += signRule(i) < 0;
  }
  EXPECT_GT(minus, kMaxGroup * 2 / 5);
  EXPECT_LT(minus, kMaxGroup * 3 / 5);
}

TEST(QuantRotate, HadamardMatchesTheDenseMatrixAndInverts) {
  for (size_t g = 32; g <= static_cast<size_t>(kMaxGroup); g *= 2) {
    SCOPED_TRACE(g);
    const auto x = gaussian(g, static_cast<uint32_t>(g), 3.0f);
    std::vector<float> y = x;
    detail::hadamardRotate(y.data(), g, false);
    // y_i = 1/sqrt(g) * sum_j (-1)^popcount(i & j) d_j x_j, in double.
    const double c = 1.0 / std::sqrt(double(g));
    const double norm = l2(x.data(), std::vector<float>(g, 0.f).data(), g);
    double worst = 0;
    for (size_t i = 0; i < g; i += (g > 512 ? 7 : 1)) {
      double s = 0;
      for (size_t j = 0; j < g; ++j)
        s += ((std::popcount(i & j) & 1) ? -1.0 : 1.0) * signRule(static_cast<uint32_t>(j)) * double(x[j]);
      worst = std::max(worst, std::fabs(s * c - y[i]));
    }
    EXPECT_LT(worst, 1e-6 * norm * std::log2(double(g)));
    // Orthonormal: the norm is kept; and the inverse gives x back.
    EXPECT_NEAR(l2(y.data(), std::vector<float>(g, 0.f).data(), g), norm, 1e-5 * norm);
    detail::hadamardRotate(y.data(), g, true);
    EXPECT_LT(l2(x.data(), y.data(), g), 1e-6 * norm * std::log2(double(g)));
  }
}

std::vector<Config> rotateConfigs() {
  std::vector<Config> v;
  for (int bits : {8, 6, 5, 4})
    for (int g : {32, 128, 1024})
      for (bool sym : {false, true})
        for (int k : {0, 2}) {
          Config c{bits, g, sym, k};
          c.rotate = true;
          v.push_back(c);
        }
  return v;
}

// Without clipping, a rotated group's L2 error is at most sqrt(g) * s / 2 (the error of each rotated value is at
// most s / 2 and the rotation is orthonormal); spikes come back bit for bit; the tail group keeps s / 2 per value.
TEST(QuantRotate, RotatedGroupsStayWithinTheirL2Bound) {
  for (const Config& c : rotateConfigs()) {
    SCOPED_TRACE(describe(c));
    const size_t g = static_cast<size_t>(c.group_size), n = 5 * g + g / 2 + 3;
    auto x = gaussian(n, 7u + static_cast<uint32_t>(g));
    for (size_t b = 0; b < n; b += 37) x[b] *= 40.0f;  // outliers, some of them spikes
    const auto bytes = enc(x, c);
    const auto y = dec(bytes, n, c);
    for (size_t q = 0; q * g < n; ++q) {
      const size_t r = std::min(g, n - q * g);
      const GroupMeta m = metaOf(bytes, q);
      ASSERT_EQ(m.scale & 0x8000, 0) << "no group of finite values is flagged here";
      const float s = scaleOf(m);
      if (r == g) {
        EXPECT_LE(l2(x.data() + q * g, y.data() + q * g, g), std::sqrt(double(g)) * s / 2 * 1.001 + 1e-4 * s)
            << "group " << q;
      } else {
        for (size_t i = 0; i < r; ++i) EXPECT_LE(std::fabs(x[q * g + i] - y[q * g + i]), s / 2 * 1.0001) << i;
      }
    }
    if (c.spikes > 0) {  // the largest |x| of each group is a spike: exact
      for (size_t q = 0; q * g < n; ++q) {
        const size_t r = std::min(g, n - q * g);
        const auto it = std::max_element(x.begin() + static_cast<long>(q * g), x.begin() + static_cast<long>(q * g + r),
                                         [](float a, float b) { return std::fabs(a) < std::fabs(b); });
        const size_t i = static_cast<size_t>(it - x.begin());
        EXPECT_EQ(std::bit_cast<uint32_t>(x[i]), std::bit_cast<uint32_t>(y[i])) << "spike at " << i;
      }
    }
    // The rotation changed the bytes (it is not a no-op) but not their number.
    Config plain = c;
    plain.rotate = false;
    EXPECT_EQ(bytes.size(), encodedBytes(n, plain));
    EXPECT_NE(bytes, enc(x, plain));
  }
}

// Clipping picks, per group, the candidate range of least squared error, the unclipped one among them: never
// worse than no clipping, and on heavy-tailed data clearly better at 4 bits.
TEST(QuantRotate, ClippingIsNeverWorseAndHelpsHeavyTails) {
  for (bool rotate : {false, true}) {
    for (int bits : {4, 8}) {
      for (bool sym : {false, true}) {
        SCOPED_TRACE(testing::Message() << "rotate " << rotate << " bits " << bits << " sym " << sym);
        Config c{bits, 128, sym, 0};
        c.rotate = rotate;
        Config cc = c;
        cc.clip = true;
        const size_t n = 128 * 64;
        const auto x = laplace(n, 11);
        const auto y0 = dec(enc(x, c), n, c);
        const auto y1 = dec(enc(x, cc), n, cc);
        double e0 = 0, e1 = 0;
        for (size_t q = 0; q < n / 128; ++q) {
          const double a = l2(x.data() + q * 128, y0.data() + q * 128, 128);
          const double b = l2(x.data() + q * 128, y1.data() + q * 128, 128);
          // Up to the fp32 rounding of the rotation (the search compares errors in the rotated domain).
          EXPECT_LE(b, a * (1 + 1e-4) + 1e-6) << "group " << q;
          e0 += a * a;
          e1 += b * b;
        }
        if (bits == 4 && !rotate) {
          EXPECT_LT(e1, 0.9 * e0) << "clipping gained little on Laplacian data";
        }
        if (bits == 4 && rotate) {
          EXPECT_LT(e1, 0.99 * e0);
        }
      }
    }
  }
}

TEST(QuantRotate, ClipOnlyChangesTheEncoder) {
  Config c{4, 64, false, 2};
  c.clip = true;
  Config plain = c;
  plain.clip = false;
  const auto x = laplace(64 * 10 + 9, 3);
  const auto b = enc(x, c);
  EXPECT_EQ(b.size(), encodedBytes(x.size(), plain));
  const auto y1 = dec(b, x.size(), c), y2 = dec(b, x.size(), plain);
  EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)));
}

TEST(QuantRotate, NonFiniteGroupsAreEncodedUnrotatedAndFlagged) {
  Config c{4, 128, false, 2};
  c.rotate = true;
  c.clip = true;
  auto x = gaussian(128 * 3, 5);
  x[130] = NAN;
  x[131] = INFINITY;
  x[200] = -INFINITY;
  const auto b = enc(x, c);
  const auto y = dec(b, x.size(), c);
  EXPECT_EQ(metaOf(b, 0).scale & 0x8000, 0);
  EXPECT_NE(metaOf(b, 1).scale & 0x8000, 0);
  EXPECT_EQ(metaOf(b, 2).scale & 0x8000, 0);
  EXPECT_TRUE(std::isnan(y[130]));
  EXPECT_EQ(y[131], INFINITY);
  EXPECT_EQ(y[200], -INFINITY);
  // The flagged group's finite values are within s / 2 (no rotation, clipping only for Fast groups).
  const float s = scaleOf(metaOf(b, 1));
  for (size_t i = 128; i < 256; ++i)
    if (std::isfinite(x[i])) {
      EXPECT_LE(std::fabs(x[i] - y[i]), s / 2 * 1.0001) << i;
    }
}

TEST(QuantRotate, GroupsWhoseRotationOverflowsFallBackFlagged) {
  Config c{8, 32, false, 0};
  c.rotate = true;
  std::vector<float> x(64);
  for (size_t i = 0; i < 32; ++i) x[i] = 3.0e38f * (i % 3 == 0 ? -1.0f : 1.0f) * (0.5f + 0.01f * float(i));
  // D * x all equal: the transform's first row sums 32 of them, past FLT_MAX.
  for (size_t i = 32; i < 64; ++i) x[i] = 2.0e37f * detail::rotationSign(i - 32);
  x[40] *= 0.5f;
  const auto b = enc(x, c);
  const auto y = dec(b, x.size(), c);
  for (size_t q : {0u, 1u}) EXPECT_NE(metaOf(b, q).scale & 0x8000, 0) << "group " << q;
  for (size_t i = 0; i < 64; ++i) {
    ASSERT_TRUE(std::isfinite(y[i])) << i;
    EXPECT_LE(std::fabs(double(x[i]) - y[i]), double(scaleOf(metaOf(b, i / 32))) * 0.5001) << i;
  }
}

TEST(QuantRotate, ZeroAndSpikeOnlyGroupsAreExact) {
  Config c{4, 128, false, 3};
  c.rotate = true;
  c.clip = true;
  std::vector<float> x(256, 0.0f);
  x[128 + 5] = 1234.5f;
  x[128 + 77] = -0.001f;
  x[128 + 100] = 7e-30f;
  const auto y = dec(enc(x, c), x.size(), c);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(std::bit_cast<uint32_t>(x[i]), std::bit_cast<uint32_t>(y[i])) << i;
}

// The AVX2 steps (codec_avx2.cc: rotation, min/max, clipping error, codes, decoding) are lane-for-lane twins of
// the scalar ones: every ISA gives the same bytes and the same floats.
TEST(QuantRotate, EveryIsaGivesTheSameBytesAndFloats) {
  struct C {
    int bits, g;
    bool sym;
    int k;
    bool rot, clip;
  };
  const C cases[] = {{4, 128, false, 2, true, true}, {5, 64, true, 0, true, true},    {6, 32, false, 1, true, false},
                     {8, 256, true, 3, false, true}, {4, 1024, false, 0, true, true}, {8, 128, false, 0, true, true},
                     {4, 32, true, 2, false, true}};
  for (const C& cs : cases) {
    Config c{cs.bits, cs.g, cs.sym, cs.k};
    c.rotate = cs.rot;
    c.clip = cs.clip;
    SCOPED_TRACE(describe(c));
    for (uint32_t seed : {9u, 10u}) {
      auto x = seed == 9 ? gaussian(static_cast<size_t>(cs.g) * 40 + 77, seed)
                         : laplace(static_cast<size_t>(cs.g) * 9, seed);
      for (size_t i = 0; i < x.size(); i += 53) x[i] *= 300.0f;
      x[x.size() / 3] = NAN;
      for (size_t i = 0; i < static_cast<size_t>(cs.g); ++i) x[x.size() / 2 / cs.g * cs.g + i] = 0.25f;  // constant
      const auto ref = enc(x, c, Isa::Scalar);
      const auto yref = dec(ref, x.size(), c, Isa::Scalar);
      std::vector<float> acc_ref(x.size(), 1.5f);
      dequantizeAccumulate(Isa::Scalar, ref.data(), x.size(), c, acc_ref.data());
      for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
        if (!isaSupported(isa)) continue;
        SCOPED_TRACE(isaName(isa));
        EXPECT_EQ(enc(x, c, isa), ref);
        const auto y = dec(ref, x.size(), c, isa);
        EXPECT_EQ(0, std::memcmp(y.data(), yref.data(), y.size() * sizeof(float)));
        std::vector<float> acc(x.size(), 1.5f);
        dequantizeAccumulate(isa, ref.data(), x.size(), c, acc.data());
        EXPECT_EQ(0, std::memcmp(acc.data(), acc_ref.data(), acc.size() * sizeof(float)));
      }
    }
  }
}

TEST(QuantRotate, AccumulateIsAccPlusDecodeBitwise) {
  Config c{5, 64, true, 1};
  c.rotate = true;
  const auto x = gaussian(64 * 9 + 13, 21);
  const auto b = enc(x, c);
  const auto y = dec(b, x.size(), c);
  std::vector<float> acc = gaussian(x.size(), 22), want = acc;
  for (size_t i = 0; i < acc.size(); ++i) want[i] = want[i] + y[i];
  dequantizeAccumulate(Isa::Scalar, b.data(), x.size(), c, acc.data());
  EXPECT_EQ(0, std::memcmp(acc.data(), want.data(), acc.size() * sizeof(float)));
}

TEST(QuantRotate, ConfigChecksAndNames) {
  Config c{4, 96, false, 0};
  c.rotate = true;
  try {
    validate(c);
    FAIL() << "rotate with group 96 accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("rotate"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("96"), std::string::npos) << e.what();
  }
  c.rotate = false;
  c.clip = true;
  EXPECT_NO_THROW(validate(c));  // clipping works with any group size
  Config d{4, 128, false, 2};
  d.rotate = d.clip = true;
  EXPECT_EQ(describe(d), "int4-g128-s2-rot-clip");
}

TEST(QuantRotate, CorruptSpikeIndexIsRejected) {
  Config c{4, 32, false, 1};
  c.rotate = true;
  const auto x = gaussian(40, 2);  // one full group and a tail of 8
  auto b = enc(x, c);
  Config base = c;
  base.spikes = 0;
  const size_t idx = encodedBytes(x.size(), base);
  const uint16_t bad = 8;  // inside a 32-group but not inside the tail group of 8
  std::memcpy(b.data() + idx + sizeof(uint16_t), &bad, sizeof bad);
  std::vector<float> out(x.size(), 5.0f);
  EXPECT_THROW(dequantize(Isa::Scalar, b.data(), x.size(), c, out.data()), InvalidArgument);
  EXPECT_EQ(out[0], 5.0f) << "a rejected run must leave the output untouched";
}

}  // namespace
}  // namespace flashring::quant
