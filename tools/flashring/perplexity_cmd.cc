// `flashring perplexity`: perplexity() of the library (flashring/perplexity.h) on a text file, as
// llama-perplexity prints it.
#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "flashring/perplexity.h"
#include "model_options.h"

namespace flashring::cli {

PplResult runPerplexity(const ModelOptions& mo, const std::string& text, int n_ctx, int chunks, bool print, bool kl) {
  PplResult res;
  std::mutex mu;
  PerplexityOptions po;
  po.n_ctx = n_ctx;
  po.max_windows = chunks;
  po.kl_divergence = kl;
  po.reference = commOptions("exact", mo.group_size, 0);
  po.testing(mo.engineOptions());
  runModel(mo, [&](Communicator& comm, LlamaEngine& eng, const Tokenizer& tok) {
    const std::vector<TokenId> ids = perplexityTokens(tok, text);
    if (perplexityWindows(static_cast<int64_t>(ids.size()), po) < 1)
      throw InvalidArgument(
          fmt::format("the text has {} tokens, fewer than one context of {} (use a smaller -c)", ids.size(), n_ctx));
    const bool printer = comm.rank() == 0 && print;
    PerplexityOptions opts = po;
    if (printer)
      opts.progress = [n_ctx](const PerplexityProgress& p) {
        if (p.done == 0)
          fmt::print("perplexity: tokenized {} tokens; {} chunks of n_ctx {}, scoring the second half of each\n",
                     p.text_tokens, p.windows, n_ctx);
        else
          fmt::print("[{}]{:.4f},", p.done, p.ppl);
        std::fflush(stdout);
      };
    const PerplexityResult r = perplexity(comm, eng, tok, std::span<const TokenId>(ids), opts);
    if (printer) {
      fmt::print("\nFinal estimate: PPL = {:.4f} +/- {:.5f}\n", r.ppl, r.ppl_err);
      if (r.kl) {
        const double d = r.kl->ln_ratio, e = r.kl->ln_ratio_err;
        fmt::print(
            "KL divergence against exact communication (the same windows, token by token):\n"
            "  exact PPL {:.4f}; ln(PPL / exact PPL) = {:+.5f} +/- {:.5f}, i.e. PPL {:+.3f}% (95%: {:+.3f}% .. "
            "{:+.3f}%)\n"
            "  mean KL divergence {:.6f} nats; same top-1 token {:.3f}%\n",
            r.kl->base_ppl, d, e, 100 * (std::exp(d) - 1), 100 * (std::exp(d - 1.96 * e) - 1),
            100 * (std::exp(d + 1.96 * e) - 1), r.kl->kld, 100.0 * r.kl->same_top1);
      }
    }
    std::lock_guard<std::mutex> lock(mu);
    if (comm.rank() == 0) {
      res.root = true;
      res.r = r;
    }
  });
  return res;
}

void addPerplexity(CLI::App& app) {
  auto mo = std::make_shared<ModelOptions>();
  auto file = std::make_shared<std::string>("/usr/share/common-licenses/GPL-3");
  auto n_ctx = std::make_shared<int>(512);
  auto chunks = std::make_shared<int>(0);
  auto* cmd = app.add_subcommand("perplexity", "perplexity of a GGUF model on a text, as llama-perplexity computes it");
  cmd->footer(
      "The text is cut into windows of -c tokens, each run from an empty cache with BOS first; the second half of "
      "each window is scored. Example:\n  flashring perplexity -f wiki.test.raw -c 512 --tp 4 --comm int4 "
      "--kl-divergence");
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
    mo->resolve();
    const PplResult res = runPerplexity(*mo, readFile(*file), *n_ctx, *chunks, true, *kl);
    if (!res.root) return;
    const PerplexityResult& r = res.r;
    fmt::print(
        "tp {} x sp {}, comm {} ({}): {} scored tokens in {:.1f} s ({:.1f} tok/s); communication "
        "{:.1f} s, "
        "quantization {:.1f} s (mean over ranks); wire {:.1f} MB\n",
        mo->tp, mo->sp, mo->comm, mo->codecDescription(), r.tokens, r.seconds,
        static_cast<double>(r.windows * *n_ctx) / r.seconds, r.comm_s, r.quant_s, r.wire_bytes / 1e6);
    if (!mo->json.empty()) {
      nlohmann::json j = commonJson(*mo);
      j.update({{"ppl", r.ppl},
                {"ppl_err", r.ppl_err},
                {"tokens", r.tokens},
                {"text_tokens", r.text_tokens},
                {"chunks", r.windows},
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
