// Sequence-parallel attention on thread ranks: every scheme equals single-rank attention over the whole
// sequence, for every layout, mask, head grouping and rank count; bad shapes fail on every rank.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/sp_reference.h"
#include "flashring/costmodel.h"
#include "flashring/sp_attention.h"
#include "flashring/thread_comm.h"

using namespace flashring;
using testref::randn;
using testref::shard;
using namespace std::chrono_literals;

namespace {

struct Case {
  SpShape shape;
  bool causal;
  SeqLayout layout;
};

// Runs the scheme on N thread ranks and returns the max abs difference to single-rank attention.
double maxError(const std::string& scheme, int N, const Case& c) {
  const SpShape& s = c.shape;
  const size_t S = static_cast<size_t>(s.seq_len), B = static_cast<size_t>(s.batch);
  const size_t qw = static_cast<size_t>(s.heads * s.head_dim), kw = static_cast<size_t>(s.kv_heads * s.head_dim);
  const auto q = randn(B * S * qw, 1), k = randn(B * S * kw, 2), v = randn(B * S * kw, 3);
  std::vector<float> ref(B * S * qw), lse(B * S * static_cast<size_t>(s.heads));
  BlockAttentionOptions bo;
  bo.causal = c.causal;
  blockAttention(q.data(), k.data(), v.data(),
                 {s.batch, static_cast<int>(S), static_cast<int>(S), s.heads, s.kv_heads, s.head_dim}, bo, ref.data(),
                 lse.data());
  std::vector<double> err(static_cast<size_t>(N), 0);
  runThreadRanks(
      N,
      [&](Communicator& comm) {
        const int r = comm.rank();
        auto ql = shard(q, s, qw, N, r, c.layout), kl = shard(k, s, kw, N, r, c.layout),
             vl = shard(v, s, kw, N, r, c.layout);
        std::vector<float> out(ql.size(), NAN);
        SpAttentionOptions o;
        o.scheme = spSchemeFromName(scheme);
        o.layout = c.layout;
        o.causal = c.causal;
        SpAttentionStats st;
        spAttention(comm, ql.data(), kl.data(), vl.data(), s, o, out.data(), &st);
        const auto expect = shard(ref, s, qw, N, r, c.layout);
        double m = 0;
        for (size_t i = 0; i < out.size(); ++i)
          m = std::max(m, std::isfinite(out[i]) ? std::fabs(out[i] - expect[i]) : 1e9);
        err[static_cast<size_t>(r)] = m;
        if (o.scheme != SpScheme::Auto) {
          EXPECT_EQ(st.scheme, o.scheme);
        }
      },
      60s);
  return *std::max_element(err.begin(), err.end());
}

}  // namespace

using Params = std::tuple<std::string, int, bool, SeqLayout, std::tuple<int, int>>;
class SpAttentionSweep : public ::testing::TestWithParam<Params> {};

TEST_P(SpAttentionSweep, EqualsSingleRankAttention) {
  const auto& [scheme, N, causal, layout, heads] = GetParam();
  for (int64_t S : {int64_t{2} * N + 1, int64_t{13} * N + 5}) {  // lengths that do not divide evenly
    Case c{{1, S, std::get<0>(heads), std::get<1>(heads), 32}, causal, layout};
    EXPECT_LE(maxError(scheme, N, c), 1e-5) << scheme << " N=" << N << " S=" << S;
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, SpAttentionSweep,
    ::testing::Combine(::testing::Values("tokenring", "ring-kv", "ulysses", "allgather-kv", "auto"),
                       ::testing::Values(1, 2, 3, 4, 8), ::testing::Bool(),
                       ::testing::Values(SeqLayout::Zigzag, SeqLayout::Contiguous),
                       ::testing::Values(std::make_tuple(4, 4), std::make_tuple(8, 2), std::make_tuple(4, 1))),
    [](const ::testing::TestParamInfo<Params>& i) {
      std::string s = std::get<0>(i.param);
      for (auto& ch : s) ch = ch == '-' ? '_' : ch;
      return fmt::format("{}_r{}_{}_{}_h{}kv{}", s, std::get<1>(i.param), std::get<2>(i.param) ? "causal" : "full",
                         std::get<3>(i.param) == SeqLayout::Zigzag ? "zigzag" : "contig",
                         std::get<0>(std::get<4>(i.param)), std::get<1>(std::get<4>(i.param)));
    });

TEST(SpAttention, BatchAndRealHeadDims) {
  for (const char* scheme : {"tokenring", "ring-kv", "ulysses", "allgather-kv"}) {
    for (int d : {64, 128}) {
      Case c{{2, 150, 6, 3, d}, true, SeqLayout::Zigzag};
      EXPECT_LE(maxError(scheme, 4, c), 1e-5) << scheme << " d=" << d;
      c.causal = false;
      c.layout = SeqLayout::Contiguous;
      EXPECT_LE(maxError(scheme, 3, c), 1e-5) << scheme << " d=" << d;
    }
  }
}

TEST(SpAttention, TokenRingSendsOnlyRowsWithWorkUnderCausalZigzag) {
  // MHA, N=4, S=4096 tokens: Q shard = 1024 rows. Rank 0 receives full Q on every step; under zigzag,
  // rank 3 (the highest) forwards half-size Q on its wrapped steps, so it sends less than 3 full shards.
  const SpShape s{1, 512, 4, 4, 32};
  std::vector<SpAttentionStats> st(4);
  runThreadRanks(4, [&](Communicator& comm) {
    const size_t L = static_cast<size_t>(localLength(s.seq_len, 4, comm.rank(), SeqLayout::Zigzag));
    std::vector<float> q(L * 128, 0.1f), out(L * 128);
    SpAttentionOptions o;
    o.scheme = SpScheme::TokenRing;
    spAttention(comm, q.data(), q.data(), q.data(), s, o, out.data(), &st[static_cast<size_t>(comm.rank())]);
  });
  const uint64_t shard_bytes = 128 * 128 * 4;  // 128 tokens x 4 heads x 32 dims x 4 bytes
  uint64_t total_fwd = 0;
  for (auto& x : st) total_fwd += x.bytes_fwd;
  // Without the causal trimming every rank would forward 3 full shards.
  EXPECT_LT(total_fwd, 4 * 3 * shard_bytes);
  EXPECT_GT(total_fwd, 4 * 3 * shard_bytes / 2);
  for (auto& x : st) EXPECT_GT(x.bytes_bwd, 0u);
}

TEST(SpAttention, MismatchedShapesFailOnEveryRank) {
  auto errors = runThreadRanksCollect(
      3,
      [&](Communicator& comm) {
        SpShape s{1, comm.rank() == 1 ? 40 : 41, 4, 4, 32};
        std::vector<float> q(1000, 0.f), out(1000);
        SpAttentionOptions o;
        o.scheme = SpScheme::TokenRing;
        spAttention(comm, q.data(), q.data(), q.data(), s, o, out.data());
      },
      10s);
  for (auto& e : errors) {
    ASSERT_TRUE(e);
    try {
      std::rethrow_exception(e);
    } catch (const Error& ex) {
      EXPECT_NE(std::string(ex.what()).find("seq_len"), std::string::npos) << ex.what();
    }
  }
}

TEST(SpAttention, InvalidShapesAreRejected) {
  runThreadRanks(2, [](Communicator& comm) {
    std::vector<float> q(100), out(100);
    SpAttentionOptions o;
    EXPECT_THROW(spAttention(comm, q.data(), q.data(), q.data(), {1, 10, 6, 4, 8}, o, out.data()), InvalidArgument);
  });
  EXPECT_THROW(spSchemeFromName("ring"), InvalidArgument);
}

namespace {

// The lse overload: every scheme's lse equals single-rank blockAttention's lse of the same rows, and its out
// is bit-identical to the call without lse.
struct LseResult {
  double lse_err = 0;
  bool out_same = true;
  SpScheme ran = SpScheme::Auto;
};

LseResult lseError(const std::string& scheme, int N, const Case& c) {
  const SpShape& s = c.shape;
  const size_t S = static_cast<size_t>(s.seq_len), B = static_cast<size_t>(s.batch), H = static_cast<size_t>(s.heads);
  const size_t qw = static_cast<size_t>(s.heads * s.head_dim), kw = static_cast<size_t>(s.kv_heads * s.head_dim);
  const auto q = randn(B * S * qw, 4), k = randn(B * S * kw, 5), v = randn(B * S * kw, 6);
  std::vector<float> ref(B * S * qw), lse(B * S * H);
  BlockAttentionOptions bo;
  bo.causal = c.causal;
  blockAttention(q.data(), k.data(), v.data(),
                 {s.batch, static_cast<int>(S), static_cast<int>(S), s.heads, s.kv_heads, s.head_dim}, bo, ref.data(),
                 lse.data());
  std::vector<LseResult> res(static_cast<size_t>(N));
  runThreadRanks(
      N,
      [&](Communicator& comm) {
        const int r = comm.rank();
        auto ql = shard(q, s, qw, N, r, c.layout), kl = shard(k, s, kw, N, r, c.layout),
             vl = shard(v, s, kw, N, r, c.layout);
        const auto expect = shard(lse, s, H, N, r, c.layout);
        std::vector<float> out(ql.size(), NAN), out2(ql.size(), NAN), l(expect.size() + 1, NAN);
        SpAttentionOptions o;
        o.scheme = spSchemeFromName(scheme);
        o.layout = c.layout;
        o.causal = c.causal;
        SpAttentionStats st;
        spAttention(comm, ql.data(), kl.data(), vl.data(), s, o, out.data(), l.data(), &st);
        spAttention(comm, ql.data(), kl.data(), vl.data(), s, o, out2.data());
        LseResult& mine = res[static_cast<size_t>(r)];
        mine.ran = st.scheme;
        for (size_t i = 0; i < expect.size(); ++i)
          mine.lse_err = std::max(mine.lse_err, std::isfinite(l[i]) ? std::fabs(l[i] - expect[i]) : 1e9);
        EXPECT_TRUE(std::isnan(l[expect.size()])) << "wrote past the end of lse";
        mine.out_same = out.empty() || std::memcmp(out.data(), out2.data(), out.size() * sizeof(float)) == 0;
      },
      60s);
  LseResult all;
  all.ran = res[0].ran;
  for (const auto& x : res) {
    all.lse_err = std::max(all.lse_err, x.lse_err);
    all.out_same = all.out_same && x.out_same;
  }
  return all;
}

}  // namespace

TEST(SpAttentionLse, EqualsSingleRankLseForEveryScheme) {
  for (const char* scheme : {"tokenring", "ring-kv", "ulysses", "allgather-kv", "auto"})
    for (int N : {1, 2, 3, 4, 8})
      for (bool causal : {true, false})
        for (SeqLayout layout : {SeqLayout::Zigzag, SeqLayout::Contiguous})
          for (auto [h, kvh] : {std::pair{4, 4}, std::pair{6, 2}, std::pair{3, 1}}) {
            // Uneven lengths; with 8 ranks and 3 heads Ulysses leaves ranks without heads, and S = N - 1
            // (contiguous) leaves a rank without tokens.
            for (int64_t S : {int64_t{7} * N + 3, int64_t{N > 1 ? N - 1 : 1}}) {
              const Case c{{2, S, h, kvh, 16}, causal, layout};
              const LseResult r = lseError(scheme, N, c);
              const std::string what = fmt::format("{} N={} S={} causal={} {} h={} kv={}", scheme, N, S, causal,
                                                   layout == SeqLayout::Zigzag ? "zigzag" : "contiguous", h, kvh);
              EXPECT_LE(r.lse_err, 1e-5) << what;
              EXPECT_TRUE(r.out_same) << what << ": out differs from the call without lse";
              if (std::string(scheme) != "auto") {
                EXPECT_EQ(spSchemeName(r.ran), scheme) << what;
              }
            }
          }
}

TEST(SpAttentionLse, AskingOnSomeRanksOnlyFailsOnEveryRank) {
  for (const char* scheme : {"ulysses", "tokenring"}) {
    auto errors = runThreadRanksCollect(
        3,
        [&](Communicator& comm) {
          const SpShape s{1, 30, 4, 4, 8};
          std::vector<float> q(10 * 32, 0.5f), out(q.size()), l(10 * 4);
          SpAttentionOptions o;
          o.scheme = spSchemeFromName(scheme);
          spAttention(comm, q.data(), q.data(), q.data(), s, o, out.data(), comm.rank() == 2 ? nullptr : l.data());
        },
        10s);
    for (auto& e : errors) {
      ASSERT_TRUE(e) << scheme;
      try {
        std::rethrow_exception(e);
      } catch (const Error& ex) {
        EXPECT_NE(std::string(ex.what()).find("lse="), std::string::npos) << ex.what();
      }
    }
  }
}

TEST(CostModel, PrefersTokenRingForMhaOnAMeshAndRingKvForGqaOnAStar) {
  CostModelParams p;
  p.bandwidth_Bps = 1.25e8;
  p.kernel_flops = 1e12;  // communication-bound: that is where the choice matters
  p.topology = Topology::Mesh;
  SpAttentionOptions o;
  const SpShape mha{1, 8192, 32, 32, 128}, gqa{1, 8192, 32, 8, 128};
  CostModel mesh(p);
  EXPECT_LT(mesh.predict(SpScheme::TokenRing, mha, 4, o), mesh.predict(SpScheme::RingKV, mha, 4, o));
  p.topology = Topology::Star;
  CostModel star(p);
  EXPECT_LT(star.predict(SpScheme::RingKV, gqa, 4, o), star.predict(SpScheme::TokenRing, gqa, 4, o));
  EXPECT_EQ(CostModel::fromJson(star.toJson()).toJson(), star.toJson());
  EXPECT_THROW(CostModel::fromJson("{\"topology\":\"ring\"}"), InvalidArgument);
}

TEST(CostModel, CalibrationAgreesOnEveryRank) {
  std::vector<std::string> js(3);
  runThreadRanks(
      3, [&](Communicator& comm) { js[static_cast<size_t>(comm.rank())] = CostModel::calibrate(comm).toJson(); });
  EXPECT_EQ(js[0], js[1]);
  EXPECT_EQ(js[0], js[2]);
  auto m = CostModel::fromJson(js[0]);
  EXPECT_GT(m.params().bandwidth_Bps, 0);
  EXPECT_GT(m.params().kernel_flops, 1e8);
}

// chooseAppendScheme: pass-Q for a token or a short turn over a long cache, pass-KV for a long turn over a
// short cache on a fast link; one rank is always pass-Q; the predictions are the documented formulas.
TEST(AppendScheme, ChoosesByTheModel) {
  CostModelParams p;
  p.bandwidth_Bps = 1e9;
  p.latency_s = 50e-6;
  p.kernel_flops = 1e15;  // attention almost free: bytes decide
  const SpQueryShape one{1, 8, 2, 64}, long_turn{4096, 8, 2, 64};
  EXPECT_EQ(chooseAppendScheme(p, one, 100000, 4), SpScheme::TokenRing);
  EXPECT_EQ(chooseAppendScheme(p, long_turn, 16, 4), SpScheme::AllGatherKV);
  EXPECT_EQ(chooseAppendScheme(p, long_turn, 16, 1), SpScheme::TokenRing);
  double q = 0, kv = 0;
  chooseAppendScheme(p, one, 1000, 4, &q, &kv);
  const double qb = 1 * 8 * 64 * 4.0, part = 1 * 8 * 65 * 4.0, kvb = 2 * 1000 * 2 * 64 * 4.0;
  const double attn = 4.0 * 1 * 1000 * 8 * 64 / 1e15;
  EXPECT_NEAR(q, 3 * (50e-6 + qb / 1e9) + attn + 3 * part / 1e9, 1e-12);
  EXPECT_NEAR(kv, 50e-6 + 3 * kvb / 1e9 + 4 * attn, 1e-12);
  // Slow kernels: pass-KV serializes the work on the owner, pass-Q spreads it.
  p.kernel_flops = 1e6;
  EXPECT_EQ(chooseAppendScheme(p, long_turn, 16, 4), SpScheme::TokenRing);
}
