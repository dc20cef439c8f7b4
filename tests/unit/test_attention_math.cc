// The per-row attention math shared with the CUDA kernels (src/attention/common/attention_math.h), run on the
// CPU as the device runs it (one call per row / per pair) and held to the fp64 reference and to the CPU merge.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "attention/common/attention_math.h"
#include "flashring/attention.h"

namespace flashring {
namespace {

namespace ad = attn::detail;

struct F32Load {
  float operator()(const float* p, int64_t i) const { return p[i]; }
};
struct F32Store {
  void operator()(float* p, int64_t i, float v) const { p[i] = v; }
};

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

void deviceLikeAttention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                         const AttentionShape& s, const BlockAttentionOptions& o, std::vector<float>& out,
                         std::vector<float>& lse) {
  const ad::RowGeometry g{
      s.q_len,    s.kv_len,   s.heads,
      s.kv_heads, s.head_dim, o.causal,
      o.q_offset, o.k_offset, o.scale == 0.0f ? static_cast<float>(1.0 / std::sqrt(double(s.head_dim))) : o.scale};
  std::vector<float> acc(static_cast<size_t>(s.head_dim));
  for (int b = 0; b < s.batch; ++b)
    for (int i = 0; i < s.q_len; ++i)
      for (int h = 0; h < s.heads; ++h)
        ad::attentionRow(q.data(), k.data(), v.data(), g, b, i, h, acc.data(), out.data(), lse.data(), F32Load{},
                         F32Store{});
}

struct Case {
  AttentionShape shape;
  bool causal;
  int64_t q_offset, k_offset;
};

TEST(SharedAttentionMath, RowKernelMatchesReference) {
  const std::vector<Case> cases = {
      {{1, 7, 9, 2, 2, 16}, false, 0, 0},   {{2, 16, 16, 4, 1, 64}, true, 0, 0},  // MQA, causal
      {{1, 8, 24, 8, 2, 32}, true, 40, 24},  // a block after a cached prefix (GQA 4:1)
      {{1, 8, 8, 2, 2, 128}, true, 0, 100},  // keys after every query: no visible key
      {{1, 5, 33, 3, 3, 256}, true, 10, 0},  // head_dim at the device's limit
  };
  for (const Case& c : cases) {
    const AttentionShape& s = c.shape;
    const size_t nq = size_t(s.batch) * s.q_len * s.heads * s.head_dim;
    const size_t nk = size_t(s.batch) * s.kv_len * s.kv_heads * s.head_dim;
    const auto q = randn(nq, 1, 1.5f), k = randn(nk, 2, 1.5f), v = randn(nk, 3);
    BlockAttentionOptions o;
    o.causal = c.causal;
    o.q_offset = c.q_offset;
    o.k_offset = c.k_offset;
    std::vector<float> out(nq, 7.0f), lse(size_t(s.batch) * s.q_len * s.heads, 7.0f);
    std::vector<float> ref_out(nq), ref_lse(lse.size());
    deviceLikeAttention(q, k, v, s, o, out, lse);
    blockAttentionReference(q.data(), k.data(), v.data(), s, o, ref_out.data(), ref_lse.data());
    double max_out = 0, max_lse = 0;
    for (size_t i = 0; i < nq; ++i) max_out = std::max(max_out, double(std::fabs(out[i] - ref_out[i])));
    for (size_t i = 0; i < lse.size(); ++i) {
      if (std::isinf(ref_lse[i])) {
        ASSERT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "row " << i << " must see no key";
        continue;
      }
      max_lse = std::max(max_lse, double(std::fabs(lse[i] - ref_lse[i])));
    }
    EXPECT_LT(max_out, 2e-5) << "head_dim " << s.head_dim << " causal " << c.causal;
    EXPECT_LT(max_lse, 2e-5) << "head_dim " << s.head_dim;
  }
}

TEST(SharedAttentionMath, MergePairMatchesCpuMerge) {
  const int rows = 37, heads = 3, d = 40;
  const size_t pairs = size_t(rows) * heads;
  auto oa = randn(pairs * d, 4), ob = randn(pairs * d, 5), la = randn(pairs, 6, 3.0f), lb = randn(pairs, 7, 3.0f);
  const float ninf = -std::numeric_limits<float>::infinity();
  la[0] = ninf;  // a side that saw no key
  lb[1] = ninf;
  la[2] = lb[2] = ninf;
  auto cpu_o = oa, cpu_l = la, dev_o = oa, dev_l = la;
  mergeAttention(cpu_o.data(), cpu_l.data(), ob.data(), lb.data(), rows, heads, d);
  for (size_t p = 0; p < pairs; ++p) ad::mergePair(dev_o.data() + p * d, &dev_l[p], ob.data() + p * d, lb[p], d);
  for (size_t p = 0; p < pairs; ++p) {
    if (std::isinf(cpu_l[p])) {
      EXPECT_TRUE(std::isinf(dev_l[p])) << p;
    } else {
      EXPECT_NEAR(dev_l[p], cpu_l[p], 4e-6f * std::max(1.0f, std::fabs(cpu_l[p]))) << p;
    }
  }
  for (size_t i = 0; i < cpu_o.size(); ++i) ASSERT_NEAR(dev_o[i], cpu_o[i], 1e-6f) << i;
  EXPECT_EQ(dev_o[0], ob[0]);  // -inf side a: b is taken bit for bit
  EXPECT_EQ(dev_l[1], la[1]);  // -inf side b: a is kept
}

}  // namespace
}  // namespace flashring
