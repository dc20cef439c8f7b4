// All-gather of byte buffers of known, possibly different sizes (the small exchanges of the engine:
// vocabulary-parallel statistics, logits when a caller asks for them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "flashring/comm.h"

namespace flashring {

// Every rank sends its `sizes[rank]` bytes at `mine` to every other rank in one round; returns all of them
// in rank order (each at least 1 byte long, so .data() is valid). `sizes` must be the same on every rank
// (a mismatch fails in the transport with both sizes named, on every rank). `step` keeps consecutive
// calls' messages apart.
std::vector<std::vector<uint8_t>> allgatherv(Communicator& comm, const void* mine, const std::vector<size_t>& sizes,
                                             int step);

}  // namespace flashring
