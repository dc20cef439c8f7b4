// The all-reduce algorithms behind allreduce(); each assumes comm.size() > 1.
#pragma once

#include <span>
#include <vector>

#include "flashring/allreduce.h"
#include "flashring/device_ops.h"

namespace flashring::detail {

// ws: the scratch memory of the call (each algorithm opens its own frame on it).
void ringAllreduce(Communicator& comm, std::span<float> data, Payload payload, Workspace& ws, AllreduceStats& stats);
// error: nullptr, or data.size() floats that receive this rank's share of the error (see allreduceWithError).
// ctx: the verbs of data's memory (ctx.ops null: host memory); see device_ops.h. ws: host scratch.
void twoStepAllreduce(Communicator& comm, std::span<float> data, Payload payload, size_t chunk_elems, Workspace& ws,
                      AllreduceStats& stats, float* error = nullptr, const ExecContext& ctx = {});
void quantizedAllreduce(Communicator& comm, std::span<float> data, const AllreduceOptions& options, Workspace& ws,
                        AllreduceStats& stats, float* error = nullptr, const ExecContext& ctx = {});
// OneShot with options.payload, or the reduce_scatter codec when options.oneshot_quantized.
void oneShotAllreduce(Communicator& comm, std::span<float> data, const AllreduceOptions& options, Workspace& ws,
                      AllreduceStats& stats, float* error = nullptr);

// Hierarchical all-reduce (hierarchical.cc): the node layout it runs on, the stage codecs, the inter-node options.
struct NodeLayout {
  int nodes = 1, per_node = 1;  // nodes, ranks in each
  int node = 0, local = 0;      // this rank's node and its index there
  std::vector<int> intra;       // parent ranks of this rank's node, in rank order
  std::vector<int> inter;       // parent ranks with this rank's local index, in node order
};
// From options.hier.ranks_per_node, else the communicator's nodeIds(); InvalidArgument if nodes differ in size.
NodeLayout nodeLayout(const Communicator& comm, const AllreduceOptions& options);
struct Codec;
Codec stageCodec(const StageCodec& stage, const quant::Config& group);
AllreduceOptions interOptions(const AllreduceOptions& options);
void hierarchicalAllreduce(Communicator& comm, std::span<float> data, const AllreduceOptions& options, Workspace& ws,
                           AllreduceStats& stats, float* error = nullptr);

// Element alignment of slice boundaries for the exact algorithms (a cache line of fp32).
inline constexpr size_t kSliceAlign = 16;

}  // namespace flashring::detail
