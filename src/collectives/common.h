// Shared pieces of the collectives: partitioning, the abort-on-unwind guard, the workspace choice, timers.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <exception>
#include <string>
#include <vector>

#include "flashring/comm.h"

namespace flashring::detail {

struct Range {
  size_t begin = 0, end = 0;
  size_t size() const { return end - begin; }
};

// Split [0, n) into `parts` contiguous ranges whose boundaries fall on multiples of `align` (the last
// range takes the remainder; trailing ranges may be empty). Identical on every rank for equal n.
inline Range part(size_t n, int parts, int i, size_t align = 1) {
  const size_t units = (n + align - 1) / align;
  const size_t per = (units + static_cast<size_t>(parts) - 1) / static_cast<size_t>(parts);
  const size_t b = std::min(n, static_cast<size_t>(i) * per * align);
  const size_t e = std::min(n, (static_cast<size_t>(i) + 1) * per * align);
  return {b, e};
}

// Runs a collective's body; if it throws, aborts the communicator with the reason (so every rank fails
// fast with a message naming the cause instead of hanging) and rethrows. Collectives keep their buffers in
// a Workspace or the caller's memory, which outlive the unwinding (a frame that ends by an exception frees
// nothing, workspace.h), and the transports stop touching buffers once abort() returns.
template <typename F>
void abortOnError(Communicator& comm, const char* what, F&& body) {
  try {
    body();
  } catch (const AbortedError&) {
    throw;
  } catch (const std::exception& e) {
    if (!comm.aborted()) {
      try {
        comm.abort(std::string(what) + " failed on rank " + std::to_string(comm.rank()) + ": " + e.what());
      } catch (...) {
      }
    }
    throw;
  }
}

// The workspace a collective runs in: the caller's (options), else the communicator's.
inline Workspace& workspaceOf(Communicator& comm, Workspace* ws) { return ws != nullptr ? *ws : comm.workspace(); }

class Stopwatch {
 public:
  explicit Stopwatch(double& into) : into_(into), t0_(Clock::now()) {}
  ~Stopwatch() { into_ += std::chrono::duration<double>(Clock::now() - t0_).count(); }

 private:
  double& into_;
  Clock::time_point t0_;
};

}  // namespace flashring::detail
