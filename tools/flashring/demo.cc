// flashring demo: the main job on the embedded default — the default model on 4 in-process ranks.
#include <fmt/format.h>

#include <fstream>
#include <sstream>

#include "cli.h"
#include "model_options.h"

namespace flashring::cli {

void addDemo(CLI::App& app) {
  auto* demo = app.add_subcommand(
      "demo",
      "the main job on the embedded default: SmolLM2-135M on 4 in-process ranks, exact vs INT8/INT6/INT4 "
      "tensor-parallel communication");
  demo->callback([] {
    const std::string text_path = "/usr/share/common-licenses/GPL-3";
    std::ifstream in(text_path);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    if (text.empty()) throw InvalidArgument("cannot read " + text_path);

    ModelOptions gen;
    gen.tp = 2;
    gen.sp = 2;
    gen.attn = "tokenring";
    const std::string prompt =
        "<|im_start|>user\nWhat is the capital of France, and what is it famous "
        "for?<|im_end|>\n<|im_start|>assistant\n";
    fmt::print("flashring demo: {} as 4 ranks in this process.\n\n", gen.modelPath());
    fmt::print("1) Generation, tensor parallel 2 x sequence parallel 2 (TokenRing attention, exact all-reduce):\n");
    fmt::print("   prompt: What is the capital of France, and what is it famous for?\n   answer:");
    std::fflush(stdout);
    const RunResult r = runGenerate(gen, prompt, 48, true);
    fmt::print("   ({} prompt tokens, TTFT {:.0f} ms, {} tokens generated)\n\n", r.prompt_tokens, r.ttft_s * 1e3,
               r.generated);

    fmt::print(
        "2) Tensor parallel 4: TTFT of a 512-token prompt and perplexity of {} (2 windows of 512),\n"
        "   with the TP all-reduces exact (fp32) and Flash INT8 / INT6 / INT5 / INT4 (group 128, two values per group\n"
        "   kept in fp32: spike reserving):\n",
        text_path);
    std::fflush(stdout);
    struct Line {
      std::string comm;
      double ttft_ms, ppl, wire_mb;
    };
    std::vector<Line> lines;
    const std::string prompt512 = text.substr(0, 2400);  // ~512 tokens
    const struct {
      const char* comm;
      bool error_feedback, rotate_clip;
      int refine_layers;
    } rows[] = {{"exact", false, false, 0}, {"int8", false, false, 0}, {"int6", false, false, 0},
                {"int5", true, false, 0},   {"int4", false, false, 0}, {"int4", true, false, 0},
                {"int4", true, true, 0},    {"int4", true, true, 2}};
    for (const auto& row : rows) {
      ModelOptions mo;
      mo.tp = 4;
      mo.comm = row.comm;
      mo.error_feedback = row.error_feedback;
      mo.rotate = mo.clip = row.rotate_clip;
      mo.refine_layers = row.refine_layers;
      const std::string name = std::string(row.comm) + (row.rotate_clip ? "+rot+clip" : "") +
                               (row.error_feedback ? "+EF" : "") +
                               (row.refine_layers ? fmt::format("+R{}", row.refine_layers) : "");
      const RunResult g = runGenerate(mo, prompt512, 1, false);
      const PplResult p = runPerplexity(mo, text, 512, 2, false);
      lines.push_back({name, g.ttft_s * 1e3, p.r.ppl, g.prefill_wire_bytes / 4e6});
      fmt::print("   {} done\n", name);
      std::fflush(stdout);
    }
    fmt::print("\n   {:<20} {:>9} {:>14} {:>11} {:>12}\n", "comm", "TTFT ms", "MB/rank/pass", "perplexity", "vs exact");
    for (const Line& l : lines)
      fmt::print("   {:<20} {:>9.0f} {:>14.2f} {:>11.4f} {:>+11.3f}%\n", l.comm, l.ttft_ms, l.wire_mb, l.ppl,
                 100.0 * (l.ppl / lines[0].ppl - 1.0));
    fmt::print(
        "\n   +EF: error feedback (--error-feedback): each rank carries the quantization error it knows of into its\n"
        "   next all-reduce, so the residual stream holds one all-reduce's error instead of the sum of all, and one\n"
        "   more all-reduce of those errors follows the last layer. +rot+clip (--rotate --clip): each group is\n"
        "   rotated by a randomized Hadamard transform and its range clipped for the least squared error.\n"
        "   +R2 (--refine-layers 2): each all-reduce of layers 0-1 is followed at once by one of its errors.\n"
        "   Two windows are 510 scored tokens: the paired standard error of a 'vs exact' figure is ~0.8%, so the\n"
        "   low-bit rows within ~1.5% of each other are not told apart here. Over 21930 tokens (README, flashring\n"
        "   perplexity --kl-divergence) int4+rot+clip+EF is +1.33% and +R2 +0.86% on TP 4.\n");
    fmt::print(
        "\n   Here the ranks share memory, so a 'link' is a memcpy and fewer bytes barely change TTFT. On real links\n"
        "   the bytes are the time: see `flashring bench ttft --transport mpi` under bench/netem/run.sh (README).\n");
  });
}

}  // namespace flashring::cli
