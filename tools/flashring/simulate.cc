// flashring simulate: predicted prefill time (compute / communication / quantization), decode tokens/s and bytes
// per rank of the LLaMA engine under TP x SP on a hardware profile (flashring/simulate.h), with the SP scheme and
// the all-reduce the library's Auto would pick there; --sweep over grids, codecs and link rates; --paper puts the
// model beside the papers' published figures; --projections writes the README's projection table.
#include "flashring/simulate.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "cli.h"
#include "flashring/comm_setting.h"
#include "flashring/error.h"
#include "flashring/gguf.h"

namespace flashring::cli {

namespace {

struct Config {
  std::string profile = "l40x4-pcie";
  std::string model = "llama-3-8b";
  int tp = 0, sp = 1;  // tp 0: the ranks of one node / sp
  std::string comm = "bf16";
  std::string attn = "auto";
  int batch = 1;
  int64_t prompt = 8192, decode = 128;
  int nodes = 0;  // 0: the profile's
  int group_size = 128, spikes = 0;
  double weight_bytes = 0;  // 0: the profile's
  bool sweep = false, paper = false, projections = false, list_profiles = false, list_models = false;
  std::vector<std::string> comms{"bf16", "int8", "int4"};
  std::vector<double> link_scales{0.5, 1, 2};
  std::string json;
  TransportOptions transport;  // --profile local only
  // Profiles saved and loaded as JSON, and emulated links (bench/netem/run.sh's) in place of the profile's.
  std::string profile_file, save_profile;
  std::string link_rate, link_topology, node_rate;
  // One all-reduce of this many fp32 bytes (--allreduce), or one SP attention call (--attention).
  std::string allreduce_size;
  bool attention = false;
  int64_t seq = 4096;
  int heads = 32, kv_heads = 0, head_dim = 128;
  bool causal = true;
  int ranks_used = 0;  // --allreduce / --attention: ranks (default: the profile's)
};

LlamaConfig loadModel(const std::string& name) {
  const auto names = sim::builtinModelNames();
  if (std::find(names.begin(), names.end(), name) != names.end()) return sim::builtinModel(name);
  if (!std::filesystem::exists(name))
    throw InvalidArgument(
        fmt::format("--model '{}': not a built-in model ({}) nor an existing GGUF file", name, fmt::join(names, ", ")));
  LlamaConfig c = LlamaConfig::fromGguf(gguf::File::open(name));
  if (c.name.empty()) c.name = std::filesystem::path(name).filename().string();
  return c;
}

// Thrown on the MPI processes other than rank 0 after --profile local calibrated: they have nothing to print.
struct NotRoot {};

void printProfile(const sim::Profile& p);
void writeJsonFile(const std::string& path, const nlohmann::json& j);

sim::Profile loadProfile(const Config& cfg) {
  sim::Profile p;
  if (!cfg.profile_file.empty()) {
    std::ifstream f(cfg.profile_file);
    if (!f) throw InvalidArgument(fmt::format("--profile-file {}: cannot read it", cfg.profile_file));
    std::stringstream ss;
    ss << f.rdbuf();
    p = sim::profileFromJson(ss.str());
  } else if (cfg.profile == "local") {
    TransportOptions t = cfg.transport;
    if (t.transport == "thread" && t.ranks < 2) t.ranks = 2;
    bool have = false;
    runOnTransport(t, [&](Communicator& comm) {
      sim::Profile mine = sim::calibratedProfile(comm, cfg.weight_bytes > 0 ? cfg.weight_bytes : 0.625);
      if (comm.rank() == 0) p = mine, have = true;
    });
    if (!have) throw NotRoot{};  // another MPI process holds rank 0: it prints
  } else {
    p = sim::profileByName(cfg.profile);
  }
  if (!cfg.save_profile.empty()) {
    std::ofstream f(cfg.save_profile);
    if (!f) throw InvalidArgument(fmt::format("--save-profile {}: cannot write it", cfg.save_profile));
    f << sim::profileToJson(p) << "\n";
  }
  if (!cfg.link_rate.empty())
    p = sim::withEmulatedLinks(p, cfg.link_topology.empty() ? "star" : cfg.link_topology, sim::parseRate(cfg.link_rate),
                               cfg.node_rate.empty() ? 0 : sim::parseRate(cfg.node_rate));
  else if (!cfg.link_topology.empty() || !cfg.node_rate.empty())
    throw InvalidArgument("--link-topology and --node-rate need --link-rate");
  if (cfg.nodes > 0) p = sim::withNodes(p, cfg.nodes);
  if (cfg.weight_bytes > 0) p.weight_bytes = cfg.weight_bytes;
  return p;
}

// --allreduce SIZE: one all-reduce of SIZE bytes of fp32 with --comm on --ranks-used ranks (default: all).
void runAllreduce(const Config& cfg, const sim::Profile& p) {
  const size_t bytes = parseSize(cfg.allreduce_size);
  const size_t count = bytes / 4;
  const int N = cfg.ranks_used > 0 ? cfg.ranks_used : p.ranks();
  const AllreduceOptions o = commAllreduceOptions(cfg.comm, cfg.group_size, cfg.spikes, false, false, "comm");
  const sim::AllreduceCost c = sim::allreduceCost(count, N, o, p);
  const double total = c.comm_s + c.codec_s;
  printProfile(p);
  fmt::print("{:>10} {:>5} {:<16} {:<16} {:>11} {:>10} {:>10} {:>10} {:>7} {:>8} {:>12}\n", "size", "ranks", "comm",
             "allreduce", "time_ms", "link_ms", "codec_ms", "cpu_ms", "rounds", "messages", "wire_bytes");
  fmt::print("{:>10} {:>5} {:<16} {:<16} {:>11.3f} {:>10.3f} {:>10.3f} {:>10.3f} {:>7} {:>8} {:>12}\n",
             formatSize(bytes), N, cfg.comm, c.name, total * 1e3, c.link_s * 1e3, c.codec_s * 1e3,
             c.transport_cpu_s * 1e3, c.rounds, c.messages, c.wire_bytes);
  if (!cfg.json.empty())
    writeJsonFile(cfg.json, nlohmann::json::array({{{"bench", "simulate-allreduce"},
                                                    {"profile", p.name},
                                                    {"bytes", bytes},
                                                    {"ranks", N},
                                                    {"comm", cfg.comm},
                                                    {"allreduce", c.name},
                                                    {"time_ms", total * 1e3},
                                                    {"link_ms", c.link_s * 1e3},
                                                    {"stages", c.stages},
                                                    {"codec_ms", c.codec_s * 1e3},
                                                    {"transport_cpu_ms", c.transport_cpu_s * 1e3},
                                                    {"rounds", c.rounds},
                                                    {"messages", c.messages},
                                                    {"wire_bytes", c.wire_bytes},
                                                    {"inter_node_bytes", c.inter_bytes}}}));
}

// --attention: one spAttention call of --seq tokens, --heads / --kv-heads x --head-dim, --batch, on --ranks-used.
void runAttention(const Config& cfg, const sim::Profile& p) {
  const int N = cfg.ranks_used > 0 ? cfg.ranks_used : p.ranks();
  const int kvh = cfg.kv_heads > 0 ? cfg.kv_heads : cfg.heads;
  const SpShape shape{cfg.batch, cfg.seq, cfg.heads, kvh, cfg.head_dim};
  SpAttentionOptions o;
  o.causal = cfg.causal;
  const sim::AttentionCost c = sim::attentionCost(shape, N, spSchemeFromName(cfg.attn), o, p);
  printProfile(p);
  fmt::print("{:>7} {:>5} {:>4} {:>4} {:>5} {:<17} {:>11} {:>11} {:>10}\n", "seq", "ranks", "H", "Hkv", "D", "scheme",
             "time_ms", "compute_ms", "merge_ms");
  fmt::print("{:>7} {:>5} {:>4} {:>4} {:>5} {:<17} {:>11.3f} {:>11.3f} {:>10.3f}\n", cfg.seq, N, cfg.heads, kvh,
             cfg.head_dim, spSchemeName(c.scheme), c.total_s * 1e3, c.compute_s * 1e3, c.merge_s * 1e3);
  if (!cfg.json.empty())
    writeJsonFile(cfg.json, nlohmann::json::array({{{"bench", "simulate-attention"},
                                                    {"profile", p.name},
                                                    {"seq", cfg.seq},
                                                    {"ranks", N},
                                                    {"heads", cfg.heads},
                                                    {"kv_heads", kvh},
                                                    {"head_dim", cfg.head_dim},
                                                    {"batch", cfg.batch},
                                                    {"causal", cfg.causal},
                                                    {"scheme", spSchemeName(c.scheme)},
                                                    {"time_ms", c.total_s * 1e3},
                                                    {"compute_ms", c.compute_s * 1e3},
                                                    {"merge_ms", c.merge_s * 1e3}}}));
}

std::string grid(int tp, int sp) { return fmt::format("{}x{}", tp, sp); }
std::string schemeOf(const sim::Prediction& r) { return r.sp > 1 ? spSchemeName(r.scheme) : "-"; }
std::string autoOf(const sim::Prediction& r) {
  return fmt::format("{}{}", r.auto_allreduce, r.sp > 1 ? " / " + spSchemeName(r.auto_scheme) : "");
}

struct Row {
  sim::Prediction r;
  double link_scale = 1;
  double speedup = 1;  // over the first codec of the same grid and link scale
};

nlohmann::json toJson(const Row& row, const sim::Profile& p) {
  const sim::Prediction& r = row.r;
  return {{"bench", "simulate"},
          {"profile", p.name},
          {"model", r.model},
          {"grid", grid(r.tp, r.sp)},
          {"tp", r.tp},
          {"sp", r.sp},
          {"comm", r.comm},
          {"allreduce", r.allreduce},
          {"attn_ran", schemeOf(r)},
          {"auto_allreduce", r.auto_allreduce},
          {"auto_attn", r.sp > 1 ? spSchemeName(r.auto_scheme) : "-"},
          {"batch", r.batch},
          {"prompt_tokens", r.prompt},
          {"decode_tokens", r.decode},
          {"link_scale", row.link_scale},
          {"ttft_ms", r.prefill_s * 1e3},
          {"compute_ms", r.compute_s * 1e3},
          {"comm_ms", r.comm_s * 1e3},
          {"quant_ms", r.quant_s * 1e3},
          {"linear_ms", r.linear_s * 1e3},
          {"attention_ms", r.attention_s * 1e3},
          {"tp_comm_ms", r.tp_comm_s * 1e3},
          {"sp_comm_ms", r.sp_comm_s * 1e3},
          {"decode_tok_s", r.decode_tok_s},
          {"decode_step_ms", r.decode_step_s * 1e3},
          {"bytes_per_rank", r.bytes_per_rank},
          {"inter_node_bytes_per_rank", r.inter_node_bytes_per_rank},
          {"memory_gb", r.memory_bytes / 1e9},
          {"fits", r.fits},
          {"speedup_vs_first", row.speedup},
          {"transport", "simulated " + p.name}};
}

void printProfile(const sim::Profile& p) {
  fmt::print("# profile {}: {}\n", p.name, p.description);
  fmt::print(
      "#   {} node(s) x {}; peak {:.1f} TFLOP/s (gemm {:.0f}%, attention {:.0f}%), memory {:.0f} GB/s ({:.0f}%), "
      "{:.0f} GB; codec {:.0f} GB/s; weights {:.4g} B, activations {:g} B\n",
      p.nodes, p.gpus_per_node, p.peak_flops / 1e12, p.gemm_eff * 100, p.attn_eff * 100, p.mem_Bps / 1e9,
      p.mem_eff * 100, p.mem_bytes / (1024.0 * 1024 * 1024), p.codec_Bps / 1e9, p.weight_bytes, p.act_bytes);
  auto link = [](const sim::LinkSpec& l) {
    return fmt::format("{} {:.1f} GB/s x {:.0f}% = {:.1f} GB/s per direction, {:.0f} us", topologyName(l.topology),
                       l.peak_Bps / 1e9, l.efficiency * 100, l.bandwidthBps() / 1e9, l.latency_s * 1e6);
  };
  fmt::print("#   intra-node: {}\n", link(p.intra));
  if (p.nodes > 1) fmt::print("#   inter-node: {}\n", link(p.inter));
  fmt::print("#   sources: {}\n", p.sources);
}

void printRows(const std::vector<Row>& rows, bool scales) {
  fmt::print(
      "{:>6} {:>5} {:>9} {:>15} {:>11} {:>11} {:>10} {:>10} {:>10} {:>6} {:>10} {:>10} {:>10} {:>8} {:>8} "
      "{:>24}\n",
      "grid", "link", "comm", "allreduce", "attn", "ttft_ms", "compute", "comm", "quant", "comm%", "decode/s",
      "MB/rank", "inter_MB", "mem_GB", "speedup", "auto picks");
  for (const Row& row : rows) {
    const sim::Prediction& r = row.r;
    fmt::print(
        "{:>6} {:>5} {:>9} {:>15} {:>11} {:>11.2f} {:>10.2f} {:>10.2f} {:>10.2f} {:>5.1f}% {:>10.1f} {:>10.1f} "
        "{:>10.1f} {:>7.1f}{} {:>7.2f}x {:>24}\n",
        grid(r.tp, r.sp), scales ? fmt::format("x{:g}", row.link_scale) : "x1", r.comm, r.allreduce, schemeOf(r),
        r.prefill_s * 1e3, r.compute_s * 1e3, r.comm_s * 1e3, r.quant_s * 1e3,
        100 * (r.comm_s + r.quant_s) / r.prefill_s, r.decode_tok_s, static_cast<double>(r.bytes_per_rank) / 1e6,
        static_cast<double>(r.inter_node_bytes_per_rank) / 1e6, r.memory_bytes / 1e9, r.fits ? " " : "!", row.speedup,
        autoOf(r));
  }
  if (std::any_of(rows.begin(), rows.end(), [](const Row& r) { return !r.r.fits; }))
    fmt::print("# !: weights + KV cache exceed 90% of the device memory (the plan does not fit)\n");
}

void writeJsonFile(const std::string& path, const nlohmann::json& j) {
  std::ofstream f(path);
  if (!f) throw InvalidArgument(fmt::format("cannot write --json {}", path));
  f << j.dump(1) << "\n";
}

void runPaper(const Config& cfg) {
  const auto figs = sim::paperFigures();
  fmt::print("# Published figures beside the model (built-in profiles as stated, never fitted; +-25% = reproduced)\n");
  fmt::print("{:<29} {:>10} {:>10} {:>6} {:>6}  {}\n", "figure", "published", "model", "ratio", "+-25%", "setup");
  std::string last_source;
  nlohmann::json out = nlohmann::json::array();
  int hits = 0;
  for (const auto& f : figs) {
    if (f.source != last_source) fmt::print("## {}\n", last_source = f.source);
    fmt::print("{:<29} {:>7.3g} {:<2} {:>7.3g} {:<2} {:>6.2f} {:>6}  {}\n", f.name, f.published, f.unit, f.predicted,
               f.unit, f.ratio(), f.reproduced() ? "yes" : "NO", f.setup);
    fmt::print(
        "{:<29} {} {}{}\n", "", f.reproduced() ? "ok:" : "MISS:", f.note,
        f.implied_link_scale > 0 ? fmt::format("; matches with link bandwidth x{:.2f}", f.implied_link_scale) : "");
    hits += f.reproduced();
    out.push_back({{"bench", "simulate-paper"},
                   {"figure", f.name},
                   {"source", f.source},
                   {"setup", f.setup},
                   {"unit", f.unit},
                   {"published", f.published},
                   {"predicted", f.predicted},
                   {"ratio", f.ratio()},
                   {"reproduced", f.reproduced()},
                   {"note", f.note},
                   {"implied_link_scale", f.implied_link_scale}});
  }
  fmt::print("# {} of {} figures within 25%\n", hits, figs.size());
  if (!cfg.json.empty()) writeJsonFile(cfg.json, out);
}

// The best plan (grid, codec, SP scheme) by predicted TTFT among those that fit, and the best with bf16.
void runProjections(const Config& cfg) {
  fmt::print("<!-- generated by: flashring simulate --projections (batch {}, decode {}) -->\n", cfg.batch, cfg.decode);
  fmt::print(
      "| profile | model | prompt | best grid TPxSP | codec | SP scheme | TTFT | best bf16 plan (grid, scheme) | "
      "speed-up | TP-per-node bf16 plan (grid): TTFT | decode tok/s of the best "
      "|\n|---|---|---|---|---|---|---|---|---|---|---|\n");
  auto fmtTime = [](double s) { return s >= 1 ? fmt::format("{:.2f} s", s) : fmt::format("{:.1f} ms", s * 1e3); };
  for (const char* mname : {"llama-3-8b", "llama-3-70b"}) {
    const LlamaConfig m = sim::builtinModel(mname);
    for (const sim::Profile& p : sim::builtinProfiles()) {
      for (int64_t prompt : {int64_t{8192}, int64_t{131072}}) {
        std::optional<sim::Prediction> best, base, conv;
        // The conventional plan: TP over a node's GPUs (all ranks when a node has one), SP over the nodes.
        const int conv_tp = std::min(p.gpus_per_node > 1 ? p.gpus_per_node : p.ranks(), m.n_head);
        for (auto [tp, sp] : sim::grids(m, p))
          for (const char* comm : {"bf16", "int8", "int4"}) {
            sim::Workload w;
            w.tp = tp, w.sp = sp, w.batch = cfg.batch, w.prompt = prompt, w.decode = cfg.decode, w.comm = comm;
            w.group_size = cfg.group_size, w.spikes = cfg.spikes;
            if (prompt < 2 * sp) continue;
            const sim::Prediction r = sim::predict(m, p, w);
            if (!r.fits) continue;
            if (!best || r.prefill_s < best->prefill_s) best = r;
            if (std::string(comm) == "bf16" && (!base || r.prefill_s < base->prefill_s)) base = r;
            if (std::string(comm) == "bf16" && tp == conv_tp && tp * sp == p.ranks()) conv = r;
          }
        const std::string pl = prompt >= 131072 ? "128k" : "8k";
        if (!best) {
          fmt::print("| {} | {} | {} | does not fit | | | | | | | |\n", p.name, m.name, pl);
          continue;
        }
        fmt::print("| {} | {} | {} | {} | {} | {} | {} | {} ({}, {}) | {:.2f}x | {} | {:.1f} |\n", p.name, m.name, pl,
                   grid(best->tp, best->sp), best->allreduce, schemeOf(*best), fmtTime(best->prefill_s),
                   fmtTime(base->prefill_s), grid(base->tp, base->sp), schemeOf(*base),
                   base->prefill_s / best->prefill_s,
                   conv ? fmt::format("{}: {}", grid(conv->tp, conv->sp), fmtTime(conv->prefill_s)) : "does not fit",
                   best->decode_tok_s);
      }
    }
  }
}

void run(const Config& cfg) {
  if (cfg.list_profiles) {
    for (const sim::Profile& p : sim::builtinProfiles()) fmt::print("{:<20} {}\n", p.name, p.description);
    fmt::print("{:<20} {}\n", "local", "this machine as calibrated (CostModel::calibrate over --transport/--ranks)");
    return;
  }
  if (cfg.list_models) {
    for (const std::string& n : sim::builtinModelNames()) fmt::print("{:<14} {}\n", n, sim::builtinModel(n).describe());
    return;
  }
  if (cfg.paper) return runPaper(cfg);
  if (cfg.projections) return runProjections(cfg);
  if (!cfg.allreduce_size.empty()) return runAllreduce(cfg, loadProfile(cfg));
  if (cfg.attention) return runAttention(cfg, loadProfile(cfg));
  const LlamaConfig m = loadModel(cfg.model);
  const sim::Profile base = loadProfile(cfg);
  const SpScheme scheme = spSchemeFromName(cfg.attn);
  std::vector<std::pair<int, int>> gs;
  if (cfg.sweep) {
    for (auto g : sim::grids(m, base))
      if (g.first * g.second == base.ranks()) gs.push_back(g);
  } else {
    const int tp = cfg.tp > 0 ? cfg.tp : std::max(1, std::min(base.gpus_per_node / cfg.sp, m.n_head));
    gs.emplace_back(tp, cfg.sp);
  }
  const std::vector<std::string> comms = cfg.sweep ? cfg.comms : std::vector<std::string>{cfg.comm};
  const std::vector<double> scales = cfg.sweep ? cfg.link_scales : std::vector<double>{1};
  printProfile(base);
  fmt::print(
      "# model: {}\n# batch {}, prompt {} tokens, decode {} tokens; TTFT = compute + comm + quant (no overlap "
      "of TP communication), decode/s = batch / step\n",
      m.describe(), cfg.batch, cfg.prompt, cfg.decode);
  std::vector<Row> rows;
  for (double s : scales) {
    const sim::Profile p = sim::withLinkScale(base, s);
    for (auto [tp, sp] : gs) {
      double first = 0;
      for (const std::string& comm : comms) {
        sim::Workload w;
        w.tp = tp, w.sp = sp, w.batch = cfg.batch, w.prompt = cfg.prompt, w.decode = cfg.decode, w.comm = comm;
        w.group_size = cfg.group_size, w.spikes = cfg.spikes, w.scheme = scheme;
        Row row{sim::predict(m, p, w), s, 1};
        if (first == 0) first = row.r.prefill_s;
        row.speedup = first / row.r.prefill_s;
        rows.push_back(row);
      }
    }
  }
  printRows(rows, cfg.sweep);
  if (!cfg.json.empty()) {
    nlohmann::json out = nlohmann::json::array();
    for (const Row& r : rows) out.push_back(toJson(r, base));
    writeJsonFile(cfg.json, out);
  }
}

}  // namespace

void addSimulate(CLI::App& app) {
  auto cfg = std::make_shared<Config>();
  auto* sub = app.add_subcommand(
      "simulate",
      "predict prefill time (compute / communication / quantization), decode tok/s and bytes per rank of the LLaMA "
      "engine under TP x SP on a hardware profile (GPU nodes, multi-node fabrics, CPU clusters, this machine)");
  sub->add_option("--profile", cfg->profile, "hardware profile (--list-profiles), or local: this machine as calibrated")
      ->capture_default_str();
  sub->add_flag("--list-profiles", cfg->list_profiles, "list the built-in hardware profiles");
  sub->add_option("-m,--model", cfg->model, "built-in model (--list-models) or a GGUF file")->capture_default_str();
  sub->add_flag("--list-models", cfg->list_models, "list the built-in model shapes");
  sub->add_option("--tp", cfg->tp, "tensor-parallel degree (default: the ranks of one node / --sp)")
      ->check(CLI::Range(1, 4096));
  sub->add_option("--sp", cfg->sp, "sequence-parallel degree")->check(CLI::Range(1, 4096))->capture_default_str();
  sub->add_option("--comm", cfg->comm,
                  "TP all-reduce as the model commands name it: exact (fp32 two-step), bf16 (the GPU baseline), int8, "
                  "int6, int5, int4, int4-int8, auto, or an all-reduce name (flash-int4, oneshot-bf16, hier-bf16-int4, "
                  "...)")
      ->capture_default_str();
  sub->add_option("--attn", cfg->attn, "SP attention: auto, tokenring, ring-kv, ulysses, allgather-kv")
      ->check(CLI::IsMember({"auto", "tokenring", "ring-kv", "ulysses", "allgather-kv"}))
      ->capture_default_str();
  sub->add_option("-b,--batch", cfg->batch, "sequences per batch")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  sub->add_option("-p,--prompt", cfg->prompt, "prompt tokens per sequence")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30))
      ->capture_default_str();
  sub->add_option("-n,--decode", cfg->decode, "generated tokens (decode rate at the mean context)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30))
      ->capture_default_str();
  sub->add_option("--nodes", cfg->nodes, "nodes of a multi-node profile (default: the profile's)")
      ->check(CLI::Range(1, 64));
  sub->add_option("--group-size", cfg->group_size, "quantization group of the low-bit codecs")
      ->check(CLI::Range(32, 4096))
      ->capture_default_str();
  sub->add_option("--spikes", cfg->spikes, "values per group kept in fp32 (the engine's default is 2; bytes only)")
      ->check(CLI::Range(0, 8))
      ->capture_default_str();
  sub->add_option("--weight-bytes", cfg->weight_bytes, "bytes per weight (default: the profile's: 2 on GPUs)")
      ->check(CLI::Range(0.1, 8.0));
  sub->add_flag("--sweep", cfg->sweep, "every TPxSP grid that uses all the profile's ranks x --comms x --link-scales");
  sub->add_option("--comms", cfg->comms, "--sweep: codecs (the first is each grid's baseline)")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--link-scales", cfg->link_scales, "--sweep: link bandwidth multipliers")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_flag("--paper", cfg->paper,
                "print the papers' published figures beside the model's predictions and whether each is within 25%");
  sub->add_flag("--projections", cfg->projections,
                "the README's projection table: LLaMA-3-8B/70B on every built-in profile, 8k and 128k prompts, best "
                "plan vs the bf16 baseline (Markdown)");
  sub->add_option("--json", cfg->json, "write the rows to this JSON file (bench/plot.py plots them)");
  sub->add_option("--profile-file", cfg->profile_file, "load the profile from this JSON file (--save-profile's)");
  sub->add_option("--save-profile", cfg->save_profile,
                  "write the profile (e.g. --profile local as calibrated) to this JSON file before using it");
  sub->add_option("--link-rate", cfg->link_rate,
                  "replace the profile's links by emulated ones of this rate (tc syntax: 1gbit, 500mbit), as "
                  "bench/netem/run.sh --rate builds them (TCP goodput 1448/1514 of the rate)");
  sub->add_option("--link-topology", cfg->link_topology,
                  "with --link-rate: star, mesh or nodes:RxK (bench/netem/run.sh --topology; default star)");
  sub->add_option("--node-rate", cfg->node_rate, "with --link-topology nodes:RxK: each node's uplink rate");
  sub->add_option("--allreduce", cfg->allreduce_size,
                  "predict one all-reduce of this many bytes of fp32 (16M, 1M, ...) with --comm on --ranks-used ranks");
  sub->add_flag("--attention", cfg->attention,
                "predict one SP attention call (--seq, --heads, --kv-heads, --head-dim, -b, --attn) on --ranks-used");
  sub->add_option("--seq", cfg->seq, "--attention: global sequence length")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 30))
      ->capture_default_str();
  sub->add_option("--heads", cfg->heads, "--attention: query heads")->check(CLI::Range(1, 4096))->capture_default_str();
  sub->add_option("--kv-heads", cfg->kv_heads, "--attention: key/value heads (default: = --heads)")
      ->check(CLI::Range(1, 4096));
  sub->add_option("--head-dim", cfg->head_dim, "--attention: head dimension")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  sub->add_flag("--causal,!--no-causal", cfg->causal, "--attention: causal mask (default) or full attention");
  sub->add_option("--ranks-used", cfg->ranks_used, "--allreduce / --attention: ranks (default: all of the profile)")
      ->check(CLI::Range(1, 4096));
  cfg->transport.add(*sub);
  sub->footer(
      "Examples:\n"
      "  flashring simulate --list-profiles\n"
      "  flashring simulate --profile l40x4-pcie -m llama-3-70b --tp 4 -b 8 -p 1024 --comm int4\n"
      "  flashring simulate --profile h100x8-ib400 --nodes 4 -m llama-3-70b --tp 8 --sp 4 -p 131072 --comm "
      "hier-bf16-int4\n"
      "  flashring simulate --profile a10x4-pcie -m llama-2-7b --sweep --comms bf16,int8,int4 --json sim.json && "
      "python3 bench/plot.py sim.json\n"
      "  flashring simulate --profile local --ranks 4 -m model.gguf --sp 2 --comm int8\n"
      "  flashring simulate --profile local --ranks 4 --save-profile local.json --allreduce 16M --comm int4\n"
      "  flashring simulate --profile-file local.json --link-rate 1gbit --link-topology mesh --allreduce 16M --comm "
      "flash-int4\n"
      "  flashring simulate --profile-file local.json --link-rate 1gbit --attention --seq 4096 --heads 8 --attn "
      "tokenring\n"
      "  flashring simulate --paper\n"
      "  flashring simulate --projections > projections.md");
  sub->callback([cfg] {
    try {
      run(*cfg);
    } catch (const NotRoot&) {
    }
  });
}

}  // namespace flashring::cli
