// LLaMA-family inference with tensor and sequence parallelism.
//
// A model (LLaMA architecture: RMSNorm, RoPE, grouped-query attention, SwiGLU; tied or separate output
// head) is read from a GGUF file whose weight matrices stay in their GGUF types (qmatmul.h): each TP rank
// maps the rows it needs straight from the memory-mapped file, and copies (in the same type, once, at load)
// only what is not contiguous there: the column slices of the row-parallel matrices (attention output, FFN
// down), whose splits fall on quantization-block boundaries, and a non-contiguous set of KV heads. Linear
// layers run on those bytes: integer dot products on 8-bit activations for decode, dequantized panels +
// OpenBLAS sgemm for prefill; norms, RoPE and SwiGLU in fp32; attention in flashring's block kernel.
//
// Parallel plan: a grid of tp x sp ranks; world rank = sp_rank * tp + tp_rank.
//  - Tensor parallelism (Megatron): each TP rank holds a slice of the query heads (uneven splits allowed:
//    9 heads on 4 ranks are 3,2,2,2) with the KV heads those queries need (a KV head is replicated only on
//    the ranks that need it), a slice of the FFN units and a slice of the vocabulary. Q/K/V and gate/up are
//    column-parallel, the attention output and down projections row-parallel, followed by one all-reduce
//    each per layer through allreduce() with the caller's options (exact, Flash INT8/INT4, Auto).
//    allreduce() leaves identical bits on every rank, so the ranks of a TP group never diverge.
//  - Sequence parallelism (prefill): each SP rank holds a shard of the prompt (zigzag by default) and the
//    attention runs through spAttention() (TokenRing, ring-KV, Ulysses, all-gather-KV or Auto). The KV
//    cache stays sharded where it was produced.
//  - Decode: the SP group that holds the last prompt position (the owner) computes the new token; in
//    each layer its query goes along the ring of SP ranks (pass-Q, the TokenRing idea applied to decode),
//    every rank attends it to its own KV shard and sends (out, lse) straight back, and the owner merges
//    the partials by log-sum-exp. The new token's K/V are appended on the owner.
// Every rank calls the same methods in the same order (they are collective) with the same tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "flashring/allreduce.h"
#include "flashring/comm.h"
#include "flashring/qmatmul.h"
#include "flashring/sampling.h"
#include "flashring/sp_attention.h"
#include "flashring/tokenizer.h"

namespace flashring {

namespace gguf {
class File;
}
class CostModel;

struct LlamaConfig {
  std::string arch = "llama";
  std::string name;
  int n_layer = 0;
  int n_embd = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_ff = 0;
  int n_vocab = 0;
  int rope_dim = 0;
  int64_t n_ctx_train = 0;
  float rope_base = 10000.f;
  float rms_eps = 1e-5f;
  bool tied_output = true;
  // Split granularity of the row-parallel inputs so that every TP slice starts on a quantization block:
  // heads go to ranks in units of head_align heads, FFN units in units of ff_align (1 for F32/F16/BF16,
  // 32 or 256 for the block types; the largest over the layers). tpShard() falls back to a unit of 1 when
  // there are fewer units than ranks, and the loader then repacks the unaligned slices as F32 (noted in
  // LlamaWeights::notes).
  int head_align = 1;
  int ff_align = 1;

  // Reads `{arch}.*` metadata and checks it against the tensors. Throws gguf::FormatError naming the key
  // or tensor when something is missing or inconsistent, InvalidArgument for an architecture we do not run.
  static LlamaConfig fromGguf(const gguf::File& file);
  std::string describe() const;
  // Multiply-adds of the linear layers per token (excluding the output head), for throughput figures.
  double linearMacsPerToken() const;
};

// What tensor-parallel rank `tp_rank` of `tp` computes.
struct TpShard {
  int head_begin = 0, heads = 0;   // query heads [head_begin, head_begin + heads)
  std::vector<int> kv_heads;       // global KV heads it computes, in local order
  bool grouped = true;             // local query head h uses local KV head h / (heads / kv_heads.size())
  int ff_begin = 0, ff = 0;        // FFN units
  int vocab_begin = 0, vocab = 0;  // output-head rows
};
// Throws InvalidArgument when tp exceeds the number of query heads.
TpShard tpShard(const LlamaConfig& cfg, int tp, int tp_rank);

// One TP rank's share of the weights, in the file's types. Views into the memory-mapped file where the
// rank's rows are contiguous there; copies (same type) held in `owned` otherwise. Shared (read-only) by the
// SP ranks of one process that have the same tp_rank.
struct LlamaLayerWeights {
  std::vector<float> attn_norm, ffn_norm;  // [n_embd]
  qmm::Matrix wq, wk, wv;                  // [heads*hd, n_embd], [kv*hd, n_embd] (rows = outputs)
  qmm::Matrix wo;                          // [n_embd, heads*hd]
  qmm::Matrix w_gate, w_up;                // [ff, n_embd]
  qmm::Matrix w_down;                      // [n_embd, ff]
};

struct LoadOptions {
  // Dequantize every matrix to fp32 at load (the engine of earlier releases; a reference for tests and for
  // comparing the quantized kernels; costs 4 bytes per weight).
  bool dequantize = false;
};

struct LlamaWeights {
  LlamaConfig cfg;
  int tp = 1, tp_rank = 0;
  TpShard shard;
  std::vector<LlamaLayerWeights> layers;
  std::vector<float> output_norm;  // [n_embd]
  qmm::Matrix output;              // [shard.vocab, n_embd]
  qmm::Matrix token_embd;          // [n_vocab, n_embd], the whole table: rows are read per token
  std::shared_ptr<const gguf::File> file;
  std::vector<std::vector<uint8_t>> owned;  // the copies the views above may point into
  std::vector<std::string> notes;           // what the loader had to repack, and why

  // Checks every tensor's name, shape and type first (an unsupported type fails naming the tensor and the
  // type), then maps this rank's slices.
  static std::shared_ptr<const LlamaWeights> load(std::shared_ptr<const gguf::File> file, int tp, int tp_rank,
                                                  const LoadOptions& options = {});
  void embed(TokenId token, float* out) const;  // one row of token_embd, as fp32
  size_t bytes() const;       // weight bytes this shard reads per token (views and copies; not token_embd)
  size_t ownedBytes() const;  // of which copied at load
};

// One-shot all-reduces (allreduce.h) in append mode (decode and turns over the cache): Auto uses the
// one-shot twin of the user's two-step / quantized algorithm (same codec, one message round instead of
// two) for buffers under AllreduceOptions::oneshot_threshold_bytes; On always in append mode; Off never.
enum class OneShotMode { Auto, On, Off };

struct EngineOptions {
  int tp = 1;
  int sp = 1;
  AllreduceOptions allreduce;  // the TP all-reduces
  OneShotMode oneshot = OneShotMode::Auto;
  // How the next token is chosen (greedy by default), over the TP ranks' vocabulary slices without gathering
  // the logits (sampling.h); the same token on every rank, reproducible from the seed.
  SamplingOptions sampling;
  // Gather the full next-token logits after each prefill/append/decode for lastLogits() (one more message
  // round of n_vocab / tp floats per rank). Off: lastLogits() is empty.
  bool keep_logits = false;
  SpScheme attention = SpScheme::Auto;  // prefill attention under SP
  // Attention of appended tokens (decode, chat turns) over the SP-sharded cache: TokenRing = pass-Q (the new
  // queries travel, spPassQAttention), AllGatherKV = pass-KV (the caches travel to the owner,
  // spPassKVAttention; same bits), Auto = chooseAppendScheme() on the cost model's figures (the calibrated
  // model when there is one, else CostModelParams' defaults), per call, from the turn's length and the mean
  // cache length. Other schemes: InvalidArgument.
  SpScheme append_attention = SpScheme::Auto;
  SeqLayout layout = SeqLayout::Zigzag;
  const CostModel* cost_model = nullptr;  // Auto: calibrated model (nullptr: calibrate at construction)
  // > 0: cpu::setThreads(threads) at construction (process-wide: the kernels' and OpenBLAS's threads); 0: leave
  // the setting alone.
  int threads = 0;
  // Error feedback across the TP all-reduces of one forward pass: each rank adds the quantization error it
  // knows of (allreduceWithError) to its partial of the next all-reduce, so the residual stream carries the
  // error of the latest all-reduce only, not the sum of all of them. Off: plain allreduce(). It changes
  // nothing with exact communication but rounding; replicas stay bitwise identical either way. After the last
  // layer the carried errors are summed by one more all-reduce and added to the residual stream (the flush),
  // unless the algorithm carries nothing (Ring, Native, the fp32 two-step).
  bool error_feedback = false;
  // Refinement: each TP all-reduce of the first `refine_layers` layers is followed at once by one more
  // all-reduce (same options) of the quantization errors it just made (allreduceWithError), added to its
  // result, so the block that reads the residual next sees the error of quantizing that error instead of
  // the error itself. Costs one all-reduce per refined site (2 per layer). For the early layers, whose
  // all-reduce outputs are most of the residual stream: on the default model layer 0 alone makes ~40% of
  // the INT4 damage with error feedback. With error feedback the refinement's own errors are carried on;
  // skipped, like the flush, where the algorithm makes no error (Ring, Native, the fp32 two-step).
  int refine_layers = 0;
  // Test hook, called on every rank after each TP all-reduce: layer, 0 = attention / 1 = MLP, the data; the
  // error-feedback flush calls it with layer = n_layer, 2 and the summed error. A refined all-reduce calls it
  // once, with its refined result.
  std::function<void(int layer, int which, std::span<const float> data)> on_allreduce;
};

struct EngineStats {
  double wall_s = 0;        // inside prefill/decode/score calls
  double quant_s = 0;       // all-reduce codec work (quantize, dequantize, convert, reduce)
  double comm_s = 0;        // blocked on messages (all-reduces, SP attention, decode pass-Q, gathers)
  double attn_s = 0;        // attention compute (block kernel and merges)
  uint64_t wire_bytes = 0;  // payload bytes this rank sent
  int64_t allreduces = 0;
  int64_t allreduce_rounds = 0;  // message rounds of those (one-shot 1, two-step 2, ring 2(N-1); Native counts 2)
  uint64_t choice_bytes = 0;     // of wire_bytes: the token choices (sampling.h)
  int64_t choice_rounds = 0;     // message rounds of the token choices
  SpScheme last_scheme = SpScheme::Auto;         // what SP attention ran last (Auto when sp == 1)
  SpScheme last_append_scheme = SpScheme::Auto;  // what the last append / decode attended with under SP
  double computeSeconds() const { return wall_s - quant_s - comm_s; }
};

class LlamaEngine {
 public:
  // Collective over `world`, whose size must be opts.tp * opts.sp.
  LlamaEngine(Communicator& world, std::shared_ptr<const LlamaWeights> weights, const EngineOptions& opts);
  ~LlamaEngine();
  LlamaEngine(const LlamaEngine&) = delete;
  LlamaEngine& operator=(const LlamaEngine&) = delete;

  // Runs the prompt (identical on every rank; each rank computes its SP shard), replacing the KV cache.
  // Returns the next token (greedy, or sampled per EngineOptions::sampling), on every rank.
  TokenId prefill(std::span<const TokenId> tokens);
  // Appends `token` at the next position and returns the greedy next token, on every rank.
  TokenId decode(TokenId token);
  // Appends several tokens after the cached ones (a new chat turn over the conversation so far) and returns
  // the next token, as prefill() of the whole sequence would (same logits up to rounding). The new tokens
  // go to the owner SP group; their queries pass over the SP ranks' caches (pass-Q: a turn is short against
  // its prefix, so moving its queries costs less than moving the cache).
  TokenId append(std::span<const TokenId> tokens);
  // Full-vocabulary logits of the last step, with EngineOptions::keep_logits (setKeepLogits); valid on the
  // owner SP group's ranks (empty elsewhere, and without keep_logits).
  const std::vector<float>& lastLogits() const;
  int64_t position() const;  // tokens in the KV cache (global)

  // Negative log-likelihood of tokens[i+1] given tokens[..i] summed over i in [first, n-1) (llama-perplexity
  // scores the second half of each window). Same value on every rank. Resets the KV cache.
  struct Score {
    double nll = 0;     // sum of -log p
    double nll_sq = 0;  // sum of (-log p)^2, for the error estimate
    int64_t count = 0;
  };
  Score score(std::span<const TokenId> tokens, int64_t first);

  // Logits at every position [n, n_vocab], gathered onto every rank (tests; costly for long inputs).
  std::vector<float> allLogits(std::span<const TokenId> tokens);

  // Changes the TP all-reduce for the following calls (benchmarks compare codecs on one engine). Collective
  // in the sense that every rank must pass the same options before its next call.
  void setAllreduceOptions(const AllreduceOptions& options);
  // Sampling for the following tokens; restarts the sampler from options.seed. Same on every rank.
  void setSampling(const SamplingOptions& options);
  void setKeepLogits(bool keep);
  void setOneShot(OneShotMode mode);  // EngineOptions::oneshot
  // Likewise EngineOptions::error_feedback and ::refine_layers (benchmarks keep their exact baselines plain).
  void setErrorCorrection(bool error_feedback, int refine_layers);

  const EngineStats& stats() const;
  void resetStats();
  int tpRank() const;
  int spRank() const;
  int ownerSpRank() const;  // SP rank whose group decodes (holds the last prompt position)
  const LlamaConfig& config() const;
  Communicator& tpComm();
  Communicator& spComm();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flashring
