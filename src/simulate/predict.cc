// The time model of `flashring simulate` (simulate.h states what it counts and what it leaves out).
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "flashring/comm_setting.h"
#include "flashring/error.h"
#include "flashring/quant.h"
#include "flashring/simulate.h"

namespace flashring::sim {

namespace {

constexpr std::array<SpScheme, 4> kSchemes = {SpScheme::TokenRing, SpScheme::RingKV, SpScheme::Ulysses,
                                              SpScheme::AllGatherKV};

// What allreduce() runs for these options (allreduce.cc resolves Auto the same way: the algorithm from
// allreduceAutoChoice, bf16 inside the nodes and the reduce_scatter codec between them when hierarchical, fp32
// payloads for its exact paths).
AllreduceOptions resolved(const AllreduceOptions& o, AllreduceAlgorithm a) {
  if (o.algorithm != AllreduceAlgorithm::Auto) return o;
  AllreduceOptions r = o;
  r.algorithm = a;
  r.payload = Payload::F32;
  r.oneshot_quantized = false;
  if (a == AllreduceAlgorithm::Hierarchical) {
    r.hier.intra = StageCodec{0, Payload::BF16};
    r.hier.inter = StageCodec{o.reduce_scatter.bits, Payload::F32};
    r.hier.inter_oneshot = false;
  }
  return r;
}

std::string payloadName(Payload p) { return p == Payload::BF16 ? "bf16" : "fp32"; }
std::string stageName(const StageCodec& s) { return s.bits ? fmt::format("int{}", s.bits) : payloadName(s.payload); }

std::string algorithmName(const AllreduceOptions& r) {
  switch (r.algorithm) {
    case AllreduceAlgorithm::Ring:
      return fmt::format("ring-{}", payloadName(r.payload));
    case AllreduceAlgorithm::TwoStep:
      return fmt::format("twostep-{}", payloadName(r.payload));
    case AllreduceAlgorithm::Native:
      return "mpi";
    case AllreduceAlgorithm::OneShot:
      return r.oneshot_quantized ? fmt::format("oneshot-int{}", r.reduce_scatter.bits)
                                 : fmt::format("oneshot-{}", payloadName(r.payload));
    case AllreduceAlgorithm::Quantized:
      return r.reduce_scatter.bits == r.all_gather.bits
                 ? fmt::format("flash-int{}", r.reduce_scatter.bits)
                 : fmt::format("flash-int{}-int{}", r.reduce_scatter.bits, r.all_gather.bits);
    case AllreduceAlgorithm::Hierarchical:
      return fmt::format("hier-{}-{}{}", stageName(r.hier.intra), r.hier.inter_oneshot ? "oneshot-" : "",
                         stageName(r.hier.inter));
    case AllreduceAlgorithm::Auto:
      break;
  }
  return "auto";
}

// Encoded bytes per value of a codec (large runs: metadata and spikes included).
double perValue(const quant::Config& c) {
  const size_t n = size_t{1} << 20;
  return static_cast<double>(quant::encodedBytes(n, c)) / static_cast<double>(n);
}
double perValue(const StageCodec& s, const quant::Config& base) {
  if (s.bits == 0) return s.payload == Payload::BF16 ? 2 : 4;
  quant::Config c = base;
  c.bits = s.bits;
  return perValue(c);
}

// Memory traffic of a two-step all-reduce's codec work on one rank: encode the buffer (read a, write e1 per
// value), decode-sum the N received slices and re-encode the owned one (read e1 per value, write e2 per owned
// value), decode the gathered buffer (read e2, write a).
double twoStepTraffic(double M, double N, double a, double e1, double e2) {
  return M * (2 * a + 2 * e1 + e2) + M * e2 / N;
}

// Seconds of a two-step all-reduce's codec work with reduce-scatter codec (e1 bytes per value, rate r1) and
// all-gather codec (e2, r2), the traffic of twoStepTraffic split by codec: encode the buffer and decode-sum the
// received slices in the first (M (a + 2 e1)); re-encode the owned slice and decode the gathered buffer in the
// second (M (a + e2) + M e2 / N).
double twoStepCodecSeconds(double M, double N, double a, double e1, double r1, double e2, double r2) {
  return M * (a + 2 * e1) / r1 + (M * (a + e2) + M * e2 / N) / r2;
}

// Link time of `bytes` one rank sends to `peers` peers at once: a mesh gives each peer its own link.
double transfer(double bytes, const LinkSpec& l, int peers) {
  const double links = l.topology == Topology::Mesh ? std::max(1, peers) : 1;
  return l.seconds(bytes / links);
}

}  // namespace

AllreduceCost allreduceCost(size_t count, int N, const AllreduceOptions& options, const Profile& p) {
  AllreduceCost c;
  if (N <= 1 || count == 0) {
    c.name.assign(1, '-');  // not = "-": GCC 12 warns falsely (-Wrestrict) on that assignment
    return c;
  }
  const int K = p.gpus_per_node;
  const bool multi = N > K;
  if (multi && N % K != 0)
    throw InvalidArgument(fmt::format("a TP group of {} ranks over nodes of {} must fill whole nodes", N, K));
  AllreduceOptions o = options;
  o.hier.ranks_per_node = multi ? K : 0;
  const LinkSpec& tl = multi ? p.inter : p.intra;
  o.link = {tl.latency_s, tl.bandwidthBps(), tl.topology == Topology::Mesh};
  c.algorithm = allreduceAutoChoice(count, N, o);
  const AllreduceOptions r = resolved(o, c.algorithm);
  c.name = algorithmName(r);
  c.wire_bytes = allreduceWireBytes(count, N, o);
  c.inter_bytes = multi ? allreduceInterNodeBytes(count, N, o) : 0;
  const double M = static_cast<double>(count), a = p.act_bytes, wire = static_cast<double>(c.wire_bytes),
               inter = static_cast<double>(c.inter_bytes);
  const int nodes = multi ? N / K : 1;
  // Message rounds, peers per round, messages, and the codec work: memory traffic per codec at that codec's rate.
  double codec_s = 0;
  int peers = N - 1;
  const bool exact_fused = p.fused_exact_reduce;
  const size_t chunk = o.chunk_elems == 0 ? count : o.chunk_elems;
  const int chunks = static_cast<int>(std::max<size_t>(1, (count + chunk - 1) / chunk));
  auto rate = [&](const StageCodec& s) { return p.codecRate(s.bits, s.payload); };
  auto payloadCodec = [](Payload pl) { return StageCodec{0, pl}; };
  switch (r.algorithm) {
    case AllreduceAlgorithm::Ring:
      c.rounds = 2 * (N - 1);
      c.messages = 2 * (N - 1);
      peers = 1;
      if (!exact_fused) {
        const StageCodec pc = payloadCodec(r.payload);
        codec_s = twoStepTraffic(M, N, a, r.payload == Payload::BF16 ? 2 : 4, 4) / rate(pc);
      }
      break;
    case AllreduceAlgorithm::TwoStep:
    case AllreduceAlgorithm::Native: {
      c.rounds = 2;
      c.messages = (r.algorithm == AllreduceAlgorithm::TwoStep ? chunks : 1) * 2 * (N - 1);
      const bool bf = r.algorithm == AllreduceAlgorithm::TwoStep && r.payload == Payload::BF16;
      const double e = bf ? 2 : 4;
      if (!exact_fused) codec_s = twoStepTraffic(M, N, a, e, e) / rate(payloadCodec(bf ? Payload::BF16 : Payload::F32));
      break;
    }
    case AllreduceAlgorithm::Quantized: {
      c.rounds = 2;
      c.messages = chunks * 2 * (N - 1);
      const StageCodec s1{r.reduce_scatter.bits, Payload::F32}, s2{r.all_gather.bits, Payload::F32};
      codec_s = twoStepCodecSeconds(M, N, a, perValue(r.reduce_scatter), rate(s1), perValue(r.all_gather), rate(s2));
      break;
    }
    case AllreduceAlgorithm::OneShot: {
      c.rounds = 1;
      c.messages = N - 1;
      const double e = r.oneshot_quantized ? perValue(r.reduce_scatter) : (r.payload == Payload::BF16 ? 2 : 4);
      const StageCodec s =
          r.oneshot_quantized ? StageCodec{r.reduce_scatter.bits, Payload::F32} : payloadCodec(r.payload);
      // Encode the buffer once, decode and sum all N encodings.
      if (r.oneshot_quantized || !exact_fused) codec_s = M * (2 * a + e + N * e) / rate(s);
      break;
    }
    case AllreduceAlgorithm::Hierarchical: {
      const bool intra_q = r.hier.intra.bits > 0, inter_q = r.hier.inter.bits > 0;
      c.rounds = (K > 1 ? 2 : 0) + (nodes > 1 ? (r.hier.inter_oneshot ? 1 : 2) : 0);
      c.messages =
          chunks * ((K > 1 ? 2 * (K - 1) : 0) + (nodes > 1 ? (r.hier.inter_oneshot ? 1 : 2) * (nodes - 1) : 0));
      const double ei = perValue(r.hier.intra, r.reduce_scatter), eo = perValue(r.hier.inter, r.reduce_scatter);
      if (intra_q || !exact_fused) codec_s += twoStepTraffic(M, K, a, ei, ei) / rate(r.hier.intra);
      if (inter_q || !exact_fused)
        codec_s += (r.hier.inter_oneshot ? M / K * (8 + eo + nodes * eo) : twoStepTraffic(M / K, nodes, 4, eo, eo)) /
                   rate(r.hier.inter);
      break;
    }
    case AllreduceAlgorithm::Auto:
      break;
  }
  c.codec_s = codec_s;
  // The link to other nodes as one rank sees it: a node's ranks send through one shared uplink at once.
  LinkSpec up = p.inter;
  if (multi && p.inter_shared) up.peak_Bps /= K, up.burst_bytes /= K, up.peak_bytes /= K;
  if (!multi) {
    c.comm_s = c.rounds * p.intra.latency_s + transfer(wire, p.intra, peers);
  } else if (r.algorithm == AllreduceAlgorithm::Hierarchical) {
    // Stages one after another: intra reduce-scatter and all-gather on the node's links, the inter stage on the
    // rank's own NIC (or its share of the node's).
    const int inter_rounds = r.hier.inter_oneshot ? 1 : 2;
    c.comm_s = (K > 1 ? 2 * p.intra.latency_s + transfer(wire - inter, p.intra, K - 1) : 0) +
               (nodes > 1 ? inter_rounds * p.inter.latency_s + transfer(inter, up, nodes - 1) : 0);
  } else {
    // A flat algorithm sends to every peer at once: the intra-node part on the node's links, the rest through the
    // NIC, concurrently; each round waits for the slower (inter-node) peer.
    c.comm_s =
        c.rounds * p.inter.latency_s + std::max(K > 1 ? transfer(wire - inter, p.intra, peers == 1 ? 1 : K - 1) : 0.0,
                                                transfer(inter, up, peers == 1 ? 1 : N - K));
  }
  c.link_s = c.comm_s;
  // The transport's CPU: per byte sent (as many received), and per message MPI sends by rendezvous (larger than
  // the eager limit: a handshake more per message).
  const bool rendezvous = c.messages > 0 && wire / c.messages > p.eager_bytes;
  c.transport_cpu_s = wire * p.wire_cpu_s_per_byte + (rendezvous ? c.messages * p.msg_cpu_s : 0.0);
  if (p.cores > 0) {
    // CPU machines: the codec and the transport's CPU (P) run on the cores while the links move the bytes (L).
    // The transport's CPU streams with its own bytes; the codec overlaps the links only across `stages`
    // pipelined pieces (the two-step's chunks, the ring's rounds): the first piece's encode and the last one's
    // decode stay exposed: max(L, P) + min(L, codec) / stages. The codec stays quantization time;
    // communication is the rest.
    int stages = 1;
    if (r.algorithm == AllreduceAlgorithm::Ring) stages = c.rounds;
    if (r.algorithm == AllreduceAlgorithm::TwoStep || r.algorithm == AllreduceAlgorithm::Quantized ||
        r.algorithm == AllreduceAlgorithm::Hierarchical)
      stages = chunks;
    c.stages = stages;
    const double L = c.link_s, P = c.codec_s + c.transport_cpu_s;
    c.comm_s = std::max(L, P) + std::min(L, c.codec_s) / stages - c.codec_s;
  } else {
    c.comm_s += c.transport_cpu_s;
  }
  return c;
}

AllreduceOptions workloadAllreduceOptions(const Workload& w, const Profile&, int) {
  return commAllreduceOptions(w.comm, w.group_size, w.spikes, false, false, "comm");
}

CostModelParams costModelParams(const Profile& p, bool inter_nodes) {
  const LinkSpec& l = inter_nodes ? p.inter : p.intra;
  CostModelParams cp;
  const double elem = 4 / p.act_bytes;  // CostModel counts 4-byte elements
  cp.bandwidth_Bps = l.bandwidthBps() * elem;
  cp.latency_s = l.latency_s;
  cp.topology = l.topology;
  cp.kernel_flops = p.peak_flops * p.attn_eff;
  cp.merge_Bps = p.merge_Bps * elem;
  cp.wire_cpu_s_per_byte = p.wire_cpu_s_per_byte / elem;
  if (p.nodes > 1) {
    cp.inter_bandwidth_Bps = p.inter.bandwidthBps() * elem;
    cp.inter_latency_s = p.inter.latency_s;
    cp.inter_shared = p.inter_shared;
  }
  return cp;
}

AttentionCost attentionCost(const SpShape& shape, int ranks, SpScheme scheme, const SpAttentionOptions& options,
                            const Profile& p) {
  if (ranks < 1 || ranks > p.ranks())
    throw InvalidArgument(fmt::format("attention on {} ranks: profile {} has {}", ranks, p.name, p.ranks()));
  const int K = p.gpus_per_node;
  if (ranks > K && ranks % K != 0)
    throw InvalidArgument(fmt::format("attention on {} ranks over nodes of {}: must fill whole nodes", ranks, K));
  const SpNodeLayout layout{ranks > K ? ranks / K : 1, ranks > K ? K : ranks};
  CostModelParams cp = costModelParams(p, false);
  const CostModel cm(cp);
  AttentionCost c;
  c.scheme = scheme == SpScheme::Auto ? cm.choose(shape, layout, options) : scheme;
  c.total_s = cm.predict(c.scheme, shape, layout, options);
  CostModelParams free = cp;  // no merges: their share
  free.merge_Bps = 0;
  c.merge_s = c.total_s - CostModel(free).predict(c.scheme, shape, layout, options);
  free.bandwidth_Bps = free.inter_bandwidth_Bps = 1e30;  // no link, no transport: the kernel alone
  free.latency_s = free.inter_latency_s = 0;
  free.wire_cpu_s_per_byte = 0;
  c.compute_s = CostModel(free).predict(c.scheme, shape, layout, options);
  return c;
}

std::vector<std::pair<int, int>> grids(const LlamaConfig& m, const Profile& p, int ranks) {
  if (ranks <= 0) ranks = p.ranks();
  std::vector<std::pair<int, int>> g;
  const int K = p.gpus_per_node;
  for (int tp = 1; tp <= std::min(ranks, m.n_head); tp *= 2)
    for (int sp = 1; tp * sp <= ranks; sp *= 2)
      if (tp * sp <= K || tp % K == 0 || K % tp == 0) g.emplace_back(tp, sp);
  return g;
}

Prediction predict(const LlamaConfig& m, const Profile& p, const Workload& w) {
  const int tp = w.tp, sp = w.sp, ranks = tp * sp, K = p.gpus_per_node;
  if (tp < 1 || sp < 1) throw InvalidArgument(fmt::format("tp {} x sp {}: both must be >= 1", tp, sp));
  if (ranks > p.ranks())
    throw InvalidArgument(fmt::format("tp {} x sp {} = {} ranks: profile {} has {} ({} node(s) of {})", tp, sp, ranks,
                                      p.name, p.ranks(), p.nodes, K));
  if (tp > m.n_head) throw InvalidArgument(fmt::format("tp {} exceeds the model's {} attention heads", tp, m.n_head));
  if (ranks > K && tp % K != 0 && K % tp != 0)
    throw InvalidArgument(
        fmt::format("tp {}: over several nodes of {} ranks a TP group must divide a node or fill "
                    "whole nodes",
                    tp, K));
  if (w.batch < 1) throw InvalidArgument(fmt::format("batch {}: must be >= 1", w.batch));
  if (w.prompt < 2 * sp)
    throw InvalidArgument(
        fmt::format("prompt {} tokens: sp {} needs at least {} (two zigzag chunks per rank)", w.prompt, sp, 2 * sp));
  if (w.decode < 0) throw InvalidArgument(fmt::format("decode {}: must be >= 0", w.decode));
  if (m.n_layer < 1 || m.n_embd < 1 || m.n_head < 1 || m.head_dim < 1)
    throw InvalidArgument(fmt::format("model '{}' has no shape", m.name));

  Prediction r;
  r.profile = p.name;
  r.model = m.name.empty() ? m.arch : m.name;
  r.comm = w.comm;
  r.tp = tp, r.sp = sp, r.batch = w.batch, r.prompt = w.prompt, r.decode = w.decode;
  // The slowest TP rank: the most query heads and KV heads of any rank (tpShard's uneven splits).
  int heads = 0, kvh = 0;
  for (int t = 0; t < tp; ++t) {
    const TpShard s = tpShard(m, tp, t);
    heads = std::max(heads, s.heads);
    kvh = std::max(kvh, static_cast<int>(s.kv_heads.size()));
  }
  const double L = m.n_layer, B = w.batch, S = static_cast<double>(w.prompt), d = m.head_dim, a = p.act_bytes;
  const double tokens = B * std::ceil(S / sp);  // per rank
  const double layer_macs = m.linearMacsPerToken() / m.n_layer;
  const double gemm = p.peak_flops * p.gemm_eff, mem = p.mem_Bps * p.mem_eff, attn_rate = p.peak_flops * p.attn_eff;

  // Linear layers of one layer on the slowest rank (tpShard's uneven head splits; KV heads replicated when tp
  // exceeds them): Q and O projections of its heads, K and V of its KV heads, its FFN units.
  double rank_macs = 0;
  for (int t = 0; t < tp; ++t) {
    const TpShard sh = tpShard(m, tp, t);
    const double dm = m.n_embd, hd = m.head_dim;
    rank_macs = std::max(
        rank_macs, 2 * dm * sh.heads * hd + 2 * dm * static_cast<double>(sh.kv_heads.size()) * hd + 3 * dm * sh.ff);
  }
  const double lin_s = std::max(2 * tokens * rank_macs / gemm, rank_macs * p.weight_bytes / mem);
  // Causal attention, zigzag-balanced (CostModel's rankFlops).
  const double causal = 4.0 * B * heads * d * S * S * (S + 1) / (2 * S);
  const double attn_flops =
      w.layout == SeqLayout::Zigzag ? causal / sp : causal * (2.0 * sp - 1) / (static_cast<double>(sp) * sp);
  const double attn_c = attn_flops / attn_rate;

  // Sequence-parallel attention: CostModel with the SP group's link (inter-node when the group spans nodes).
  double sp_s = 0, sp_bytes = 0, sp_inter = 0;
  const bool sp_multi = sp > 1 && ranks > K;
  if (sp > 1) {
    const CostModel cm(costModelParams(p, sp_multi));
    const SpShape shape{w.batch, w.prompt, heads, kvh, m.head_dim};
    SpAttentionOptions so;
    so.layout = w.layout;
    so.causal = true;
    for (SpScheme s : kSchemes) r.scheme_s.push_back(L * std::max(0.0, cm.predict(s, shape, sp, so) - attn_c));
    r.auto_scheme = cm.choose(shape, sp, so);
    if (spSchemeIsTwoLevel(w.scheme))
      throw InvalidArgument(
          fmt::format("simulate: the two-level SP scheme {} is not modelled yet; use tokenring, "
                      "ring-kv, ulysses, allgather-kv or auto",
                      spSchemeName(w.scheme)));
    r.scheme = w.scheme == SpScheme::Auto ? r.auto_scheme : w.scheme;
    sp_s = r.scheme_s[static_cast<size_t>(std::find(kSchemes.begin(), kSchemes.end(), r.scheme) - kSchemes.begin())];
    // Bytes one rank sends (CostModel's per-scheme volumes in act_bytes elements; lse in fp32).
    const double q = tokens * heads * d * a, kv = 2 * tokens * kvh * d * a, res = tokens * heads * (d * a + 4);
    const double N = sp;
    switch (r.scheme) {
      case SpScheme::TokenRing:
        sp_bytes = (N - 1) * (q + res);
        break;
      case SpScheme::RingKV:
      case SpScheme::AllGatherKV:
        sp_bytes = (N - 1) * kv;
        break;
      case SpScheme::Ulysses:
        sp_bytes = (N - 1) / N * (tokens * (heads + 2 * std::max<double>(kvh, N)) * d * a + q);
        break;
      case SpScheme::UlyssesTokenRing:  // not chosen here (rejected above; the single-level choose())
      case SpScheme::UlyssesRingKV:
      case SpScheme::Auto:
        break;
    }
    // Over nodes: a ring's boundary rank sends everything across; an all-to-all sends its off-node share.
    const int sp_per_node = std::max(1, K / tp);
    const bool ring = r.scheme == SpScheme::TokenRing || r.scheme == SpScheme::RingKV;
    if (sp_multi) sp_inter = ring ? sp_bytes : sp_bytes * (N - std::min<double>(sp_per_node, N)) / (N - 1);
  }

  // TP all-reduces, two per layer.
  const AllreduceOptions ao = workloadAllreduceOptions(w, p, tp);
  const size_t count = static_cast<size_t>(tokens) * static_cast<size_t>(m.n_embd);
  const AllreduceCost ar = allreduceCost(count, tp, ao, p);
  r.allreduce = ar.name;
  {
    AllreduceOptions auto_opts;  // the library's Auto with the same codec settings
    auto_opts.reduce_scatter.group_size = auto_opts.all_gather.group_size = w.group_size;
    auto_opts.reduce_scatter.spikes = auto_opts.all_gather.spikes = w.spikes;
    r.auto_allreduce = allreduceCost(count, tp, auto_opts, p).name;
  }
  // The output head of the last position of each sequence.
  const double head_w = static_cast<double>(m.n_vocab) * m.n_embd / tp;
  const double head_s = std::max(2 * B * head_w / gemm, head_w * p.weight_bytes / mem);

  r.linear_s = L * lin_s;
  r.attention_s = L * attn_c;
  r.compute_s = r.linear_s + r.attention_s + head_s;
  // Ranks that time-share cores do not finish a layer's compute together: every collective after it waits for
  // the last one (sync_s; CPU profiles).
  r.tp_comm_s = L * 2 * (ar.comm_s + (tp > 1 ? p.sync_s : 0.0));
  r.sp_comm_s = sp_s + (sp > 1 ? L * p.sync_s : 0.0);
  r.comm_s = r.tp_comm_s + r.sp_comm_s;
  r.quant_s = L * 2 * ar.codec_s;
  r.prefill_s = r.compute_s + r.comm_s + r.quant_s;
  r.bytes_per_rank = static_cast<uint64_t>(L * (2.0 * static_cast<double>(ar.wire_bytes) + sp_bytes));
  r.inter_node_bytes_per_rank = static_cast<uint64_t>(L * (2.0 * static_cast<double>(ar.inter_bytes) + sp_inter));

  // Decode at the mean context: weights and KV cache streamed once per step (or the FLOPs, if more).
  const double ctx = S + static_cast<double>(w.decode) / 2;
  const double weights = (L * layer_macs + static_cast<double>(m.n_vocab) * m.n_embd) / tp * p.weight_bytes;
  const double kv_read = L * B * std::ceil(ctx / sp) * 2 * kvh * d * a;
  const double dflops = 2 * B * (L * layer_macs + static_cast<double>(m.n_vocab) * m.n_embd) / tp +
                        L * 4 * B * heads * d * std::ceil(ctx / sp);
  const double dcompute = std::max(dflops / gemm, (weights + kv_read) / mem);
  // The engine's one-shot twin of a two-step or quantized all-reduce for buffers under the threshold.
  const size_t dcount = static_cast<size_t>(w.batch) * static_cast<size_t>(m.n_embd);
  AllreduceOptions dopts = ao;
  if ((ao.algorithm == AllreduceAlgorithm::TwoStep || ao.algorithm == AllreduceAlgorithm::Quantized) &&
      dcount * sizeof(float) < ao.oneshot_threshold_bytes) {
    dopts.oneshot_quantized = ao.algorithm == AllreduceAlgorithm::Quantized;
    dopts.algorithm = AllreduceAlgorithm::OneShot;
  }
  const AllreduceCost dar = allreduceCost(dcount, tp, dopts, p);
  double pass_q = 0;
  if (sp > 1) {
    // Q travels sp-1 hops along the ring, the farthest partial comes straight back.
    const LinkSpec& l = sp_multi ? p.inter : p.intra;
    const double qd = B * heads * d * a, rd = B * heads * (d * a + 4);
    pass_q = (sp - 1) * (l.latency_s + qd / l.bandwidthBps()) + l.latency_s + rd / l.bandwidthBps();
  }
  // Token choice over the vocabulary-parallel head (one round over TP) and its broadcast to the other SP groups.
  const double choice =
      (tp > 1 ? (tp > K ? p.inter : p.intra).latency_s : 0.0) + (sp > 1 ? (sp_multi ? p.inter : p.intra).latency_s : 0);
  r.decode_comm_s = L * (2 * dar.comm_s + pass_q) + choice;
  r.decode_step_s = dcompute + r.decode_comm_s + L * 2 * dar.codec_s;
  r.decode_tok_s = B / r.decode_step_s;

  // Memory: this rank's weights and its share of the KV cache of prompt + decode tokens.
  r.memory_bytes = weights + L * B * std::ceil((S + static_cast<double>(w.decode)) / sp) * 2 * kvh * d * a;
  r.fits = r.memory_bytes <= 0.9 * p.mem_bytes;
  return r;
}

}  // namespace flashring::sim
