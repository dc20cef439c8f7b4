// Communicator: the one interface every algorithm in flashring talks to.
//
// A Communicator is a group of ranks that exchange bytes with non-blocking, tagged point-to-point
// messages. Messages between one pair of ranks with the same tag match in the order they were posted
// (MPI's non-overtaking rule), on every transport. Every wait has a deadline; past it the wait throws
// TimeoutError naming the peer, tag and size it was waiting for. A failure on one rank (an exception in
// an algorithm, a size mismatch, a timeout) should be turned into abort(reason), after which every rank's
// pending and future waits throw AbortedError carrying that reason: no rank hangs on a dead peer.
//
// Algorithms include only this header; they never see a transport. Transports: ThreadCommunicator
// (thread_comm.h, N ranks as threads of one process, the embedded default) and MpiCommunicator
// (mpi/mpi_comm.h).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "flashring/error.h"
#include "flashring/tensor.h"
#include "flashring/workspace.h"

namespace flashring {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;
using Tag = int32_t;

// User tags are 0..kMaxTag; MPI guarantees at least 32767. Collectives namespace their tags (tags.h).
inline constexpr Tag kMaxTag = 32767;

namespace detail {
// What a transport keeps for one posted operation.
struct RequestState {
  virtual ~RequestState() = default;
  const void* send_buf = nullptr;
  void* recv_buf = nullptr;
  size_t bytes = 0;
  int peer = -1;
  Tag tag = 0;
  bool is_send = false;
  bool done = false;  // set by the transport once the caller may reuse the buffer
};
}  // namespace detail

// Handle to a posted send or receive. Cheap to copy; a default-constructed Request is already complete.
class Request {
 public:
  Request() = default;
  explicit Request(std::shared_ptr<detail::RequestState> s) : state_(std::move(s)) {}
  bool valid() const { return state_ != nullptr; }
  size_t bytes() const { return state_ ? state_->bytes : 0; }
  int peer() const { return state_ ? state_->peer : -1; }
  Tag tag() const { return state_ ? state_->tag : 0; }
  bool isSend() const { return state_ && state_->is_send; }
  detail::RequestState* state() const { return state_.get(); }

 private:
  std::shared_ptr<detail::RequestState> state_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "thread", "mpi" or "nccl".
  virtual std::string transport() const = 0;
  // Whether isend/irecv accept buffers in this kind of memory (thread and MPI: host; NCCL: CUDA device memory).
  // Collectives check it up front and name the transport and the memory in their error.
  virtual bool movesMemory(MemoryKind kind) const { return kind == MemoryKind::Host; }

  // Post a send / receive of exactly `bytes` bytes. A receive whose size differs from the matching send
  // fails on both sides (and aborts the communicator) with an error naming both sizes.
  virtual Request isend(const void* buf, size_t bytes, int peer, Tag tag) = 0;
  virtual Request irecv(void* buf, size_t bytes, int peer, Tag tag) = 0;

  // True once `r` has completed. Drives the transport's progress; never blocks. Throws on failure.
  virtual bool test(Request& r) = 0;
  // Block until `r` completes; throws TimeoutError past `deadline`, AbortedError after an abort.
  virtual void wait(Request& r, Deadline deadline) = 0;
  // Wait for all of `rs`. On error the remaining requests are left posted; the caller should abort.
  void waitAll(std::span<Request> rs, Deadline deadline);

  // Give the transport a chance to move bytes while the caller computes. Transports whose progress needs
  // the caller's thread (MPI over TCP) override it; calling it between compute tiles is what makes
  // communication overlap compute there (benchmarks.md: MPI_Testall between tiles).
  virtual void progress() {}

  // Fail every pending and future wait on every rank with AbortedError(reason). Safe to call twice.
  virtual void abort(const std::string& reason) = 0;
  virtual bool aborted() const = 0;

  // The transport's own fp32 sum all-reduce, for baselines. Throws when absent. `blocking` calls
  // MPI_Allreduce itself (what MPI users call; the deadline and abort notices cannot reach inside it);
  // otherwise MPI_Iallreduce is polled with the deadline, which over OpenMPI's TCP transport runs a
  // slower algorithm (libnbc: 2.7x slower at 16 MiB on 4 ranks over 1 Gbit/s links, measured).
  virtual bool hasNativeAllreduce() const { return false; }
  virtual void nativeAllreduceSum(float* data, size_t count, Deadline deadline, bool blocking);

  // The node (host) of every rank, in rank order: small integers, equal for ranks on one node, numbered in
  // order of each node's lowest rank (so rank 0 is on node 0). The hierarchical all-reduce (allreduce.h) splits
  // its stages by it. Thread ranks: all on node 0; MPI: MPI_Comm_split_type(MPI_COMM_TYPE_SHARED), measured at
  // construction, unless FLASHRING_RANKS_PER_NODE=K names consecutive blocks of K; a GroupCommunicator: its parent's,
  // for its members. setNodeIds() overrides it, e.g. for emulated topologies whose "nodes" share one host (bench/netem
  // --topology nodes:RxK). Must be the same on every rank (setNodeIds: pass the same vector everywhere).
  virtual std::vector<int> nodeIds() const;
  // Throws InvalidArgument unless ids has size() entries; renumbers them in order of each node's lowest rank.
  void setNodeIds(std::vector<int> ids);
  // Consecutive blocks of `ranks_per_node` ranks (ranks_per_node must divide size()).
  void setRanksPerNode(int ranks_per_node);

  // The timeout every collective applies to each of its waits. Default 120 s, or FLASHRING_TIMEOUT_MS.
  std::chrono::milliseconds timeout() const { return timeout_; }
  void setTimeout(std::chrono::milliseconds t) { timeout_ = t; }
  Deadline deadline() const { return Clock::now() + timeout_; }

  // Payload bytes this rank has posted with isend since creation (or the last reset). The traffic of
  // native collectives (MPI_Allreduce) is not counted: MPI's algorithm, and so its bytes, are unknown.
  uint64_t bytesSent() const { return bytes_sent_; }
  void resetBytesSent() { bytes_sent_ = 0; }

  // The scratch memory of the collectives called on this communicator without a workspace of their own
  // (options.workspace == nullptr): empty until first used, then kept for every later call, freed with the
  // communicator (workspace.h). One per rank, like the communicator itself: not for use by two threads at
  // once. A GroupCommunicator hands out its parent's (the same rank, so the same thread).
  virtual Workspace& workspace() { return workspace_; }

 protected:
  Communicator();
  void countSent(size_t bytes) { bytes_sent_ += bytes; }
  // Validates peer, tag and buffer arguments; throws InvalidArgument naming the bad one.
  void checkArgs(const void* buf, size_t bytes, int peer, Tag tag, const char* op) const;

 private:
  std::chrono::milliseconds timeout_;
  uint64_t bytes_sent_ = 0;
  Workspace workspace_;

 protected:
  std::vector<int> node_ids_;  // empty: all ranks on node 0 (unless a subclass's nodeIds() says otherwise)
};

// Interrupting long waits (the Python package ends a collective on Ctrl-C with it). While a wait blocks, every
// transport calls the installed check about every kInterruptPeriod; a wait that completes sooner never calls
// it, so the fast path does not pay for it. When the check returns true the wait aborts its communicator
// ("interrupted on rank r": the other ranks' waits end too) and throws InterruptedError. One check per
// process; nullptr (the default) removes it. It is called from whichever thread waits: keep it cheap and
// thread-safe (it may return false on threads it does not care about).
using InterruptCheck = bool (*)();
inline constexpr std::chrono::milliseconds kInterruptPeriod{100};
void setInterruptCheck(InterruptCheck check);
InterruptCheck interruptCheck();

// ids renumbered in order of first appearance (0, 1, ...), so that equal layouts compare equal.
std::vector<int> normalizeNodeIds(const std::vector<int>& ids);

// Small helpers built on point-to-point messages, for benchmarks and argument checks.
// All ranks must call them in the same order.
void barrier(Communicator& comm);
// Maximum / minimum / sum of one value over all ranks; every rank gets the same result.
double allreduceMax(Communicator& comm, double v);
double allreduceMin(Communicator& comm, double v);
double allreduceSumDouble(Communicator& comm, double v);
// Throws InvalidArgument on every rank unless every rank passed the same value; `what` names it.
void checkSameOnAllRanks(Communicator& comm, uint64_t value, const char* what);

}  // namespace flashring
