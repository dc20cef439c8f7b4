// flashring bench decode: decode tokens/s of a real model under tensor parallelism with the TP all-reduce
// codecs side by side in one job, each as the two-step (two message rounds per all-reduce) and as its
// one-shot twin (one round), alternating, median of n. Per token: wall time, communication and codec time,
// bytes each rank sends, message rounds; per all-reduce: its time (codec + wait); and whether the greedy
// tokens equal the first row's.
#include <fmt/format.h>

#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "flashring/cpu.h"
#include "flashring/llama.h"
#include "flashring/tokenizer.h"
#include "model_options.h"

namespace flashring::cli {
namespace {

struct Config {
  ModelOptions mo;
  std::vector<std::string> comms{"exact", "int8", "int4"};
  std::vector<std::string> modes{"off", "on"};  // EngineOptions::oneshot per row: two-step, one-shot
  std::string prompt = "The capital of France is";
  int tokens = 32;
  int iters = 5, warmup = 1;
};

struct Row {
  std::string comm, mode;
  std::vector<double> per_token_s;  // per iteration: slowest rank's decode time / tokens
  double comm_s = 0, quant_s = 0;   // per token, mean over ranks and iterations
  double wire = 0;                  // bytes per token per rank
  double rounds = 0;                // message rounds per token (all-reduces + token choice)
  double allreduces = 0;            // per token
  std::vector<TokenId> tokens;
  bool same_tokens = true;
};

OneShotMode modeOf(const std::string& m) {
  if (m == "on") return OneShotMode::On;
  if (m == "off") return OneShotMode::Off;
  if (m == "auto") return OneShotMode::Auto;
  throw InvalidArgument(fmt::format("--oneshot-modes: '{}' is not on, off or auto", m));
}

void run(const Config& cfg) {
  std::vector<Row> rows;
  for (const auto& c : cfg.comms)
    for (const auto& m : cfg.modes) {
      Row r;
      r.comm = c;
      r.mode = m;
      rows.push_back(r);
    }
  std::string model_desc;
  std::mutex mu;
  bool root = false;
  runModel(cfg.mo, [&](Communicator& comm, LlamaEngine& eng, const Tokenizer& tok) {
    const std::vector<TokenId> prompt = tok.encode(cfg.prompt, true, true);
    if (prompt.empty()) throw InvalidArgument("the prompt encodes to no tokens");
    const double n = comm.size();
    // Alternating: iteration i runs every row once, so load changes hit every row alike.
    for (int it = 0; it < cfg.warmup + cfg.iters; ++it) {
      for (Row& r : rows) {
        eng.setAllreduceOptions(commOptions(r.comm, cfg.mo.group_size, cfg.mo.spikes, cfg.mo.rotate, cfg.mo.clip));
        eng.setOneShot(modeOf(r.mode));
        eng.setSampling(cfg.mo.sampling);
        TokenId t = eng.prefill(prompt);
        std::vector<TokenId> got{t};
        barrier(comm);
        eng.resetStats();
        const auto t0 = Clock::now();
        for (int i = 0; i < cfg.tokens; ++i) got.push_back(t = eng.decode(t));
        const double dt = allreduceMax(comm, std::chrono::duration<double>(Clock::now() - t0).count());
        const EngineStats st = eng.stats();
        const double comm_s = allreduceSumDouble(comm, st.comm_s) / n;
        const double quant_s = allreduceSumDouble(comm, st.quant_s) / n;
        const double wire = allreduceSumDouble(comm, static_cast<double>(st.wire_bytes)) / n;
        const double rounds = allreduceSumDouble(comm, static_cast<double>(st.allreduce_rounds + st.choice_rounds)) / n;
        const double ars = allreduceSumDouble(comm, static_cast<double>(st.allreduces)) / n;
        if (it < cfg.warmup) continue;
        std::lock_guard<std::mutex> lock(mu);
        if (comm.rank() != 0) continue;
        const double k = cfg.tokens, iters = cfg.iters;
        r.per_token_s.push_back(dt / k);
        r.comm_s += comm_s / k / iters;
        r.quant_s += quant_s / k / iters;
        r.wire += wire / k / iters;
        r.rounds += rounds / k / iters;
        r.allreduces += ars / k / iters;
        if (r.tokens.empty()) r.tokens = got;
        r.same_tokens = r.same_tokens && got == r.tokens;
      }
    }
    std::lock_guard<std::mutex> lock(mu);
    if (comm.rank() == 0) {
      root = true;
      model_desc = eng.config().describe();
    }
  });
  if (!root) return;
  fmt::print(
      "# model: {}\n# tp {} x sp {} ({}), {} decode tokens after a {}-byte prompt, median of {} per token (slowest "
      "rank); comm/quant/wire/rounds: per token, mean over ranks\n",
      model_desc, cfg.mo.tp, cfg.mo.sp, cfg.mo.transport.transport, cfg.tokens, cfg.prompt.size(), cfg.iters);
  fmt::print("{:>8} {:>8} {:>10} {:>9} {:>9} {:>9} {:>10} {:>7} {:>11} {:>8} {:>7}\n", "comm", "oneshot", "ms/token",
             "tok/s", "comm_ms", "quant_ms", "wire_kB", "rounds", "us/allred", "vs_2step", "tokens");
  std::map<std::string, double> twostep;
  for (const Row& r : rows)
    if (r.mode == "off") twostep[r.comm] = median(r.per_token_s);
  const std::vector<TokenId>& first = rows.front().tokens;
  nlohmann::json out = nlohmann::json::array();
  for (const Row& r : rows) {
    const double t = median(r.per_token_s);
    const double per_ar = r.allreduces > 0 ? (r.comm_s + r.quant_s) / r.allreduces : 0;
    const bool same = r.same_tokens && r.tokens == first;
    const double vs = twostep.count(r.comm) ? twostep[r.comm] / t : 0;
    fmt::print("{:>8} {:>8} {:>10.2f} {:>9.1f} {:>9.2f} {:>9.2f} {:>10.2f} {:>7.1f} {:>11.1f} {:>7.2f}x {:>7}\n",
               r.comm, r.mode, t * 1e3, 1.0 / t, r.comm_s * 1e3, r.quant_s * 1e3, r.wire / 1e3, r.rounds, per_ar * 1e6,
               vs, same ? "same" : "DIFF");
    out.push_back({{"bench", "decode"},
                   {"model", model_desc},
                   {"tp", cfg.mo.tp},
                   {"sp", cfg.mo.sp},
                   {"transport", cfg.mo.transport.transport},
                   {"comm", r.comm},
                   {"oneshot", r.mode},
                   {"decode_tokens", cfg.tokens},
                   {"ms_per_token", t * 1e3},
                   {"ms_per_token_all", r.per_token_s},
                   {"tok_s", 1.0 / t},
                   {"comm_ms_per_token", r.comm_s * 1e3},
                   {"quant_ms_per_token", r.quant_s * 1e3},
                   {"wire_bytes_per_token_per_rank", r.wire},
                   {"rounds_per_token", r.rounds},
                   {"allreduces_per_token", r.allreduces},
                   {"us_per_allreduce", per_ar * 1e6},
                   {"speedup_vs_twostep", vs},
                   {"same_tokens_as_first_row", same}});
  }
  fmt::print(
      "# us/allred: codec + wait time per TP all-reduce; vs_2step: per-token speed-up over the same codec's "
      "two-step row; tokens: greedy tokens equal to the first row's\n");
  if (!cfg.mo.json.empty()) {
    std::ofstream f(cfg.mo.json);
    if (!f) throw InvalidArgument(fmt::format("cannot write --json {}", cfg.mo.json));
    f << out.dump(1) << "\n";
  }
}

}  // namespace

void addBenchDecode(CLI::App& bench) {
  auto cfg = std::make_shared<Config>();
  auto* app = bench.add_subcommand(
      "decode", "decode tokens/s of a GGUF model under TP, all-reduce codecs as two-step and one-shot side by side");
  cfg->mo.add(*app);
  app->add_option("--comms", cfg->comms, "TP all-reduce per row (as run --comm)")
      ->delimiter(',')
      ->capture_default_str();
  app->add_option("--oneshot-modes", cfg->modes, "per codec: off (two-step), on (one-shot twin), auto")
      ->delimiter(',')
      ->capture_default_str();
  app->add_option("-p,--prompt", cfg->prompt, "prompt before the decoded tokens")->capture_default_str();
  app->add_option("-n,--tokens", cfg->tokens, "decode tokens per timed run")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  app->add_option("--iters", cfg->iters, "timed runs per row (median reported)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app->add_option("-w,--warmup", cfg->warmup, "untimed runs per row first")
      ->check(CLI::Range(0, 100))
      ->capture_default_str();
  app->callback([cfg] {
    cfg->mo.resolve();
    run(*cfg);
  });
}

}  // namespace flashring::cli
