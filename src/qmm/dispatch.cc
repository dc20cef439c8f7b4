// Run-time choice of the quantized matmul kernels and argument checks of the public entry points.
#include <cstring>
#include <string>

#include "flashring/error.h"
#include "qmm/qmm_internal.h"

namespace flashring::qmm {
namespace {

using cpu::Isa;

const detail::TypeKernels* lookup(Isa isa, TensorType t) {
  return (t == TensorType::Q4_K || t == TensorType::Q5_K || t == TensorType::Q6_K) ? detail::kquantKernels(isa, t)
                                                                                   : detail::legacyKernels(isa, t);
}

// The kernels of `t` at `isa`, or of the next lower ISA that has them ("a null entry means: fall back").
const detail::TypeKernels& kernelsFor(Isa isa, TensorType t, const char* fn) {
  if (!cpu::isaSupported(isa))
    throw InvalidArgument(std::string("qmm::") + fn + ": isa " + cpu::isaName(isa) + " is not supported by this CPU");
  if (!hasKernels(t))
    throw InvalidArgument(std::string("qmm::") + fn + ": no kernels for tensor type " +
                          gguf::typeName(static_cast<uint32_t>(t)));
  for (int i = static_cast<int>(isa); i >= 0; --i) {
    const detail::TypeKernels* k = lookup(static_cast<Isa>(i), t);
    if (k != nullptr && k->dot != nullptr && k->dequantize != nullptr) return *k;
  }
  throw Error(std::string("qmm::") + fn + ": the scalar kernels of " + gguf::typeName(static_cast<uint32_t>(t)) +
              " are missing (build error)");
}

detail::QuantizeFn quantizerFor(Isa isa, ActFormat f) {
  for (int i = static_cast<int>(isa); i >= 0; --i) {
    const detail::QuantizeFn q =
        f == ActFormat::Q8 ? detail::q8Quantizer(static_cast<Isa>(i)) : detail::q8kQuantizer(static_cast<Isa>(i));
    if (q != nullptr) return q;
  }
  throw Error("qmm: the scalar activation quantizer is missing (build error)");
}

void checkLength(TensorType t, size_t n, const char* fn) {
  const size_t bs = gguf::blockSize(t);
  if (n % bs != 0)
    throw InvalidArgument(std::string("qmm::") + fn + ": " + std::to_string(n) + " values is not a multiple of " +
                          gguf::typeName(static_cast<uint32_t>(t)) + "'s block size " + std::to_string(bs));
}

}  // namespace

bool hasKernels(TensorType t) {
  switch (t) {
    case TensorType::F32:
    case TensorType::F16:
    case TensorType::BF16:
    case TensorType::Q8_0:
    case TensorType::Q4_0:
    case TensorType::Q4_1:
    case TensorType::Q5_0:
    case TensorType::Q5_1:
    case TensorType::Q4_K:
    case TensorType::Q5_K:
    case TensorType::Q6_K:
      return true;
  }
  return false;
}

ActFormat actFormat(TensorType t) {
  switch (t) {
    case TensorType::F32:
    case TensorType::F16:
    case TensorType::BF16:
      return ActFormat::F32;
    case TensorType::Q4_K:
    case TensorType::Q5_K:
    case TensorType::Q6_K:
      return ActFormat::Q8K;
    default:
      return ActFormat::Q8;
  }
}

size_t actBytes(TensorType t, size_t n) {
  switch (actFormat(t)) {
    case ActFormat::F32:
      return n * sizeof(float);
    case ActFormat::Q8:
      return (n + kQ8Block - 1) / kQ8Block * sizeof(BlockQ8);
    case ActFormat::Q8K:
      return (n + kQ8KBlock - 1) / kQ8KBlock * sizeof(BlockQ8K);
  }
  return 0;
}

void quantizeActivations(Isa isa, TensorType t, const float* x, size_t n, void* out) {
  kernelsFor(isa, t, "quantizeActivations");
  checkLength(t, n, "quantizeActivations");
  if (n == 0) return;
  if (x == nullptr || out == nullptr) throw InvalidArgument("qmm::quantizeActivations: null pointer with n > 0");
  const ActFormat f = actFormat(t);
  if (f == ActFormat::F32) {
    std::memcpy(out, x, n * sizeof(float));
    return;
  }
  quantizerFor(isa, f)(x, n, out);
}

float dot(Isa isa, TensorType t, size_t n, const uint8_t* w_row, const void* act) {
  const detail::TypeKernels& k = kernelsFor(isa, t, "dot");
  checkLength(t, n, "dot");
  if (n == 0) return 0.f;
  if (w_row == nullptr || act == nullptr) throw InvalidArgument("qmm::dot: null pointer with n > 0");
  return k.dot(n, w_row, act);
}

void dequantizeRow(Isa isa, TensorType t, const uint8_t* src, float* dst, size_t n) {
  const detail::TypeKernels& k = kernelsFor(isa, t, "dequantizeRow");
  checkLength(t, n, "dequantizeRow");
  if (n == 0) return;
  if (src == nullptr || dst == nullptr) throw InvalidArgument("qmm::dequantizeRow: null pointer with n > 0");
  k.dequantize(src, dst, n);
}

void quantizeActivations(TensorType t, const float* x, size_t n, void* out) {
  quantizeActivations(cpu::activeIsa(), t, x, n, out);
}
float dot(TensorType t, size_t n, const uint8_t* w_row, const void* act) {
  return dot(cpu::activeIsa(), t, n, w_row, act);
}
void dequantizeRow(TensorType t, const uint8_t* src, float* dst, size_t n) {
  dequantizeRow(cpu::activeIsa(), t, src, dst, n);
}

namespace detail {
// Used by matmul.cc: the resolved kernels, checked once per call rather than per row.
const TypeKernels& resolvedKernels(TensorType t) { return kernelsFor(cpu::activeIsa(), t, "matmul"); }
QuantizeFn resolvedQuantizer(ActFormat f) { return quantizerFor(cpu::activeIsa(), f); }
}  // namespace detail

}  // namespace flashring::qmm
