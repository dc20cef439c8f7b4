// Scalar reference kernels of the K-quant weight types Q4_K, Q5_K, Q6_K (ggml's 256-value super-blocks)
// and of the Q8K activation quantizer: the definition of every result, and the ISA table lookup.
//
// Dequantization follows ggml's dequantize_row_q4_K / q5_K / q6_K operation for operation:
//   Q4_K, Q5_K: per sub-block of 32, d1 = d * sc and m1 = dmin * m (fp32), then y = d1 * q - m1
//   Q6_K:       per sub-block of 16, y = (d * scale) * (q - 32)
// (-ffp-contract=off: no multiply is fused with the subtraction, so the SIMD versions round identically).
//
// Dot products with Q8K activations (a.d, a.qs, a.bsums) per super-block, all integer sums exact in int32:
//   Q4_K, Q5_K: sumi = sum_j sc_j * sum_{l<32} q_{32j+l} a_{32j+l},  summ = sum_j m_j * (bsums_{2j} + bsums_{2j+1})
//               block = (fp16(d) * a.d) * sumi - (fp16(dmin) * a.d) * summ
//   Q6_K:       sumi = sum_j scale_j * sum_{l<16} (q_{16j+l} - 32) a_{16j+l}
//               block = (fp16(d) * a.d) * sumi
// and the blocks summed in fp32 in order. Bounds: |sumi| < 8 * 63 * 32 * 31 * 127 (Q5_K) ~ 6.4e7 and
// 16 * 128 * 16 * 32 * 127 (Q6_K) ~ 1.3e8, far inside int32.
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/dequant_internal.h"
#include "qmm/qmm_internal.h"

namespace flashring::qmm::detail {

// The SIMD files' tables (kquants_avx2.cc, kquants_avx512.cc, kquants_avx512vnni.cc).
const TypeKernels* kquantKernelsAvx2(TensorType t);
const TypeKernels* kquantKernelsAvx512(TensorType t);
const TypeKernels* kquantKernelsAvx512Vnni(TensorType t);
QuantizeFn q8kQuantizerAvx2();
QuantizeFn q8kQuantizerAvx512();

namespace {

using gguf::detail::halfToFloat;
using gguf::detail::loadU16;

// ggml's get_scale_min_k4 for all 8 sub-blocks: 6-bit scales and mins packed in 12 bytes.
//   j < 4:  sc = s[j] & 63,                          m = s[j + 4] & 63
//   j >= 4: sc = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4,  m = (s[j + 4] >> 4) | (s[j] >> 6) << 4
void scaleMinK4(const uint8_t* s, uint8_t* sc, uint8_t* m) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = static_cast<uint8_t>(s[j] & 63);
    m[j] = static_cast<uint8_t>(s[j + 4] & 63);
  }
  for (int j = 4; j < 8; ++j) {
    sc[j] = static_cast<uint8_t>((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4));
    m[j] = static_cast<uint8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

float loadFloat(const void* p) {
  float f;
  std::memcpy(&f, p, sizeof f);
  return f;
}

// Value l (0..255) of a Q4_K / Q5_K block's 4-bit part: sub-block pair c = l / 64 lives in qs[32c .. 32c+31],
// the even sub-block in the low nibbles, the odd one in the high nibbles.
inline int low4(const uint8_t* qs, size_t l) {
  const uint8_t b = qs[(l / 64) * 32 + l % 32];
  return (l % 64) < 32 ? (b & 15) : (b >> 4);
}
// Q5_K's fifth bit of value l: bit (l / 32) of qh[l % 32].
inline int high1(const uint8_t* qh, size_t l) { return (qh[l % 32] >> (l / 32)) & 1; }
// Q6_K's 6-bit code of value l (0..63, before the -32): halves of 128; inside one, value 32g + i (g = 0..3)
// takes the low (g < 2) or high nibble of ql[32 * (g & 1) + i] and bits 2g, 2g+1 of qh[i].
inline int code6(const uint8_t* ql, const uint8_t* qh, size_t l) {
  const size_t h = l / 128, g = (l % 128) / 32, i = l % 32;
  const uint8_t b = ql[64 * h + 32 * (g & 1) + i];
  const int lo = g < 2 ? (b & 15) : (b >> 4);
  return lo | (((qh[32 * h + i] >> (2 * g)) & 3) << 4);
}

void dequantQ4K(const uint8_t* src, float* dst, size_t n) {
  for (size_t b = 0; b < n / kQKK; ++b) {
    const uint8_t* blk = src + b * sizeof(BlockQ4_K);
    const float d = halfToFloat(loadU16(blk));
    const float dmin = halfToFloat(loadU16(blk + 2));
    uint8_t sc[8], m[8];
    scaleMinK4(blk + offsetof(BlockQ4_K, scales), sc, m);
    const uint8_t* qs = blk + offsetof(BlockQ4_K, qs);
    float* y = dst + b * kQKK;
    for (size_t j = 0; j < 8; ++j) {
      const float d1 = d * static_cast<float>(sc[j]);
      const float m1 = dmin * static_cast<float>(m[j]);
      for (size_t l = 32 * j; l < 32 * j + 32; ++l) y[l] = d1 * static_cast<float>(low4(qs, l)) - m1;
    }
  }
}

void dequantQ5K(const uint8_t* src, float* dst, size_t n) {
  for (size_t b = 0; b < n / kQKK; ++b) {
    const uint8_t* blk = src + b * sizeof(BlockQ5_K);
    const float d = halfToFloat(loadU16(blk));
    const float dmin = halfToFloat(loadU16(blk + 2));
    uint8_t sc[8], m[8];
    scaleMinK4(blk + offsetof(BlockQ5_K, scales), sc, m);
    const uint8_t* qh = blk + offsetof(BlockQ5_K, qh);
    const uint8_t* qs = blk + offsetof(BlockQ5_K, qs);
    float* y = dst + b * kQKK;
    for (size_t j = 0; j < 8; ++j) {
      const float d1 = d * static_cast<float>(sc[j]);
      const float m1 = dmin * static_cast<float>(m[j]);
      for (size_t l = 32 * j; l < 32 * j + 32; ++l)
        y[l] = d1 * static_cast<float>(low4(qs, l) | (high1(qh, l) << 4)) - m1;
    }
  }
}

void dequantQ6K(const uint8_t* src, float* dst, size_t n) {
  for (size_t b = 0; b < n / kQKK; ++b) {
    const uint8_t* blk = src + b * sizeof(BlockQ6_K);
    const uint8_t* ql = blk + offsetof(BlockQ6_K, ql);
    const uint8_t* qh = blk + offsetof(BlockQ6_K, qh);
    const auto* scales = reinterpret_cast<const int8_t*>(blk + offsetof(BlockQ6_K, scales));
    const float d = halfToFloat(loadU16(blk + offsetof(BlockQ6_K, d)));
    float* y = dst + b * kQKK;
    for (size_t l = 0; l < kQKK; ++l)
      y[l] = d * static_cast<float>(scales[l / 16]) * static_cast<float>(code6(ql, qh, l) - 32);
  }
}

// The activation block `b` of a Q8K row; its fields read with memcpy (the buffer need not be aligned).
struct Act {
  float d;
  const int8_t* qs;
  int16_t bsums[16];
};
Act actBlock(const void* act, size_t b) {
  const auto* p = static_cast<const uint8_t*>(act) + b * sizeof(BlockQ8K);
  Act a;
  a.d = loadFloat(p + offsetof(BlockQ8K, d));
  a.qs = reinterpret_cast<const int8_t*>(p + offsetof(BlockQ8K, qs));
  std::memcpy(a.bsums, p + offsetof(BlockQ8K, bsums), sizeof a.bsums);
  return a;
}

// The shared part of Q4_K and Q5_K: codes(l) gives the unsigned code of value l.
template <class Codes>
float dotScaleMin(float d16, float dmin16, const uint8_t* scales, const Act& a, Codes codes) {
  uint8_t sc[8], m[8];
  scaleMinK4(scales, sc, m);
  int32_t sumi = 0, summ = 0;
  for (size_t j = 0; j < 8; ++j) {
    int32_t s = 0;
    for (size_t l = 32 * j; l < 32 * j + 32; ++l) s += codes(l) * a.qs[l];
    sumi += sc[j] * s;
    summ += m[j] * (a.bsums[2 * j] + a.bsums[2 * j + 1]);
  }
  return (d16 * a.d) * static_cast<float>(sumi) - (dmin16 * a.d) * static_cast<float>(summ);
}

float dotQ4K(size_t n, const uint8_t* w, const void* act) {
  float sum = 0.f;
  for (size_t b = 0; b < n / kQKK; ++b) {
    const uint8_t* blk = w + b * sizeof(BlockQ4_K);
    const uint8_t* qs = blk + offsetof(BlockQ4_K, qs);
    sum += dotScaleMin(halfToFloat(loadU16(blk)), halfToFloat(loadU16(blk + 2)), blk + offsetof(BlockQ4_K, scales),
                       actBlock(act, b), [qs](size_t l) { return low4(qs, l); });
  }
  return sum;
}

float dotQ5K(size_t n, const uint8_t* w, const void* act) {
  float sum = 0.f;
  for (size_t b = 0; b < n / kQKK; ++b) {
    const uint8_t* blk = w + b * sizeof(BlockQ5_K);
    const uint8_t* qh = blk + offsetof(BlockQ5_K, qh);
    const uint8_t* qs = blk + offsetof(BlockQ5_K, qs);
    sum += dotScaleMin(halfToFloat(loadU16(blk)), halfToFloat(loadU16(blk + 2)), blk + offsetof(BlockQ5_K, scales),
                       actBlock(act, b), [qs, qh](size_t l) { return low4(qs, l) | (high1(qh, l) << 4); });
  }
  return sum;
}

float dotQ6K(size_t n, const uint8_t* w, const void* act) {
  float sum = 0.f;
  for (size_t b = 0; b < n / kQKK; ++b) {
    const uint8_t* blk = w + b * sizeof(BlockQ6_K);
    const uint8_t* ql = blk + offsetof(BlockQ6_K, ql);
    const uint8_t* qh = blk + offsetof(BlockQ6_K, qh);
    const auto* scales = reinterpret_cast<const int8_t*>(blk + offsetof(BlockQ6_K, scales));
    const Act a = actBlock(act, b);
    int32_t sumi = 0;
    for (size_t j = 0; j < 16; ++j) {
      int32_t s = 0;
      for (size_t l = 16 * j; l < 16 * j + 16; ++l) s += (code6(ql, qh, l) - 32) * a.qs[l];
      sumi += scales[j] * s;
    }
    sum += (halfToFloat(loadU16(blk + offsetof(BlockQ6_K, d))) * a.d) * static_cast<float>(sumi);
  }
  return sum;
}

// Q8K activations (qmatmul.h): per block of 256, d = max|x| / 127, q = nearbyint(x * (1 / d)) (round half
// to even under the default rounding mode, as vcvtps2dq), bsums = sums of 16 codes. Non-finite input:
// d = NaN, codes and bsums 0. A d below FLT_MIN (max|x| < 127 * FLT_MIN, all-zero blocks included) makes
// an all-zero block with d = 0: 1 / d would overflow or lose the precision that keeps |q| <= 127.
void quantizeQ8K(const float* x, size_t n, void* out) {
  for (size_t b = 0; b < n / kQ8KBlock; ++b) {
    const float* xb = x + b * kQ8KBlock;
    BlockQ8K blk{};
    float amax = 0.f;
    bool finite = true;
    for (size_t i = 0; i < kQ8KBlock; ++i) {
      const float a = std::fabs(xb[i]);
      finite = finite && a <= std::numeric_limits<float>::max();
      amax = a > amax ? a : amax;
    }
    if (!finite) {
      blk.d = std::numeric_limits<float>::quiet_NaN();
    } else {
      const float d = amax / 127.f;
      if (d >= std::numeric_limits<float>::min()) {
        const float id = 1.f / d;
        blk.d = d;
        for (size_t i = 0; i < kQ8KBlock; ++i) blk.qs[i] = static_cast<int8_t>(std::nearbyint(xb[i] * id));
        for (size_t j = 0; j < 16; ++j) {
          int s = 0;
          for (size_t i = 16 * j; i < 16 * j + 16; ++i) s += blk.qs[i];
          blk.bsums[j] = static_cast<int16_t>(s);
        }
      }
    }
    std::memcpy(static_cast<uint8_t*>(out) + b * sizeof(BlockQ8K), &blk, sizeof blk);
  }
}

const TypeKernels kQ4K{&dequantQ4K, &dotQ4K};
const TypeKernels kQ5K{&dequantQ5K, &dotQ5K};
const TypeKernels kQ6K{&dequantQ6K, &dotQ6K};

}  // namespace

const TypeKernels* kquantKernels(cpu::Isa isa, TensorType t) {
  switch (isa) {
    case cpu::Isa::Scalar:
      switch (t) {
        case TensorType::Q4_K:
          return &kQ4K;
        case TensorType::Q5_K:
          return &kQ5K;
        case TensorType::Q6_K:
          return &kQ6K;
        default:
          return nullptr;
      }
    case cpu::Isa::Avx2:
      return kquantKernelsAvx2(t);
    case cpu::Isa::Avx512:
      return cpu::hasAvx512Vnni() ? kquantKernelsAvx512Vnni(t) : kquantKernelsAvx512(t);
  }
  return nullptr;
}

QuantizeFn q8kQuantizer(cpu::Isa isa) {
  switch (isa) {
    case cpu::Isa::Scalar:
      return &quantizeQ8K;
    case cpu::Isa::Avx2:
      return q8kQuantizerAvx2();
    case cpu::Isa::Avx512:
      return q8kQuantizerAvx512();
  }
  return nullptr;
}

}  // namespace flashring::qmm::detail
