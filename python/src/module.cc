// flashring._core: the Python extension (everything but the MPI transport, which is flashring._mpi so that
// `import flashring` works where libmpi is absent). The public API is the pure-Python package around it
// (python/flashring/); this module is its implementation and is not meant to be imported directly.
#include <nanobind/stl/string.h>

#include <string>

#include "common.h"
#include "flashring/cpu.h"

NB_MODULE(_core, m) {
  m.doc() = "flashring's C++ core (use the flashring package)";
  flashring::py::bindErrors(m);
  flashring::py::bindComm(m);
  flashring::py::bindAllreduce(m);
  flashring::py::bindAttention(m);
  flashring::py::bindEngine(m);
  m.def(
      "isa", [] { return std::string(flashring::cpu::isaName(flashring::cpu::activeIsa())); },
      "The instruction set the kernels run with (FLASHRING_ISA overrides the CPU's best).");
}
