// Tests of the K-quant kernels (Q4_K, Q5_K, Q6_K; src/qmm/kquants*.cc) and the Q8K activation quantizer:
//  - dequantization against the PyPI gguf package's (fixture written by tests/tools/make_kquant_fixture.py)
//    and against a decoder written here from ggml's block layouts, bit for bit;
//  - every ISA's dequantization and quantizer bit-identical to the scalar reference (AVX-512 with and
//    without VNNI separately), the quantizer's contract on ties, zero, subnormal, huge and non-finite blocks;
//  - dot products: SIMD against scalar within 1e-5 of the sum of |terms|, scalar against a double
//    computation from the decoded weights and activations;
//  - qmm::matmul on K-quant weights (integer and dequantize + sgemm paths) against a double reference.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "engine/dequant_internal.h"
#include "flashring/cpu.h"
#include "flashring/error.h"
#include "flashring/qmatmul.h"
#include "qmm/qmm_internal.h"

namespace flashring::qmm::detail {
// The per-ISA tables behind kquantKernels() (src/qmm/kquants_*.cc), to test AVX-512 with and without VNNI.
const TypeKernels* kquantKernelsAvx2(TensorType t);
const TypeKernels* kquantKernelsAvx512(TensorType t);
const TypeKernels* kquantKernelsAvx512Vnni(TensorType t);
QuantizeFn q8kQuantizerAvx2();
QuantizeFn q8kQuantizerAvx512();
}  // namespace flashring::qmm::detail

namespace flashring::qmm {
namespace {

using gguf::detail::halfToFloat;

constexpr size_t kQK_K = 256;
const TensorType kTypes[] = {TensorType::Q4_K, TensorType::Q5_K, TensorType::Q6_K};

size_t bytesPerBlock(TensorType t) {
  switch (t) {
    case TensorType::Q4_K:
      return 144;
    case TensorType::Q5_K:
      return 176;
    default:
      return 210;
  }
}
std::string typeName(TensorType t) { return gguf::typeName(static_cast<uint32_t>(t)); }

uint16_t u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
void setU16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// ------------------------------------------------------------------------------------------------------
// A decoder of the block layouts (ggml-common.h, dequantize_row_q*_K), written independently of the
// kernels: value i of a block = scale[i] * code[i] - minv[i], with scale = d * sc and minv = dmin * m in
// fp32 (Q6_K: code already minus 32, minv 0).

struct Decoded {
  int code[kQK_K];
  float scale[kQK_K];
  float minv[kQK_K];
  float value(size_t i) const { return scale[i] * static_cast<float>(code[i]) - minv[i]; }
};

void scaleMin(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 0x3F;
    *m = s[j + 4] & 0x3F;
  } else {
    *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

Decoded decode(TensorType t, const uint8_t* blk) {
  Decoded out{};
  if (t == TensorType::Q6_K) {
    const uint8_t* ql = blk;
    const uint8_t* qh = blk + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(blk + 192);
    const float d = halfToFloat(u16(blk + 208));
    for (size_t i = 0; i < kQK_K; ++i) {
      const size_t h = i / 128, g = (i % 128) / 32, l = i % 32;
      const uint8_t b = ql[64 * h + 32 * (g % 2) + l];
      const int low = g < 2 ? (b & 0x0F) : (b >> 4);
      const int high = (qh[32 * h + l] >> (2 * g)) & 3;
      out.code[i] = (low | (high << 4)) - 32;
      out.scale[i] = d * static_cast<float>(sc[i / 16]);
      out.minv[i] = 0.f;
    }
    return out;
  }
  const float d = halfToFloat(u16(blk)), dmin = halfToFloat(u16(blk + 2));
  const uint8_t* scales = blk + 4;
  const bool q5 = t == TensorType::Q5_K;
  const uint8_t* qh = blk + 16;
  const uint8_t* qs = blk + (q5 ? 48 : 16);
  for (size_t i = 0; i < kQK_K; ++i) {
    const int j = static_cast<int>(i / 32);
    int sc, m;
    scaleMin(scales, j, &sc, &m);
    const uint8_t b = qs[(i / 64) * 32 + i % 32];
    int code = j % 2 == 0 ? (b & 0x0F) : (b >> 4);
    if (q5) code |= ((qh[i % 32] >> j) & 1) << 4;
    out.code[i] = code;
    out.scale[i] = d * static_cast<float>(sc);
    out.minv[i] = dmin * static_cast<float>(m);
  }
  return out;
}

// ------------------------------------------------------------------------------------------------------
// Random blocks.

enum class Fill { Moderate, Extreme, Raw };

// fp16 with |x| in [2^-13, 2): scales of realistic blocks. 20% negative.
uint16_t moderateHalf(std::mt19937_64& rng) {
  const uint16_t e = static_cast<uint16_t>(2 + rng() % 14), mant = static_cast<uint16_t>(rng() % 1024);
  const uint16_t sign = (rng() % 5 == 0) ? 0x8000 : 0;
  return static_cast<uint16_t>(sign | (e << 10) | mant);
}

// fp16 max, -max, smallest subnormal, smallest normal, 0, -0, 1: finite extremes.
const uint16_t kExtremeHalves[] = {0x7BFF, 0xFBFF, 0x0001, 0x0400, 0x0000, 0x8000, 0x3C00, 0x03FF};

std::vector<uint8_t> randomBlocks(TensorType t, size_t nb, std::mt19937_64& rng, Fill fill) {
  const size_t bb = bytesPerBlock(t);
  std::vector<uint8_t> v(nb * bb);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  if (fill == Fill::Raw) return v;
  for (size_t k = 0; k < nb; ++k) {
    uint8_t* blk = v.data() + k * bb;
    const auto half = [&]() {
      return fill == Fill::Moderate ? moderateHalf(rng) : kExtremeHalves[rng() % std::size(kExtremeHalves)];
    };
    if (t == TensorType::Q6_K) {
      setU16(blk + 208, half());
      if (fill == Fill::Extreme && k % 2 == 0) std::memset(blk + 192, k % 4 == 0 ? 0x80 : 0x7F, 16);
    } else {
      setU16(blk, half());
      setU16(blk + 2, half());
      if (fill == Fill::Extreme && k % 2 == 0) std::memset(blk + 4, 0xFF, 12);  // every scale and min 63
    }
    if (fill == Fill::Extreme && k % 3 == 0) {  // every code at its maximum
      if (t == TensorType::Q6_K) {
        std::memset(blk, 0xFF, 192);
      } else {
        std::memset(blk + 16, 0xFF, bb - 16);
      }
    }
  }
  return v;
}

std::vector<float> randomFloats(size_t n, std::mt19937_64& rng, float scale) {
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> x(n);
  for (auto& v : x) v = nd(rng);
  return x;
}

// ------------------------------------------------------------------------------------------------------
// The ISA variants this CPU runs: the scalar reference first.

struct Variant {
  std::string name;
  const detail::TypeKernels* (*kernels)(TensorType);
};

std::vector<Variant> variants() {
  std::vector<Variant> v{{"scalar", [](TensorType t) { return detail::kquantKernels(cpu::Isa::Scalar, t); }}};
  if (cpu::isaSupported(cpu::Isa::Avx2)) v.push_back({"avx2", &detail::kquantKernelsAvx2});
  if (cpu::isaSupported(cpu::Isa::Avx512)) v.push_back({"avx512", &detail::kquantKernelsAvx512});
  if (cpu::isaSupported(cpu::Isa::Avx512) && cpu::hasAvx512Vnni())
    v.push_back({"avx512vnni", &detail::kquantKernelsAvx512Vnni});
  return v;
}

struct QVariant {
  std::string name;
  detail::QuantizeFn fn;
};
std::vector<QVariant> quantizers() {
  std::vector<QVariant> v{{"scalar", detail::q8kQuantizer(cpu::Isa::Scalar)}};
  if (cpu::isaSupported(cpu::Isa::Avx2)) v.push_back({"avx2", detail::q8kQuantizerAvx2()});
  if (cpu::isaSupported(cpu::Isa::Avx512)) v.push_back({"avx512", detail::q8kQuantizerAvx512()});
  return v;
}

std::vector<cpu::Isa> supportedIsas() {
  std::vector<cpu::Isa> v;
  for (cpu::Isa isa : {cpu::Isa::Scalar, cpu::Isa::Avx2, cpu::Isa::Avx512})
    if (cpu::isaSupported(isa)) v.push_back(isa);
  return v;
}

// Equal bits, or both NaN (payloads aside).
bool sameFloat(float a, float b) { return bits(a) == bits(b) || (std::isnan(a) && std::isnan(b)); }

// ------------------------------------------------------------------------------------------------------
// Dequantization.

TEST(KquantKernels, EveryIsaHasItsOwn) {
  for (TensorType t : kTypes) {
    const detail::TypeKernels* k = detail::kquantKernels(cpu::Isa::Scalar, t);
    ASSERT_NE(k, nullptr) << typeName(t);
    EXPECT_NE(k->dequantize, nullptr);
    EXPECT_NE(k->dot, nullptr);
  }
  EXPECT_NE(detail::q8kQuantizer(cpu::Isa::Scalar), nullptr);
  // AVX2, AVX-512 and AVX-512 VNNI have kernels of their own (whether or not this CPU runs them).
  for (TensorType t : kTypes) {
    EXPECT_NE(detail::kquantKernelsAvx2(t), nullptr) << typeName(t);
    EXPECT_NE(detail::kquantKernelsAvx512(t), nullptr) << typeName(t);
    EXPECT_NE(detail::kquantKernelsAvx512Vnni(t), nullptr) << typeName(t);
    EXPECT_NE(detail::kquantKernelsAvx512(t), detail::kquantKernelsAvx512Vnni(t)) << typeName(t);
  }
  EXPECT_NE(detail::q8kQuantizerAvx2(), nullptr);
  EXPECT_NE(detail::q8kQuantizerAvx512(), nullptr);
  if (cpu::isaSupported(cpu::Isa::Avx512)) {
    EXPECT_EQ(detail::kquantKernels(cpu::Isa::Avx512, TensorType::Q4_K),
              cpu::hasAvx512Vnni() ? detail::kquantKernelsAvx512Vnni(TensorType::Q4_K)
                                   : detail::kquantKernelsAvx512(TensorType::Q4_K));
  }
  EXPECT_EQ(detail::kquantKernels(cpu::Isa::Scalar, TensorType::Q8_0), nullptr);
  EXPECT_EQ(actFormat(TensorType::Q4_K), ActFormat::Q8K);
  EXPECT_EQ(actBytes(TensorType::Q6_K, 512), 2 * sizeof(BlockQ8K));
}

// The PyPI gguf package's dequantize on random blocks (tests/tools/make_kquant_fixture.py), bit for bit.
TEST(KquantDequant, MatchesGgufPackage) {
  const std::filesystem::path dir = FLASHRING_FIXTURE_DIR;
  std::ifstream idx(dir / "kquant.json");
  if (!idx)
    GTEST_SKIP() << (dir / "kquant.json").string()
                 << " missing: run ctest (fixtures.kquants, tests/tools/make_kquant_fixture.py needs python3 with "
                    "numpy and the gguf package)";
  const nlohmann::json j = nlohmann::json::parse(idx);
  for (TensorType t : kTypes) {
    const std::string name = t == TensorType::Q4_K ? "Q4_K" : t == TensorType::Q5_K ? "Q5_K" : "Q6_K";
    ASSERT_TRUE(j["types"].contains(name)) << name;
    const size_t nb = j["types"][name]["n_blocks"].get<size_t>();
    ASSERT_EQ(j["types"][name]["block_bytes"].get<size_t>(), bytesPerBlock(t));
    std::vector<uint8_t> blocks(nb * bytesPerBlock(t));
    std::vector<float> want(nb * kQK_K);
    std::ifstream fb(dir / ("kquant." + name + ".blocks"), std::ios::binary);
    std::ifstream fv(dir / ("kquant." + name + ".f32"), std::ios::binary);
    ASSERT_TRUE(fb.read(reinterpret_cast<char*>(blocks.data()), static_cast<std::streamsize>(blocks.size()))) << name;
    ASSERT_TRUE(fv.read(reinterpret_cast<char*>(want.data()), static_cast<std::streamsize>(want.size() * 4))) << name;
    size_t nonzero = 0, nans = 0;
    for (float w : want) {
      nonzero += w != 0.f;
      nans += std::isnan(w);
    }
    EXPECT_GT(nonzero, want.size() / 2) << name;
    EXPECT_GT(nans, 0u) << name << ": the fixture's Inf/NaN blocks";
    for (const Variant& v : variants()) {
      const detail::TypeKernels* k = v.kernels(t);
      if (k == nullptr) continue;
      std::vector<float> got(want.size(), -1.f);
      k->dequantize(blocks.data(), got.data(), got.size());
      size_t bad = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        if (!sameFloat(got[i], want[i]) && bad++ < 5)
          ADD_FAILURE() << name << " " << v.name << " value " << i << " (block " << i / kQK_K << "): " << got[i]
                        << " vs gguf " << want[i];
      }
      EXPECT_EQ(bad, 0u) << name << " " << v.name;
    }
  }
}

// The kernels against the decoder above on moderate, extreme and raw random blocks (raw: any fp16 d,
// NaN and Inf included), every ISA bit for bit (NaN payloads included).
TEST(KquantDequant, MatchesLayoutAndBitIdenticalAcrossIsas) {
  std::mt19937_64 rng(11);
  for (TensorType t : kTypes) {
    for (Fill fill : {Fill::Moderate, Fill::Extreme, Fill::Raw}) {
      const size_t nb = 33;
      const std::vector<uint8_t> w = randomBlocks(t, nb, rng, fill);
      std::vector<float> ref(nb * kQK_K);
      detail::kquantKernels(cpu::Isa::Scalar, t)->dequantize(w.data(), ref.data(), ref.size());
      for (size_t b = 0; b < nb; ++b) {
        const Decoded dec = decode(t, w.data() + b * bytesPerBlock(t));
        for (size_t i = 0; i < kQK_K; ++i)
          ASSERT_TRUE(sameFloat(ref[b * kQK_K + i], dec.value(i)))
              << typeName(t) << " block " << b << " value " << i << ": " << ref[b * kQK_K + i] << " vs "
              << dec.value(i);
      }
      for (const Variant& v : variants()) {
        const detail::TypeKernels* k = v.kernels(t);
        if (k == nullptr) continue;
        for (size_t blocks : {size_t{1}, size_t{3}, nb}) {
          std::vector<float> got(blocks * kQK_K, -7.f);
          k->dequantize(w.data(), got.data(), got.size());
          EXPECT_EQ(std::memcmp(got.data(), ref.data(), got.size() * 4), 0)
              << typeName(t) << " " << v.name << " fill " << static_cast<int>(fill) << " blocks " << blocks;
        }
      }
      // The dispatching entry point at every ISA.
      for (cpu::Isa isa : supportedIsas()) {
        std::vector<float> got(ref.size());
        dequantizeRow(isa, t, w.data(), got.data(), got.size());
        EXPECT_EQ(std::memcmp(got.data(), ref.data(), got.size() * 4), 0) << typeName(t) << " " << cpu::isaName(isa);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------------
// The Q8K activation quantizer.

struct Q8KBlock {
  float d;
  int8_t qs[256];
  int16_t bsums[16];
};
std::vector<Q8KBlock> unpackQ8K(const std::vector<uint8_t>& buf) {
  std::vector<Q8KBlock> out(buf.size() / sizeof(BlockQ8K));
  for (size_t b = 0; b < out.size(); ++b) {
    const uint8_t* p = buf.data() + b * sizeof(BlockQ8K);
    std::memcpy(&out[b].d, p + offsetof(BlockQ8K, d), 4);
    std::memcpy(out[b].qs, p + offsetof(BlockQ8K, qs), 256);
    std::memcpy(out[b].bsums, p + offsetof(BlockQ8K, bsums), 32);
  }
  return out;
}

// Blocks of every kind the contract names.
std::vector<float> quantizerInput(std::mt19937_64& rng) {
  std::vector<float> x;
  const auto block = [&](auto gen) {
    for (size_t i = 0; i < 256; ++i) x.push_back(gen(i));
  };
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_int_distribution<uint32_t> sub(1, 0x007FFFFF);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float fmax = std::numeric_limits<float>::max(), fmin = std::numeric_limits<float>::min();
  block([&](size_t) { return nd(rng); });
  block([&](size_t) { return 1e-3f * nd(rng); });
  block([&](size_t) { return 3e4f * nd(rng); });
  // Ties: max 127 makes d = 1 and id = 1, so x = k + 0.5 rounds half to even.
  block([&](size_t i) { return i == 0 ? 127.f : static_cast<float>(static_cast<int>(i % 254) - 127) + 0.5f; });
  block([&](size_t i) { return i == 5 ? -127.f : -static_cast<float>(i % 127) - 0.5f; });
  block([](size_t) { return 0.f; });
  block([](size_t) { return -0.f; });
  block([&](size_t i) { return i == 77 ? nan : nd(rng); });
  block([&](size_t i) { return i == 0 ? inf : nd(rng); });
  block([&](size_t i) { return i == 255 ? -inf : nd(rng); });
  block([&](size_t i) { return i == 3 ? -nan : 0.f; });
  // Subnormal inputs, tiny normal ones (d < FLT_MIN: flushed), and the smallest blocks that keep their codes.
  block([&](size_t i) {
    uint32_t u = sub(rng) | ((i & 1) ? 0x80000000u : 0u);
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  });
  block([&](size_t) { return fmin * nd(rng); });
  block([&](size_t i) { return i == 9 ? 126.9f * fmin : fmin * nd(rng); });
  block([&](size_t) { return 100.f * fmin * nd(rng); });
  block([&](size_t i) { return i == 9 ? 127.f * fmin : fmin * nd(rng); });  // d = FLT_MIN exactly
  block([&](size_t i) { return i == 9 ? -130.f * fmin : 30.f * fmin * nd(rng); });
  // Huge values: d = FLT_MAX / 127.
  block([&](size_t i) { return i == 1 ? -fmax : fmax * 0.01f * nd(rng); });
  // One spike among small values.
  block([&](size_t i) { return i == 200 ? 1e6f : nd(rng); });
  return x;
}

TEST(KquantQ8K, ContractAndBitIdenticalAcrossIsas) {
  std::mt19937_64 rng(5);
  const std::vector<float> x = quantizerInput(rng);
  const size_t nb = x.size() / 256;
  std::vector<uint8_t> ref(nb * sizeof(BlockQ8K));
  detail::q8kQuantizer(cpu::Isa::Scalar)(x.data(), x.size(), ref.data());
  const std::vector<Q8KBlock> q = unpackQ8K(ref);
  const float fmin = std::numeric_limits<float>::min();
  size_t flushed = 0, coded = 0;
  for (size_t b = 0; b < nb; ++b) {
    const float* xb = x.data() + b * 256;
    bool finite = true;
    float amax = 0.f;
    for (size_t i = 0; i < 256; ++i) {
      finite = finite && std::isfinite(xb[i]);
      amax = std::max(amax, std::fabs(xb[i]));
    }
    if (!finite) {
      EXPECT_TRUE(std::isnan(q[b].d)) << "block " << b;
      for (size_t i = 0; i < 256; ++i) ASSERT_EQ(q[b].qs[i], 0) << "block " << b;
      for (size_t j = 0; j < 16; ++j) ASSERT_EQ(q[b].bsums[j], 0) << "block " << b;
      continue;
    }
    const float d = amax / 127.f;
    if (d < fmin) {
      ++flushed;
      EXPECT_EQ(bits(q[b].d), 0u) << "block " << b << ": max|x| " << amax << " < 127 * FLT_MIN makes d = +0";
      for (size_t i = 0; i < 256; ++i) ASSERT_EQ(q[b].qs[i], 0) << "block " << b;
      for (size_t j = 0; j < 16; ++j) ASSERT_EQ(q[b].bsums[j], 0) << "block " << b;
      continue;
    }
    ++coded;
    EXPECT_EQ(bits(q[b].d), bits(d)) << "block " << b;
    for (size_t i = 0; i < 256; ++i) {
      ASSERT_LE(std::abs(q[b].qs[i]), 127) << "block " << b;
      // |x - d q| <= d/2, up to the rounding of x * (1/d) (relative 2^-23 of |x / d| <= 127).
      const double err = std::fabs(static_cast<double>(xb[i]) - static_cast<double>(d) * q[b].qs[i]);
      ASSERT_LE(err, static_cast<double>(d) * (0.5 + 127 * 0x1p-22)) << "block " << b << " value " << i;
    }
    for (size_t j = 0; j < 16; ++j) {
      int s = 0;
      for (size_t i = 16 * j; i < 16 * j + 16; ++i) s += q[b].qs[i];
      ASSERT_EQ(q[b].bsums[j], s) << "block " << b << " bsums " << j;
    }
  }
  EXPECT_EQ(flushed, 5u);  // the zero, -0, subnormal and two tiny blocks
  ASSERT_EQ(q[15].d, fmin);
  EXPECT_EQ(coded, nb - 5 - 4);
  // Ties round half to even: block 3 holds x = k + 0.5 with d = 1.
  ASSERT_EQ(q[3].d, 1.f);
  for (size_t i = 1; i < 256; ++i) {
    const int k = static_cast<int>(i % 254) - 127;
    const int even = (k % 2 == 0) ? k : k + 1;
    ASSERT_EQ(q[3].qs[i], even) << "tie " << k << ".5";
  }
  for (const QVariant& v : quantizers()) {
    if (v.fn == nullptr) continue;
    for (size_t blocks : {size_t{1}, size_t{3}, nb}) {
      std::vector<uint8_t> got(blocks * sizeof(BlockQ8K), 0xA5);
      v.fn(x.data(), blocks * 256, got.data());
      EXPECT_EQ(std::memcmp(got.data(), ref.data(), got.size()), 0) << v.name << " blocks " << blocks;
    }
  }
  for (cpu::Isa isa : supportedIsas()) {
    std::vector<uint8_t> got(ref.size());
    quantizeActivations(isa, TensorType::Q5_K, x.data(), x.size(), got.data());
    EXPECT_EQ(std::memcmp(got.data(), ref.data(), got.size()), 0) << cpu::isaName(isa);
  }
}

// Many random blocks of assorted scales: SIMD bit-identical to the scalar quantizer.
TEST(KquantQ8K, RandomBitIdentical) {
  std::mt19937_64 rng(6);
  std::vector<float> x;
  for (int b = 0; b < 64; ++b) {
    const float s = std::ldexp(1.f, static_cast<int>(rng() % 60) - 30);
    const std::vector<float> blk = randomFloats(256, rng, s);
    x.insert(x.end(), blk.begin(), blk.end());
  }
  std::vector<uint8_t> ref(64 * sizeof(BlockQ8K));
  detail::q8kQuantizer(cpu::Isa::Scalar)(x.data(), x.size(), ref.data());
  for (const QVariant& v : quantizers()) {
    if (v.fn == nullptr) continue;
    std::vector<uint8_t> got(ref.size());
    v.fn(x.data(), x.size(), got.data());
    EXPECT_EQ(std::memcmp(got.data(), ref.data(), got.size()), 0) << v.name;
  }
}

// ------------------------------------------------------------------------------------------------------
// Dot products.

// The dot product from the decoded weights and activations in double, and the sum of |terms| (each
// value's scale * code * activation and min * activation, with the fp32 block factors d * a.d).
struct DoubleDot {
  double value = 0, magnitude = 0;
};
DoubleDot doubleDot(TensorType t, size_t nb, const uint8_t* w, const std::vector<Q8KBlock>& a) {
  DoubleDot r;
  for (size_t b = 0; b < nb; ++b) {
    const Decoded dec = decode(t, w + b * bytesPerBlock(t));
    for (size_t i = 0; i < kQK_K; ++i) {
      const double act = static_cast<double>(a[b].d) * a[b].qs[i];
      const double s = static_cast<double>(dec.scale[i]) * dec.code[i] * act;
      const double m = static_cast<double>(dec.minv[i]) * act;
      r.value += s - m;
      r.magnitude += std::fabs(s) + std::fabs(m);
    }
  }
  return r;
}

std::vector<uint8_t> quantizeQ8K(const std::vector<float>& x) {
  std::vector<uint8_t> a(x.size() / 256 * sizeof(BlockQ8K));
  detail::q8kQuantizer(cpu::Isa::Scalar)(x.data(), x.size(), a.data());
  return a;
}

TEST(KquantDot, ScalarMatchesDoubleReference) {
  std::mt19937_64 rng(21);
  for (TensorType t : kTypes) {
    for (Fill fill : {Fill::Moderate, Fill::Extreme}) {
      for (size_t nb : {size_t{1}, size_t{3}, size_t{17}}) {
        const std::vector<uint8_t> w = randomBlocks(t, nb, rng, fill);
        const std::vector<float> x = randomFloats(nb * 256, rng, fill == Fill::Moderate ? 1.f : 50.f);
        const std::vector<uint8_t> a = quantizeQ8K(x);
        const DoubleDot want = doubleDot(t, nb, w.data(), unpackQ8K(a));
        const float got = detail::kquantKernels(cpu::Isa::Scalar, t)->dot(nb * 256, w.data(), a.data());
        ASSERT_TRUE(std::isfinite(got));
        EXPECT_LE(std::fabs(got - want.value), 1e-5 * want.magnitude + 1e-30)
            << typeName(t) << " fill " << static_cast<int>(fill) << " nb " << nb << ": " << got << " vs " << want.value
            << " (sum of |terms| " << want.magnitude << ")";
        if (fill == Fill::Moderate) {
          EXPECT_GT(want.magnitude, 0.0);
        }
      }
    }
  }
}

TEST(KquantDot, SimdMatchesScalar) {
  std::mt19937_64 rng(22);
  for (TensorType t : kTypes) {
    for (Fill fill : {Fill::Moderate, Fill::Extreme}) {
      for (size_t nb : {size_t{1}, size_t{3}, size_t{17}, size_t{16}}) {
        for (int rep = 0; rep < 4; ++rep) {
          const std::vector<uint8_t> w = randomBlocks(t, nb, rng, fill);
          // rep 3: all activations positive (no cancellation between the code and min terms' signs)
          std::vector<float> x = randomFloats(nb * 256, rng, fill == Fill::Moderate ? 1.f : 1e3f);
          if (rep == 3)
            for (auto& v : x) v = std::fabs(v);
          const std::vector<uint8_t> a = quantizeQ8K(x);
          const DoubleDot mag = doubleDot(t, nb, w.data(), unpackQ8K(a));
          const float ref = detail::kquantKernels(cpu::Isa::Scalar, t)->dot(nb * 256, w.data(), a.data());
          for (const Variant& v : variants()) {
            const detail::TypeKernels* k = v.kernels(t);
            if (k == nullptr) continue;
            const float got = k->dot(nb * 256, w.data(), a.data());
            EXPECT_LE(std::fabs(static_cast<double>(got) - ref), 1e-5 * mag.magnitude + 1e-30)
                << typeName(t) << " " << v.name << " fill " << static_cast<int>(fill) << " nb " << nb << ": " << got
                << " vs scalar " << ref;
          }
        }
      }
    }
  }
}

// A NaN/Inf activation block makes the dot product NaN at every ISA, whatever the weights.
TEST(KquantDot, NonFiniteActivationGivesNaN) {
  std::mt19937_64 rng(23);
  for (TensorType t : kTypes) {
    const std::vector<uint8_t> w = randomBlocks(t, 3, rng, Fill::Moderate);
    std::vector<float> x = randomFloats(3 * 256, rng, 1.f);
    x[300] = std::numeric_limits<float>::infinity();
    const std::vector<uint8_t> a = quantizeQ8K(x);
    for (const Variant& v : variants()) {
      const detail::TypeKernels* k = v.kernels(t);
      if (k == nullptr) continue;
      EXPECT_TRUE(std::isnan(k->dot(3 * 256, w.data(), a.data()))) << typeName(t) << " " << v.name;
    }
  }
}

// ------------------------------------------------------------------------------------------------------
// qmm::matmul on K-quant weights.

class IsaGuard {
 public:
  IsaGuard() : saved_(cpu::activeIsa()) {}
  ~IsaGuard() { cpu::setActiveIsa(saved_); }

 private:
  cpu::Isa saved_;
};

TEST(QmmKMatmul, MatchesDoubleReference) {
  IsaGuard guard;
  std::mt19937_64 rng(31);
  const int64_t rows = 37, cols = 768;
  const size_t nb = static_cast<size_t>(cols) / 256;
  for (TensorType t : kTypes) {
    const size_t rb = nb * bytesPerBlock(t);
    const std::vector<uint8_t> w = randomBlocks(t, static_cast<size_t>(rows) * nb, rng, Fill::Moderate);
    std::vector<float> wf(static_cast<size_t>(rows * cols));
    detail::kquantKernels(cpu::Isa::Scalar, t)->dequantize(w.data(), wf.data(), wf.size());
    const Matrix mat{t, w.data(), rows, cols, rb};
    for (int64_t m : {1, 3, 9}) {
      const std::vector<float> x = randomFloats(static_cast<size_t>(m * cols), rng, 1.f);
      // Per activation row: its Q8K blocks' d (the Dot path's quantization error is at most d/2 a value).
      std::vector<float> actd(static_cast<size_t>(m) * nb);
      for (int64_t i = 0; i < m; ++i) {
        std::vector<uint8_t> a(nb * sizeof(BlockQ8K));
        detail::q8kQuantizer(cpu::Isa::Scalar)(x.data() + i * cols, static_cast<size_t>(cols), a.data());
        const auto q = unpackQ8K(a);
        for (size_t b = 0; b < nb; ++b) actd[static_cast<size_t>(i) * nb + b] = q[b].d;
      }
      for (cpu::Isa isa : supportedIsas()) {
        cpu::setActiveIsa(isa);
        for (MatmulPath path : {MatmulPath::Dot, MatmulPath::DequantGemm}) {
          Workspace ws;
          std::vector<float> y(static_cast<size_t>(m * rows), std::numeric_limits<float>::quiet_NaN());
          matmul(mat, x.data(), m, y.data(), ws, path);
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t r = 0; r < rows; ++r) {
              double want = 0, mag = 0, qerr = 0;
              for (int64_t k = 0; k < cols; ++k) {
                const double wv = wf[static_cast<size_t>(r * cols + k)], xv = x[static_cast<size_t>(i * cols + k)];
                want += wv * xv;
                mag += std::fabs(wv * xv);
                qerr += std::fabs(wv) * 0.5 * actd[static_cast<size_t>(i) * nb + static_cast<size_t>(k) / 256];
              }
              const double tol = (path == MatmulPath::Dot ? 1.001 * qerr : 0.0) + 1e-5 * mag + 1e-30;
              const float got = y[static_cast<size_t>(i * rows + r)];
              ASSERT_LE(std::fabs(got - want), tol)
                  << typeName(t) << " " << cpu::isaName(isa) << " path " << static_cast<int>(path) << " m " << m
                  << " row " << r << " col " << i << ": " << got << " vs " << want;
            }
          }
          // The integer path is exactly the dispatched dot product on the dispatched quantizer's codes.
          if (path == MatmulPath::Dot) {
            for (int64_t i = 0; i < m; ++i) {
              std::vector<uint8_t> a(actBytes(t, static_cast<size_t>(cols)));
              quantizeActivations(t, x.data() + i * cols, static_cast<size_t>(cols), a.data());
              for (int64_t r = 0; r < rows; ++r)
                ASSERT_EQ(bits(y[static_cast<size_t>(i * rows + r)]),
                          bits(dot(t, static_cast<size_t>(cols), w.data() + static_cast<size_t>(r) * rb, a.data())));
            }
          }
        }
      }
    }
  }
}

TEST(QmmKMatmul, LengthNotMultipleOf256IsInvalid) {
  std::vector<uint8_t> w(4 * 210);
  std::vector<float> x(512), y(4);
  std::vector<uint8_t> a(2 * sizeof(BlockQ8K));
  Workspace ws;
  for (TensorType t : kTypes) {
    const Matrix mat{t, w.data(), 1, 300, 2 * bytesPerBlock(t)};
    EXPECT_THROW(matmul(mat, x.data(), 1, y.data(), ws, MatmulPath::Dot), InvalidArgument) << typeName(t);
    EXPECT_THROW(matmul(mat, x.data(), 1, y.data(), ws, MatmulPath::DequantGemm), InvalidArgument) << typeName(t);
    EXPECT_THROW(dot(t, 300, w.data(), a.data()), InvalidArgument) << typeName(t);
    EXPECT_THROW(dequantizeRow(t, w.data(), x.data(), 128), InvalidArgument) << typeName(t);
    EXPECT_THROW(quantizeActivations(t, x.data(), 257, a.data()), InvalidArgument) << typeName(t);
  }
}

}  // namespace
}  // namespace flashring::qmm
