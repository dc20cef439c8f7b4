// perplexity() (flashring/perplexity.h) on a tiny model over thread ranks: the figures equal a direct
// computation from the logits (llama-perplexity's windows: BOS first, second half scored), every rank gets
// the same bits, the --kl-divergence figures are consistent with plain runs (exact against itself is zero,
// ln ratio = ln(ppl / base_ppl)), progress reports every window, and bad input fails on every rank.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <random>
#include <vector>

#include "common/engine_fixtures.h"
#include "flashring/gguf.h"
#include "flashring/llama.h"
#include "flashring/perplexity.h"
#include "flashring/thread_comm.h"
#include "flashring/tokenizer.h"

namespace flashring {
namespace {

struct Tiny {
  testref::ModelFixture f = testref::tinyFixture("tiny-uneven");
  std::unique_ptr<Tokenizer> tok;
  Tiny() {
    if (f.present) tok = std::make_unique<Tokenizer>(Tokenizer::fromGguf(gguf::File::open(f.gguf_path)));
  }
};

std::vector<TokenId> randomTokens(size_t n, int n_vocab, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<int> d(0, n_vocab - 1);
  std::vector<TokenId> ids(n);
  for (auto& t : ids) t = d(g);
  return ids;
}

EngineOptions options(int tp, int sp, const std::string& comm) {
  EngineOptions o;
  o.tp = tp;
  o.sp = sp;
  o.allreduce = allreduceOptionsFromName(comm);
  return o;
}

// perplexity() on every rank of a tp x sp grid; checks that every rank got the same figures, returns rank 0's.
PerplexityResult runPerplexity(const Tiny& t, const EngineOptions& eo, std::span<const TokenId> ids,
                               PerplexityOptions po) {
  std::mutex mu;
  std::vector<PerplexityResult> results(static_cast<size_t>(eo.tp * eo.sp));
  testref::runGrid(t.f.gguf_path, eo, [&](Communicator& comm, LlamaEngine& eng) {
    const PerplexityResult r = perplexity(comm, eng, *t.tok, ids, po);
    std::lock_guard<std::mutex> lock(mu);
    results[static_cast<size_t>(comm.rank())] = r;
  });
  for (size_t i = 1; i < results.size(); ++i) {
    const auto &a = results[0], &b = results[i];
    EXPECT_EQ(a.ppl, b.ppl) << "rank " << i;
    EXPECT_EQ(a.ppl_err, b.ppl_err) << "rank " << i;
    EXPECT_EQ(a.tokens, b.tokens) << "rank " << i;
    EXPECT_EQ(a.seconds, b.seconds) << "rank " << i;
    EXPECT_EQ(a.wire_bytes, b.wire_bytes) << "rank " << i;
    EXPECT_EQ(a.kl.has_value(), b.kl.has_value());
    if (a.kl && b.kl) {
      EXPECT_EQ(a.kl->base_ppl, b.kl->base_ppl) << "rank " << i;
      EXPECT_EQ(a.kl->kld, b.kl->kld) << "rank " << i;
      EXPECT_EQ(a.kl->ln_ratio, b.kl->ln_ratio) << "rank " << i;
      EXPECT_EQ(a.kl->ln_ratio_err, b.kl->ln_ratio_err) << "rank " << i;
      EXPECT_EQ(a.kl->same_top1, b.kl->same_top1) << "rank " << i;
    }
  }
  return results[0];
}

// The reference: every window's logits from allLogits() on one rank, log-softmax in double, the NLL of the
// second half; returns {ppl, ppl_err}.
std::pair<double, double> directPerplexity(const Tiny& t, std::span<const TokenId> ids, int n_ctx, int64_t windows) {
  double nll = 0, nll_sq = 0;
  int64_t count = 0;
  testref::runGrid(t.f.gguf_path, options(1, 1, "twostep-fp32"), [&](Communicator&, LlamaEngine& eng) {
    const size_t V = static_cast<size_t>(eng.config().n_vocab);
    for (int64_t c = 0; c < windows; ++c) {
      std::vector<TokenId> w(ids.begin() + c * n_ctx, ids.begin() + (c + 1) * n_ctx);
      w[0] = t.tok->bos();
      const std::vector<float> z = eng.allLogits(w);
      for (int i = n_ctx / 2; i < n_ctx - 1; ++i) {
        const float* row = z.data() + static_cast<size_t>(i) * V;
        double mx = -INFINITY, sum = 0;
        for (size_t v = 0; v < V; ++v) mx = std::max(mx, double(row[v]));
        for (size_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - mx);
        const double a = -(double(row[w[static_cast<size_t>(i) + 1]]) - mx - std::log(sum));
        nll += a;
        nll_sq += a * a;
        ++count;
      }
    }
  });
  const double mean = nll / static_cast<double>(count);
  const double ppl = std::exp(mean);
  const double var = nll_sq / static_cast<double>(count) - mean * mean;
  return {ppl, ppl * std::sqrt(var / static_cast<double>(count - 1))};
}

TEST(Perplexity, MatchesLogitsOnEveryGrid) {
  const Tiny t;
  if (!t.f.present) GTEST_SKIP() << t.f.missing;
  ASSERT_TRUE(t.tok->vocab().add_bos);
  const int n_ctx = 24;
  const std::vector<TokenId> ids = randomTokens(3 * n_ctx + 5, t.f.n_vocab, 3);  // 3 windows and a remainder
  const auto [ppl, err] = directPerplexity(t, ids, n_ctx, 3);
  PerplexityOptions po;
  po.n_ctx = n_ctx;
  for (const auto& [tp, sp] : std::vector<std::pair<int, int>>{{1, 1}, {2, 1}, {1, 2}, {2, 2}}) {
    SCOPED_TRACE(::testing::Message() << "tp " << tp << " sp " << sp);
    const PerplexityResult r = runPerplexity(t, options(tp, sp, "twostep-fp32"), ids, po);
    EXPECT_EQ(r.windows, 3);
    EXPECT_EQ(r.n_ctx, n_ctx);
    EXPECT_EQ(r.text_tokens, static_cast<int64_t>(ids.size()));
    EXPECT_EQ(r.tokens, 3 * (n_ctx - 1 - n_ctx / 2));
    EXPECT_NEAR(r.ppl, ppl, 1e-5 * ppl);
    EXPECT_NEAR(r.ppl_err, err, 1e-4 * err);
    EXPECT_FALSE(r.kl.has_value());
    EXPECT_GE(r.seconds, 0);
    if (tp > 1) {
      EXPECT_GT(r.wire_bytes, 0);
    }
  }
  // max_windows caps the windows.
  po.max_windows = 2;
  const PerplexityResult two = runPerplexity(t, options(1, 1, "twostep-fp32"), ids, po);
  EXPECT_EQ(two.windows, 2);
  EXPECT_NEAR(two.ppl, directPerplexity(t, ids, n_ctx, 2).first, 1e-5 * two.ppl);
}

TEST(Perplexity, KlDivergenceAgainstExact) {
  const Tiny t;
  if (!t.f.present) GTEST_SKIP() << t.f.missing;
  const int n_ctx = 32;
  const std::vector<TokenId> ids = randomTokens(2 * n_ctx, t.f.n_vocab, 5);
  PerplexityOptions po;
  po.n_ctx = n_ctx;
  const EngineOptions exact = options(2, 1, "twostep-fp32");
  EngineOptions int4 = options(2, 1, "flash-int4");
  int4.allreduce.reduce_scatter.spikes = int4.allreduce.all_gather.spikes = 1;
  const PerplexityResult plain_exact = runPerplexity(t, exact, ids, po);
  const PerplexityResult plain_int4 = runPerplexity(t, int4, ids, po);

  po.kl_divergence = true;
  // Exact against itself: the same logits, so every difference is exactly zero.
  const PerplexityResult self = runPerplexity(t, exact, ids, PerplexityOptions(po).testing(exact));
  ASSERT_TRUE(self.kl.has_value());
  EXPECT_EQ(self.kl->kld, 0.0);
  EXPECT_EQ(self.kl->ln_ratio, 0.0);
  EXPECT_EQ(self.kl->ln_ratio_err, 0.0);
  EXPECT_EQ(self.kl->same_top1, 1.0);
  EXPECT_NEAR(self.ppl, plain_exact.ppl, 1e-5 * plain_exact.ppl);
  EXPECT_EQ(self.kl->base_ppl, self.ppl);

  // INT4 against exact: base_ppl is the exact run's, ppl the INT4 run's, and the paired figures agree.
  std::atomic<int> progress_calls{0}, done_sum{0};
  PerplexityOptions pk = PerplexityOptions(po).testing(int4);
  pk.progress = [&](const PerplexityProgress& p) {
    EXPECT_EQ(p.windows, 2);
    EXPECT_EQ(p.text_tokens, static_cast<int64_t>(ids.size()));
    EXPECT_EQ(std::isnan(p.ppl), p.done == 0);
    done_sum += static_cast<int>(p.done);
    ++progress_calls;
  };
  const PerplexityResult q = runPerplexity(t, int4, ids, pk);
  EXPECT_EQ(progress_calls.load(), 2 * 3);  // on both ranks: before the first window and after each
  EXPECT_EQ(done_sum.load(), 2 * (0 + 1 + 2));
  ASSERT_TRUE(q.kl.has_value());
  EXPECT_NEAR(q.ppl, plain_int4.ppl, 1e-5 * plain_int4.ppl);
  EXPECT_NEAR(q.kl->base_ppl, plain_exact.ppl, 1e-5 * plain_exact.ppl);
  EXPECT_NEAR(q.kl->base_ppl * std::exp(q.kl->ln_ratio), q.ppl, 1e-9 * q.ppl);
  EXPECT_GT(q.kl->kld, 0);
  EXPECT_GT(q.kl->ln_ratio_err, 0);
  EXPECT_GE(q.kl->same_top1, 0);
  EXPECT_LE(q.kl->same_top1, 1);
  // The reference passes are not counted: the same all-reduces as the plain INT4 run (score() gathers two
  // floats per scored row besides, the logits path does not).
  EXPECT_NEAR(q.wire_bytes, plain_int4.wire_bytes, 0.02 * plain_int4.wire_bytes);
}

TEST(Perplexity, BadInputFailsOnEveryRank) {
  const Tiny t;
  if (!t.f.present) GTEST_SKIP() << t.f.missing;
  const std::vector<TokenId> ids = randomTokens(20, t.f.n_vocab, 1);
  for (int n_ctx : {21, 3}) {
    PerplexityOptions po;
    po.n_ctx = n_ctx;
    const auto errors = runThreadRanksCollect(2, [&](Communicator& comm) {
      LlamaEngine eng(comm, testref::weightsFor(t.f.gguf_path, 2, comm.rank()), options(2, 1, "twostep-fp32"));
      barrier(comm);
      perplexity(comm, eng, *t.tok, ids, po);
    });
    // Every rank fails by itself, before any message (a rank the other's abort reached first may report that).
    int invalid = 0;
    for (const auto& e : errors) {
      ASSERT_TRUE(e) << "n_ctx " << n_ctx;
      try {
        std::rethrow_exception(e);
      } catch (const InvalidArgument&) {
        ++invalid;
      } catch (const AbortedError&) {
      }
    }
    EXPECT_GE(invalid, 1) << "n_ctx " << n_ctx;
  }
  EXPECT_EQ(perplexityWindows(100, PerplexityOptions{}), 0);
  PerplexityOptions p8;
  p8.n_ctx = 8;
  EXPECT_EQ(perplexityWindows(100, p8), 12);
  p8.max_windows = 5;
  EXPECT_EQ(perplexityWindows(100, p8), 5);
  // The text overload tokenizes as perplexityTokens: BOS first.
  EXPECT_EQ(perplexityTokens(*t.tok, "the cat").front(), t.tok->bos());
}

}  // namespace
}  // namespace flashring
