// Block attention kernel and LSE merge against their fp64 references.
//
// Every implementation this CPU supports (portable BLAS, BLAS + AVX2 softmax, AVX2 micro-kernels, and the
// public entry point) is compared with blockAttentionReference: max |out - ref| <= 1e-5 and
// max |lse - ref| <= 1e-5 on inputs whose scaled scores reach ~10-15 in magnitude. Rows that see no key
// must be exactly out = 0, lse = -inf in both.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "attention/kernel_internal.h"
#include "attention/merge_internal.h"
#include "flashring/attention.h"
#include "flashring/error.h"

using flashring::AttentionShape;
using flashring::BlockAttentionOptions;
using flashring::InvalidArgument;
using flashring::attn::KernelImpl;
using flashring::attn::MergeImpl;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr double kTol = 1e-5;

struct Inputs {
  std::vector<float> q, k, v;
};

size_t qSize(const AttentionShape& s) { return size_t(s.batch) * s.q_len * s.heads * s.head_dim; }
size_t kvSize(const AttentionShape& s) { return size_t(s.batch) * s.kv_len * s.kv_heads * s.head_dim; }
size_t lseSize(const AttentionShape& s) { return size_t(s.batch) * s.q_len * s.heads; }

// q, k ~ N(0, sigma^2): scaled scores q.k / sqrt(d) ~ N(0, sigma^4), so sigma = 1.8 gives |s| up to ~13.
Inputs makeInputs(const AttentionShape& s, uint32_t seed, float sigma = 1.8f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> qk(0.f, sigma);
  std::uniform_real_distribution<float> uv(-1.f, 1.f);
  Inputs in;
  in.q.resize(qSize(s));
  in.k.resize(kvSize(s));
  in.v.resize(kvSize(s));
  for (auto& x : in.q) x = qk(rng);
  for (auto& x : in.k) x = qk(rng);
  for (auto& x : in.v) x = uv(rng);
  return in;
}

struct Result {
  std::vector<float> out, lse;
};

Result reference(const Inputs& in, const AttentionShape& s, const BlockAttentionOptions& o) {
  Result r{std::vector<float>(qSize(s)), std::vector<float>(lseSize(s))};
  flashring::blockAttentionReference(in.q.data(), in.k.data(), in.v.data(), s, o, r.out.data(), r.lse.data());
  return r;
}

// impl = Auto goes through the public blockAttention.
Result kernel(KernelImpl impl, const Inputs& in, const AttentionShape& s, const BlockAttentionOptions& o,
              const flashring::attn::KernelTuning& tuning = {}) {
  // Poison the outputs: the kernel must overwrite every element.
  Result r{std::vector<float>(qSize(s), std::nanf("")), std::vector<float>(lseSize(s), std::nanf(""))};
  if (impl == KernelImpl::Auto && tuning.block_rows == 0 && tuning.key_tile == 0) {
    flashring::blockAttention(in.q.data(), in.k.data(), in.v.data(), s, o, r.out.data(), r.lse.data());
  } else {
    flashring::attn::blockAttentionWith(impl, in.q.data(), in.k.data(), in.v.data(), s, o, r.out.data(), r.lse.data(),
                                        tuning);
  }
  return r;
}

std::vector<KernelImpl> impls() {
  std::vector<KernelImpl> v{KernelImpl::Auto};
  for (KernelImpl i : {KernelImpl::Portable, KernelImpl::Avx2Blas, KernelImpl::Avx2Micro}) {
    if (flashring::attn::kernelImplSupported(i)) v.push_back(i);
  }
  return v;
}

// -inf rows must match exactly (out exactly 0); finite rows within tol.
void expectClose(const Result& got, const Result& want, int head_dim, double tol, const std::string& what) {
  ASSERT_EQ(got.lse.size(), want.lse.size());
  double max_out = 0, max_lse = 0;
  size_t bad_inf = 0, nan = 0;
  for (size_t r = 0; r < want.lse.size(); ++r) {
    if (std::isnan(got.lse[r])) ++nan;
    if (want.lse[r] == kNegInf || got.lse[r] == kNegInf) {
      if (got.lse[r] != want.lse[r]) ++bad_inf;
      for (int c = 0; c < head_dim; ++c) {
        if (got.out[r * head_dim + c] != 0.f) ++bad_inf;
      }
      continue;
    }
    max_lse = std::max(max_lse, std::fabs(double(got.lse[r]) - want.lse[r]));
    for (int c = 0; c < head_dim; ++c) {
      const double e = std::fabs(double(got.out[r * head_dim + c]) - want.out[r * head_dim + c]);
      if (std::isnan(e)) ++nan;
      max_out = std::max(max_out, e);
    }
  }
  EXPECT_EQ(nan, 0u) << what;
  EXPECT_EQ(bad_inf, 0u) << what << ": fully masked rows must be out = 0, lse = -inf";
  EXPECT_LE(max_out, tol) << what << ": max |out - ref|";
  EXPECT_LE(max_lse, tol) << what << ": max |lse - ref|";
}

std::string describe(const AttentionShape& s, const BlockAttentionOptions& o) {
  return "b" + std::to_string(s.batch) + " q" + std::to_string(s.q_len) + " kv" + std::to_string(s.kv_len) + " h" +
         std::to_string(s.heads) + "/" + std::to_string(s.kv_heads) + " d" + std::to_string(s.head_dim) +
         (o.causal ? " causal q_off " + std::to_string(o.q_offset) + " k_off " + std::to_string(o.k_offset) : "");
}

void checkAllImpls(const AttentionShape& s, const BlockAttentionOptions& o, uint32_t seed) {
  const Inputs in = makeInputs(s, seed);
  const Result want = reference(in, s, o);
  for (KernelImpl impl : impls()) {
    expectClose(kernel(impl, in, s, o), want, s.head_dim, kTol,
                std::string(flashring::attn::kernelImplName(impl)) + " " + describe(s, o));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Lengths: every (q_len, kv_len) in {1, 7, 64, 100, 257}^2, GQA 4/2, batch 2, without and with a causal
// diagonal (block aligned at the same global position) and with the queries placed at the end of the keys.

enum class Mask { None, CausalAligned, CausalSuffix };

class AttentionLengths : public ::testing::TestWithParam<std::tuple<int, int, Mask>> {};

TEST_P(AttentionLengths, MatchesReference) {
  const auto [ql, kl, mask] = GetParam();
  AttentionShape s{2, ql, kl, 4, 2, 64};
  BlockAttentionOptions o;
  o.causal = mask != Mask::None;
  o.q_offset = mask == Mask::CausalSuffix ? kl - ql : 0;  // may be negative: rows before key 0 see nothing
  checkAllImpls(s, o, uint32_t(ql * 1000 + kl));
}

std::string lengthsName(const ::testing::TestParamInfo<AttentionLengths::ParamType>& p) {
  const auto [ql, kl, mask] = p.param;
  const std::string m = mask == Mask::None ? "full" : (mask == Mask::CausalAligned ? "causal" : "causal_suffix");
  return "q" + std::to_string(ql) + "_kv" + std::to_string(kl) + "_" + m;
}

INSTANTIATE_TEST_SUITE_P(Attention, AttentionLengths,
                         ::testing::Combine(::testing::Values(1, 7, 64, 100, 257),
                                            ::testing::Values(1, 7, 64, 100, 257),
                                            ::testing::Values(Mask::None, Mask::CausalAligned, Mask::CausalSuffix)),
                         lengthsName);

// ---------------------------------------------------------------------------------------------------------
// Heads and head dims: MHA (H/Hkv = 1), GQA (4), MQA (H/Hkv = H), head_dim 64, 128 and the odd 80, 96, 72, 20.

class AttentionHeads : public ::testing::TestWithParam<std::tuple<std::pair<int, int>, int, bool, int>> {};

TEST_P(AttentionHeads, MatchesReference) {
  const auto [hh, d, causal, batch] = GetParam();
  AttentionShape s{batch, 100, 257, hh.first, hh.second, d};
  BlockAttentionOptions o;
  o.causal = causal;
  o.q_offset = 157;  // the diagonal of a 100-query block at the end of 257 keys
  checkAllImpls(s, o, uint32_t(hh.first * 7 + hh.second * 131 + d));
}

std::string headsName(const ::testing::TestParamInfo<AttentionHeads::ParamType>& p) {
  const auto [hh, d, causal, batch] = p.param;
  return "h" + std::to_string(hh.first) + "_kv" + std::to_string(hh.second) + "_d" + std::to_string(d) +
         (causal ? "_causal" : "_full") + "_b" + std::to_string(batch);
}

INSTANTIATE_TEST_SUITE_P(Attention, AttentionHeads,
                         ::testing::Combine(::testing::Values(std::pair{4, 4}, std::pair{8, 2}, std::pair{8, 1}),
                                            ::testing::Values(64, 128, 80, 96, 72, 20), ::testing::Bool(),
                                            ::testing::Values(1, 2)),
                         headsName);

// ---------------------------------------------------------------------------------------------------------
// Causal offsets.

TEST(AttentionCausal, OffsetsBeforeAfterAndEqual) {
  for (auto [qo, ko] :
       {std::pair<int64_t, int64_t>{1000, 900}, {1000, 1000}, {1000, 1030}, {0, 40}, {5'000'000'000, 4'999'999'950}}) {
    AttentionShape s{1, 64, 100, 8, 2, 64};
    BlockAttentionOptions o;
    o.causal = true;
    o.q_offset = qo;
    o.k_offset = ko;
    checkAllImpls(s, o, 7);
  }
}

TEST(AttentionCausal, FullyMaskedBlockIsZeroAndMinusInf) {
  AttentionShape s{2, 37, 50, 4, 1, 96};
  BlockAttentionOptions o;
  o.causal = true;
  o.q_offset = 100;
  o.k_offset = 137;  // first key after the last query
  const Inputs in = makeInputs(s, 3);
  for (KernelImpl impl : impls()) {
    const Result r = kernel(impl, in, s, o);
    for (float x : r.lse) ASSERT_EQ(x, kNegInf) << flashring::attn::kernelImplName(impl);
    for (float x : r.out) ASSERT_EQ(x, 0.f) << flashring::attn::kernelImplName(impl);
  }
  const Result ref = reference(in, s, o);
  for (float x : ref.lse) ASSERT_EQ(x, kNegInf);
  for (float x : ref.out) ASSERT_EQ(x, 0.f);
}

TEST(AttentionCausal, PartiallyMaskedBlockHasMaskedAndVisibleRows) {
  AttentionShape s{1, 40, 33, 4, 4, 64};
  BlockAttentionOptions o;
  o.causal = true;
  o.q_offset = 0;
  o.k_offset = 10;  // queries 0..9 see nothing, query 10 sees key 0, query 39 sees 30 keys
  const Inputs in = makeInputs(s, 4);
  const Result ref = reference(in, s, o);
  for (int i = 0; i < s.q_len; ++i) {
    for (int h = 0; h < s.heads; ++h) {
      const float l = ref.lse[size_t(i) * s.heads + h];
      if (i < 10) {
        EXPECT_EQ(l, kNegInf) << i;
      } else {
        EXPECT_TRUE(std::isfinite(l)) << i;
      }
    }
  }
  // Query 10 sees exactly key 0: out = v[0], lse = score.
  for (int h = 0; h < s.heads; ++h) {
    for (int c = 0; c < s.head_dim; ++c) {
      EXPECT_FLOAT_EQ(ref.out[(size_t(10) * s.heads + h) * s.head_dim + c], in.v[size_t(h) * s.head_dim + c]);
    }
  }
  for (KernelImpl impl : impls()) {
    expectClose(kernel(impl, in, s, o), ref, s.head_dim, kTol, flashring::attn::kernelImplName(impl));
  }
}

TEST(AttentionCausal, ExplicitScale) {
  AttentionShape s{1, 65, 130, 4, 2, 128};
  BlockAttentionOptions o;
  o.causal = true;
  o.q_offset = 65;
  o.scale = 0.05f;
  checkAllImpls(s, o, 11);
}

TEST(AttentionCausal, LargeScoresStayWithinFp32ScoreRounding) {
  // scale 0.25 gives scaled scores up to ~40, beyond the "typical" range: the fp32 rounding of a 128-term
  // dot product of that size is ~1e-5 by itself (one ulp of 40 is 3.8e-6), whatever the softmax does, so
  // the bound here is 4e-5 (1e-5 per 10 units of score). Every implementation, including BLAS, lands at
  // the same ~1.3e-5 on lse.
  AttentionShape s{1, 65, 130, 4, 2, 128};
  BlockAttentionOptions o;
  o.causal = true;
  o.q_offset = 65;
  o.scale = 0.25f;
  const Inputs in = makeInputs(s, 11);
  const Result want = reference(in, s, o);
  for (KernelImpl impl : impls()) {
    expectClose(kernel(impl, in, s, o), want, s.head_dim, 4e-5, flashring::attn::kernelImplName(impl));
  }
}

// Tilings that exercise strip tails (1..5 rows), one-query blocks, tiles of one panel and tiles larger
// than the sequence.
TEST(AttentionTiling, AnyTilingMatchesReference) {
  const flashring::attn::KernelTuning tunings[] = {{1, 16}, {5, 16}, {7, 32}, {13, 48}, {64, 64}, {200, 512}};
  for (auto [h, hkv] : {std::pair{4, 4}, std::pair{8, 2}, std::pair{6, 1}}) {
    AttentionShape s{1, 51, 83, h, hkv, 40};
    for (bool causal : {false, true}) {
      BlockAttentionOptions o;
      o.causal = causal;
      o.q_offset = 40;
      const Inputs in = makeInputs(s, 5);
      const Result ref = reference(in, s, o);
      for (KernelImpl impl : impls()) {
        if (impl == KernelImpl::Auto) continue;
        for (const auto& t : tunings) {
          expectClose(kernel(impl, in, s, o, t), ref, s.head_dim, kTol,
                      std::string(flashring::attn::kernelImplName(impl)) + " rows " + std::to_string(t.block_rows) +
                          " tile " + std::to_string(t.key_tile) + " " + describe(s, o));
        }
      }
    }
  }
}

TEST(AttentionKernel, DeterministicAndAutoIsTheBestImplementation) {
  // Same inputs, same bits: across calls (scratch reused) and between blockAttention and the implementation
  // it picks.
  AttentionShape s{2, 77, 150, 8, 2, 128};
  BlockAttentionOptions o;
  o.causal = true;
  o.q_offset = 73;
  const Inputs in = makeInputs(s, 9);
  const Result first = kernel(KernelImpl::Auto, in, s, o);
  const Result again = kernel(KernelImpl::Auto, in, s, o);
  const Result best = kernel(flashring::attn::bestKernelImpl(), in, s, o);
  EXPECT_EQ(first.out, again.out);
  EXPECT_EQ(first.lse, again.lse);
  EXPECT_EQ(first.out, best.out);
  EXPECT_EQ(first.lse, best.lse);
  EXPECT_EQ(flashring::attn::bestKernelImpl(),
            flashring::attn::kernelImplSupported(KernelImpl::Avx2Micro) ? KernelImpl::Avx2Micro : KernelImpl::Portable);
}

TEST(AttentionKernel, StaleScratchIsNeverRead) {
  // A call on NaN inputs leaves NaN in every per-thread scratch buffer (scores, accumulators, packed K/V
  // with their padding); the next call, on a smaller shape with odd sizes, must not see any of it.
  for (KernelImpl impl : impls()) {
    AttentionShape big{1, 130, 300, 8, 2, 72};
    Inputs poison = makeInputs(big, 1);
    for (auto* t : {&poison.q, &poison.k, &poison.v}) std::fill(t->begin(), t->end(), std::nanf(""));
    kernel(impl, poison, big, {});
    AttentionShape s{1, 51, 77, 4, 2, 40};
    BlockAttentionOptions o;
    o.causal = true;
    o.q_offset = 20;
    const Inputs in = makeInputs(s, 2);
    expectClose(kernel(impl, in, s, o), reference(in, s, o), s.head_dim, kTol,
                std::string("after NaN call, ") + flashring::attn::kernelImplName(impl));
  }
}

TEST(AttentionKernel, ProgressHookIsCalledOnABigShape) {
  AttentionShape s{1, 512, 512, 8, 8, 128};  // ~1 GFLOP: tens of milliseconds
  const Inputs in = makeInputs(s, 12);
  std::vector<float> out(qSize(s)), lse(lseSize(s));
  for (KernelImpl impl : impls()) {
    int calls = 0;
    BlockAttentionOptions o;
    o.progress = [&calls] { ++calls; };
    flashring::attn::blockAttentionWith(impl, in.q.data(), in.k.data(), in.v.data(), s, o, out.data(), lse.data());
    EXPECT_GT(calls, 2) << flashring::attn::kernelImplName(impl);
  }
}

TEST(AttentionKernel, InvalidArgumentsThrowNamingTheField) {
  const AttentionShape good{1, 4, 4, 4, 2, 8};
  std::vector<float> buf(1024), lse(64);
  BlockAttentionOptions o;
  auto expectThrow = [&](AttentionShape s, const std::string& field) {
    try {
      flashring::blockAttention(buf.data(), buf.data(), buf.data(), s, o, buf.data(), lse.data());
      ADD_FAILURE() << "no throw for " << field;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
    EXPECT_THROW(flashring::blockAttentionReference(buf.data(), buf.data(), buf.data(), s, o, buf.data(), lse.data()),
                 InvalidArgument);
    EXPECT_THROW(flashring::validate(s), InvalidArgument);
  };
  auto with = [&](auto f) {
    AttentionShape s = good;
    f(s);
    return s;
  };
  expectThrow(with([](AttentionShape& s) { s.batch = 0; }), "batch");
  expectThrow(with([](AttentionShape& s) { s.q_len = 0; }), "q_len");
  expectThrow(with([](AttentionShape& s) { s.kv_len = -3; }), "kv_len");
  expectThrow(with([](AttentionShape& s) { s.heads = 0; }), "heads");
  expectThrow(with([](AttentionShape& s) { s.kv_heads = 0; }), "kv_heads");
  expectThrow(with([](AttentionShape& s) { s.head_dim = 0; }), "head_dim");
  expectThrow(with([](AttentionShape& s) { s.kv_heads = 3; }), "multiple of kv_heads");
  expectThrow(with([](AttentionShape& s) {
                s.heads = 1 << 20;
                s.kv_heads = 1;
                s.head_dim = 1 << 12;
              }),
              "heads * head_dim");
  EXPECT_NO_THROW(flashring::validate(good));

  const float* p = buf.data();
  float* w = buf.data();
  auto expectNull = [&](const float* q, const float* k, const float* v, float* out, float* l, const std::string& name) {
    try {
      flashring::blockAttention(q, k, v, good, o, out, l);
      ADD_FAILURE() << "no throw for null " << name;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(name + " is null"), std::string::npos) << e.what();
    }
  };
  expectNull(nullptr, p, p, w, lse.data(), "q");
  expectNull(p, nullptr, p, w, lse.data(), "k");
  expectNull(p, p, nullptr, w, lse.data(), "v");
  expectNull(p, p, p, nullptr, lse.data(), "out");
  expectNull(p, p, p, w, nullptr, "lse");
  o.scale = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(flashring::blockAttention(p, p, p, good, o, w, lse.data()), InvalidArgument);
}

// ---------------------------------------------------------------------------------------------------------
// Merge.

// Attention over the keys split into contiguous blocks (each computed by the kernel with its global
// k_offset), merged left to right (or right to left), equals the kernel on the whole range.
void checkSplitMerge(const AttentionShape& whole, const BlockAttentionOptions& o, const std::vector<int>& cuts,
                     bool reverse) {
  const Inputs in = makeInputs(whole, 21);
  const Result full = kernel(KernelImpl::Auto, in, whole, o);
  const Result ref = reference(in, whole, o);
  std::vector<int> bounds{0};
  bounds.insert(bounds.end(), cuts.begin(), cuts.end());
  bounds.push_back(whole.kv_len);
  std::vector<Result> parts;
  const size_t row_floats = size_t(whole.kv_heads) * whole.head_dim;
  for (size_t p = 0; p + 1 < bounds.size(); ++p) {
    AttentionShape s = whole;
    s.kv_len = bounds[p + 1] - bounds[p];
    Inputs part;
    part.q = in.q;
    for (int b = 0; b < whole.batch; ++b) {
      const size_t from = (size_t(b) * whole.kv_len + bounds[p]) * row_floats;
      part.k.insert(part.k.end(), in.k.begin() + from, in.k.begin() + from + size_t(s.kv_len) * row_floats);
      part.v.insert(part.v.end(), in.v.begin() + from, in.v.begin() + from + size_t(s.kv_len) * row_floats);
    }
    BlockAttentionOptions po = o;
    po.k_offset = o.k_offset + bounds[p];
    parts.push_back(kernel(KernelImpl::Auto, part, s, po));
  }
  if (reverse) std::reverse(parts.begin(), parts.end());
  Result acc = parts[0];
  const int64_t rows = int64_t(whole.batch) * whole.q_len;
  for (size_t p = 1; p < parts.size(); ++p) {
    flashring::mergeAttention(acc.out.data(), acc.lse.data(), parts[p].out.data(), parts[p].lse.data(), rows,
                              whole.heads, whole.head_dim);
  }
  const std::string what = std::to_string(cuts.size() + 1) + " blocks " + describe(whole, o);
  expectClose(acc, full, whole.head_dim, kTol, "merged vs whole kernel, " + what);
  expectClose(acc, ref, whole.head_dim, kTol, "merged vs reference, " + what);
}

TEST(AttentionMerge, SplitKeysMergeEqualsWholeRange) {
  AttentionShape s{2, 64, 200, 8, 2, 128};
  BlockAttentionOptions o;
  checkSplitMerge(s, o, {77}, false);
  checkSplitMerge(s, o, {77}, true);
  checkSplitMerge(s, o, {1, 150}, false);
  checkSplitMerge(s, o, {64, 128}, true);
}

TEST(AttentionMerge, SplitKeysMergeEqualsWholeRangeCausal) {
  // Queries at global 100..163, keys 0..199: later key blocks are partly or fully masked for early rows,
  // so merges see -inf on the right side, and with cuts near the diagonal on both sides.
  AttentionShape s{1, 64, 200, 4, 4, 64};
  BlockAttentionOptions o;
  o.causal = true;
  o.q_offset = 100;
  checkSplitMerge(s, o, {120}, false);
  checkSplitMerge(s, o, {120}, true);
  checkSplitMerge(s, o, {90, 140}, false);
  checkSplitMerge(s, o, {90, 140}, true);
  o.k_offset = 60;  // the first rows see nothing at all in any block
  checkSplitMerge(s, o, {50, 100}, false);
}

struct MergeCase {
  std::vector<float> out, lse, out_b, lse_b;
};

MergeCase randomMergeCase(int64_t rows, int heads, int d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uo(-1.f, 1.f), ul(-5.f, 15.f);
  MergeCase c;
  const size_t pairs = size_t(rows) * heads;
  c.out.resize(pairs * d);
  c.out_b.resize(pairs * d);
  c.lse.resize(pairs);
  c.lse_b.resize(pairs);
  for (auto& x : c.out) x = uo(rng);
  for (auto& x : c.out_b) x = uo(rng);
  for (size_t p = 0; p < pairs; ++p) {
    c.lse[p] = ul(rng);
    switch (p % 6) {
      case 0:
        c.lse_b[p] = c.lse[p];  // equal
        break;
      case 1:
        c.lse_b[p] = c.lse[p] - 120.f;  // exp underflows
        break;
      case 2:
        c.lse_b[p] = c.lse[p] + 30.f;
        break;
      default:
        c.lse_b[p] = ul(rng);
        break;
    }
  }
  return c;
}

TEST(AttentionMerge, FastMatchesReference) {
  for (int d : {1, 7, 8, 20, 64, 128}) {
    for (int heads : {1, 3, 32}) {
      const int64_t rows = 37;
      const MergeCase c = randomMergeCase(rows, heads, d, uint32_t(d * 100 + heads));
      MergeCase ref = c;
      flashring::mergeAttentionReference(ref.out.data(), ref.lse.data(), ref.out_b.data(), ref.lse_b.data(), rows,
                                         heads, d);
      for (MergeImpl impl : {MergeImpl::Auto, MergeImpl::Portable, MergeImpl::Avx2}) {
        if (!flashring::attn::mergeImplSupported(impl)) continue;
        MergeCase got = c;
        flashring::attn::mergeAttentionWith(impl, got.out.data(), got.lse.data(), got.out_b.data(), got.lse_b.data(),
                                            rows, heads, d);
        double max_out = 0, max_lse_rel = 0;
        for (size_t i = 0; i < got.out.size(); ++i)
          max_out = std::max(max_out, double(std::fabs(got.out[i] - ref.out[i])));
        for (size_t i = 0; i < got.lse.size(); ++i) {
          max_lse_rel = std::max(
              max_lse_rel, std::fabs(double(got.lse[i]) - ref.lse[i]) / std::max(1.0, std::fabs(double(ref.lse[i]))));
        }
        EXPECT_LE(max_out, 1e-6) << flashring::attn::mergeImplName(impl) << " d " << d << " heads " << heads;
        // lse in [-5, 45]: 1e-6 relative is about one float ulp.
        EXPECT_LE(max_lse_rel, 1e-6) << flashring::attn::mergeImplName(impl) << " d " << d << " heads " << heads;
      }
    }
  }
}

TEST(AttentionMerge, MinusInfRowsOnEitherSide) {
  const int heads = 3, d = 12;
  const int64_t rows = 4;
  const float nan = std::nanf("");
  for (MergeImpl impl : {MergeImpl::Portable, MergeImpl::Avx2, MergeImpl::Auto}) {
    if (!flashring::attn::mergeImplSupported(impl)) continue;
    for (bool use_reference : {false, true}) {
      MergeCase c = randomMergeCase(rows, heads, d, 77);
      // pair 0: a = -inf (its out is garbage, must not be read); pair 1: b = -inf (garbage out_b);
      // pair 2: both -inf; the rest: both finite.
      c.lse[0] = kNegInf;
      for (int x = 0; x < d; ++x) c.out[x] = nan;
      c.lse_b[1] = kNegInf;
      for (int x = 0; x < d; ++x) c.out_b[d + x] = nan;
      c.lse[2] = kNegInf;
      c.lse_b[2] = kNegInf;
      for (int x = 0; x < d; ++x) c.out[2 * d + x] = 0.f;
      MergeCase got = c;
      if (use_reference) {
        flashring::mergeAttentionReference(got.out.data(), got.lse.data(), got.out_b.data(), got.lse_b.data(), rows,
                                           heads, d);
      } else {
        flashring::attn::mergeAttentionWith(impl, got.out.data(), got.lse.data(), got.out_b.data(), got.lse_b.data(),
                                            rows, heads, d);
      }
      const std::string what = use_reference ? "reference" : flashring::attn::mergeImplName(impl);
      EXPECT_EQ(got.lse[0], c.lse_b[0]) << what;
      EXPECT_EQ(got.lse[1], c.lse[1]) << what;
      EXPECT_EQ(got.lse[2], kNegInf) << what;
      for (int x = 0; x < d; ++x) {
        EXPECT_EQ(got.out[x], c.out_b[x]) << what << ": a = -inf takes b bit for bit";
        EXPECT_EQ(got.out[d + x], c.out[d + x]) << what << ": b = -inf keeps a bit for bit";
        EXPECT_EQ(got.out[2 * d + x], 0.f) << what;
      }
      for (size_t i = 0; i < got.out.size(); ++i) ASSERT_FALSE(std::isnan(got.out[i])) << what << " at " << i;
      for (size_t i = 0; i < got.lse.size(); ++i) ASSERT_FALSE(std::isnan(got.lse[i])) << what << " at " << i;
    }
  }
}

TEST(AttentionMerge, EqualLseAveragesAndAddsLn2) {
  std::vector<float> out{1.f, -2.f}, lse{3.f};
  const std::vector<float> out_b{3.f, 2.f}, lse_b{3.f};
  flashring::mergeAttention(out.data(), lse.data(), out_b.data(), lse_b.data(), 1, 1, 2);
  EXPECT_FLOAT_EQ(out[0], 2.f);
  EXPECT_FLOAT_EQ(out[1], 0.f);
  EXPECT_NEAR(lse[0], 3.0 + std::log(2.0), 1e-6);
}

TEST(AttentionMerge, InvalidArgumentsThrow) {
  std::vector<float> o(8), l(2);
  auto expectThrow = [](auto f, const std::string& field) {
    try {
      f();
      ADD_FAILURE() << "no throw for " << field;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  expectThrow([&] { flashring::mergeAttention(o.data(), l.data(), o.data(), l.data(), -1, 1, 4); }, "rows");
  expectThrow([&] { flashring::mergeAttention(o.data(), l.data(), o.data(), l.data(), 1, 0, 4); }, "heads");
  expectThrow([&] { flashring::mergeAttention(o.data(), l.data(), o.data(), l.data(), 1, 1, 0); }, "head_dim");
  expectThrow([&] { flashring::mergeAttention(nullptr, l.data(), o.data(), l.data(), 1, 1, 4); }, "out is null");
  expectThrow([&] { flashring::mergeAttention(o.data(), l.data(), o.data(), nullptr, 1, 1, 4); }, "lse_b is null");
  expectThrow([&] { flashring::mergeAttentionReference(o.data(), nullptr, o.data(), l.data(), 1, 1, 4); },
              "lse is null");
  EXPECT_NO_THROW(flashring::mergeAttention(nullptr, nullptr, nullptr, nullptr, 0, 1, 4));  // nothing to do
}

}  // namespace
