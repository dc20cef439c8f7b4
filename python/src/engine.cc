// The LLaMA engine for Python: load, generate, perplexity, tokenize.
#include "common.h"

namespace flashring::py {

void bindEngine(nb::module_&) {}

}  // namespace flashring::py
