// flashring: command-line tool. `flashring --help` lists the subcommands.
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include "cli.h"
#include "flashring/error.h"
#include "flashring/quant.h"
#include "flashring/thread_comm.h"
#include "model_cmds.h"
#ifdef FLASHRING_WITH_MPI
#include "flashring/mpi_comm.h"
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
}

void runOnTransport(const TransportOptions& t, const std::function<void(Communicator&)>& fn) {
  const auto timeout = std::chrono::milliseconds(t.timeout_ms);
  if (t.transport == "thread") {
    runThreadRanks(t.ranks, fn, timeout);
    return;
  }
#ifdef FLASHRING_WITH_MPI
  MpiEnvironment env;
  MpiCommunicator comm;
  if (t.timeout_ms > 0) comm.setTimeout(timeout);
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

int main(int argc, char** argv) {
  using namespace flashring;
  CLI::App app{
      "flashring: communication-efficient parallel LLM inference.\n"
      "Flash Communication low-bit all-reduce (arXiv 2412.04964) and TokenRing sequence parallelism (arXiv "
      "2412.20501)."};
  app.set_version_flag("--version", "flashring 0.1.0");
  app.require_subcommand(1);
  auto* bench = app.add_subcommand("bench", "benchmarks that put flashring beside its baselines in the same run");
  bench->require_subcommand(1);
  cli::addBenchAllreduce(*bench);
  cli::addBenchAttention(*bench);
  cli::addBenchTtft(*bench);
  cli::addBenchDecode(*bench);
  cli::addRun(app);
  cli::addPerplexity(app);
  cli::addDemo(app);
  auto* info = app.add_subcommand("info", "print build and CPU facts (kernels chosen at run time)");
  info->callback([] {
    fmt::print("flashring 0.1.0\n");
    fmt::print("codec ISA: {} (best on this CPU: {}; override with FLASHRING_ISA=scalar|avx2|avx512)\n",
               quant::isaName(quant::activeIsa()), quant::isaName(quant::bestIsa()));
#ifdef FLASHRING_WITH_MPI
    fmt::print("transports: thread, mpi\n");
#else
    fmt::print("transports: thread\n");
#endif
  });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const flashring::Error& e) {
    std::fprintf(stderr, "flashring: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashring: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
