// flashring bench ttft: time-to-first-token of a real model under tensor x sequence parallelism, with the
// TP all-reduce codecs side by side in one job (alternating, median of n), the error of each against exact
// communication, and for one rank the GEMM-bound prefill rate measured on the model's own shapes.
#include <cblas.h>
#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "cli.h"
#include "flashring/cpu.h"
#include "flashring/gguf.h"
#include "flashring/llama.h"
#include "flashring/model_path.h"
#include "flashring/tokenizer.h"
#include "model_options.h"

namespace flashring::cli {

namespace {

struct Config {
  ModelOptions mo;
  std::vector<std::string> grids{"4x1", "1x4", "2x2"};
  std::vector<std::string> comms{"bf16", "int8", "int4"};
  std::string text = "/usr/share/common-licenses/GPL-3";
  int prompt_tokens = 2048;
  int iters = 3, warmup = 1;
};

struct Row {
  std::string grid, comm;
  int tp = 1, sp = 1;
  std::vector<double> ttft;                                   // per iteration, slowest rank
  double compute_s = 0, quant_s = 0, comm_s = 0, attn_s = 0;  // mean over ranks and iterations
  double wire_per_rank = 0;
  double max_err = 0;
  bool same_top1 = true;
  std::string scheme;
};

std::pair<int, int> parseGrid(const std::string& g) {
  const auto x = g.find('x');
  try {
    if (x != std::string::npos) return {std::stoi(g.substr(0, x)), std::stoi(g.substr(x + 1))};
  } catch (const std::exception&) {
  }
  throw InvalidArgument(fmt::format("--grids: '{}' is not TPxSP (examples: 4x1, 1x4, 2x2)", g));
}

std::string readText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InvalidArgument(fmt::format("cannot read '{}'", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// sgemm rate (GFLOP/s) on the model's linear-layer shapes for `tokens` rows, one layer's worth of GEMMs.
double measureGemm(const LlamaConfig& c, int tokens) {
  std::mt19937 g(1);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  const int D = c.n_embd, Q = c.n_head * c.head_dim, KV = c.n_head_kv * c.head_dim, F = c.n_ff;
  struct Shape {
    int n, k;
  };
  const std::vector<Shape> shapes = {{Q, D}, {KV, D}, {KV, D}, {D, Q}, {F, D}, {F, D}, {D, F}};
  std::vector<float> a(static_cast<size_t>(tokens) * std::max(D, F)),
      w(static_cast<size_t>(std::max(D, F)) * std::max({D, F, Q})),
      out(static_cast<size_t>(tokens) * std::max({D, F, Q}));
  for (auto& v : a) v = d(g);
  for (auto& v : w) v = d(g);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    double flops = 0;
    const auto t0 = Clock::now();
    for (const Shape& s : shapes) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tokens, s.n, s.k, 1.f, a.data(), s.k, w.data(), s.k, 0.f,
                  out.data(), s.n);
      flops += 2.0 * tokens * s.n * s.k;
    }
    best = std::max(best, flops / std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best / 1e9;
}

void run(const Config& cfg) {
  // One file and tokenizer per process; shards per (tp, tp_rank).
  const std::string path = cfg.mo.modelPath();
  if (!std::filesystem::exists(path))
    throw InvalidArgument(fmt::format("model file '{}' not found; run `make deps` or pass -m", path));
  auto file = std::make_shared<const gguf::File>(gguf::File::open(path));
  const Tokenizer tok = Tokenizer::fromGguf(*file);
  std::vector<TokenId> all = tok.encode(readText(cfg.text), true, false);
  if (static_cast<int>(all.size()) < cfg.prompt_tokens)
    throw InvalidArgument(
        fmt::format("{} has {} tokens, fewer than --prompt-tokens {}", cfg.text, all.size(), cfg.prompt_tokens));
  all.resize(static_cast<size_t>(cfg.prompt_tokens));
  std::mutex mu;
  std::map<std::tuple<int, int>, std::shared_ptr<const LlamaWeights>> shards;
  auto shard = [&](int tp, int r) {
    std::lock_guard<std::mutex> lock(mu);
    auto& s = shards[{tp, r}];
    if (!s) s = LlamaWeights::load(file, tp, r);
    return s;
  };

  std::vector<Row> rows;
  bool root = false;  // this process holds rank 0 (the only one that prints)
  std::string model_desc;
  double gemm_gflops = 0;
  // One grid on the ranks of `comm`.
  auto runGrid = [&](Communicator& comm, const std::string& gs, std::vector<Row>& grid_rows) {
    const auto [tp, sp] = parseGrid(gs);
    ModelOptions mo = cfg.mo;
    mo.tp = tp;
    mo.sp = sp;
    if (comm.size() != tp * sp)
      throw InvalidArgument(fmt::format("grid {} needs {} ranks; the job has {}", gs, tp * sp, comm.size()));
    EngineOptions eo = mo.engineOptions();
    eo.threads = 0;         // set once per process below
    eo.keep_logits = true;  // the rows compare their logits with the exact baseline
    LlamaEngine eng(comm, shard(tp, comm.rank() % tp), eo);
    const bool owner = eng.spRank() == eng.ownerSpRank();
    // Reference: exact fp32 communication, untimed.
    eng.setAllreduceOptions(commOptions("exact", mo.group_size, 0));
    eng.setErrorCorrection(false, 0);
    eng.prefill(all);
    const std::vector<float> ref = eng.lastLogits();
    for (int it = -cfg.warmup; it < cfg.iters; ++it) {
      for (size_t ci = 0; ci < cfg.comms.size(); ++ci) {
        eng.setAllreduceOptions(commOptions(cfg.comms[ci], mo.group_size, mo.spikes, mo.rotate, mo.clip));
        // Error feedback and refinement are for the low-bit rows; the exact and bf16 baselines run plain.
        const bool low_bit = cfg.comms[ci] != "exact" && cfg.comms[ci] != "bf16";
        // Error feedback by default on these rows (as the model commands do for low-bit codecs), unless
        // --no-error-feedback.
        eng.setErrorCorrection(low_bit && mo.error_feedback_flag != 0, low_bit ? mo.refine_layers : 0);
        barrier(comm);
        eng.resetStats();
        const auto t0 = Clock::now();
        eng.prefill(all);
        const double mine = std::chrono::duration<double>(Clock::now() - t0).count();
        const EngineStats st = eng.stats();
        double err = 0;
        bool same = true;
        if (owner) {
          const auto& z = eng.lastLogits();
          for (size_t i = 0; i < z.size(); ++i) err = std::max(err, std::abs(double(z[i]) - ref[i]));
          same = std::max_element(z.begin(), z.end()) - z.begin() ==
                 std::max_element(ref.begin(), ref.end()) - ref.begin();
        }
        const double n = comm.size();
        const double ttft = allreduceMax(comm, mine);
        const double c_s = allreduceSumDouble(comm, st.computeSeconds()) / n;
        const double q_s = allreduceSumDouble(comm, st.quant_s) / n;
        const double m_s = allreduceSumDouble(comm, st.comm_s) / n;
        const double a_s = allreduceSumDouble(comm, st.attn_s) / n;
        const double wire = allreduceSumDouble(comm, static_cast<double>(st.wire_bytes)) / n;
        const double e = allreduceMax(comm, err);
        const double diff = allreduceMax(comm, same ? 0.0 : 1.0);
        if (comm.rank() == 0 && it >= 0) {
          Row& r = grid_rows[ci];
          r.grid = gs;
          r.comm = cfg.comms[ci];
          r.tp = tp;
          r.sp = sp;
          r.ttft.push_back(ttft);
          r.compute_s += c_s / cfg.iters;
          r.quant_s += q_s / cfg.iters;
          r.comm_s += m_s / cfg.iters;
          r.attn_s += a_s / cfg.iters;
          r.wire_per_rank = wire;
          r.max_err = std::max(r.max_err, e);
          r.same_top1 = r.same_top1 && diff == 0.0;
          r.scheme = sp > 1 ? spSchemeName(st.last_scheme) : "-";
          fmt::print(stderr, "  {} {} iter {}: TTFT {:.1f} ms\n", gs, r.comm, it, ttft * 1e3);
        }
      }
    }
    if (comm.rank() == 0) {
      model_desc = eng.config().describe();
      root = true;
    }
    if (tp * sp == 1) gemm_gflops = measureGemm(eng.config(), cfg.prompt_tokens);
  };
  // Kernel threads are process-wide: set once per grid, never from a rank's thread.
  auto blasFor = [&](const std::string& gs) {
    ModelOptions mo = cfg.mo;
    std::tie(mo.tp, mo.sp) = parseGrid(gs);
    cpu::setThreads(mo.engineOptions().threads);
  };
  if (cfg.mo.transport.transport == "mpi") {
    // One MPI job (MPI can be initialised once per process): every grid on the same ranks.
    std::vector<std::vector<Row>> per(cfg.grids.size(), std::vector<Row>(cfg.comms.size()));
    blasFor(cfg.grids.front());
    runOnTransport(cfg.mo.transport, [&](Communicator& comm) {
      for (size_t i = 0; i < cfg.grids.size(); ++i) runGrid(comm, cfg.grids[i], per[i]);
    });
    for (auto& g : per) rows.insert(rows.end(), g.begin(), g.end());
  } else {
    for (const std::string& gs : cfg.grids) {
      const auto [tp, sp] = parseGrid(gs);
      TransportOptions t = cfg.mo.transport;
      t.ranks = tp * sp;
      blasFor(gs);
      std::vector<Row> grid_rows(cfg.comms.size());
      runOnTransport(t, [&](Communicator& comm) { runGrid(comm, gs, grid_rows); });
      rows.insert(rows.end(), grid_rows.begin(), grid_rows.end());
    }
  }

  if (!root) return;
  // Print the table: the first --comms entry is the baseline of each grid.
  fmt::print(
      "# model: {}\n# prompt: {} tokens of {}; TTFT = median over {} (slowest rank), breakdown = mean over "
      "ranks\n# low-bit all-reduces: {}\n",
      model_desc, cfg.prompt_tokens, cfg.text, cfg.iters, cfg.mo.codecDescription());
  fmt::print("{:>6} {:>10} {:>10} {:>11} {:>10} {:>9} {:>9} {:>9} {:>11} {:>10} {:>5} {:>8}\n", "grid", "comm",
             "ttft_ms", "prefill/s", "compute", "quant", "comm", "attn", "wire_MB/rk", "max_err", "top1", "speedup");
  std::map<std::string, double> base;
  for (const Row& r : rows)
    if (!base.count(r.grid)) base[r.grid] = median(r.ttft);
  for (const Row& r : rows) {
    const double t = median(r.ttft);
    fmt::print(
        "{:>6} {:>10} {:>10.1f} {:>11.1f} {:>10.1f} {:>9.1f} {:>9.1f} {:>9.1f} {:>11.2f} {:>10.3g} {:>5} {:>7.2f}x\n",
        r.grid, r.comm, t * 1e3, cfg.prompt_tokens / t, r.compute_s * 1e3, r.quant_s * 1e3, r.comm_s * 1e3,
        r.attn_s * 1e3, r.wire_per_rank / 1e6, r.max_err, r.same_top1 ? "same" : "DIFF", base[r.grid] / t);
  }
  if (gemm_gflops > 0) {
    // Prefill FLOPs per token: the linear layers, plus causal attention (QK^T and PV over on average n/2 keys).
    const LlamaConfig c = LlamaConfig::fromGguf(*file);
    const double linear = 2.0 * c.linearMacsPerToken();
    const double attn = 4.0 * c.n_layer * c.n_head * c.head_dim * (cfg.prompt_tokens / 2.0);
    for (const Row& r : rows)
      if (r.tp * r.sp == 1) {
        const double t = median(r.ttft);
        fmt::print(
            "# one rank: {:.1f} tok/s measured; GEMM-bound {:.1f} tok/s (sgemm {:.1f} GFLOP/s on the model's "
            "shapes, {:.0f} MFLOP/token linear + {:.0f} MFLOP/token attention) -> {:.0f}% of it\n",
            cfg.prompt_tokens / t, gemm_gflops * 1e9 / (linear + attn), gemm_gflops, linear / 1e6, attn / 1e6,
            100.0 * (cfg.prompt_tokens / t) / (gemm_gflops * 1e9 / (linear + attn)));
        break;
      }
  }
  if (!cfg.mo.json.empty()) {
    nlohmann::json out = nlohmann::json::array();
    for (const Row& r : rows) {
      const double t = median(r.ttft);
      out.push_back({{"bench", "ttft"},
                     {"model", model_desc},
                     {"grid", r.grid},
                     {"tp", r.tp},
                     {"sp", r.sp},
                     {"comm", r.comm},
                     {"group_size", cfg.mo.group_size},
                     {"spikes", cfg.mo.spikes},
                     {"error_feedback", cfg.mo.error_feedback},
                     {"rotate", cfg.mo.rotate},
                     {"clip", cfg.mo.clip},
                     {"refine_layers", cfg.mo.refine_layers},
                     {"attn", cfg.mo.attn},
                     {"attn_ran", r.scheme},
                     {"prompt_tokens", cfg.prompt_tokens},
                     {"ttft_ms", t * 1e3},
                     {"ttft_all_ms", r.ttft},
                     {"prefill_tok_s", cfg.prompt_tokens / t},
                     {"compute_ms", r.compute_s * 1e3},
                     {"quant_ms", r.quant_s * 1e3},
                     {"comm_ms", r.comm_s * 1e3},
                     {"attn_ms", r.attn_s * 1e3},
                     {"wire_bytes_per_rank", r.wire_per_rank},
                     {"max_logit_err", r.max_err},
                     {"same_top1", r.same_top1},
                     {"speedup_vs_first", base[r.grid] / t},
                     {"transport", cfg.mo.transport.transport},
                     {"gemm_gflops", gemm_gflops}});
    }
    std::ofstream f(cfg.mo.json);
    if (!f) throw InvalidArgument(fmt::format("cannot write --json {}", cfg.mo.json));
    f << out.dump(1) << "\n";
  }
}

}  // namespace

void addBenchTtft(CLI::App& bench) {
  auto cfg = std::make_shared<Config>();
  auto* app = bench.add_subcommand(
      "ttft",
      "time-to-first-token of a GGUF model per TPxSP grid, TP all-reduce codecs side by side (first = baseline)");
  cfg->mo.add(*app, /*grid_flags=*/false);
  app->add_option("--grids", cfg->grids, "TPxSP grids, comma-separated")->delimiter(',')->capture_default_str();
  app->add_option("--comms", cfg->comms, "TP all-reduce per row (as run --comm); the first is the baseline")
      ->delimiter(',')
      ->capture_default_str();
  app->add_option("-f,--file", cfg->text, "text whose first --prompt-tokens tokens are the prompt")
      ->capture_default_str();
  app->add_option("--prompt-tokens", cfg->prompt_tokens, "prompt length")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app->add_option("-n,--iters", cfg->iters, "timed prefills per codec (median reported)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app->add_option("-w,--warmup", cfg->warmup, "untimed prefills per codec first")
      ->check(CLI::Range(0, 100))
      ->capture_default_str();
  app->callback([cfg] {
    cfg->mo.resolve();
    run(*cfg);
  });
}

}  // namespace flashring::cli
