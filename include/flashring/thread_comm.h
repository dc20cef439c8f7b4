// ThreadCommunicator: N ranks as threads of one process, the embedded default.
//
// A ThreadWorld owns the shared mailboxes; each rank gets a Communicator from it. A send and its
// matching receive meet in the mailbox and the payload is copied once, straight from the sender's buffer
// into the receiver's (rendezvous), so a send completes when its receive has been posted and copied.
// runThreadRanks() is the harness used by tests, benchmarks and the demo: it runs a function on N
// threads, aborts the world if any of them throws (so the others fail fast instead of hanging), and
// reports every rank's outcome.
#pragma once

#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "flashring/comm.h"

namespace flashring {

// How a world moves payloads. The default: std::memcpy of host memory. The CUDA build's one-GPU world
// (cuda/thread_world.h) copies device memory with cudaMemcpyAsync on the copying thread's stream, so that N ranks
// share one GPU and every algorithm runs end to end on it.
struct ThreadWorldOptions {
  // Copies `bytes` from a matched send's buffer into its receive's; returns "" or the failure, which fails both
  // requests and aborts the world (like a size mismatch). Called by whichever rank's thread completes the match.
  std::function<std::string(void* dst, const void* src, size_t bytes)> copy;
  bool moves_cuda = false;           // movesMemory(MemoryKind::Cuda) of the world's communicators
  std::string transport = "thread";  // Communicator::transport()
};

class ThreadWorld {
 public:
  explicit ThreadWorld(int size, ThreadWorldOptions options = {});
  ~ThreadWorld();
  ThreadWorld(const ThreadWorld&) = delete;
  ThreadWorld& operator=(const ThreadWorld&) = delete;

  int size() const;
  // The communicator of rank r; owned by the world, valid while it lives.
  Communicator& communicator(int r);
  void abort(const std::string& reason);

  struct Impl;  // shared mailboxes; defined in thread_comm.cc

 private:
  std::unique_ptr<Impl> impl_;
};

// Runs fn(comm) on `size` threads, one per rank. If a rank throws, the world is aborted so the other
// ranks fail fast. Returns each rank's exception (null where it succeeded).
std::vector<std::exception_ptr> runThreadRanksCollect(int size, const std::function<void(Communicator&)>& fn,
                                                      std::chrono::milliseconds timeout = std::chrono::milliseconds(0),
                                                      const ThreadWorldOptions& options = {});

// Same, but rethrows the first failure (the root cause, preferring a non-AbortedError) after all ranks end.
void runThreadRanks(int size, const std::function<void(Communicator&)>& fn,
                    std::chrono::milliseconds timeout = std::chrono::milliseconds(0),
                    const ThreadWorldOptions& options = {});

}  // namespace flashring
