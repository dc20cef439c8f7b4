// Pieces shared by the flashring subcommands.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>

#include "flashring/comm.h"

namespace flashring::cli {

// "1K" -> 1024, "64M", "2G", "4096" (binary units, as nccl-tests).
size_t parseSize(const std::string& s);
std::string formatSize(size_t bytes);

// Which transport a subcommand runs on.
struct TransportOptions {
  std::string transport = "thread";
  int ranks = 4;  // thread transport only; MPI takes its size from mpirun
  int timeout_ms = 0;
  void add(CLI::App& app);
};

// Runs fn on every rank of the chosen transport: `ranks` threads, or this MPI process.
void runOnTransport(const TransportOptions& t, const std::function<void(Communicator&)>& fn);

// Subcommands.
void addBenchAllreduce(CLI::App& bench);
void addBenchAttention(CLI::App& bench);
void addDemo(CLI::App& app);

}  // namespace flashring::cli
