// Pieces shared by the flashring subcommands.
#pragma once

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

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
  int ranks_per_node = 0;  // > 0: consecutive blocks of ranks form nodes (Communicator::setRanksPerNode)
  void add(CLI::App& app);
};

// Runs fn on every rank of the chosen transport: `ranks` threads, or this MPI process.
void runOnTransport(const TransportOptions& t, const std::function<void(Communicator&)>& fn);

// splitmix64: counter-based benchmark inputs, so any rank can regenerate any rank's values.
inline uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Subcommands.
void addBenchAllreduce(CLI::App& bench);
void addBenchAttention(CLI::App& bench);
void addDemo(CLI::App& app);
void addSimulate(CLI::App& app);

}  // namespace flashring::cli
