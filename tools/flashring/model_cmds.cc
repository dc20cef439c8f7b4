// `flashring run` and `flashring perplexity`: a GGUF model under tensor x sequence parallelism.
#include "model_cmds.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "flashring/cpu.h"
#include "cli.h"
#include "flashring/gguf.h"
#include "flashring/llama.h"
#include "flashring/model_path.h"
#include "flashring/tokenizer.h"

namespace flashring::cli {

AllreduceOptions commOptions(const std::string& comm, int group_size, int spikes, bool rotate, bool clip) {
  static const std::map<std::string, std::string> aliases = {
      {"exact", "twostep-fp32"},        {"bf16", "twostep-bf16"},        {"int8", "flash-int8"},
      {"int6", "flash-int6"},           {"int5", "flash-int5"},          {"int4", "flash-int4"},
      {"int4-int8", "flash-int4-int8"}, {"int8-int4", "flash-int8-int4"}};
  auto it = aliases.find(comm);
  AllreduceOptions base;
  base.reduce_scatter.group_size = base.all_gather.group_size = group_size;
  base.reduce_scatter.spikes = base.all_gather.spikes = spikes;
  base.reduce_scatter.rotate = base.all_gather.rotate = rotate;
  base.reduce_scatter.clip = base.all_gather.clip = clip;
  try {
    return allreduceOptionsFromName(it == aliases.end() ? comm : it->second, base);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(
        fmt::format("--comm '{}': use exact, bf16, int8, int6, int5, int4, int4-int8, int8-int4, auto, or an "
                    "all-reduce name ({})",
                    comm, e.what()));
  }
}

void ModelOptions::add(CLI::App& app, bool grid_flags) {
  app.add_option("-m,--model", model, "GGUF model (default: SmolLM2-135M-Instruct Q4_1 fetched by make deps)")
      ->capture_default_str();
  if (grid_flags) {
    app.add_option("--tp", tp, "tensor-parallel degree")->check(CLI::Range(1, 256))->capture_default_str();
    app.add_option("--sp", sp, "sequence-parallel degree")->check(CLI::Range(1, 256))->capture_default_str();
  }
  app.add_option(
         "--comm", comm,
         "TP all-reduce: exact (two-step fp32), bf16 (two-step bf16, the paper's baseline), int8, int6, int5, int4, "
         "int4-int8 (INT4 reduce-scatter, INT8 all-gather), int8-int4, auto, or any `bench allreduce` name")
      ->capture_default_str();
  app.add_option("--group-size", group_size, "quantization group size of the low-bit all-reduces")
      ->check(CLI::Range(32, 4096))
      ->capture_default_str();
  app.add_option("--spikes", spikes,
                 "values per group of the low-bit all-reduces kept exactly in fp32 (spike reserving, for the "
                 "massive activations of LLaMA-family models); 0 = plain group-wise quantization")
      ->check(CLI::Range(0, 8))
      ->capture_default_str();
  app.add_flag("--error-feedback", error_feedback,
               "carry each rank's quantization error of a TP all-reduce into its next one, and sum the last errors "
               "with one more all-reduce after the last layer (the residual stream then holds one all-reduce's error "
               "instead of the sum of all; INT4's perplexity loss on the default model falls from ~11% to ~2%)");
  app.add_flag("--rotate", rotate,
               "rotate each group of the low-bit all-reduces by a randomized Hadamard transform before quantizing "
               "(spreads the error over the group; needs a power-of-two --group-size)");
  app.add_flag("--clip", clip,
               "search each group's clipping range for the smallest squared error (encoder only; with --rotate and "
               "--error-feedback INT4 g128 comes to ~1.3% of exact on the default model, from ~11% without them; "
               "with --refine-layers 2 too, to 0.6-0.9%)");
  app.add_option("--refine-layers", refine_layers,
                 "follow each TP all-reduce of the first N layers at once by one more all-reduce of the errors it "
                 "just made (one extra all-reduce per refined one: 2 per layer). Layer 0's all-reduces are most of "
                 "the residual stream there; with --error-feedback --rotate --clip, --refine-layers 2 takes INT4 "
                 "g128 from ~1.3% to 0.6-0.9% of exact on the default model for 6.6% more bytes")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  app.add_option("--attn", attn, "SP attention: auto, tokenring, ring-kv, ulysses, allgather-kv")
      ->check(CLI::IsMember({"auto", "tokenring", "ring-kv", "ulysses", "allgather-kv"}))
      ->capture_default_str();
  app.add_option("--layout", layout, "sequence layout under SP: zigzag or contiguous")
      ->check(CLI::IsMember({"zigzag", "contiguous"}))
      ->capture_default_str();
  app.add_option("-t,--threads", threads,
                 "kernel (and OpenBLAS) threads per process (0: 1 when the process runs several ranks, else all "
                 "cores)")
      ->check(CLI::Range(0, 256));
  app.add_option("--weights", weights,
                 "quant: weights stay in the file's GGUF types (integer dots for decode, dequantized panels for "
                 "prefill); f32: dequantize every matrix at load (4 bytes per weight; the reference)")
      ->check(CLI::IsMember({"quant", "f32"}))
      ->capture_default_str();
  app.add_option("--gemm-threshold", gemm_threshold,
                 "batches of at least this many tokens run dequantized panels + sgemm, smaller ones integer dots "
                 "on 8-bit activations (0: the default, 16)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  app.add_option("--oneshot", oneshot,
                 "decode all-reduces as one-shot twins of --comm (one message round instead of two): auto (below "
                 "32 KiB), on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  app.add_option("--temp", sampling.temperature, "sampling temperature (0: greedy)")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  app.add_option("--top-k", sampling.top_k, "keep the k most likely tokens (0: off)")
      ->check(CLI::Range(0, 1 << 30))
      ->capture_default_str();
  app.add_option("--top-p", sampling.top_p, "keep the smallest set of most likely tokens with probability >= p (1: off)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--min-p", sampling.min_p, "keep tokens with p >= min_p * p(most likely) (0: off)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--seed", sampling.seed, "sampling seed: the same tokens on every rank and from run to run");
  app.add_option("--json", json, "write the figures to this JSON file");
  app.add_option("--transport", transport.transport,
                 "thread (tp x sp ranks as threads of this process) or mpi (run under mpirun -n tp*sp)")
      ->check(CLI::IsMember({"thread", "mpi"}))
      ->capture_default_str();
  app.add_option("--timeout-ms", transport.timeout_ms,
                 "deadline of every wait (default 120000, or FLASHRING_TIMEOUT_MS)");
}

EngineOptions ModelOptions::engineOptions() const {
  EngineOptions e;
  e.tp = tp;
  e.sp = sp;
  e.allreduce = commOptions(comm, group_size, spikes, rotate, clip);
  e.error_feedback = error_feedback;
  e.refine_layers = refine_layers;
  e.oneshot = oneshot == "on" ? OneShotMode::On : oneshot == "off" ? OneShotMode::Off : OneShotMode::Auto;
  e.sampling = sampling;
  e.attention = spSchemeFromName(attn);
  e.layout = layout == "contiguous" ? SeqLayout::Contiguous : SeqLayout::Zigzag;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  e.threads =
      threads > 0 ? threads : (tp * sp == 1 && transport.transport == "thread" ? static_cast<int>(cores) : 1);
  return e;
}

std::string ModelOptions::codecDescription() const {
  return fmt::format("group {}, spikes {}{}{}{}{}", group_size, spikes, rotate ? ", rotate" : "", clip ? ", clip" : "",
                     error_feedback ? ", error feedback" : "",
                     refine_layers > 0 ? fmt::format(", refine {}", refine_layers) : "");
}

std::string ModelOptions::modelPath() const { return model.empty() ? defaultModelPath() : model; }

// One model file, one tokenizer and one weight shard per TP rank, shared by the thread ranks of a process.
struct ModelCache {
  std::mutex mu;
  std::shared_ptr<const gguf::File> file;
  std::unique_ptr<Tokenizer> tokenizer;
  std::map<int, std::shared_ptr<const LlamaWeights>> shards;
  LoadOptions load;

  explicit ModelCache(const std::string& path, const LoadOptions& lo = {}) : load(lo) {
    if (!std::filesystem::exists(path)) {
      throw InvalidArgument(fmt::format(
          "model file '{}' not found; run `make deps` (it fetches the default model) or pass -m MODEL.gguf", path));
    }
    file = std::make_shared<const gguf::File>(gguf::File::open(path));
    tokenizer = std::make_unique<Tokenizer>(Tokenizer::fromGguf(*file));
  }
  std::shared_ptr<const LlamaWeights> shard(int tp, int tp_rank) {
    std::lock_guard<std::mutex> lock(mu);
    auto& s = shards[tp_rank];
    if (!s) s = LlamaWeights::load(file, tp, tp_rank, load);
    return s;
  }
};

int ModelOptions::ranks() const { return tp * sp; }

void runModel(const ModelOptions& mo, const std::function<void(Communicator&, LlamaEngine&, const Tokenizer&)>& body) {
  LoadOptions lo;
  lo.dequantize = mo.weights == "f32";
  auto cache = std::make_shared<ModelCache>(mo.modelPath(), lo);
  if (mo.gemm_threshold > 0) qmm::setGemmThreshold(mo.gemm_threshold);
  EngineOptions eo = mo.engineOptions();
  // The kernel thread count is process-wide: set it once here, not from every rank's thread.
  cpu::setThreads(eo.threads);
  eo.threads = 0;
  TransportOptions t = mo.transport;
  t.ranks = mo.ranks();
  runOnTransport(t, [&](Communicator& comm) {
    if (comm.size() != mo.ranks())
      throw InvalidArgument(fmt::format("--tp {} x --sp {} needs {} ranks; the job has {} (mpirun -n {})", mo.tp, mo.sp,
                                        mo.ranks(), comm.size(), mo.ranks()));
    auto weights = cache->shard(mo.tp, comm.rank() % mo.tp);
    LlamaEngine engine(comm, weights, eo);
    body(comm, engine, *cache->tokenizer);
  });
}

namespace {

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InvalidArgument(fmt::format("cannot read '{}'", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void writeJson(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path);
  if (!out) throw InvalidArgument(fmt::format("cannot write '{}'", path));
  out << j.dump(2) << "\n";
}

}  // namespace

RunResult runGenerate(const ModelOptions& mo, const std::string& prompt, int n_predict, bool stream) {
  RunResult res;
  std::mutex mu;
  runModel(mo, [&](Communicator& comm, LlamaEngine& eng, const Tokenizer& tok) {
    const std::vector<TokenId> ids = tok.encode(prompt, true, true);
    if (ids.empty()) throw InvalidArgument("the prompt encodes to no tokens");
    barrier(comm);
    eng.resetStats();
    const auto t0 = Clock::now();
    TokenId next = eng.prefill(ids);
    const auto t1 = Clock::now();
    const EngineStats prefill_stats = eng.stats();
    const bool printer = eng.spRank() == eng.ownerSpRank() && eng.tpRank() == 0;
    std::string text;
    int generated = 0;
    auto emit = [&](TokenId t) {
      const std::string piece = tok.tokenText(t);
      text += piece;
      if (printer && stream) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      }
    };
    double decode_s = 0;
    if (n_predict > 0 && !tok.isEog(next)) {
      emit(next);
      generated = 1;
      const auto d0 = Clock::now();
      while (generated < n_predict) {
        next = eng.decode(next);
        if (tok.isEog(next)) break;
        emit(next);
        ++generated;
      }
      decode_s = seconds(d0, Clock::now());
    }
    if (printer && stream) std::fputs("\n", stdout);
    const EngineStats all = eng.stats();
    // Figures: TTFT is the slowest rank's; the breakdown is the mean over ranks of the prefill phase.
    const double ttft = allreduceMax(comm, seconds(t0, t1));
    const double n = comm.size();
    const double comm_s = allreduceSumDouble(comm, prefill_stats.comm_s) / n;
    const double quant_s = allreduceSumDouble(comm, prefill_stats.quant_s) / n;
    const double attn_s = allreduceSumDouble(comm, prefill_stats.attn_s) / n;
    const double compute_s = allreduceSumDouble(comm, prefill_stats.computeSeconds()) / n;
    const double wire = allreduceSumDouble(comm, static_cast<double>(prefill_stats.wire_bytes));
    const double wire_all = allreduceSumDouble(comm, static_cast<double>(all.wire_bytes));
    const double dec = allreduceMax(comm, decode_s);
    const double gen = allreduceMax(comm, static_cast<double>(generated));
    std::lock_guard<std::mutex> lock(mu);
    if (printer) res.text = text;
    if (comm.rank() == 0) {
      res.root = true;
      res.prompt_tokens = static_cast<int64_t>(ids.size());
      res.generated = static_cast<int64_t>(gen);
      res.ttft_s = ttft;
      res.decode_s = dec;
      res.comm_s = comm_s;
      res.quant_s = quant_s;
      res.attn_s = attn_s;
      res.compute_s = compute_s;
      res.prefill_wire_bytes = wire;
      res.wire_bytes = wire_all;
      res.scheme = prefill_stats.last_scheme;
      res.model = eng.config().describe();
    }
  });
  return res;
}

namespace {

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

}  // namespace

PplResult runPerplexity(const ModelOptions& mo, const std::string& text, int n_ctx, int chunks, bool print, bool kl) {
  PplResult res;
  std::mutex mu;
  const EngineOptions user = mo.engineOptions();
  runModel(mo, [&](Communicator& comm, LlamaEngine& eng, const Tokenizer& tok) {
    const std::vector<TokenId> ids = tok.encode(text, true, false);
    const int64_t available = static_cast<int64_t>(ids.size()) / n_ctx;
    if (available < 1)
      throw InvalidArgument(
          fmt::format("the text has {} tokens, fewer than one context of {} (use a smaller -c)", ids.size(), n_ctx));
    const int64_t n_chunk = chunks > 0 ? std::min<int64_t>(chunks, available) : available;
    const bool printer = comm.rank() == 0 && print;
    if (printer) {
      fmt::print("perplexity: tokenized {} tokens; {} chunks of n_ctx {}, scoring the second half of each\n",
                 ids.size(), n_chunk, n_ctx);
      std::fflush(stdout);
    }
    double nll = 0, nll_sq = 0;
    int64_t count = 0;
    // --kl-divergence: sums over the scored tokens of nll(exact), KL, the paired difference and its square,
    // top-1 agreements; and what the exact passes cost, kept out of the reported figures.
    double base_nll = 0, kld = 0, d_sum = 0, d_sq = 0;
    int64_t same = 0;
    EngineStats exact_cost;
    std::vector<double> lp_ref, lp_q;
    barrier(comm);
    eng.resetStats();
    const auto t0 = Clock::now();
    for (int64_t c = 0; c < n_chunk; ++c) {
      std::vector<TokenId> chunk(ids.begin() + c * n_ctx, ids.begin() + (c + 1) * n_ctx);
      // As llama-perplexity: the window starts with BOS when the vocabulary adds one.
      if (tok.vocab().add_bos && tok.bos() >= 0) chunk[0] = tok.bos();
      if (!kl) {
        const LlamaEngine::Score s = eng.score(chunk, n_ctx / 2);
        nll += s.nll;
        nll_sq += s.nll_sq;
        count += s.count;
      } else {
        const EngineStats before = eng.stats();
        eng.setAllreduceOptions(commOptions("exact", mo.group_size, 0));
        eng.setErrorCorrection(false, 0);
        const std::vector<float> ref = eng.allLogits(chunk);
        const EngineStats after = eng.stats();
        exact_cost.comm_s += after.comm_s - before.comm_s;
        exact_cost.quant_s += after.quant_s - before.quant_s;
        exact_cost.wire_bytes += after.wire_bytes - before.wire_bytes;
        eng.setAllreduceOptions(user.allreduce);
        eng.setErrorCorrection(user.error_feedback, user.refine_layers);
        const std::vector<float> z = eng.allLogits(chunk);
        const size_t V = static_cast<size_t>(eng.config().n_vocab);
        // Every rank holds both (allLogits gathers); only rank 0 reports, so only it computes the sums (the
        // others count the tokens).
        if (comm.rank() != 0) {
          count += n_ctx - 1 - n_ctx / 2;
          continue;
        }
        for (int64_t i = n_ctx / 2; i < n_ctx - 1; ++i) {
          const size_t row = static_cast<size_t>(i) * V;
          logSoftmax(ref.data() + row, V, lp_ref);
          logSoftmax(z.data() + row, V, lp_q);
          const size_t y = static_cast<size_t>(chunk[static_cast<size_t>(i) + 1]);
          const double a = -lp_q[y], b = -lp_ref[y];
          nll += a;
          nll_sq += a * a;
          base_nll += b;
          d_sum += a - b;
          d_sq += (a - b) * (a - b);
          double k = 0;
          for (size_t v = 0; v < V; ++v) k += std::exp(lp_ref[v]) * (lp_ref[v] - lp_q[v]);
          kld += k;
          const auto top_ref = std::max_element(lp_ref.begin(), lp_ref.end()) - lp_ref.begin();
          const auto top_q = std::max_element(lp_q.begin(), lp_q.end()) - lp_q.begin();
          same += top_ref == top_q;
          ++count;
        }
      }
      if (printer) {
        fmt::print("[{}]{:.4f},", c + 1, std::exp(nll / static_cast<double>(count)));
        std::fflush(stdout);
      }
    }
    const double elapsed = allreduceMax(comm, seconds(t0, Clock::now()));
    const double mean = nll / static_cast<double>(count);
    // llama-perplexity's estimate of the uncertainty: the standard error of the mean NLL, propagated.
    const double var = std::max(0.0, nll_sq / static_cast<double>(count) - mean * mean);
    const double ppl = std::exp(mean);
    const double err = count > 1 ? ppl * std::sqrt(var / static_cast<double>(count - 1)) : 0.0;
    const EngineStats st = eng.stats();
    const double n = comm.size();
    const double comm_s = allreduceSumDouble(comm, st.comm_s - exact_cost.comm_s) / n;
    const double quant_s = allreduceSumDouble(comm, st.quant_s - exact_cost.quant_s) / n;
    const double wire = allreduceSumDouble(comm, static_cast<double>(st.wire_bytes - exact_cost.wire_bytes));
    if (printer) fmt::print("\nFinal estimate: PPL = {:.4f} +/- {:.5f}\n", ppl, err);
    std::optional<PplResult::Kl> kl_figures;  // rank 0's are the reported ones
    if (kl) {
      const double cnt = static_cast<double>(count);
      PplResult::Kl& k = kl_figures.emplace();
      k.base_ppl = std::exp(base_nll / cnt);
      k.kld = kld / cnt;
      k.ln_ratio = d_sum / cnt;
      k.ln_ratio_err = count > 1 ? std::sqrt(std::max(0.0, d_sq / cnt - k.ln_ratio * k.ln_ratio) / (cnt - 1)) : 0.0;
      k.same_top1 = static_cast<double>(same) / cnt;
      const double d = k.ln_ratio, e = k.ln_ratio_err;
      if (printer)
        fmt::print(
            "KL divergence against exact communication (the same windows, token by token):\n"
            "  exact PPL {:.4f}; ln(PPL / exact PPL) = {:+.5f} +/- {:.5f}, i.e. PPL {:+.3f}% (95%: {:+.3f}% .. "
            "{:+.3f}%)\n"
            "  mean KL divergence {:.6f} nats; same top-1 token {:.3f}%\n",
            k.base_ppl, d, e, 100 * (std::exp(d) - 1), 100 * (std::exp(d - 1.96 * e) - 1),
            100 * (std::exp(d + 1.96 * e) - 1), k.kld, 100.0 * k.same_top1);
    }
    std::lock_guard<std::mutex> lock(mu);
    if (comm.rank() == 0) {
      res.root = true;
      res.ppl = ppl;
      res.ppl_err = err;
      res.tokens = count;
      res.text_tokens = static_cast<int64_t>(ids.size());
      res.chunks = n_chunk;
      res.seconds = elapsed;
      res.comm_s = comm_s;
      res.quant_s = quant_s;
      res.wire_bytes = wire;
      res.kl = kl_figures;
    }
  });
  return res;
}

namespace {

nlohmann::json commonJson(const ModelOptions& mo) {
  return {{"model", mo.modelPath()},
          {"tp", mo.tp},
          {"sp", mo.sp},
          {"comm", mo.comm},
          {"group_size", mo.group_size},
          {"spikes", mo.spikes},
          {"error_feedback", mo.error_feedback},
          {"rotate", mo.rotate},
          {"clip", mo.clip},
          {"refine_layers", mo.refine_layers},
          {"attn", mo.attn},
          {"layout", mo.layout},
          {"transport", mo.transport.transport},
          {"ranks", mo.ranks()}};
}

}  // namespace

void addRun(CLI::App& app) {
  auto mo = std::make_shared<ModelOptions>();
  auto prompt = std::make_shared<std::string>("The capital of France is");
  auto prompt_file = std::make_shared<std::string>();
  auto n_predict = std::make_shared<int>(32);
  auto* cmd = app.add_subcommand("run", "generate text with a GGUF model under tensor x sequence parallelism (greedy)");
  mo->add(*cmd);
  cmd->add_option("-p,--prompt", *prompt, "prompt text")->capture_default_str();
  cmd->add_option("-f,--file", *prompt_file, "read the prompt from this file instead");
  cmd->add_option("-n,--n-predict", *n_predict, "tokens to generate (stops early at end of generation)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->callback([=] {
    const std::string text = prompt_file->empty() ? *prompt : readFile(*prompt_file);
    const RunResult r = runGenerate(*mo, text, *n_predict, true);
    if (!r.root) return;
    const double prefill_tps = r.ttft_s > 0 ? static_cast<double>(r.prompt_tokens) / r.ttft_s : 0;
    const double decode_tps = r.decode_s > 0 && r.generated > 1 ? static_cast<double>(r.generated - 1) / r.decode_s : 0;
    fmt::print(
        "\nmodel: {}\nplan: tp {} x sp {} on {} ranks ({}), comm {} ({}), attention {}{}\n"
        "prompt {} tokens, generated {}\n"
        "TTFT {:.1f} ms  prefill {:.1f} tok/s  decode {:.2f} tok/s\n"
        "prefill breakdown (mean over ranks): compute {:.1f} ms (attention {:.1f}), quantization {:.1f} ms, "
        "communication {:.1f} ms; wire {:.2f} MB (all ranks; {:.2f} MB with decode)\n",
        r.model, mo->tp, mo->sp, mo->ranks(), mo->transport.transport, mo->comm, mo->codecDescription(), mo->attn,
        mo->sp > 1 ? fmt::format(" -> {}", spSchemeName(r.scheme)) : std::string(), r.prompt_tokens, r.generated,
        r.ttft_s * 1e3, prefill_tps, decode_tps, r.compute_s * 1e3, r.attn_s * 1e3, r.quant_s * 1e3, r.comm_s * 1e3,
        r.prefill_wire_bytes / 1e6, r.wire_bytes / 1e6);
    if (!mo->json.empty()) {
      nlohmann::json j = commonJson(*mo);
      j.update({{"ttft_ms", r.ttft_s * 1e3},
                {"prefill_tok_s", prefill_tps},
                {"decode_tok_s", decode_tps},
                {"comm_ms", r.comm_s * 1e3},
                {"quant_ms", r.quant_s * 1e3},
                {"compute_ms", r.compute_s * 1e3},
                {"attn_ms", r.attn_s * 1e3},
                {"wire_bytes", r.prefill_wire_bytes},
                {"wire_bytes_with_decode", r.wire_bytes},
                {"prompt_tokens", r.prompt_tokens},
                {"generated_tokens", r.generated},
                {"attn_scheme", spSchemeName(r.scheme)},
                {"text", r.text}});
      writeJson(mo->json, j);
    }
  });
}

void addPerplexity(CLI::App& app) {
  auto mo = std::make_shared<ModelOptions>();
  auto file = std::make_shared<std::string>("/usr/share/common-licenses/GPL-3");
  auto n_ctx = std::make_shared<int>(512);
  auto chunks = std::make_shared<int>(0);
  auto* cmd = app.add_subcommand("perplexity", "perplexity of a GGUF model on a text, as llama-perplexity computes it");
  mo->add(*cmd);
  cmd->add_option("-f,--file", *file, "text file")->capture_default_str();
  cmd->add_option("-c,--ctx-size", *n_ctx, "context window; the second half of each window is scored")
      ->check(CLI::Range(4, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--chunks", *chunks, "score at most this many windows (0: all)")->check(CLI::Range(0, 1 << 30));
  auto kl = std::make_shared<bool>(false);
  cmd->add_flag("--kl-divergence", *kl,
                "also run every window with exact (fp32) communication and compare token by token: the change "
                "of perplexity with its paired standard error (far tighter than the two perplexities' own "
                "errors), the mean KL divergence and top-1 agreement, as llama-perplexity --kl-divergence "
                "reports; about twice the time, the logits of a window gathered on every rank");
  cmd->callback([=] {
    const PplResult r = runPerplexity(*mo, readFile(*file), *n_ctx, *chunks, true, *kl);
    if (!r.root) return;
    fmt::print(
        "tp {} x sp {}, comm {} ({}): {} scored tokens in {:.1f} s ({:.1f} tok/s); communication "
        "{:.1f} s, "
        "quantization {:.1f} s (mean over ranks); wire {:.1f} MB\n",
        mo->tp, mo->sp, mo->comm, mo->codecDescription(), r.tokens, r.seconds,
        static_cast<double>(r.chunks * *n_ctx) / r.seconds, r.comm_s, r.quant_s, r.wire_bytes / 1e6);
    if (!mo->json.empty()) {
      nlohmann::json j = commonJson(*mo);
      j.update({{"ppl", r.ppl},
                {"ppl_err", r.ppl_err},
                {"tokens", r.tokens},
                {"text_tokens", r.text_tokens},
                {"chunks", r.chunks},
                {"ctx", *n_ctx},
                {"file", *file},
                {"seconds", r.seconds},
                {"comm_ms", r.comm_s * 1e3},
                {"quant_ms", r.quant_s * 1e3},
                {"wire_bytes", r.wire_bytes}});
      if (r.kl)
        j.update({{"exact_ppl", r.kl->base_ppl},
                  {"kl_divergence", r.kl->kld},
                  {"ln_ppl_ratio", r.kl->ln_ratio},
                  {"ln_ppl_ratio_err", r.kl->ln_ratio_err},
                  {"same_top1", r.kl->same_top1}});
      writeJson(mo->json, j);
    }
  });
}

}  // namespace flashring::cli
