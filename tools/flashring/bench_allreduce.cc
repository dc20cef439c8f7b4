// flashring bench allreduce: nccl-tests-style sweep of the all-reduce algorithms, baseline and ours in
// the same run, alternating, with the error of every row against the exact (fp64) sum. One-shot rows say how
// much faster they are than the two-step with the same codec (their "twin") in the same run.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "cli.h"
#include "flashring/allreduce.h"
#include "flashring/config.h"
#if FLASHRING_WITH_CUDA
#include "flashring/cuda/context.h"
#include "flashring/cuda/runtime.h"
#include "flashring/cuda/thread_world.h"
#endif
#include "flashring/comm.h"
#include "flashring/costmodel.h"

namespace flashring::cli {

namespace {

struct Config {
  std::string min_bytes = "1K", max_bytes = "64M";
  double factor = 2;
  std::vector<size_t> counts;  // instead of the -b/-e/-f sweep
  std::vector<std::string> algos;
  bool oneshot = false;  // add each two-step algorithm's one-shot twin
  bool calibrate = false;
  std::string calibration, topology;
  std::string baseline;
  int iters = 10, warmup = 2;
  int group_size = 128;
  bool symmetric = false;
  int spikes = 0;
  bool rotate = false, clip = false;
  size_t chunk_elems = size_t{1} << 20;
  std::string json;
  uint64_t seed = 1;
  std::string device = "cpu";  // cpu, or cuda: buffers in GPU memory, thread ranks sharing one GPU
  TransportOptions transport;
};

// Roughly normal activations (Irwin-Hall of 4 uniforms), with rare 20-60x outliers.
inline float inputValue(uint64_t seed, int rank, size_t i) {
  const uint64_t h = mix(seed * 0x100000001b3ull ^ (static_cast<uint64_t>(rank) << 40) ^ i);
  const float u =
      static_cast<float>((h & 0xffff) + ((h >> 16) & 0xffff) + ((h >> 32) & 0xffff) + ((h >> 48) & 0xffff)) / 65536.f;
  float v = (u - 2.f) * 1.7320508f;
  if ((mix(h) & 1023) == 0) v *= 20.f + static_cast<float>(mix(h ^ 7) % 40);
  return v;
}

struct Row {
  std::string algo, ran, twin;
  double vs_twin = 0;  // twin's time / this row's time (one-shot rows whose twin ran)
  size_t bytes = 0;
  double time_us = 0, algbw = 0, busbw = 0, max_abs_err = 0, rel_err = 0, speedup = 0;
  uint64_t wire_bytes = 0;
  bool replicas_identical = true;
};

std::vector<size_t> sizes(const Config& c) {
  if (!c.counts.empty()) {
    std::vector<size_t> out;
    for (size_t n : c.counts) out.push_back(n * 4);
    return out;
  }
  const size_t lo = parseSize(c.min_bytes), hi = parseSize(c.max_bytes);
  if (lo > hi) throw InvalidArgument(fmt::format("-b {} is larger than -e {}", c.min_bytes, c.max_bytes));
  if (c.factor <= 1) throw InvalidArgument(fmt::format("-f must be > 1, got {}", c.factor));
  std::vector<size_t> out;
  for (double s = static_cast<double>(std::max<size_t>(lo, 4)); s <= static_cast<double>(hi) * 1.000001;
       s *= c.factor) {
    out.push_back(static_cast<size_t>(s) / 4 * 4);
  }
  return out;
}

uint64_t fnv(const float* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  const auto* b = reinterpret_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n * 4; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

// The one-shot with the codec of a two-step algorithm (twostep-fp32/bf16, flash-intX[-intY]: the reduce-scatter's),
// or "" when it has none.
std::string oneShotTwin(const std::string& a) {
  if (a == "twostep-fp32") return "oneshot-fp32";
  if (a == "twostep-bf16") return "oneshot-bf16";
  if (a.rfind("flash-int", 0) == 0) return "oneshot-int" + a.substr(9, 1);
  return "";
}

// The two-step a one-shot row is compared with: its codec's exact or flash-intX two-step.
std::string twoStepTwin(const std::string& a) {
  if (a == "oneshot-fp32") return "twostep-fp32";
  if (a == "oneshot-bf16") return "twostep-bf16";
  if (a.rfind("oneshot-int", 0) == 0) return "flash-int" + a.substr(11);
  return "";
}

double seconds(Clock::time_point t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); }

bool allOnOneHost(Communicator& comm) {
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  const double h = static_cast<double>(std::hash<std::string>{}(name) >> 11);
  return allreduceMax(comm, h) == allreduceMin(comm, h);
}

// Auto's link model: from the calibration file if it exists, else measured (and written there); the topology
// forced by --topology. Collective.
CostModel linkModel(Communicator& comm, const Config& c, bool& loaded) {
  CostModel model;
  loaded = false;
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
  if (!loaded && !c.calibration.empty() && comm.rank() == 0) {
    std::ofstream f(c.calibration);
    f << model.toJson() << "\n";
  }
  return model;
}

void runBench(Communicator& comm, const Config& cfg, std::vector<Row>& rows_out) {
  const int N = comm.size(), me = comm.rank();
  const bool same_host = allOnOneHost(comm);
  AllreduceLinkModel link;
  bool link_loaded = false;
  if (cfg.calibrate || !cfg.calibration.empty()) {
    const CostModel model = linkModel(comm, cfg, link_loaded);
    link = {model.params().latency_s, model.params().bandwidth_Bps, model.params().topology == Topology::Mesh};
  }
  std::vector<AllreduceOptions> opts;
  AllreduceOptions base;
  base.reduce_scatter.group_size = base.all_gather.group_size = cfg.group_size;
  base.reduce_scatter.symmetric = base.all_gather.symmetric = cfg.symmetric;
  base.reduce_scatter.spikes = base.all_gather.spikes = cfg.spikes;
  base.reduce_scatter.rotate = base.all_gather.rotate = cfg.rotate;
  base.reduce_scatter.clip = base.all_gather.clip = cfg.clip;
  base.chunk_elems = cfg.chunk_elems;
  base.link = link;
  for (const auto& a : cfg.algos) opts.push_back(allreduceOptionsFromName(a, base));
  const auto bl = std::find(cfg.algos.begin(), cfg.algos.end(), cfg.baseline) - cfg.algos.begin();
  // Index of a one-shot row's two-step twin: its codec's two-step, else the first two-step whose twin it is
  // (flash-int4-int8 for oneshot-int4 when flash-int4 does not run).
  std::vector<long> twin(cfg.algos.size(), -1);
  for (size_t a = 0; a < cfg.algos.size(); ++a) {
    auto t = std::find(cfg.algos.begin(), cfg.algos.end(), twoStepTwin(cfg.algos[a]));
    if (t == cfg.algos.end() && cfg.algos[a].rfind("oneshot-", 0) == 0)
      t = std::find_if(cfg.algos.begin(), cfg.algos.end(),
                       [&](const std::string& b) { return oneShotTwin(b) == cfg.algos[a]; });
    if (t != cfg.algos.end()) twin[a] = t - cfg.algos.begin();
  }

  if (me == 0) {
    fmt::print("# flashring bench allreduce  transport={} ranks={} group={}{}{}{}{} iters={} warmup={} baseline={}\n",
               comm.transport(), N, cfg.group_size, cfg.symmetric ? " (symmetric)" : "",
               cfg.spikes > 0 ? fmt::format(" spikes={}", cfg.spikes) : "", cfg.rotate ? " rotate" : "",
               cfg.clip ? " clip" : "", cfg.iters, cfg.warmup, cfg.baseline);
    fmt::print("# time = median over iterations of {}; error vs the exact fp64 sum; speedup = baseline time / time\n",
               same_host ? "first start to last end over all ranks" : "the slowest rank");
    fmt::print("# vs_2step (one-shot rows) = time of the two-step with the same codec / time; auto>X: Auto ran X\n");
    if (link.known())
      fmt::print("# auto's link model{}: latency {:.1f} us, {:.1f} MB/s, topology {}\n",
                 link_loaded ? " (loaded)" : " (calibrated)", link.latency_s * 1e6, link.bandwidth_Bps / 1e6,
                 link.mesh ? "mesh" : "star");
    fmt::print("{:>10} {:>11} {:<16} {:>11} {:>10} {:>10} {:>11} {:>10} {:>12} {:>8} {:>8}\n", "size", "count", "algo",
               "time_us", "algbw_GB/s", "busbw_GB/s", "max_abs_err", "rel_err", "wire_bytes", "speedup", "vs_2step");
    std::fflush(stdout);
  }
  for (size_t bytes : sizes(cfg)) {
    const size_t n = bytes / 4;
    const auto size_t0 = Clock::now();
    std::vector<float> input(n), buf(n);
    for (size_t i = 0; i < n; ++i) input[i] = inputValue(cfg.seed, me, i);
    std::vector<std::vector<double>> times(opts.size());
    std::vector<uint64_t> wire(opts.size());
    std::vector<AllreduceAlgorithm> ran(opts.size());
    std::vector<double> max_err(opts.size()), rel(opts.size());
    std::vector<bool> same(opts.size(), true);
    // Exact sum of the part of the buffer this rank checks (its 1/N share), regenerated from every rank's seed.
    const size_t chk_b = n * static_cast<size_t>(me) / static_cast<size_t>(N),
                 chk_e = n * static_cast<size_t>(me + 1) / static_cast<size_t>(N);
    std::vector<double> exact(chk_e - chk_b, 0.0);
    for (int r = 0; r < N; ++r)
      for (size_t i = chk_b; i < chk_e; ++i) exact[i - chk_b] += inputValue(cfg.seed, r, i);

#if FLASHRING_WITH_CUDA
    std::unique_ptr<cuda::DeviceBuffer> dbuf;
    if (cfg.device == "cuda") dbuf = std::make_unique<cuda::DeviceBuffer>(n * 4);
#endif
    for (int it = 0; it < cfg.warmup + cfg.iters; ++it) {
      for (size_t a = 0; a < opts.size(); ++a) {  // alternate algorithms within each iteration
        std::copy(input.begin(), input.end(), buf.begin());
        AllreduceOptions o = opts[a];
        if (it > 0) o.check_sizes = false;  // checked on the first call; not part of the baseline's timing
#if FLASHRING_WITH_CUDA
        if (dbuf) dbuf->upload(input.data(), n * 4);  // untimed: the buffer starts in GPU memory
#endif
        barrier(comm);
        const auto t0 = Clock::now();
        AllreduceStats st;
#if FLASHRING_WITH_CUDA
        if (dbuf) {
          allreduce(
              comm, TensorView::contiguous(dbuf->data(), DType::F32, {static_cast<int64_t>(n)}, {MemoryKind::Cuda, 0}),
              [&] {
                AllreduceOptions d = o;
                d.exec = cuda::context();
                return d;
              }(),
              &st);
        } else {
          allreduce(comm, buf, o, &st);
        }
#else
        allreduce(comm, buf, o, &st);
#endif
        const auto t1 = Clock::now();
#if FLASHRING_WITH_CUDA
        if (dbuf) dbuf->download(buf.data(), n * 4);  // for the error check
#endif
        // On one host every rank reads the same monotonic clock: time the window from the first rank's
        // start to the last rank's end, so the skew of leaving the barrier cannot hide part of the work.
        // Across hosts, the slowest rank's own duration (nccl-tests' convention).
        const double t = same_host ? allreduceMax(comm, seconds(t1)) - allreduceMin(comm, seconds(t0))
                                   : allreduceMax(comm, std::chrono::duration<double>(t1 - t0).count());
        if (it >= cfg.warmup) times[a].push_back(t);
        if (it == cfg.warmup + cfg.iters - 1) {
          wire[a] = st.wire_bytes;
          ran[a] = st.algorithm;
          double m = 0, num = 0, den = 0;
          for (size_t i = chk_b; i < chk_e; ++i) {
            const double d = static_cast<double>(buf[i]) - exact[i - chk_b];
            if (std::isnan(d)) m = INFINITY;
            m = std::max(m, std::fabs(d));
            num += d * d;
            den += exact[i - chk_b] * exact[i - chk_b];
          }
          max_err[a] = allreduceMax(comm, m);
          num = allreduceSumDouble(comm, num);
          den = allreduceSumDouble(comm, den);
          rel[a] = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
          const double h = static_cast<double>(fnv(buf.data(), n) >> 11);
          same[a] = allreduceMax(comm, h) == allreduceMin(comm, h);
          wire[a] = static_cast<uint64_t>(allreduceMax(comm, static_cast<double>(wire[a])));
        }
      }
    }
    if (me != 0) continue;
    const double base_t = median(times[static_cast<size_t>(bl)]);
    for (size_t a = 0; a < opts.size(); ++a) {
      Row r;
      r.algo = cfg.algos[a];
      r.ran = allreduceAlgorithmName(ran[a]);
      r.bytes = bytes;
      const double t = median(times[a]);
      r.time_us = t * 1e6;
      r.algbw = t > 0 ? static_cast<double>(bytes) / t / 1e9 : 0;
      r.busbw = r.algbw * 2.0 * (N - 1) / N;
      r.max_abs_err = max_err[a];
      r.rel_err = rel[a];
      r.wire_bytes = wire[a];
      r.speedup = t > 0 ? base_t / t : 0;
      r.replicas_identical = same[a];
      if (twin[a] >= 0) {
        r.twin = cfg.algos[static_cast<size_t>(twin[a])];
        r.vs_twin = t > 0 ? median(times[static_cast<size_t>(twin[a])]) / t : 0;
      }
      const std::string label = r.algo == "auto" ? "auto>" + r.ran : r.algo;
      fmt::print("{:>10} {:>11} {:<16} {:>11.1f} {:>10.3f} {:>10.3f} {:>11.3e} {:>10.3e} {:>12} {:>7.2f}x {:>8}{}\n",
                 formatSize(bytes), n, label, r.time_us, r.algbw, r.busbw, r.max_abs_err, r.rel_err, r.wire_bytes,
                 r.speedup, r.twin.empty() ? "" : fmt::format("{:.2f}x", r.vs_twin),
                 r.replicas_identical ? "" : "  REPLICAS DIFFER");
      rows_out.push_back(r);
    }
    std::fflush(stdout);
    const double secs = std::chrono::duration<double>(Clock::now() - size_t0).count();
    if (secs > 2) std::fprintf(stderr, "progress: %s done in %.1f s\n", formatSize(bytes).c_str(), secs);
  }
}

}  // namespace

void addBenchAllreduce(CLI::App& bench) {
  auto cfg = std::make_shared<Config>();
  auto* app = bench.add_subcommand("allreduce", "sweep all-reduce algorithms over message sizes (nccl-tests style)");
  app->add_option("-b,--minbytes", cfg->min_bytes, "smallest message, bytes of fp32 (1K, 64M, ...)")
      ->capture_default_str();
  app->add_option("-e,--maxbytes", cfg->max_bytes, "largest message")->capture_default_str();
  app->add_option("-f,--stepfactor", cfg->factor, "multiply the size by this between rows")->capture_default_str();
  app->add_option("--counts", cfg->counts,
                  "comma-separated fp32 element counts to run instead of the -b/-e/-f sweep (e.g. 576,4096: decode)")
      ->delimiter(',');
  app->add_option(
         "--algos", cfg->algos,
         "comma-separated algorithms: ring-fp32, ring-bf16, twostep-fp32, twostep-bf16, mpi, auto, flash-int8, "
         "flash-int6, flash-int5, flash-int4, flash-int4-int8, flash-int8-int4, oneshot-fp32, oneshot-bf16, "
         "oneshot-int8, oneshot-int6, oneshot-int5, oneshot-int4, hier-<intra>-<inter> and "
         "hier-<intra>-oneshot-<inter> (hierarchical over nodes, e.g. hier-bf16-int4; with --ranks-per-node) "
         "(default: all that the transport supports, without the one-shots)")
      ->delimiter(',');
  app->add_flag("--oneshot", cfg->oneshot,
                "run each two-step algorithm's one-shot twin right after it (twostep-fp32 -> oneshot-fp32, "
                "flash-int8 -> oneshot-int8, flash-int4-int8 -> oneshot-int4, ...)");
  app->add_flag("--calibrate", cfg->calibrate,
                "measure the link (CostModel::calibrate) and give auto that model to choose one-shot vs two-step");
  app->add_option("--calibration", cfg->calibration,
                  "cost-model cache for auto (as bench attention's): read it if the file exists, else calibrate and "
                  "write it");
  app->add_option("--topology", cfg->topology, "topology auto's link model assumes: star or mesh (default: measured)")
      ->check(CLI::IsMember({"star", "mesh"}));
  app->add_option("--baseline", cfg->baseline,
                  "algorithm the speedup column divides by (default: twostep-bf16 if run, else the first)");
  app->add_option("-n,--iters", cfg->iters, "timed iterations per size and algorithm (median reported)")
      ->check(CLI::Range(5, 100000))
      ->capture_default_str();
  app->add_option("-w,--warmup", cfg->warmup, "untimed iterations first")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();
  app->add_option("-g,--group-size", cfg->group_size, "quantization group size (multiple of 32 in 32..4096)")
      ->capture_default_str();
  app->add_flag("--symmetric", cfg->symmetric, "symmetric quantization instead of asymmetric (scale + zero)");
  app->add_option("--spikes", cfg->spikes,
                  "values per group the flash codecs keep exactly as fp32 (spike reserving, 0..8; 0 = off)")
      ->capture_default_str();
  app->add_flag("--rotate", cfg->rotate,
                "flash codecs: randomized Hadamard rotation of each group (power-of-two group size)");
  app->add_flag("--clip", cfg->clip, "flash codecs: per-group clipping range of least squared error");
  app->add_option("--chunk-elems", cfg->chunk_elems,
                  "pipeline chunk of the flash algorithms, in elements (0 = one chunk)")
      ->capture_default_str();
  app->add_option("--seed", cfg->seed, "input seed")->capture_default_str();
  app->add_option("--json", cfg->json, "write one JSON object per (algorithm, size) row to this file");
  app->add_option("--device", cfg->device,
                  "where the buffers live: cpu, or cuda (GPU memory; the thread ranks share one GPU; twostep-* and "
                  "flash-* only)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cfg->transport.add(*app);
  app->callback([cfg] {
    Config& c = *cfg;
    const bool mpi = c.transport.transport == "mpi";
    if (c.algos.empty() && c.device == "cuda") {
      c.algos = {"twostep-fp32", "twostep-bf16", "flash-int8", "flash-int4", "flash-int4-int8"};
    } else if (c.algos.empty()) {
      c.algos = {"ring-fp32", "ring-bf16", "twostep-bf16", "flash-int8", "flash-int4", "flash-int4-int8"};
      if (mpi) c.algos.insert(c.algos.begin() + 3, "mpi");
    }
    if (c.oneshot) {
      std::vector<std::string> with;
      for (const auto& a : c.algos) {
        with.push_back(a);
        const std::string t = oneShotTwin(a);
        if (!t.empty() && std::find(c.algos.begin(), c.algos.end(), t) == c.algos.end() &&
            std::find(with.begin(), with.end(), t) == with.end())
          with.push_back(t);
      }
      c.algos = with;
    }
    for (const auto& a : c.algos) {
      (void)allreduceOptionsFromName(a);  // throws, listing the valid names
      if ((a == "mpi" || a == "native") && !mpi)
        throw InvalidArgument(
            fmt::format("algorithm '{}' is MPI_Allreduce and needs --transport mpi (run under mpirun)", a));
    }
    if (c.baseline.empty())
      c.baseline =
          std::find(c.algos.begin(), c.algos.end(), "twostep-bf16") != c.algos.end() ? "twostep-bf16" : c.algos[0];
    if (std::find(c.algos.begin(), c.algos.end(), c.baseline) == c.algos.end())
      throw InvalidArgument(fmt::format("--baseline {} is not among --algos", c.baseline));
    quant::validate({8, c.group_size, c.symmetric, c.spikes, c.rotate, c.clip});
    (void)sizes(c);
    if (c.device == "cuda") {
#if FLASHRING_WITH_CUDA
      if (mpi)
        throw InvalidArgument(
            "--device cuda runs thread ranks sharing one GPU (--transport thread); NCCL ranks are "
            "not wired into the CLI yet");
      for (const auto& a : c.algos)
        if (a.rfind("twostep-", 0) != 0 && a.rfind("flash-", 0) != 0 && a != "auto")
          throw InvalidArgument(
              fmt::format("--device cuda: '{}' does not run on the device yet; use twostep-* or "
                          "flash-* (the pipelined two-step)",
                          a));
      if (cuda::deviceCount() == 0)
        throw DeviceError("--device cuda: no usable CUDA device: " + cuda::unavailableReason());
#else
      throw InvalidArgument("--device cuda: this flashring was built without CUDA (FLASHRING_WITH_CUDA=OFF)");
#endif
    }

    std::vector<Row> rows;
    std::mutex mu;
    int ranks = 0;
    std::string transport;
    auto rank_fn = [&](Communicator& comm) {
      std::vector<Row> mine;
      runBench(comm, c, mine);
      if (comm.rank() == 0) {
        std::lock_guard<std::mutex> lk(mu);
        rows = std::move(mine);
        ranks = comm.size();
        transport = comm.transport();
      }
    };
#if FLASHRING_WITH_CUDA
    if (c.device == "cuda") {
      cuda::runOneGpuRanks(c.transport.ranks, rank_fn, 0,
                           std::chrono::milliseconds(c.transport.timeout_ms > 0 ? c.transport.timeout_ms : 0));
    } else {
      runOnTransport(c.transport, rank_fn);
    }
#else
    runOnTransport(c.transport, rank_fn);
#endif
    if (!c.json.empty() && !rows.empty()) {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& r : rows)
        out.push_back({{"algo", r.algo},
                       {"bytes", r.bytes},
                       {"count", r.bytes / 4},
                       {"ranks", ranks},
                       {"transport", transport},
                       {"group_size", c.group_size},
                       {"spikes", c.spikes},
                       {"rotate", c.rotate},
                       {"clip", c.clip},
                       {"time_us", r.time_us},
                       {"algbw_gbps", r.algbw},
                       {"busbw_gbps", r.busbw},
                       {"max_abs_err", r.max_abs_err},
                       {"rel_err", r.rel_err},
                       {"wire_bytes", r.wire_bytes},
                       {"baseline", c.baseline},
                       {"speedup", r.speedup},
                       {"ran", r.ran},
                       {"twin", r.twin},
                       {"speedup_vs_twin", r.vs_twin},
                       {"replicas_identical", r.replicas_identical},
                       {"device", c.device},
                       {"link", std::getenv("FLASHRING_LINK") ? std::getenv("FLASHRING_LINK") : ""}});
      std::ofstream f(c.json);
      if (!f) throw InvalidArgument(fmt::format("cannot write --json {}", c.json));
      f << out.dump(2) << "\n";
    }
  });
}

}  // namespace flashring::cli
