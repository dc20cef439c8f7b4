// The two-level SP schemes (ulysses+tokenring, ulysses+ring-kv) on thread ranks grouped into emulated nodes:
// equal to single-rank attention (out and lse) on every node layout, mask, head grouping, sequence layout and
// uneven length; deterministic; the cost model's bytes match what they send; Auto picks them when the model
// says so; unequal nodes are refused on every rank.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
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

struct Result {
  double out_err = 0, lse_err = 0;
  bool out_same_without_lse = true, repeat_same = true;
  SpScheme ran = SpScheme::Auto;
  std::vector<SpAttentionStats> stats;  // per rank, of the call with lse
};

// Runs `scheme` on R x K thread ranks (nodes of K consecutive ranks; K = 0: one node) and compares with
// single-rank attention over the whole sequence.
Result run(SpScheme scheme, int R, int K, const SpShape& s, bool causal, SeqLayout layout,
           const CostModel* model = nullptr) {
  const int N = K > 0 ? R * K : R;
  const size_t S = static_cast<size_t>(s.seq_len), B = static_cast<size_t>(s.batch), H = static_cast<size_t>(s.heads);
  const size_t qw = H * static_cast<size_t>(s.head_dim), kw = static_cast<size_t>(s.kv_heads * s.head_dim);
  const auto q = randn(B * S * qw, 11), k = randn(B * S * kw, 12), v = randn(B * S * kw, 13);
  std::vector<float> ref(B * S * qw), ref_lse(B * S * H);
  BlockAttentionOptions bo;
  bo.causal = causal;
  blockAttention(q.data(), k.data(), v.data(),
                 {s.batch, static_cast<int>(S), static_cast<int>(S), s.heads, s.kv_heads, s.head_dim}, bo, ref.data(),
                 ref_lse.data());
  std::vector<Result> res(static_cast<size_t>(N));
  runThreadRanks(
      N,
      [&](Communicator& comm) {
        if (K > 0) comm.setRanksPerNode(K);
        const int r = comm.rank();
        const auto ql = shard(q, s, qw, N, r, layout), kl = shard(k, s, kw, N, r, layout),
                   vl = shard(v, s, kw, N, r, layout);
        const auto expect = shard(ref, s, qw, N, r, layout), expect_lse = shard(ref_lse, s, H, N, r, layout);
        std::vector<float> out(ql.size() + 1, NAN), out2(ql.size(), NAN), out3(ql.size(), NAN),
            l(expect_lse.size() + 1, NAN), l3(expect_lse.size() + 1, NAN);
        SpAttentionOptions o;
        o.scheme = scheme;
        o.layout = layout;
        o.causal = causal;
        o.model = model;
        Result& mine = res[static_cast<size_t>(r)];
        mine.stats.resize(1);
        spAttention(comm, ql.data(), kl.data(), vl.data(), s, o, out.data(), l.data(), &mine.stats[0]);
        spAttention(comm, ql.data(), kl.data(), vl.data(), s, o, out2.data());
        spAttention(comm, ql.data(), kl.data(), vl.data(), s, o, out3.data(), l3.data());
        mine.ran = mine.stats[0].scheme;
        for (size_t i = 0; i < expect.size(); ++i)
          mine.out_err = std::max(mine.out_err, std::isfinite(out[i]) ? std::fabs(out[i] - expect[i]) : 1e9);
        for (size_t i = 0; i < expect_lse.size(); ++i)
          mine.lse_err = std::max(mine.lse_err, std::isfinite(l[i]) ? std::fabs(l[i] - expect_lse[i]) : 1e9);
        EXPECT_TRUE(std::isnan(out[expect.size()])) << "wrote past the end of out";
        EXPECT_TRUE(std::isnan(l[expect_lse.size()])) << "wrote past the end of lse";
        // memcmp of empty shards would pass null pointers (undefined even for 0 bytes)
        auto same = [](const float* a, const float* b, size_t n) { return n == 0 || std::memcmp(a, b, n * 4) == 0; };
        mine.out_same_without_lse = same(out.data(), out2.data(), out2.size());
        mine.repeat_same = same(out.data(), out3.data(), out3.size()) && same(l.data(), l3.data(), expect_lse.size());
      },
      60s);
  Result all;
  all.ran = res[0].ran;
  for (auto& x : res) {
    all.out_err = std::max(all.out_err, x.out_err);
    all.lse_err = std::max(all.lse_err, x.lse_err);
    all.out_same_without_lse = all.out_same_without_lse && x.out_same_without_lse;
    all.repeat_same = all.repeat_same && x.repeat_same;
    EXPECT_EQ(x.ran, all.ran) << "ranks ran different schemes";
    all.stats.push_back(x.stats[0]);
  }
  return all;
}

}  // namespace

using Params = std::tuple<std::string, std::tuple<int, int>, bool, SeqLayout>;
class SpAttentionTwoLevel : public ::testing::TestWithParam<Params> {};

TEST_P(SpAttentionTwoLevel, EqualsSingleRankAttention) {
  const auto& [name, nodes, causal, layout] = GetParam();
  const auto [R, K] = nodes;
  const int N = R * K;
  const SpScheme scheme = spSchemeFromName(name);
  // MHA, GQA aligned with the node's head split, and GQA that is not (K/V heads expanded); lengths that do not
  // divide, and shorter than the ranks (zigzag: than 2N chunks), which leaves ranks and nodes without tokens.
  for (auto [h, kvh] : {std::pair{4, 4}, std::pair{6, 2}, std::pair{3, 1}})
    for (int64_t S : {int64_t{7} * N + 3, int64_t{2} * N + 1, int64_t{N - 1}, int64_t{2}}) {
      const SpShape s{2, S, h, kvh, 16};
      const Result r = run(scheme, R, K, s, causal, layout);
      const std::string what = fmt::format("{} {}x{} S={} causal={} {} h={} kv={}", name, R, K, S, causal,
                                           layout == SeqLayout::Zigzag ? "zigzag" : "contiguous", h, kvh);
      EXPECT_LE(r.out_err, 1e-5) << what;
      EXPECT_LE(r.lse_err, 1e-5) << what;
      EXPECT_TRUE(r.out_same_without_lse) << what << ": out differs from the call without lse";
      EXPECT_TRUE(r.repeat_same) << what << ": a second call differs";
      EXPECT_EQ(r.ran, scheme) << what;
    }
}

INSTANTIATE_TEST_SUITE_P(All, SpAttentionTwoLevel,
                         ::testing::Combine(::testing::Values("ulysses+tokenring", "ulysses+ring-kv"),
                                            ::testing::Values(std::make_tuple(2, 2), std::make_tuple(2, 3),
                                                              std::make_tuple(3, 2), std::make_tuple(4, 2)),
                                            ::testing::Bool(),
                                            ::testing::Values(SeqLayout::Zigzag, SeqLayout::Contiguous)),
                         [](const ::testing::TestParamInfo<Params>& i) {
                           std::string s = std::get<0>(i.param);
                           for (auto& ch : s) ch = (ch == '-' || ch == '+') ? '_' : ch;
                           return fmt::format("{}_{}x{}_{}_{}", s, std::get<0>(std::get<1>(i.param)),
                                              std::get<1>(std::get<1>(i.param)),
                                              std::get<2>(i.param) ? "causal" : "full",
                                              std::get<3>(i.param) == SeqLayout::Zigzag ? "zigzag" : "contig");
                         });

TEST(SpAttentionTwoLevel, DegenerateLayoutsAndBatchedRealHeadDims) {
  // One node (Ulysses), nodes of one rank (the ring), and a realistic head dim with batch 3.
  for (const char* name : {"ulysses+tokenring", "ulysses+ring-kv"}) {
    const SpScheme sc = spSchemeFromName(name);
    for (bool causal : {true, false}) {
      const Result one = run(sc, 4, 0, {1, 37, 4, 2, 16}, causal, SeqLayout::Zigzag);
      EXPECT_LE(std::max(one.out_err, one.lse_err), 1e-5) << name << " one node";
      const Result ones = run(sc, 3, 1, {1, 37, 4, 2, 16}, causal, SeqLayout::Zigzag);
      EXPECT_LE(std::max(ones.out_err, ones.lse_err), 1e-5) << name << " nodes of one rank";
      const Result big = run(sc, 2, 2, {3, 150, 8, 2, 64}, causal, SeqLayout::Zigzag);
      EXPECT_LE(std::max(big.out_err, big.lse_err), 1e-5) << name << " batch 3, d=64";
    }
  }
}

TEST(SpAttentionTwoLevel, UnequalNodesFailOnEveryRank) {
  for (const char* name : {"ulysses+tokenring", "ulysses+ring-kv"}) {
    auto errors = runThreadRanksCollect(
        3,
        [&](Communicator& comm) {
          comm.setNodeIds({0, 0, 1});
          const SpShape s{1, 30, 4, 4, 8};
          std::vector<float> q(10 * 32, 0.5f), out(q.size());
          SpAttentionOptions o;
          o.scheme = spSchemeFromName(name);
          spAttention(comm, q.data(), q.data(), q.data(), s, o, out.data());
        },
        10s);
    for (auto& e : errors) {
      ASSERT_TRUE(e) << name;
      try {
        std::rethrow_exception(e);
      } catch (const InvalidArgument& ex) {
        EXPECT_NE(std::string(ex.what()).find("node 1 holds 1"), std::string::npos) << ex.what();
      } catch (const std::exception& ex) {
        ADD_FAILURE() << "expected InvalidArgument on every rank, got: " << ex.what();
      }
    }
  }
  // Auto on the same layout prices it as one node and runs a single-level scheme, correctly.
  std::vector<SpScheme> ran(3);
  runThreadRanks(3, [&](Communicator& comm) {
    comm.setNodeIds({0, 0, 1});
    EXPECT_THROW(spNodeLayout(comm), InvalidArgument);
    const SpShape s{1, 30, 4, 4, 8};
    const size_t L = static_cast<size_t>(localLength(30, 3, comm.rank(), SeqLayout::Zigzag));
    std::vector<float> q(L * 32, 0.5f), out(q.size());
    SpAttentionOptions o;
    SpAttentionStats st;
    spAttention(comm, q.data(), q.data(), q.data(), s, o, out.data(), &st);
    ran[static_cast<size_t>(comm.rank())] = st.scheme;
    for (float x : out) EXPECT_NEAR(x, 0.5f, 1e-6);
  });
  for (SpScheme s : ran) EXPECT_FALSE(spSchemeIsTwoLevel(s)) << spSchemeName(s);
}

TEST(SpAttentionTwoLevel, NamesAndNodeLayout) {
  EXPECT_EQ(spSchemeFromName("ulysses+tokenring"), SpScheme::UlyssesTokenRing);
  EXPECT_EQ(spSchemeFromName("ulysses+ring-kv"), SpScheme::UlyssesRingKV);
  EXPECT_EQ(spSchemeName(SpScheme::UlyssesRingKV), "ulysses+ring-kv");
  EXPECT_TRUE(spSchemeIsTwoLevel(SpScheme::UlyssesTokenRing));
  EXPECT_FALSE(spSchemeIsTwoLevel(SpScheme::TokenRing));
  runThreadRanks(6, [](Communicator& comm) {
    SpNodeLayout one = spNodeLayout(comm);
    EXPECT_EQ(one.nodes, 1);
    EXPECT_EQ(one.ranks_per_node, 6);
    comm.setRanksPerNode(2);
    const SpNodeLayout three = spNodeLayout(comm);
    EXPECT_EQ(three.nodes, 3);
    EXPECT_EQ(three.ranks_per_node, 2);
  });
}

TEST(SpAttentionTwoLevel, InterleavedNodesAreAnyLayout) {
  // Nodes need not be consecutive blocks: ranks 0, 2 on node 0 and 1, 3 on node 1.
  for (const char* name : {"ulysses+tokenring", "ulysses+ring-kv"})
    for (bool causal : {true, false})
      for (SeqLayout layout : {SeqLayout::Zigzag, SeqLayout::Contiguous}) {
        const SpShape s{2, 41, 6, 2, 16};
        const size_t S = 41, B = 2, H = 6, qw = 6 * 16, kw = 2 * 16;
        const auto q = randn(B * S * qw, 21), k = randn(B * S * kw, 22), v = randn(B * S * kw, 23);
        std::vector<float> ref(B * S * qw), ref_lse(B * S * H);
        BlockAttentionOptions bo;
        bo.causal = causal;
        blockAttention(q.data(), k.data(), v.data(), {2, 41, 41, 6, 2, 16}, bo, ref.data(), ref_lse.data());
        std::vector<double> err(4, 0);
        runThreadRanks(4, [&](Communicator& comm) {
          comm.setNodeIds({0, 1, 0, 1});
          const int r = comm.rank();
          const auto ql = shard(q, s, qw, 4, r, layout), kl = shard(k, s, kw, 4, r, layout),
                     vl = shard(v, s, kw, 4, r, layout);
          const auto expect = shard(ref, s, qw, 4, r, layout), expect_lse = shard(ref_lse, s, H, 4, r, layout);
          std::vector<float> out(ql.size()), l(expect_lse.size());
          SpAttentionOptions o;
          o.scheme = spSchemeFromName(name);
          o.layout = layout;
          o.causal = causal;
          spAttention(comm, ql.data(), kl.data(), vl.data(), s, o, out.data(), l.data());
          double m = 0;
          for (size_t i = 0; i < out.size(); ++i) m = std::max(m, static_cast<double>(std::fabs(out[i] - expect[i])));
          for (size_t i = 0; i < l.size(); ++i) m = std::max(m, static_cast<double>(std::fabs(l[i] - expect_lse[i])));
          err[static_cast<size_t>(r)] = m;
        });
        EXPECT_LE(*std::max_element(err.begin(), err.end()), 1e-5) << name << " causal=" << causal;
      }
}

// -------------------------------------------------------------------------------------------- the cost model

TEST(CostModelTwoLevel, PredictedBytesMatchWhatEverySchemeSends) {
  // Non-causal (TokenRing sends every row), uneven lengths included: the model counts exact per-rank rows.
  CostModel m;
  for (auto [R, K] : {std::pair{2, 2}, std::pair{3, 2}, std::pair{2, 3}})
    for (const SpShape& s : {SpShape{2, 48, 4, 4, 16}, SpShape{1, 61, 6, 2, 8}})
      for (const char* name :
           {"ulysses+tokenring", "ulysses+ring-kv", "tokenring", "ring-kv", "ulysses", "allgather-kv"})
        for (SeqLayout layout : {SeqLayout::Zigzag, SeqLayout::Contiguous}) {
          const SpScheme sc = spSchemeFromName(name);
          const Result r = run(sc, R, K, s, false, layout);
          uint64_t fwd = 0, bwd = 0, inter = 0;
          for (const auto& st : r.stats) fwd += st.bytes_fwd, bwd += st.bytes_bwd, inter += st.bytes_inter;
          const double N = R * K;
          SpAttentionOptions o;
          o.causal = false;
          o.layout = layout;
          const SpBytes p = m.predictBytes(sc, s, {R, K}, o, /*with_lse=*/true);
          const std::string what = fmt::format("{} {}x{} S={} h={} kv={}", name, R, K, s.seq_len, s.heads, s.kv_heads);
          EXPECT_DOUBLE_EQ(p.fwd, static_cast<double>(fwd) / N) << what;
          EXPECT_DOUBLE_EQ(p.bwd, static_cast<double>(bwd) / N) << what;
          if (spSchemeIsTwoLevel(sc)) {
            EXPECT_DOUBLE_EQ(p.inter, static_cast<double>(inter) / N) << what;
            EXPECT_GT(p.inter, 0) << what;
          }
        }
}

TEST(CostModelTwoLevel, AutoPicksTwoLevelWhenTheInterLinkIsSlow) {
  // Fast links inside the node, a slow one between nodes, compute negligible: GQA K/V cross the node uplink
  // once per ring step in ring-kv; ulysses+ring-kv moves them across R-1 = 1 time, in K parallel slices.
  CostModelParams p;
  p.bandwidth_Bps = 1e12;
  p.latency_s = 0;
  p.kernel_flops = 1e16;
  p.topology = Topology::Mesh;
  p.inter_bandwidth_Bps = 1e6;
  p.inter_latency_s = 0;
  const CostModel slow(p);
  SpAttentionOptions o;
  const SpShape s{1, 64, 8, 2, 16};
  EXPECT_TRUE(spSchemeIsTwoLevel(slow.choose(s, {2, 2}, o))) << spSchemeName(slow.choose(s, {2, 2}, o));
  EXPECT_FALSE(spSchemeIsTwoLevel(slow.choose(s, 4, o)));                   // one node
  EXPECT_FALSE(spSchemeIsTwoLevel(slow.choose(s, SpNodeLayout{4, 1}, o)));  // nodes of one rank
  // On thread ranks: Auto runs the two-level scheme on 2 x 2 nodes, a single-level one on one node, and both
  // are right.
  const Result two = run(SpScheme::Auto, 2, 2, s, true, SeqLayout::Zigzag, &slow);
  EXPECT_TRUE(spSchemeIsTwoLevel(two.ran)) << spSchemeName(two.ran);
  EXPECT_LE(std::max(two.out_err, two.lse_err), 1e-5);
  EXPECT_GT(two.stats[0].predicted_s, 0);
  const Result one = run(SpScheme::Auto, 4, 0, s, true, SeqLayout::Zigzag, &slow);
  EXPECT_FALSE(spSchemeIsTwoLevel(one.ran)) << spSchemeName(one.ran);
  EXPECT_LE(std::max(one.out_err, one.lse_err), 1e-5);
  // With the inter-node link as fast as the intra-node one, two-level is no longer worth its extra phases here.
  p.inter_bandwidth_Bps = 0;
  EXPECT_FALSE(spSchemeIsTwoLevel(CostModel(p).choose(s, {2, 2}, o)));
}

TEST(CostModelTwoLevel, LongPromptOverSlowNodesPrefersTwoLevel) {
  // LLaMA-like MHA attention, 32k tokens over 2 nodes x 4 ranks; intra 10 GB/s mesh, inter 1.25 GB/s shared by
  // the node's ranks. The rings hide their transfers behind compute; Ulysses' cross-node all-to-all cannot,
  // and the single-level rings' shorter steps cannot hide a shared, slower uplink.
  CostModelParams p;
  p.bandwidth_Bps = 1e10;
  p.latency_s = 10e-6;
  p.kernel_flops = 5e12;
  p.topology = Topology::Mesh;
  p.inter_bandwidth_Bps = 1.25e9;
  p.inter_latency_s = 20e-6;
  const CostModel m(p);
  SpAttentionOptions o;
  const SpShape s{1, 32768, 32, 32, 128};
  const SpNodeLayout nl{2, 4};
  std::string table;
  for (SpScheme sc : {SpScheme::TokenRing, SpScheme::RingKV, SpScheme::Ulysses, SpScheme::AllGatherKV,
                      SpScheme::UlyssesTokenRing, SpScheme::UlyssesRingKV})
    table += fmt::format(" {}={:.2f}ms", spSchemeName(sc), m.predict(sc, s, nl, o) * 1e3);
  EXPECT_TRUE(spSchemeIsTwoLevel(m.choose(s, nl, o))) << table;
  EXPECT_EQ(m.predict(SpScheme::Auto, s, nl, o), m.predict(m.choose(s, nl, o), s, nl, o));
  // One node: the single-level formulas, unchanged.
  EXPECT_EQ(m.predict(SpScheme::TokenRing, s, SpNodeLayout{1, 8}, o), m.predict(SpScheme::TokenRing, s, 8, o));
  EXPECT_EQ(m.choose(s, SpNodeLayout{1, 8}, o), m.choose(s, 8, o));
}

TEST(CostModelTwoLevel, JsonKeepsOldFilesLoadable) {
  const std::string old = R"({"bandwidth_Bps":2e9,"latency_s":1e-5,"topology":"mesh","kernel_flops":3e10})";
  const CostModel m = CostModel::fromJson(old);
  EXPECT_EQ(m.params().inter_bandwidth_Bps, 0);
  EXPECT_EQ(m.params().interBandwidth(), 2e9);
  EXPECT_EQ(m.params().interLatency(), 1e-5);
  CostModelParams p = m.params();
  p.inter_bandwidth_Bps = 1.25e8;
  p.inter_latency_s = 1e-4;
  p.inter_shared = false;
  const CostModel n(p);
  const CostModel back = CostModel::fromJson(n.toJson());
  EXPECT_EQ(back.toJson(), n.toJson());
  EXPECT_EQ(back.params().inter_bandwidth_Bps, 1.25e8);
  EXPECT_FALSE(back.params().inter_shared);
  EXPECT_THROW(CostModel::fromJson(R"({"bandwidth_Bps":2e9,"latency_s":1e-5,"topology":"mesh","kernel_flops":3e10,)"
                                   R"("inter_bandwidth_Bps":-1})"),
               InvalidArgument);
}

TEST(CostModelTwoLevel, CalibrationMeasuresTheInterNodeLinkOnEveryRank) {
  std::vector<std::string> js(4);
  runThreadRanks(4, [&](Communicator& comm) {
    comm.setRanksPerNode(2);
    js[static_cast<size_t>(comm.rank())] = CostModel::calibrate(comm).toJson();
  });
  for (const auto& j : js) EXPECT_EQ(j, js[0]);
  const auto m = CostModel::fromJson(js[0]);
  EXPECT_GT(m.params().inter_bandwidth_Bps, 0);
  EXPECT_GT(m.params().bandwidth_Bps, 0);
  // One node: no inter-node link measured (the old behaviour).
  runThreadRanks(2, [&](Communicator& comm) {
    const auto one = CostModel::calibrate(comm);
    EXPECT_EQ(one.params().inter_bandwidth_Bps, 0);
  });
}
