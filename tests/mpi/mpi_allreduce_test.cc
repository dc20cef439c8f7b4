// Every all-reduce algorithm on real MPI ranks: fp64 reference, bit-exact models of the quantized and one-shot
// ones, replica consistency across processes, NaN/Inf, mismatched sizes failing on every rank, and Auto's choice.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/allreduce_reference.h"
#include "flashring/allreduce.h"
#include "mpi_harness.h"

using namespace flashring;
using namespace flashring::mpitest;

namespace {

// Hash of the result compared across processes (replica consistency).
uint64_t hashOf(const std::vector<float>& v) {
  uint64_t h = 1469598103934665603ull;
  const auto* b = reinterpret_cast<const unsigned char*>(v.data());
  for (size_t i = 0; i < v.size() * 4; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

// An all-reduce name, or "<name>-rot-clip" for the codec's rotation and clipping on both stages
// (quant::Config::rotate/clip; the one-shot sends the first stage's codec); pipelined in chunks of 8192.
AllreduceOptions optionsOf(const std::string& name) {
  const bool rot_clip = name.size() > 9 && name.compare(name.size() - 9, 9, "-rot-clip") == 0;
  AllreduceOptions o = allreduceOptionsFromName(rot_clip ? name.substr(0, name.size() - 9) : name);
  o.reduce_scatter.rotate = o.all_gather.rotate = rot_clip;
  o.reduce_scatter.clip = o.all_gather.clip = rot_clip;
  o.chunk_elems = 8192;
  return o;
}

bool sameOnAllRanks(uint64_t h) {
  uint64_t mn = 0, mx = 0;
  MPI_Allreduce(&h, &mn, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&h, &mx, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  return mn == mx;
}

}  // namespace

class MpiAllreduce : public MpiTest, public ::testing::WithParamInterface<std::string> {};
class MpiAllreduceWithError : public MpiTest {};

// Across processes: the errors the ranks report add up to the exact sum minus the result.
TEST_F(MpiAllreduceWithError, ErrorsSumToExactMinusResult) {
  for (const std::string name : {"flash-int4", "flash-int6", "twostep-bf16", "flash-int4-rot-clip", "oneshot-int4",
                                 "oneshot-bf16", "oneshot-int8-rot-clip"}) {
    const size_t n = 20011;
    AllreduceOptions o = optionsOf(name);
    auto x = testref::rankInput(rank(), n);
    std::vector<float> e(n);
    allreduceWithError(comm(), x, e, o);
    EXPECT_TRUE(sameOnAllRanks(hashOf(x))) << name;
    std::vector<double> e64(e.begin(), e.end()), sum(n), abs64(n), sum_abs(n);
    for (size_t i = 0; i < n; ++i) abs64[i] = std::fabs(e64[i]);
    MPI_Allreduce(e64.data(), sum.data(), static_cast<int>(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(abs64.data(), sum_abs.data(), static_cast<int>(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    const auto exact = testref::exactSum(size(), n);
    const auto mag = testref::absSum(size(), n);
    double worst = 0, total = 0;
    for (size_t i = 0; i < n; ++i) {
      const double miss = exact[i] - x[i];
      worst = std::max(worst, std::fabs(miss - sum[i]) / (mag[i] + sum_abs[i] + 1e-30));
      total += std::fabs(miss);
    }
    EXPECT_LT(worst, 4 * size() * std::ldexp(1.0, -23)) << name;
    if (size() > 1) {
      EXPECT_GT(total, 0.0) << name;
    }
  }
}
class MpiAllreduceErrors : public MpiTest {};

TEST_P(MpiAllreduce, MatchesReferenceAndIsIdenticalOnEveryRank) {
  const std::string name = GetParam();
  for (size_t n : {size_t{0}, size_t{1}, size_t{127}, size_t{576}, size_t{4096}, size_t{5000}, size_t{100003}}) {
    AllreduceOptions o = optionsOf(name);
    auto x = testref::rankInput(rank(), n);
    AllreduceStats st;
    allreduce(comm(), x, o, &st);
    EXPECT_EQ(st.algorithm, allreduceAutoChoice(n, size(), o)) << name << " n=" << n;
    EXPECT_TRUE(sameOnAllRanks(hashOf(x))) << name << " n=" << n << ": ranks hold different results";
    const auto exact = testref::exactSum(size(), n);
    const auto mag = testref::absSum(size(), n);
    if (name.rfind("flash", 0) == 0 || name.rfind("oneshot", 0) == 0) {
      std::vector<std::vector<float>> inputs;
      for (int r = 0; r < size(); ++r) inputs.push_back(testref::rankInput(r, n));
      const auto model = name[0] == 'o' ? testref::oneShotModel(inputs, o) : testref::quantizedModel(inputs, o);
      EXPECT_TRUE(testref::sameBits(model, x)) << name << " n=" << n << " differs from the model";
    } else {
      const bool bf16 = name.find("bf16") != std::string::npos;
      const double rel = bf16 ? size() * std::ldexp(1.0, -8) + 1e-6 : (size() + 1) * std::ldexp(1.0, -23);
      for (size_t i = 0; i < n; ++i) {
        ASSERT_LE(std::fabs(x[i] - exact[i]), rel * mag[i] + 1e-30) << name << " n=" << n << " element " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, MpiAllreduce,
                         ::testing::Values("ring-fp32", "ring-bf16", "twostep-fp32", "twostep-bf16", "mpi", "auto",
                                           "flash-int8", "flash-int6", "flash-int4", "flash-int4-int8",
                                           "flash-int4-rot-clip", "oneshot-fp32", "oneshot-bf16", "oneshot-int8",
                                           "oneshot-int4", "oneshot-int4-rot-clip"),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string s = i.param;
                           for (auto& c : s) c = c == '-' ? '_' : c;
                           return s;
                         });

TEST_F(MpiAllreduceErrors, NanAndInfSurviveTheQuantizedPath) {
  FLASHRING_REQUIRE_RANKS(2);
  auto x = testref::rankInput(rank(), 4000);
  if (rank() == 1) x[10] = std::numeric_limits<float>::quiet_NaN();
  if (rank() == 0) x[3000] = std::numeric_limits<float>::infinity();
  allreduce(comm(), x, allreduceOptionsFromName("flash-int4"));
  EXPECT_TRUE(std::isnan(x[10]));
  EXPECT_EQ(x[3000], std::numeric_limits<float>::infinity());
  for (size_t i = 0; i < x.size(); ++i) {
    if (i == 10 || i == 3000) continue;
    ASSERT_TRUE(std::isfinite(x[i])) << "element " << i;
  }
}

TEST_F(MpiAllreduceErrors, MismatchedSizesFailOnEveryRankWithoutHanging) {
  FLASHRING_REQUIRE_RANKS(2);
  for (const char* name : {"ring-fp32", "twostep-bf16", "flash-int8", "mpi", "oneshot-fp32", "oneshot-int4"}) {
    auto c = freshComm();
    c->setTimeout(std::chrono::milliseconds(20000));
    std::vector<float> x(rank() == size() - 1 ? 30001 : 30000, 1.f);
    AllreduceOptions o = allreduceOptionsFromName(name);
    o.chunk_elems = 4096;
    const auto t0 = Clock::now();
    bool threw = false;
    std::string what;
    try {
      allreduce(*c, x, o);
    } catch (const Error& e) {
      threw = true;
      what = e.what();
    }
    EXPECT_TRUE(threw) << name << ": rank " << rank() << " did not fail";
    EXPECT_LT(Clock::now() - t0, std::chrono::seconds(15)) << name << ": " << what;
    EXPECT_TRUE(what.find("mismatch") != std::string::npos || what.find("elements") != std::string::npos ||
                what.find("differs") != std::string::npos)
        << name << ": " << what;
  }
}

// Auto without a link model: the one-shot for the decode sizes, the two-step above 32 KiB, on every process; and
// processes whose counts send Auto down different paths fail at the first message, not at the deadline.
TEST_F(MpiAllreduceErrors, AutoPicksOneShotForSmallAndTwoStepForLarge) {
  for (size_t n : {size_t{576}, size_t{4096}, size_t{50000}}) {
    auto x = testref::rankInput(rank(), n);
    AllreduceStats st;
    allreduce(comm(), x, AllreduceOptions{}, &st);
    const auto want = n < 8192 ? AllreduceAlgorithm::OneShot : AllreduceAlgorithm::TwoStep;
    EXPECT_EQ(st.algorithm, want) << n;
    EXPECT_TRUE(sameOnAllRanks(hashOf(x))) << n;
    auto ref = testref::rankInput(rank(), n);
    allreduce(comm(), ref, allreduceOptionsFromName("twostep-fp32"));
    EXPECT_TRUE(testref::sameBits(ref, x)) << n << ": Auto's exact paths give the two-step fp32 bits";
  }
}

TEST_F(MpiAllreduceErrors, AutoThatResolvesDifferentlyFailsFast) {
  FLASHRING_REQUIRE_RANKS(2);
  auto c = freshComm();
  c->setTimeout(std::chrono::milliseconds(20000));
  std::vector<float> x(rank() == size() - 1 ? 20000 : 1000, 1.f);  // two-step there, one-shot elsewhere
  const auto t0 = Clock::now();
  std::string what;
  try {
    allreduce(*c, x, AllreduceOptions{});
  } catch (const Error& e) {
    what = e.what();
  }
  EXPECT_FALSE(what.empty()) << "rank " << rank() << " did not fail";
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(15)) << what;
  EXPECT_TRUE(what.find("mismatch") != std::string::npos || what.find("elements") != std::string::npos) << what;
}
