// Perplexity of a model on a text, as llama.cpp's llama-perplexity computes it, and the paired comparison of
// one communication setting against exact communication (llama-perplexity --kl-divergence).
//
// The text is tokenized once (BOS first when the vocabulary adds one, special tokens not parsed) and cut into
// consecutive windows of n_ctx tokens; the tokens left over after the last whole window are not used. Each
// window is run from an empty KV cache with its first token replaced by BOS (when the vocabulary adds one) and
// only its second half is scored: the negative log-likelihood of tokens[i + 1] given tokens[..i] for i in
// [n_ctx / 2, n_ctx - 1), so every scored token has at least n_ctx / 2 tokens of context. PPL = exp(mean NLL);
// its error is llama-perplexity's: the standard error of the mean NLL, propagated through exp.
//
// With kl_divergence every window also runs with the reference communication (exact fp32 by default), both
// passes' logits are gathered, and the two next-token distributions are compared position by position: the
// reference's perplexity, the mean KL(reference || tested) in nats, the mean of the paired NLL difference
// (= ln(PPL / reference PPL)) with its standard error — far tighter than the two perplexities' own errors,
// because the per-token noise of the text cancels — and the fraction of positions whose most likely token
// is the same. Without kl_divergence the scoring goes through LlamaEngine::score() (two floats per scored
// row gathered instead of the logits); with it the perplexity comes from the gathered logits (the same up to
// rounding).
//
// perplexity() is collective over the engine's world: every rank calls it with the same tokens and options.
// The work of the comparison (log-softmax of both passes' rows, the KL sums) is split over the ranks by
// position and the sums reduced, so every figure is the same on every rank.
// It replaces the KV cache and resets the engine's statistics (LlamaEngine::resetStats), and with
// kl_divergence leaves the tested communication set (setAllreduceOptions / setErrorCorrection).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "flashring/allreduce.h"
#include "flashring/comm.h"
#include "flashring/tokenizer.h"

namespace flashring {

class LlamaEngine;
struct EngineOptions;

// Where a perplexity run is: called on every rank, once before the first window (done = 0, ppl NaN) and
// after each window with the perplexity of the windows done so far (the same value on every rank).
struct PerplexityProgress {
  int64_t done = 0;         // windows scored
  int64_t windows = 0;      // windows to score
  int64_t text_tokens = 0;  // tokens of the whole text
  double ppl = 0;           // over the scored tokens of the first `done` windows
};

struct PerplexityOptions {
  int n_ctx = 512;          // window length, >= 4
  int64_t max_windows = 0;  // score at most this many windows (0: every whole window of the text)
  bool kl_divergence = false;
  // With kl_divergence: the communication compared against (applied with error feedback and refinement off)...
  AllreduceOptions reference = allreduceOptionsFromName("twostep-fp32");
  // ... and the communication under test, which the engine is set back to before every tested pass (the
  // engine does not report its own settings; take them from the EngineOptions it was built with, see
  // testing()). Ignored without kl_divergence: the engine's current settings are what is measured.
  AllreduceOptions allreduce;
  bool error_feedback = false;
  int refine_layers = 0;
  std::function<void(const PerplexityProgress&)> progress;

  // Copies the tested communication (allreduce, error_feedback, refine_layers) from engine options.
  PerplexityOptions& testing(const EngineOptions& engine);
};

// Every figure is the same on every rank.
struct PerplexityResult {
  double ppl = 0, ppl_err = 0;
  int64_t tokens = 0;       // scored tokens: windows * (n_ctx - 1 - n_ctx / 2)
  int64_t text_tokens = 0;  // tokens of the text (or of the ids passed)
  int64_t windows = 0;
  int n_ctx = 0;
  double seconds = 0;  // wall time of the windows, the slowest rank's
  // Of the tested passes only (the reference passes of kl_divergence are left out): time blocked on messages
  // and spent in the all-reduce codecs (mean over ranks), payload bytes sent (sum over ranks).
  double comm_s = 0, quant_s = 0, wire_bytes = 0;
  struct Kl {
    double base_ppl = 0;      // the reference communication's perplexity on the same windows
    double kld = 0;           // mean KL(reference || tested) of the next-token distributions, nats
    double ln_ratio = 0;      // mean of nll(tested) - nll(reference) = ln(ppl / base_ppl)
    double ln_ratio_err = 0;  // its standard error (paired, over the scored tokens)
    double same_top1 = 0;     // fraction of positions whose most likely token is the same
  };
  std::optional<Kl> kl;  // with kl_divergence
};

// The tokens perplexity(text) scores: `text` encoded with BOS first when the vocabulary adds one, special
// tokens not parsed (as llama-perplexity tokenizes its file).
std::vector<TokenId> perplexityTokens(const Tokenizer& tok, std::string_view text);
// Whole windows of n_ctx in `n_tokens` tokens, capped at max_windows (0 when the text is too short).
int64_t perplexityWindows(int64_t n_tokens, const PerplexityOptions& options);

// `world` is the communicator the engine was built on (the figures are reduced over it). Throws
// InvalidArgument (on every rank) when n_ctx < 4, world is not the engine's size, or the tokens make no whole
// window.
PerplexityResult perplexity(Communicator& world, LlamaEngine& engine, const Tokenizer& tok,
                            std::span<const TokenId> ids, const PerplexityOptions& options);
PerplexityResult perplexity(Communicator& world, LlamaEngine& engine, const Tokenizer& tok, std::string_view text,
                            const PerplexityOptions& options);

}  // namespace flashring
