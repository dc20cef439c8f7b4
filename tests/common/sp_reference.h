// Test helpers for sequence-parallel attention: random tensors and the shard of a global tensor that a
// rank holds under a layout.
#pragma once

#include <algorithm>
#include <random>
#include <vector>

#include "flashring/sp_attention.h"

namespace flashring::testref {

inline std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> x(n);
  for (auto& v : x) v = d(g);
  return x;
}

// Rows of the global [B, S, width] tensor that rank r holds, packed [B, local, width].
inline std::vector<float> shard(const std::vector<float>& full, const SpShape& s, size_t width, int N, int r,
                                SeqLayout lay) {
  const auto segs = localSegments(s.seq_len, N, r, lay);
  const size_t L = static_cast<size_t>(localLength(s.seq_len, N, r, lay)), S = static_cast<size_t>(s.seq_len);
  std::vector<float> out(static_cast<size_t>(s.batch) * L * width);
  for (size_t b = 0; b < static_cast<size_t>(s.batch); ++b) {
    size_t row = 0;
    for (const auto& seg : segs)
      for (int64_t i = 0; i < seg.length; ++i, ++row)
        std::copy_n(full.data() + (b * S + static_cast<size_t>(seg.global_offset + i)) * width, width,
                    out.data() + (b * L + row) * width);
  }
  return out;
}

}  // namespace flashring::testref
