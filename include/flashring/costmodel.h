// Cost model of the sequence-parallel attention schemes: bytes per step and per link (algorithms.md
// section 2), the topology, and measured link and kernel speeds. Auto asks it which scheme to run.
//
// calibrate() measures on the communicator it is given (collective): the one-way bandwidth and latency
// of a link, whether two transfers from one rank share its bandwidth (star: one uplink per rank, like
// PCIe or a switch) or run in parallel (mesh: a link per pair, like NVLink bridges), and the block
// kernel's FLOP/s on this machine. The result is identical on every rank and can be cached as JSON.
#pragma once

#include <string>

#include "flashring/comm.h"
#include "flashring/sp_attention.h"

namespace flashring {

enum class Topology { Star, Mesh };

struct CostModelParams {
  double bandwidth_Bps = 1e9;  // one direction of one link
  double latency_s = 50e-6;    // per message
  Topology topology = Topology::Star;
  double kernel_flops = 20e9;  // block attention FLOP/s of one rank (non-causal work)
};

class CostModel {
 public:
  CostModel() = default;
  explicit CostModel(const CostModelParams& p) : p_(p) {}

  // Collective. `topology` forces the topology instead of measuring it ("" = measure).
  static CostModel calibrate(Communicator& comm, const std::string& topology = "");

  const CostModelParams& params() const { return p_; }
  CostModelParams& params() { return p_; }

  // Predicted seconds of one spAttention call with this scheme (not Auto) on `ranks` ranks.
  double predict(SpScheme scheme, const SpShape& shape, int ranks, const SpAttentionOptions& options) const;
  // The scheme with the lowest prediction.
  SpScheme choose(const SpShape& shape, int ranks, const SpAttentionOptions& options) const;

  std::string toJson() const;
  static CostModel fromJson(const std::string& json);

 private:
  CostModelParams p_;
};

const char* topologyName(Topology t);

}  // namespace flashring
