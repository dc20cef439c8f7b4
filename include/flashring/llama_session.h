// LlamaSession: a model loaded for tp x sp ranks and driven from one thread, the engine behind the Python
// package's flashring.Llama.
//
// Two ways to run:
//  - Thread ranks (LlamaSession(options)): the session owns the GGUF file, a ThreadWorld of tp * sp ranks and
//    one persistent worker thread per rank, each with its LlamaEngine (the weight shard of a TP rank is shared
//    by its SP ranks). Every call runs one collective job on all the workers and returns rank 0's result.
//  - One rank of a caller's communicator (LlamaSession(comm, options), comm.size() == tp * sp: an MPI process,
//    or a thread rank the caller runs): the calls run on the calling thread, and are collective over `comm`:
//    every rank makes the same calls in the same order.
// A failure on one rank aborts the world (the thread world, or the caller's communicator) so that the other
// ranks end at once instead of hanging; the call rethrows the root cause (the first error that is not an
// AbortedError), and the session then refuses every further call with an Error naming that cause. While the
// thread ranks work, the calling thread runs the process's interrupt check (comm.h) every kInterruptPeriod;
// when it fires the world is aborted and the call throws InterruptedError (the session is then unusable too).
// A session is driven from one thread at a time; tokenize()/detokenize()/config() need no collective.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flashring/chat.h"
#include "flashring/comm.h"
#include "flashring/comm_setting.h"
#include "flashring/generate.h"
#include "flashring/llama.h"
#include "flashring/perplexity.h"
#include "flashring/sampling.h"
#include "flashring/tokenizer.h"

namespace flashring {

namespace gguf {
class File;
}

struct SessionOptions {
  std::string model;  // GGUF file; empty: defaultModelPath() (model_path.h)
  int tp = 1, sp = 1;
  CommSetting comm;  // the TP all-reduce, by --comm name
  SpScheme attention = SpScheme::Auto;
  SpScheme append_attention = SpScheme::Auto;  // EngineOptions::append_attention
  SeqLayout layout = SeqLayout::Zigzag;
  LoadOptions load;
  // Kernel (and OpenBLAS) threads of the process (cpu::setThreads; process-wide). 0: all cores when the
  // process runs one rank (thread ranks with tp * sp == 1, or a caller's communicator of size 1 over threads),
  // else 1, as the flashring tools choose.
  int threads = 0;
  // The context limit: generation stops when the KV cache holds this many tokens, and a longer prompt is an
  // InvalidArgument. 0: the model's training context (LlamaConfig::n_ctx_train).
  int64_t ctx = 0;
  // Deadline of every wait of the thread ranks' communicators (0: the default, 120 s or FLASHRING_TIMEOUT_MS).
  // A caller's communicator keeps its own.
  std::chrono::milliseconds timeout{0};
  int64_t gemm_threshold = 0;  // qmm::setGemmThreshold (process-wide; 0: leave it)
};

// What a generation is asked for (beginGeneration / generate).
struct GenerationRequest {
  int n_predict = 32;
  SamplingOptions sampling;  // greedy by default; the sampler restarts from sampling.seed
  bool stop_at_eog = true;
  std::vector<TokenId> stop_tokens;  // chat: chatStopTokens() of the template (see chatTokens())
};

class LlamaSession {
 public:
  // Thread ranks. Loads the model (throws InvalidArgument naming the path when it does not exist, a
  // gguf::FormatError naming it when it is corrupt, InvalidArgument when tp exceeds the heads), starts the
  // workers and builds the engines.
  explicit LlamaSession(const SessionOptions& options);
  // One rank of `comm` (size tp * sp), which must outlive the session. Collective over comm.
  LlamaSession(Communicator& comm, const SessionOptions& options);
  ~LlamaSession();
  LlamaSession(const LlamaSession&) = delete;
  LlamaSession& operator=(const LlamaSession&) = delete;

  const std::string& modelPath() const;
  const LlamaConfig& config() const;
  const Tokenizer& tokenizer() const;
  const gguf::File& file() const;
  const SessionOptions& options() const;
  const EngineOptions& engineOptions() const;  // what the engines were built with
  int64_t contextLimit() const;                // options().ctx, or the model's training context
  int rank() const;                            // this caller's rank: 0 for thread ranks
  int ranks() const;                           // tp * sp
  std::string transport() const;               // "thread" or the caller's communicator's
  bool threadRanks() const;                    // the session owns its ranks

  // Tokenizer::encode / decode. Token ids are checked against the vocabulary (InvalidArgument naming the
  // first bad one).
  std::vector<TokenId> tokenize(std::string_view text, bool add_bos = true, bool parse_special = true) const;
  std::string detokenize(std::span<const TokenId> ids) const;
  std::string tokenText(TokenId id) const;  // one token's bytes (for streaming)
  void checkTokens(std::span<const TokenId> ids, const char* what) const;

  // The tokens of a chat prompt: `messages` rendered with the model's chat template (or the builtin named
  // `template_name`), generation prompt added, BOS/EOS texts from the model; encoded without an extra BOS and
  // with special tokens parsed. `stop_tokens` (when not null) receives the template's end-of-turn tokens.
  std::vector<TokenId> chatTokens(std::span<const ChatMessage> messages, std::string_view template_name = {},
                                  std::vector<TokenId>* stop_tokens = nullptr) const;

  // Step-wise generation, collective. beginGeneration() prefills `prompt` (a new KV cache) and returns the
  // first token, or std::nullopt when generation ends at once (n_predict 0, a stop token first); each
  // nextToken() runs one decode and returns the next token, or std::nullopt once generation has ended
  // (a stop token, n_predict, the context limit). endGeneration() reduces the figures over the ranks
  // (`reason` is the stop reason when the caller ends early). A beginGeneration() while one is open ends it
  // first. InvalidArgument for an empty prompt, one beyond the context limit, or bad token ids.
  std::optional<TokenId> beginGeneration(std::span<const TokenId> prompt, const GenerationRequest& request);
  std::optional<TokenId> nextToken();
  GenerateResult endGeneration(const std::string& reason = "cancelled");
  bool generating() const;  // between beginGeneration() and endGeneration()
  // The whole generation at once; on_token sees each token (on the calling thread) as it comes.
  GenerateResult generate(std::span<const TokenId> prompt, const GenerationRequest& request,
                          const std::function<void(TokenId)>& on_token = {});

  // perplexity() of flashring/perplexity.h, collective. With kl_divergence the tested communication is the
  // session's (PerplexityOptions::testing) and the reference is exact fp32 with the session's group size.
  // Resets the KV cache (an open generation is ended first).
  PerplexityResult perplexity(std::string_view text, PerplexityOptions options);
  PerplexityResult perplexity(std::span<const TokenId> ids, PerplexityOptions options);

  // Ends the workers (thread ranks) and releases the engines and the model. Idempotent; every other call
  // afterwards throws. Not collective (the engines' destruction sends nothing).
  void close();
  bool closed() const;
  // Why the session refuses calls: the error that broke it (empty while it is usable).
  std::string failure() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace flashring
