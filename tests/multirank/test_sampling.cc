// Token choice over a vocabulary-parallel head on thread ranks (sampling.h): greedy equals the argmax of
// the concatenated logits, sampled tokens are the same on every rank and on every TP degree (1..4, uneven
// and empty slices), the multi-round fetch, the costs, errors on every rank, and gatherLogits.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/sampling_reference.h"
#include "flashring/sampling.h"
#include "flashring/thread_comm.h"

using namespace flashring;
using namespace std::chrono_literals;

namespace {

SamplingOptions opts(float t, int k = 0, float p = 1.f, float min_p = 0.f) {
  SamplingOptions o;
  o.temperature = t;
  o.top_k = k;
  o.top_p = p;
  o.min_p = min_p;
  return o;
}

std::string name(const SamplingOptions& o) {
  return "T " + std::to_string(o.temperature) + " k " + std::to_string(o.top_k) + " p " + std::to_string(o.top_p) +
         " min_p " + std::to_string(o.min_p);
}

struct TpRun {
  std::vector<std::vector<TokenId>> tokens;  // per rank, per step
  std::vector<ChoiceStats> last;             // per rank, of the last step
};

// `steps` choices on `n` thread ranks whose slices follow `pattern`; step i chooses over logits[i].
TpRun choose(int n, int pattern, const std::vector<std::vector<float>>& logits, const SamplingOptions& o,
             uint64_t seed = 1234) {
  const int64_t v = static_cast<int64_t>(logits[0].size());
  const auto sizes = testref::splitSizes(v, n, pattern);
  const auto begins = testref::splitBegins(sizes);
  TpRun run;
  run.tokens.resize(static_cast<size_t>(n));
  run.last.resize(static_cast<size_t>(n));
  runThreadRanks(
      n,
      [&](Communicator& c) {
        const size_t r = static_cast<size_t>(c.rank());
        Sampler s(seed);
        for (const auto& z : logits) {
          std::span<const float> mine(z.data() + begins[r], static_cast<size_t>(sizes[r]));
          run.tokens[r].push_back(chooseToken(c, mine, begins[r], v, o, s, &run.last[r]));
        }
      },
      60s);
  return run;
}

std::vector<std::vector<float>> logitSteps(int steps, int64_t v, uint64_t seed, float spread = 8.f, bool ties = false) {
  std::vector<std::vector<float>> out;
  for (int i = 0; i < steps; ++i) out.push_back(testref::makeLogits(v, seed + static_cast<uint64_t>(i), spread, ties));
  return out;
}

void expectSameOnEveryRank(const TpRun& run, const std::string& what) {
  for (size_t r = 1; r < run.tokens.size(); ++r) ASSERT_EQ(run.tokens[r], run.tokens[0]) << what << ": rank " << r;
}

// Every rank's exception, or "" where it returned; `fn` returns normally after catching what it expects.
std::vector<std::exception_ptr> collect(int n, const std::function<void(Communicator&)>& fn) {
  return runThreadRanksCollect(n, fn, 30s);
}

}  // namespace

TEST(TokenChoiceTp, GreedyIsArgmaxOfTheConcatenatedLogits) {
  for (int64_t v : {1, 5, 997}) {
    const auto steps = logitSteps(20, v, 100, 6.f, /*ties=*/true);
    std::vector<TokenId> want;
    for (const auto& z : steps) {
      TokenId best = 0;
      for (size_t i = 1; i < z.size(); ++i)
        if (z[i] > z[static_cast<size_t>(best)]) best = static_cast<TokenId>(i);
      want.push_back(best);
    }
    for (int n = 1; n <= 4; ++n)
      for (int pattern = 0; pattern < 3; ++pattern) {
        const TpRun run = choose(n, pattern, steps, opts(0.f));
        const std::string what =
            "v " + std::to_string(v) + " n " + std::to_string(n) + " pattern " + std::to_string(pattern);
        expectSameOnEveryRank(run, what);
        EXPECT_EQ(run.tokens[0], want) << what;
      }
  }
}

TEST(TokenChoiceTp, SampledTokensAreTheSameOnEveryRankAndTpDegree) {
  const std::vector<SamplingOptions> cases = {opts(1.f),
                                              opts(0.8f, 40),
                                              opts(1.f, 0, 0.9f),
                                              opts(1.f, 0, 1.f, 0.05f),
                                              opts(0.8f, 40, 0.95f, 0.05f),
                                              opts(1.5f, 3),
                                              opts(0.7f, 0, 0.5f, 0.1f),
                                              opts(1.f, 1)};
  for (bool ties : {false, true}) {
    const auto steps = logitSteps(40, 1000, ties ? 300 : 200, 6.f, ties);
    for (const auto& o : cases) {
      const TpRun one = choose(1, 0, steps, o);
      for (int n = 2; n <= 4; ++n)
        for (int pattern = 0; pattern < 3; ++pattern) {
          const TpRun run = choose(n, pattern, steps, o);
          const std::string what =
              name(o) + (ties ? " ties" : "") + " n " + std::to_string(n) + " pattern " + std::to_string(pattern);
          expectSameOnEveryRank(run, what);
          EXPECT_EQ(run.tokens[0], one.tokens[0]) << what << " differs from TP 1";
        }
    }
  }
}

TEST(TokenChoiceTp, ReproducibleRunToRunAndSeedDependent) {
  const auto steps = logitSteps(50, 500, 400);
  const auto o = opts(1.f, 0, 0.95f);
  const TpRun a = choose(3, 0, steps, o, 99), b = choose(3, 0, steps, o, 99), c = choose(3, 0, steps, o, 100);
  EXPECT_EQ(a.tokens[0], b.tokens[0]);
  EXPECT_NE(a.tokens[0], c.tokens[0]);
}

TEST(TokenChoiceTp, TopPAndMinPFetchMoreCandidatesWhenNeeded) {
  // Nearly flat logits: the filters keep far more tokens than the first round carries.
  const auto steps = logitSteps(8, 3001, 500, 0.5f);
  for (const auto& o : {opts(1.f, 0, 0.97f), opts(1.f, 0, 1.f, 0.4f), opts(0.9f, 0, 0.99f, 0.2f)}) {
    const TpRun one = choose(1, 0, steps, o);
    for (int n = 2; n <= 4; ++n) {
      const TpRun run = choose(n, 0, steps, o);
      expectSameOnEveryRank(run, name(o));
      EXPECT_EQ(run.tokens[0], one.tokens[0]) << name(o) << " n " << n;
      EXPECT_GT(run.last[0].rounds, 1) << name(o) << " n " << n;
      EXPECT_GT(run.last[0].kept, kSamplingCandidates * n) << name(o);
    }
  }
}

TEST(TokenChoiceTp, CostsPerChoice) {
  const int n = 4;
  const int64_t v = 4000;
  const auto steps = logitSteps(1, v, 600);
  const auto sizes = testref::splitSizes(v, n, 0);
  const uint64_t header = 96;
  {
    const TpRun run = choose(n, 0, steps, opts(0.f));
    for (int r = 0; r < n; ++r) {
      const auto& st = run.last[static_cast<size_t>(r)];
      EXPECT_EQ(st.path, ChoicePath::Greedy);
      EXPECT_EQ(st.bytes_sent, (n - 1) * header);
      EXPECT_EQ(st.messages, n - 1);
      EXPECT_EQ(st.rounds, 1);
    }
  }
  {
    const TpRun run = choose(n, 0, steps, opts(0.8f, 40));
    for (int r = 0; r < n; ++r) {
      const auto& st = run.last[static_cast<size_t>(r)];
      EXPECT_EQ(st.path, ChoicePath::Candidates);
      EXPECT_EQ(st.bytes_sent, (n - 1) * (header + 40 * 8));
      EXPECT_EQ(st.rounds, 1);
      EXPECT_EQ(st.candidates, n * 40);
      EXPECT_EQ(st.kept, 40);
    }
  }
  {
    const TpRun run = choose(n, 0, steps, opts(1.f));
    uint64_t token_bytes = 0;
    for (int r = 0; r < n; ++r) {
      const auto& st = run.last[static_cast<size_t>(r)];
      EXPECT_EQ(st.path, ChoicePath::FullVocab);
      EXPECT_EQ(st.rounds, 2);
      EXPECT_GE(st.bytes_sent, (n - 1) * header);
      token_bytes += st.bytes_sent - (n - 1) * header;
    }
    EXPECT_EQ(token_bytes, (n - 1) * sizeof(TokenId));  // one owner sent the token
  }
  // gatherLogits, for comparison: every slice to every other rank.
  runThreadRanks(n, [&](Communicator& c) {
    const auto begins = testref::splitBegins(sizes);
    const size_t r = static_cast<size_t>(c.rank());
    ChoiceStats st;
    gatherLogits(c, std::span<const float>(steps[0].data() + begins[r], static_cast<size_t>(sizes[r])), begins[r], v,
                 &st);
    EXPECT_EQ(st.bytes_sent, (n - 1) * (24 + static_cast<uint64_t>(sizes[r]) * 4));
    EXPECT_EQ(st.rounds, 1);
  });
}

TEST(TokenChoiceTp, DistributionOnFourRanks) {
  // The exact filtered softmax, sampled across four uneven slices (the unfiltered path walks the owner's
  // slice; the filtered path merges candidates).
  const auto z = testref::makeLogits(60, 700, 4.f);
  for (const auto& o : {opts(1.f), opts(0.7f, 0, 0.9f, 0.02f), opts(1.2f, 12)}) {
    const TpRun run = choose(4, 1, std::vector<std::vector<float>>(4000, z), o, 4242);
    expectSameOnEveryRank(run, name(o));
    std::vector<int64_t> counts(z.size(), 0);
    for (TokenId t : run.tokens[0]) ++counts[static_cast<size_t>(t)];
    const auto r = testref::fit(counts, testref::filteredDistribution(z, o));
    EXPECT_TRUE(r.ok()) << name(o) << ": " << r.describe();
  }
}

TEST(TokenChoiceTp, NanIsAnErrorOnEveryRankAndTheCommunicatorStaysUsable) {
  const int n = 4;
  const int64_t v = 100;
  auto z = testref::makeLogits(v, 800);
  const auto sizes = testref::splitSizes(v, n, 0);
  const auto begins = testref::splitBegins(sizes);
  const TokenId bad = static_cast<TokenId>(begins[2] + 1);  // in rank 2's slice
  z[static_cast<size_t>(bad)] = std::numeric_limits<float>::quiet_NaN();
  z[static_cast<size_t>(begins[3])] = std::numeric_limits<float>::quiet_NaN();  // a later one too
  const auto clean = testref::makeLogits(v, 801);
  for (const auto& o : {opts(0.f), opts(1.f), opts(1.f, 5), opts(1.f, 0, 0.9f)}) {
    std::vector<std::string> msgs(n);
    std::vector<TokenId> after(n, -1);
    const auto errs = collect(n, [&](Communicator& c) {
      const size_t r = static_cast<size_t>(c.rank());
      Sampler s(5);
      try {
        chooseToken(c, std::span<const float>(z.data() + begins[r], static_cast<size_t>(sizes[r])), begins[r], v, o, s);
      } catch (const AbortedError&) {
        throw;
      } catch (const Error& e) {
        msgs[r] = e.what();
      }
      after[r] = chooseToken(c, std::span<const float>(clean.data() + begins[r], static_cast<size_t>(sizes[r])),
                             begins[r], v, o, s);
    });
    for (int r = 0; r < n; ++r) {
      EXPECT_FALSE(errs[static_cast<size_t>(r)]) << name(o) << ": rank " << r << " failed";
      EXPECT_NE(msgs[static_cast<size_t>(r)].find("token " + std::to_string(bad) + " is NaN"), std::string::npos)
          << name(o) << ": rank " << r << ": '" << msgs[static_cast<size_t>(r)] << "'";
      EXPECT_EQ(after[static_cast<size_t>(r)], after[0]);
    }
  }
}

TEST(TokenChoiceTp, BadArgumentsAreInvalidArgumentOnEveryRank) {
  const int n = 3;
  const int64_t v = 90;
  const auto z = testref::makeLogits(v, 900);
  const auto sizes = testref::splitSizes(v, n, 0);
  const auto begins = testref::splitBegins(sizes);
  struct Case {
    const char* what;
    const char* expect;
    std::function<void(Communicator&, SamplingOptions&, Sampler&, int64_t& begin, int64_t& total)> tweak;
  };
  const std::vector<Case> cases = {
      {"same invalid options", "SamplingOptions.top_p",
       [](Communicator&, SamplingOptions& o, Sampler&, int64_t&, int64_t&) { o.top_p = 1.5f; }},
      {"negative temperature", "SamplingOptions.temperature",
       [](Communicator&, SamplingOptions& o, Sampler&, int64_t&, int64_t&) { o.temperature = -1.f; }},
      {"options differ", "SamplingOptions.top_k differs across ranks",
       [](Communicator& c, SamplingOptions& o, Sampler&, int64_t&, int64_t&) { o.top_k = c.rank() == 2 ? 7 : 5; }},
      {"invalid on one rank", "SamplingOptions.min_p differs",
       [](Communicator& c, SamplingOptions& o, Sampler&, int64_t&, int64_t&) {
         if (c.rank() == 1) o.min_p = 2.f;
       }},
      {"sampler differs", "Sampler differs across ranks",
       [](Communicator& c, SamplingOptions&, Sampler& s, int64_t&, int64_t&) {
         if (c.rank() == 1) s.nextU64();
       }},
      {"slices overlap", "overlaps",
       [](Communicator& c, SamplingOptions&, Sampler&, int64_t& b, int64_t&) {
         if (c.rank() == 2) b -= 1;
       }},
      {"vocab_total differs", "vocab_total differs",
       [](Communicator& c, SamplingOptions&, Sampler&, int64_t&, int64_t& t) {
         if (c.rank() == 1) t += 1;
       }},
  };
  for (const auto& cs : cases)
    for (float temperature : {0.f, 1.f}) {
      if (std::string(cs.what) == "sampler differs" && temperature == 0.f) continue;  // greedy has no sampler
      std::vector<std::string> msgs(n);
      const auto errs = collect(n, [&](Communicator& c) {
        const size_t r = static_cast<size_t>(c.rank());
        SamplingOptions o = opts(temperature, 5, 0.9f, 0.01f);
        Sampler s(1);
        int64_t b = begins[r], t = v;
        cs.tweak(c, o, s, b, t);
        try {
          chooseToken(c, std::span<const float>(z.data() + begins[r], static_cast<size_t>(sizes[r])), b, t, o, s);
        } catch (const InvalidArgument& e) {
          msgs[r] = e.what();
        }
        // The communicator is still consistent: a correct call works.
        Sampler fresh(2);
        chooseToken(c, std::span<const float>(z.data() + begins[r], static_cast<size_t>(sizes[r])), begins[r], v,
                    opts(1.f, 3), fresh);
      });
      for (int r = 0; r < n; ++r) {
        EXPECT_FALSE(errs[static_cast<size_t>(r)]) << cs.what << ": rank " << r << " failed";
        EXPECT_NE(msgs[static_cast<size_t>(r)].find(cs.expect), std::string::npos)
            << cs.what << " T " << temperature << ": rank " << r << ": '" << msgs[static_cast<size_t>(r)] << "'";
      }
    }
}

TEST(TokenChoiceTp, GatherLogitsIsTheConcatenation) {
  const int64_t v = 1001;
  const auto z = testref::makeLogits(v, 1000);
  for (int n = 1; n <= 4; ++n)
    for (int pattern = 0; pattern < 3; ++pattern) {
      const auto sizes = testref::splitSizes(v, n, pattern);
      const auto begins = testref::splitBegins(sizes);
      runThreadRanks(
          n,
          [&](Communicator& c) {
            const size_t r = static_cast<size_t>(c.rank());
            EXPECT_EQ(gatherLogits(c, std::span<const float>(z.data() + begins[r], static_cast<size_t>(sizes[r])),
                                   begins[r], v),
                      z)
                << "n " << n << " pattern " << pattern << " rank " << r;
          },
          30s);
    }
  // A hole in the tiling fails on every rank, leaving the communicator usable.
  const int n = 3;
  const auto sizes = testref::splitSizes(v, n, 0);
  const auto begins = testref::splitBegins(sizes);
  std::atomic<int> caught{0};
  runThreadRanks(n, [&](Communicator& c) {
    const size_t r = static_cast<size_t>(c.rank());
    const int64_t n_r = r == 1 ? sizes[r] - 1 : sizes[r];
    try {
      gatherLogits(c, std::span<const float>(z.data() + begins[r], static_cast<size_t>(n_r)), begins[r], v);
    } catch (const InvalidArgument& e) {
      if (std::string(e.what()).find("no rank holds tokens") != std::string::npos) ++caught;
    }
    EXPECT_EQ(
        gatherLogits(c, std::span<const float>(z.data() + begins[r], static_cast<size_t>(sizes[r])), begins[r], v), z);
  });
  EXPECT_EQ(caught.load(), n);
}
