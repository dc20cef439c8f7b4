// The LLaMA engine on real MPI ranks: every tp x sp grid of the world's size gives the single-rank logits
// (computed in each process on one thread rank) up to rounding and the same greedy tokens, with exact and
// low-bit all-reduces; a bad prompt fails on every rank.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>

#include "common/engine_fixtures.h"
#include "flashring/llama.h"
#include "mpi_harness.h"

using namespace flashring;
using namespace flashring::mpitest;

namespace {

// The plans are compared under FloatMatmuls (engine_fixtures.h): 8-bit activations agree across plans only to
// the quantization level.
const ::testing::Environment* const kFloatMatmuls =
    ::testing::AddGlobalTestEnvironment(new testref::FloatMatmulsEnvironment);

struct Result {
  std::vector<float> logits;
  std::vector<TokenId> greedy;
  int64_t prefill_allreduces = 0;  // TP all-reduces of the prefill call
};

Result runEngine(Communicator& comm, const std::string& path, const EngineOptions& o,
                 const std::vector<TokenId>& tokens) {
  LlamaEngine eng(comm, testref::weightsFor(path, o.tp, comm.rank() % o.tp), o);
  Result r;
  r.logits = eng.allLogits(tokens);
  eng.resetStats();
  TokenId t = eng.prefill(std::vector<TokenId>(tokens.begin(), tokens.begin() + 11));
  r.prefill_allreduces = eng.stats().allreduces;
  r.greedy.push_back(t);
  for (int i = 0; i < 6; ++i) r.greedy.push_back(t = eng.decode(t));
  return r;
}

}  // namespace

class MpiEngine : public MpiTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(MpiEngine, EveryGridMatchesOneRank) {
  const testref::ModelFixture f = testref::tinyFixture(GetParam());
  if (!f.present) GTEST_SKIP() << f.missing;  // the same on every rank (one file system)
  Result one;
  runThreadRanks(1, [&](Communicator& c) { one = runEngine(c, f.gguf_path, EngineOptions{}, f.tokens); });
  const int n = size();
  for (int tp = 1; tp <= n; ++tp) {
    if (n % tp != 0) continue;
    for (const char* attn : {"tokenring", "ulysses"}) {
      EngineOptions o;
      o.tp = tp;
      o.sp = n / tp;
      o.attention = spSchemeFromName(attn);
      o.allreduce = allreduceOptionsFromName("twostep-fp32");
      SCOPED_TRACE(fmt::format("tp {} sp {} {}", o.tp, o.sp, attn));
      const Result par = runEngine(comm(), f.gguf_path, o, f.tokens);
      EXPECT_LE(testref::maxAbsDiff(par.logits, one.logits), 1e-4);
      EXPECT_EQ(par.greedy, one.greedy);
      if (o.sp == 1) break;  // the attention scheme matters only under SP
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, MpiEngine, ::testing::Values("tiny-quant", "tiny-uneven"),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string s = i.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

class MpiEngineComm : public MpiTest {};

// Flash INT4 in the TP all-reduces across processes: the ranks agree bit for bit (the logits they gather
// are identical everywhere by construction, so compare each rank's own greedy tokens and a hash of its
// hidden-state all-reduces through the hook).
TEST_F(MpiEngineComm, QuantizedAllreduceKeepsTpRanksIdentical) {
  FLASHRING_REQUIRE_RANKS(2);
  const testref::ModelFixture f = testref::tinyFixture("tiny-uneven");
  if (!f.present) GTEST_SKIP() << f.missing;
  EngineOptions o;
  o.tp = size();
  o.allreduce = allreduceOptionsFromName("flash-int4");
  o.allreduce.chunk_elems = 128;
  uint64_t h = 1469598103934665603ull;
  o.on_allreduce = [&](int, int, std::span<const float> d) {
    for (float v : d) {
      uint32_t b;
      std::memcpy(&b, &v, 4);
      h = (h ^ b) * 1099511628211ull;
    }
  };
  const Result r = runEngine(comm(), f.gguf_path, o, f.tokens);
  checkSameOnAllRanks(comm(), h, "hash of every TP all-reduce result");
  EXPECT_EQ(r.greedy.size(), 7u);
  // With error feedback every process carries a different error, and the results still agree bit for bit.
  h = 1469598103934665603ull;
  o.error_feedback = true;
  const Result r_ef = runEngine(comm(), f.gguf_path, o, f.tokens);
  checkSameOnAllRanks(comm(), h, "hash of every TP all-reduce result, error feedback");
  EXPECT_EQ(r_ef.greedy.size(), 7u);
  // Refinement of the first layer (one more all-reduce of the errors after each of its two): still the same
  // bits everywhere, and exactly two more all-reduces per forward pass.
  h = 1469598103934665603ull;
  o.refine_layers = 1;
  const Result r_ref = runEngine(comm(), f.gguf_path, o, f.tokens);
  checkSameOnAllRanks(comm(), h, "hash of every TP all-reduce result, error feedback and refinement");
  EXPECT_EQ(r_ref.greedy.size(), 7u);
  EXPECT_EQ(r_ref.prefill_allreduces, r_ef.prefill_allreduces + 2);
}

TEST_F(MpiEngineComm, MismatchedPromptFailsEveryRank) {
  FLASHRING_REQUIRE_RANKS(2);
  const testref::ModelFixture f = testref::tinyFixture("tiny-f32");
  if (!f.present) GTEST_SKIP() << f.missing;
  auto c = freshComm();
  c->setTimeout(std::chrono::milliseconds(20000));
  EngineOptions o;
  o.sp = size();
  LlamaEngine eng(*c, testref::weightsFor(f.gguf_path, 1, 0), o);
  std::vector<TokenId> p(f.tokens.begin(), f.tokens.begin() + (rank() == 1 ? 9 : 12));
  const auto t0 = Clock::now();
  EXPECT_THROW(eng.prefill(p), Error);
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 20.0);
}
