// Attention for Python: block attention, the lse merge, sequence-parallel attention, the cost model.
#include "common.h"

namespace flashring::py {

void bindAttention(nb::module_&) {}

}  // namespace flashring::py
