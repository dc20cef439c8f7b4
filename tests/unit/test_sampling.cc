// Token choice on one rank (sampling.h): the Sampler's stream, option checks, greedy semantics, and the
// sampled distribution against the exact filtered softmax for every filter and their combinations.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/sampling_reference.h"
#include "flashring/sampling.h"
#include "flashring/thread_comm.h"

using namespace flashring;

namespace {

// chooseToken on a one-rank communicator, `draws` times over the same logits.
std::vector<TokenId> drawMany(const std::vector<float>& z, const SamplingOptions& o, int draws, uint64_t seed,
                              ChoiceStats* last = nullptr) {
  std::vector<TokenId> out;
  runThreadRanks(1, [&](Communicator& c) {
    Sampler s(seed);
    for (int i = 0; i < draws; ++i) out.push_back(chooseToken(c, z, 0, static_cast<int64_t>(z.size()), o, s, last));
  });
  return out;
}

SamplingOptions opts(float t, int k = 0, float p = 1.f, float min_p = 0.f) {
  SamplingOptions o;
  o.temperature = t;
  o.top_k = k;
  o.top_p = p;
  o.min_p = min_p;
  return o;
}

void expectMatchesDistribution(const std::vector<float>& z, const SamplingOptions& o, int draws, uint64_t seed) {
  ChoiceStats st;
  const auto toks = drawMany(z, o, draws, seed, &st);
  std::vector<int64_t> counts(z.size(), 0);
  for (TokenId t : toks) {
    ASSERT_GE(t, 0);
    ASSERT_LT(static_cast<size_t>(t), z.size());
    ++counts[static_cast<size_t>(t)];
  }
  const auto p = testref::filteredDistribution(z, o);
  const auto r = testref::fit(counts, p);
  EXPECT_TRUE(r.ok()) << "T " << o.temperature << " k " << o.top_k << " p " << o.top_p << " min_p " << o.min_p << ": "
                      << r.describe();
  int64_t support = 0;
  for (double q : p) support += q > 0;
  EXPECT_EQ(st.kept, o.top_k == 0 && o.top_p == 1.f && o.min_p == 0.f ? static_cast<int64_t>(z.size()) : support);
}

}  // namespace

TEST(Sampler, IsSplitmix64) {
  // splitmix64's published first outputs for seeds 0 and 1234567.
  Sampler a(0);
  EXPECT_EQ(a.nextU64(), 0xe220a8397b1dcdafull);
  EXPECT_EQ(a.nextU64(), 0x6e789e6aa1b965f4ull);
  EXPECT_EQ(a.nextU64(), 0x06c45d188009454full);
  Sampler b(1234567);
  EXPECT_EQ(b.nextU64(), 6457827717110365317ull);
  EXPECT_EQ(b.nextU64(), 3203168211198807973ull);
  EXPECT_EQ(b.step(), 2u);
  b.seek(0);
  EXPECT_EQ(b.nextU64(), 6457827717110365317ull);
}

TEST(Sampler, DoublesAreTheTop53Bits) {
  Sampler s(42), t(42);
  for (int i = 0; i < 1000; ++i) {
    const uint64_t x = t.nextU64();
    const double d = s.nextDouble();
    EXPECT_EQ(d, static_cast<double>(x >> 11) / 9007199254740992.0);
    EXPECT_GE(d, 0.0);
    EXPECT_LT(d, 1.0);
  }
  EXPECT_EQ(Sampler(42).nextDouble(), 0.7415648787718233);  // pinned: the same on every platform
}

TEST(SamplingOptions, ValidationNamesTheField) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct Case {
    SamplingOptions o;
    const char* field;
  };
  std::vector<Case> bad = {
      {opts(-0.5f), "temperature"},        {opts(nan), "temperature"},       {opts(1.f, -1), "top_k"},
      {opts(1.f, 0, 0.f), "top_p"},        {opts(1.f, 0, 1.5f), "top_p"},    {opts(1.f, 0, nan), "top_p"},
      {opts(1.f, 0, 1.f, -0.1f), "min_p"}, {opts(1.f, 0, 1.f, 1.f), "min_p"}};
  for (const auto& c : bad) {
    try {
      validateSamplingOptions(c.o);
      ADD_FAILURE() << "accepted bad " << c.field;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("SamplingOptions.") + c.field), std::string::npos) << e.what();
    }
    // chooseToken refuses them too, before choosing anything.
    std::vector<float> z = {1.f, 2.f};
    EXPECT_THROW(drawMany(z, c.o, 1, 1), InvalidArgument) << c.field;
  }
  EXPECT_NO_THROW(validateSamplingOptions(opts(0.f)));
  EXPECT_NO_THROW(validateSamplingOptions(opts(0.8f, 40, 0.95f, 0.05f)));
}

TEST(TokenChoice, GreedyIsFirstMaximum) {
  std::vector<float> z = {1.f, 3.f, -2.f, 3.f, 0.f};
  EXPECT_EQ(drawMany(z, opts(0.f), 1, 1)[0], 1);
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> all_neg_inf = {-inf, -inf, -inf};
  EXPECT_EQ(drawMany(all_neg_inf, opts(0.f), 1, 1)[0], 0);
  std::vector<float> with_inf = {1.f, inf, inf};
  EXPECT_EQ(drawMany(with_inf, opts(0.f), 1, 1)[0], 1);
  // Greedy takes no draw from the sampler.
  runThreadRanks(1, [&](Communicator& c) {
    Sampler s(3);
    chooseToken(c, z, 0, 5, opts(0.f), s);
    EXPECT_EQ(s.step(), 0u);
    chooseToken(c, z, 0, 5, opts(1.f), s);
    EXPECT_EQ(s.step(), 1u);
  });
}

TEST(TokenChoice, NanLogitIsAnErrorNamingTheToken) {
  std::vector<float> z = {1.f, 2.f, std::numeric_limits<float>::quiet_NaN(), 5.f, std::nanf("")};
  for (const auto& o : {opts(0.f), opts(1.f), opts(0.7f, 3), opts(1.f, 0, 0.9f)}) {
    try {
      drawMany(z, o, 1, 1);
      ADD_FAILURE() << "NaN logit gave a token";
    } catch (const InvalidArgument&) {
      ADD_FAILURE() << "NaN is not an argument error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("token 2 is NaN"), std::string::npos) << e.what();
    }
  }
}

TEST(TokenChoice, SamplingNeedsFiniteLogits) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> pos = {1.f, inf, 0.f};
  EXPECT_THROW(drawMany(pos, opts(1.f), 1, 1), Error);
  std::vector<float> neg = {-inf, -inf};
  EXPECT_THROW(drawMany(neg, opts(1.f, 0, 0.5f), 1, 1), Error);
  // -inf tokens are never drawn.
  std::vector<float> masked = {-inf, 0.f, -inf, 0.5f, -inf};
  for (const auto& o : {opts(1.f), opts(2.f, 4), opts(1.f, 0, 0.999f)}) {
    for (TokenId t : drawMany(masked, o, 500, 9)) EXPECT_TRUE(t == 1 || t == 3) << t;
  }
}

TEST(TokenChoice, TopK1IsGreedy) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const auto z = testref::makeLogits(300, seed, 6.f, /*ties=*/true);
    const TokenId g = drawMany(z, opts(0.f), 1, seed)[0];
    for (TokenId t : drawMany(z, opts(1.5f, 1), 5, seed)) EXPECT_EQ(t, g);
    for (TokenId t : drawMany(z, opts(1.5f, 1, 0.5f, 0.2f), 5, seed)) EXPECT_EQ(t, g);
  }
}

TEST(TokenChoice, ReproducibleForASeed) {
  const auto z = testref::makeLogits(500, 3);
  for (const auto& o : {opts(1.f), opts(0.8f, 40), opts(1.f, 0, 0.9f), opts(1.f, 0, 1.f, 0.05f)}) {
    const auto a = drawMany(z, o, 200, 77), b = drawMany(z, o, 200, 77), c = drawMany(z, o, 200, 78);
    EXPECT_EQ(a, b);
    EXPECT_NE(a, c);
  }
}

TEST(TokenChoice, DistributionTemperatureOnly) {
  const auto z = testref::makeLogits(40, 11, 4.f);
  for (float t : {0.5f, 1.f, 1.7f}) expectMatchesDistribution(z, opts(t), 20000, 5);
}

TEST(TokenChoice, DistributionTopK) {
  const auto z = testref::makeLogits(200, 12, 6.f, /*ties=*/true);
  for (int k : {2, 7, 30}) expectMatchesDistribution(z, opts(1.f, k), 20000, 6);
}

TEST(TokenChoice, DistributionTopP) {
  const auto z = testref::makeLogits(200, 13, 6.f);
  for (float p : {0.3f, 0.8f, 0.95f}) expectMatchesDistribution(z, opts(0.9f, 0, p), 20000, 7);
}

TEST(TokenChoice, DistributionMinP) {
  const auto z = testref::makeLogits(200, 14, 6.f);
  for (float m : {0.02f, 0.1f, 0.5f}) expectMatchesDistribution(z, opts(1.2f, 0, 1.f, m), 20000, 8);
}

TEST(TokenChoice, DistributionCombinations) {
  const auto z = testref::makeLogits(300, 15, 7.f, /*ties=*/true);
  expectMatchesDistribution(z, opts(0.8f, 40, 0.95f, 0.05f), 20000, 9);  // llama.cpp's defaults
  expectMatchesDistribution(z, opts(1.3f, 20, 0.7f), 20000, 10);
  expectMatchesDistribution(z, opts(0.6f, 0, 0.9f, 0.01f), 20000, 11);
  expectMatchesDistribution(z, opts(1.f, 50, 1.f, 0.2f), 20000, 12);
}

TEST(TokenChoice, DistributionNeedsMoreThanTheFirstRound) {
  // Nearly flat logits: top-p 0.97 and min-p 0.05 keep far more than kSamplingCandidates tokens, so the
  // candidates are fetched in further rounds and the result is still the exact filtered distribution.
  const auto z = testref::makeLogits(1500, 16, 0.5f);
  ChoiceStats st;
  drawMany(z, opts(1.f, 0, 0.97f), 1, 1, &st);
  EXPECT_GT(st.kept, kSamplingCandidates);
  EXPECT_GT(st.candidates, kSamplingCandidates);
  expectMatchesDistribution(z, opts(1.f, 0, 0.97f), 5000, 13);
  expectMatchesDistribution(z, opts(1.f, 0, 1.f, 0.3f), 5000, 14);
}

TEST(TokenChoice, StatsOnOneRank) {
  const auto z = testref::makeLogits(100, 17);
  ChoiceStats st;
  drawMany(z, opts(0.f), 1, 1, &st);
  EXPECT_EQ(st.path, ChoicePath::Greedy);
  EXPECT_EQ(st.bytes_sent, 0u);
  EXPECT_EQ(st.rounds, 0);
  drawMany(z, opts(1.f), 1, 1, &st);
  EXPECT_EQ(st.path, ChoicePath::FullVocab);
  EXPECT_EQ(st.kept, 100);
  drawMany(z, opts(1.f, 10), 1, 1, &st);
  EXPECT_EQ(st.path, ChoicePath::Candidates);
  EXPECT_EQ(st.candidates, 10);
  EXPECT_EQ(st.kept, 10);
  // top_k >= vocabulary is off: the unfiltered path.
  drawMany(z, opts(1.f, 1000), 1, 1, &st);
  EXPECT_EQ(st.path, ChoicePath::FullVocab);
}

TEST(TokenChoice, GatherLogitsOnOneRank) {
  const auto z = testref::makeLogits(33, 18);
  runThreadRanks(1, [&](Communicator& c) {
    ChoiceStats st;
    EXPECT_EQ(gatherLogits(c, z, 0, 33, &st), z);
    EXPECT_EQ(st.bytes_sent, 0u);
    EXPECT_THROW(gatherLogits(c, z, 1, 34), InvalidArgument);
    EXPECT_THROW(gatherLogits(c, z, 0, 40), InvalidArgument);
  });
}
