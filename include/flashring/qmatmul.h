// Matrix products on weights kept in their GGUF types (the engine's linear layers).
//
// The engine never holds an fp32 copy of a quantized weight matrix. A linear layer y = W x with W in a ggml
// type (rows = outputs, each row `cols` values packed in the type's blocks) runs one of two ways:
//  - Decode and small batches (GEMV): the activations are quantized per block to 8 bits (ActFormat::Q8 for
//    the 32-value block types, Q8K for the 256-value K-quants) and every output is an integer dot product
//    of the weight row's codes with the activation codes, scaled per block in fp32. F32/F16/BF16 weights
//    take fp32 activations (ActFormat::F32) and an fp32 dot product.
//  - Prefill (GEMM): a panel of weight rows is dequantized to fp32 into a workspace and multiplied by
//    OpenBLAS sgemm (bench_qmatmul measures this against the integer path at every batch size).
//
// Kernels. Every type has a scalar reference (plain C++, the definition of the result) and AVX2 / AVX-512
// versions chosen at run time through cpu::activeIsa() (FLASHRING_ISA=scalar|avx2|avx512 forces one). A
// type without a kernel at some ISA uses the next lower ISA's (a null entry means: fall back). The integer
// part of a dot product (sums of code products inside a block) is exact in every version; the fp32 scaling
// and the sum over blocks happen in another order in SIMD code, so the SIMD dot products agree with the
// reference within a few ulps of the sum of |terms|, not bit for bit (tests bound the difference).
// Activation quantization and dequantization, in contrast, are bit-identical across ISAs.
//
// Activation formats (ours; ggml's block_q8_0/q8_1 use fp16 scales, ours keep fp32):
//   Q8:  blocks of 32: d = max|x| / 127 (0 for an all-zero block), q = round_half_even(x / d) in [-127, 127]
//        computed as x * (1/d) in fp32, s = d * (sum of q) in fp32 (the min/offset terms of Q4_1/Q5_1 use it).
//        A block whose 1/d overflows fp32 (max|x| below ~3.7e-37) quantizes as all-zero (d = s = 0, q = 0).
//   Q8K: blocks of 256: d = max|x| / 127, q as above, bsums[j] = sum of q[16j .. 16j+15] (the K-quants'
//        per-sub-block minimum terms use them). As ggml's block_q8_K but q = x * (1/d), not x * (127/max).
//        A d below FLT_MIN (max|x| < 127 * FLT_MIN, ~1.5e-36) gives d = 0 and q = 0: 1/d would overflow.
// A block holding a NaN or Inf activation gets d = s = NaN and q = 0 (bsums 0), so every dot product that
// reads it is NaN: an error in the model shows, it is never hidden.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "flashring/cpu.h"
#include "flashring/gguf.h"

namespace flashring::qmm {

using gguf::TensorType;

enum class ActFormat { F32 = 0, Q8 = 1, Q8K = 2 };

inline constexpr size_t kQ8Block = 32;
inline constexpr size_t kQ8KBlock = 256;

struct BlockQ8 {
  float d;  // scale
  float s;  // d * sum(qs)
  int8_t qs[kQ8Block];
};
static_assert(sizeof(BlockQ8) == 40, "BlockQ8 is 40 bytes");

struct BlockQ8K {
  float d;
  int8_t qs[kQ8KBlock];
  int16_t bsums[kQ8KBlock / 16];
};
static_assert(sizeof(BlockQ8K) == 292, "BlockQ8K is 292 bytes");

// Types with kernels: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K.
bool hasKernels(TensorType t);
// The activation format the type's dot product reads.
ActFormat actFormat(TensorType t);
// Bytes of `n` activations (a multiple of the type's block size) in the type's activation format.
size_t actBytes(TensorType t, size_t n);

// Quantizes n activations for weights of type t (for F32/F16/BF16 a copy of the floats).
void quantizeActivations(TensorType t, const float* x, size_t n, void* out);
void quantizeActivations(cpu::Isa isa, TensorType t, const float* x, size_t n, void* out);
// Dot product of one weight row (n values of type t) with n activations quantized for t.
float dot(TensorType t, size_t n, const uint8_t* w_row, const void* act);
float dot(cpu::Isa isa, TensorType t, size_t n, const uint8_t* w_row, const void* act);
// Dequantizes n values (a multiple of the block size) of one row.
void dequantizeRow(TensorType t, const uint8_t* src, float* dst, size_t n);
void dequantizeRow(cpu::Isa isa, TensorType t, const uint8_t* src, float* dst, size_t n);

// A weight matrix in the file's bytes (memory-mapped, not copied). Row r of the matrix starts at
// data + r * row_bytes and holds `cols` values.
struct Matrix {
  TensorType type = TensorType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;
  // Rows [begin, begin + count): a view of the same bytes.
  Matrix rowRange(int64_t begin, int64_t count) const;
  size_t bytes() const { return static_cast<size_t>(rows) * row_bytes; }
};

// Scratch of the products (activation codes, dequantized panels); one per caller thread, reused across calls.
struct Workspace {
  std::vector<uint8_t> act;
  std::vector<float> panel;
};

// Below this many activation rows the integer path runs, at or above it dequantize-panel + sgemm. Default
// 16: bench_qmatmul's crossover (Q4_1 1536 x 576, one thread) lies between 16 (Dot 607 us, panels 700 us)
// and 32 (1226 vs 929 us): the integer path decodes each weight row once per activation row.
int64_t gemmThreshold();
void setGemmThreshold(int64_t m);  // benchmarks and tests

// y[m, w.rows] = x[m, w.cols] * W^T. Rows of the output are split over cpu::threads() workers.
void matmul(const Matrix& w, const float* x, int64_t m, float* y, Workspace& ws);
// The same, forcing the path: integer (GEMV-style dots for every row of x) or dequantize + sgemm.
enum class MatmulPath { Auto, Dot, DequantGemm };
void matmul(const Matrix& w, const float* x, int64_t m, float* y, Workspace& ws, MatmulPath path);

}  // namespace flashring::qmm
