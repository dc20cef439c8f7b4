// The pieces the subcommands share (cli.h): sizes, the transport flags and the rank runner.
#include "cli.h"

#include <fmt/format.h>

#include <stdexcept>

#include "flashring/config.h"
#include "flashring/error.h"
#include "flashring/thread_comm.h"
#if FLASHRING_WITH_MPI
#include "flashring/mpi/mpi_comm.h"
#endif

namespace flashring::cli {

size_t parseSize(const std::string& s) {
  if (s.empty()) throw CLI::ValidationError("size", "empty size");
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (const std::exception&) {
    throw CLI::ValidationError("size", fmt::format("'{}' is not a size (examples: 4096, 1K, 64M, 1G)", s));
  }
  std::string unit = s.substr(pos);
  double mul = 1;
  if (unit == "" || unit == "B")
    mul = 1;
  else if (unit == "K" || unit == "k" || unit == "KiB")
    mul = 1024.0;
  else if (unit == "M" || unit == "m" || unit == "MiB")
    mul = 1024.0 * 1024;
  else if (unit == "G" || unit == "g" || unit == "GiB")
    mul = 1024.0 * 1024 * 1024;
  else
    throw CLI::ValidationError("size", fmt::format("'{}': unknown unit '{}' (use K, M or G)", s, unit));
  if (v < 0) throw CLI::ValidationError("size", fmt::format("'{}' is negative", s));
  return static_cast<size_t>(v * mul);
}

std::string formatSize(size_t b) {
  if (b >= (size_t{1} << 30) && b % (size_t{1} << 30) == 0) return fmt::format("{}G", b >> 30);
  if (b >= (size_t{1} << 20) && b % (size_t{1} << 20) == 0) return fmt::format("{}M", b >> 20);
  if (b >= 1024 && b % 1024 == 0) return fmt::format("{}K", b >> 10);
  return fmt::format("{}", b);
}

void TransportOptions::add(CLI::App& app) {
  app.add_option("--transport", transport, "thread (ranks as threads of this process) or mpi (run under mpirun)")
      ->check(CLI::IsMember({"thread", "mpi"}))
      ->capture_default_str();
  app.add_option("--ranks", ranks, "number of ranks for --transport thread")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--timeout-ms", timeout_ms, "deadline of every wait (default 120000, or FLASHRING_TIMEOUT_MS)");
  app.add_option("--ranks-per-node", ranks_per_node,
                 "treat consecutive blocks of this many ranks as one node (emulated multi-node topologies such as "
                 "bench/netem --topology nodes:RxK; default: thread ranks are one node, MPI ranks are grouped by "
                 "host). The hierarchical all-reduce and Auto use it")
      ->check(CLI::PositiveNumber);
}

void runOnTransport(const TransportOptions& t, const std::function<void(Communicator&)>& fn) {
  const auto timeout = std::chrono::milliseconds(t.timeout_ms);
  if (t.transport == "thread") {
    if (t.ranks_per_node > 0 && t.ranks % t.ranks_per_node != 0)
      throw InvalidArgument(fmt::format("--ranks-per-node {} does not divide --ranks {}", t.ranks_per_node, t.ranks));
    runThreadRanks(
        t.ranks,
        [&](Communicator& c) {
          if (t.ranks_per_node > 0) c.setRanksPerNode(t.ranks_per_node);
          fn(c);
        },
        timeout);
    return;
  }
#if FLASHRING_WITH_MPI
  MpiEnvironment env;
  MpiCommunicator comm;
  if (t.timeout_ms > 0) comm.setTimeout(timeout);
  if (t.ranks_per_node > 0) comm.setRanksPerNode(t.ranks_per_node);
  try {
    fn(comm);
  } catch (const AbortedError&) {
    throw;
  } catch (const std::exception& e) {
    comm.abort(fmt::format("rank {} failed: {}", comm.rank(), e.what()));
    throw;
  }
#else
  throw InvalidArgument("this flashring was built without MPI (FLASHRING_WITH_MPI=OFF); use --transport thread");
#endif
}

}  // namespace flashring::cli
