// NcclCommunicator: flashring's Communicator over NCCL, for ranks that each drive one GPU (flashring::nccl; only in
// builds with FLASHRING_WITH_NCCL).
//
// Buffers are device memory (movesMemory(MemoryKind::Cuda)); a host pointer is an InvalidArgument naming it.
// Posting and grouping: isend/irecv only record the operation. The first test()/wait() after a run of posts
// issues every pending operation inside one ncclGroupStart/ncclGroupEnd on the communicator's stream, so a step
// that posts its sends and receives in both directions (TokenRing: queries one way, results the other) cannot
// deadlock, whatever order the ranks posted them in. NCCL orders a communicator's operations, so they are issued
// on one stream; compute runs on the caller's streams and waits on the communicator's work through events
// (event()), not through a device-wide synchronize.
// Tags: NCCL has none. Messages between a pair match in posting order (the ordered channel of one
// communicator); tags are recorded for error messages only, so algorithms that run on NCCL post, per pair, in
// the same order on both sides (flashring's collectives do). A size mismatch cannot be detected before the
// transfer: it ends in the deadline's TimeoutError, never a hang.
// Deadlines: the communicator is non-blocking (ncclConfig_t::blocking = 0); init and every wait poll
// ncclCommGetAsyncError and the operations' event with the deadline and the interrupt check (comm.h). abort()
// calls ncclCommAbort, after which every wait on this rank throws AbortedError; peers blocked on it end at their
// deadline with TimeoutError (NCCL has no abort notice between ranks; a caller that holds a host communicator
// can abort that one too, so that its peers learn of it at once).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "flashring/comm.h"
#include "flashring/tensor.h"

namespace flashring {

// ncclUniqueId's 128 bytes, so that callers (and the Python package) need not include nccl.h.
using NcclUniqueIdBytes = std::array<char, 128>;

class NcclCommunicator final : public Communicator {
 public:
  // A fresh unique id (ncclGetUniqueId). One rank makes it and passes it to every other rank.
  static NcclUniqueIdBytes newUniqueId();
  // Joins the communicator `id` as `rank` of `size`, on CUDA device `device` (cudaSetDevice is called on this
  // thread). Throws TimeoutError when the other ranks do not join within `timeout`, DeviceError on a CUDA or
  // NCCL failure (named), InvalidArgument for a bad rank/size/device.
  NcclCommunicator(const NcclUniqueIdBytes& id, int rank, int size, int device,
                   std::chrono::milliseconds timeout = std::chrono::seconds(120));
  // Rank 0 of `host` makes the unique id and sends it to the others over `host` (any transport: threads, MPI);
  // every rank then joins with the same rank and size. device < 0: host.rank() % deviceCount().
  static std::unique_ptr<NcclCommunicator> bootstrap(Communicator& host, int device = -1);
  ~NcclCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string transport() const override { return "nccl"; }
  bool movesMemory(MemoryKind kind) const override { return kind == MemoryKind::Cuda; }
  int device() const { return device_; }
  // The stream the communicator's operations run on (a cudaStream_t) and an event recorded after the last
  // issued group: compute streams wait on it with cudaStreamWaitEvent.
  void* stream() const;
  void* event() const;

  Request isend(const void* buf, size_t bytes, int peer, Tag tag) override;
  Request irecv(void* buf, size_t bytes, int peer, Tag tag) override;
  bool test(Request& r) override;
  void wait(Request& r, Deadline deadline) override;
  void abort(const std::string& reason) override;
  bool aborted() const override;
  bool hasNativeAllreduce() const override { return true; }
  // ncclAllReduce (fp32 sum) on device memory, polled with the deadline.
  void nativeAllreduceSum(float* data, size_t count, Deadline deadline, bool blocking) override;

  struct Impl;

 private:
  void flush();
  // Records one send (send_buf) or receive (recv_buf).
  Request post(bool is_send, const void* send_buf, void* recv_buf, size_t bytes, int peer, Tag tag);
  int rank_ = 0, size_ = 1, device_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flashring
