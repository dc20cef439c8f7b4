// Tests of the 32-value GGUF weight types' matmul kernels (include/flashring/qmatmul.h, src/qmm/legacy*.cc):
// F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the Q8 activation quantizer, at every ISA (and VNNI
// variant) this CPU runs; ISAs it lacks are reported and skipped.
//  1. The quantizer: bit-identical across ISAs (random data at every magnitude, zeros, subnormals, ties,
//     NaN/Inf blocks) and its defining properties (d = max|x|/127, |x - d q| <= d/2, s = d * sum q).
//  2. Dequantization: bit-identical to the scalar kernels (NaN payloads included), the scalar kernels equal to
//     gguf::dequantizeReference for the six types it has its own code for, and all of them equal to values
//     decoded here from ggml's block layouts (an independent reading of the format).
//  3. SIMD dot products against the scalar reference within 1e-5 of the sum of |terms| (random blocks,
//     extreme scales, lengths of 1, 3, 17, 129 blocks), and non-finite inputs staying non-finite.
//  4. The scalar dot product against an exact double-precision sum over the layout-decoded weights and the
//     dequantized activations, within float rounding.
//  3b. Tiles (TypeKernels::tiles: several rows x several activation vectors a call): every output bit for bit
//     the same table's dot (random and extreme blocks, odd block counts, padded strides), non-finite
//     activations confined to their vector's outputs.
//  5. qmm::matmul through the public API (Dot and DequantGemm paths, m = 1, 2, 3, 5, 9; 1 and 2 threads)
//     against double references, and the Dot path bit for bit the dispatched dot product (whatever tiles).
// Plus the argument errors (lengths that are not a multiple of the block size).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "flashring/cpu.h"
#include "flashring/error.h"
#include "flashring/gguf.h"
#include "flashring/qmatmul.h"
#include "qmm/qmm_internal.h"

namespace flashring::qmm {
namespace {

using cpu::Isa;

constexpr TensorType kTypes[] = {TensorType::F32,  TensorType::F16,  TensorType::BF16, TensorType::Q8_0,
                                 TensorType::Q4_0, TensorType::Q4_1, TensorType::Q5_0, TensorType::Q5_1};
constexpr TensorType kOldTypes[] = {TensorType::F32,  TensorType::F16,  TensorType::BF16,
                                    TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1};

std::string name(TensorType t) { return gguf::typeName(static_cast<uint32_t>(t)); }
bool isBlockType(TensorType t) { return gguf::blockSize(t) == 32; }
bool isAffine(TensorType t) { return t == TensorType::Q4_1 || t == TensorType::Q5_1; }

uint32_t bitsOf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float floatOf(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- the ISA variants this CPU runs --------------------------------------------------------------------

struct Variant {
  Isa isa;
  bool vnni;
  std::string label;
};

// Every (ISA, VNNI) combination; `skipped` collects the ones this CPU lacks.
std::vector<Variant> variants(std::vector<std::string>* skipped = nullptr) {
  std::vector<Variant> v{{Isa::Scalar, false, "scalar"}};
  const auto add = [&](bool ok, Variant x) {
    if (ok) {
      v.push_back(x);
    } else if (skipped != nullptr) {
      skipped->push_back(x.label);
    }
  };
  add(cpu::isaSupported(Isa::Avx2), {Isa::Avx2, false, "avx2"});
  add(cpu::isaSupported(Isa::Avx2) && cpu::hasAvxVnni(), {Isa::Avx2, true, "avx2+avxvnni"});
  add(cpu::isaSupported(Isa::Avx512), {Isa::Avx512, false, "avx512"});
  add(cpu::isaSupported(Isa::Avx512) && cpu::hasAvx512Vnni(), {Isa::Avx512, true, "avx512+vnni"});
  return v;
}

void reportSkipped(const std::vector<std::string>& skipped) {
  for (const std::string& s : skipped) std::cout << "[ SKIPPED  ] " << s << ": this CPU lacks it\n";
}

// The kernels of a variant: its own table, or (null entry) the next lower ISA's, as the dispatcher does.
const detail::TypeKernels& kernelsOf(const Variant& v, TensorType t) {
  const detail::TypeKernels* k = detail::legacyKernelsVariant(v.isa, t, v.vnni);
  for (int i = static_cast<int>(v.isa) - 1; k == nullptr && i >= 0; --i)
    k = detail::legacyKernels(static_cast<Isa>(i), t);
  if (k != nullptr) return *k;
  static const detail::TypeKernels none{nullptr, nullptr};
  ADD_FAILURE() << "no kernels for " << name(t) << " at " << v.label;
  return none;
}

// Whether the dispatcher (legacyKernels) picks the VNNI variant at `isa` on this CPU.
bool cpuPicksVnni(Isa isa) { return isa == Isa::Avx2 ? cpu::hasAvxVnni() : isa == Isa::Avx512 && cpu::hasAvx512Vnni(); }

detail::QuantizeFn quantizerOf(Isa isa) {
  for (int i = static_cast<int>(isa); i >= 0; --i) {
    if (detail::QuantizeFn q = detail::q8Quantizer(static_cast<Isa>(i))) return q;
  }
  return nullptr;
}

// ---- an independent reading of ggml's layouts -----------------------------------------------------------

double halfValue(uint16_t h) {
  const int sign = (h & 0x8000) != 0 ? -1 : 1;
  const int exp = (h >> 10) & 0x1F;
  const int mant = h & 0x3FF;
  if (exp == 31) return mant == 0 ? sign * std::numeric_limits<double>::infinity() : std::nan("");
  if (exp == 0) return sign * std::ldexp(mant, -24);
  return sign * std::ldexp(1024 + mant, exp - 25);
}

uint16_t u16At(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

struct Decoded {
  std::vector<double> w;     // exact values (double), one per weight
  std::vector<float> wf;     // the values in fp32 arithmetic as ggml's dequantize_row_* computes them
  std::vector<int> code;     // block types: the integer code of each value, offset applied (q - 8 / q - 16)
  std::vector<double> d, m;  // block types: per-block scale and minimum (0 where the type has none)
};

Decoded decode(TensorType t, const uint8_t* row, size_t n) {
  Decoded out;
  out.w.resize(n);
  out.wf.resize(n);
  if (!isBlockType(t)) {
    for (size_t i = 0; i < n; ++i) {
      float f;
      if (t == TensorType::F32) {
        std::memcpy(&f, row + 4 * i, 4);
      } else if (t == TensorType::F16) {
        f = static_cast<float>(halfValue(u16At(row + 2 * i)));
      } else {
        f = floatOf(static_cast<uint32_t>(u16At(row + 2 * i)) << 16);
      }
      out.w[i] = f;
      out.wf[i] = f;
    }
    return out;
  }
  const size_t bb = gguf::blockBytes(t);
  out.code.resize(n);
  for (size_t b = 0; b < n / 32; ++b) {
    const uint8_t* blk = row + b * bb;
    const double d = halfValue(u16At(blk));
    const double m = isAffine(t) ? halfValue(u16At(blk + 2)) : 0.0;
    out.d.push_back(d);
    out.m.push_back(m);
    for (size_t j = 0; j < 32; ++j) {
      int q = 0;
      switch (t) {
        case TensorType::Q8_0:
          q = static_cast<int8_t>(blk[2 + j]);
          break;
        case TensorType::Q4_0:
        case TensorType::Q4_1: {
          const uint8_t byte = blk[(t == TensorType::Q4_0 ? 2 : 4) + j % 16];
          q = j < 16 ? (byte & 0xF) : (byte >> 4);
          if (t == TensorType::Q4_0) q -= 8;
          break;
        }
        default: {  // Q5_0, Q5_1: qh (4 bytes, bit j = 5th bit of value j), then qs as Q4
          const size_t qh_at = t == TensorType::Q5_0 ? 2 : 4;
          const uint8_t byte = blk[qh_at + 4 + j % 16];
          const int lo = j < 16 ? (byte & 0xF) : (byte >> 4);
          const int hi = (blk[qh_at + j / 8] >> (j % 8)) & 1;
          q = lo | (hi << 4);
          if (t == TensorType::Q5_0) q -= 16;
        }
      }
      out.code[b * 32 + j] = q;
      out.w[b * 32 + j] = q * d + m;
      const auto df = static_cast<float>(d), mf = static_cast<float>(m);
      out.wf[b * 32 + j] = isAffine(t) ? static_cast<float>(q) * df + mf : static_cast<float>(q) * df;
    }
  }
  return out;
}

// ---- random data ------------------------------------------------------------------------------------------

// Scales: a normal-range fp16 of either sign (about 2^-8 .. 2^4), or (extreme) one of the edge values.
uint16_t randomScale(std::mt19937& rng, bool extreme) {
  static constexpr uint16_t kEdges[] = {0x7BFF, 0xFBFF, 0x0001, 0x8001, 0x0000, 0x8000,
                                        0x0400, 0x3C00, 0xBC00, 0x03FF, 0x1400, 0x7800};
  if (extreme && rng() % 2 == 0) return kEdges[rng() % std::size(kEdges)];
  const auto exp = static_cast<uint16_t>(7 + rng() % 12);
  return static_cast<uint16_t>((rng() % 2) << 15 | exp << 10 | (rng() & 0x3FF));
}

// One row of n values of type t: random codes (every bit pattern), random finite scales.
std::vector<uint8_t> randomRow(TensorType t, size_t n, std::mt19937& rng, bool extreme) {
  std::vector<uint8_t> row(n / gguf::blockSize(t) * gguf::blockBytes(t));
  for (auto& b : row) b = static_cast<uint8_t>(rng());
  if (t == TensorType::F32) {
    std::normal_distribution<float> normal(0.f, 1.f);
    for (size_t i = 0; i < n; ++i) {
      float f = normal(rng);
      if (extreme) f *= std::ldexp(1.f, static_cast<int>(rng() % 80) - 40);
      std::memcpy(&row[4 * i], &f, 4);
    }
  } else if (t == TensorType::F16) {
    for (size_t i = 0; i < n; ++i) {
      if ((row[2 * i + 1] & 0x7C) == 0x7C) row[2 * i + 1] ^= 0x40;  // finite: clear one exponent bit
      if (!extreme) row[2 * i + 1] = static_cast<uint8_t>((row[2 * i + 1] & 0x83) | 0x38);  // |w| in [0.5, 1)
    }
  } else if (t == TensorType::BF16) {
    for (size_t i = 0; i < n; ++i) {
      // sign, exponent 127 +- 31 (or +- 7), random mantissa
      const int range = extreme ? 63 : 15;
      const auto e = static_cast<uint32_t>(127 - range / 2 + static_cast<int>(rng() % static_cast<unsigned>(range)));
      const uint16_t v = static_cast<uint16_t>((rng() % 2) << 15 | e << 7 | (rng() & 0x7F));
      std::memcpy(&row[2 * i], &v, 2);
    }
  } else {
    const size_t bb = gguf::blockBytes(t);
    for (size_t b = 0; b < n / 32; ++b) {
      const uint16_t d = randomScale(rng, extreme);
      std::memcpy(&row[b * bb], &d, 2);
      if (isAffine(t)) {
        const uint16_t m = randomScale(rng, extreme);
        std::memcpy(&row[b * bb + 2], &m, 2);
      }
    }
  }
  return row;
}

// Activations: normal values times a per-block magnitude (10^-3 .. 10^3 when extreme), some all-zero blocks.
std::vector<float> randomActivations(size_t n, std::mt19937& rng, bool extreme) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(n);
  for (size_t b = 0; b < (n + 31) / 32; ++b) {
    const float mag = extreme ? std::pow(10.f, static_cast<float>(static_cast<int>(rng() % 7) - 3)) : 1.f;
    const bool zero = extreme && rng() % 8 == 0;
    for (size_t j = b * 32; j < std::min(n, b * 32 + 32); ++j) x[j] = zero ? 0.f : normal(rng) * mag;
  }
  return x;
}

// The activation argument of the type's dot product: the floats, or their Q8 blocks (scalar quantizer).
std::vector<uint8_t> activationsFor(TensorType t, const std::vector<float>& x) {
  std::vector<uint8_t> act(actBytes(t, x.size()));
  if (actFormat(t) == ActFormat::F32) {
    std::memcpy(act.data(), x.data(), x.size() * 4);
  } else {
    detail::q8Quantizer(Isa::Scalar)(x.data(), x.size(), act.data());
  }
  return act;
}

// Dequantized activations (exact in double) and the magnitude sum of the dot product's terms: for block types
// sum over blocks of |d_w d_a| sum_j |code_j q_j| + |m_w s_a|, else sum_j |w_j a_j|.
struct DotRef {
  double exact = 0;         // sum over the exact weights times the dequantized activations
  double terms = 0;         // the magnitude sum
  double offset_terms = 0;  // affine types: sum |m_w s_a|
};

DotRef dotReference(TensorType t, const Decoded& w, const std::vector<uint8_t>& act, size_t n) {
  DotRef r;
  if (!isBlockType(t)) {
    const auto* a = reinterpret_cast<const float*>(act.data());
    for (size_t i = 0; i < n; ++i) {
      r.exact += w.w[i] * a[i];
      r.terms += std::fabs(w.w[i] * a[i]);
    }
    return r;
  }
  const auto* a = reinterpret_cast<const BlockQ8*>(act.data());
  for (size_t b = 0; b < n / 32; ++b) {
    double abs_isum = 0;
    for (size_t j = 0; j < 32; ++j) {
      r.exact += w.w[b * 32 + j] * (static_cast<double>(a[b].d) * a[b].qs[j]);
      abs_isum += std::fabs(static_cast<double>(w.code[b * 32 + j]) * a[b].qs[j]);
    }
    r.terms += std::fabs(w.d[b] * a[b].d) * abs_isum + std::fabs(w.m[b] * a[b].s);
    r.offset_terms += std::fabs(w.m[b] * a[b].s);
  }
  return r;
}

// Lengths: 1, 3, 17, 129 blocks (and, for the per-value types, lengths that are no multiple of a vector).
std::vector<size_t> lengths(TensorType t) {
  if (isBlockType(t)) return {32, 96, 32 * 17, 32 * 129};
  return {1, 3, 17, 129, 32, 96, 544, 4128, 4096 + 7};
}

// ---- 1. the quantizer ---------------------------------------------------------------------------------------

// Blocks of every kind the quantizer must treat alike in every ISA.
std::vector<float> quantizerInput(std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x;
  const auto block = [&](auto&& fn) {
    for (size_t j = 0; j < 32; ++j) x.push_back(fn(j));
  };
  for (int e = -149; e <= 124; e += 3) block([&](size_t) { return std::ldexp(normal(rng), e); });  // all magnitudes
  block([](size_t) { return 0.f; });
  block([](size_t j) { return j % 2 ? -0.f : 0.f; });
  block([](size_t j) { return floatOf(static_cast<uint32_t>(j + 1)); });             // smallest subnormals
  block([](size_t j) { return floatOf(0x00400000u + static_cast<uint32_t>(j)); });   // large subnormals
  block([](size_t j) { return -floatOf(0x007FFFFFu - static_cast<uint32_t>(j)); });  // largest subnormals
  block([](size_t j) { return j == 5 ? 1.f : floatOf(0x00000100u * static_cast<uint32_t>(j)); });  // mixed
  block([](size_t j) { return j == 0 ? 127.f : static_cast<float>(j) - 15.5f; });        // ties (d = 1): half-even
  block([](size_t j) { return j == 31 ? -254.f : 2.f * static_cast<float>(j) + 1.f; });  // ties with d = 2
  block([](size_t) { return 3.25f; });                                                   // a constant block
  block([](size_t j) { return j == 7 ? std::numeric_limits<float>::max() : 1.f; });
  block([](size_t j) { return j == 7 ? -std::numeric_limits<float>::max() : -1.f; });
  block([](size_t j) { return j == 3 ? 1e-37f : 1e-38f; });  // 1/d overflows: all-zero
  block([](size_t j) { return j == 3 ? 1e-36f : 1e-38f; });  // 1/d finite, d subnormal-adjacent
  block([](size_t j) { return j == 9 ? std::numeric_limits<float>::quiet_NaN() : 1.f; });
  block([](size_t j) { return j == 31 ? std::numeric_limits<float>::infinity() : 1.f; });
  block([](size_t j) { return j == 0 ? -std::numeric_limits<float>::infinity() : 0.f; });
  block([](size_t j) { return j == 0 ? floatOf(0x7F800001u) : 2.f; });   // signalling NaN
  block([](size_t j) { return j == 16 ? floatOf(0xFFC12345u) : 2.f; });  // negative NaN with payload
  for (int i = 0; i < 200; ++i) {
    const float mag = std::ldexp(1.f, static_cast<int>(rng() % 60) - 30);
    block([&](size_t) { return normal(rng) * mag; });
  }
  return x;
}

TEST(QmmLegacyQuantizer, BitIdenticalAcrossIsas) {
  std::mt19937 rng(1);
  const std::vector<float> x = quantizerInput(rng);
  std::vector<BlockQ8> ref(x.size() / 32);
  detail::q8Quantizer(Isa::Scalar)(x.data(), x.size(), ref.data());
  std::vector<std::string> skipped;
  int compared = 0;
  for (const Variant& v : variants(&skipped)) {
    if (v.isa == Isa::Scalar || v.vnni) continue;
    const detail::QuantizeFn own = detail::q8Quantizer(v.isa);
    if (own == nullptr) {
      std::cout << "[ SKIPPED  ] " << v.label << ": no quantizer of its own (falls back)\n";
      continue;
    }
    SCOPED_TRACE(v.label);
    // Every prefix length exercises the block loop's remainder handling (none: whole blocks only).
    for (size_t nb : {size_t{1}, size_t{2}, size_t{3}, ref.size()}) {
      std::vector<BlockQ8> got(nb);
      std::memset(got.data(), 0xAB, nb * sizeof(BlockQ8));
      own(x.data(), nb * 32, got.data());
      for (size_t b = 0; b < nb; ++b) {
        ASSERT_EQ(0, std::memcmp(&got[b], &ref[b], sizeof(BlockQ8)))
            << "block " << b << ": d " << got[b].d << " vs " << ref[b].d << ", s " << got[b].s << " vs " << ref[b].s;
      }
    }
    // And through the public entry point.
    std::vector<BlockQ8> pub(ref.size());
    quantizeActivations(v.isa, TensorType::Q4_0, x.data(), x.size(), pub.data());
    ASSERT_EQ(0, std::memcmp(pub.data(), ref.data(), ref.size() * sizeof(BlockQ8)));
    ++compared;
  }
  reportSkipped(skipped);
  if (compared == 0) GTEST_SKIP() << "no SIMD quantizer runs on this CPU: nothing to compare with the scalar one";
}

TEST(QmmLegacyQuantizer, Properties) {
  std::mt19937 rng(2);
  const std::vector<float> x = quantizerInput(rng);
  std::vector<BlockQ8> q(x.size() / 32);
  detail::q8Quantizer(Isa::Scalar)(x.data(), x.size(), q.data());
  int nonfinite = 0, zero = 0, tiny = 0;
  for (size_t b = 0; b < q.size(); ++b) {
    SCOPED_TRACE("block " + std::to_string(b));
    const float* xb = &x[b * 32];
    bool finite = true;
    float amax = 0;
    for (size_t j = 0; j < 32; ++j) {
      finite = finite && std::isfinite(xb[j]);
      amax = std::max(amax, std::fabs(xb[j]));
    }
    if (!finite) {
      ++nonfinite;
      EXPECT_EQ(bitsOf(q[b].d), bitsOf(std::numeric_limits<float>::quiet_NaN()));
      EXPECT_EQ(bitsOf(q[b].s), bitsOf(std::numeric_limits<float>::quiet_NaN()));
      for (int8_t c : q[b].qs) ASSERT_EQ(c, 0);
      continue;
    }
    int sum = 0;
    for (int8_t c : q[b].qs) {
      ASSERT_GE(c, -127);
      sum += c;
    }
    EXPECT_EQ(bitsOf(q[b].s), bitsOf(q[b].d * static_cast<float>(sum)));
    if (amax == 0.f) {
      ++zero;
      EXPECT_EQ(bitsOf(q[b].d), 0u);
      EXPECT_EQ(bitsOf(q[b].s), 0u);
      for (int8_t c : q[b].qs) ASSERT_EQ(c, 0);
      continue;
    }
    if (q[b].d == 0.f) {  // only where 1/d overflows fp32
      ++tiny;
      EXPECT_TRUE(std::isinf(1.f / (amax / 127.f))) << amax;
      for (int8_t c : q[b].qs) ASSERT_EQ(c, 0);
      continue;
    }
    EXPECT_EQ(bitsOf(q[b].d), bitsOf(amax / 127.f));
    bool has127 = false;
    for (size_t j = 0; j < 32; ++j) {
      const double err = std::fabs(static_cast<double>(xb[j]) - static_cast<double>(q[b].d) * q[b].qs[j]);
      ASSERT_LE(err, static_cast<double>(q[b].d) * (0.5 + 1e-4)) << "value " << j << " = " << xb[j];
      has127 = has127 || std::abs(q[b].qs[j]) == 127;
    }
    EXPECT_TRUE(has127) << "the largest value maps to +-127";
  }
  EXPECT_EQ(nonfinite, 5);
  EXPECT_GE(zero, 2);
  EXPECT_GE(tiny, 1);
  // Round half to even on the exact ties (block with d = 1: values j - 15.5).
  const size_t tie_block = [&] {
    for (size_t b = 0; b < q.size(); ++b)
      if (x[b * 32] == 127.f && x[b * 32 + 1] == -14.5f) return b;
    return size_t{0};
  }();
  ASSERT_EQ(q[tie_block].d, 1.f);
  for (size_t j = 1; j < 32; ++j) {
    EXPECT_EQ(q[tie_block].qs[j], static_cast<int>(std::nearbyint(static_cast<float>(j) - 15.5f))) << j;
    EXPECT_EQ(q[tie_block].qs[j] % 2, 0) << j;
  }
}

// ---- 2. dequantization --------------------------------------------------------------------------------------

// Rows with any bits at all, the scales of some blocks replaced by every class of fp16 (NaN, Inf, subnormal).
std::vector<uint8_t> anyBitsRow(TensorType t, size_t n, std::mt19937& rng) {
  static constexpr uint16_t kSpecials[] = {0x0000, 0x8000, 0x0001, 0x03FF, 0x8200, 0x0400, 0x3C00, 0xBC00, 0x7BFF,
                                           0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFD55, 0x7FFF, 0x1234, 0x0155};
  std::vector<uint8_t> row(n / gguf::blockSize(t) * gguf::blockBytes(t));
  for (auto& b : row) b = static_cast<uint8_t>(rng());
  if (isBlockType(t)) {
    const size_t bb = gguf::blockBytes(t);
    for (size_t b = 0; b < n / 32; ++b) {
      if (rng() % 2 == 0) std::memcpy(&row[b * bb], &kSpecials[rng() % std::size(kSpecials)], 2);
      if (isAffine(t) && rng() % 2 == 0) std::memcpy(&row[b * bb + 2], &kSpecials[rng() % std::size(kSpecials)], 2);
    }
  }
  return row;
}

TEST(QmmLegacyDequantize, BitIdenticalToScalarAndReference) {
  std::mt19937 rng(3);
  std::vector<std::string> skipped;
  const std::vector<Variant> vs = variants(&skipped);
  for (TensorType t : kTypes) {
    SCOPED_TRACE(name(t));
    for (size_t n : lengths(t)) {
      SCOPED_TRACE("n = " + std::to_string(n));
      const std::vector<uint8_t> row = anyBitsRow(t, n, rng);
      std::vector<float> ref(n, -1.f);
      kernelsOf(vs[0], t).dequantize(row.data(), ref.data(), n);
      // The scalar kernel against the layout decoded here (NaNs: NaN; their payloads are the kernels' business).
      const Decoded dec = decode(t, row.data(), n);
      for (size_t i = 0; i < n; ++i) {
        if (std::isnan(dec.wf[i])) {
          ASSERT_TRUE(std::isnan(ref[i])) << i;
        } else {
          ASSERT_EQ(bitsOf(ref[i]), bitsOf(dec.wf[i])) << i << ": " << ref[i] << " vs " << dec.wf[i];
        }
      }
      // gguf::dequantizeReference (bit for bit, NaN payloads included).
      std::vector<float> gg(n);
      gguf::dequantizeReference(t, row.data(), gg.data(), n);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(bitsOf(gg[i]), bitsOf(ref[i])) << "dequantizeReference, value " << i;
      for (const Variant& v : vs) {
        if (v.isa == Isa::Scalar) continue;
        SCOPED_TRACE(v.label);
        std::vector<float> got(n, -2.f);
        kernelsOf(v, t).dequantize(row.data(), got.data(), n);
        for (size_t i = 0; i < n; ++i) {
          // One exception to bit-for-bit: Q4_1 / Q5_1 values whose q * d and m are both NaN. Which NaN an
          // add returns depends on the operand order, and compilers commute adds (in either kernel).
          // (q * d is NaN for a NaN d, or for an Inf d times code 0.)
          if (isAffine(t) && std::isnan(dec.code[i] * dec.d[i / 32]) && std::isnan(dec.m[i / 32])) {
            ASSERT_TRUE(std::isnan(got[i])) << i;
            continue;
          }
          ASSERT_EQ(bitsOf(got[i]), bitsOf(ref[i])) << "value " << i << ": " << got[i] << " vs " << ref[i];
        }
        std::vector<float> pub(n);
        dequantizeRow(v.isa, t, row.data(), pub.data(), n);
        ASSERT_EQ(0, std::memcmp(pub.data(), got.data(), n * 4));
      }
    }
  }
  reportSkipped(skipped);
}

TEST(QmmLegacyDequantize, OldTypesMatchGgufDequantize) {
  // gguf::dequantize (its own AVX2 kernels at the active ISA) and qmm's scalar reference agree bit for bit.
  std::mt19937 rng(4);
  for (TensorType t : kOldTypes) {
    SCOPED_TRACE(name(t));
    const size_t n = 32 * 40;
    const std::vector<uint8_t> row = anyBitsRow(t, n, rng);
    std::vector<float> a(n), b(n);
    gguf::dequantize(t, row.data(), a.data(), n);
    dequantizeRow(Isa::Scalar, t, row.data(), b.data(), n);
    ASSERT_EQ(0, std::memcmp(a.data(), b.data(), n * 4));
  }
}

// ---- 3. SIMD dot products against the scalar reference ------------------------------------------------------

TEST(QmmLegacyDot, SimdMatchesScalarWithinBound) {
  std::mt19937 rng(5);
  std::vector<std::string> skipped;
  const std::vector<Variant> vs = variants(&skipped);
  if (vs.size() == 1) GTEST_SKIP() << "no SIMD ISA on this CPU: only the scalar kernels run";
  for (TensorType t : kTypes) {
    SCOPED_TRACE(name(t));
    for (size_t n : lengths(t)) {
      for (int trial = 0; trial < 6; ++trial) {
        const bool extreme = trial >= 3;
        SCOPED_TRACE("n = " + std::to_string(n) + (extreme ? ", extreme" : ""));
        const std::vector<uint8_t> row = randomRow(t, n, rng, extreme);
        const std::vector<uint8_t> act = activationsFor(t, randomActivations(n, rng, extreme));
        const float ref = kernelsOf(vs[0], t).dot(n, row.data(), act.data());
        const DotRef r = dotReference(t, decode(t, row.data(), n), act, n);
        ASSERT_TRUE(std::isfinite(ref));
        for (const Variant& v : vs) {
          if (v.isa == Isa::Scalar) continue;
          SCOPED_TRACE(v.label);
          const float got = kernelsOf(v, t).dot(n, row.data(), act.data());
          ASSERT_LE(std::fabs(static_cast<double>(got) - ref), 1e-5 * r.terms + 1e-35) << got << " vs " << ref;
          if (v.vnni == cpuPicksVnni(v.isa)) {
            ASSERT_EQ(bitsOf(dot(v.isa, t, n, row.data(), act.data())), bitsOf(got));
          }
        }
      }
    }
  }
  reportSkipped(skipped);
}

// A cancellation-free check of the exactness of the integer part: all-equal codes and scales 1 give exact
// small integers in every variant.
TEST(QmmLegacyDot, IntegerPartIsExact) {
  for (TensorType t : {TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1, TensorType::Q5_0, TensorType::Q5_1}) {
    SCOPED_TRACE(name(t));
    const size_t n = 32 * 5;
    std::mt19937 rng(6);
    std::vector<uint8_t> row = randomRow(t, n, rng, false);
    const size_t bb = gguf::blockBytes(t);
    const uint16_t one = 0x3C00, zero = 0;
    for (size_t b = 0; b < n / 32; ++b) {
      std::memcpy(&row[b * bb], &one, 2);
      if (isAffine(t)) std::memcpy(&row[b * bb + 2], &zero, 2);
    }
    // Activations: d = 1 exactly (max 127), integer values.
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(static_cast<int>(rng() % 255) - 127);
    for (size_t b = 0; b < n / 32; ++b) x[b * 32 + 3] = 127.f;
    const std::vector<uint8_t> act = activationsFor(t, x);
    const Decoded dec = decode(t, row.data(), n);
    double want = 0;
    for (size_t i = 0; i < n; ++i) want += dec.code[i] * static_cast<double>(x[i]);
    for (const Variant& v : variants()) {
      SCOPED_TRACE(v.label);
      EXPECT_EQ(static_cast<double>(kernelsOf(v, t).dot(n, row.data(), act.data())), want);
    }
  }
}

TEST(QmmLegacyDot, NonFiniteInputsStayNonFinite) {
  std::mt19937 rng(7);
  for (TensorType t : kTypes) {
    SCOPED_TRACE(name(t));
    const size_t n = 32 * 17;
    const std::vector<uint8_t> row = randomRow(t, n, rng, false);
    for (size_t bad_block : {size_t{0}, size_t{9}, size_t{16}}) {
      std::vector<float> x = randomActivations(n, rng, false);
      x[bad_block * 32 + 5] =
          bad_block == 9 ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
      const std::vector<uint8_t> act = activationsFor(t, x);
      for (const Variant& v : variants()) {
        SCOPED_TRACE(v.label);
        const float got = kernelsOf(v, t).dot(n, row.data(), act.data());
        // Q8 blocks holding Inf are NaN-scaled; fp32 activations keep the Inf (a NaN or an Inf comes out).
        EXPECT_FALSE(std::isfinite(got)) << got;
        if (isBlockType(t) || bad_block != 9) {
          EXPECT_TRUE(std::isnan(got)) << got;
        }
      }
    }
    if (isBlockType(t)) {
      // An Inf weight scale: +-Inf or NaN in every variant.
      std::vector<uint8_t> w = row;
      const uint16_t inf = 0x7C00;
      std::memcpy(&w[4 * gguf::blockBytes(t)], &inf, 2);
      const std::vector<uint8_t> act = activationsFor(t, randomActivations(n, rng, false));
      // (SIMD kernels scale partial sums, so one may give NaN where the scalar sum gives Inf.)
      for (const Variant& v : variants()) {
        SCOPED_TRACE(v.label);
        EXPECT_FALSE(std::isfinite(kernelsOf(v, t).dot(n, w.data(), act.data())));
      }
    }
  }
}

// ---- 3b. tiles (several rows x several activation vectors per call) -------------------------------------------

// Every tile of every variant against the same table's dot, bit for bit: random blocks (moderate and extreme
// scales), lengths of 1, 3, 17, 129 blocks (an odd last block, a last pair), rows and vectors at strides
// with padding, outputs at a leading dimension wider than the tile; and within the SIMD bound of the scalar
// reference.
TEST(QmmLegacyTile, EveryOutputIsTheTablesDot) {
  std::mt19937 rng(21);
  std::vector<std::string> skipped;
  int compared = 0;
  for (const Variant& v : variants(&skipped)) {
    for (TensorType t : kTypes) {
      const detail::TypeKernels& k = kernelsOf(v, t);
      for (int lr = 0; lr < 3; ++lr) {
        for (int lm = 0; lm < 3; ++lm) {
          if (k.tiles[lr][lm] == nullptr) continue;
          ASSERT_FALSE(lr == 0 && lm == 0) << "tiles[0][0] must be null (dot is the 1 x 1 tile)";
          const size_t nr = size_t{1} << lr, nv = size_t{1} << lm;
          SCOPED_TRACE(v.label + " " + name(t) + " tile " + std::to_string(nr) + "x" + std::to_string(nv));
          for (size_t n : lengths(t)) {
            for (int trial = 0; trial < 4; ++trial) {
              const bool extreme = trial >= 2;
              SCOPED_TRACE("n = " + std::to_string(n) + (extreme ? ", extreme" : ""));
              const size_t rb = n / gguf::blockSize(t) * gguf::blockBytes(t) + 8 * static_cast<size_t>(trial % 2);
              std::vector<uint8_t> w(rb * nr, 0xA5);
              for (size_t r = 0; r < nr; ++r) {
                const std::vector<uint8_t> row = randomRow(t, n, rng, extreme);
                std::memcpy(&w[r * rb], row.data(), row.size());
              }
              const size_t ab = actBytes(t, n) + 40 * static_cast<size_t>(trial % 2);
              std::vector<uint8_t> act(ab * nv, 0x5A);
              for (size_t i = 0; i < nv; ++i) {
                const std::vector<uint8_t> a = activationsFor(t, randomActivations(n, rng, extreme));
                std::memcpy(&act[i * ab], a.data(), a.size());
              }
              const size_t ldo = nr + 3;
              std::vector<float> out(ldo * nv, -9.f);
              k.tiles[lr][lm](n, w.data(), rb, act.data(), ab, out.data(), ldo);
              for (size_t i = 0; i < nv; ++i) {
                for (size_t r = 0; r < ldo; ++r) {
                  const float got = out[i * ldo + r];
                  if (r >= nr) {
                    ASSERT_EQ(got, -9.f) << "wrote outside the tile: vector " << i << ", row " << r;
                    continue;
                  }
                  const float want = k.dot(n, &w[r * rb], &act[i * ab]);
                  ASSERT_EQ(bitsOf(got), bitsOf(want))
                      << "row " << r << ", vector " << i << ": " << got << " vs " << want;
                  const std::vector<uint8_t> a1(act.begin() + static_cast<std::ptrdiff_t>(i * ab),
                                                act.begin() + static_cast<std::ptrdiff_t>(i * ab + actBytes(t, n)));
                  const float ref = kernelsOf(variants()[0], t).dot(n, &w[r * rb], a1.data());
                  const DotRef dr = dotReference(t, decode(t, &w[r * rb], n), a1, n);
                  ASSERT_LE(std::fabs(static_cast<double>(got) - ref), 1e-5 * dr.terms + 1e-35) << got << " vs " << ref;
                }
              }
              ++compared;
            }
          }
        }
      }
    }
  }
  reportSkipped(skipped);
  if (cpu::isaSupported(Isa::Avx512)) {
    EXPECT_GT(compared, 0) << "the AVX-512 tables have tiles";
  }
  if (compared == 0) GTEST_SKIP() << "no variant on this CPU has tiles";
}

// A non-finite activation block makes exactly the outputs of its vector NaN, in every tile.
TEST(QmmLegacyTile, NonFiniteVectorStaysInItsOutputs) {
  std::mt19937 rng(22);
  for (const Variant& v : variants()) {
    for (TensorType t : kTypes) {
      if (!isBlockType(t)) continue;
      const detail::TypeKernels& k = kernelsOf(v, t);
      for (int lr = 0; lr < 3; ++lr) {
        for (int lm = 0; lm < 3; ++lm) {
          if (k.tiles[lr][lm] == nullptr) continue;
          SCOPED_TRACE(v.label + " " + name(t) + " tile " + std::to_string(lr) + "," + std::to_string(lm));
          const size_t nr = size_t{1} << lr, nv = size_t{1} << lm, n = 32 * 17;
          const size_t rb = n / 32 * gguf::blockBytes(t), ab = actBytes(t, n);
          std::vector<uint8_t> w;
          for (size_t r = 0; r < nr; ++r) {
            const std::vector<uint8_t> row = randomRow(t, n, rng, false);
            w.insert(w.end(), row.begin(), row.end());
          }
          const size_t bad = nv - 1;
          std::vector<uint8_t> act;
          for (size_t i = 0; i < nv; ++i) {
            std::vector<float> x = randomActivations(n, rng, false);
            if (i == bad) x[16 * 32 + 3] = std::numeric_limits<float>::quiet_NaN();  // the last, odd block
            const std::vector<uint8_t> a = activationsFor(t, x);
            act.insert(act.end(), a.begin(), a.end());
          }
          std::vector<float> out(nr * nv);
          k.tiles[lr][lm](n, w.data(), rb, act.data(), ab, out.data(), nr);
          for (size_t i = 0; i < nv; ++i)
            for (size_t r = 0; r < nr; ++r) EXPECT_EQ(std::isnan(out[i * nr + r]), i == bad) << r << " " << i;
        }
      }
    }
  }
}

// ---- 4. the scalar reference against an exact computation ---------------------------------------------------

TEST(QmmLegacyDot, ScalarMatchesExactDoubleSum) {
  std::mt19937 rng(8);
  const Variant scalar{Isa::Scalar, false, "scalar"};
  for (TensorType t : kTypes) {
    SCOPED_TRACE(name(t));
    for (size_t n : lengths(t)) {
      for (int trial = 0; trial < 6; ++trial) {
        const bool extreme = trial >= 3;
        SCOPED_TRACE("n = " + std::to_string(n) + (extreme ? ", extreme" : ""));
        const std::vector<uint8_t> row = randomRow(t, n, rng, extreme);
        const std::vector<uint8_t> act = activationsFor(t, randomActivations(n, rng, extreme));
        const double got = kernelsOf(scalar, t).dot(n, row.data(), act.data());
        const DotRef r = dotReference(t, decode(t, row.data(), n), act, n);
        // One rounding of the result to fp32, and for Q4_1 / Q5_1 the fp32 rounding of s_a = d_a * sum(q).
        const double bound =
            std::ldexp(std::fabs(r.exact), -24) + std::ldexp(r.offset_terms, -24) + 1e-12 * r.terms + 1e-44;
        ASSERT_LE(std::fabs(got - r.exact), bound) << got << " vs " << r.exact;
      }
    }
  }
}

// ---- 5. qmm::matmul through the public API ------------------------------------------------------------------

class IsaGuard {
 public:
  IsaGuard() : isa_(cpu::activeIsa()), threads_(cpu::threads()) {}
  ~IsaGuard() {
    cpu::setActiveIsa(isa_);
    cpu::setThreads(threads_);
  }
  IsaGuard(const IsaGuard&) = delete;
  IsaGuard& operator=(const IsaGuard&) = delete;

 private:
  Isa isa_;
  int threads_;
};

TEST(QmmLegacyMatmul, DotAndDequantGemmMatchDoubleReference) {
  IsaGuard guard;
  std::mt19937 rng(9);
  std::vector<std::string> skipped;
  std::vector<Variant> isas;
  for (const Variant& v : variants(&skipped))
    if (!v.vnni) isas.push_back(v);
  const int64_t rows = 37, cols = 32 * 9;
  for (TensorType t : kTypes) {
    SCOPED_TRACE(name(t));
    const std::vector<uint8_t> w = randomRow(t, static_cast<size_t>(rows * cols), rng, false);
    const size_t row_bytes = static_cast<size_t>(cols) / gguf::blockSize(t) * gguf::blockBytes(t);
    const Matrix mat{t, w.data(), rows, cols, row_bytes};
    std::vector<Decoded> dec;
    for (int64_t r = 0; r < rows; ++r) dec.push_back(decode(t, w.data() + r * row_bytes, static_cast<size_t>(cols)));
    for (int64_t m : {1, 2, 3, 5, 9}) {
      const std::vector<float> x = randomActivations(static_cast<size_t>(m * cols), rng, false);
      // Double references: with the raw activations, and with the Q8-quantized ones (what Dot computes).
      // terms: sum of |terms| of the quantized dot; mag: sum (|code d| + |m|) |x| (|w x| for per-value types),
      // which bounds the rounding of the dequantized weights and of sgemm; qerr: sum |w| d_a.
      std::vector<double> exact(static_cast<size_t>(m * rows)), quant_exact(exact.size()), terms(exact.size()),
          mag(exact.size()), qerr(exact.size());
      for (int64_t i = 0; i < m; ++i) {
        const std::vector<float> xi(x.begin() + i * cols, x.begin() + (i + 1) * cols);
        const std::vector<uint8_t> act = activationsFor(t, xi);
        for (int64_t r = 0; r < rows; ++r) {
          const size_t o = static_cast<size_t>(i * rows + r);
          for (int64_t j = 0; j < cols; ++j) {
            const auto jj = static_cast<size_t>(j);
            exact[o] += dec[r].w[jj] * xi[jj];
            if (isBlockType(t)) {
              mag[o] +=
                  (std::fabs(dec[r].code[jj] * dec[r].d[jj / 32]) + std::fabs(dec[r].m[jj / 32])) * std::fabs(xi[jj]);
              qerr[o] += std::fabs(dec[r].w[jj]) * reinterpret_cast<const BlockQ8*>(act.data())[jj / 32].d;
            } else {
              mag[o] += std::fabs(dec[r].w[jj] * xi[jj]);
            }
          }
          const DotRef dr = dotReference(t, dec[r], act, static_cast<size_t>(cols));
          quant_exact[o] = dr.exact;
          terms[o] = dr.terms;
        }
      }
      for (const Variant& v : isas) {
        cpu::setActiveIsa(v.isa);
        for (int threads : {1, 2}) {
          cpu::setThreads(threads);
          for (MatmulPath path : {MatmulPath::Dot, MatmulPath::DequantGemm, MatmulPath::Auto}) {
            SCOPED_TRACE(v.label + ", m = " + std::to_string(m) + ", threads " + std::to_string(threads) + ", path " +
                         std::to_string(static_cast<int>(path)));
            Workspace ws;
            std::vector<float> y(static_cast<size_t>(m * rows), -7.f);
            matmul(mat, x.data(), m, y.data(), ws, path);
            const bool quantized =
                isBlockType(t) && (path == MatmulPath::Dot || (path == MatmulPath::Auto && m < gemmThreshold()));
            for (size_t o = 0; o < y.size(); ++o) {
              const double tol = 3e-5 * mag[o] + 1e-30;
              // Quantized activations: |x - d q| <= d / 2 per value.
              ASSERT_LE(std::fabs(y[o] - exact[o]), tol + (quantized ? (0.5 + 1e-4) * qerr[o] : 0.0)) << o;
              if (quantized) {
                ASSERT_LE(std::fabs(y[o] - quant_exact[o]), 1e-5 * terms[o] + 1e-30) << o;
              }
            }
            // The integer path (tiles or not, any thread count) is exactly the dispatched dot product of
            // every row with the dispatched quantizer's codes of every activation row.
            if (path == MatmulPath::Dot || (path == MatmulPath::Auto && m < gemmThreshold() && t != TensorType::F32)) {
              for (int64_t i = 0; i < m; ++i) {
                std::vector<uint8_t> a(actBytes(t, static_cast<size_t>(cols)));
                quantizeActivations(t, x.data() + i * cols, static_cast<size_t>(cols), a.data());
                for (int64_t r = 0; r < rows; ++r) {
                  const float want =
                      dot(t, static_cast<size_t>(cols), w.data() + static_cast<size_t>(r) * row_bytes, a.data());
                  ASSERT_EQ(bitsOf(y[static_cast<size_t>(i * rows + r)]), bitsOf(want)) << "row " << r << " col " << i;
                }
              }
            }
          }
        }
      }
    }
  }
  reportSkipped(skipped);
}

// The Dot path at many shapes (rows read as streams of tiles, rows and vectors left over, chunks over 1 to 3
// threads): every output bit for bit the dispatched dot product of its row and activation row, at every ISA.
TEST(QmmLegacyMatmul, DotPathIsTheDotProductAtAnyShape) {
  IsaGuard guard;
  std::mt19937 rng(23);
  for (const Variant& v : variants()) {
    if (v.vnni) continue;
    cpu::setActiveIsa(v.isa);
    for (TensorType t : {TensorType::Q4_1, TensorType::Q8_0, TensorType::Q5_0, TensorType::F16}) {
      for (int64_t rows : {int64_t{1}, int64_t{7}, int64_t{64}, int64_t{259}, int64_t{1003}}) {
        const int64_t cols = 32 * 5;
        const size_t row_bytes = static_cast<size_t>(cols) / gguf::blockSize(t) * gguf::blockBytes(t);
        const std::vector<uint8_t> w = randomRow(t, static_cast<size_t>(rows * cols), rng, false);
        const Matrix mat{t, w.data(), rows, cols, row_bytes};
        for (int64_t m : {1, 2, 3, 4, 7}) {
          const std::vector<float> x = randomActivations(static_cast<size_t>(m * cols), rng, false);
          std::vector<float> want(static_cast<size_t>(m * rows));
          for (int64_t i = 0; i < m; ++i) {
            std::vector<uint8_t> a(actBytes(t, static_cast<size_t>(cols)));
            quantizeActivations(t, x.data() + i * cols, static_cast<size_t>(cols), a.data());
            for (int64_t r = 0; r < rows; ++r)
              want[static_cast<size_t>(i * rows + r)] =
                  dot(t, static_cast<size_t>(cols), w.data() + static_cast<size_t>(r) * row_bytes, a.data());
          }
          for (int threads : {1, 2, 3}) {
            cpu::setThreads(threads);
            SCOPED_TRACE(v.label + " " + name(t) + " rows " + std::to_string(rows) + " m " + std::to_string(m) +
                         " threads " + std::to_string(threads));
            Workspace ws;
            std::vector<float> y(want.size(), -7.f);
            matmul(mat, x.data(), m, y.data(), ws, MatmulPath::Dot);
            for (size_t o = 0; o < y.size(); ++o) ASSERT_EQ(bitsOf(y[o]), bitsOf(want[o])) << o;
          }
        }
      }
    }
  }
}

// ---- errors and tables ------------------------------------------------------------------------------------------

template <class Fn>
void expectInvalidArgument(Fn&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no InvalidArgument; expected one mentioning " << needle;
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(QmmLegacyErrors, LengthsNotAMultipleOfTheBlockSize) {
  std::vector<uint8_t> buf(4096);
  std::vector<float> f(256);
  for (TensorType t : {TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1, TensorType::Q5_0, TensorType::Q5_1}) {
    SCOPED_TRACE(name(t));
    expectInvalidArgument([&] { dot(t, 33, buf.data(), buf.data()); }, "block size 32");
    expectInvalidArgument([&] { quantizeActivations(t, f.data(), 40, buf.data()); }, "block size 32");
    expectInvalidArgument([&] { dequantizeRow(t, buf.data(), f.data(), 31); }, "block size 32");
    Workspace ws;
    const Matrix m{t, buf.data(), 2, 48, 64};
    expectInvalidArgument([&] { matmul(m, f.data(), 1, f.data() + 128, ws); }, "block size");
  }
  // The per-value types take any length.
  std::vector<float> x(7, 1.f), w(7, 2.f);
  EXPECT_EQ(dot(TensorType::F32, 7, reinterpret_cast<const uint8_t*>(w.data()), x.data()), 14.f);
}

TEST(QmmLegacyTables, TypesAndFallbacks) {
  for (const Variant& v : variants()) {
    for (TensorType t : kTypes) {
      const detail::TypeKernels& k = kernelsOf(v, t);
      EXPECT_NE(k.dot, nullptr) << name(t) << " " << v.label;
      EXPECT_NE(k.dequantize, nullptr) << name(t) << " " << v.label;
    }
    for (TensorType t : {TensorType::Q4_K, TensorType::Q5_K, TensorType::Q6_K}) {
      EXPECT_EQ(detail::legacyKernels(v.isa, t), nullptr) << name(t);
      EXPECT_EQ(detail::legacyKernelsVariant(v.isa, t, v.vnni), nullptr) << name(t);
    }
    EXPECT_NE(quantizerOf(v.isa), nullptr);
  }
  EXPECT_NE(detail::q8Quantizer(Isa::Scalar), nullptr);
  for (TensorType t : kTypes) EXPECT_NE(detail::legacyKernels(Isa::Scalar, t), nullptr) << name(t);
}

}  // namespace
}  // namespace flashring::qmm
