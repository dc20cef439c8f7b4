// Every all-reduce algorithm on thread ranks: against the fp64 sum, against the sequential model of the
// quantized algorithm (bit for bit), replica consistency, odd sizes, NaN/Inf and mismatched sizes.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/allreduce_reference.h"
#include "flashring/allreduce.h"
#include "flashring/thread_comm.h"

using namespace flashring;
using namespace std::chrono_literals;

namespace {

// Runs the all-reduce of rankInput(r, n) on `ranks` thread ranks; returns every rank's result.
std::vector<std::vector<float>> runAllreduce(int ranks, size_t n, const AllreduceOptions& o, uint32_t seed = 1) {
  std::vector<std::vector<float>> results(static_cast<size_t>(ranks));
  runThreadRanks(
      ranks,
      [&](Communicator& c) {
        auto x = testref::rankInput(c.rank(), n, seed);
        allreduce(c, x, o);
        results[static_cast<size_t>(c.rank())] = std::move(x);
      },
      60s);
  return results;
}

void expectReplicasIdentical(const std::vector<std::vector<float>>& res) {
  for (size_t r = 1; r < res.size(); ++r)
    ASSERT_TRUE(testref::sameBits(res[0], res[r])) << "rank " << r << " differs from rank 0";
}

const std::vector<std::string> kExactAlgos = {"ring-fp32", "ring-bf16", "twostep-fp32", "twostep-bf16"};
const std::vector<std::string> kFlashAlgos = {"flash-int8", "flash-int6",      "flash-int5",
                                              "flash-int4", "flash-int4-int8", "flash-int8-int4"};

}  // namespace

using Params = std::tuple<std::string, int, size_t>;
class AllreduceSweep : public ::testing::TestWithParam<Params> {};

TEST_P(AllreduceSweep, MatchesReferenceOnEveryRank) {
  const auto& [name, ranks, n] = GetParam();
  AllreduceOptions o = allreduceOptionsFromName(name);
  const bool flash = name.rfind("flash", 0) == 0;
  if (flash) o.chunk_elems = 4096;  // many chunks on the larger sizes: the pipeline runs
  auto res = runAllreduce(ranks, n, o);
  expectReplicasIdentical(res);
  const auto exact = testref::exactSum(ranks, n);
  const auto mag = testref::absSum(ranks, n);
  if (flash) {
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < ranks; ++r) inputs.push_back(testref::rankInput(r, n));
    const auto model = testref::quantizedModel(inputs, o);
    ASSERT_TRUE(testref::sameBits(model, res[0])) << "differs from the sequential model";
    // And the model itself is a faithful low-bit sum: INT8 ~1%, INT4 ~20% relative L2 error on these inputs,
    // whose rare 40x outliers widen a quarter of the groups; each bit less doubles it.
    const int bits = std::min(o.reduce_scatter.bits, o.all_gather.bits);
    const double tol = bits == 8 ? 0.02 : (bits == 6 ? 0.1 : (bits == 5 ? 0.2 : 0.4));
    if (ranks > 1 && n > 0) {
      EXPECT_LT(testref::relError(res[0], exact), tol);
    }
  } else {
    // fp32: rounding of N additions. bf16: two-step rounds each contribution and the sum once (2 x 2^-8, bf16 keeps 8
    // significant bits); the ring re-rounds the partial sum at every hop (N x 2^-8), the error growth peers warn about.
    const bool bf16 = name.find("bf16") != std::string::npos;
    const bool ring = name.rfind("ring", 0) == 0;
    const double rel = bf16 ? (ring ? ranks : 2) * std::ldexp(1.0, -8) + 1e-6 : ranks * std::ldexp(1.0, -23);
    for (size_t i = 0; i < n; ++i)
      ASSERT_LE(std::fabs(res[0][i] - exact[i]), rel * mag[i] + 1e-30) << name << " element " << i;
  }
}

std::string sweepName(const ::testing::TestParamInfo<Params>& info) {
  std::string algo = std::get<0>(info.param);
  for (auto& ch : algo)
    if (ch == '-') ch = '_';
  return fmt::format("{}_r{}_n{}", algo, std::get<1>(info.param), std::get<2>(info.param));
}

const auto kRanks = ::testing::Values(1, 2, 3, 4, 7, 8);
const auto kSizes = ::testing::Values(size_t{0}, size_t{1}, size_t{5}, size_t{127}, size_t{1000}, size_t{65539});
INSTANTIATE_TEST_SUITE_P(Exact, AllreduceSweep, ::testing::Combine(::testing::ValuesIn(kExactAlgos), kRanks, kSizes),
                         sweepName);
INSTANTIATE_TEST_SUITE_P(Flash, AllreduceSweep, ::testing::Combine(::testing::ValuesIn(kFlashAlgos), kRanks, kSizes),
                         sweepName);

// Spike reserving (quant::Config::spikes) through the whole algorithm: both stages keep their groups'
// largest values exactly; bit for bit the sequential model on every rank.
using SpikeParams = std::tuple<std::string, int, int, size_t>;  // algorithm, spikes, ranks, n
class AllreduceSpikesSweep : public ::testing::TestWithParam<SpikeParams> {};

TEST_P(AllreduceSpikesSweep, MatchesTheModelBitForBit) {
  const auto& [name, spikes, ranks, n] = GetParam();
  AllreduceOptions base;
  base.reduce_scatter.spikes = base.all_gather.spikes = spikes;
  AllreduceOptions o = allreduceOptionsFromName(name, base);
  ASSERT_EQ(o.reduce_scatter.spikes, spikes);
  ASSERT_EQ(o.all_gather.spikes, spikes);
  o.chunk_elems = 4096;
  std::vector<std::vector<float>> inputs;
  for (int r = 0; r < ranks; ++r) inputs.push_back(testref::massiveRankInput(r, n, 5));
  std::vector<std::vector<float>> res(static_cast<size_t>(ranks));
  runThreadRanks(
      ranks,
      [&](Communicator& c) {
        auto x = inputs[static_cast<size_t>(c.rank())];
        allreduce(c, x, o);
        res[static_cast<size_t>(c.rank())] = std::move(x);
      },
      60s);
  expectReplicasIdentical(res);
  ASSERT_TRUE(testref::sameBits(testref::quantizedModel(inputs, o), res[0])) << "differs from the sequential model";
}

std::string spikeSweepName(const ::testing::TestParamInfo<SpikeParams>& info) {
  std::string algo = std::get<0>(info.param);
  for (auto& ch : algo)
    if (ch == '-') ch = '_';
  return fmt::format("{}_s{}_r{}_n{}", algo, std::get<1>(info.param), std::get<2>(info.param), std::get<3>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Flash, AllreduceSpikesSweep,
                         ::testing::Combine(::testing::Values("flash-int4", "flash-int4-int8", "flash-int6",
                                                              "flash-int8"),
                                            ::testing::Values(1, 4), ::testing::Values(1, 2, 3, 4, 7),
                                            ::testing::Values(size_t{0}, size_t{5}, size_t{1000}, size_t{65539})),
                         spikeSweepName);

TEST(Allreduce, SpikesCutTheErrorOfMassiveActivations) {
  // INT4 g128 on activations with massive values: without spikes each group's scale is set by its huge
  // values and the other ~127 lose everything (the SmolLM2 perplexity collapse); enough spikes per group
  // bring the error of the ordinary values back to what INT4 gives on plain Gaussian data.
  const int ranks = 4;
  const size_t n = 128 * 512;
  std::vector<std::vector<float>> inputs;
  for (int r = 0; r < ranks; ++r) inputs.push_back(testref::massiveRankInput(r, n, 11));
  const auto exact = testref::exactSumOf(inputs);
  std::vector<bool> massive(n, false);
  std::vector<double> mag(n, 0.0);
  for (const auto& x : inputs) {
    for (size_t i = 0; i < n; ++i) {
      massive[i] = massive[i] || std::fabs(x[i]) >= 5000.f;
      mag[i] += std::fabs(x[i]);
    }
  }
  auto errorOfOrdinaryValues = [&](const char* name, int spikes) {
    AllreduceOptions base;
    base.reduce_scatter.spikes = base.all_gather.spikes = spikes;
    const AllreduceOptions o = allreduceOptionsFromName(name, base);
    std::vector<float> out;
    runThreadRanks(ranks, [&](Communicator& c) {
      auto x = inputs[static_cast<size_t>(c.rank())];
      allreduce(c, x, o);
      if (c.rank() == 0) out = std::move(x);
    });
    double num = 0, den = 0, worst_massive = 0;
    for (size_t i = 0; i < n; ++i) {
      const double e = out[i] - exact[i];
      if (massive[i]) {
        worst_massive = std::max(worst_massive, std::fabs(e) / mag[i]);  // sums of mixed signs can cancel
        continue;
      }
      num += e * e;
      den += exact[i] * exact[i];
    }
    if (spikes >= 2) {  // enough spikes for every group of these inputs
      EXPECT_LT(worst_massive, 1e-3) << name << " s" << spikes << ": a massive value lost precision";
    }
    return std::sqrt(num / den);
  };
  for (const char* name : {"flash-int4", "flash-int4-int8"}) {
    // A quarter of the groups hold two massive values: one spike leaves those groups crushed, two fix all.
    const double e0 = errorOfOrdinaryValues(name, 0), e1 = errorOfOrdinaryValues(name, 1),
                 e2 = errorOfOrdinaryValues(name, 2), e4 = errorOfOrdinaryValues(name, 4);
    EXPECT_GT(e0, 2.0) << name;
    EXPECT_LT(e1 * 2, e0) << name << ": " << e0 << " vs " << e1;
    EXPECT_LT(e2, 0.2) << name;
    EXPECT_LT(e2 * 20, e0) << name << ": " << e0 << " vs " << e2;
    EXPECT_LE(e4, e2 * 1.05) << name;
  }
}

// Rotation and clipping (quant::Config::rotate/clip) through the whole algorithm: bit for bit the sequential
// model on every rank, the same wire bytes as without them, and a smaller error than plain INT4 on activations.
TEST(Allreduce, RotateAndClipMatchTheModelAndCutTheError) {
  for (const char* name : {"flash-int4", "flash-int4-int8", "flash-int8", "flash-int5"}) {
    for (int ranks : {2, 3, 4}) {
      for (size_t n : {size_t{5}, size_t{1000}, size_t{65539}}) {
        SCOPED_TRACE(fmt::format("{} ranks {} n {}", name, ranks, n));
        AllreduceOptions base;
        base.reduce_scatter.spikes = base.all_gather.spikes = 2;
        AllreduceOptions plain = allreduceOptionsFromName(name, base);
        plain.chunk_elems = 4096;
        AllreduceOptions o = plain;
        o.reduce_scatter.rotate = o.all_gather.rotate = true;
        o.reduce_scatter.clip = o.all_gather.clip = true;
        std::vector<std::vector<float>> inputs;
        // Activation-like: massive values, and channels (period 576, as the default model's width) whose scales
        // spread over a decade, so that a few channels set each group's range (what rotation evens out).
        std::vector<float> chan(576);
        std::mt19937 cg(5);
        std::lognormal_distribution<float> ld(0.f, 1.f);
        for (auto& v : chan) v = ld(cg);
        for (int r = 0; r < ranks; ++r) {
          auto x = testref::massiveRankInput(r, n, 3);
          for (size_t i = 0; i < n; ++i)
            if (std::fabs(x[i]) < 5000.f) x[i] *= chan[i % chan.size()];
          inputs.push_back(std::move(x));
        }
        auto run = [&](const AllreduceOptions& opt, uint64_t* wire) {
          std::vector<std::vector<float>> res(static_cast<size_t>(ranks));
          runThreadRanks(ranks, [&](Communicator& c) {
            auto x = inputs[static_cast<size_t>(c.rank())];
            AllreduceStats st;
            allreduce(c, x, opt, &st);
            if (c.rank() == 0) *wire = st.wire_bytes;
            res[static_cast<size_t>(c.rank())] = std::move(x);
          });
          return res;
        };
        uint64_t w_rot = 0, w_plain = 0;
        const auto res = run(o, &w_rot);
        expectReplicasIdentical(res);
        ASSERT_TRUE(testref::sameBits(testref::quantizedModel(inputs, o), res[0])) << "differs from the model";
        const auto ref = run(plain, &w_plain);
        EXPECT_EQ(w_rot, w_plain);
        if (n == 65539 && std::string(name) == "flash-int4") {
          const auto exact = testref::exactSumOf(inputs);
          EXPECT_LT(testref::relError(res[0], exact), 0.8 * testref::relError(ref[0], exact))
              << testref::relError(res[0], exact) << " vs " << testref::relError(ref[0], exact);
        }
      }
    }
  }
}

TEST(Allreduce, RanksThatDisagreeOnRotateFailClearly) {
  auto errors = runThreadRanksCollect(3, [&](Communicator& c) {
    AllreduceOptions o = allreduceOptionsFromName("flash-int4");
    o.reduce_scatter.rotate = o.all_gather.rotate = c.rank() == 1;  // same bytes, different meaning
    std::vector<float> x(5000, 1.0f + static_cast<float>(c.rank()));
    allreduce(c, x, o);
  });
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(errors[static_cast<size_t>(r)]) << "rank " << r << " did not fail";
    try {
      std::rethrow_exception(errors[static_cast<size_t>(r)]);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("encoded differently"), std::string::npos) << e.what();
    }
  }
}

TEST(Allreduce, SpikesWithNanInfAndTheWireBytes) {
  const size_t n = 5000;
  std::vector<std::vector<float>> inputs;
  for (int r = 0; r < 3; ++r) inputs.push_back(testref::massiveRankInput(r, n, 2));
  inputs[1][5] = std::numeric_limits<float>::quiet_NaN();
  inputs[2][17] = std::numeric_limits<float>::infinity();
  AllreduceOptions base;
  base.reduce_scatter.spikes = 2;
  base.all_gather.spikes = 3;
  const AllreduceOptions o = allreduceOptionsFromName("flash-int4-int8", base);
  std::vector<std::vector<float>> res(3);
  std::vector<uint64_t> sent(3);
  runThreadRanks(3, [&](Communicator& c) {
    auto x = inputs[static_cast<size_t>(c.rank())];
    AllreduceStats st;
    allreduce(c, x, o, &st);
    sent[static_cast<size_t>(c.rank())] = st.wire_bytes;
    res[static_cast<size_t>(c.rank())] = x;
  });
  expectReplicasIdentical(res);
  EXPECT_TRUE(std::isnan(res[0][5]));
  EXPECT_EQ(res[0][17], std::numeric_limits<float>::infinity());
  EXPECT_TRUE(testref::sameBits(testref::quantizedModel(inputs, o), res[0]));
  // The model figure counts the spike sections: 6 bytes per spike slot per group on top of the plain codec.
  AllreduceOptions plain = o;
  plain.reduce_scatter.spikes = plain.all_gather.spikes = 0;
  const size_t per = 2 * n / 3, groups = (per + 127) / 128;
  EXPECT_EQ(allreduceWireBytes(n, 3, o), allreduceWireBytes(n, 3, plain) + groups * (2 + 3) * 6);
  const double model = static_cast<double>(allreduceWireBytes(n, 3, o));
  for (auto s : sent) EXPECT_NEAR(static_cast<double>(s), model, model * 0.02 + 1024);
}

TEST(Allreduce, OneChunkAndManyChunksBothMatchTheModel) {
  for (size_t chunk : {size_t{0}, size_t{1}, size_t{100000}}) {
    for (int gs : {32, 128, 1024}) {
      AllreduceOptions o = allreduceOptionsFromName("flash-int4-int8");
      o.chunk_elems = chunk;
      o.reduce_scatter.group_size = o.all_gather.group_size = gs;
      auto res = runAllreduce(4, 50001, o, 3);
      std::vector<std::vector<float>> inputs;
      for (int r = 0; r < 4; ++r) inputs.push_back(testref::rankInput(r, 50001, 3));
      auto model = testref::quantizedModel(inputs, o);
      EXPECT_TRUE(testref::sameBits(model, res[2])) << "chunk " << chunk << " g " << gs;
    }
  }
}

TEST(Allreduce, SymmetricCodecAndMixedGroupSizes) {
  AllreduceOptions o = allreduceOptionsFromName("flash-int8");
  o.reduce_scatter = {8, 64, true};
  o.all_gather = {4, 256, false};
  auto res = runAllreduce(3, 10000, o);
  expectReplicasIdentical(res);
  std::vector<std::vector<float>> inputs;
  for (int r = 0; r < 3; ++r) inputs.push_back(testref::rankInput(r, 10000));
  auto model = testref::quantizedModel(inputs, o);
  EXPECT_TRUE(testref::sameBits(model, res[0]));
}

TEST(Allreduce, AutoPicksExactBelowTheThresholdAndFlashAbove) {
  runThreadRanks(4, [](Communicator& c) {
    AllreduceOptions o;  // Auto
    o.auto_threshold_bytes = 4096;
    AllreduceStats st;
    std::vector<float> small(1023, 1.f), big(1024, 1.f);
    allreduce(c, small, o, &st);
    EXPECT_EQ(st.algorithm, AllreduceAlgorithm::TwoStep);
    EXPECT_EQ(small[7], 4.f);
    allreduce(c, big, o, &st);
    EXPECT_EQ(st.algorithm, AllreduceAlgorithm::Quantized);
    EXPECT_EQ(big[7], 4.f);  // constant groups are exact
  });
}

TEST(Allreduce, WireBytesMatchTheModel) {
  for (const char* name : {"ring-fp32", "twostep-bf16", "flash-int8", "flash-int4"}) {
    const size_t n = 1 << 16;
    AllreduceOptions o = allreduceOptionsFromName(name);
    std::vector<uint64_t> sent(4);
    runThreadRanks(4, [&](Communicator& c) {
      std::vector<float> x(n, 0.5f);
      AllreduceStats st;
      allreduce(c, x, o, &st);
      sent[static_cast<size_t>(c.rank())] = st.wire_bytes;
    });
    const double model = static_cast<double>(allreduceWireBytes(n, 4, o));
    for (auto s : sent) EXPECT_NEAR(static_cast<double>(s), model, model * 0.01 + 1024) << name;
  }
}

TEST(Allreduce, NanAndInfLandWhereTheExactSumPutsThem) {
  std::vector<std::string> algos = kExactAlgos;
  algos.insert(algos.end(), kFlashAlgos.begin(), kFlashAlgos.end());
  const size_t n = 3000;
  std::vector<std::vector<float>> inputs;
  for (int r = 0; r < 3; ++r) inputs.push_back(testref::rankInput(r, n));
  inputs[1][5] = std::numeric_limits<float>::quiet_NaN();
  inputs[2][17] = std::numeric_limits<float>::infinity();
  inputs[0][2000] = -std::numeric_limits<float>::infinity();
  const auto exact = testref::exactSum(3, n);
  const auto mag = testref::absSum(3, n);
  for (const auto& name : algos) {
    std::vector<std::vector<float>> res(3);
    AllreduceOptions o = allreduceOptionsFromName(name);
    runThreadRanks(3, [&](Communicator& c) {
      auto x = inputs[static_cast<size_t>(c.rank())];
      allreduce(c, x, o);
      res[static_cast<size_t>(c.rank())] = x;
    });
    EXPECT_TRUE(std::isnan(res[0][5])) << name;
    EXPECT_EQ(res[0][17], std::numeric_limits<float>::infinity()) << name;
    EXPECT_EQ(res[0][2000], -std::numeric_limits<float>::infinity()) << name;
    for (size_t i = 0; i < n; ++i) {
      if (i == 5 || i == 17 || i == 2000) continue;
      ASSERT_TRUE(std::isfinite(res[0][i])) << name << " element " << i << " spoiled by a neighbour's NaN/Inf";
      if (name.rfind("flash", 0) != 0) {
        ASSERT_LE(std::fabs(res[0][i] - exact[i]), 3 * std::ldexp(1.0, -8) * mag[i]) << name << " " << i;
      }
    }
    if (name.rfind("flash", 0) == 0) {
      auto model = testref::quantizedModel(inputs, o);
      for (size_t i = 0; i < n; ++i) {
        if (i == 5) continue;
        ASSERT_EQ(model[i], res[0][i]) << name << " element " << i;
      }
    }
    for (int r = 1; r < 3; ++r) EXPECT_TRUE(testref::sameBits(res[0], res[static_cast<size_t>(r)])) << name;
  }
}

TEST(Allreduce, MismatchedSizesFailOnEveryRankWithoutHanging) {
  std::vector<std::string> algos = kExactAlgos;
  algos.insert(algos.end(), kFlashAlgos.begin(), kFlashAlgos.end());
  algos.push_back("auto");
  for (const auto& name : algos) {
    for (size_t extra : {size_t{1}, size_t{100000}}) {
      AllreduceOptions o = allreduceOptionsFromName(name);
      o.chunk_elems = 8192;
      const auto t0 = Clock::now();
      auto errors = runThreadRanksCollect(
          4,
          [&](Communicator& c) {
            std::vector<float> x(c.rank() == 2 ? 20000 + extra : 20000, 1.f);
            allreduce(c, x, o);
          },
          20s);
      EXPECT_LT(Clock::now() - t0, 10s) << name << ": the error took too long";
      for (int r = 0; r < 4; ++r) {
        ASSERT_TRUE(errors[static_cast<size_t>(r)]) << name << " +" << extra << ": rank " << r << " did not fail";
        try {
          std::rethrow_exception(errors[static_cast<size_t>(r)]);
        } catch (const Error& e) {
          const std::string what = e.what();
          EXPECT_TRUE(what.find("mismatch") != std::string::npos || what.find("elements") != std::string::npos) << what;
        }
      }
    }
  }
}

TEST(Allreduce, InvalidOptionsAreRejectedOnEveryRank) {
  AllreduceOptions o = allreduceOptionsFromName("flash-int4");
  o.reduce_scatter.group_size = 100;
  auto errors = runThreadRanksCollect(2, [&](Communicator& c) {
    std::vector<float> x(1000, 1.f);
    allreduce(c, x, o);
  });
  for (auto& e : errors) {
    ASSERT_TRUE(e);
    EXPECT_THROW(std::rethrow_exception(e), InvalidArgument);
  }
  EXPECT_THROW(allreduceOptionsFromName("flash-int3"), InvalidArgument);
}

TEST(Allreduce, NativeIsRefusedClearlyOnTheThreadTransport) {
  auto errors = runThreadRanksCollect(2, [&](Communicator& c) {
    std::vector<float> x(10, 1.f);
    allreduce(c, x, allreduceOptionsFromName("mpi"));
  });
  for (auto& e : errors) {
    ASSERT_TRUE(e);
    try {
      std::rethrow_exception(e);
    } catch (const InvalidArgument& ex) {
      EXPECT_NE(std::string(ex.what()).find("no native all-reduce"), std::string::npos) << ex.what();
    }
  }
}

// allreduceWithError: the data come out exactly as allreduce() leaves them, and the ranks' errors add up to the
// exact sum minus the result (so carrying them into the next all-reduce cancels this one's error there).
TEST(AllreduceWithError, ErrorsSumToExactMinusResult) {
  for (const char* name : {"flash-int4", "flash-int6", "flash-int8", "flash-int4-int8", "twostep-bf16", "twostep-fp32",
                           "flash-int4-rot"}) {
    for (int ranks : {2, 3, 4}) {
      for (size_t n : {size_t{1}, size_t{1000}, size_t{65539}}) {
        SCOPED_TRACE(fmt::format("{} ranks {} n {}", name, ranks, n));
        const bool rot = std::string(name) == "flash-int4-rot";
        AllreduceOptions o = allreduceOptionsFromName(rot ? "flash-int4" : name);
        o.reduce_scatter.rotate = o.all_gather.rotate = rot;
        o.reduce_scatter.clip = o.all_gather.clip = rot;
        o.chunk_elems = 4096;
        const auto plain = runAllreduce(ranks, n, o);
        std::vector<std::vector<float>> res(static_cast<size_t>(ranks)), err(static_cast<size_t>(ranks));
        runThreadRanks(ranks, [&](Communicator& c) {
          auto x = testref::rankInput(c.rank(), n);
          std::vector<float> e(n, 123.f);  // overwritten
          allreduceWithError(c, x, e, o);
          res[static_cast<size_t>(c.rank())] = std::move(x);
          err[static_cast<size_t>(c.rank())] = std::move(e);
        });
        expectReplicasIdentical(res);
        ASSERT_TRUE(testref::sameBits(res[0], plain[0])) << "error tracking changed the result";
        const auto exact = testref::exactSum(ranks, n);
        const auto mag = testref::absSum(ranks, n);
        double worst = 0, total = 0;
        for (size_t i = 0; i < n; ++i) {
          double e = 0, e_abs = 0;
          for (int r = 0; r < ranks; ++r) {
            e += err[static_cast<size_t>(r)][i];
            e_abs += std::fabs(err[static_cast<size_t>(r)][i]);
          }
          const double miss = exact[i] - res[0][i];  // the result's true error
          // What is left is the fp32 rounding of the owner's sum, whose terms (decoded values) are bounded by
          // the inputs' magnitudes plus the errors, and of the error subtractions.
          worst = std::max(worst, std::fabs(miss - e) / (mag[i] + e_abs + 1e-30));
          total += std::fabs(miss);
        }
        EXPECT_LT(worst, 4 * ranks * std::ldexp(1.0, -23));
        if (std::string(name) != "twostep-fp32" && n >= 1000) {  // (one value is a constant group: exact)
          EXPECT_GT(total, 0.0) << "nothing was quantized";
        }
      }
    }
  }
}

TEST(AllreduceWithError, UntrackedAlgorithmsAndBadArguments) {
  runThreadRanks(3, [](Communicator& c) {
    std::vector<float> x(5000, 1.5f + static_cast<float>(c.rank())), e(5000, 7.f);
    allreduceWithError(c, x, e, allreduceOptionsFromName("ring-bf16"));
    EXPECT_EQ(x[17], 7.5f);
    for (float v : e) ASSERT_EQ(v, 0.f) << "ring does not track its error: zeros";
    std::vector<float> short_e(10);
    EXPECT_THROW(allreduceWithError(c, x, short_e, allreduceOptionsFromName("flash-int4")), InvalidArgument);
    EXPECT_THROW(allreduceWithError(c, x, std::span<float>(x.data() + 1, x.size()).first(x.size() - 1),
                                    allreduceOptionsFromName("flash-int4")),
                 InvalidArgument);
  });
}

TEST(AllreduceWithError, NonFiniteValuesCarryNothing) {
  runThreadRanks(2, [](Communicator& c) {
    std::vector<float> x(256, 0.25f * static_cast<float>(c.rank() + 1)), e(256, 1.f);
    for (size_t i = 0; i < x.size(); i += 7) x[i] = 0.1f * static_cast<float>(i);
    x[3] = c.rank() == 0 ? std::numeric_limits<float>::quiet_NaN() : 1.f;
    x[200] = std::numeric_limits<float>::infinity();
    allreduceWithError(c, x, e, allreduceOptionsFromName("flash-int4"));
    EXPECT_TRUE(std::isnan(x[3]));
    EXPECT_EQ(x[200], std::numeric_limits<float>::infinity());
    for (float v : e) ASSERT_TRUE(std::isfinite(v));
    if (c.rank() == 0) {
      EXPECT_EQ(e[3], 0.f);  // its NaN (rank 1's finite 1.0 has an ordinary error)
    }
    EXPECT_EQ(e[200], 0.f);  // Inf on both
  });
}
