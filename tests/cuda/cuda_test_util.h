// Shared pieces of the CUDA tests: skipping without a usable device (with the runtime's reason), random inputs.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "flashring/cuda/runtime.h"

#define REQUIRE_CUDA_DEVICE()                                                              \
  do {                                                                                     \
    if (::flashring::cuda::deviceCount() == 0)                                             \
      GTEST_SKIP() << "no usable CUDA device: " << ::flashring::cuda::unavailableReason(); \
  } while (0)

namespace flashring::testing {

inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

}  // namespace flashring::testing
