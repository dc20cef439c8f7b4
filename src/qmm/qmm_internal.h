// Internals of the quantized matmul kernels (include/flashring/qmatmul.h): the per-type kernel tables that
// the per-ISA source files define, and ggml's on-disk block layouts of the types we read.
//
// Each ISA file provides, per weight type, a TypeKernels entry (or nullptr where it has none: the
// dispatcher then takes the next lower ISA's). Files:
//   legacy.cc / legacy_avx2.cc / legacy_avx512.cc     F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the
//                                                      Q8 activation quantizer
//   kquants.cc / kquants_avx2.cc / kquants_avx512.cc  Q4_K, Q5_K, Q6_K and the Q8K activation quantizer
// Helpers shared by scalar and SIMD files must have internal linkage (anonymous namespace) or be
// force-inlined: an inline function with external linkage instantiated in an -mavx2 file could be the copy
// the linker keeps for the scalar path too, which would then fault on a CPU without AVX2.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashring/cpu.h"
#include "flashring/qmatmul.h"

namespace flashring::qmm::detail {

// ggml-common.h layouts (QK_K = 256, K_SCALE_SIZE = 12).
inline constexpr size_t kQK = 32;
inline constexpr size_t kQKK = 256;

struct BlockQ4_0 {
  uint16_t d;           // fp16
  uint8_t qs[kQK / 2];  // value j: low nibble of qs[j]; value j+16: high nibble; both minus 8
};
struct BlockQ4_1 {
  uint16_t d, m;  // fp16 scale, fp16 minimum: value = q*d + m
  uint8_t qs[kQK / 2];
};
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];        // 5th bit of value j in bit j of the little-endian uint32
  uint8_t qs[kQK / 2];  // low 4 bits as Q4_0; value = (q | h << 4) - 16, times d
};
struct BlockQ5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];  // value = (q | h << 4) * d + m
};
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK];
};
struct BlockQ4_K {
  uint16_t d, dmin;      // super-block scale for the scales, for the mins
  uint8_t scales[12];    // 8 sub-blocks of 32: 6-bit scale and 6-bit min each, packed (get_scale_min_k4)
  uint8_t qs[kQKK / 2];  // 4-bit quants
};
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[kQKK / 8];  // 5th bits
  uint8_t qs[kQKK / 2];
};
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];      // low 4 bits
  uint8_t qh[kQKK / 4];      // high 2 bits
  int8_t scales[kQKK / 16];  // 8-bit scales of 16 sub-blocks of 16
  uint16_t d;                // fp16 super-block scale
};
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 &&
                  sizeof(BlockQ5_1) == 24 && sizeof(BlockQ8_0) == 34,
              "ggml's 32-value block layouts");
static_assert(sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210,
              "ggml's K-quant block layouts");

// A tile of dot products: R weight rows of n values (row r at w + r * row_bytes) by M activation vectors in
// the type's ActFormat (vector i at act + i * act_bytes); out[i * ldo + r] = dot(n, row r, vector i).
using TileFn = void (*)(size_t n, const uint8_t* w, size_t row_bytes, const void* act, size_t act_bytes, float* out,
                        size_t ldo);

struct TypeKernels {
  // n values (a multiple of the block size) of one row to fp32; bit-identical in every ISA.
  void (*dequantize)(const uint8_t* src, float* dst, size_t n);
  // Dot product of one row of n values with n activations in the type's ActFormat.
  float (*dot)(size_t n, const uint8_t* w_row, const void* act);
  // Optional tiles: tiles[lr][lm] computes 2^lr rows x 2^lm activation vectors (nullptr: none; [0][0] is
  // always nullptr, dot is the 1 x 1 tile). Each output is bit for bit this table's dot of its row and
  // vector: a tile shares the activation loads across its rows and the weight decoding across its vectors,
  // and nothing of the arithmetic. The matmul driver (matmul.cc) uses them where the table has them.
  TileFn tiles[3][3] = {};
};

// Per-ISA tables (nullptr: no kernel for that type at that ISA). Defined in the files named above.
const TypeKernels* legacyKernels(cpu::Isa isa, TensorType t);
const TypeKernels* kquantKernels(cpu::Isa isa, TensorType t);
// The legacy table at `isa` with (vnni = true) or without the VNNI integer dot products (AVX-VNNI at Avx2,
// AVX512-VNNI at Avx512), whatever the CPU has: tests reach both variants through it (the caller checks
// cpu::hasAvxVnni() / hasAvx512Vnni()). legacyKernels() picks the variant the CPU supports.
const TypeKernels* legacyKernelsVariant(cpu::Isa isa, TensorType t, bool vnni);
// Activation quantizers (n a multiple of 32 / 256); bit-identical in every ISA. Scalar is always present;
// the SIMD ones may be nullptr.
using QuantizeFn = void (*)(const float* x, size_t n, void* out);
QuantizeFn q8Quantizer(cpu::Isa isa);
QuantizeFn q8kQuantizer(cpu::Isa isa);

}  // namespace flashring::qmm::detail

namespace flashring::qmm::detail {
// The kernels the dispatching entry points resolve to at the active ISA (dispatch.cc).
const TypeKernels& resolvedKernels(TensorType t);
QuantizeFn resolvedQuantizer(ActFormat f);
}  // namespace flashring::qmm::detail
