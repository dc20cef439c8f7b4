// All-reduce (sum, fp32) for tensor-parallel activations, exact and low-bit.
//
// One entry point, allreduce(comm, data, options), with the algorithm chosen in the options:
//   Ring       reduce-scatter ring + all-gather ring, 2(N-1) steps; fp32 or bf16 payload (fp32 accumulate)
//   TwoStep    one-hop reduce-scatter (all-to-all) + all-gather, 2 steps; fp32 or bf16 payload
//   Quantized  the Flash Communication all-reduce (arXiv 2412.04964): TwoStep whose reduce-scatter and
//              all-gather each send group-wise quantized data (own bit width per stage), chunked so that
//              quantizing one chunk overlaps the transfer of the previous one; fp32 accumulation in rank
//              order
//   Native     the transport's own all-reduce (MPI_Allreduce), the baseline users have today
//   Auto       TwoStep fp32 below auto_threshold_bytes (latency-bound, exact), Quantized above it
// Every algorithm leaves bitwise-identical results on every rank (the owner of a slice keeps the
// decoded bytes it sent, never its own more precise copy). Sizes that do not divide by ranks or group
// size, empty buffers and one rank all work. Buffers whose sizes differ across ranks raise an error on
// every rank (detected from message sizes and headers, or checked up front for Native).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "flashring/comm.h"
#include "flashring/quant.h"

namespace flashring {

enum class AllreduceAlgorithm { Auto, Ring, TwoStep, Quantized, Native };
enum class Payload { F32, BF16 };

struct AllreduceOptions {
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;
  Payload payload = Payload::F32;               // Ring and TwoStep
  quant::Config reduce_scatter{8, 128, false};  // Quantized (and Auto above the threshold): step 1 codec
  quant::Config all_gather{8, 128, false};      // step 2 codec
  // TwoStep and Quantized: elements per pipeline chunk (0 = the whole buffer in one chunk).
  size_t chunk_elems = size_t{1} << 20;
  // Auto: buffers of fewer bytes than this use exact TwoStep fp32.
  size_t auto_threshold_bytes = size_t{1} << 20;
  // Native: check that every rank passes the same count first (MPI would otherwise hang or corrupt). The
  // other algorithms detect a mismatch from their own messages at no extra cost.
  bool check_sizes = true;
  // Native: call the blocking MPI_Allreduce (fastest, what users have today) or poll MPI_Iallreduce
  // against the deadline (a dead peer becomes a TimeoutError instead of a hang). See comm.h.
  bool native_blocking = true;
};

struct AllreduceStats {
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;  // what actually ran (Auto resolved)
  uint64_t wire_bytes = 0;                                  // payload bytes this rank sent
  double codec_s = 0;                                       // time quantizing / converting / reducing on this rank
  double wait_s = 0;                                        // time blocked waiting for messages on this rank
};

void allreduce(Communicator& comm, std::span<float> data, const AllreduceOptions& options = {},
               AllreduceStats* stats = nullptr);

// allreduce() that also hands back the error this rank knows about, for error feedback: `error` (as many
// floats as data, not aliasing it) receives, for each element of a slice this rank sent in the reduce-scatter,
// its value minus what the slice's owner decoded, and for the slice it owns, the fp32 sum minus the result.
// Summed over the ranks, `error` is the exact fp32 sum minus the result (up to the rounding of the sums), so
// adding it to this rank's input of the next all-reduce into the same accumulator (a residual stream) cancels
// this one's error there. Elements whose error is not finite (NaN/Inf inputs) get 0. TwoStep and Quantized
// (and Auto) track it; Ring and Native leave `error` all zero; one rank: zero.
void allreduceWithError(Communicator& comm, std::span<float> data, std::span<float> error,
                        const AllreduceOptions& options = {}, AllreduceStats* stats = nullptr);

// Named configurations used by the CLI and benchmarks: ring-fp32, ring-bf16, twostep-fp32, twostep-bf16,
// mpi, auto, flash-int8, flash-int6, flash-int5, flash-int4, flash-int4-int8 (INT4 reduce-scatter, INT8
// all-gather), flash-int8-int4.
// Group size, symmetry and spikes (quant::Config::spikes) of both stages come from `base`. Throws
// InvalidArgument listing the valid names.
AllreduceOptions allreduceOptionsFromName(std::string_view name, const AllreduceOptions& base = {});
std::string allreduceAlgorithmName(AllreduceAlgorithm a);
// Bytes one rank sends for an all-reduce of `count` fp32 values with these options on `ranks` ranks (the
// quantized codecs' metadata and spike sections included).
uint64_t allreduceWireBytes(size_t count, int ranks, const AllreduceOptions& options);

}  // namespace flashring
