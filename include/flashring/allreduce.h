// All-reduce (sum, fp32) for tensor-parallel activations, exact and low-bit.
//
// One entry point, allreduce(comm, data, options), with the algorithm chosen in the options:
//   Ring       reduce-scatter ring + all-gather ring, 2(N-1) steps; fp32 or bf16 payload (fp32 accumulate)
//   TwoStep    one-hop reduce-scatter (all-to-all) + all-gather, 2 steps; fp32 or bf16 payload
//   Quantized  the Flash Communication all-reduce (arXiv 2412.04964): TwoStep whose reduce-scatter and
//              all-gather each send group-wise quantized data (own bit width per stage), chunked so that
//              quantizing one chunk overlaps the transfer of the previous one; fp32 accumulation in rank
//              order
//   OneShot    one step, for small (decode-sized) buffers where latency dominates: every rank encodes its
//              whole buffer once (fp32, bf16, or the reduce-scatter codec when oneshot_quantized: group
//              size, symmetry, spikes, rotate and clip exactly as the two-step's first stage) and sends the
//              bytes to every other rank; every rank decodes all N encodings, its own included (never its
//              raw input), and sums them in fp32 in rank order 0..N-1 starting from +0.0. N-1 times the
//              buffer leaves each rank (the two-step: 2(N-1)/N), in one message round instead of two. Not
//              chunked (chunk_elems does not apply). fp32 gives the same bits as TwoStep fp32.
//   Hierarchical  for ranks spread over several nodes (Communicator::nodeIds(), or hier.ranks_per_node): an
//              intra-node reduce-scatter (K ranks per node; each rank keeps the fp32 sum of its node for slice
//              l = its index in the node), an all-reduce of that slice across the nodes among the ranks with the
//              same index l (two-step, quantized two-step or one-shot), and an intra-node all-gather. The two
//              intra-node stages send hier.intra's encoding (fp32, bf16 or a quantized codec), the inter-node
//              stage hier.inter's, so the slow inter-node links carry each value once per node in the inter
//              codec (a flat Flash all-reduce sends (N-1)/N of the buffer per rank, most of it between nodes).
//              Sums: node-local rank order, then node order; the owner of a slice keeps the decoded bytes it
//              sent, so every replica is bitwise identical. Every node must hold the same number of ranks
//              (else InvalidArgument); one node runs the intra stages only, one rank per node the inter only.
//              Quantized stages take group size, symmetry, spikes, rotate and clip from reduce_scatter.
//   Native     the transport's own all-reduce (MPI_Allreduce), the baseline users have today
//   Auto       exact fp32 below auto_threshold_bytes (latency-bound), Quantized at or above it (Hierarchical
//              with bf16 inside the nodes and the reduce_scatter codec between them when the ranks span
//              several nodes of several ranks each: hier.ranks_per_node > 0, or allreduce()'s communicator
//              says so). Below it,
//              OneShot or TwoStep, from the link model when `link` is set, else a fixed size threshold:
//                with a model (latency a, bandwidth b of one link direction, B = 4 * count bytes, N ranks):
//                  star (one uplink per rank):  OneShot a + (N-1) B / b     TwoStep 2a + 2 (N-1)/N B / b
//                  mesh (a link per pair):      OneShot a + B / b           TwoStep 2a + 2 B / (N b)
//                  OneShot when its time is strictly lower (N = 2: always, the bytes are equal); on a
//                  star OneShot wins below B = a b N / ((N-1)(N-2)), e.g. 4 ranks, 50 us, 1 GB/s: 33 KB;
//                without one: OneShot when B < oneshot_threshold_bytes (32 KiB: up to 8191 floats; the
//                decode all-reduces of 576 and 4096 floats).
//              The choice depends only on the count, N and the options, so ranks with equal counts and
//              options agree (the link model must be the same on every rank: CostModel::calibrate's is).
//              allreduceAutoChoice() says what Auto picks.
// Every algorithm leaves bitwise-identical results on every rank (the owner of a slice keeps the
// decoded bytes it sent, never its own more precise copy). Sizes that do not divide by ranks or group
// size, empty buffers and one rank all work. Buffers whose sizes differ across ranks raise an error on
// every rank (detected from message sizes and headers, or checked up front for Native). The one-shot
// shares the two-step's first message tag, so ranks that Auto sent down different paths (their counts
// differ) fail on the first message too, instead of at the deadline.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "flashring/comm.h"
#include "flashring/quant.h"
#include "flashring/tensor.h"

namespace flashring {

enum class AllreduceAlgorithm { Auto, Ring, TwoStep, Quantized, Native, OneShot, Hierarchical };
enum class Payload { F32, BF16 };

// The link Auto weighs OneShot against TwoStep with (CostModel::calibrate measures one: copy its params()'s
// latency_s, bandwidth_Bps and topology). bandwidth_Bps = 0: no model.
struct AllreduceLinkModel {
  double latency_s = 0;      // per message round
  double bandwidth_Bps = 0;  // one direction of one link, bytes/s
  bool mesh = false;         // a link per pair of ranks (NVLink bridges); false: a star (one uplink per rank)
  bool known() const { return bandwidth_Bps > 0; }
};

// One stage's encoding in the hierarchical all-reduce: bits 0 = the exact payload, else a quantized codec of
// that many bits (8, 6, 5, 4) with the group settings of AllreduceOptions::reduce_scatter.
struct StageCodec {
  int bits = 0;
  Payload payload = Payload::F32;
};

struct HierarchicalOptions {
  StageCodec intra{0, Payload::BF16};  // the intra-node reduce-scatter and all-gather
  StageCodec inter{4, Payload::F32};   // the all-reduce across nodes
  bool inter_oneshot = false;          // across nodes: one-shot instead of the two-step
  // > 0: nodes are consecutive blocks of this many ranks (emulated topologies); 0: Communicator::nodeIds().
  int ranks_per_node = 0;
};

struct AllreduceOptions {
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;
  Payload payload = Payload::F32;               // Ring, TwoStep, and OneShot unless oneshot_quantized
  quant::Config reduce_scatter{8, 128, false};  // Quantized (and Auto above the threshold): step 1 codec;
                                                // OneShot with oneshot_quantized: its codec
  quant::Config all_gather{8, 128, false};      // step 2 codec
  // OneShot: send the reduce_scatter codec's encoding instead of the payload.
  bool oneshot_quantized = false;
  // TwoStep and Quantized: elements per pipeline chunk (0 = the whole buffer in one chunk).
  size_t chunk_elems = size_t{1} << 20;
  // Auto: buffers of fewer bytes than this use exact fp32 (OneShot or TwoStep, see above), the others Quantized.
  size_t auto_threshold_bytes = size_t{1} << 20;
  // Auto below auto_threshold_bytes, without a link model: buffers of fewer bytes than this use OneShot fp32,
  // the others TwoStep fp32.
  size_t oneshot_threshold_bytes = size_t{32} << 10;
  // Auto: the link model; when known() it decides OneShot vs TwoStep instead of oneshot_threshold_bytes.
  AllreduceLinkModel link;
  // Hierarchical (and Auto over several nodes): the stages' codecs and the node layout.
  HierarchicalOptions hier;
  // Native: check that every rank passes the same count first (MPI would otherwise hang or corrupt). The
  // other algorithms detect a mismatch from their own messages at no extra cost.
  bool check_sizes = true;
  // Native: call the blocking MPI_Allreduce (fastest, what users have today) or poll MPI_Iallreduce
  // against the deadline (a dead peer becomes a TimeoutError instead of a hang). See comm.h.
  bool native_blocking = true;
  // Where device work is queued and with which verbs (tensor.h, device_ops.h): cuda::context(stream) for a
  // TensorView in GPU memory; ignored for host memory.
  ExecContext exec;
  // Scratch memory (encoded messages, accumulators): this rank's own workspace, never another rank's
  // (workspace.h); nullptr: the communicator's (Communicator::workspace()). Reused across calls, so after the
  // first call of a size no all-reduce allocates its buffers again.
  Workspace* workspace = nullptr;
};

struct AllreduceStats {
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;  // what actually ran (Auto resolved)
  uint64_t wire_bytes = 0;                                  // payload bytes this rank sent
  double codec_s = 0;                                       // time quantizing / converting / reducing on this rank
  double wait_s = 0;                                        // time blocked waiting for messages on this rank
};

void allreduce(Communicator& comm, std::span<float> data, const AllreduceOptions& options = {},
               AllreduceStats* stats = nullptr);

// allreduce() of a tensor view (tensor.h), contiguous:
//   host f32        the span version above;
//   host f16/bf16   widened to fp32 (exact), reduced, rounded back to nearest even: the fp32 result rounded once;
//   device memory   with options.exec the verbs of that memory (cuda::context(stream)) and a transport that moves it
//                   (Communicator::movesMemory: NCCL, the one-GPU thread world); f32 only. The pipelined two-step
//                   runs there with the same schedule and the same bytes as on the host, so the result is
//                   bitwise the host all-reduce's. TwoStep and Quantized (Auto: Quantized at or above
//                   auto_threshold_bytes, else TwoStep fp32); the other algorithms are InvalidArgument there.
// Every failure names the tensor, the transport and what was wrong.
void allreduce(Communicator& comm, const TensorView& data, const AllreduceOptions& options = {},
               AllreduceStats* stats = nullptr);

// allreduce() that also hands back the error this rank knows about, for error feedback: `error` (as many
// floats as data, not aliasing it) receives, for each element of a slice this rank sent in the reduce-scatter,
// its value minus what the slice's owner decoded, and for the slice it owns, the fp32 sum minus the result.
// Summed over the ranks, `error` is the exact fp32 sum minus the result (up to the rounding of the sums), so
// adding it to this rank's input of the next all-reduce into the same accumulator (a residual stream) cancels
// this one's error there. Elements whose error is not finite (NaN/Inf inputs) get 0. TwoStep and Quantized
// (and Auto) track it; Ring and Native leave `error` all zero; one rank: zero. OneShot: this rank's whole
// buffer minus the decoded bytes of its own encoding (zero for fp32), so that summed over the ranks it is
// again the exact sum minus the result, up to the rounding of the fp32 sum.
void allreduceWithError(Communicator& comm, std::span<float> data, std::span<float> error,
                        const AllreduceOptions& options = {}, AllreduceStats* stats = nullptr);

// Named configurations used by the CLI and benchmarks: ring-fp32, ring-bf16, twostep-fp32, twostep-bf16,
// mpi, auto, flash-int8, flash-int6, flash-int5, flash-int4, flash-int4-int8 (INT4 reduce-scatter, INT8
// all-gather), flash-int8-int4, oneshot-fp32, oneshot-bf16, oneshot-int8, oneshot-int6, oneshot-int5,
// oneshot-int4, and hier-<intra>-<inter> / hier-<intra>-oneshot-<inter> with intra and inter each one of fp32,
// bf16, int8, int6, int5, int4 (hier-bf16-int4: bf16 inside the nodes, the INT4 two-step between them).
// Group size, symmetry and spikes (quant::Config::spikes) of both stages come from `base`. Throws
// InvalidArgument listing the valid names.
AllreduceOptions allreduceOptionsFromName(std::string_view name, const AllreduceOptions& base = {});
std::string allreduceAlgorithmName(AllreduceAlgorithm a);
// What allreduce() runs for `count` floats on `ranks` ranks with these options: options.algorithm, or for
// Auto its choice (see above), the node layout taken from options.hier.ranks_per_node (0: one node).
AllreduceAlgorithm allreduceAutoChoice(size_t count, int ranks, const AllreduceOptions& options);
// Bytes one rank sends for an all-reduce of `count` fp32 values with these options on `ranks` ranks (the
// quantized codecs' metadata and spike sections included). Hierarchical: both stages, the layout from
// options.hier.ranks_per_node (0: one node). allreduceInterNodeBytes: of those, the bytes that leave the node.
uint64_t allreduceInterNodeBytes(size_t count, int ranks, const AllreduceOptions& options);
uint64_t allreduceWireBytes(size_t count, int ranks, const AllreduceOptions& options);

}  // namespace flashring
