// flashring: command-line tool. `flashring --help` lists the subcommands.
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include "cli.h"
#include "flashring/config.h"
#include "flashring/error.h"
#include "flashring/quant.h"
#include "model_options.h"

int main(int argc, char** argv) {
  using namespace flashring;
  CLI::App app{
      "flashring: communication-efficient parallel LLM inference.\n"
      "Flash Communication low-bit all-reduce (arXiv 2412.04964) and TokenRing sequence parallelism (arXiv "
      "2412.20501)."};
  app.set_version_flag("--version", "flashring " FLASHRING_VERSION_STRING);
  app.footer(
      "Examples:\n"
      "  flashring demo\n"
      "  flashring run --chat -p \"What is the capital of France?\" --tp 2 --sp 2\n"
      "  flashring run --interactive --temp 0.7 --seed 1      (a conversation on stdin; /exit ends it)\n"
      "  flashring perplexity -c 512 --tp 4 --comm int4 --error-feedback --kl-divergence\n"
      "  mpirun -n 4 flashring run --transport mpi --tp 4 --chat -p \"Hi!\"\n"
      "  flashring simulate --profile l40x4-pcie -m llama-3-70b --tp 4 --comm int4   (predictions for GPU clusters)\n"
      "`flashring SUBCOMMAND --help` describes each subcommand's flags.");
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
  cli::addSimulate(app);
  auto* info = app.add_subcommand("info", "print build and CPU facts (kernels chosen at run time)");
  info->callback([] {
    fmt::print("flashring {}\n", FLASHRING_VERSION_STRING);
    fmt::print("codec ISA: {} (best on this CPU: {}; override with FLASHRING_ISA=scalar|avx2|avx512)\n",
               quant::isaName(quant::activeIsa()), quant::isaName(quant::bestIsa()));
    fmt::print("transports: thread{}{}\n", FLASHRING_WITH_MPI ? ", mpi" : "", FLASHRING_WITH_NCCL ? ", nccl" : "");
    fmt::print("cuda kernels: {}\n",
               FLASHRING_WITH_CUDA ? "built (flashring::cuda)" : "not built (FLASHRING_WITH_CUDA=OFF)");
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
