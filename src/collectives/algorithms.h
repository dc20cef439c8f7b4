// The all-reduce algorithms behind allreduce(); each assumes comm.size() > 1.
#pragma once

#include <span>

#include "flashring/allreduce.h"

namespace flashring::detail {

void ringAllreduce(Communicator& comm, std::span<float> data, Payload payload, AllreduceStats& stats);
// error: nullptr, or data.size() floats that receive this rank's share of the error (see allreduceWithError).
void twoStepAllreduce(Communicator& comm, std::span<float> data, Payload payload, size_t chunk_elems,
                      AllreduceStats& stats, float* error = nullptr);
void quantizedAllreduce(Communicator& comm, std::span<float> data, const AllreduceOptions& options,
                        AllreduceStats& stats, float* error = nullptr);
// OneShot with options.payload, or the reduce_scatter codec when options.oneshot_quantized.
void oneShotAllreduce(Communicator& comm, std::span<float> data, const AllreduceOptions& options, AllreduceStats& stats,
                      float* error = nullptr);

// Element alignment of slice boundaries for the exact algorithms (a cache line of fp32).
inline constexpr size_t kSliceAlign = 16;

}  // namespace flashring::detail
