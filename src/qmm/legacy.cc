// Scalar reference kernels of the 32-value GGUF weight types (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1),
// the Q8 activation quantizer, and the per-ISA tables (include/flashring/qmatmul.h, qmm/qmm_internal.h).
//
// These define the results. Dequantization: exact fp16 -> fp32, exact int -> fp32 of the code, then one
// multiply (Q8_0, Q4_0, Q5_0) or one multiply and one add (Q4_1, Q5_1; never fused: the build uses
// -ffp-contract=off), as gguf::dequantizeReference and ggml's dequantize_row_* do. Dot products: the exact
// int32 sum of code products per block, scaled by d_w * d_a (+ m_w * s_a for Q4_1 / Q5_1), summed over blocks
// in double and rounded once to fp32 at the end (the SIMD kernels sum in fp32 and agree within a few ulps of
// the sum of |terms|). F32 / F16 / BF16 dot products: exact products summed in double.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/dequant_internal.h"  // halfToFloat, bf16ToFloat, loadU16 (internal linkage)
#include "qmm/qmm_internal.h"

namespace flashring::qmm::detail {

// The SIMD files' tables (legacy_avx2.cc, legacy_avx512.cc). vnni: the variant whose integer dot products
// use (AVX-)VNNI vpdpbusd; the caller checks that the CPU has it.
const TypeKernels* legacyKernelsAvx2(TensorType t, bool vnni);
const TypeKernels* legacyKernelsAvx512(TensorType t, bool vnni);
QuantizeFn q8QuantizerAvx2();
QuantizeFn q8QuantizerAvx512();

namespace {

using gguf::detail::bf16ToFloat;
using gguf::detail::halfToFloat;
using gguf::detail::loadU16;

// The 32 unsigned 4-bit codes of a Q4 block in value order: value j is the low nibble of qs[j], value j+16
// the high nibble.
inline void q4Codes(const uint8_t* qs, int* v) {
  for (size_t j = 0; j < kQK / 2; ++j) {
    v[j] = qs[j] & 0x0F;
    v[j + kQK / 2] = qs[j] >> 4;
  }
}

// The 32 unsigned 5-bit codes of a Q5 block: the Q4 nibbles with bit j of the little-endian qh as bit 4
// of value j.
inline void q5Codes(const uint8_t* qh_bytes, const uint8_t* qs, int* v) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  q4Codes(qs, v);
  for (size_t j = 0; j < kQK; ++j) v[j] |= static_cast<int>((qh >> j) & 1u) << 4;
}

// ---- dequantization -----------------------------------------------------------------------------------

void dequantF32(const uint8_t* src, float* dst, size_t n) { std::memcpy(dst, src, n * sizeof(float)); }

void dequantF16(const uint8_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = halfToFloat(loadU16(src + 2 * i));
}

void dequantBF16(const uint8_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = bf16ToFloat(loadU16(src + 2 * i));
}

void dequantQ8_0(const uint8_t* src, float* dst, size_t n) {
  for (size_t b = 0; b < n / kQK; ++b) {
    const uint8_t* blk = src + b * sizeof(BlockQ8_0);
    const float d = halfToFloat(loadU16(blk));
    const auto* qs = reinterpret_cast<const int8_t*>(blk + 2);
    for (size_t j = 0; j < kQK; ++j) dst[b * kQK + j] = static_cast<float>(qs[j]) * d;
  }
}

// Q4_0 / Q5_0: (code - offset) * d.
template <int kBits>
void dequantSymmetric(const uint8_t* src, float* dst, size_t n) {
  constexpr size_t kBytes = kBits == 4 ? sizeof(BlockQ4_0) : sizeof(BlockQ5_0);
  constexpr int kOffset = 1 << (kBits - 1);
  int v[kQK];
  for (size_t b = 0; b < n / kQK; ++b) {
    const uint8_t* blk = src + b * kBytes;
    const float d = halfToFloat(loadU16(blk));
    if constexpr (kBits == 4) {
      q4Codes(blk + 2, v);
    } else {
      q5Codes(blk + 2, blk + 6, v);
    }
    for (size_t j = 0; j < kQK; ++j) dst[b * kQK + j] = static_cast<float>(v[j] - kOffset) * d;
  }
}

// Q4_1 / Q5_1: code * d + m, multiply then add (two roundings).
template <int kBits>
void dequantAffine(const uint8_t* src, float* dst, size_t n) {
  constexpr size_t kBytes = kBits == 4 ? sizeof(BlockQ4_1) : sizeof(BlockQ5_1);
  int v[kQK];
  for (size_t b = 0; b < n / kQK; ++b) {
    const uint8_t* blk = src + b * kBytes;
    const float d = halfToFloat(loadU16(blk));
    const float m = halfToFloat(loadU16(blk + 2));
    if constexpr (kBits == 4) {
      q4Codes(blk + 4, v);
    } else {
      q5Codes(blk + 4, blk + 8, v);
    }
    for (size_t j = 0; j < kQK; ++j) dst[b * kQK + j] = static_cast<float>(v[j]) * d + m;
  }
}

// ---- dot products ---------------------------------------------------------------------------------------

float dotF32(size_t n, const uint8_t* w, const void* act) {
  const auto* a = static_cast<const float*>(act);
  double acc = 0.0;
  for (size_t i = 0; i < n; ++i) {
    float wi;
    std::memcpy(&wi, w + 4 * i, 4);
    acc += static_cast<double>(wi) * static_cast<double>(a[i]);
  }
  return static_cast<float>(acc);
}

template <float (*kToFloat)(uint16_t)>
float dotHalfWidth(size_t n, const uint8_t* w, const void* act) {
  const auto* a = static_cast<const float*>(act);
  double acc = 0.0;
  for (size_t i = 0; i < n; ++i) acc += static_cast<double>(kToFloat(loadU16(w + 2 * i))) * static_cast<double>(a[i]);
  return static_cast<float>(acc);
}

// Exact sum of code products of one block (|sum| <= 32 * 128 * 127).
inline int32_t blockSum(const int* v, const int8_t* q) {
  int32_t s = 0;
  for (size_t j = 0; j < kQK; ++j) s += v[j] * q[j];
  return s;
}

inline double scaled(float dw, float da, int32_t isum) {
  return static_cast<double>(dw) * static_cast<double>(da) * static_cast<double>(isum);
}

float dotQ8_0(size_t n, const uint8_t* w, const void* act) {
  const auto* a = static_cast<const BlockQ8*>(act);
  double acc = 0.0;
  int v[kQK];
  for (size_t b = 0; b < n / kQK; ++b) {
    const uint8_t* blk = w + b * sizeof(BlockQ8_0);
    const auto* qs = reinterpret_cast<const int8_t*>(blk + 2);
    for (size_t j = 0; j < kQK; ++j) v[j] = qs[j];
    acc += scaled(halfToFloat(loadU16(blk)), a[b].d, blockSum(v, a[b].qs));
  }
  return static_cast<float>(acc);
}

template <int kBits>
float dotSymmetric(size_t n, const uint8_t* w, const void* act) {
  constexpr size_t kBytes = kBits == 4 ? sizeof(BlockQ4_0) : sizeof(BlockQ5_0);
  constexpr int kOffset = 1 << (kBits - 1);
  const auto* a = static_cast<const BlockQ8*>(act);
  double acc = 0.0;
  int v[kQK];
  for (size_t b = 0; b < n / kQK; ++b) {
    const uint8_t* blk = w + b * kBytes;
    if constexpr (kBits == 4) {
      q4Codes(blk + 2, v);
    } else {
      q5Codes(blk + 2, blk + 6, v);
    }
    for (int& x : v) x -= kOffset;
    acc += scaled(halfToFloat(loadU16(blk)), a[b].d, blockSum(v, a[b].qs));
  }
  return static_cast<float>(acc);
}

template <int kBits>
float dotAffine(size_t n, const uint8_t* w, const void* act) {
  constexpr size_t kBytes = kBits == 4 ? sizeof(BlockQ4_1) : sizeof(BlockQ5_1);
  const auto* a = static_cast<const BlockQ8*>(act);
  double acc = 0.0;
  int v[kQK];
  for (size_t b = 0; b < n / kQK; ++b) {
    const uint8_t* blk = w + b * kBytes;
    if constexpr (kBits == 4) {
      q4Codes(blk + 4, v);
    } else {
      q5Codes(blk + 4, blk + 8, v);
    }
    // sum_j (v_j d + m) * q_j d_a = d d_a sum v_j q_j + m (d_a sum q_j) = d d_a isum + m s_a.
    acc += scaled(halfToFloat(loadU16(blk)), a[b].d, blockSum(v, a[b].qs)) +
           static_cast<double>(halfToFloat(loadU16(blk + 2))) * static_cast<double>(a[b].s);
  }
  return static_cast<float>(acc);
}

// ---- the Q8 activation quantizer ------------------------------------------------------------------------

void quantizeQ8(const float* x, size_t n, void* out) {
  auto* blocks = static_cast<BlockQ8*>(out);
  for (size_t b = 0; b < n / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    BlockQ8& o = blocks[b];
    float amax = 0.f;
    bool finite = true;
    for (size_t j = 0; j < kQ8Block; ++j) {
      finite = finite && std::isfinite(xb[j]);
      amax = std::max(amax, std::fabs(xb[j]));
    }
    if (!finite) {
      o.d = o.s = std::numeric_limits<float>::quiet_NaN();
      std::memset(o.qs, 0, sizeof(o.qs));
      continue;
    }
    float d = amax / 127.f;
    float id = d != 0.f ? 1.f / d : 0.f;
    if (std::isinf(id)) d = id = 0.f;  // max|x| < ~3.7e-37: 1/d overflows; the block quantizes as all-zero
    int32_t sum = 0;
    for (size_t j = 0; j < kQ8Block; ++j) {
      const auto q = static_cast<int32_t>(std::nearbyint(xb[j] * id));  // |q| <= 127
      o.qs[j] = static_cast<int8_t>(q);
      sum += q;
    }
    o.d = d;
    o.s = d * static_cast<float>(sum);
  }
}

constexpr TypeKernels kScalarF32{dequantF32, dotF32};
constexpr TypeKernels kScalarF16{dequantF16, dotHalfWidth<halfToFloat>};
constexpr TypeKernels kScalarBF16{dequantBF16, dotHalfWidth<bf16ToFloat>};
constexpr TypeKernels kScalarQ8_0{dequantQ8_0, dotQ8_0};
constexpr TypeKernels kScalarQ4_0{dequantSymmetric<4>, dotSymmetric<4>};
constexpr TypeKernels kScalarQ4_1{dequantAffine<4>, dotAffine<4>};
constexpr TypeKernels kScalarQ5_0{dequantSymmetric<5>, dotSymmetric<5>};
constexpr TypeKernels kScalarQ5_1{dequantAffine<5>, dotAffine<5>};

const TypeKernels* scalarKernels(TensorType t) {
  switch (t) {
    case TensorType::F32:
      return &kScalarF32;
    case TensorType::F16:
      return &kScalarF16;
    case TensorType::BF16:
      return &kScalarBF16;
    case TensorType::Q8_0:
      return &kScalarQ8_0;
    case TensorType::Q4_0:
      return &kScalarQ4_0;
    case TensorType::Q4_1:
      return &kScalarQ4_1;
    case TensorType::Q5_0:
      return &kScalarQ5_0;
    case TensorType::Q5_1:
      return &kScalarQ5_1;
    default:
      return nullptr;
  }
}

}  // namespace

const TypeKernels* legacyKernelsVariant(cpu::Isa isa, TensorType t, bool vnni) {
  switch (isa) {
    case cpu::Isa::Scalar:
      return vnni ? nullptr : scalarKernels(t);
    case cpu::Isa::Avx2:
      return legacyKernelsAvx2(t, vnni);
    case cpu::Isa::Avx512:
      return legacyKernelsAvx512(t, vnni);
  }
  return nullptr;
}

const TypeKernels* legacyKernels(cpu::Isa isa, TensorType t) {
  switch (isa) {
    case cpu::Isa::Scalar:
      return scalarKernels(t);
    case cpu::Isa::Avx2:
      return legacyKernelsAvx2(t, cpu::hasAvxVnni());
    case cpu::Isa::Avx512:
      return legacyKernelsAvx512(t, cpu::hasAvx512Vnni());
  }
  return nullptr;
}

QuantizeFn q8Quantizer(cpu::Isa isa) {
  switch (isa) {
    case cpu::Isa::Scalar:
      return quantizeQ8;
    case cpu::Isa::Avx2:
      return q8QuantizerAvx2();
    case cpu::Isa::Avx512:
      return q8QuantizerAvx512();
  }
  return nullptr;
}

}  // namespace flashring::qmm::detail
