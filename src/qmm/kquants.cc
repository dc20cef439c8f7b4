// Placeholder until the scalar reference kernels land: no kernels (the dispatcher reports them missing).
#include "qmm/qmm_internal.h"

namespace flashring::qmm::detail {
const TypeKernels* kquantKernels(cpu::Isa, TensorType) { return nullptr; }
QuantizeFn q8kQuantizer(cpu::Isa) { return nullptr; }
}  // namespace flashring::qmm::detail
