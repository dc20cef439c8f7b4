// LlamaSession (flashring/llama_session.h): a model on thread ranks with persistent workers, or on one rank
// of a caller's communicator.
#include "flashring/llama_session.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

#include "flashring/cpu.h"
#include "flashring/error.h"
#include "flashring/gguf.h"
#include "flashring/model_path.h"
#include "flashring/qmatmul.h"
#include "flashring/thread_comm.h"

namespace flashring {

namespace {

// What one rank holds.
struct RankState {
  int rank = 0;
  Communicator* comm = nullptr;
  std::unique_ptr<LlamaEngine> engine;
  std::unique_ptr<Generation> gen;
};

uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

std::string describe(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "an unknown exception";
  }
}

}  // namespace

struct LlamaSession::Impl {
  SessionOptions opts;
  std::string path;
  std::shared_ptr<const gguf::File> file;
  std::unique_ptr<Tokenizer> tok;
  LlamaConfig cfg;
  EngineOptions eo;
  int64_t ctx = 0;
  std::vector<RankState> ranks;  // thread ranks: one per rank; a caller's communicator: one

  // A caller's communicator (null with thread ranks).
  Communicator* comm = nullptr;

  // Thread ranks: the world, its workers and the job they run.
  std::unique_ptr<ThreadWorld> world;
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable cv_job, cv_done;
  std::function<void(RankState&)> job;
  uint64_t job_seq = 0;
  int pending = 0;
  bool quit = false;
  std::vector<std::exception_ptr> errors;
  std::vector<int> error_order;
  std::atomic<int> failures{0};

  std::mutex call_mu;  // one call at a time (close() waits for the call in progress)
  bool closed = false;
  std::string failure;
  bool generating = false;

  int n() const { return opts.tp * opts.sp; }

  void checkUsable() const {
    if (closed) throw InvalidArgument("the Llama session is closed");
    if (!failure.empty())
      throw Error(
          fmt::format("the Llama session is unusable after an earlier failure ({}); create a new one", failure));
  }

  // Options, model file, tokenizer, configuration: what every rank does alike before any collective.
  void prepare(const SessionOptions& o) {
    opts = o;
    if (opts.tp < 1 || opts.sp < 1)
      throw InvalidArgument(fmt::format("tp {} x sp {}: both must be at least 1", opts.tp, opts.sp));
    if (opts.ctx < 0) throw InvalidArgument(fmt::format("ctx {}: must be >= 0 (0: the model's)", opts.ctx));
    eo.tp = opts.tp;
    eo.sp = opts.sp;
    opts.comm.apply(eo, "comm");
    eo.attention = opts.attention;
    eo.append_attention = opts.append_attention;
    eo.layout = opts.layout;
    if (opts.threads < 0) throw InvalidArgument(fmt::format("threads {}: must be >= 0", opts.threads));
    path = opts.model.empty() ? defaultModelPath() : opts.model;
    if (!std::filesystem::exists(path))
      throw InvalidArgument(fmt::format(
          "model file '{}' not found{}", path,
          opts.model.empty() ? "; run `make deps` (it fetches the default model) or name a GGUF file" : ""));
    file = std::make_shared<const gguf::File>(gguf::File::open(path));
    tok = std::make_unique<Tokenizer>(Tokenizer::fromGguf(*file));
    cfg = LlamaConfig::fromGguf(*file);
    ctx = opts.ctx > 0 ? opts.ctx : cfg.n_ctx_train;
    if (opts.gemm_threshold > 0) qmm::setGemmThreshold(opts.gemm_threshold);
  }

  void setThreads(bool one_rank) {
    const int t = opts.threads > 0 ? opts.threads : (one_rank ? cpu::hardwareThreads() : 1);
    if (cpu::threads() != t) cpu::setThreads(t);
    eo.threads = 0;  // process-wide: set here once, not by every engine
  }

  // The worker of thread rank r: runs each job once, until quit.
  void workerLoop(int r) {
    uint64_t seen = 0;
    while (true) {
      std::function<void(RankState&)> fn;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv_job.wait(lock, [&] { return quit || job_seq != seen; });
        if (quit) break;
        seen = job_seq;
        fn = job;
      }
      std::exception_ptr err;
      try {
        fn(ranks[r]);
      } catch (...) {
        err = std::current_exception();
        world->abort(fmt::format("rank {} failed: {}", r, describe(err)));
      }
      std::lock_guard<std::mutex> lock(mu);
      if (err) {
        errors[r] = err;
        error_order[r] = failures.fetch_add(1);
      }
      if (--pending == 0) cv_done.notify_all();
    }
    // The engines go on their own threads, before the world they send on.
    ranks[r].gen.reset();
    ranks[r].engine.reset();
  }

  // Runs fn on every rank (collective); rethrows the root cause of a failure and breaks the session.
  void runAll(const std::function<void(RankState&)>& fn) {
    checkUsable();
    if (comm != nullptr) {
      try {
        fn(ranks[0]);
      } catch (const std::exception& e) {
        failure = fmt::format("rank {}: {}", comm->rank(), e.what());
        if (!comm->aborted()) comm->abort(fmt::format("rank {} failed: {}", comm->rank(), e.what()));
        throw;
      }
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      job = fn;
      std::fill(errors.begin(), errors.end(), nullptr);
      std::fill(error_order.begin(), error_order.end(), -1);
      failures = 0;
      pending = n();
      ++job_seq;
    }
    cv_job.notify_all();
    bool interrupted = false;
    {
      std::unique_lock<std::mutex> lock(mu);
      while (!cv_done.wait_for(lock, kInterruptPeriod, [&] { return pending == 0; })) {
        const InterruptCheck check = interruptCheck();
        if (interrupted || check == nullptr) continue;
        lock.unlock();
        const bool fire = check();
        if (fire) {
          interrupted = true;
          world->abort("interrupted");
        }
        lock.lock();
      }
      job = nullptr;
    }
    if (interrupted) {
      failure = "interrupted";
      throw InterruptedError("interrupted: the Llama session's ranks were stopped");
    }
    int root = -1;
    for (int r = 0; r < n(); ++r) {
      if (!errors[r]) continue;
      bool aborted = false;
      try {
        std::rethrow_exception(errors[r]);
      } catch (const AbortedError&) {
        aborted = true;
      } catch (...) {
      }
      const auto better = [&](int a) {
        // A root cause beats the aborts it caused; among equals, the first to fail.
        if (root < 0) return true;
        bool root_aborted = false;
        try {
          std::rethrow_exception(errors[root]);
        } catch (const AbortedError&) {
          root_aborted = true;
        } catch (...) {
        }
        if (root_aborted != aborted) return root_aborted;
        return error_order[a] < error_order[root];
      };
      if (better(r)) root = r;
    }
    if (root >= 0) {
      failure = fmt::format("rank {}: {}", root, describe(errors[root]));
      std::rethrow_exception(errors[root]);
    }
  }

  void startThreads() {
    world = std::make_unique<ThreadWorld>(n());
    ranks.resize(n());
    errors.assign(n(), nullptr);
    error_order.assign(n(), -1);
    for (int r = 0; r < n(); ++r) {
      ranks[r].rank = r;
      ranks[r].comm = &world->communicator(r);
      if (opts.timeout.count() > 0) ranks[r].comm->setTimeout(opts.timeout);
    }
    for (int r = 0; r < n(); ++r) workers.emplace_back([this, r] { workerLoop(r); });
  }

  void stopThreads() {
    {
      std::lock_guard<std::mutex> lock(mu);
      quit = true;
    }
    cv_job.notify_all();
    for (auto& t : workers)
      if (t.joinable()) t.join();
    workers.clear();
  }

  void release() {
    if (comm == nullptr) {
      stopThreads();
    } else {
      for (auto& r : ranks) {
        r.gen.reset();
        r.engine.reset();
      }
    }
    ranks.clear();
    world.reset();
    tok.reset();
    file.reset();
  }

  // Ends an open generation on every rank (inside a job).
  static void endOpen(RankState& s) {
    if (s.gen) {
      s.gen->finish("superseded");
      s.gen.reset();
    }
  }
};

LlamaSession::LlamaSession(const SessionOptions& options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.prepare(options);
  m.setThreads(m.n() == 1);
  std::vector<std::shared_ptr<const LlamaWeights>> shards;
  for (int t = 0; t < m.opts.tp; ++t) shards.push_back(LlamaWeights::load(m.file, m.opts.tp, t, m.opts.load));
  m.startThreads();
  try {
    m.runAll(
        [&](RankState& s) { s.engine = std::make_unique<LlamaEngine>(*s.comm, shards[s.rank % m.opts.tp], m.eo); });
  } catch (...) {
    m.release();
    throw;
  }
}

LlamaSession::LlamaSession(Communicator& comm, const SessionOptions& options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  // Every rank prepares alone, then they agree: a rank that failed (a missing file on one node, a bad option)
  // throws its error and the others an InvalidArgument, with the communicator still usable.
  std::exception_ptr err;
  std::shared_ptr<const LlamaWeights> shard;
  try {
    m.prepare(options);
    if (comm.size() != m.n())
      throw InvalidArgument(fmt::format("tp {} x sp {} needs a communicator of {} ranks; this one has {}", m.opts.tp,
                                        m.opts.sp, m.n(), comm.size()));
    shard = LlamaWeights::load(m.file, m.opts.tp, comm.rank() % m.opts.tp, m.opts.load);
  } catch (...) {
    err = std::current_exception();
  }
  const double failed = allreduceMax(comm, err ? 1.0 : 0.0);
  if (err) std::rethrow_exception(err);
  if (failed > 0)
    throw InvalidArgument(
        fmt::format("rank {}: another rank failed to set up the Llama session (see its error)", comm.rank()),
        comm.rank());
  m.setThreads(comm.size() == 1 && comm.transport() == "thread");
  m.comm = &comm;
  m.ranks.resize(1);
  m.ranks[0].rank = comm.rank();
  m.ranks[0].comm = &comm;
  m.runAll([&](RankState& s) { s.engine = std::make_unique<LlamaEngine>(*s.comm, shard, m.eo); });
}

LlamaSession::~LlamaSession() { close(); }

void LlamaSession::close() {
  if (!impl_) return;
  std::lock_guard<std::mutex> lock(impl_->call_mu);
  if (impl_->closed) return;
  impl_->release();
  impl_->closed = true;
}

bool LlamaSession::closed() const { return impl_->closed; }
std::string LlamaSession::failure() const { return impl_->failure; }

const std::string& LlamaSession::modelPath() const { return impl_->path; }
const LlamaConfig& LlamaSession::config() const { return impl_->cfg; }
const Tokenizer& LlamaSession::tokenizer() const {
  impl_->checkUsable();
  return *impl_->tok;
}
const gguf::File& LlamaSession::file() const {
  impl_->checkUsable();
  return *impl_->file;
}
const SessionOptions& LlamaSession::options() const { return impl_->opts; }
const EngineOptions& LlamaSession::engineOptions() const { return impl_->eo; }
int64_t LlamaSession::contextLimit() const { return impl_->ctx; }
int LlamaSession::rank() const { return impl_->comm ? impl_->comm->rank() : 0; }
int LlamaSession::ranks() const { return impl_->n(); }
std::string LlamaSession::transport() const { return impl_->comm ? impl_->comm->transport() : "thread"; }
bool LlamaSession::threadRanks() const { return impl_->comm == nullptr; }
bool LlamaSession::generating() const { return impl_->generating; }

void LlamaSession::checkTokens(std::span<const TokenId> ids, const char* what) const {
  const int32_t v = impl_->cfg.n_vocab;
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= v)
      throw InvalidArgument(
          fmt::format("{}: token {} (at index {}) is not in the vocabulary of {} tokens", what, ids[i], i, v));
}

std::vector<TokenId> LlamaSession::tokenize(std::string_view text, bool add_bos, bool parse_special) const {
  return tokenizer().encode(text, add_bos, parse_special);
}

std::string LlamaSession::detokenize(std::span<const TokenId> ids) const {
  const Tokenizer& t = tokenizer();
  checkTokens(ids, "detokenize");
  return t.decode(std::vector<TokenId>(ids.begin(), ids.end()));
}

std::string LlamaSession::tokenText(TokenId id) const {
  const Tokenizer& t = tokenizer();
  checkTokens(std::span<const TokenId>(&id, 1), "tokenText");
  return t.tokenText(id);
}

std::vector<TokenId> LlamaSession::chatTokens(std::span<const ChatMessage> messages, std::string_view template_name,
                                              std::vector<TokenId>* stop_tokens) const {
  const Tokenizer& t = tokenizer();
  const ChatTemplate tmpl = ChatTemplate::forModel(*impl_->file, template_name);
  const ChatSpecialTokens specials = chatSpecialTokensFromGguf(*impl_->file);
  ChatRenderOptions ro;
  ro.add_generation_prompt = true;
  ro.bos_token = specials.bos;
  ro.eos_token = specials.eos;
  const std::string text = tmpl.render(messages, ro);
  // The template carries its own BOS; special tokens in the text are the template's markers.
  std::vector<TokenId> ids = t.encode(text, /*add_bos=*/false, /*parse_special=*/true);
  if (ids.empty()) throw InvalidArgument("the rendered conversation encodes to no tokens");
  if (stop_tokens != nullptr) *stop_tokens = chatStopTokens(tmpl, t);
  return ids;
}

std::optional<TokenId> LlamaSession::beginGeneration(std::span<const TokenId> prompt,
                                                     const GenerationRequest& request) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.call_mu);
  m.checkUsable();
  if (prompt.empty()) throw InvalidArgument("generate: the prompt is empty (it encodes to no tokens)");
  checkTokens(prompt, "generate: prompt");
  checkTokens(request.stop_tokens, "generate: stop_tokens");
  if (request.n_predict < 0) throw InvalidArgument(fmt::format("generate: n_predict {} < 0", request.n_predict));
  validateSamplingOptions(request.sampling);
  if (m.ctx > 0 && static_cast<int64_t>(prompt.size()) > m.ctx)
    throw InvalidArgument(fmt::format(
        "generate: the prompt is {} tokens, beyond the context limit of {} tokens ({})", prompt.size(), m.ctx,
        m.opts.ctx > 0 ? "the session's ctx" : "the model's training context; a larger ctx raises it"));
  GenerateOptions go;
  go.n_predict = request.n_predict;
  go.ctx = m.ctx;
  go.stop_at_eog = request.stop_at_eog;
  go.stop_tokens = request.stop_tokens;
  std::optional<TokenId> first;
  m.generating = false;
  m.runAll([&](RankState& s) {
    Impl::endOpen(s);
    if (m.comm != nullptr) {
      // Every rank must run the same prompt with the same settings (the engine cannot tell otherwise).
      uint64_t h = 0xcbf29ce484222325ull;
      h = fnv1a(h, prompt.data(), prompt.size_bytes());
      h = fnv1a(h, &go.n_predict, sizeof(go.n_predict));
      h = fnv1a(h, &request.sampling.temperature, sizeof(float));
      h = fnv1a(h, &request.sampling.top_k, sizeof(int));
      h = fnv1a(h, &request.sampling.top_p, sizeof(float));
      h = fnv1a(h, &request.sampling.min_p, sizeof(float));
      h = fnv1a(h, &request.sampling.seed, sizeof(uint64_t));
      h = fnv1a(h, go.stop_tokens.data(), go.stop_tokens.size() * sizeof(TokenId));
      checkSameOnAllRanks(*s.comm, h, "the prompt and generation settings");
    }
    s.engine->setSampling(request.sampling);
    s.gen = std::make_unique<Generation>(*s.comm, *s.engine, *m.tok, go);
    std::optional<TokenId> id = s.gen->start(prompt, true);
    if (s.rank == 0 || m.comm != nullptr) first = id;
  });
  m.generating = true;
  return first;
}

std::optional<TokenId> LlamaSession::nextToken() {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.call_mu);
  m.checkUsable();
  if (!m.generating) throw InvalidArgument("nextToken: no generation is open (beginGeneration first)");
  if (m.ranks[0].gen && m.ranks[0].gen->done()) return std::nullopt;  // the same on every rank
  std::optional<TokenId> id;
  m.runAll([&](RankState& s) {
    std::optional<TokenId> t = s.gen->next();
    if (s.rank == 0 || m.comm != nullptr) id = t;
  });
  return id;
}

GenerateResult LlamaSession::endGeneration(const std::string& reason) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.call_mu);
  m.checkUsable();
  if (!m.generating) throw InvalidArgument("endGeneration: no generation is open (beginGeneration first)");
  m.generating = false;
  GenerateResult res;
  m.runAll([&](RankState& s) {
    GenerateResult r = s.gen->finish(reason);
    s.gen.reset();
    if (s.rank == 0 || m.comm != nullptr) res = std::move(r);
  });
  return res;
}

GenerateResult LlamaSession::generate(std::span<const TokenId> prompt, const GenerationRequest& request,
                                      const std::function<void(TokenId)>& on_token) {
  std::optional<TokenId> id = beginGeneration(prompt, request);
  while (id) {
    if (on_token) on_token(*id);
    id = nextToken();
  }
  return endGeneration();
}

PerplexityResult LlamaSession::perplexity(std::string_view text, PerplexityOptions options) {
  const std::vector<TokenId> ids = perplexityTokens(tokenizer(), text);
  return perplexity(std::span<const TokenId>(ids), std::move(options));
}

PerplexityResult LlamaSession::perplexity(std::span<const TokenId> ids, PerplexityOptions options) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.call_mu);
  m.checkUsable();
  checkTokens(ids, "perplexity");
  if (options.n_ctx < 4) throw InvalidArgument(fmt::format("perplexity: ctx {} < 4", options.n_ctx));
  if (options.max_windows < 0)
    throw InvalidArgument(fmt::format("perplexity: chunks {} < 0 (0: all)", options.max_windows));
  if (perplexityWindows(static_cast<int64_t>(ids.size()), options) < 1)
    throw InvalidArgument(
        fmt::format("perplexity: the text has {} tokens, fewer than one context of {} (use a smaller "
                    "ctx)",
                    ids.size(), options.n_ctx));
  options.testing(m.eo);
  options.reference = commAllreduceOptions("exact", m.opts.comm.group_size, 0);
  PerplexityResult res;
  m.generating = false;
  m.runAll([&](RankState& s) {
    Impl::endOpen(s);
    PerplexityOptions o = options;
    if (s.rank != 0 && m.comm == nullptr) o.progress = nullptr;
    PerplexityResult r = flashring::perplexity(*s.comm, *s.engine, *m.tok, ids, o);
    if (s.rank == 0 || m.comm != nullptr) res = std::move(r);
  });
  return res;
}

}  // namespace flashring
