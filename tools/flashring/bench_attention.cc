// flashring bench attention: the sequence-parallel schemes side by side on one shape grid, with the
// error of each against single-rank attention and the cost model's prediction.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli.h"
#include "flashring/costmodel.h"
#include "flashring/sp_attention.h"

namespace flashring::cli {

namespace {

struct Config {
  std::vector<int64_t> seqs{4096};
  int heads = 32, head_dim = 128, batch = 1;
  std::vector<int> kv_heads;  // empty: = heads
  bool causal = true;
  std::string layout = "zigzag";
  std::vector<std::string> schemes{"tokenring", "ring-kv", "ulysses", "allgather-kv", "auto"};
  bool schemes_given = false;  // else the two-level schemes join the list on a layout of several nodes
  std::string topology;        // what the cost model assumes; empty = measured
  std::string calibration;
  int iters = 5, warmup = 1;
  bool check = true;
  std::string json;
  TransportOptions transport;
};

// Deterministic value of element e of token t of tensor `which`: any rank can make any shard.
float val(int which, uint64_t b, uint64_t t, uint64_t e) {
  const uint64_t h = mix((static_cast<uint64_t>(which) << 60) ^ (b << 48) ^ (t << 20) ^ e);
  return static_cast<float>(static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}
std::vector<float> makeShard(int which, const SpShape& s, size_t width, const std::vector<Segment>& segs) {
  size_t L = 0;
  for (auto& g : segs) L += static_cast<size_t>(g.length);
  std::vector<float> x(static_cast<size_t>(s.batch) * L * width);
  for (size_t b = 0; b < static_cast<size_t>(s.batch); ++b) {
    size_t row = 0;
    for (auto& g : segs)
      for (int64_t i = 0; i < g.length; ++i, ++row)
        for (size_t e = 0; e < width; ++e)
          x[(b * L + row) * width + e] = val(which, b, static_cast<uint64_t>(g.global_offset + i), e);
  }
  return x;
}

struct Row {
  std::string scheme, ran;
  int64_t seq;
  int kv_heads;
  double time_us, compute_us, comm_us, step_compute_us, step_comm_us, max_err, predicted_us, speedup;
  uint64_t bytes_fwd, bytes_bwd;
};

void run(Communicator& comm, const Config& cfg, std::vector<Row>& rows_out, std::string& model_json) {
  const int N = comm.size(), r = comm.rank();
  const SpNodeLayout nodes = spNodeLayout(comm);
  Config c = cfg;
  if (!c.schemes_given && nodes.nodes > 1 && nodes.ranks_per_node > 1)
    c.schemes.insert(c.schemes.end() - 1, {"ulysses+tokenring", "ulysses+ring-kv"});
  const SeqLayout layout = c.layout == "zigzag" ? SeqLayout::Zigzag : SeqLayout::Contiguous;
  CostModel model;
  bool loaded = false;
  if (!c.calibration.empty()) {
    std::ifstream f(c.calibration);
    if (f) {
      std::stringstream ss;
      ss << f.rdbuf();
      model = CostModel::fromJson(ss.str());
      loaded = true;
    }
  }
  if (!loaded) model = CostModel::calibrate(comm, c.topology);
  if (!c.topology.empty()) model.params().topology = c.topology == "star" ? Topology::Star : Topology::Mesh;
  model_json = model.toJson();
  if (r == 0) {
    const auto& p = model.params();
    fmt::print("# flashring bench attention  transport={} ranks={} batch={} heads={} head_dim={} causal={} layout={}\n",
               comm.transport(), N, c.batch, c.heads, c.head_dim, c.causal, c.layout);
    fmt::print("# cost model{}: link {:.1f} MB/s, latency {:.0f} us, topology {}, kernel {:.1f} GFLOP/s\n",
               loaded ? " (loaded)" : " (calibrated)", p.bandwidth_Bps / 1e6, p.latency_s * 1e6,
               topologyName(p.topology), p.kernel_flops / 1e9);
    if (nodes.nodes > 1)
      fmt::print("# nodes {}x{}: inter-node link {:.1f} MB/s, latency {:.0f} us, {}\n", nodes.nodes,
                 nodes.ranks_per_node, p.interBandwidth() / 1e6, p.interLatency() * 1e6,
                 p.inter_shared ? "one uplink per node" : "one per rank");
    fmt::print("# time: median of the slowest rank; step = mean per ring step (compute | wait); bytes: busiest rank\n");
    fmt::print("{:>7} {:>4} {:<17} {:>11} {:>10} {:>10} {:>12} {:>12} {:>10} {:>11} {:>8}\n", "seq", "kvh", "scheme",
               "time_us", "step_comp", "step_wait", "bytes_fwd", "bytes_bwd", "max_err", "predict_us", "vs_rkv");
    std::fflush(stdout);
  }
  std::vector<int> kvs = c.kv_heads.empty() ? std::vector<int>{c.heads} : c.kv_heads;
  for (int64_t S : c.seqs) {
    for (int kvh : kvs) {
      const SpShape shape{c.batch, S, c.heads, kvh, c.head_dim};
      const auto segs = localSegments(S, N, r, layout);
      const size_t qw = static_cast<size_t>(c.heads * c.head_dim), kw = static_cast<size_t>(kvh * c.head_dim);
      const auto q = makeShard(0, shape, qw, segs), k = makeShard(1, shape, kw, segs),
                 v = makeShard(2, shape, kw, segs);
      std::vector<float> out(q.size());
      // Reference: my query rows against the whole sequence, on this rank alone.
      std::vector<float> ref;
      if (c.check) {
        const std::vector<Segment> all{{0, S}};
        const auto kf = makeShard(1, shape, kw, all), vf = makeShard(2, shape, kw, all);
        ref.assign(q.size(), 0.f);
        std::vector<float> lse(q.size() / static_cast<size_t>(c.head_dim));
        const size_t L = q.size() / qw / static_cast<size_t>(c.batch);
        for (size_t b = 0; b < static_cast<size_t>(c.batch); ++b) {
          size_t row = 0;
          for (auto& g : segs) {
            if (g.length == 0) continue;
            BlockAttentionOptions bo;
            bo.causal = c.causal;
            bo.q_offset = g.global_offset;
            AttentionShape as{1, static_cast<int>(g.length), static_cast<int>(S), c.heads, kvh, c.head_dim};
            blockAttention(q.data() + (b * L + row) * qw, kf.data() + b * static_cast<size_t>(S) * kw,
                           vf.data() + b * static_cast<size_t>(S) * kw, as, bo, ref.data() + (b * L + row) * qw,
                           lse.data() + (b * L + row) * static_cast<size_t>(c.heads));
            row += static_cast<size_t>(g.length);
          }
        }
      }
      std::vector<Row> rows;
      std::vector<std::vector<double>> times(c.schemes.size());
      std::vector<SpAttentionStats> last(c.schemes.size());
      for (int it = 0; it < c.warmup + c.iters; ++it) {
        for (size_t si = 0; si < c.schemes.size(); ++si) {
          SpAttentionOptions o;
          o.scheme = spSchemeFromName(c.schemes[si]);
          o.layout = layout;
          o.causal = c.causal;
          o.model = &model;
          SpAttentionStats st;
          barrier(comm);
          const auto t0 = Clock::now();
          spAttention(comm, q.data(), k.data(), v.data(), shape, o, out.data(), &st);
          const double t = allreduceMax(comm, std::chrono::duration<double>(Clock::now() - t0).count());
          if (it >= c.warmup) times[si].push_back(t);
          last[si] = st;
          if (it == c.warmup + c.iters - 1) {
            double e = 0;
            if (c.check)
              for (size_t i = 0; i < out.size(); ++i)
                e = std::max(e, std::isfinite(out[i]) ? std::fabs(static_cast<double>(out[i]) - ref[i]) : INFINITY);
            Row row{};
            row.scheme = c.schemes[si];
            row.ran = spSchemeName(st.scheme);
            row.seq = S;
            row.kv_heads = kvh;
            row.max_err = c.check ? allreduceMax(comm, e) : -1;
            row.compute_us = allreduceMax(comm, st.compute_s) * 1e6;
            row.comm_us = allreduceMax(comm, st.comm_s) * 1e6;
            const double steps = st.step_compute_s.empty() ? 1.0 : static_cast<double>(st.step_compute_s.size());
            row.step_compute_us = row.compute_us / steps;
            row.step_comm_us = row.comm_us / steps;
            row.bytes_fwd = static_cast<uint64_t>(allreduceMax(comm, static_cast<double>(st.bytes_fwd)));
            row.bytes_bwd = static_cast<uint64_t>(allreduceMax(comm, static_cast<double>(st.bytes_bwd)));
            row.predicted_us = st.predicted_s * 1e6;
            rows.push_back(row);
          }
        }
      }
      if (r != 0) continue;
      double rkv = 0, best = 1e300;
      std::string best_name;
      for (size_t si = 0; si < rows.size(); ++si) {
        rows[si].time_us = median(times[si]) * 1e6;
        if (rows[si].scheme == "ring-kv") rkv = rows[si].time_us;
        if (rows[si].scheme != "auto" && rows[si].time_us < best) best = rows[si].time_us, best_name = rows[si].scheme;
      }
      for (auto& row : rows) {
        row.speedup = rkv > 0 ? rkv / row.time_us : 0;
        const std::string name = row.scheme == "auto" ? "auto:" + row.ran : row.scheme;
        fmt::print("{:>7} {:>4} {:<17} {:>11.0f} {:>10.0f} {:>10.0f} {:>12} {:>12} {:>10.2e} {:>11.0f} {:>7.2f}x\n",
                   row.seq, row.kv_heads, name, row.time_us, row.step_compute_us, row.step_comm_us, row.bytes_fwd,
                   row.bytes_bwd, row.max_err, row.predicted_us, row.speedup);
        if (row.scheme == "auto")
          fmt::print("{:>7} {:>4} auto chose {}; best fixed {} at {:.0f} us; auto/best = {:.3f}\n", "", "", row.ran,
                     best_name, best, row.time_us / best);
        rows_out.push_back(row);
      }
      std::fflush(stdout);
    }
  }
}

}  // namespace

void addBenchAttention(CLI::App& bench) {
  auto cfg = std::make_shared<Config>();
  auto* app =
      bench.add_subcommand("attention", "compare sequence-parallel attention schemes (TokenRing and baselines)");
  app->add_option("--seq", cfg->seqs, "global sequence length(s), comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  app->add_option("--heads", cfg->heads, "query heads")->check(CLI::PositiveNumber)->capture_default_str();
  app->add_option("--kv-heads", cfg->kv_heads, "key/value heads, comma-separated for a GQA sweep (default: = heads)")
      ->delimiter(',');
  app->add_option("--head-dim", cfg->head_dim, "head dimension")->check(CLI::PositiveNumber)->capture_default_str();
  app->add_option("--batch", cfg->batch, "batch size")->check(CLI::PositiveNumber)->capture_default_str();
  app->add_flag("--causal,!--no-causal", cfg->causal, "causal mask (default) or full attention");
  app->add_option("--layout", cfg->layout, "sequence sharding: zigzag or contiguous")
      ->check(CLI::IsMember({"zigzag", "contiguous"}))
      ->capture_default_str();
  app->add_option("--schemes", cfg->schemes,
                  "tokenring, ring-kv, ulysses, allgather-kv, ulysses+tokenring, ulysses+ring-kv, auto (default: all "
                  "but the two-level ones, which join on several nodes: --ranks-per-node, or MPI across hosts)")
      ->delimiter(',');
  app->add_option("--topology", cfg->topology, "topology the cost model assumes: star or mesh (default: measured)")
      ->check(CLI::IsMember({"star", "mesh"}));
  app->add_option("--calibration", cfg->calibration,
                  "cost-model cache: read it if the file exists, else calibrate and write it");
  app->add_option("-n,--iters", cfg->iters, "timed iterations (median reported)")
      ->check(CLI::Range(5, 10000))
      ->capture_default_str();
  app->add_option("-w,--warmup", cfg->warmup, "untimed iterations first")
      ->check(CLI::Range(0, 100))
      ->capture_default_str();
  app->add_flag("--check,!--no-check", cfg->check, "compare with single-rank attention (default on)");
  app->add_option("--json", cfg->json, "write one JSON object per (scheme, shape) row");
  cfg->transport.add(*app);
  app->callback([cfg, app] {
    Config& c = *cfg;
    c.schemes_given = app->count("--schemes") > 0;
    for (const auto& s : c.schemes) (void)spSchemeFromName(s);
    for (int kv : c.kv_heads)
      if (kv <= 0 || c.heads % kv != 0)
        throw InvalidArgument(fmt::format("--kv-heads {} must divide --heads {}", kv, c.heads));
    for (auto s : c.seqs)
      if (s <= 0) throw InvalidArgument(fmt::format("--seq {} must be positive", s));
    std::vector<Row> rows;
    std::mutex mu;
    int ranks = 0;
    SpNodeLayout layout;
    std::string transport, model;
    runOnTransport(c.transport, [&](Communicator& comm) {
      std::vector<Row> mine;
      std::string mj;
      run(comm, c, mine, mj);
      if (comm.rank() == 0) {
        std::lock_guard<std::mutex> lk(mu);
        rows = std::move(mine);
        ranks = comm.size();
        layout = spNodeLayout(comm);
        transport = comm.transport();
        model = mj;
      }
    });
    if (!c.calibration.empty() && !model.empty()) {
      std::ifstream probe(c.calibration);
      if (!probe) std::ofstream(c.calibration) << model << "\n";
    }
    if (!c.json.empty() && !rows.empty()) {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& r : rows)
        out.push_back({{"scheme", r.scheme},
                       {"ran", r.ran},
                       {"seq", r.seq},
                       {"heads", c.heads},
                       {"kv_heads", r.kv_heads},
                       {"head_dim", c.head_dim},
                       {"batch", c.batch},
                       {"ranks", ranks},
                       {"nodes", layout.nodes},
                       {"ranks_per_node", layout.ranks_per_node},
                       {"causal", c.causal},
                       {"layout", c.layout},
                       {"transport", transport},
                       {"time_us", r.time_us},
                       {"compute_us", r.compute_us},
                       {"comm_us", r.comm_us},
                       {"step_compute_us", r.step_compute_us},
                       {"step_comm_us", r.step_comm_us},
                       {"bytes_fwd", r.bytes_fwd},
                       {"bytes_bwd", r.bytes_bwd},
                       {"max_abs_err", r.max_err},
                       {"predicted_us", r.predicted_us},
                       {"speedup_vs_ring_kv", r.speedup},
                       {"cost_model", nlohmann::json::parse(model)},
                       {"link", std::getenv("FLASHRING_LINK") ? std::getenv("FLASHRING_LINK") : ""}});
      std::ofstream f(c.json);
      if (!f) throw InvalidArgument(fmt::format("cannot write --json {}", c.json));
      f << out.dump(2) << "\n";
    }
  });
}

}  // namespace flashring::cli
