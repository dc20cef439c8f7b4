// MpiCommunicator: flashring's Communicator over OpenMPI, for CPU clusters and multi-node runs.
//
// It either creates its own communicator (a duplicate of MPI_COMM_WORLD) or wraps one the application
// already has (MPI, mpi4py via MPI._addressof), always duplicating it so flashring's tags never meet the
// application's messages. Errors are returned, not fatal (MPI_ERRORS_RETURN on the duplicate), and turned
// into typed exceptions. abort() sends a short notice to every peer; every wait polls for such a notice,
// so a failure on one rank becomes an AbortedError on all of them instead of a hang.
//
// Threads: one thread at a time per MpiCommunicator (every call, test/progress/aborted() included);
// separate communicators may be driven from separate threads when MPI provides MPI_THREAD_MULTIPLE.
// Construction and destruction are collective over the wrapped communicator (MPI_Comm_dup /
// MPI_Comm_free). Each MpiCommunicator keeps one small MPI communicator (its abort-notice channel) until
// MPI_Finalize, and also its data duplicate if it was aborted or destroyed with operations pending, so
// that messages still in flight to it can never reach a later communicator (src/comm/mpi/mpi_comm.cc).
//
// This header is only available when flashring was built with FLASHRING_WITH_MPI.
#pragma once

// flashring uses MPI's C interface only. Skip OpenMPI's / MPICH's long-removed MPI-2 C++ bindings, which
// <mpi.h> otherwise pulls in (with -Wcast-function-type warnings) unless the application included <mpi.h>
// with them first.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <memory>

#include "flashring/comm.h"

namespace flashring {

// Initializes MPI (MPI_THREAD_MULTIPLE requested, MPI_THREAD_FUNNELED required) unless the application
// already did, and finalizes it on destruction only if it initialized it.
class MpiEnvironment {
 public:
  MpiEnvironment(int* argc = nullptr, char*** argv = nullptr);
  ~MpiEnvironment();
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;
  int threadLevel() const { return thread_level_; }

 private:
  bool owns_ = false;
  int thread_level_ = 0;
};

class MpiCommunicator : public Communicator {
 public:
  // Duplicates `comm` (MPI_COMM_WORLD by default). MPI must be initialized.
  explicit MpiCommunicator(MPI_Comm comm = MPI_COMM_WORLD);
  ~MpiCommunicator() override;

  int rank() const override;
  int size() const override;
  std::string transport() const override { return "mpi"; }
  Request isend(const void* buf, size_t bytes, int peer, Tag tag) override;
  Request irecv(void* buf, size_t bytes, int peer, Tag tag) override;
  bool test(Request& r) override;
  void wait(Request& r, Deadline deadline) override;
  void progress() override;
  void abort(const std::string& reason) override;
  bool aborted() const override;
  bool hasNativeAllreduce() const override { return true; }
  void nativeAllreduceSum(float* data, size_t count, Deadline deadline, bool blocking) override;

  // The duplicated communicator flashring uses.
  MPI_Comm handle() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flashring
