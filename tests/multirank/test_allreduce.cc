// Every all-reduce algorithm on thread ranks: against the fp64 sum, against the sequential models of the
// quantized and one-shot algorithms (bit for bit), replica consistency, odd sizes, NaN/Inf and mismatched sizes,
// and what Auto picks.
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
const std::vector<std::string> kOneShotAlgos = {"oneshot-fp32", "oneshot-bf16", "oneshot-int8",
                                                "oneshot-int6", "oneshot-int5", "oneshot-int4"};

// A one-shot name with codec suffixes: -s<k> spikes, -g<k> group size, -sym, -rot, -clip (on the reduce-scatter
// codec, which the quantized one-shot sends), e.g. "oneshot-int4-s2-rot-clip".
AllreduceOptions oneShotOptions(const std::string& name) {
  size_t end = name.find('-', std::string("oneshot-").size());
  AllreduceOptions o = allreduceOptionsFromName(name.substr(0, end));
  while (end != std::string::npos) {
    const size_t next = name.find('-', end + 1);
    const std::string t = name.substr(end + 1, next == std::string::npos ? std::string::npos : next - end - 1);
    if (t[0] == 's' && t != "sym") {
      o.reduce_scatter.spikes = std::stoi(t.substr(1));
    } else if (t[0] == 'g') {
      o.reduce_scatter.group_size = std::stoi(t.substr(1));
    } else if (t == "sym") {
      o.reduce_scatter.symmetric = true;
    } else if (t == "rot") {
      o.reduce_scatter.rotate = true;
    } else if (t == "clip") {
      o.reduce_scatter.clip = true;
    } else {
      ADD_FAILURE() << "bad one-shot variant " << name;
    }
    end = next;
  }
  return o;
}

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

// The one-shot, with every codec it can send, on N = 1..5 thread ranks and sizes from empty to 100k (576 and 4096:
// the decode all-reduces): bit for bit the sequential model on every rank, allreduceWithError leaving the same data
// and exactly x - decode(encode(x)) as this rank's error, the wire bytes, and the accuracy against the fp64 sum.
using OneShotParams = std::tuple<std::string, int, size_t>;
class OneShotSweep : public ::testing::TestWithParam<OneShotParams> {};

TEST_P(OneShotSweep, MatchesTheModelOnEveryRank) {
  const auto& [name, ranks, n] = GetParam();
  const AllreduceOptions o = oneShotOptions(name);
  ASSERT_EQ(o.algorithm, AllreduceAlgorithm::OneShot);
  // Spikes: inputs with massive activations, which the spike sections then carry.
  std::vector<std::vector<float>> inputs;
  for (int r = 0; r < ranks; ++r)
    inputs.push_back(o.reduce_scatter.spikes > 0 ? testref::massiveRankInput(r, n, 4) : testref::rankInput(r, n));
  std::vector<std::vector<float>> res(static_cast<size_t>(ranks)), res_e(res), err(res);
  std::vector<AllreduceStats> stats(static_cast<size_t>(ranks));
  runThreadRanks(
      ranks,
      [&](Communicator& c) {
        const size_t me = static_cast<size_t>(c.rank());
        auto x = inputs[me];
        allreduce(c, x, o, &stats[me]);
        res[me] = std::move(x);
        auto y = inputs[me];
        std::vector<float> e(n, 123.f);  // overwritten
        allreduceWithError(c, y, e, o);
        res_e[me] = std::move(y);
        err[me] = std::move(e);
      },
      60s);
  expectReplicasIdentical(res);
  ASSERT_TRUE(testref::sameBits(testref::oneShotModel(inputs, o), res[0])) << "differs from the sequential model";
  for (int r = 0; r < ranks; ++r) {
    const size_t k = static_cast<size_t>(r);
    ASSERT_TRUE(testref::sameBits(res[0], res_e[k])) << "rank " << r << ": error tracking changed the result";
    ASSERT_TRUE(testref::sameBits(testref::oneShotErrorModel(inputs[k], ranks, o), err[k])) << "rank " << r;
    EXPECT_EQ(stats[k].algorithm, AllreduceAlgorithm::OneShot);
    // One message of header + encoding to every peer.
    const uint64_t model = allreduceWireBytes(n, ranks, o);
    EXPECT_EQ(stats[k].wire_bytes, ranks == 1 ? 0 : model + 16 * static_cast<uint64_t>(ranks - 1)) << "rank " << r;
  }
  if (ranks == 1 || n == 0) return;
  const auto exact = testref::exactSumOf(inputs);
  std::vector<double> mag(n, 0.0), err_sum(n, 0.0), err_abs(n, 0.0);
  for (int r = 0; r < ranks; ++r) {
    for (size_t i = 0; i < n; ++i) {
      mag[i] += std::fabs(inputs[static_cast<size_t>(r)][i]);
      err_sum[i] += err[static_cast<size_t>(r)][i];
      err_abs[i] += std::fabs(err[static_cast<size_t>(r)][i]);
    }
  }
  // The errors add up to the exact sum minus the result, up to the fp32 rounding of the sum of decoded values.
  for (size_t i = 0; i < n; ++i) {
    const double miss = exact[i] - res[0][i];
    ASSERT_LE(std::fabs(miss - err_sum[i]), 2 * ranks * std::ldexp(1.0, -23) * (mag[i] + err_abs[i]) + 1e-30)
        << "element " << i;
  }
  if (!o.oneshot_quantized) {
    // fp32: N roundings of the sum; bf16: every contribution rounded once (8 significant bits: 2^-8) before them.
    const double rel = (o.payload == Payload::BF16 ? std::ldexp(1.0, -8) : 0.0) + ranks * std::ldexp(1.0, -23);
    for (size_t i = 0; i < n; ++i)
      ASSERT_LE(std::fabs(res[0][i] - exact[i]), rel * mag[i] + 1e-30) << name << " element " << i;
  } else if (o.reduce_scatter.spikes == 0 && o.reduce_scatter.group_size <= 128) {
    // One quantization per contribution (the two-step has two): within the two-step sweep's bounds (for groups of at
    // most 128: wider groups hold more of the rare outliers that set a group's scale).
    const int bits = o.reduce_scatter.bits;
    const double tol = bits == 8 ? 0.02 : (bits == 6 ? 0.1 : (bits == 5 ? 0.2 : 0.4));
    EXPECT_LT(testref::relError(res[0], exact), tol);
  }
}

std::string oneShotSweepName(const ::testing::TestParamInfo<OneShotParams>& info) {
  std::string algo = std::get<0>(info.param);
  for (auto& ch : algo)
    if (ch == '-') ch = '_';
  return fmt::format("{}_r{}_n{}", algo, std::get<1>(info.param), std::get<2>(info.param));
}

INSTANTIATE_TEST_SUITE_P(
    OneShot, OneShotSweep,
    ::testing::Combine(::testing::Values("oneshot-fp32", "oneshot-bf16", "oneshot-int8", "oneshot-int6", "oneshot-int5",
                                         "oneshot-int4", "oneshot-int4-s2", "oneshot-int8-s4-g64",
                                         "oneshot-int4-rot-clip", "oneshot-int4-s1-rot-clip", "oneshot-int8-sym-g32",
                                         "oneshot-int5-g1024"),
                       ::testing::Values(1, 2, 3, 4, 5),
                       ::testing::Values(size_t{0}, size_t{1}, size_t{31}, size_t{576}, size_t{4096}, size_t{100000})),
    oneShotSweepName);

// A rank whose one-shot codec or count differs from its peers' while its message has the same size (rotate; INT4
// tails of 33 and 34 values both take 17 bytes) is named on every rank by the header.
TEST(Allreduce, OneShotRanksThatDisagreeWithEqualMessageSizesFailClearly) {
  ASSERT_EQ(quant::encodedBytes(20001, quant::Config{4, 128, false}), quant::encodedBytes(20002, {4, 128, false}));
  for (const std::string what : {"rotate", "count"}) {
    auto errors = runThreadRanksCollect(3, [&](Communicator& c) {
      AllreduceOptions o = allreduceOptionsFromName("oneshot-int4");
      if (what == "rotate") o.reduce_scatter.rotate = c.rank() == 1;
      const size_t n = what == "count" ? (c.rank() == 1 ? 20002 : 20001) : 4096;
      std::vector<float> x(n, 1.f + static_cast<float>(c.rank()));
      allreduce(c, x, o);
    });
    for (int r = 0; r < 3; ++r) {
      ASSERT_TRUE(errors[static_cast<size_t>(r)]) << what << ": rank " << r << " did not fail";
      try {
        std::rethrow_exception(errors[static_cast<size_t>(r)]);
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(what == "rotate" ? "encoded differently" : "elements"), std::string::npos)
            << e.what();
      }
    }
  }
}

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
    EXPECT_EQ(st.algorithm, AllreduceAlgorithm::OneShot);  // below oneshot_threshold_bytes too
    EXPECT_EQ(small[7], 4.f);
    o.oneshot_threshold_bytes = 1024;
    allreduce(c, small, o, &st);
    EXPECT_EQ(st.algorithm, AllreduceAlgorithm::TwoStep);
    EXPECT_EQ(small[7], 16.f);
    allreduce(c, big, o, &st);
    EXPECT_EQ(st.algorithm, AllreduceAlgorithm::Quantized);
    EXPECT_EQ(big[7], 4.f);  // constant groups are exact
  });
}

// Without a link model: OneShot below 32 KiB (the decode all-reduces of 576 and 4096 floats), TwoStep up to the 1 MiB
// quantize threshold, Quantized above; always exact fp32 below it, whatever payload or codec the options carry.
TEST(Allreduce, AutoPicksOneShotForDecodeSizesAndTwoStepForLarge) {
  AllreduceOptions o;
  o.payload = Payload::BF16;
  o.oneshot_quantized = true;
  for (int ranks : {1, 2, 4, 8}) {
    EXPECT_EQ(allreduceAutoChoice(0, ranks, o), AllreduceAlgorithm::OneShot);
    EXPECT_EQ(allreduceAutoChoice(576, ranks, o), AllreduceAlgorithm::OneShot);
    EXPECT_EQ(allreduceAutoChoice(4096, ranks, o), AllreduceAlgorithm::OneShot);
    EXPECT_EQ(allreduceAutoChoice(8191, ranks, o), AllreduceAlgorithm::OneShot);
    EXPECT_EQ(allreduceAutoChoice(8192, ranks, o), AllreduceAlgorithm::TwoStep);
    EXPECT_EQ(allreduceAutoChoice(100000, ranks, o), AllreduceAlgorithm::TwoStep);
    EXPECT_EQ(allreduceAutoChoice(262144, ranks, o), AllreduceAlgorithm::Quantized);
  }
  AllreduceOptions named = allreduceOptionsFromName("oneshot-int4");
  EXPECT_EQ(allreduceAutoChoice(100000, 4, named), AllreduceAlgorithm::OneShot);  // not Auto: as given
  // What runs is exact fp32: the same bits as TwoStep fp32 (both sum the exact values in rank order from +0.0).
  for (size_t n : {size_t{576}, size_t{4096}, size_t{100000}}) {
    std::vector<std::vector<float>> res(4);
    std::vector<AllreduceAlgorithm> ran(4);
    runThreadRanks(4, [&](Communicator& c) {
      auto x = testref::rankInput(c.rank(), n);
      AllreduceStats st;
      allreduce(c, x, o, &st);
      ran[static_cast<size_t>(c.rank())] = st.algorithm;
      res[static_cast<size_t>(c.rank())] = std::move(x);
    });
    expectReplicasIdentical(res);
    for (auto a : ran) EXPECT_EQ(a, n < 8192 ? AllreduceAlgorithm::OneShot : AllreduceAlgorithm::TwoStep) << n;
    EXPECT_TRUE(testref::sameBits(res[0], runAllreduce(4, n, allreduceOptionsFromName("twostep-fp32"))[0])) << n;
  }
}

// With a link model Auto compares one_shot = a + (N-1) B / b with two_step = 2a + 2 (N-1)/N B / b (star) or
// a + B / b with 2a + 2 B / (N b) (mesh), B = 4 * count.
TEST(Allreduce, AutoWeighsOneShotAgainstTwoStepWithTheLinkModel) {
  AllreduceOptions o;
  o.link.latency_s = 50e-6;
  o.link.bandwidth_Bps = 1e9;
  o.oneshot_threshold_bytes = 0;  // the model, not the threshold, decides
  auto crossover = [&](int N) {   // the smallest count Auto sends to TwoStep
    size_t lo = 0, hi = o.auto_threshold_bytes / 4;
    EXPECT_EQ(allreduceAutoChoice(lo, N, o), AllreduceAlgorithm::OneShot);
    while (hi - lo > 1) {
      const size_t mid = (lo + hi) / 2;
      (allreduceAutoChoice(mid, N, o) == AllreduceAlgorithm::OneShot ? lo : hi) = mid;
    }
    return hi;
  };
  // Star: one-shot wins below B = a b N / ((N-1)(N-2)).
  for (int N : {3, 4, 5, 8}) {
    const double b_star = 50e-6 * 1e9 * N / ((N - 1.0) * (N - 2.0));
    EXPECT_NEAR(static_cast<double>(crossover(N)), b_star / 4, 1.0) << N;
  }
  // Two ranks send the same bytes either way: the one-shot's single round always wins (up to the quantize
  // threshold, where Auto keeps its Flash path).
  EXPECT_EQ(allreduceAutoChoice(262143, 2, o), AllreduceAlgorithm::OneShot);
  EXPECT_EQ(allreduceAutoChoice(262144, 2, o), AllreduceAlgorithm::Quantized);
  // Mesh: one-shot wins below B = a b N / (N - 2).
  o.link.mesh = true;
  for (int N : {3, 4, 8}) EXPECT_NEAR(static_cast<double>(crossover(N)), 50e-6 * 1e9 * N / (N - 2.0) / 4, 1.0) << N;
  // Decode sizes on a 1 Gbit/s star with 100 us per round: 576 floats one-shot, 4096 floats two-step at 4 ranks.
  o.link = {100e-6, 119.6e6, false};
  EXPECT_EQ(allreduceAutoChoice(576, 4, o), AllreduceAlgorithm::OneShot);
  EXPECT_EQ(allreduceAutoChoice(4096, 4, o), AllreduceAlgorithm::TwoStep);
  // The choice on thread ranks is the one allreduceAutoChoice states, on every rank.
  runThreadRanks(4, [&](Communicator& c) {
    for (size_t n : {size_t{576}, size_t{4096}}) {
      std::vector<float> x(n, 0.5f);
      AllreduceStats st;
      allreduce(c, x, o, &st);
      EXPECT_EQ(st.algorithm, allreduceAutoChoice(n, 4, o));
      EXPECT_EQ(x[n - 1], 2.f);
    }
  });
  // A link model that is not a model is rejected on every rank.
  o.link.latency_s = -1;
  auto errors = runThreadRanksCollect(2, [&](Communicator& c) {
    std::vector<float> x(10, 1.f);
    allreduce(c, x, o);
  });
  for (auto& e : errors) {
    ASSERT_TRUE(e);
    EXPECT_THROW(std::rethrow_exception(e), InvalidArgument);
  }
}

// Ranks whose counts differ can make Auto choose differently (one-shot here, two-step there): they still fail on
// every rank at the first message, long before the deadline.
TEST(Allreduce, AutoThatResolvesDifferentlyOnTwoRanksFailsFast) {
  for (size_t big : {size_t{20000}, size_t{300000}}) {
    const auto t0 = Clock::now();
    auto errors = runThreadRanksCollect(
        4,
        [&](Communicator& c) {
          std::vector<float> x(c.rank() == 1 ? big : 1000, 1.f);
          allreduce(c, x, AllreduceOptions{});
        },
        60s);
    EXPECT_LT(Clock::now() - t0, 10s) << big << ": the error took too long";
    for (int r = 0; r < 4; ++r) {
      ASSERT_TRUE(errors[static_cast<size_t>(r)]) << big << ": rank " << r << " did not fail";
      try {
        std::rethrow_exception(errors[static_cast<size_t>(r)]);
      } catch (const Error& e) {
        const std::string what = e.what();
        EXPECT_TRUE(what.find("mismatch") != std::string::npos || what.find("elements") != std::string::npos) << what;
      }
    }
  }
}

TEST(Allreduce, WireBytesMatchTheModel) {
  for (const char* name : {"ring-fp32", "twostep-bf16", "flash-int8", "flash-int4", "oneshot-fp32", "oneshot-bf16",
                           "oneshot-int8", "oneshot-int4"}) {
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
  algos.insert(algos.end(), kOneShotAlgos.begin(), kOneShotAlgos.end());
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
      if (name.rfind("flash", 0) != 0 && !o.oneshot_quantized) {
        ASSERT_LE(std::fabs(res[0][i] - exact[i]), 3 * std::ldexp(1.0, -8) * mag[i]) << name << " " << i;
      }
    }
    if (name.rfind("flash", 0) == 0 || o.algorithm == AllreduceAlgorithm::OneShot) {
      auto model = o.algorithm == AllreduceAlgorithm::OneShot ? testref::oneShotModel(inputs, o)
                                                              : testref::quantizedModel(inputs, o);
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
  algos.insert(algos.end(), kOneShotAlgos.begin(), kOneShotAlgos.end());
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
                           "flash-int4-rot", "oneshot-int4", "oneshot-int8", "oneshot-bf16", "oneshot-int4-rot"}) {
    for (int ranks : {2, 3, 4}) {
      for (size_t n : {size_t{1}, size_t{1000}, size_t{65539}}) {
        SCOPED_TRACE(fmt::format("{} ranks {} n {}", name, ranks, n));
        const std::string sname = name;
        const bool rot = sname.size() > 4 && sname.compare(sname.size() - 4, 4, "-rot") == 0;
        AllreduceOptions o = allreduceOptionsFromName(rot ? sname.substr(0, sname.size() - 4) : sname);
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
  for (const char* name : {"flash-int4", "oneshot-int4"}) {
    runThreadRanks(2, [&](Communicator& c) {
      std::vector<float> x(256, 0.25f * static_cast<float>(c.rank() + 1)), e(256, 1.f);
      for (size_t i = 0; i < x.size(); i += 7) x[i] = 0.1f * static_cast<float>(i);
      x[3] = c.rank() == 0 ? std::numeric_limits<float>::quiet_NaN() : 1.f;
      x[200] = std::numeric_limits<float>::infinity();
      allreduceWithError(c, x, e, allreduceOptionsFromName(name));
      EXPECT_TRUE(std::isnan(x[3])) << name;
      EXPECT_EQ(x[200], std::numeric_limits<float>::infinity()) << name;
      for (float v : e) ASSERT_TRUE(std::isfinite(v)) << name;
      if (c.rank() == 0) {
        EXPECT_EQ(e[3], 0.f) << name;  // its NaN (rank 1's finite 1.0 has an ordinary error)
      }
      EXPECT_EQ(e[200], 0.f) << name;  // Inf on both
    });
  }
}
