// AVX2 K-quant kernels: none yet (the dispatcher falls back to the scalar ones).
#include "qmm/qmm_internal.h"

namespace flashring::qmm::detail {
const TypeKernels* kquantKernelsAvx2(TensorType) { return nullptr; }
QuantizeFn q8kQuantizerAvx2() { return nullptr; }
}  // namespace flashring::qmm::detail
