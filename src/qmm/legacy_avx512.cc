// Avx512 kernels of the 32-value weight types: not written yet (legacyKernels falls back to the lower ISA).
#include "qmm/qmm_internal.h"

namespace flashring::qmm::detail {
const TypeKernels* legacyKernelsAvx512(TensorType, bool) { return nullptr; }
QuantizeFn q8QuantizerAvx512() { return nullptr; }
}  // namespace flashring::qmm::detail
