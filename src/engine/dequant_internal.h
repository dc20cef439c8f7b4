// Internals of the GGUF dequantization kernels: ggml's block layouts (pinned by size, as on disk), the
// half/bfloat conversions, and the per-ISA row kernels.
//
// Bit-for-bit agreement between the scalar reference and the AVX2 kernels rests on doing the same IEEE
// operations in the same order: fp16 -> fp32 is exact (F16C's vcvtph2ps and halfToFloat() below agree on
// every one of the 65536 inputs, subnormals and NaN payloads included), int -> fp32 of a 4/8-bit quant is
// exact, and then one multiply (Q8_0, Q4_0) or one multiply and one add (Q4_1, never fused: the project
// builds with -ffp-contract=off and the SIMD code uses _mm256_mul_ps + _mm256_add_ps, not FMA).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "flashring/gguf.h"

namespace flashring::gguf::detail {

// ggml-common.h: QK8_0 = QK4_0 = QK4_1 = 32 values per block, fp16 scales first.
inline constexpr size_t kQK = 32;

struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8_0) == 34, "block_q8_0 is 34 bytes on disk");

struct BlockQ4_0 {
  uint16_t d;           // fp16 scale
  uint8_t qs[kQK / 2];  // value j in the low nibble of qs[j], value j+16 in the high nibble; both minus 8
};
static_assert(sizeof(BlockQ4_0) == 18, "block_q4_0 is 18 bytes on disk");

struct BlockQ4_1 {
  uint16_t d;           // fp16 scale
  uint16_t m;           // fp16 minimum
  uint8_t qs[kQK / 2];  // as Q4_0, unsigned: value = q*d + m
};
static_assert(sizeof(BlockQ4_1) == 20, "block_q4_1 is 20 bytes on disk");

// The helpers below have internal linkage (anonymous namespace): dequant_avx2.cc is compiled with -mavx2,
// and an inline function with external linkage instantiated there could be the copy the linker keeps for
// the scalar path too, which would then fault on a CPU without AVX2.
namespace {

// IEEE binary16 -> binary32, exact. NaNs keep their payload and come out quiet, as vcvtph2ps makes them.
inline float halfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13) | (mant != 0 ? 0x00400000u : 0u);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal: normalise. value = mant * 2^-24; shift the leading one up to bit 10.
    uint32_t e = 113;  // exponent of 2^-14 (127 - 14), lowered once per shift
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float bf16ToFloat(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t loadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

}  // namespace

// A ggml type's block geometry and name, also for the types we can size but not dequantize. False when
// ggml has no such type.
bool ggmlTypeGeometry(uint32_t raw, size_t* block_size, size_t* block_bytes, const char** name);

// `n` values (a multiple of the type's block size, checked by the caller) of a supported type.
void dequantizeAvx2(TensorType t, const uint8_t* src, float* dst, size_t n);

// F32, F16, BF16, Q8_0, Q4_0, Q4_1: the kernels of this folder; the other types go through qmm.
bool hasOwnKernel(TensorType t);

// Whether dequantize() takes the AVX2 path on this CPU with the current FLASHRING_ISA / setActiveIsa().
bool dequantUsesAvx2();

}  // namespace flashring::gguf::detail
