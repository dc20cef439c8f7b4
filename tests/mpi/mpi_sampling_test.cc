// Token choice with ranks as processes (sampling.h over MpiCommunicator): every rank chooses the same
// tokens, equal to what one rank chooses over the whole vocabulary; NaN fails on every rank; gatherLogits.
#include <gtest/gtest.h>
#include <mpi.h>

#include <limits>
#include <string>
#include <vector>

#include "common/sampling_reference.h"
#include "flashring/sampling.h"
#include "flashring/thread_comm.h"
#include "mpi_harness.h"

using namespace flashring;
using namespace flashring::mpitest;

namespace {

SamplingOptions opts(float t, int k = 0, float p = 1.f, float min_p = 0.f) {
  SamplingOptions o;
  o.temperature = t;
  o.top_k = k;
  o.top_p = p;
  o.min_p = min_p;
  return o;
}

uint64_t hashOf(const std::vector<TokenId>& v) {
  uint64_t h = 1469598103934665603ull;
  for (TokenId t : v) h = (h ^ static_cast<uint32_t>(t)) * 1099511628211ull;
  return h;
}

bool sameOnAllRanks(uint64_t h) {
  uint64_t mn = 0, mx = 0;
  MPI_Allreduce(&h, &mn, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&h, &mx, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  return mn == mx;
}

}  // namespace

class MpiSampling : public MpiTest {};

TEST_F(MpiSampling, EveryRankChoosesTheSameTokensAsOneRank) {
  const int64_t v = 2003;
  const int steps = 30;
  std::vector<std::vector<float>> logits;
  for (int i = 0; i < steps; ++i)
    logits.push_back(testref::makeLogits(v, 50 + static_cast<uint64_t>(i), 6.f, i % 2 == 1));
  const auto sizes = testref::splitSizes(v, size(), 0);
  const auto begins = testref::splitBegins(sizes);
  const size_t r = static_cast<size_t>(rank());
  for (const auto& o : {opts(0.f), opts(1.f), opts(0.8f, 40), opts(1.f, 0, 0.9f), opts(1.f, 0, 1.f, 0.05f),
                        opts(0.8f, 40, 0.95f, 0.05f), opts(1.f, 0, 0.999f)}) {
    const std::string what = "T " + std::to_string(o.temperature) + " k " + std::to_string(o.top_k) + " p " +
                             std::to_string(o.top_p) + " min_p " + std::to_string(o.min_p);
    std::vector<TokenId> got, want;
    Sampler s(7);
    for (const auto& z : logits)
      got.push_back(chooseToken(comm(), std::span<const float>(z.data() + begins[r], static_cast<size_t>(sizes[r])),
                                begins[r], v, o, s));
    // The same choices on one rank over the whole vocabulary, in this process.
    runThreadRanks(1, [&](Communicator& one) {
      Sampler s1(7);
      for (const auto& z : logits) want.push_back(chooseToken(one, z, 0, v, o, s1));
    });
    EXPECT_TRUE(sameOnAllRanks(hashOf(got))) << what << ": ranks chose different tokens";
    EXPECT_EQ(got, want) << what << ": differs from one rank";
  }
}

TEST_F(MpiSampling, NanFailsOnEveryRankAndTheCommunicatorStaysUsable) {
  const int64_t v = 400;
  auto z = testref::makeLogits(v, 60);
  const auto sizes = testref::splitSizes(v, size(), 0);
  const auto begins = testref::splitBegins(sizes);
  const size_t r = static_cast<size_t>(rank());
  const size_t last = static_cast<size_t>(size() - 1);
  const TokenId bad = static_cast<TokenId>(begins[last] + sizes[last] / 2);
  z[static_cast<size_t>(bad)] = std::numeric_limits<float>::quiet_NaN();
  for (const auto& o : {opts(0.f), opts(1.f, 10)}) {
    Sampler s(1);
    std::string msg;
    try {
      chooseToken(comm(), std::span<const float>(z.data() + begins[r], static_cast<size_t>(sizes[r])), begins[r], v, o,
                  s);
    } catch (const AbortedError& e) {
      msg = std::string("aborted: ") + e.what();
    } catch (const Error& e) {
      msg = e.what();
    }
    EXPECT_NE(msg.find("token " + std::to_string(bad) + " is NaN"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("aborted"), std::string::npos) << msg;
  }
  z[static_cast<size_t>(bad)] = 0.f;
  Sampler s(1);
  const TokenId t = chooseToken(comm(), std::span<const float>(z.data() + begins[r], static_cast<size_t>(sizes[r])),
                                begins[r], v, opts(1.f, 10), s);
  EXPECT_TRUE(sameOnAllRanks(static_cast<uint64_t>(t)));
}

TEST_F(MpiSampling, GatherLogitsIsTheConcatenation) {
  const int64_t v = 1999;
  const auto z = testref::makeLogits(v, 70);
  const auto sizes = testref::splitSizes(v, size(), 1);
  const auto begins = testref::splitBegins(sizes);
  const size_t r = static_cast<size_t>(rank());
  ChoiceStats st;
  EXPECT_EQ(gatherLogits(comm(), std::span<const float>(z.data() + begins[r], static_cast<size_t>(sizes[r])), begins[r],
                         v, &st),
            z);
  EXPECT_EQ(st.rounds, size() > 1 ? 1 : 0);
}
