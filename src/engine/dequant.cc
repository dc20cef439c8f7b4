// ggml tensor types, the scalar dequantization reference, and the run-time choice of the SIMD path.
#include <string>

#include "engine/dequant_internal.h"
#include "flashring/error.h"
#include "flashring/qmatmul.h"
#include "flashring/quant.h"

namespace flashring::gguf {
namespace {

struct TypeInfo {
  uint32_t raw;
  const char* name;
  size_t block_size;
  size_t block_bytes;
};

// Block sizes of every type ggml writes to files (ggml.h numbering; sizes as in gguf-py's
// GGML_QUANT_SIZES). Only the six named in TensorType are dequantized; the others are listed so that a
// file using them still opens with its tensors' sizes and offsets checked.
constexpr TypeInfo kTypes[] = {
    {0, "f32", 1, 4},         {1, "f16", 1, 2},         {2, "q4_0", 32, 18},      {3, "q4_1", 32, 20},
    {6, "q5_0", 32, 22},      {7, "q5_1", 32, 24},      {8, "q8_0", 32, 34},      {9, "q8_1", 32, 40},
    {10, "q2_K", 256, 84},    {11, "q3_K", 256, 110},   {12, "q4_K", 256, 144},   {13, "q5_K", 256, 176},
    {14, "q6_K", 256, 210},   {15, "q8_K", 256, 292},   {16, "iq2_xxs", 256, 66}, {17, "iq2_xs", 256, 74},
    {18, "iq3_xxs", 256, 98}, {19, "iq1_s", 256, 50},   {20, "iq4_nl", 32, 18},   {21, "iq3_s", 256, 110},
    {22, "iq2_s", 256, 82},   {23, "iq4_xs", 256, 136}, {24, "i8", 1, 1},         {25, "i16", 1, 2},
    {26, "i32", 1, 4},        {27, "i64", 1, 8},        {28, "f64", 1, 8},        {29, "iq1_m", 256, 56},
    {30, "bf16", 1, 2},       {34, "tq1_0", 256, 54},   {35, "tq2_0", 256, 66},   {39, "mxfp4", 32, 17},
};

const TypeInfo* infoOf(uint32_t raw) {
  for (const TypeInfo& t : kTypes) {
    if (t.raw == raw) return &t;
  }
  return nullptr;
}

const TypeInfo& knownInfo(TensorType t) {
  const TypeInfo* info = infoOf(static_cast<uint32_t>(t));
  if (info == nullptr) throw FormatError("gguf: unknown tensor type " + typeName(static_cast<uint32_t>(t)));
  return *info;
}

void checkKernelArgs(TensorType t, const uint8_t* src, float* dst, size_t n, const char* fn) {
  if (!supported(t)) {
    throw FormatError(std::string("gguf: ") + fn + ": cannot dequantize tensor type " +
                      typeName(static_cast<uint32_t>(t)) +
                      " (supported: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K)");
  }
  const size_t bs = blockSize(t);
  if (n % bs != 0) {
    throw InvalidArgument(std::string("gguf: ") + fn + ": " + std::to_string(n) + " values is not a multiple of " +
                          typeName(static_cast<uint32_t>(t)) + "'s block size " + std::to_string(bs));
  }
  if (n > 0 && (src == nullptr || dst == nullptr)) {
    throw InvalidArgument(std::string("gguf: ") + fn + ": null source or destination with n > 0");
  }
}

}  // namespace

// Every type with quantized-matmul kernels can be dequantized (qmatmul.h keeps the one list).
bool supported(TensorType t) { return qmm::hasKernels(t); }

std::string typeName(uint32_t raw_type) {
  if (supported(static_cast<TensorType>(raw_type))) return infoOf(raw_type)->name;
  return "type " + std::to_string(raw_type);
}

size_t blockSize(TensorType t) { return knownInfo(t).block_size; }
size_t blockBytes(TensorType t) { return knownInfo(t).block_bytes; }

namespace detail {
// A ggml type's block geometry, also for the types we only size (nullptr when ggml has no such type).
bool ggmlTypeGeometry(uint32_t raw, size_t* block_size, size_t* block_bytes, const char** name) {
  const TypeInfo* info = infoOf(raw);
  if (info == nullptr) return false;
  *block_size = info->block_size;
  *block_bytes = info->block_bytes;
  *name = info->name;
  return true;
}

bool hasOwnKernel(TensorType t) {
  return t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16 || t == TensorType::Q8_0 ||
         t == TensorType::Q4_0 || t == TensorType::Q4_1;
}

bool dequantUsesAvx2() { return quant::activeIsa() != quant::Isa::Scalar; }
}  // namespace detail

void dequantizeReference(TensorType t, const uint8_t* src, float* dst, size_t n) {
  checkKernelArgs(t, src, dst, n, "dequantizeReference");
  using detail::kQK;
  switch (t) {
    case TensorType::Q5_0:
    case TensorType::Q5_1:
    case TensorType::Q4_K:
    case TensorType::Q5_K:
    case TensorType::Q6_K:
      qmm::dequantizeRow(cpu::Isa::Scalar, t, src, dst, n);
      return;
    case TensorType::F32:
      if (n > 0) std::memcpy(dst, src, n * 4);
      return;
    case TensorType::F16:
      for (size_t i = 0; i < n; ++i) dst[i] = detail::halfToFloat(detail::loadU16(src + 2 * i));
      return;
    case TensorType::BF16:
      for (size_t i = 0; i < n; ++i) dst[i] = detail::bf16ToFloat(detail::loadU16(src + 2 * i));
      return;
    case TensorType::Q8_0:
      for (size_t b = 0; b < n / kQK; ++b) {
        const uint8_t* blk = src + b * sizeof(detail::BlockQ8_0);
        const float d = detail::halfToFloat(detail::loadU16(blk));
        const auto* qs = reinterpret_cast<const int8_t*>(blk + 2);
        for (size_t j = 0; j < kQK; ++j) dst[b * kQK + j] = static_cast<float>(qs[j]) * d;
      }
      return;
    case TensorType::Q4_0:
      for (size_t b = 0; b < n / kQK; ++b) {
        const uint8_t* blk = src + b * sizeof(detail::BlockQ4_0);
        const float d = detail::halfToFloat(detail::loadU16(blk));
        const uint8_t* qs = blk + 2;
        for (size_t j = 0; j < kQK / 2; ++j) {
          dst[b * kQK + j] = static_cast<float>((qs[j] & 0xF) - 8) * d;
          dst[b * kQK + j + kQK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
        }
      }
      return;
    case TensorType::Q4_1:
      for (size_t b = 0; b < n / kQK; ++b) {
        const uint8_t* blk = src + b * sizeof(detail::BlockQ4_1);
        const float d = detail::halfToFloat(detail::loadU16(blk));
        const float m = detail::halfToFloat(detail::loadU16(blk + 2));
        const uint8_t* qs = blk + 4;
        for (size_t j = 0; j < kQK / 2; ++j) {
          // Multiply, then add: two roundings, as ggml's reference and our AVX2 path do.
          dst[b * kQK + j] = static_cast<float>(qs[j] & 0xF) * d + m;
          dst[b * kQK + j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
        }
      }
      return;
  }
}

void dequantize(TensorType t, const uint8_t* src, float* dst, size_t n) {
  checkKernelArgs(t, src, dst, n, "dequantize");
  if (n == 0) return;
  if (!detail::hasOwnKernel(t)) {
    qmm::dequantizeRow(t, src, dst, n);
  } else if (detail::dequantUsesAvx2()) {
    detail::dequantizeAvx2(t, src, dst, n);
  } else {
    dequantizeReference(t, src, dst, n);
  }
}

}  // namespace flashring::gguf
