// Text generation on a LlamaEngine: one prefill (or an append over the KV cache) and the decoding after it,
// until an end-of-generation token, n_predict tokens, or the context limit. `flashring run` and the Python
// package's flashring.Llama both generate through this.
//
// Generation is the step-wise form (start(), then one decode per next(), then finish()), so that a caller can
// stream tokens as they come or stop early; generate() runs it to the end with a per-token callback. Every
// call is collective over the engine's communicator: every rank calls the same methods in the same order
// (the tokens, and therefore every stop decision, are the same on every rank).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "flashring/comm.h"
#include "flashring/llama.h"
#include "flashring/tokenizer.h"

namespace flashring {

class ChatTemplate;

struct GenerateOptions {
  int n_predict = 32;  // at most this many tokens (0: none; the prompt still runs)
  // Stop before decoding once the KV cache holds `ctx` tokens (0: no limit). A prompt longer than ctx is the
  // caller's to refuse (the messages name the caller's flags).
  int64_t ctx = 0;
  bool stop_at_eog = true;           // end at the vocabulary's end-of-generation tokens (Tokenizer::isEog)
  std::vector<TokenId> stop_tokens;  // and at these (a chat template's end-of-turn marker, see chatStopTokens)
};

// One prefill (or append over the cache) and the decoding after it. The figures are the same on every rank.
struct GenerateResult {
  int64_t run_tokens = 0;  // tokens prefilled or appended
  int64_t cache_before = 0, cache_after = 0;
  bool fresh = true;  // prefill (a new cache) rather than append
  std::vector<TokenId> reply;
  // Why generation ended: "eog" (a stop token), "n_predict", "context", or the reason given to finish() when
  // the caller ended it first ("cancelled" by default).
  std::string stop;
  double ttft_s = 0;    // prefill / append, the slowest rank's
  double decode_s = 0;  // the decode steps (next() calls), the slowest rank's
  // The prefill phase, mean over ranks; wire bytes summed over ranks (prefill only, and with decode).
  double comm_s = 0, quant_s = 0, attn_s = 0, compute_s = 0, prefill_wire_bytes = 0, wire_bytes = 0;
  SpScheme scheme = SpScheme::Auto;  // what SP attention ran in the prefill (Auto when sp == 1)
  double decodeTokS() const {
    return decode_s > 0 && reply.size() > 1 ? static_cast<double>(reply.size() - 1) / decode_s : 0;
  }
  double prefillTokS() const { return ttft_s > 0 ? static_cast<double>(run_tokens) / ttft_s : 0; }
};

// Step-wise generation on one rank (collective over `world`, the engine's communicator). The engine's
// sampling settings apply (LlamaEngine::setSampling before start()). Holds references to its arguments.
class Generation {
 public:
  Generation(Communicator& world, LlamaEngine& engine, const Tokenizer& tok, GenerateOptions options);

  // Runs `tokens`: a prefill (a new KV cache) when `fresh`, else an append after the cached tokens. Returns
  // the first generated token, or std::nullopt when generation ends without one (n_predict 0, or a stop
  // token first). Resets the engine's statistics. Call once.
  std::optional<TokenId> start(std::span<const TokenId> tokens, bool fresh = true);
  // One decode step: the next token, or std::nullopt once generation has ended (a stop token, n_predict,
  // the context limit); after that it keeps returning std::nullopt without running anything.
  std::optional<TokenId> next();
  bool done() const { return done_; }
  const std::vector<TokenId>& reply() const { return result_.reply; }

  // Collective: the figures (reduced over the ranks). When generation has not ended, it ends here with
  // stop = `reason`. Call once, after start().
  GenerateResult finish(const std::string& reason = "cancelled");

 private:
  bool stops(TokenId id) const;
  Communicator& world_;
  LlamaEngine& engine_;
  const Tokenizer& tok_;
  GenerateOptions options_;
  GenerateResult result_;
  EngineStats prefill_stats_;
  double ttft_local_ = 0, decode_local_ = 0;
  TokenId last_ = -1;
  bool started_ = false, done_ = false, finished_ = false;
};

// Runs a Generation to its end: on_token (may be empty) sees each generated token as it comes, on every rank.
GenerateResult generate(Communicator& world, LlamaEngine& engine, const Tokenizer& tok, std::span<const TokenId> tokens,
                        bool fresh, const GenerateOptions& options, const std::function<void(TokenId)>& on_token = {});

// End-of-turn tokens of a chat template in this vocabulary: the markers <|im_end|>, <|eot_id|>, <|end|> and
// </s> that the template's source mentions and that are one token here (a template forced on a model of
// another family); generation also stops at them (GenerateOptions::stop_tokens).
std::vector<TokenId> chatStopTokens(const ChatTemplate& tmpl, const Tokenizer& tok);

}  // namespace flashring
