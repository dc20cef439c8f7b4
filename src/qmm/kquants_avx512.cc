// AVX-512 K-quant kernels: none yet (the dispatcher falls back to the next lower ISA's).
#include "qmm/qmm_internal.h"

namespace flashring::qmm::detail {
const TypeKernels* kquantKernelsAvx512(TensorType) { return nullptr; }
const TypeKernels* kquantKernelsAvx512Vnni(TensorType) { return nullptr; }
QuantizeFn q8kQuantizerAvx512() { return nullptr; }
}  // namespace flashring::qmm::detail
