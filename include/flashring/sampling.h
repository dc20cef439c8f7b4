// Token choice over a vocabulary-parallel output head, without gathering the logits.
//
// Under tensor parallelism each rank of the TP group holds the logits of a contiguous slice of the
// vocabulary, [vocab_begin, vocab_begin + local_logits.size()), and the slices of all ranks tile
// [0, vocab_total). chooseToken() picks the next token collectively, with small messages only, and returns
// the same token on every rank:
//  - Greedy (temperature 0): every rank exchanges a fixed header holding its first local maximum; the
//    token is the global first maximum (ties go to the lowest global id). One round.
//  - Sampling with a filter (top_k, top_p or min_p active): every rank sends its local top candidates,
//    ordered by (logit desc, id asc), and a header with the sums the filters need. Every rank merges the
//    candidates into the same globally sorted list, applies llama.cpp's default chain (top-k, top-p,
//    min-p, then the softmax of logit / temperature over what is left) and draws with the shared Sampler,
//    so every rank picks the same token without a further message. With top_k set the first round carries
//    min(top_k, slice) candidates per rank (8 bytes each, so a top_k near the slice size costs up to twice
//    gatherLogits) and is always enough. Without top_k it carries kSamplingCandidates per rank; when top-p
//    or min-p needs more tokens than the ranks sent, further rounds fetch 4x as many per rank (bounded by
//    the slices: at worst every token's (logit, id) is exchanged). The filtered distribution is therefore
//    always exact, never truncated by the cap; ChoiceStats says how many rounds and bytes it took.
//  - Sampling without a filter: the draw is exact over the whole vocabulary. The header carries each
//    rank's sum of exp((z - local max) / T); every rank picks the slice whose share of the total mass holds
//    the draw u, that rank walks its own slice to the token (inverse CDF in id order) and sends it to the
//    others. Two rounds.
// Filter semantics (llama.cpp's llama_sampler_top_k / top_p / min_p with min_keep = 1):
//  - top-k keeps the k most likely tokens; k = 0 or k >= vocab_total keeps all.
//  - top-p keeps the smallest prefix, in (logit desc, id asc) order, whose probability under softmax(z)
//    (temperature 1, normalised over the tokens top-k left) reaches top_p; at least one token; 1 = off.
//  - min-p keeps tokens whose logit >= max logit + log(min_p) (p >= min_p * p_max); 0 = off.
//  - temperature then divides the survivors' logits before the final softmax.
// The choice never depends on how the vocabulary is split: candidate order and tie-breaks use global ids,
// the filtered path computes on the same merged list on every TP degree, and the unfiltered draw is an
// inverse CDF in id order. Bitwise, two cases combine per-rank partial sums (double) whose rounding does
// depend on the split: top-p without top-k (the softmax normaliser) and the unfiltered path; a draw then
// differs between TP degrees only if it falls within ~1e-15 (relative) of a token boundary.
// Logits must not be NaN (an Error naming the lowest such token id, on every rank, with the communicator
// left usable), and sampling needs finite logits (+inf is an Error; -inf means "never", but not all -inf).
// All of this is collective: every rank of `tp` calls it in the same order, with the same options and
// a Sampler in the same state; a rank whose options, sampler or vocabulary slice disagrees makes every
// rank throw InvalidArgument naming the field and the ranks.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "flashring/comm.h"
#include "flashring/tokenizer.h"

namespace flashring {

inline constexpr uint64_t kDefaultSamplingSeed = 0x5EED5EED5EED5EEDull;
// Candidates each rank sends in the first round of a filtered draw when top_k is off.
inline constexpr int kSamplingCandidates = 64;

struct SamplingOptions {
  float temperature = 0.f;  // 0: greedy; > 0: sample from softmax(logit / temperature) of the survivors
  int top_k = 0;            // keep the top_k most likely tokens; 0 = off
  float top_p = 1.f;        // keep the smallest most-likely prefix with probability >= top_p; in (0, 1]; 1 = off
  float min_p = 0.f;        // keep tokens with p >= min_p * p_max; in [0, 1); 0 = off
  uint64_t seed = kDefaultSamplingSeed;  // seed of Sampler(options)
};

// Throws InvalidArgument naming the field: temperature < 0 (or not finite), top_k < 0, top_p outside (0, 1],
// min_p outside [0, 1). chooseToken() checks the options of every rank and throws the same on every rank.
void validateSamplingOptions(const SamplingOptions& options);

// The random stream of token choice: draw n (n = 0, 1, ...) is splitmix64's output n for `seed`,
// mix64(seed + (n + 1) * 0x9E3779B97F4A7C15) with Stafford's mix13 finaliser (shifts 30, 27, 31), and a
// uniform double in [0, 1) is its top 53 bits times 2^-53. Counter-based and specified bit for bit, so the
// same seed gives the same stream on every rank, run and platform. Each sampled choice (temperature > 0)
// takes exactly one draw, whatever path it takes; greedy choices take none.
class Sampler {
 public:
  explicit Sampler(uint64_t seed = kDefaultSamplingSeed) : seed_(seed) {}
  explicit Sampler(const SamplingOptions& options) : Sampler(options.seed) {}

  uint64_t seed() const { return seed_; }
  uint64_t step() const { return step_; }  // draws taken so far
  void seek(uint64_t step) { step_ = step; }

  uint64_t nextU64();
  double nextDouble();  // [0, 1)

  static uint64_t mix64(uint64_t z);

 private:
  uint64_t seed_;
  uint64_t step_ = 0;
};

enum class ChoicePath { Greedy, Candidates, FullVocab, Gather };

// What one call cost this rank (overwritten by each call).
struct ChoiceStats {
  ChoicePath path = ChoicePath::Greedy;
  uint64_t bytes_sent = 0;  // payload bytes this rank sent
  int messages = 0;         // messages this rank sent
  // Communication rounds, each waiting on the one before (a header and the candidates it announces are
  // posted together and count as one). 0 on one rank.
  int rounds = 0;
  int64_t candidates = 0;  // Candidates: (logit, id) pairs gathered from all ranks together
  int64_t kept = 0;        // tokens the filters left (the support of the draw); vocab_total for FullVocab
};

// The next token, the same on every rank of `tp`. `local_logits` are this rank's logits of tokens
// [vocab_begin, vocab_begin + local_logits.size()); slices may be uneven (or empty) but must tile
// [0, vocab_total), vocab_total < 2^31. `sampler` is advanced by one draw when options.temperature > 0 and a
// token is returned (a call that throws leaves it where it was, on every rank).
TokenId chooseToken(Communicator& tp, std::span<const float> local_logits, int64_t vocab_begin, int64_t vocab_total,
                    const SamplingOptions& options, Sampler& sampler, ChoiceStats* stats = nullptr);

// The full logits [vocab_total] on every rank (for callers who need them: perplexity, logit dumps). Each
// rank sends a 24-byte header (its slice) and its slice to every other rank: one round, (N-1) * slice * 4
// bytes. Slices must tile [0, vocab_total) (InvalidArgument on every rank otherwise).
std::vector<float> gatherLogits(Communicator& tp, std::span<const float> local_logits, int64_t vocab_begin,
                                int64_t vocab_total, ChoiceStats* stats = nullptr);

}  // namespace flashring
