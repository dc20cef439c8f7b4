// Step-wise generation (flashring/generate.h), LlamaSession on its own thread ranks and on the ranks of a
// caller's communicator (flashring/llama_session.h), and the --comm names (flashring/comm_setting.h): the
// tokens of the tiny models' float64 greedy references, the figures of perplexity() itself, and failures
// that name their cause without a hang.
#include <gtest/gtest.h>

#include <mutex>
#include <stdexcept>

#include "common/engine_fixtures.h"
#include "flashring/comm_setting.h"
#include "flashring/generate.h"
#include "flashring/llama_session.h"
#include "flashring/perplexity.h"
#include "flashring/thread_comm.h"

namespace flashring {
namespace {

using testref::ModelFixture;

const ::testing::Environment* const kFloatMatmuls =
    ::testing::AddGlobalTestEnvironment(new testref::FloatMatmulsEnvironment);

const std::string kText = [] {
  std::string s;
  for (int i = 0; i < 40; ++i) s += "The quick brown fox jumps over the lazy dog. ";
  return s;
}();

SessionOptions sessionOptions(const std::string& path, int tp, int sp) {
  SessionOptions o;
  o.model = path;
  o.tp = tp;
  o.sp = sp;
  o.threads = 1;  // the tests' process-wide setting stays as it is
  return o;
}

TEST(Generation, StepwiseMatchesReferenceAndStops) {
  const ModelFixture f = testref::tinyFixture("tiny-f32");
  if (!f.present) GTEST_SKIP() << f.missing;
  const auto file = std::make_shared<const gguf::File>(gguf::File::open(f.gguf_path));
  const Tokenizer tok = Tokenizer::fromGguf(*file);
  EngineOptions eo;
  eo.tp = 2;
  eo.sp = 2;
  const int n = static_cast<int>(f.greedy_continuation.size());
  testref::runGrid(f.gguf_path, eo, [&](Communicator& comm, LlamaEngine& eng) {
    // To the end, with the callback seeing every token.
    GenerateOptions go;
    go.n_predict = n;
    std::vector<TokenId> seen;
    GenerateResult r = generate(comm, eng, tok, f.greedy_prompt, true, go, [&](TokenId id) { seen.push_back(id); });
    EXPECT_EQ(r.reply, f.greedy_continuation);
    EXPECT_EQ(seen, r.reply);
    EXPECT_EQ(r.stop, "n_predict");
    EXPECT_EQ(r.run_tokens, static_cast<int64_t>(f.greedy_prompt.size()));
    // n tokens: the last is not fed back.
    EXPECT_EQ(r.cache_after, static_cast<int64_t>(f.greedy_prompt.size()) + n - 1);
    EXPECT_GT(r.ttft_s, 0);
    EXPECT_GT(r.wire_bytes, r.prefill_wire_bytes);

    // Ended by the caller after 3 tokens.
    Generation g(comm, eng, tok, go);
    std::optional<TokenId> id = g.start(f.greedy_prompt);
    ASSERT_TRUE(id);
    EXPECT_EQ(*g.next(), f.greedy_continuation[1]);
    EXPECT_EQ(*g.next(), f.greedy_continuation[2]);
    r = g.finish("stop");
    EXPECT_EQ(r.stop, "stop");
    EXPECT_EQ(r.reply, std::vector<TokenId>(f.greedy_continuation.begin(), f.greedy_continuation.begin() + 3));
    EXPECT_THROW(g.finish(), InvalidArgument);

    // The context limit: 9 prompt tokens and ctx 12 leave room for 3 decodes.
    go.n_predict = 100;
    go.ctx = 12;
    r = generate(comm, eng, tok, f.greedy_prompt, true, go);
    EXPECT_EQ(r.stop, "context");
    EXPECT_EQ(r.reply.size(), 4u);
    EXPECT_EQ(r.cache_after, 12);

    // A stop token: generation ends before it.
    go.ctx = 0;
    go.stop_tokens = {f.greedy_continuation[4]};
    r = generate(comm, eng, tok, f.greedy_prompt, true, go);
    EXPECT_EQ(r.stop, "eog");
    EXPECT_EQ(r.reply, std::vector<TokenId>(f.greedy_continuation.begin(), f.greedy_continuation.begin() + 4));

    // n_predict 0: the prompt runs, nothing comes out.
    go.n_predict = 0;
    r = generate(comm, eng, tok, f.greedy_prompt, true, go);
    EXPECT_TRUE(r.reply.empty());
    EXPECT_EQ(r.cache_after, static_cast<int64_t>(f.greedy_prompt.size()));
  });
}

TEST(LlamaSession, ThreadRanksMatchReferenceAndPerplexity) {
  const ModelFixture f = testref::tinyFixture("tiny-uneven");
  if (!f.present) GTEST_SKIP() << f.missing;
  LlamaSession s(sessionOptions(f.gguf_path, 2, 2));
  EXPECT_EQ(s.ranks(), 4);
  EXPECT_EQ(s.config().n_head, 6);
  EXPECT_EQ(s.contextLimit(), s.config().n_ctx_train);
  GenerationRequest req;
  req.n_predict = static_cast<int>(f.greedy_continuation.size());
  std::vector<TokenId> streamed;
  GenerateResult r = s.generate(f.greedy_prompt, req, [&](TokenId id) { streamed.push_back(id); });
  EXPECT_EQ(r.reply, f.greedy_continuation);
  EXPECT_EQ(streamed, r.reply);
  // Step-wise, and a new generation supersedes an open one.
  ASSERT_TRUE(s.beginGeneration(f.greedy_prompt, req));
  EXPECT_TRUE(s.generating());
  EXPECT_EQ(*s.nextToken(), f.greedy_continuation[1]);
  ASSERT_TRUE(s.beginGeneration(f.greedy_prompt, req));
  EXPECT_EQ(*s.nextToken(), f.greedy_continuation[1]);
  EXPECT_EQ(s.endGeneration().reply.size(), 2u);
  EXPECT_FALSE(s.generating());
  EXPECT_THROW(s.nextToken(), InvalidArgument);

  // perplexity() on the engines of runGrid: the same figures.
  PerplexityOptions po;
  po.n_ctx = 32;
  po.max_windows = 3;
  const PerplexityResult got = s.perplexity(kText, po);
  PerplexityResult want;
  std::mutex mu;
  EngineOptions eo;
  eo.tp = 2;
  eo.sp = 2;
  eo.allreduce = commAllreduceOptions("exact", 128, 2);
  const Tokenizer tok = Tokenizer::fromGguf(gguf::File::open(f.gguf_path));
  testref::runGrid(f.gguf_path, eo, [&](Communicator& comm, LlamaEngine& eng) {
    PerplexityResult r2 = perplexity(comm, eng, tok, std::string_view(kText), po);
    std::lock_guard<std::mutex> lock(mu);
    if (comm.rank() == 0) want = r2;
  });
  EXPECT_EQ(got.ppl, want.ppl);
  EXPECT_EQ(got.ppl_err, want.ppl_err);
  EXPECT_EQ(got.tokens, 3 * (32 - 1 - 16));
  EXPECT_EQ(got.wire_bytes, want.wire_bytes);
  // Refused before any rank runs: the session stays usable.
  po.n_ctx = 4096;
  EXPECT_THROW(s.perplexity(kText, po), InvalidArgument);
  EXPECT_THROW(s.beginGeneration({}, req), InvalidArgument);
  EXPECT_THROW(s.beginGeneration(std::vector<TokenId>{1, 9999}, req), InvalidArgument);
  EXPECT_EQ(s.generate(f.greedy_prompt, req).reply, f.greedy_continuation);
  s.close();
  EXPECT_TRUE(s.closed());
  EXPECT_THROW(s.generate(f.greedy_prompt, req), InvalidArgument);
}

TEST(LlamaSession, CallerCommunicatorRanks) {
  const ModelFixture f = testref::tinyFixture("tiny-f32");
  if (!f.present) GTEST_SKIP() << f.missing;
  std::mutex mu;
  std::vector<std::vector<TokenId>> replies(4);
  runThreadRanks(4, [&](Communicator& comm) {
    LlamaSession s(comm, sessionOptions(f.gguf_path, 2, 2));
    EXPECT_EQ(s.rank(), comm.rank());
    EXPECT_FALSE(s.threadRanks());
    GenerationRequest req;
    req.n_predict = static_cast<int>(f.greedy_continuation.size());
    const std::vector<TokenId> reply = s.generate(f.greedy_prompt, req).reply;
    std::lock_guard<std::mutex> lock(mu);
    replies[static_cast<size_t>(comm.rank())] = reply;
  });
  for (const auto& r : replies) EXPECT_EQ(r, f.greedy_continuation);

  // The size must be tp * sp; every rank refuses alike and the communicator stays usable.
  runThreadRanks(2, [&](Communicator& comm) {
    EXPECT_THROW(LlamaSession(comm, sessionOptions(f.gguf_path, 2, 2)), InvalidArgument);
    EXPECT_FALSE(comm.aborted());
    barrier(comm);
  });
  // One rank without its model file: it throws its own error, the others say another rank failed.
  runThreadRanks(2, [&](Communicator& comm) {
    const std::string path = comm.rank() == 1 ? f.gguf_path + ".missing" : f.gguf_path;
    try {
      LlamaSession s(comm, sessionOptions(path, 2, 1));
      ADD_FAILURE() << "no error";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(comm.rank() == 1 ? "not found" : "another rank failed"), std::string::npos)
          << e.what();
    }
    EXPECT_FALSE(comm.aborted());
  });
}

TEST(LlamaSession, RankFailureRethrowsRootCauseAndBreaksSession) {
  const ModelFixture f = testref::tinyFixture("tiny-f32");
  if (!f.present) GTEST_SKIP() << f.missing;
  SessionOptions o = sessionOptions(f.gguf_path, 2, 2);
  o.timeout = std::chrono::milliseconds(20000);
  LlamaSession s(o);
  PerplexityOptions po;
  po.n_ctx = 16;
  // The progress callback runs on rank 0's worker only: it fails there after the first window, while the
  // other ranks are inside the next one's collectives (they end with AbortedError).
  po.progress = [](const PerplexityProgress& p) {
    if (p.done == 1) throw std::runtime_error("progress callback failed");
  };
  const auto t0 = std::chrono::steady_clock::now();
  try {
    s.perplexity(kText, po);
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "progress callback failed");  // the root cause, not an AbortedError
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));  // no rank waited for a deadline
  EXPECT_NE(s.failure().find("rank 0: progress callback failed"), std::string::npos) << s.failure();
  GenerationRequest req;
  try {
    s.generate(f.greedy_prompt, req);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unusable after an earlier failure (rank 0: progress callback failed)"),
              std::string::npos)
        << e.what();
  }
}

TEST(LlamaSession, LoadErrorsNameTheCause) {
  const ModelFixture f = testref::tinyFixture("tiny-f32");
  if (!f.present) GTEST_SKIP() << f.missing;
  try {
    LlamaSession s(sessionOptions("/nonexistent/model.gguf", 1, 1));
    ADD_FAILURE() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("'/nonexistent/model.gguf' not found"), std::string::npos) << e.what();
  }
  EXPECT_THROW(LlamaSession(sessionOptions(f.gguf_path, 5, 1)), InvalidArgument);  // 4 heads
  SessionOptions o = sessionOptions(f.gguf_path, 1, 1);
  o.comm.comm = "int3";
  try {
    LlamaSession s(o);
    ADD_FAILURE() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("comm 'int3': use exact"), std::string::npos) << e.what();
  }
}

TEST(CommSetting, NamesAndPresets) {
  EXPECT_EQ(commAllreduceOptions("exact", 128, 2).algorithm, allreduceOptionsFromName("twostep-fp32").algorithm);
  EXPECT_EQ(commAllreduceOptions("int4", 64, 1).reduce_scatter.bits, 4);
  EXPECT_EQ(commAllreduceOptions("int4", 64, 1).reduce_scatter.group_size, 64);
  EXPECT_THROW(commAllreduceOptions("nope", 128, 2, false, false, "--comm"), InvalidArgument);
  EXPECT_TRUE(lowBitComm("int8"));
  EXPECT_TRUE(lowBitComm("flash-int4"));
  EXPECT_FALSE(lowBitComm("bf16"));
  CommSetting c;
  EXPECT_FALSE(c.errorFeedback());
  c.comm = "int8";
  EXPECT_TRUE(c.errorFeedback());
  c.error_feedback = 0;
  EXPECT_FALSE(c.errorFeedback());
  c = CommSetting();
  c.comm = "int4-refined";
  EngineOptions e;
  c.apply(e);
  EXPECT_TRUE(e.error_feedback);
  EXPECT_EQ(e.refine_layers, 2);
  EXPECT_TRUE(e.allreduce.reduce_scatter.rotate && e.allreduce.reduce_scatter.clip);
  c.applyPreset();
  EXPECT_EQ(c.comm, "int4");
  c.oneshot = "sometimes";
  EXPECT_THROW(c.apply(e), InvalidArgument);
}

}  // namespace
}  // namespace flashring
