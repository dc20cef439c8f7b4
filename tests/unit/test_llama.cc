// The LLaMA engine on one rank: the tensor-parallel shard plan, the forward pass against an independent
// float64 numpy reference (tests/tools/llama_reference.py) on tiny generated models and on the default
// model, greedy decoding, scoring, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "common/engine_fixtures.h"
#include "flashring/gguf.h"
#include "flashring/llama.h"

namespace flashring {
namespace {

using testref::ModelFixture;

LlamaConfig configOf(int heads, int kv, int ff, int vocab) {
  LlamaConfig c;
  c.n_head = heads;
  c.n_head_kv = kv;
  c.head_dim = 64;
  c.n_embd = heads * 64;
  c.n_ff = ff;
  c.n_vocab = vocab;
  c.n_layer = 1;
  c.rope_dim = 64;
  return c;
}

TEST(TpShard, UnevenHeadsReplicateOnlyTheKvHeadsTheyNeed) {
  const LlamaConfig c = configOf(9, 3, 1536, 49152);  // SmolLM2-135M
  // tp 4: 3,2,2,2 query heads; GQA group 3.
  const TpShard s0 = tpShard(c, 4, 0), s1 = tpShard(c, 4, 1), s2 = tpShard(c, 4, 2), s3 = tpShard(c, 4, 3);
  EXPECT_EQ(s0.head_begin, 0);
  EXPECT_EQ(s0.heads, 3);
  EXPECT_EQ(s0.kv_heads, std::vector<int>({0}));
  EXPECT_EQ(s1.head_begin, 3);
  EXPECT_EQ(s1.heads, 2);
  EXPECT_EQ(s1.kv_heads, std::vector<int>({1}));
  EXPECT_EQ(s2.head_begin, 5);
  EXPECT_EQ(s2.kv_heads, std::vector<int>({1, 2}));  // head 5 -> kv 1, head 6 -> kv 2
  EXPECT_TRUE(s2.grouped);
  EXPECT_EQ(s3.kv_heads, std::vector<int>({2}));
  EXPECT_EQ(s0.ff + s1.ff + s2.ff + s3.ff, 1536);
  EXPECT_EQ(s3.vocab_begin + s3.vocab, 49152);
  // tp 2: 5 + 4 heads; neither maps onto equal runs per KV head, so KV heads are expanded per query head.
  const TpShard a = tpShard(c, 2, 0), b = tpShard(c, 2, 1);
  EXPECT_EQ(a.heads, 5);
  EXPECT_FALSE(a.grouped);
  EXPECT_EQ(a.kv_heads, std::vector<int>({0, 0, 0, 1, 1}));
  EXPECT_FALSE(b.grouped);
  EXPECT_EQ(b.kv_heads, std::vector<int>({1, 2, 2, 2}));
  // tp 3 divides everything: one KV head per rank.
  for (int r = 0; r < 3; ++r) {
    const TpShard s = tpShard(c, 3, r);
    EXPECT_EQ(s.heads, 3);
    EXPECT_EQ(s.kv_heads, std::vector<int>({r}));
    EXPECT_TRUE(s.grouped);
    EXPECT_EQ(s.ff, 512);
  }
  EXPECT_THROW(tpShard(c, 10, 0), InvalidArgument);
}

class TinyModel : public ::testing::TestWithParam<std::string> {};

EngineOptions keepLogits() {
  EngineOptions o;
  o.keep_logits = true;
  return o;
}

// Largest |ours - reference| over all logits, and the reference's largest magnitude (for scale).
void expectLogitsClose(const ModelFixture& f, const std::vector<float>& ours, double tol) {
  ASSERT_EQ(ours.size(), f.logits.size());
  const double err = testref::maxAbsDiff(ours, f.logits);
  double scale = 0;
  for (float v : f.logits) scale = std::max(scale, std::abs(double(v)));
  std::printf("%s: max |logit - reference| %.3g (largest logit %.3g)\n", f.name.c_str(), err, scale);
  EXPECT_LE(err, tol) << f.name << ": max |logit - reference| " << err << " (largest logit " << scale << ")";
  // Greedy choices agree at every position (the reference's margins are far above the error).
  for (size_t t = 0; t < f.tokens.size(); ++t) {
    const auto* a = ours.data() + t * f.n_vocab;
    const auto* b = f.logits.data() + t * f.n_vocab;
    EXPECT_EQ(std::max_element(a, a + f.n_vocab) - a, std::max_element(b, b + f.n_vocab) - b) << "position " << t;
  }
}

TEST_P(TinyModel, LogitsMatchTheFloat64Reference) {
  const ModelFixture f = testref::tinyFixture(GetParam());
  if (!f.present) GTEST_SKIP() << f.missing;
  EngineOptions o;
  std::vector<float> logits;
  {
    const testref::FloatMatmuls fp32;  // the model's arithmetic in fp32 on the dequantized weights
    testref::runGrid(f.gguf_path, o, [&](Communicator&, LlamaEngine& eng) { logits = eng.allLogits(f.tokens); });
  }
  // fp32 against float64 through a few layers of O(1) activations.
  expectLogitsClose(f, logits, 2e-4);
}

// The integer path (8-bit activations, integer dots; what decode runs) at every position against the float64
// reference: F32 weights take fp32 dots (no activation quantization) and stay at fp32 rounding; quantized
// weights are within the activation codes' error, which on these random-weight models is a few percent of the
// largest logit (their weights are not aligned with their activations, so the dots are small against the
// norms that set the codes' steps; the default model's is checked below). Greedy choices agree wherever the
// reference's margin exceeds twice the error.
void expectIntegerPathClose(const ModelFixture& f, double rel_tol) {
  std::vector<float> logits;
  {
    const testref::MatmulThreshold integer(1 << 30);
    testref::runGrid(f.gguf_path, EngineOptions{},
                     [&](Communicator&, LlamaEngine& eng) { logits = eng.allLogits(f.tokens); });
  }
  ASSERT_EQ(logits.size(), f.logits.size());
  const double err = testref::maxAbsDiff(logits, f.logits);
  double scale = 0;
  for (float v : f.logits) scale = std::max(scale, std::abs(double(v)));
  std::printf("%s integer path: max |logit - reference| %.3g (largest logit %.3g)\n", f.name.c_str(), err, scale);
  EXPECT_LE(err, rel_tol * scale) << f.name;
  int checked = 0;
  for (size_t t = 0; t < f.tokens.size(); ++t) {
    const float* a = logits.data() + t * f.n_vocab;
    const float* b = f.logits.data() + t * f.n_vocab;
    std::vector<float> sorted(b, b + f.n_vocab);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    if (sorted[0] - sorted[1] <= 2 * err) continue;
    ++checked;
    EXPECT_EQ(std::max_element(a, a + f.n_vocab) - a, std::max_element(b, b + f.n_vocab) - b) << "position " << t;
  }
  std::printf("%s integer path: greedy choice checked at %d of %zu positions (margin > 2x the error)\n", f.name.c_str(),
              checked, f.tokens.size());
  EXPECT_GT(checked, 0) << "no position with a clear margin";
}

TEST_P(TinyModel, IntegerPathStaysNearTheReference) {
  const ModelFixture f = testref::tinyFixture(GetParam());
  if (!f.present) GTEST_SKIP() << f.missing;
  expectIntegerPathClose(f, 0.06);
}

TEST_P(TinyModel, GreedyDecodeMatchesTheReference) {
  const ModelFixture f = testref::tinyFixture(GetParam());
  if (!f.present) GTEST_SKIP() << f.missing;
  ASSERT_FALSE(f.greedy_continuation.empty());
  std::vector<TokenId> got;
  testref::runGrid(f.gguf_path, keepLogits(), [&](Communicator&, LlamaEngine& eng) {
    TokenId t = eng.prefill(f.greedy_prompt);
    got.push_back(t);
    while (got.size() < f.greedy_continuation.size()) got.push_back(t = eng.decode(t));
    EXPECT_EQ(eng.position(), static_cast<int64_t>(f.greedy_prompt.size() + f.greedy_continuation.size() - 1));
    EXPECT_EQ(eng.lastLogits().size(), static_cast<size_t>(f.n_vocab));
  });
  EXPECT_EQ(got, f.greedy_continuation) << "reference min margin " << f.greedy_min_margin;
}

TEST_P(TinyModel, ScoreIsTheNegativeLogLikelihoodOfTheLogits) {
  const ModelFixture f = testref::tinyFixture(GetParam());
  if (!f.present) GTEST_SKIP() << f.missing;
  const int64_t first = 10;
  double expect = 0;
  for (size_t p = first; p + 1 < f.tokens.size(); ++p) {
    const float* z = f.logits.data() + p * f.n_vocab;
    double mx = *std::max_element(z, z + f.n_vocab), s = 0;
    for (int j = 0; j < f.n_vocab; ++j) s += std::exp(double(z[j]) - mx);
    expect += mx + std::log(s) - z[f.tokens[p + 1]];
  }
  LlamaEngine::Score sc;
  testref::runGrid(f.gguf_path, EngineOptions{},
                   [&](Communicator&, LlamaEngine& eng) { sc = eng.score(f.tokens, first); });
  EXPECT_EQ(sc.count, static_cast<int64_t>(f.tokens.size()) - 1 - first);
  EXPECT_NEAR(sc.nll, expect, 1e-3 * static_cast<double>(sc.count));
  EXPECT_GT(sc.nll_sq, 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TinyModel,
                         ::testing::Values("tiny-f32", "tiny-quant", "tiny-uneven", "tiny-mha", "tiny-q5",
                                           "tiny-kquant"),
                         [](const auto& param_info) {
                           std::string n = param_info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(DefaultModel, LogitsMatchTheFloat64Reference) {
  const ModelFixture f = testref::defaultModelFixture();
  if (!f.present) GTEST_SKIP() << f.missing;
  std::vector<float> logits;
  const testref::FloatMatmuls fp32;
  testref::runGrid(f.gguf_path, EngineOptions{}, [&](Communicator&, LlamaEngine& eng) {
    EXPECT_EQ(eng.config().n_layer, 30);
    EXPECT_EQ(eng.config().n_head, 9);
    EXPECT_EQ(eng.config().n_head_kv, 3);
    EXPECT_TRUE(eng.config().tied_output);
    logits = eng.allLogits(f.tokens);
  });
  // 30 layers in fp32 against float64 on the same dequantized weights.
  expectLogitsClose(f, logits, 2e-3);
}

TEST(DefaultModel, IntegerPathStaysNearTheReference) {
  const ModelFixture f = testref::defaultModelFixture();
  if (!f.present) GTEST_SKIP() << f.missing;
  // Measured: 0.93 of 27.6 at the worst logit, while perplexity moves by +0.10% only (c 256, 6 chunks:
  // 19.4353 against 19.4157 in fp32; llama.cpp's 8-bit activations give 19.5180 on the same file).
  expectIntegerPathClose(f, 0.05);
}

TEST(Engine, AnUnsupportedTensorTypeIsAnErrorNamingTheTensorAndType) {
  const std::string path = testref::fixtureDir() + "/tiny-badtype.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is missing (fixtures.models did not run)";
  auto file = std::make_shared<const gguf::File>(gguf::File::open(path));
  try {
    LlamaWeights::load(file, 1, 0);
    FAIL() << "loaded a model holding a q2_K matrix";
  } catch (const gguf::FormatError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("blk.0.attn_q.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("type 10"), std::string::npos) << m;
    EXPECT_NE(m.find("supported: f32"), std::string::npos) << m;
  }
}

TEST(Engine, BadInputIsAnErrorNamingIt) {
  const ModelFixture f = testref::tinyFixture("tiny-f32");
  if (!f.present) GTEST_SKIP() << f.missing;
  testref::runGrid(f.gguf_path, EngineOptions{}, [&](Communicator&, LlamaEngine& eng) {
    const std::vector<TokenId> bad = {1, 2, f.n_vocab};
    try {
      eng.prefill(bad);
      ADD_FAILURE() << "no error";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
    }
  });
  testref::runGrid(f.gguf_path, EngineOptions{}, [&](Communicator&, LlamaEngine& eng) {
    EXPECT_THROW(eng.prefill(std::vector<TokenId>{}), InvalidArgument);
  });
  testref::runGrid(f.gguf_path, EngineOptions{}, [&](Communicator&, LlamaEngine& eng) {
    EXPECT_THROW(eng.decode(1), InvalidArgument);  // before prefill
  });
  EngineOptions two;
  two.tp = 2;  // two ranks, but the world below has one
  EXPECT_THROW(runThreadRanks(
                   1, [&](Communicator& comm) { LlamaEngine eng(comm, testref::weightsFor(f.gguf_path, 1, 0), two); }),
               InvalidArgument);
}

TEST(Engine, ConfigComesFromTheMetadata) {
  const ModelFixture f = testref::tinyFixture("tiny-uneven");
  if (!f.present) GTEST_SKIP() << f.missing;
  const gguf::File file = gguf::File::open(f.gguf_path);
  const LlamaConfig c = LlamaConfig::fromGguf(file);
  EXPECT_EQ(c.n_head, 6);
  EXPECT_EQ(c.n_head_kv, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.n_layer, 3);
  EXPECT_FLOAT_EQ(c.rope_base, 500000.f);
  EXPECT_EQ(c.n_vocab, f.n_vocab);
}

}  // namespace
}  // namespace flashring
