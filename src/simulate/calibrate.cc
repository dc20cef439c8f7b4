// "This machine as calibrated": a simulate profile from measurements on the ranks of a communicator.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "flashring/quant.h"
#include "flashring/simulate.h"

namespace flashring::sim {

namespace {

// Best of three runs of fn, in seconds.
template <class F>
double best3(F&& fn) {
  double best = 1e30;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = Clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return std::max(best, 1e-9);
}

}  // namespace

Profile calibratedProfile(Communicator& comm, double weight_bytes) {
  // Link latency, bandwidth, topology and the block kernel's FLOP/s (the slowest rank's), as Auto uses them.
  const CostModel cm = CostModel::calibrate(comm);
  const CostModelParams& cp = cm.params();
  // Memory: a 64 MiB copy (read + write), every rank at once; the slowest rank counts.
  const size_t bytes = size_t{64} << 20;
  std::vector<char> src(bytes, 1), dst(bytes);
  barrier(comm);
  const double copy_s = best3([&] { std::memcpy(dst.data(), src.data(), bytes); });
  const double mem_Bps = allreduceMin(comm, 2.0 * static_cast<double>(bytes) / copy_s);
  // The codec: INT4 g128 encode of 4 Mi floats (read 4 bytes, write ~0.53 per value).
  const size_t n = size_t{4} << 20;
  const quant::Config cfg{4, 128, false};
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(static_cast<int>(i % 1000) - 500) * 0.01f;
  std::vector<uint8_t> enc(quant::encodedBytes(n, cfg));
  barrier(comm);
  const double q_s = best3([&] { quant::quantize(x.data(), n, cfg, enc.data()); });
  const double codec_Bps = allreduceMin(comm, (4.0 * static_cast<double>(n) + static_cast<double>(enc.size())) / q_s);

  Profile p;
  p.name = "local";
  p.description = fmt::format(
      "this machine as calibrated: {} ranks, {} link {:.2f} GB/s, {:.0f} us; kernel "
      "{:.1f} GFLOP/s",
      comm.size(), topologyName(cp.topology), cp.bandwidth_Bps / 1e9, cp.latency_s * 1e6, cp.kernel_flops / 1e9);
  p.sources = "CostModel::calibrate (link, block kernel), a memcpy and an INT4 encode timed here";
  p.gpus_per_node = comm.size();
  p.nodes = 1;
  p.peak_flops = cp.kernel_flops;  // the block kernel's rate stands in for the GEMMs too
  p.gemm_eff = p.attn_eff = p.mem_eff = 1;
  p.mem_Bps = mem_Bps;
  const double phys = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
  p.mem_bytes = phys / comm.size();  // the ranks share this machine's memory
  p.codec_Bps = codec_Bps;
  p.fused_exact_reduce = false;
  p.weight_bytes = weight_bytes;
  p.act_bytes = 4;
  p.intra = {cp.bandwidth_Bps, 1, cp.latency_s, cp.topology};
  p.inter = p.intra;
  return p;
}

}  // namespace flashring::sim
