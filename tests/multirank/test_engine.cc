// The LLaMA engine on a tp x sp grid of thread ranks: tensor and sequence parallelism change nothing but
// rounding (logits against the single-rank run, greedy tokens identical, scores equal), every rank of a TP
// group holds identical bits after each all-reduce, and bad input fails on every rank without a hang.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

#include "common/allreduce_reference.h"
#include "common/engine_fixtures.h"
#include "flashring/llama.h"

namespace flashring {
namespace {

using testref::ModelFixture;

// The plans are compared under FloatMatmuls (see engine_fixtures.h); EngineIntegerPath checks the default.
const ::testing::Environment* const kFloatMatmuls =
    ::testing::AddGlobalTestEnvironment(new testref::FloatMatmulsEnvironment);

struct Grid {
  int tp, sp;
  SpScheme scheme;
};

std::string gridName(const Grid& g) {
  std::string s = spSchemeName(g.scheme);
  std::replace(s.begin(), s.end(), '-', '_');
  return fmt::format("tp{}_sp{}_{}", g.tp, g.sp, s);
}

EngineOptions exactOptions(const Grid& g) {
  EngineOptions o;
  o.tp = g.tp;
  o.sp = g.sp;
  o.allreduce = allreduceOptionsFromName("twostep-fp32");
  o.attention = g.scheme;
  return o;
}

struct Outputs {
  std::vector<float> logits;
  std::vector<TokenId> greedy;
  LlamaEngine::Score score;
};

// allLogits, a greedy run of `steps` tokens from the first `prompt` tokens, and a score; the same on every
// rank (checked).
// FNV-1a of the bits of an all-reduce's output (the TP replicas must agree on every bit).
uint64_t bitsHash(std::span<const float> d) {
  uint64_t h = 1469598103934665603ull;
  for (float v : d) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    h = (h ^ b) * 1099511628211ull;
  }
  return h;
}

Outputs runAll(const std::string& path, const EngineOptions& o, const std::vector<TokenId>& tokens, size_t prompt,
               int steps) {
  Outputs out;
  std::mutex mu;
  std::vector<std::vector<TokenId>> greedy(static_cast<size_t>(o.tp * o.sp));
  testref::runGrid(path, o, [&](Communicator& comm, LlamaEngine& eng) {
    std::vector<float> z = eng.allLogits(tokens);
    std::vector<TokenId> g;
    TokenId t = eng.prefill(std::vector<TokenId>(tokens.begin(), tokens.begin() + static_cast<long>(prompt)));
    g.push_back(t);
    for (int i = 1; i < steps; ++i) g.push_back(t = eng.decode(t));
    const LlamaEngine::Score s = eng.score(
        tokens, std::min<int64_t>(static_cast<int64_t>(tokens.size() / 2), static_cast<int64_t>(tokens.size()) - 2));
    std::lock_guard<std::mutex> lock(mu);
    greedy[static_cast<size_t>(comm.rank())] = g;
    if (comm.rank() == 0) {
      out.logits = std::move(z);
      out.score = s;
    }
  });
  for (const auto& g : greedy) EXPECT_EQ(g, greedy[0]) << "ranks disagree on the greedy tokens";
  out.greedy = greedy[0];
  return out;
}

class EngineGrid : public ::testing::TestWithParam<std::tuple<std::string, Grid>> {};

TEST_P(EngineGrid, ParallelPlanChangesOnlyRounding) {
  const auto& [name, grid] = GetParam();
  const ModelFixture f = testref::tinyFixture(name);
  if (!f.present) GTEST_SKIP() << f.missing;
  const size_t prompt = 13;  // odd lengths, not divisible by 2*sp
  const Outputs one = runAll(f.gguf_path, exactOptions({1, 1, SpScheme::Auto}), f.tokens, prompt, 10);
  const Outputs par = runAll(f.gguf_path, exactOptions(grid), f.tokens, prompt, 10);
  // Logits reach 30-45 on these models: 1e-4 is a few ulps of fp32 (summation order of the all-reduces and
  // the attention merges).
  EXPECT_LE(testref::maxAbsDiff(par.logits, one.logits), 1e-4) << gridName(grid);
  EXPECT_EQ(par.greedy, one.greedy);
  EXPECT_EQ(par.score.count, one.score.count);
  EXPECT_NEAR(par.score.nll, one.score.nll, 1e-5 * std::abs(one.score.nll));
}

// A turn appended over the cached prefix (LlamaEngine::append: pass-Q over the sharded cache) gives the
// logits and next token of prefilling the whole sequence at once, on every grid, and a second turn and a
// decode after it too. The matmuls run on dequantized panels throughout (gemm threshold 1), so both ways
// compute the same products and differ only in summation order; the integer path for short turns is
// checked apart below.
struct Turns {
  std::vector<float> whole, appended;
  TokenId whole_next = -1, appended_next = -1;
  std::vector<TokenId> whole_decode, appended_decode;
};

Turns runTurns(const std::string& path, const EngineOptions& o, const std::vector<TokenId>& tokens, size_t p1,
               size_t p2, size_t p3) {
  Turns r;
  std::mutex mu;
  EngineOptions keep = o;
  keep.keep_logits = true;
  testref::runGrid(path, keep, [&](Communicator&, LlamaEngine& eng) {
    const auto upto = [&](size_t n) { return std::vector<TokenId>(tokens.begin(), tokens.begin() + long(n)); };
    const TokenId a = eng.prefill(upto(p3));
    const std::vector<float> za = eng.lastLogits();
    const TokenId a2 = eng.decode(a);
    eng.prefill(upto(p1));
    eng.append(std::vector<TokenId>(tokens.begin() + long(p1), tokens.begin() + long(p2)));
    const TokenId b = eng.append(std::vector<TokenId>(tokens.begin() + long(p2), tokens.begin() + long(p3)));
    const std::vector<float> zb = eng.lastLogits();
    const TokenId b2 = eng.decode(b);
    EXPECT_EQ(eng.position(), static_cast<int64_t>(p3) + 1);
    std::lock_guard<std::mutex> lock(mu);
    if (!za.empty()) r.whole = za;
    if (!zb.empty()) r.appended = zb;
    r.whole_next = a;
    r.appended_next = b;
    r.whole_decode.push_back(a2);
    r.appended_decode.push_back(b2);
  });
  return r;
}

TEST_P(EngineGrid, AppendedTurnsEqualWholePrefill) {
  const auto& [name, grid] = GetParam();
  const ModelFixture f = testref::tinyFixture(name);
  if (!f.present) GTEST_SKIP() << f.missing;
  ASSERT_GE(f.tokens.size(), 16u);
  const int64_t saved = qmm::gemmThreshold();
  qmm::setGemmThreshold(1);
  const Turns t = runTurns(f.gguf_path, exactOptions(grid), f.tokens, 7, 10, 15);
  qmm::setGemmThreshold(saved);
  ASSERT_FALSE(t.whole.empty());
  ASSERT_FALSE(t.appended.empty());
  EXPECT_LE(testref::maxAbsDiff(t.appended, t.whole), 1e-4) << gridName(grid);
  EXPECT_EQ(t.appended_next, t.whole_next);
  EXPECT_EQ(t.appended_decode, t.whole_decode);
}

// Pass-KV for the appended turns and decodes (EngineOptions::append_attention) gives pass-Q's bits: the same
// partials, merged in the same order; the stats say which ran. Auto follows chooseAppendScheme.
TEST_P(EngineGrid, AppendPassKvEqualsPassQ) {
  const auto& [name, grid] = GetParam();
  if (grid.sp == 1) GTEST_SKIP() << "append attention only differs under SP";
  const ModelFixture f = testref::tinyFixture(name);
  if (!f.present) GTEST_SKIP() << f.missing;
  EngineOptions q = exactOptions(grid), kv = exactOptions(grid);
  q.append_attention = SpScheme::TokenRing;
  kv.append_attention = SpScheme::AllGatherKV;
  // The two runs calibrate separately, so Auto's prefill scheme (and with it the cache's rounding) may differ
  // between them: pin it, so that only the append attention differs.
  if (q.attention == SpScheme::Auto) q.attention = kv.attention = SpScheme::TokenRing;
  const Turns a = runTurns(f.gguf_path, q, f.tokens, 7, 10, 15);
  const Turns b = runTurns(f.gguf_path, kv, f.tokens, 7, 10, 15);
  ASSERT_FALSE(a.appended.empty());
  EXPECT_TRUE(testref::sameBits(a.appended, b.appended)) << gridName(grid);
  EXPECT_EQ(a.appended_next, b.appended_next);
  EXPECT_EQ(a.appended_decode, b.appended_decode);
  std::vector<SpScheme> ran;
  std::mutex mu;
  testref::runGrid(f.gguf_path, kv, [&](Communicator&, LlamaEngine& eng) {
    eng.prefill(std::vector<TokenId>(f.tokens.begin(), f.tokens.begin() + 8));
    eng.append(std::vector<TokenId>(f.tokens.begin() + 8, f.tokens.begin() + 12));
    std::lock_guard<std::mutex> lock(mu);
    ran.push_back(eng.stats().last_append_scheme);
  });
  for (SpScheme s : ran) EXPECT_EQ(s, SpScheme::AllGatherKV);
}

std::vector<Grid> tinyGrids() {
  std::vector<Grid> g = {{2, 1, SpScheme::Auto}, {3, 1, SpScheme::Auto}, {4, 1, SpScheme::Auto}};
  for (SpScheme s : {SpScheme::TokenRing, SpScheme::RingKV, SpScheme::Ulysses, SpScheme::AllGatherKV}) {
    g.push_back({1, 2, s});
    g.push_back({1, 3, s});
    g.push_back({2, 2, s});
  }
  g.push_back({1, 4, SpScheme::TokenRing});
  g.push_back({1, 4, SpScheme::Auto});
  return g;
}

INSTANTIATE_TEST_SUITE_P(Tiny, EngineGrid,
                         ::testing::Combine(::testing::Values("tiny-f32", "tiny-quant", "tiny-uneven", "tiny-mha",
                                                              "tiny-q5", "tiny-kquant"),
                                            ::testing::ValuesIn(tinyGrids())),
                         [](const auto& param_info) {
                           std::string n =
                               std::get<0>(param_info.param) + "_" + gridName(std::get<1>(param_info.param));
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// The default model: every grid of up to 4 ranks against the single-rank run.
TEST(EngineDefaultModel, EveryGridUpToFourRanksMatchesOneRank) {
  const ModelFixture f = testref::defaultModelFixture();
  if (!f.present) GTEST_SKIP() << f.missing;
  const size_t prompt = f.tokens.size();
  std::vector<TokenId> tokens = f.tokens;
  const Outputs one = runAll(f.gguf_path, exactOptions({1, 1, SpScheme::Auto}), tokens, prompt, 8);
  for (const Grid& g : std::vector<Grid>{{2, 1, SpScheme::Auto},
                                         {3, 1, SpScheme::Auto},
                                         {4, 1, SpScheme::Auto},
                                         {1, 2, SpScheme::TokenRing},
                                         {1, 3, SpScheme::RingKV},
                                         {1, 4, SpScheme::TokenRing},
                                         {2, 2, SpScheme::TokenRing},
                                         {2, 2, SpScheme::Ulysses}}) {
    SCOPED_TRACE(gridName(g));
    const Outputs par = runAll(f.gguf_path, exactOptions(g), tokens, prompt, 8);
    std::printf("default model %s: max |logit - one rank| %.3g\n", gridName(g).c_str(),
                testref::maxAbsDiff(par.logits, one.logits));
    EXPECT_LE(testref::maxAbsDiff(par.logits, one.logits), 1e-3);
    EXPECT_EQ(par.greedy, one.greedy);
    EXPECT_NEAR(par.score.nll, one.score.nll, 1e-5 * std::abs(one.score.nll));
  }
}

// After every TP all-reduce, the ranks of a TP group hold the same bits: the quantized all-reduce included
// (each rank keeps the decoded bytes it sent, never its own more precise copy).
TEST(EngineTp, ActivationsAreBitwiseIdenticalAcrossTheTpGroup) {
  const ModelFixture f = testref::tinyFixture("tiny-uneven");
  if (!f.present) GTEST_SKIP() << f.missing;
  for (const char* comm : {"twostep-fp32", "flash-int4", "flash-int8", "ring-bf16"}) {
    SCOPED_TRACE(comm);
    EngineOptions o;
    o.tp = 2;
    o.sp = 2;
    o.allreduce = allreduceOptionsFromName(comm);
    o.allreduce.chunk_elems = 256;  // several pipeline chunks
    std::mutex mu;
    // (sp rank, call index) -> hash per tp rank
    std::map<std::pair<int, int>, std::map<int, uint64_t>> hashes;
    std::atomic<int> calls{0};
    runThreadRanks(4, [&](Communicator& comm_) {
      EngineOptions mine = o;
      int index = 0;
      const int sp_rank = comm_.rank() / o.tp, tp_rank = comm_.rank() % o.tp;
      mine.on_allreduce = [&, sp_rank, tp_rank](int, int, std::span<const float> d) {
        const uint64_t h = bitsHash(d);
        std::lock_guard<std::mutex> lock(mu);
        hashes[{sp_rank, index++}][tp_rank] = h;
        ++calls;
      };
      LlamaEngine eng(comm_, testref::weightsFor(f.gguf_path, o.tp, tp_rank), mine);
      TokenId t = eng.prefill(f.tokens);
      for (int i = 0; i < 3; ++i) t = eng.decode(t);
    });
    EXPECT_GT(calls.load(), 0);
    for (const auto& [key, per_rank] : hashes) {
      ASSERT_EQ(per_rank.size(), 2u) << "sp rank " << key.first << " call " << key.second;
      EXPECT_EQ(per_rank.at(0), per_rank.at(1)) << "sp rank " << key.first << " call " << key.second;
    }
  }
}

// Low-bit communication perturbs the logits a little, not a lot (the accuracy targets are measured on the
// real model with `flashring perplexity`).
TEST(EngineTp, QuantizedCommunicationStaysCloseToExact) {
  const ModelFixture f = testref::tinyFixture("tiny-f32");
  if (!f.present) GTEST_SKIP() << f.missing;
  EngineOptions o = exactOptions({4, 1, SpScheme::Auto});
  const Outputs exact = runAll(f.gguf_path, o, f.tokens, 9, 2);
  o.allreduce = allreduceOptionsFromName("flash-int8");
  const Outputs int8 = runAll(f.gguf_path, o, f.tokens, 9, 2);
  o.allreduce = allreduceOptionsFromName("flash-int4");
  const Outputs int4 = runAll(f.gguf_path, o, f.tokens, 9, 2);
  double scale = 0;
  for (float v : exact.logits) scale = std::max(scale, std::abs(double(v)));
  const double e8 = testref::maxAbsDiff(int8.logits, exact.logits), e4 = testref::maxAbsDiff(int4.logits, exact.logits);
  EXPECT_GT(e8, 0.0);  // it really quantized
  EXPECT_LT(e8, 0.05 * scale) << "largest logit " << scale;
  EXPECT_LT(e4, 0.5 * scale) << "largest logit " << scale;
  EXPECT_LT(e8, e4);
  // The tiny random models amplify (residual gains of 3-8): 1% of the mean NLL, not the real-model target.
  const double nll = exact.score.nll / static_cast<double>(exact.score.count);
  EXPECT_NEAR(int8.score.nll / static_cast<double>(int8.score.count), nll, 0.01 * nll);
}

// Error feedback (EngineOptions::error_feedback): with exact communication there is no error to carry, so
// nothing changes; with INT4 the logits move closer to the exact ones (on the real model: INT4 g128 perplexity
// +11.7% -> +4.0% on TP 4), and every rank still agrees (runAll checks the greedy tokens of every rank).
TEST(EngineTp, ErrorFeedback) {
  const ModelFixture f = testref::tinyFixture("tiny-f32");
  if (!f.present) GTEST_SKIP() << f.missing;
  for (const Grid grid : {Grid{4, 1, SpScheme::Auto}, Grid{2, 2, SpScheme::TokenRing}, Grid{3, 1, SpScheme::Auto}}) {
    SCOPED_TRACE(fmt::format("tp {} sp {}", grid.tp, grid.sp));
    EngineOptions o = exactOptions(grid);
    const Outputs exact = runAll(f.gguf_path, o, f.tokens, 9, 2);
    o.error_feedback = true;
    const Outputs exact_ef = runAll(f.gguf_path, o, f.tokens, 9, 2);
    EXPECT_EQ(testref::maxAbsDiff(exact_ef.logits, exact.logits), 0.0) << "exact all-reduces have no error to carry";
    o.allreduce = allreduceOptionsFromName("flash-int4");
    o.allreduce.reduce_scatter.spikes = o.allreduce.all_gather.spikes = 1;
    o.error_feedback = false;
    const Outputs q = runAll(f.gguf_path, o, f.tokens, 9, 2);
    o.error_feedback = true;
    const Outputs q_ef = runAll(f.gguf_path, o, f.tokens, 9, 2);
    const double e = testref::maxAbsDiff(q.logits, exact.logits), e_ef = testref::maxAbsDiff(q_ef.logits, exact.logits);
    EXPECT_GT(e_ef, 0.0);
    EXPECT_LT(e_ef, e) << "error feedback should bring INT4 closer to exact";
  }
}

// Error feedback ends each forward pass with one more all-reduce, of the carried errors (the flush): it runs
// right after the last layer's MLP all-reduce on every rank that ran it, leaves the TP group's ranks bitwise
// identical, and with rotation and clipping on top INT4 lands closer to exact than plain INT4.
TEST(EngineTp, ErrorFeedbackFlushWithRotationAndClipping) {
  const ModelFixture f = testref::tinyFixture("tiny-uneven");
  if (!f.present) GTEST_SKIP() << f.missing;
  EngineOptions o;
  o.tp = 2;
  o.sp = 2;
  o.allreduce = allreduceOptionsFromName("flash-int4");
  o.allreduce.reduce_scatter.spikes = o.allreduce.all_gather.spikes = 1;
  o.allreduce.reduce_scatter.rotate = o.allreduce.all_gather.rotate = true;
  o.allreduce.reduce_scatter.clip = o.allreduce.all_gather.clip = true;
  o.error_feedback = true;
  std::mutex mu;
  std::map<int, std::vector<std::tuple<int, int, uint64_t>>> seen;  // rank -> (layer, which, hash) per call
  int n_layer = 0;
  runThreadRanks(4, [&](Communicator& comm) {
    EngineOptions mine = o;
    const int rank = comm.rank();
    mine.on_allreduce = [&, rank](int layer, int which, std::span<const float> d) {
      const uint64_t h = bitsHash(d);
      std::lock_guard<std::mutex> lock(mu);
      seen[rank].emplace_back(layer, which, h);
    };
    LlamaEngine eng(comm, testref::weightsFor(f.gguf_path, o.tp, rank % o.tp), mine);
    TokenId t = eng.prefill(f.tokens);
    for (int i = 0; i < 3; ++i) t = eng.decode(t);
    std::lock_guard<std::mutex> lock(mu);
    n_layer = eng.config().n_layer;
  });
  int flushes = 0;
  for (const auto& [rank, calls] : seen) {
    for (size_t i = 0; i < calls.size(); ++i) {
      if (std::get<1>(calls[i]) != 2) continue;
      ++flushes;
      EXPECT_EQ(std::get<0>(calls[i]), n_layer);
      ASSERT_GT(i, 0u);
      EXPECT_EQ(std::get<0>(calls[i - 1]), n_layer - 1) << "rank " << rank << ": the flush follows the last layer";
      EXPECT_EQ(std::get<1>(calls[i - 1]), 1);
    }
    // TP partner (rank ^ 1 on a 2 x 2 grid): the same calls, the same bits.
    EXPECT_EQ(calls, seen[rank ^ 1]) << "rank " << rank;
  }
  EXPECT_GE(flushes, 4 * 1 + 2 * 3) << "prefill on 4 ranks, 3 decode steps on the owner's TP pair";
  // Accuracy: rotate + clip + EF against plain INT4 (same spikes), both against exact.
  const Outputs exact = runAll(f.gguf_path, exactOptions({2, 2, SpScheme::Auto}), f.tokens, 9, 2);
  const Outputs best = runAll(f.gguf_path, o, f.tokens, 9, 2);
  EngineOptions plain = o;
  plain.error_feedback = false;
  plain.allreduce.reduce_scatter.rotate = plain.allreduce.all_gather.rotate = false;
  plain.allreduce.reduce_scatter.clip = plain.allreduce.all_gather.clip = false;
  const Outputs q = runAll(f.gguf_path, plain, f.tokens, 9, 2);
  const double e_best = testref::maxAbsDiff(best.logits, exact.logits),
               e_q = testref::maxAbsDiff(q.logits, exact.logits);
  std::printf("tiny-uneven TP2xSP2 INT4 s1: max |logit - exact| plain %.3g, rotate+clip+EF %.3g\n", e_q, e_best);
  EXPECT_GT(e_best, 0.0);
  EXPECT_LT(e_best, e_q);
}

// Refinement (EngineOptions::refine_layers): each all-reduce of the first layers is followed at once by an
// all-reduce of the errors it made. Layer 0's attention all-reduce sees the same partials whatever the
// communication (nothing is quantized before it), so its result can be compared with the exact one directly:
// refined, what is left is the error of quantizing the error, several times smaller. It costs exactly two
// all-reduces per refined layer, changes nothing with exact communication, keeps the TP replicas bitwise
// identical, and works with or without error feedback.
TEST(EngineTp, RefinementSumsTheFirstLayersErrorsAtOnce) {
  const ModelFixture f = testref::tinyFixture("tiny-uneven");
  if (!f.present) GTEST_SKIP() << f.missing;
  struct Run {
    std::vector<float> first;                                   // rank 0's layer-0 attention all-reduce result
    std::vector<float> logits;                                  // rank 0's last-position logits
    int64_t allreduces = 0;                                     // rank 0's, one prefill
    std::map<int, std::vector<std::pair<int, uint64_t>>> bits;  // rank -> (layer * 2 + which, hash)
  };
  auto run = [&](const EngineOptions& o) {
    Run out;
    std::mutex mu;
    runThreadRanks(o.tp * o.sp, [&](Communicator& comm) {
      EngineOptions mine = o;
      mine.keep_logits = true;
      const int rank = comm.rank();
      mine.on_allreduce = [&, rank](int layer, int which, std::span<const float> d) {
        std::lock_guard<std::mutex> lock(mu);
        out.bits[rank].emplace_back(layer * 2 + which, bitsHash(d));
        if (rank == 0 && layer == 0 && which == 0 && out.first.empty()) out.first.assign(d.begin(), d.end());
      };
      LlamaEngine eng(comm, testref::weightsFor(f.gguf_path, o.tp, rank % o.tp), mine);
      eng.prefill(f.tokens);
      std::lock_guard<std::mutex> lock(mu);
      if (rank == 0) {
        out.logits = eng.lastLogits();
        out.allreduces = eng.stats().allreduces;
      }
    });
    return out;
  };
  for (const Grid grid : {Grid{2, 2, SpScheme::TokenRing}, Grid{4, 1, SpScheme::Auto}}) {
    SCOPED_TRACE(fmt::format("tp {} sp {}", grid.tp, grid.sp));
    EngineOptions o = exactOptions(grid);
    const Run exact = run(o);
    o.refine_layers = 2;
    const Run exact_refined = run(o);
    EXPECT_EQ(testref::maxAbsDiff(exact_refined.logits, exact.logits), 0.0) << "exact all-reduces make no error";
    EXPECT_EQ(exact_refined.allreduces, exact.allreduces) << "nothing to refine";
    o.allreduce = allreduceOptionsFromName("flash-int4");
    o.allreduce.reduce_scatter.spikes = o.allreduce.all_gather.spikes = 1;
    for (const bool ef : {false, true}) {
      SCOPED_TRACE(ef ? "error feedback" : "no error feedback");
      o.error_feedback = ef;
      o.refine_layers = 0;
      const Run plain = run(o);
      o.refine_layers = 1;
      const Run refined = run(o);
      o.refine_layers = 2;
      const Run refined2 = run(o);
      EXPECT_EQ(refined.allreduces, plain.allreduces + 2);
      EXPECT_EQ(refined2.allreduces, plain.allreduces + 4);
      const double e_plain = testref::maxAbsDiff(plain.first, exact.first),
                   e_ref = testref::maxAbsDiff(refined.first, exact.first);
      std::printf("tp %d sp %d %s: layer-0 attention all-reduce max error %.3g, refined %.3g; logits %.3g / %.3g\n",
                  grid.tp, grid.sp, ef ? "EF" : "  ", e_plain, e_ref, testref::maxAbsDiff(plain.logits, exact.logits),
                  testref::maxAbsDiff(refined.logits, exact.logits));
      EXPECT_GT(e_ref, 0.0);
      EXPECT_LT(e_ref, 0.25 * e_plain) << "the refined all-reduce keeps only the error of its error";
      EXPECT_LT(testref::maxAbsDiff(refined.logits, exact.logits), testref::maxAbsDiff(plain.logits, exact.logits));
      for (const auto& [rank, calls] : refined2.bits) {
        // TP partner: rank ^ 1 on 2 x 2, rank ^ 1 too on 4 x 1 (same group). Same calls, same bits.
        EXPECT_EQ(calls, refined2.bits.at(rank ^ 1)) << "rank " << rank;
        EXPECT_EQ(calls.size(), plain.bits.at(rank).size()) << "the hook sees a refined all-reduce once";
      }
    }
  }
  // A negative count is refused on every rank.
  EngineOptions bad = exactOptions({2, 1, SpScheme::Auto});
  bad.refine_layers = -1;
  std::atomic<int> refused{0};
  runThreadRanks(2, [&](Communicator& comm) {
    try {
      LlamaEngine eng(comm, testref::weightsFor(f.gguf_path, 2, comm.rank()), bad);
    } catch (const InvalidArgument& e) {
      if (std::string(e.what()).find("refine_layers -1") != std::string::npos) ++refused;
    }
  });
  EXPECT_EQ(refused.load(), 2);
}

// Prompts shorter than the number of SP ranks leave some ranks without tokens; decode still works.
// Seeded sampling (EngineOptions::sampling): every rank of every grid draws the same tokens, and a second run
// with the same seed draws them again; another seed draws others.
std::vector<std::vector<TokenId>> sampledTokens(const std::string& path, EngineOptions o, int steps) {
  std::vector<std::vector<TokenId>> per(static_cast<size_t>(o.tp * o.sp));
  std::mutex mu;
  testref::runGrid(path, o, [&](Communicator& comm, LlamaEngine& eng) {
    std::vector<TokenId> got;
    TokenId t = eng.prefill(std::vector<TokenId>{1, 2, 3, 4, 5, 6, 7});
    got.push_back(t);
    for (int i = 1; i < steps; ++i) got.push_back(t = eng.decode(t));
    std::lock_guard<std::mutex> lock(mu);
    per[static_cast<size_t>(comm.rank())] = got;
  });
  return per;
}

TEST(EngineSampling, SeededSamplingIsTheSameOnEveryRankAndEveryRun) {
  const ModelFixture f = testref::tinyFixture("tiny-uneven");
  if (!f.present) GTEST_SKIP() << f.missing;
  for (const Grid& g : std::vector<Grid>{
           {1, 1, SpScheme::Auto}, {2, 1, SpScheme::Auto}, {2, 2, SpScheme::TokenRing}, {1, 3, SpScheme::RingKV}}) {
    SCOPED_TRACE(gridName(g));
    EngineOptions o = exactOptions(g);
    // The tiny models' logits span ~40: a high temperature spreads the draws over the top-k.
    o.sampling.temperature = 20.f;
    o.sampling.top_k = 20;
    o.sampling.top_p = 0.98f;
    o.sampling.seed = 1234;
    const auto a = sampledTokens(f.gguf_path, o, 12);
    const auto b = sampledTokens(f.gguf_path, o, 12);
    for (const auto& r : a) EXPECT_EQ(r, a[0]) << "ranks disagree";
    EXPECT_EQ(b[0], a[0]) << "a second run with the same seed differs";
    o.sampling.seed = 99;
    EXPECT_NE(sampledTokens(f.gguf_path, o, 12)[0], a[0]) << "another seed drew the same 12 tokens";
  }
}

// Decode all-reduces as one-shot twins (EngineOptions::oneshot): exact fp32 gives the bits of the two-step,
// with one message round per all-reduce instead of two; a low-bit codec keeps the TP replicas identical.
TEST(EngineTp, OneShotDecodeAllreduces) {
  const ModelFixture f = testref::tinyFixture("tiny-uneven");
  if (!f.present) GTEST_SKIP() << f.missing;
  for (const char* comm : {"twostep-fp32", "flash-int8"}) {
    SCOPED_TRACE(comm);
    std::map<OneShotMode, std::vector<std::vector<float>>> logits;
    std::map<OneShotMode, int64_t> rounds, allreduces;
    for (OneShotMode m : {OneShotMode::Off, OneShotMode::On}) {
      EngineOptions o;
      o.tp = 3;
      o.allreduce = allreduceOptionsFromName(comm);
      o.oneshot = m;
      o.keep_logits = true;
      std::vector<std::vector<float>> per(3);
      std::mutex mu;
      testref::runGrid(f.gguf_path, o, [&](Communicator& c, LlamaEngine& eng) {
        TokenId t = eng.prefill(std::vector<TokenId>(f.tokens.begin(), f.tokens.begin() + 9));
        eng.resetStats();
        for (int i = 0; i < 4; ++i) t = eng.decode(t);
        std::lock_guard<std::mutex> lock(mu);
        per[static_cast<size_t>(c.rank())] = eng.lastLogits();
        if (c.rank() == 0) {
          rounds[m] = eng.stats().allreduce_rounds;
          allreduces[m] = eng.stats().allreduces;
        }
      });
      for (const auto& z : per) EXPECT_EQ(z, per[0]) << "TP ranks differ";
      logits[m] = per;
    }
    EXPECT_EQ(allreduces[OneShotMode::On], allreduces[OneShotMode::Off]);
    EXPECT_EQ(rounds[OneShotMode::Off], 2 * allreduces[OneShotMode::Off]);
    EXPECT_EQ(rounds[OneShotMode::On], allreduces[OneShotMode::On]);
    if (std::string(comm) == "twostep-fp32") {
      EXPECT_EQ(logits[OneShotMode::On][0], logits[OneShotMode::Off][0]);
    }
  }
}

TEST(EngineSp, PromptShorterThanTheRanks) {
  const ModelFixture f = testref::tinyFixture("tiny-uneven");
  if (!f.present) GTEST_SKIP() << f.missing;
  for (size_t n : {size_t{1}, size_t{2}, size_t{5}}) {
    const std::vector<TokenId> tokens(f.tokens.begin(), f.tokens.begin() + static_cast<long>(n + 1));
    const Outputs one = runAll(f.gguf_path, exactOptions({1, 1, SpScheme::Auto}), tokens, n, 6);
    for (SpScheme s : {SpScheme::TokenRing, SpScheme::RingKV, SpScheme::Ulysses, SpScheme::AllGatherKV}) {
      SCOPED_TRACE(fmt::format("{} tokens, {}", n, spSchemeName(s)));
      const Outputs par = runAll(f.gguf_path, exactOptions({1, 4, s}), tokens, n, 6);
      EXPECT_EQ(par.greedy, one.greedy);
      EXPECT_LE(testref::maxAbsDiff(par.logits, one.logits), 1e-4);
    }
  }
}

// A rank whose prompt differs in length fails every rank with an error naming it, without hanging.
TEST(EngineErrors, MismatchedPromptLengthsFailEveryRank) {
  const ModelFixture f = testref::tinyFixture("tiny-f32");
  if (!f.present) GTEST_SKIP() << f.missing;
  EngineOptions o = exactOptions({2, 2, SpScheme::TokenRing});
  const auto t0 = Clock::now();
  std::vector<std::exception_ptr> errs = runThreadRanksCollect(4, [&](Communicator& comm) {
    LlamaEngine eng(comm, testref::weightsFor(f.gguf_path, 2, comm.rank() % 2), o);
    std::vector<TokenId> p(f.tokens.begin(), f.tokens.begin() + (comm.rank() == 3 ? 9 : 10));
    eng.prefill(p);
  });
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 10.0);
  for (size_t r = 0; r < errs.size(); ++r) {
    ASSERT_TRUE(errs[r]) << "rank " << r << " did not fail";
    try {
      std::rethrow_exception(errs[r]);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("prefill"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace flashring
