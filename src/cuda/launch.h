// Grid sizes of the element-wise and per-group kernels: one thread per item up to a cap, grid-stride loops over
// the rest (so any count fits the grid limits).
#pragma once

#include <cstddef>

namespace flashring::cuda::detail {

inline unsigned blocksFor(size_t work, int threads) {
  const size_t b = (work + static_cast<size_t>(threads) - 1) / static_cast<size_t>(threads);
  constexpr size_t kMaxBlocks = size_t{65535} * 16;
  return static_cast<unsigned>(b < kMaxBlocks ? b : kMaxBlocks);
}

}  // namespace flashring::cuda::detail
