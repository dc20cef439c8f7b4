// The per-group math shared by the CPU and CUDA codecs (src/quant/common/group_math.h), checked on the CPU:
// the decompositions the CUDA kernels use (one thread per group running encodeGroupRef / the plain encoder,
// one thread per element decoding with decodeAt and the spike entries, per-byte packing, statistics of
// slices combined) must give the bytes and floats of the library's codecs, bit for bit, for every option.
// These run on every machine; the CUDA tests (tests/cuda) compare the device's own output on a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "flashring/quant.h"
#include "quant/common/group_math.h"
#include "quant/cpu/codec_internal.h"

namespace flashring::quant {
namespace {

namespace qd = detail;

// Inputs with every kind of group: Gaussian, with massive spikes, NaN/Inf, constant, all-zero, signed zeros,
// huge magnitudes (wide groups), tiny values, and a partial tail group.
std::vector<float> mixedInput(size_t n, size_t g, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = nd(rng);
  const size_t groups = (n + g - 1) / g;
  for (size_t q = 0; q < groups; ++q) {
    const size_t b = q * g, r = std::min(g, n - b);
    switch (q % 9) {
      case 1:
        x[b + r / 3] = 3000.0f;
        x[b + r / 2] = -2500.0f;
        break;
      case 2:
        x[b] = std::numeric_limits<float>::quiet_NaN();
        if (r > 2) x[b + 2] = std::numeric_limits<float>::infinity();
        if (r > 3) x[b + 3] = -std::numeric_limits<float>::infinity();
        break;
      case 3:
        std::fill(x.begin() + static_cast<long>(b), x.begin() + static_cast<long>(b + r), 1.25f);
        break;
      case 4:
        for (size_t i = 0; i < r; ++i) x[b + i] = (i % 2) ? -0.0f : 0.0f;
        break;
      case 5:
        for (size_t i = 0; i < r; ++i) x[b + i] *= 1e37f;
        x[b] = FLT_MAX;
        if (r > 1) x[b + 1] = -FLT_MAX;
        break;
      case 6:
        for (size_t i = 0; i < r; ++i) x[b + i] *= 1e-30f;
        break;
      case 7:
        std::fill(x.begin() + static_cast<long>(b), x.begin() + static_cast<long>(b + r), 0.0f);
        break;
      default:
        break;
    }
  }
  return x;
}

// What the CUDA encoder does: every group independently, the plain path for plain configs and the reference
// encoder for spikes / rotation / clipping.
std::vector<uint8_t> encodeLikeDevice(const std::vector<float>& x, const Config& cfg) {
  const size_t n = x.size(), g = static_cast<size_t>(cfg.group_size), groups = qd::numGroups(n, g);
  const size_t k = static_cast<size_t>(cfg.spikes);
  std::vector<uint8_t> out(encodedBytes(n, cfg), 0xAB);  // garbage: every byte must be written
  const size_t codes_off = groups * sizeof(GroupMeta), spike_off = qd::codedBytes(n, g, cfg.bits);
  std::vector<float> buf(g);
  const bool transformed = cfg.spikes > 0 || cfg.rotate || cfg.clip;
  for (size_t q = 0; q < groups; ++q) {
    const size_t r = std::min(g, n - q * g);
    const float* xg = x.data() + q * g;
    uint8_t* codes = out.data() + codes_off + qd::groupCodeOffset(q, g, cfg.bits);
    if (transformed) {
      qd::encodeGroupRef(xg, r, g, cfg.bits, cfg.symmetric, cfg.spikes, cfg.rotate, cfg.clip, buf.data(),
                         out.data() + q * 4, codes, out.data() + spike_off + q * k * 2,
                         out.data() + spike_off + groups * k * 2 + q * k * 4);
    } else {
      const qd::GroupParams p =
          qd::planFromStats(qd::scalarStats(xg, r), qd::floatBits(xg[0]), cfg.bits, cfg.symmetric);
      qd::storeMeta(out.data() + q * 4, p.meta);
      qd::encodeGroupScalar(xg, r, p, cfg.bits, codes, qd::groupCodeBytes(r, g, cfg.bits));
    }
  }
  return out;
}

// What the CUDA decoder does: per element for unrotated runs, per group for rotated ones.
std::vector<float> decodeLikeDevice(const std::vector<uint8_t>& in, size_t n, const Config& cfg,
                                    const std::vector<float>* acc) {
  const size_t g = static_cast<size_t>(cfg.group_size), groups = qd::numGroups(n, g);
  const size_t k = static_cast<size_t>(cfg.spikes);
  const size_t codes_off = groups * sizeof(GroupMeta), spike_off = qd::codedBytes(n, g, cfg.bits);
  const uint8_t* idx = in.data() + spike_off;
  const uint8_t* val = idx + groups * k * 2;
  std::vector<float> out = acc ? *acc : std::vector<float>(n, 0.0f);
  if (!cfg.rotate) {
    for (size_t i = 0; i < n; ++i) {
      const size_t q = i / g, local = i - q * g, r = std::min(g, n - q * g);
      float v = qd::decodeAt(qd::loadMeta(in.data() + q * 4),
                             in.data() + codes_off + qd::groupCodeOffset(q, g, cfg.bits), local, r, cfg.bits);
      for (size_t e = 0; e < k; ++e)
        if (qd::loadU16(idx + (q * k + e) * 2) == local) v = qd::bitsFloat(qd::loadU32(val + (q * k + e) * 4));
      out[i] = acc ? out[i] + v : v;
    }
    return out;
  }
  std::vector<float> buf(g);
  for (size_t q = 0; q < groups; ++q) {
    const size_t r = std::min(g, n - q * g);
    qd::decodeGroupRef(in.data() + q * 4, in.data() + codes_off + qd::groupCodeOffset(q, g, cfg.bits), r, g, cfg.bits,
                       cfg.spikes, cfg.rotate, idx + q * k * 2, val + q * k * 4, buf.data(), out.data() + q * g,
                       acc != nullptr);
  }
  return out;
}

bool sameBits(const std::vector<float>& a, const std::vector<float>& b, size_t* first = nullptr) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    uint32_t ua, ub;
    std::memcpy(&ua, &a[i], 4);
    std::memcpy(&ub, &b[i], 4);
    if (ua != ub) {
      if (first) *first = i;
      return false;
    }
  }
  return true;
}

struct Case {
  int bits, group;
  bool symmetric;
  int spikes;
  bool rotate, clip;
};

std::vector<Case> allCases() {
  std::vector<Case> v;
  for (int bits : {4, 5, 6, 8})
    for (int group : {32, 128})
      for (bool sym : {false, true})
        for (int spikes : {0, 1, 3})
          for (bool rot : {false, true})
            for (bool clip : {false, true}) v.push_back({bits, group, sym, spikes, rot, clip});
  v.push_back({4, 4096, false, 8, true, true});
  v.push_back({8, 96, false, 2, false, true});  // not a power of two: no rotation
  return v;
}

std::string name(const Case& c) {
  Config cfg{c.bits, c.group, c.symmetric, c.spikes, c.rotate, c.clip};
  return describe(cfg);
}

TEST(SharedGroupMath, DeviceEncoderGivesTheCodecBytes) {
  int checked = 0;
  for (const Case& c : allCases()) {
    const Config cfg{c.bits, c.group, c.symmetric, c.spikes, c.rotate, c.clip};
    for (size_t n : {size_t{1}, size_t{31}, static_cast<size_t>(c.group) * 9 + 17, static_cast<size_t>(c.group) * 18}) {
      const std::vector<float> x = mixedInput(n, static_cast<size_t>(c.group), static_cast<uint32_t>(n * 7 + c.bits));
      std::vector<uint8_t> want(encodedBytes(n, cfg));
      quantize(Isa::Scalar, x.data(), n, cfg, want.data());
      const std::vector<uint8_t> got = encodeLikeDevice(x, cfg);
      ASSERT_EQ(got, want) << name(c) << " n=" << n;
      if (isaSupported(Isa::Avx2)) {  // and so every ISA (they agree with the scalar one, test_quant.cc)
        std::vector<uint8_t> avx2(want.size());
        quantize(Isa::Avx2, x.data(), n, cfg, avx2.data());
        ASSERT_EQ(avx2, want) << name(c) << " n=" << n;
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, static_cast<int>(allCases().size()) * 4);
}

TEST(SharedGroupMath, DeviceDecoderGivesTheCodecFloats) {
  for (const Case& c : allCases()) {
    const Config cfg{c.bits, c.group, c.symmetric, c.spikes, c.rotate, c.clip};
    const size_t n = static_cast<size_t>(c.group) * 9 + 17;
    const std::vector<float> x = mixedInput(n, static_cast<size_t>(c.group), 99);
    std::vector<uint8_t> enc(encodedBytes(n, cfg));
    quantize(x.data(), n, cfg, enc.data());
    std::vector<float> want(n);
    dequantize(Isa::Scalar, enc.data(), n, cfg, want.data());
    size_t at = 0;
    ASSERT_TRUE(sameBits(decodeLikeDevice(enc, n, cfg, nullptr), want, &at)) << name(c) << " first diff at " << at;
    std::vector<float> acc = mixedInput(n, 64, 5);
    std::vector<float> want_acc = acc;
    dequantizeAccumulate(Isa::Scalar, enc.data(), n, cfg, want_acc.data());
    ASSERT_TRUE(sameBits(decodeLikeDevice(enc, n, cfg, &acc), want_acc, &at)) << name(c) << " acc, diff at " << at;
  }
}

// The packing one byte at a time (for decompositions that write bytes independently) equals the group packer.
TEST(SharedGroupMath, PackedCodeByteEqualsGroupPacking) {
  std::mt19937 rng(3);
  for (int bits : {4, 5, 6, 8}) {
    for (size_t r : {size_t{1}, size_t{2}, size_t{7}, size_t{9}, size_t{31}, size_t{32}, size_t{100}, size_t{128}}) {
      std::vector<uint8_t> q(r);
      std::vector<float> x(r);
      for (size_t i = 0; i < r; ++i) {
        q[i] = static_cast<uint8_t>(rng() % (1u << bits));
        x[i] = static_cast<float>(q[i]);  // codes of the grid z = 0, s = 1
      }
      qd::GroupParams p;
      p.kind = qd::GroupKind::Fast;
      p.s = 1.0f;
      p.z = 0.0f;
      p.inv = 1.0f;
      p.qmax = (1 << bits) - 1;
      const size_t cb = qd::tailCodeBytes(r, bits);
      std::vector<uint8_t> want(cb);
      qd::encodeGroupScalar(x.data(), r, p, bits, want.data(), cb);
      for (size_t j = 0; j < cb; ++j) {
        ASSERT_EQ(qd::packedCodeByte(q.data(), r, bits, j), want[j]) << "bits " << bits << " r " << r << " byte " << j;
      }
      for (size_t i = 0; i < r; ++i) {
        ASSERT_EQ(qd::codeAt(want.data(), i, r, bits), q[i]);
      }
    }
  }
}

// Statistics of any split of a group, combined in any order, give the group's metadata.
TEST(SharedGroupMath, SliceStatisticsCombine) {
  const std::vector<float> x = mixedInput(128 * 18, 128, 11);
  for (size_t q = 0; q < 18; ++q) {
    const float* xg = x.data() + q * 128;
    const uint32_t first = qd::floatBits(xg[0]);
    const qd::GroupParams want = qd::planFromStats(qd::scalarStats(xg, 128), first, 4, false);
    for (size_t slice : {size_t{4}, size_t{32}, size_t{40}}) {
      qd::GroupStats st = qd::sliceStats(xg + 0, std::min<size_t>(slice, 128), first);
      for (size_t b = slice; b < 128; b += slice)  // forwards
        st = qd::combineStats(st, qd::sliceStats(xg + b, std::min(slice, 128 - b), first));
      const qd::GroupParams got = qd::planFromStats(st, first, 4, false);
      EXPECT_EQ(got.meta.scale, want.meta.scale) << "group " << q << " slice " << slice;
      EXPECT_EQ(got.meta.zero, want.meta.zero) << "group " << q << " slice " << slice;
      qd::GroupStats back = qd::sliceStats(xg + 128 - slice, slice, first);  // backwards
      for (size_t b = 128 - slice; b >= slice; b -= slice)
        back = qd::combineStats(back, qd::sliceStats(xg + b - slice, slice, first));
      if (128 % slice == 0) {
        EXPECT_EQ(qd::planFromStats(back, first, 4, false).meta.scale, want.meta.scale);
      }
    }
  }
}

// The host's reciprocal table equals the division the device performs, for every positive bf16 scale.
TEST(SharedGroupMath, ReciprocalTableEqualsDivision) {
  for (uint32_t sb = 1; sb < 0x7F80u; ++sb) {
    const float div = 1.0f / qd::bf16Value(static_cast<uint16_t>(sb));
    ASSERT_EQ(qd::floatBits(qd::bf16Reciprocal(static_cast<uint16_t>(sb))), qd::floatBits(div)) << "scale bits " << sb;
  }
}

// The computed rotation signs and factor (what the device uses) equal the CPU kernels' table.
TEST(SharedGroupMath, RotationSignsAndFactor) {
  int negative = 0;
  for (size_t i = 0; i < static_cast<size_t>(kMaxGroup); ++i) {
    ASSERT_EQ(qd::rotationSignOf(static_cast<uint32_t>(i)), qd::rotationSign(i)) << i;
    negative += qd::rotationSignOf(static_cast<uint32_t>(i)) < 0 ? 1 : 0;
  }
  EXPECT_GT(negative, kMaxGroup / 3);  // a real mix of signs, not all +1
  EXPECT_LT(negative, 2 * kMaxGroup / 3);
  EXPECT_EQ(qd::rotationFactorOf(128), static_cast<float>(1.0 / std::sqrt(128.0)));
}

// The reference spike selection equals the library's selection (quant.h's rule) on mixed groups.
TEST(SharedGroupMath, SpikeSelection) {
  const std::vector<float> x = mixedInput(128 * 18, 128, 21);
  std::vector<float> copy(128);
  for (int k : {1, 2, 5, 8}) {
    for (size_t q = 0; q < 18; ++q) {  // NOLINT
      uint16_t want[kMaxSpikes], got[kMaxSpikes];
      const int m = qd::selectGroupSpikes(Isa::Scalar, x.data() + q * 128, 128, k, copy.data(), want);
      ASSERT_EQ(qd::selectSpikesRef(x.data() + q * 128, 128, k, got), m) << "k " << k << " group " << q;
      for (int e = 0; e < m; ++e) {
        EXPECT_EQ(got[e], want[e]);
      }
    }
  }
  // Ties go to the lower index; at most f - 1 spikes.
  const float ties[4] = {5.0f, -5.0f, 5.0f, 1.0f};
  uint16_t pos[kMaxSpikes];
  ASSERT_EQ(qd::selectSpikesRef(ties, 4, 2, pos), 2);
  EXPECT_EQ(pos[0], 0);
  EXPECT_EQ(pos[1], 1);
  ASSERT_EQ(qd::selectSpikesRef(ties, 4, 8, pos), 3);
}

}  // namespace
}  // namespace flashring::quant
