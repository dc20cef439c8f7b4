// Perplexity and the paired comparison against exact communication (include/flashring/perplexity.h).
#include "flashring/perplexity.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "flashring/allgather.h"
#include "flashring/llama.h"

namespace flashring {

namespace {

double secondsSince(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// log-softmax of one row of logits, in double.
void logSoftmax(const float* z, size_t n, std::vector<double>& out) {
  out.resize(n);
  double mx = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < n; ++i) mx = std::max(mx, double(z[i]));
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(double(z[i]) - mx);
  const double lse = mx + std::log(sum);
  for (size_t i = 0; i < n; ++i) out[i] = double(z[i]) - lse;
}

// The sums over scored tokens that the figures come from.
struct Sums {
  enum { kNll, kNllSq, kBaseNll, kKl, kDiff, kDiffSq, kSame, kCount, kN };
  std::array<double, kN> v{};
  double& operator[](int i) { return v[static_cast<size_t>(i)]; }
  double operator[](int i) const { return v[static_cast<size_t>(i)]; }
};

// The element-wise sum of every rank's sums, added in rank order (the same bits on every rank).
Sums sumOverRanks(Communicator& world, const Sums& mine) {
  const std::vector<size_t> sizes(static_cast<size_t>(world.size()), sizeof(mine.v));
  const auto all = allgatherv(world, mine.v.data(), sizes, 40);
  Sums total;
  for (const auto& bytes : all) {
    std::array<double, Sums::kN> part;
    std::memcpy(part.data(), bytes.data(), sizeof(part));
    for (int i = 0; i < Sums::kN; ++i) total[i] += part[static_cast<size_t>(i)];
  }
  return total;
}

}  // namespace

PerplexityOptions& PerplexityOptions::testing(const EngineOptions& engine) {
  allreduce = engine.allreduce;
  error_feedback = engine.error_feedback;
  refine_layers = engine.refine_layers;
  return *this;
}

std::vector<TokenId> perplexityTokens(const Tokenizer& tok, std::string_view text) {
  return tok.encode(text, /*add_bos=*/true, /*parse_special=*/false);
}

int64_t perplexityWindows(int64_t n_tokens, const PerplexityOptions& options) {
  if (options.n_ctx <= 0) return 0;
  const int64_t available = n_tokens / options.n_ctx;
  return options.max_windows > 0 ? std::min(options.max_windows, available) : available;
}

PerplexityResult perplexity(Communicator& world, LlamaEngine& eng, const Tokenizer& tok, std::span<const TokenId> ids,
                            const PerplexityOptions& options) {
  const int n_ctx = options.n_ctx;
  if (n_ctx < 4) throw InvalidArgument(fmt::format("perplexity: n_ctx {} is below 4", n_ctx), world.rank());
  const int grid = eng.tpComm().size() * eng.spComm().size();
  if (world.size() != grid)
    throw InvalidArgument(
        fmt::format("perplexity: the communicator has {} ranks, the engine's grid {}", world.size(), grid),
        world.rank());
  const int64_t n_windows = perplexityWindows(static_cast<int64_t>(ids.size()), options);
  if (n_windows < 1)
    throw InvalidArgument(
        fmt::format("perplexity: the text has {} tokens, fewer than one window of n_ctx {}", ids.size(), n_ctx),
        world.rank());

  PerplexityResult res;
  res.n_ctx = n_ctx;
  res.windows = n_windows;
  res.text_tokens = static_cast<int64_t>(ids.size());
  const bool kl = options.kl_divergence;
  const int first = n_ctx / 2;  // the first scored position
  const int64_t per_window = n_ctx - 1 - first;
  PerplexityProgress progress{0, n_windows, res.text_tokens, std::numeric_limits<double>::quiet_NaN()};
  if (options.progress) options.progress(progress);

  Sums total;
  // What the reference passes cost, kept out of the reported figures.
  double ref_comm_s = 0, ref_quant_s = 0;
  uint64_t ref_wire = 0;
  std::vector<double> lp_ref, lp_q;
  std::vector<TokenId> window(static_cast<size_t>(n_ctx));
  const size_t V = static_cast<size_t>(eng.config().n_vocab);
  barrier(world);
  eng.resetStats();
  const auto t0 = Clock::now();
  for (int64_t c = 0; c < n_windows; ++c) {
    std::copy(ids.begin() + c * n_ctx, ids.begin() + (c + 1) * n_ctx, window.begin());
    // As llama-perplexity: the window starts with BOS when the vocabulary adds one.
    if (tok.vocab().add_bos && tok.bos() >= 0) window[0] = tok.bos();
    if (!kl) {
      const LlamaEngine::Score s = eng.score(window, first);  // the same on every rank
      total[Sums::kNll] += s.nll;
      total[Sums::kNllSq] += s.nll_sq;
      total[Sums::kCount] += static_cast<double>(s.count);
    } else {
      const EngineStats before = eng.stats();
      eng.setAllreduceOptions(options.reference);
      eng.setErrorCorrection(false, 0);
      const std::vector<float> ref = eng.allLogits(window);
      const EngineStats after = eng.stats();
      ref_comm_s += after.comm_s - before.comm_s;
      ref_quant_s += after.quant_s - before.quant_s;
      ref_wire += after.wire_bytes - before.wire_bytes;
      eng.setAllreduceOptions(options.allreduce);
      eng.setErrorCorrection(options.error_feedback, options.refine_layers);
      const std::vector<float> z = eng.allLogits(window);
      // Every rank holds both passes' logits (allLogits gathers them); each compares the positions
      // first + rank, first + rank + size, ... and the sums are added over the ranks.
      Sums mine;
      for (int64_t i = first + world.rank(); i < n_ctx - 1; i += world.size()) {
        const size_t row = static_cast<size_t>(i) * V;
        logSoftmax(ref.data() + row, V, lp_ref);
        logSoftmax(z.data() + row, V, lp_q);
        const size_t y = static_cast<size_t>(window[static_cast<size_t>(i) + 1]);
        const double a = -lp_q[y], b = -lp_ref[y];
        mine[Sums::kNll] += a;
        mine[Sums::kNllSq] += a * a;
        mine[Sums::kBaseNll] += b;
        mine[Sums::kDiff] += a - b;
        mine[Sums::kDiffSq] += (a - b) * (a - b);
        double k = 0;
        for (size_t v = 0; v < V; ++v) k += std::exp(lp_ref[v]) * (lp_ref[v] - lp_q[v]);
        mine[Sums::kKl] += k;
        const auto top_ref = std::max_element(lp_ref.begin(), lp_ref.end()) - lp_ref.begin();
        const auto top_q = std::max_element(lp_q.begin(), lp_q.end()) - lp_q.begin();
        mine[Sums::kSame] += top_ref == top_q ? 1.0 : 0.0;
        mine[Sums::kCount] += 1;
      }
      const Sums window_sums = sumOverRanks(world, mine);
      for (int i = 0; i < Sums::kN; ++i) total[i] += window_sums[i];
    }
    progress.done = c + 1;
    progress.ppl = std::exp(total[Sums::kNll] / total[Sums::kCount]);
    if (options.progress) options.progress(progress);
  }
  res.seconds = allreduceMax(world, secondsSince(t0));

  const double count = total[Sums::kCount];
  res.tokens = static_cast<int64_t>(count);
  if (res.tokens != n_windows * per_window)
    throw Error(fmt::format("perplexity: {} tokens scored, expected {}", res.tokens, n_windows * per_window),
                world.rank());
  const double mean = total[Sums::kNll] / count;
  // llama-perplexity's estimate of the uncertainty: the standard error of the mean NLL, propagated.
  const double var = std::max(0.0, total[Sums::kNllSq] / count - mean * mean);
  res.ppl = std::exp(mean);
  res.ppl_err = count > 1 ? res.ppl * std::sqrt(var / (count - 1)) : 0.0;
  const EngineStats st = eng.stats();
  const double n = world.size();
  res.comm_s = allreduceSumDouble(world, st.comm_s - ref_comm_s) / n;
  res.quant_s = allreduceSumDouble(world, st.quant_s - ref_quant_s) / n;
  res.wire_bytes = allreduceSumDouble(world, static_cast<double>(st.wire_bytes - ref_wire));
  if (kl) {
    PerplexityResult::Kl& k = res.kl.emplace();
    k.base_ppl = std::exp(total[Sums::kBaseNll] / count);
    k.kld = total[Sums::kKl] / count;
    k.ln_ratio = total[Sums::kDiff] / count;
    k.ln_ratio_err =
        count > 1 ? std::sqrt(std::max(0.0, total[Sums::kDiffSq] / count - k.ln_ratio * k.ln_ratio) / (count - 1))
                  : 0.0;
    k.same_top1 = total[Sums::kSame] / count;
  }
  return res;
}

PerplexityResult perplexity(Communicator& world, LlamaEngine& eng, const Tokenizer& tok, std::string_view text,
                            const PerplexityOptions& options) {
  const std::vector<TokenId> ids = perplexityTokens(tok, text);
  return perplexity(world, eng, tok, std::span<const TokenId>(ids), options);
}

}  // namespace flashring
