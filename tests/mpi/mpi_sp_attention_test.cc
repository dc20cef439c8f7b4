// Sequence-parallel attention on real MPI ranks: every scheme equals single-rank attention over the whole
// sequence; mismatched shapes fail on every rank.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "common/sp_reference.h"
#include "flashring/costmodel.h"
#include "flashring/sp_attention.h"
#include "mpi_harness.h"

using namespace flashring;
using testref::randn;
using testref::shard;
using namespace flashring::mpitest;

namespace {}  // namespace

class MpiSpAttention : public MpiTest, public ::testing::WithParamInterface<std::string> {};
class MpiSpAttentionErrors : public MpiTest {};

TEST_P(MpiSpAttention, EqualsSingleRankAttention) {
  const SpScheme scheme = spSchemeFromName(GetParam());
  const int N = size(), r = rank();
  for (bool causal : {true, false}) {
    for (SeqLayout lay : {SeqLayout::Zigzag, SeqLayout::Contiguous}) {
      for (auto [h, hkv] : {std::pair{4, 4}, std::pair{8, 2}, std::pair{4, 1}}) {
        const SpShape s{2, 11 * N + 3, h, hkv, 64};
        const size_t S = static_cast<size_t>(s.seq_len), qw = static_cast<size_t>(h * 64),
                     kw = static_cast<size_t>(hkv * 64);
        const auto q = randn(2 * S * qw, 1), k = randn(2 * S * kw, 2), v = randn(2 * S * kw, 3);
        std::vector<float> ref(q.size()), lse(2 * S * static_cast<size_t>(h));
        BlockAttentionOptions bo;
        bo.causal = causal;
        blockAttention(q.data(), k.data(), v.data(), {2, static_cast<int>(S), static_cast<int>(S), h, hkv, 64}, bo,
                       ref.data(), lse.data());
        auto ql = shard(q, s, qw, N, r, lay), kl = shard(k, s, kw, N, r, lay), vl = shard(v, s, kw, N, r, lay);
        std::vector<float> out(ql.size(), NAN);
        SpAttentionOptions o;
        o.scheme = scheme;
        o.causal = causal;
        o.layout = lay;
        spAttention(comm(), ql.data(), kl.data(), vl.data(), s, o, out.data());
        const auto expect = shard(ref, s, qw, N, r, lay);
        double m = 0;
        for (size_t i = 0; i < out.size(); ++i)
          m = std::max(m, std::isfinite(out[i]) ? std::fabs(out[i] - expect[i]) : 1e9);
        EXPECT_LE(m, 1e-5) << GetParam() << " causal=" << causal << " zigzag=" << (lay == SeqLayout::Zigzag)
                           << " h=" << h << " hkv=" << hkv;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, MpiSpAttention,
                         ::testing::Values("tokenring", "ring-kv", "ulysses", "allgather-kv", "auto"),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string s = i.param;
                           for (auto& c : s) c = c == '-' ? '_' : c;
                           return s;
                         });

TEST_F(MpiSpAttentionErrors, MismatchedShapesFailOnEveryRank) {
  FLASHRING_REQUIRE_RANKS(2);
  auto c = freshComm();
  c->setTimeout(std::chrono::milliseconds(20000));
  const SpShape s{1, rank() == 1 ? 40 : 41, 4, 4, 32};
  std::vector<float> q(4096, 0.f), out(4096);
  SpAttentionOptions o;
  o.scheme = SpScheme::TokenRing;
  const auto t0 = Clock::now();
  std::string what;
  try {
    spAttention(*c, q.data(), q.data(), q.data(), s, o, out.data());
  } catch (const Error& e) {
    what = e.what();
  }
  EXPECT_NE(what.find("seq_len"), std::string::npos) << "rank " << rank() << ": " << what;
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(15));
}

TEST_F(MpiSpAttentionErrors, CalibrationIsIdenticalOnEveryRank) {
  const std::string j = CostModel::calibrate(comm()).toJson();
  const uint64_t h = std::hash<std::string>{}(j);
  uint64_t mn = 0, mx = 0;
  MPI_Allreduce(&h, &mn, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&h, &mx, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  EXPECT_EQ(mn, mx) << j;
}
