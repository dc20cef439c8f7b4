// Decode-shaped blocks (1-4 query rows against up to 2049 keys), as the engine's decode issues them: the
// kernel against the fp64 reference and against the portable (OpenBLAS) implementation, with causal offsets
// (rows that see nothing included), GQA/MHA/MQA, head dims that are not a multiple of 8, batches.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <tuple>

#include "attention/kernel_internal.h"
#include "flashring/attention.h"

namespace flashring {
namespace {

std::vector<float> randn(size_t n, uint32_t seed, float sd) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, sd);
  std::vector<float> x(n);
  for (auto& v : x) v = d(g);
  return x;
}

using Param = std::tuple<int, int, std::pair<int, int>, int, bool>;  // q_len, kv_len, (heads, kv), d, causal

class DecodeAttention : public ::testing::TestWithParam<Param> {};

TEST_P(DecodeAttention, MatchesTheReferenceAndTheTiledKernel) {
  const auto [sq, skv, hh, d, causal] = GetParam();
  const AttentionShape s{2, sq, skv, hh.first, hh.second, d};
  const size_t nq = static_cast<size_t>(2 * sq * hh.first * d), nk = static_cast<size_t>(2 * skv * hh.second * d);
  const auto q = randn(nq, 1, 1.f), k = randn(nk, 2, 1.f), v = randn(nk, 3, 1.f);
  BlockAttentionOptions o;
  o.causal = causal;
  // Keys start 3 positions before the queries' block end, so with causal masking some rows see few keys
  // (and with skv small the first rows may see none).
  o.q_offset = skv - 3;
  o.k_offset = 0;
  const size_t rows = static_cast<size_t>(2 * sq * hh.first);
  std::vector<float> out(nq, NAN), lse(rows, NAN), ref(nq), ref_lse(rows), tiled(nq), tiled_lse(rows);
  blockAttention(q.data(), k.data(), v.data(), s, o, out.data(), lse.data());
  blockAttentionReference(q.data(), k.data(), v.data(), s, o, ref.data(), ref_lse.data());
  attn::blockAttentionWith(attn::KernelImpl::Portable, q.data(), k.data(), v.data(), s, o, tiled.data(),
                           tiled_lse.data());
  double e = 0, el = 0, et = 0;
  for (size_t i = 0; i < nq; ++i) {
    e = std::max(e, double(std::abs(out[i] - ref[i])));
    et = std::max(et, double(std::abs(out[i] - tiled[i])));
  }
  for (size_t i = 0; i < rows; ++i) {
    if (std::isinf(ref_lse[i])) {
      EXPECT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "row " << i << " sees no key";
    } else {
      el = std::max(el, double(std::abs(lse[i] - ref_lse[i])));
    }
  }
  EXPECT_LE(e, 1e-5);
  EXPECT_LE(el, 1e-5);
  EXPECT_LE(et, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Shapes, DecodeAttention,
                         ::testing::Combine(::testing::Values(1, 2, 4), ::testing::Values(1, 5, 300, 2049),
                                            ::testing::Values(std::pair{9, 3}, std::pair{4, 4}, std::pair{8, 1}),
                                            ::testing::Values(64, 36), ::testing::Bool()));

}  // namespace
}  // namespace flashring
