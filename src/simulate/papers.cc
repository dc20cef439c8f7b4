// The published figures issue 13 lists, each beside the model's prediction on the built-in profile of that
// testbed (profiles.cc, never adjusted per figure). For a miss the note names the assumption it contradicts and
// implied_link_scale says how far the profile's link bandwidth would have to move to match (a diagnostic, not a
// correction).
//
// What the model says, and why (run `flashring simulate --paper` for the numbers):
//  - TokenRing, 4x A10 PCIe: the figures imply ~13 GB/s per direction on that PCIe tree (98 MB of K+V per ring
//    step in 7.6 ms, 49 MB of Q in 3.5 ms), about half the profile's 80% of PCIe Gen4 x16: the absolute step
//    times miss, while their ratio (ring step / Q-only step, bytes 2:1) is reproduced. The mixed step (Q forward
//    and results back, 4.6 ms) contradicts the star assumption that a rank's one uplink carries both: it took
//    1.3x a Q-only step, not 2x, so the two directions did not share one bottleneck (algorithms.md's guess: they
//    crossed different links of the PIX/PXB tree).
//  - Flash Communication, LLaMA-3-70B TP4 prefill: the communication shares (65% on L40, ~20% on A100) and the
//    2x TTFT on L40 need links 2-3x slower than 80% of datasheet (or compute faster than 70% of peak): the
//    paper's all-reduce baseline ran well below the link rates the profiles assume. The INT4 all-reduce speed-up
//    (> 3x) is a ratio of two transfers over the same link and is reproduced.
//  - QuickReduce, MI300X TP2, 512 MB: reproduced on the datasheet xGMI link at 80%.
#include <fmt/format.h>

#include <cmath>
#include <functional>

#include "flashring/comm_setting.h"
#include "flashring/simulate.h"

namespace flashring::sim {

namespace {

using Eval = std::function<double(const Profile&)>;

// The link scale s in [1/64, 64] with f(withLinkScale(p, s)) = target (bisection in log s; 0 if none).
double impliedScale(const Eval& f, const Profile& p, double target) {
  double lo = std::log(1.0 / 64), hi = std::log(64.0);
  const double flo = f(withLinkScale(p, std::exp(lo))) - target, fhi = f(withLinkScale(p, std::exp(hi))) - target;
  if (!(flo * fhi <= 0)) return 0;
  for (int i = 0; i < 60; ++i) {
    const double mid = 0.5 * (lo + hi), fm = f(withLinkScale(p, std::exp(mid))) - target;
    if ((fm <= 0) == (flo <= 0))
      lo = mid;
    else
      hi = mid;
  }
  return std::exp(0.5 * (lo + hi));
}

// TokenRing's testbed shape: MHA 32 heads x 128, S = 24000 over 4 ranks, fp16.
struct RingStep {
  double q, kv, res;
};
RingStep tokenRingBytes(const Profile& p) {
  const double s = 24000.0 / 4, H = 32, d = 128, b = p.act_bytes;
  return {s * H * d * b, 2 * s * H * d * b, s * H * (d * b + 4)};
}
// Transfer time of one step (CostModel's step model: latency + bytes / bandwidth; TokenRing's forward and return
// share the uplink on a star).
double ringStep(const Profile& p) { return tokenRingBytes(p).kv / p.intra.bandwidthBps() + p.intra.latency_s; }
double qStep(const Profile& p) { return tokenRingBytes(p).q / p.intra.bandwidthBps() + p.intra.latency_s; }
double mixedStep(const Profile& p) {
  const RingStep b = tokenRingBytes(p);
  const double fwd = b.q / p.intra.bandwidthBps() + p.intra.latency_s,
               back = b.res / p.intra.bandwidthBps() + p.intra.latency_s;
  return p.intra.topology == Topology::Star ? fwd + back : std::max(fwd, back);
}

Workload flashCommWorkload(const std::string& comm) {
  Workload w;
  w.tp = 4;
  w.batch = 8;
  w.prompt = 1024;
  w.decode = 0;
  w.comm = comm;
  return w;
}
double allreduceTime(const Profile& p, size_t count, int ranks, const std::string& comm, int group) {
  const AllreduceCost c = allreduceCost(count, ranks, commAllreduceOptions(comm, group, 0), p);
  return c.comm_s + c.codec_s;
}

struct Spec {
  std::string name, source, setup, unit;
  double published;
  std::string profile;
  Eval eval;
  std::string if_miss, if_hit;
};

}  // namespace

std::vector<PaperFigure> paperFigures() {
  const std::string tr = "TokenRing (arXiv 2412.20501), token-ring README: 4x A10 PCIe, MHA 32x128, S=24000, fp16";
  const std::string fc = "Flash Communication (arXiv 2412.04964): LLaMA-3-70B prefill, TP4, batch 8, 1024 tokens";
  const std::string qr = "QuickReduce (ROCm / vLLM): MI300X, TP2, 512 MB all-reduce";
  const LlamaConfig l3 = builtinModel("llama-3-70b");
  const size_t fc_count = size_t{8} * 1024 * 8192;  // batch 8 x 1024 tokens x n_embd
  const size_t qr_count = size_t{256} << 20;        // 512 MB of 16-bit values
  const std::string pcie_bw =
      "contradicts the PCIe link assumption (80% of Gen4 x16 = 25.6 GB/s per direction): the figure implies about "
      "half that on this PCIe tree";
  const std::string flash_bw =
      "contradicts the link-versus-compute balance (links at 80% of datasheet, GEMMs at 70% of peak): the paper's "
      "bf16 all-reduce ran 2-3x slower relative to its GEMMs than these assumptions give";
  const double int4_ar = allreduceTime(profileByName("l40x4-pcie"), fc_count, 4, "bf16", 128) /
                         allreduceTime(profileByName("l40x4-pcie"), fc_count, 4, "int4", 128);
  const std::vector<Spec> specs = {
      {"tokenring-ring-step", tr, "ring-KV: one K+V shard (98 MB) per step", "ms", 7.6, "a10x4-pcie",
       [](const Profile& p) { return ringStep(p) * 1e3; }, pcie_bw, "transfer per step on the PCIe star"},
      {"tokenring-q-step", tr, "TokenRing Q-only step: one Q shard (49 MB)", "ms", 3.5, "a10x4-pcie",
       [](const Profile& p) { return qStep(p) * 1e3; }, pcie_bw, "transfer per step on the PCIe star"},
      {"tokenring-mixed-step", tr, "TokenRing step with results returning: Q + (out, lse)", "ms", 4.6, "a10x4-pcie",
       [](const Profile& p) { return mixedStep(p) * 1e3; }, pcie_bw,
       "within 25% only because two errors cancel: the link is 2x too fast and the star sums both directions "
       "(see tokenring-mixed-over-q)"},
      {"tokenring-ring-over-q", tr, "ring-KV step / TokenRing Q-only step", "x", 7.6 / 3.5, "a10x4-pcie",
       [](const Profile& p) { return ringStep(p) / qStep(p); }, "contradicts the bytes-over-bandwidth step model",
       "the step times scale with the bytes (2:1 under MHA)"},
      {"tokenring-mixed-over-q", tr, "TokenRing mixed step / Q-only step", "x", 4.6 / 3.5, "a10x4-pcie",
       [](const Profile& p) { return mixedStep(p) / qStep(p); },
       "contradicts the star assumption (one uplink per rank carries Q forward and results back): measured 1.3x, "
       "not 2x, so the two directions crossed different bottleneck links of the PCIe tree",
       "forward and return share the uplink"},
      {"flashcomm-l40-comm-share", fc, "bf16 all-reduces / prefill on l40x4-pcie", "%", 65, "l40x4-pcie",
       [&](const Profile& p) {
         const Prediction r = predict(l3, p, flashCommWorkload("bf16"));
         return 100 * (r.comm_s + r.quant_s) / r.prefill_s;
       },
       flash_bw + " (\"up to\" 65%: the paper's worst case)", "communication share of prefill"},
      {"flashcomm-a100-comm-share", fc, "bf16 all-reduces / prefill on 4 of a100x8-nvswitch", "%", 20,
       "a100x8-nvswitch",
       [&](const Profile& p) {
         const Prediction r = predict(l3, p, flashCommWorkload("bf16"));
         return 100 * (r.comm_s + r.quant_s) / r.prefill_s;
       },
       flash_bw, "communication share of prefill"},
      {"flashcomm-l40-int4-allreduce", fc, "all-reduce of 64 Mi values, twostep-bf16 / flash-int4 g128 (paper: >3x)",
       "x", 3.0, "l40x4-pcie",
       [&](const Profile& p) {
         return allreduceTime(p, fc_count, 4, "bf16", 128) / allreduceTime(p, fc_count, 4, "int4", 128);
       },
       "contradicts the codec cost (memory traffic at 80% of bandwidth, not overlapped with the transfer)",
       "the byte ratio (16 / 4.25 bits) less the codec passes"},
      {"flashcomm-l40-int4-ttft", fc, "TTFT bf16 / TTFT int4 on l40x4-pcie", "x", 2.0, "l40x4-pcie",
       [&](const Profile& p) {
         return predict(l3, p, flashCommWorkload("bf16")).prefill_s /
                predict(l3, p, flashCommWorkload("int4")).prefill_s;
       },
       flash_bw + fmt::format(": at the paper's 65% share the model's own INT4 all-reduce speed-up ({:.2f}x) gives "
                              "{:.2f}x",
                              int4_ar, 1 / (0.35 + 0.65 / int4_ar)),
       "TTFT speed-up from the all-reduces alone"},
      {"quickreduce-bf16", qr, "twostep-bf16 of 256 Mi values on mi300xx8-xgmi (one xGMI link)", "ms", 11.13,
       "mi300xx8-xgmi", [&](const Profile& p) { return allreduceTime(p, qr_count, 2, "bf16", 128) * 1e3; },
       "contradicts the xGMI link assumption (80% of 64 GB/s per direction)", "the exact baseline"},
      {"quickreduce-int4", qr, "flash-int4 g32 (QuickReduce's 32-value groups) of 256 Mi values", "ms", 3.49,
       "mi300xx8-xgmi", [&](const Profile& p) { return allreduceTime(p, qr_count, 2, "int4", 32) * 1e3; },
       "contradicts the xGMI link or the codec cost assumption", "INT4 bytes plus the codec passes"},
      {"quickreduce-int4-speedup", qr, "bf16 / int4 g32", "x", 11.13 / 3.49, "mi300xx8-xgmi",
       [&](const Profile& p) {
         return allreduceTime(p, qr_count, 2, "bf16", 128) / allreduceTime(p, qr_count, 2, "int4", 32);
       },
       "contradicts the codec cost assumption", "the speed-up of INT4 over bf16"},
  };
  std::vector<PaperFigure> out;
  for (const Spec& s : specs) {
    const Profile& p = profileByName(s.profile);
    PaperFigure f;
    f.name = s.name;
    f.source = s.source;
    f.setup = s.setup;
    f.unit = s.unit;
    f.published = s.published;
    f.predicted = s.eval(p);
    f.note = f.reproduced() ? s.if_hit : s.if_miss;
    if (!f.reproduced()) f.implied_link_scale = impliedScale(s.eval, p, s.published);
    out.push_back(f);
  }
  return out;
}

}  // namespace flashring::sim
