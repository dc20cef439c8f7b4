// Cost model of the sequence-parallel attention schemes: bytes per step and per link (algorithms.md
// section 2), the topology, and measured link and kernel speeds. Auto asks it which scheme to run.
//
// calibrate() measures on the communicator it is given (collective): the one-way bandwidth and latency
// of a link, whether two transfers from one rank share its bandwidth (star: one uplink per rank, like
// PCIe or a switch) or run in parallel (mesh: a link per pair, like NVLink bridges), and the block
// kernel's FLOP/s on this machine. The result is identical on every rank and can be cached as JSON.
//
// Two-level layouts (Communicator::nodeIds() names several nodes): the link above is a link inside a node,
// and calibrate() also measures the link between nodes (rank 0 and the first rank of node 1): its bandwidth,
// its latency, and whether the ranks of a node share one uplink (K flows at once take about K times as long
// as one: one NIC per node, as bench/netem --topology nodes:RxK) or have one each. The model then assumes
// nodes are consecutive blocks of ranks (as MPI's usual placement and setRanksPerNode make them) and prices
// every scheme by the bytes it puts on each rank link, pair link and node uplink per phase. On one node the
// single-level formulas are unchanged. JSON from before the inter-node fields loads (they default to the
// intra-node link).
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
  // Between nodes: one node's uplink, one direction. 0: not measured, the intra-node values above apply.
  double inter_bandwidth_Bps = 0;
  double inter_latency_s = 0;
  bool inter_shared = true;  // a node's ranks share its uplink (one NIC per node), else one link each
  // CPU work beside the kernel, on the cores the kernel runs on (0: none; CPU machines measure them, see
  // simulate.h): merging partial (out, lse) blocks, as memory traffic per second (3 passes over out and lse per
  // merge), and the transport's CPU time per byte a rank sends while receiving as many (MPI over TCP). Per ring
  // step both are added to the compute that the step's transfer can hide behind; in the all-to-all and
  // all-gather schemes they add to the call. (Single-level model only; the two-level model leaves them out.)
  double merge_Bps = 0;
  double wire_cpu_s_per_byte = 0;

  double interBandwidth() const { return inter_bandwidth_Bps > 0 ? inter_bandwidth_Bps : bandwidth_Bps; }
  double interLatency() const { return inter_bandwidth_Bps > 0 ? inter_latency_s : latency_s; }
};

// Bytes one rank sends in one spAttention call, averaged over the ranks, counted as SpAttentionStats counts
// them (bytes_fwd, bytes_bwd, and bytes_inter: the part that crosses nodes, for every scheme here). Exact for
// every scheme and length except TokenRing under a causal mask, which sends only the rows with work (this
// counts them all: an upper bound).
struct SpBytes {
  double fwd = 0, bwd = 0, inter = 0;
};

class CostModel {
 public:
  CostModel() = default;
  explicit CostModel(const CostModelParams& p) : p_(p) {}

  // Collective. `topology` forces the topology instead of measuring it ("" = measure).
  static CostModel calibrate(Communicator& comm, const std::string& topology = "");

  const CostModelParams& params() const { return p_; }
  CostModelParams& params() { return p_; }

  // Predicted seconds of one spAttention call with this scheme (not Auto) on `ranks` ranks of one node.
  double predict(SpScheme scheme, const SpShape& shape, int ranks, const SpAttentionOptions& options) const;
  // The scheme with the lowest prediction (the single-level schemes: one node).
  SpScheme choose(const SpShape& shape, int ranks, const SpAttentionOptions& options) const;
  // The same on a node layout (nodes = 1 is the calls above). choose() weighs the two-level schemes when there
  // are several nodes of several ranks each. Depends only on its arguments, so it agrees on every rank.
  double predict(SpScheme scheme, const SpShape& shape, const SpNodeLayout& nodes,
                 const SpAttentionOptions& options) const;
  SpScheme choose(const SpShape& shape, const SpNodeLayout& nodes, const SpAttentionOptions& options) const;
  // Bytes per rank of one call (with_lse: the call asks for lse, which Ulysses' way back carries).
  SpBytes predictBytes(SpScheme scheme, const SpShape& shape, const SpNodeLayout& nodes,
                       const SpAttentionOptions& options, bool with_lse = false) const;

  std::string toJson() const;
  static CostModel fromJson(const std::string& json);

 private:
  CostModelParams p_;
};

const char* topologyName(Topology t);

}  // namespace flashring
