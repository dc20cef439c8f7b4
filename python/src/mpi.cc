// flashring._mpi: communicators over MPI for Python, from an mpi4py communicator. Separate from _core so that
// `import flashring` never loads libmpi; imported on first use of flashring.from_mpi4py.
#include <nanobind/nanobind.h>

#include <cstdint>
#include <memory>

#include "common.h"
#include "flashring/mpi/mpi_comm.h"

NB_MODULE(_mpi, m) {
  m.doc() = "flashring's MPI transport (use flashring.from_mpi4py)";
  // `address`: mpi4py's MPI._addressof(comm), the address of its MPI_Comm handle. Returns a Comm handle (the
  // type _core registers; _core is imported first) owning the duplicate. Collective over the communicator.
  m.def(
      "comm_from_address",
      [](uintptr_t address) {
        int initialized = 0, finalized = 0;
        MPI_Initialized(&initialized);
        MPI_Finalized(&finalized);
        if (!initialized || finalized)
          throw flashring::InvalidArgument("from_mpi4py: MPI is not initialized (import mpi4py.MPI first)");
        if (address == 0) throw flashring::InvalidArgument("from_mpi4py: null communicator address");
        const MPI_Comm handle = *reinterpret_cast<const MPI_Comm*>(address);
        if (handle == MPI_COMM_NULL) throw flashring::InvalidArgument("from_mpi4py: the communicator is MPI.COMM_NULL");
        std::shared_ptr<flashring::MpiCommunicator> mpi;
        {
          nb::gil_scoped_release release;
          mpi = std::make_shared<flashring::MpiCommunicator>(handle);
        }
        flashring::py::Comm c;
        c.comm = mpi.get();
        c.owner = mpi;
        c.kind = "mpi";
        return c;
      },
      nb::arg("address"));
}
