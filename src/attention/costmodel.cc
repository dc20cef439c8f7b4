// Cost model of the sequence-parallel schemes (algorithms.md section 2) and its calibration.
#include "flashring/costmodel.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "comm/tags.h"

namespace flashring {

const char* topologyName(Topology t) { return t == Topology::Star ? "star" : "mesh"; }

namespace {

// FLOPs of one rank's attention (two GEMMs, 2 flops per multiply-add each); causal work is balanced by
// zigzag, and for a contiguous layout the slowest rank (the last) does (2N-1)/N^2 of the total.
double rankFlops(const SpShape& s, int N, const SpAttentionOptions& o) {
  const double S = static_cast<double>(s.seq_len);
  const double total = 4.0 * s.batch * s.heads * s.head_dim * S * S;
  if (!o.causal) return total / N;
  const double causal = total * (S + 1) / (2 * S);
  return o.layout == SeqLayout::Zigzag ? causal / N : causal * (2.0 * N - 1) / (static_cast<double>(N) * N);
}

}  // namespace

double CostModel::predict(SpScheme scheme, const SpShape& s, int N, const SpAttentionOptions& o) const {
  const double BW = p_.bandwidth_Bps, lat = p_.latency_s;
  const double C = rankFlops(s, N, o) / p_.kernel_flops;
  if (N <= 1) return C;
  const double tok = static_cast<double>(s.seq_len) / N * s.batch;  // tokens per rank
  const double q = tok * s.heads * s.head_dim * 4;                  // one Q shard, bytes
  const double kv = 2 * tok * s.kv_heads * s.head_dim * 4;          // one K+V shard
  const double res = tok * s.heads * (s.head_dim + 1) * 4;          // one (out, lse) shard
  const bool star = p_.topology == Topology::Star;
  // CPU beside the kernel (zero unless measured): one merge of a rank's tok query rows = 3 passes over their
  // (out, lse); a ring step merges each query chunk with each visible key chunk (zigzag, causal: 3 of the 4
  // chunk pairs, 1.5 merges of the rank's rows; otherwise 1); the transport's CPU per byte sent (as many received).
  const double merge1 = p_.merge_Bps > 0 ? 3 * res / p_.merge_Bps : 0;
  const double step_merges = o.causal && o.layout == SeqLayout::Zigzag ? 1.5 : 1.0;
  const double cpu_byte = p_.wire_cpu_s_per_byte;
  switch (scheme) {
    case SpScheme::TokenRing: {
      // The lowest rank receives full-size Q and returns full-size results on every step (algorithms.md).
      const double fwd = q / BW + lat, back = res / BW + lat;
      const double step = star ? fwd + back : std::max(fwd, back);
      // Each step: the visiting Q's merges, the owner's merge of a returned result, the Q and result bytes.
      const double cpu = step_merges * merge1 + merge1 + (q + res) * cpu_byte;
      return C / N + step_merges * merge1 + (N - 1) * std::max(C / N + cpu, step) + back + merge1 + res * cpu_byte;
    }
    case SpScheme::RingKV: {
      const double step = kv / BW + lat;
      const double cpu = step_merges * merge1 + kv * cpu_byte;
      return C / N + step_merges * merge1 + (N - 1) * std::max(C / N + cpu, step);
    }
    case SpScheme::Ulysses: {
      // Each rank sends (N-1)/N of its Q and of the K/V heads its peers need (at least one KV head each).
      const double kv_heads_sent = std::max<double>(s.kv_heads, N);
      const double in = (N - 1.0) / N * tok * (s.heads + 2 * kv_heads_sent) * s.head_dim * 4;
      const double out = (N - 1.0) / N * q;
      const double links = star ? 1.0 : N - 1.0;
      // The full sequence of 2N zigzag chunks: a merge per visible chunk pair, N + 1/2 merges of tok rows in all.
      const double merges = (o.causal ? N + 0.5 : 1.0) * merge1;
      return (in + out) / (BW * links) + 2 * lat * (star ? N - 1 : 1) + C + merges + (in + out) * cpu_byte;
    }
    case SpScheme::AllGatherKV: {
      const double links = star ? 1.0 : N - 1.0;
      // Local query chunks against all 2N key chunks: N + 1/2 merges of tok rows when causal (as Ulysses).
      const double merges = (o.causal ? N + 0.5 : 1.0) * merge1;
      return (N - 1.0) * kv / (BW * links) + lat * (star ? N - 1 : 1) + C + merges + (N - 1.0) * kv * cpu_byte;
    }
    case SpScheme::UlyssesTokenRing:
    case SpScheme::UlyssesRingKV:  // on one node: Ulysses (the ring across nodes has one member)
      return predict(SpScheme::Ulysses, s, N, o);
    case SpScheme::Auto:
      break;
  }
  return predict(choose(s, N, o), s, N, o);
}

namespace {

// ------------------------------------------------------------------------------ the model of several nodes
// Every scheme as phases of flows (src -> dst, bytes) between the ranks of R nodes x K ranks (node of rank r:
// r / K). A phase takes as long as its most loaded link, plus one latency per message on a star (the busiest
// sender's count) or one in all on a mesh (the inter-node latency when any flow crosses nodes). Links: on a
// star each rank's own link to its switch, both directions, for everything it sends or receives; on a mesh one
// link per pair for the flows inside a node; between nodes a node's uplink (inter_shared) or one per rank.
struct Flow {
  int src, dst;
  double bytes;
  bool fwd;  // counted in bytes_fwd (else bytes_bwd)
};
using Phase = std::vector<Flow>;

struct Sizes {
  int R, K, N;
  double H, Hkv, D;
  std::vector<double> len;       // tokens x batch, per rank
  std::vector<double> node_len;  // per node
  int node(int r) const { return r / K; }
};

Sizes sizesOf(const SpShape& s, const SpNodeLayout& nl, const SpAttentionOptions& o) {
  Sizes z{nl.nodes,
          nl.ranks_per_node,
          nl.ranks(),
          static_cast<double>(s.heads),
          static_cast<double>(s.kv_heads),
          static_cast<double>(s.head_dim),
          {},
          {}};
  z.node_len.assign(static_cast<size_t>(z.R), 0);
  for (int r = 0; r < z.N; ++r) {
    z.len.push_back(static_cast<double>(localLength(s.seq_len, z.N, r, o.layout)) * s.batch);
    z.node_len[static_cast<size_t>(z.node(r))] += z.len.back();
  }
  return z;
}

// Ulysses' head split among n ranks (sp_attention.cc): query heads of rank p, the KV heads they need, and the
// KV heads it holds after the all-to-all (expanded to one per query head when not on a group boundary).
struct HeadSplit {
  std::vector<double> q, kv, kv_local;
};
HeadSplit headSplit(const SpShape& s, int n) {
  const size_t H = static_cast<size_t>(s.heads), grp = H / static_cast<size_t>(s.kv_heads);
  HeadSplit hs;
  for (int p = 0; p < n; ++p) {
    const size_t per = (H + static_cast<size_t>(n) - 1) / static_cast<size_t>(n);
    const size_t b = std::min(H, static_cast<size_t>(p) * per), e = std::min(H, (static_cast<size_t>(p) + 1) * per);
    const size_t hq = e - b, hk = hq == 0 ? 0 : (e - 1) / grp + 1 - b / grp;
    const bool aligned = hq == 0 || (b % grp == 0 && hq % grp == 0);
    hs.q.push_back(static_cast<double>(hq));
    hs.kv.push_back(static_cast<double>(hk));
    hs.kv_local.push_back(static_cast<double>(aligned ? hk : hq));
  }
  return hs;
}

class Net {
 public:
  Net(const CostModelParams& p, const Sizes& z) : p_(p), z_(z) {}

  double time(const Phase& ph) const {
    const size_t N = static_cast<size_t>(z_.N), R = static_cast<size_t>(z_.R);
    const bool star = p_.topology == Topology::Star;
    std::vector<double> send(N, 0), recv(N, 0), xsend(N, 0), xrecv(N, 0), up(R, 0), down(R, 0), msgs(N, 0);
    std::vector<double> pair(star ? 0 : N * N, 0);
    bool any = false, cross = false;
    for (const Flow& f : ph) {
      if (f.bytes <= 0) continue;
      any = true;
      const auto a = static_cast<size_t>(f.src), b = static_cast<size_t>(f.dst);
      const bool x = z_.node(f.src) != z_.node(f.dst);
      msgs[a] += 1;
      if (star) {
        send[a] += f.bytes, recv[b] += f.bytes;
      } else if (!x) {
        pair[a * N + b] += f.bytes;
      }
      if (!x) continue;
      cross = true;
      if (p_.inter_shared)
        up[static_cast<size_t>(z_.node(f.src))] += f.bytes, down[static_cast<size_t>(z_.node(f.dst))] += f.bytes;
      else
        xsend[a] += f.bytes, xrecv[b] += f.bytes;
    }
    if (!any) return 0;
    auto mx = [](const std::vector<double>& v) { return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end()); };
    const double intra = std::max({mx(send), mx(recv), mx(pair)}) / p_.bandwidth_Bps;
    const double inter = std::max({mx(up), mx(down), mx(xsend), mx(xrecv)}) / p_.interBandwidth();
    const double lat = cross ? p_.interLatency() : p_.latency_s;
    return std::max(intra, inter) + lat * (star ? mx(msgs) : 1.0);
  }

 private:
  const CostModelParams& p_;
  const Sizes& z_;
};

// The phases of a scheme, and how they overlap compute: a ring of `ring_steps` steps runs `ring` phase s
// (s = 1 .. steps-1) beside compute step s-1, then `tail` after the last step; `before` and `after` do not
// overlap compute.
struct Plan {
  std::vector<Phase> before, ring, after;
  Phase tail;
  int ring_steps = 1;
};

constexpr double kF = 4;  // bytes per float

// TokenRing over `n` ring members: member i is rank at(i), with q/res bytes per owner.
void tokenRingPhases(int n, const std::function<int(int)>& at, const std::function<double(int)>& qb,
                     const std::function<double(int)>& resb, Plan& pl) {
  pl.ring_steps = n;
  pl.ring.assign(static_cast<size_t>(std::max(n - 1, 0)), {});
  for (int s = 1; s < n; ++s) {
    Phase& ph = pl.ring[static_cast<size_t>(s - 1)];
    for (int o = 0; o < n; ++o) {
      // Q of owner o arriving at step s: from member o-(s-1) to o-s.
      ph.push_back({at(((o - s + 1) % n + n) % n), at(((o - s) % n + n) % n), qb(o), true});
      // Results of step s-1, back to their owner.
      if (s >= 2) ph.push_back({at(((o - s + 1) % n + n) % n), at(o), resb(o), false});
    }
  }
  if (n > 1)
    for (int o = 0; o < n; ++o) pl.tail.push_back({at(((o - n + 1) % n + n) % n), at(o), resb(o), false});
}

void ringKvPhases(int n, const std::function<int(int)>& at, const std::function<double(int)>& kvb, Plan& pl) {
  pl.ring_steps = n;
  pl.ring.assign(static_cast<size_t>(std::max(n - 1, 0)), {});
  for (int s = 1; s < n; ++s)
    for (int o = 0; o < n; ++o)  // K/V of owner o arriving at step s: from member o+s-1 to o+s
      pl.ring[static_cast<size_t>(s - 1)].push_back(
          {at(((o + s - 1) % n + n) % n), at(((o + s) % n + n) % n), kvb(o), true});
}

Plan planOf(SpScheme scheme, const SpShape& s, const Sizes& z, bool with_lse) {
  Plan pl;
  const double D = z.D, lw = with_lse ? 1 : 0;
  auto self = [](int i) { return i; };
  switch (scheme) {
    case SpScheme::TokenRing:
      tokenRingPhases(
          z.N, self, [&](int o) { return z.len[static_cast<size_t>(o)] * z.H * D * kF; },
          [&](int o) { return z.len[static_cast<size_t>(o)] * z.H * (D + 1) * kF; }, pl);
      break;
    case SpScheme::RingKV:
      ringKvPhases(
          z.N, self, [&](int o) { return 2 * z.len[static_cast<size_t>(o)] * z.Hkv * D * kF; }, pl);
      break;
    case SpScheme::AllGatherKV: {
      Phase ph;
      for (int r = 0; r < z.N; ++r)
        for (int p = 0; p < z.N; ++p)
          if (p != r) ph.push_back({r, p, 2 * z.len[static_cast<size_t>(r)] * z.Hkv * D * kF, true});
      pl.before.push_back(std::move(ph));
      break;
    }
    case SpScheme::Ulysses:
    case SpScheme::UlyssesTokenRing:
    case SpScheme::UlyssesRingKV: {
      // All-to-all among `n` ranks per group; groups are the nodes (two-level) or everything (Ulysses).
      const bool two = scheme != SpScheme::Ulysses;
      const int n = two ? z.K : z.N, groups = z.N / n;
      const HeadSplit hs = headSplit(s, n);
      Phase in, out;
      for (int gidx = 0; gidx < groups; ++gidx)
        for (int j = 0; j < n; ++j)
          for (int p = 0; p < n; ++p) {
            if (p == j) continue;
            const int a = gidx * n + j, b = gidx * n + p;
            const auto P = static_cast<size_t>(p), J = static_cast<size_t>(j);
            in.push_back({a, b, z.len[static_cast<size_t>(a)] * (hs.q[P] + 2 * hs.kv[P]) * D * kF, true});
            out.push_back({a, b, z.len[static_cast<size_t>(b)] * hs.q[J] * (D + lw) * kF, false});
          }
      pl.before.push_back(std::move(in));
      pl.after.push_back(std::move(out));
      if (!two) break;
      // The rings across nodes, one per local index j, all at once: member i of ring j is rank i*K + j.
      std::vector<Plan> rings(static_cast<size_t>(z.K));
      for (int j = 0; j < z.K; ++j) {
        const auto J = static_cast<size_t>(j);
        auto at = [&, j](int i) { return i * z.K + j; };
        auto nl = [&](int i) { return z.node_len[static_cast<size_t>(i)]; };
        if (scheme == SpScheme::UlyssesTokenRing)
          tokenRingPhases(
              z.R, at, [&, J](int i) { return nl(i) * hs.q[J] * D * kF; },
              [&, J](int i) { return nl(i) * hs.q[J] * (D + 1) * kF; }, rings[J]);
        else
          ringKvPhases(
              z.R, at, [&, J](int i) { return 2 * nl(i) * hs.kv_local[J] * D * kF; }, rings[J]);
      }
      pl.ring_steps = z.R;
      pl.ring.assign(static_cast<size_t>(z.R - 1), {});
      for (auto& rp : rings) {
        for (size_t i = 0; i < rp.ring.size(); ++i)
          pl.ring[i].insert(pl.ring[i].end(), rp.ring[i].begin(), rp.ring[i].end());
        pl.tail.insert(pl.tail.end(), rp.tail.begin(), rp.tail.end());
      }
      break;
    }
    case SpScheme::Auto:
      break;
  }
  return pl;
}

}  // namespace

double CostModel::predict(SpScheme scheme, const SpShape& s, const SpNodeLayout& nl,
                          const SpAttentionOptions& o) const {
  if (nl.nodes <= 1) return predict(scheme, s, nl.ranks(), o);
  if (scheme == SpScheme::Auto) return predict(choose(s, nl, o), s, nl, o);
  const Sizes z = sizesOf(s, nl, o);
  const Net net(p_, z);
  const Plan pl = planOf(scheme, s, z, false);
  const double C = rankFlops(s, z.N, o) / p_.kernel_flops, step = C / pl.ring_steps;
  double t = step;
  for (const auto& ph : pl.before) t += net.time(ph);
  for (const auto& ph : pl.ring) t += std::max(step, net.time(ph));
  t += net.time(pl.tail);
  for (const auto& ph : pl.after) t += net.time(ph);
  return t;
}

SpScheme CostModel::choose(const SpShape& s, const SpNodeLayout& nl, const SpAttentionOptions& o) const {
  if (nl.nodes <= 1) return choose(s, nl.ranks(), o);
  SpScheme best = SpScheme::RingKV;
  double best_t = predict(best, s, nl, o);
  std::vector<SpScheme> cands{SpScheme::TokenRing, SpScheme::Ulysses, SpScheme::AllGatherKV};
  if (nl.ranks_per_node > 1) cands.insert(cands.end(), {SpScheme::UlyssesTokenRing, SpScheme::UlyssesRingKV});
  for (SpScheme c : cands) {
    const double t = predict(c, s, nl, o);
    if (t < best_t) best = c, best_t = t;
  }
  return best;
}

SpBytes CostModel::predictBytes(SpScheme scheme, const SpShape& s, const SpNodeLayout& nl, const SpAttentionOptions& o,
                                bool with_lse) const {
  if (scheme == SpScheme::Auto) scheme = choose(s, nl, o);
  const Sizes z = sizesOf(s, nl, o);
  const Plan pl = planOf(scheme, s, z, with_lse);
  SpBytes b;
  auto add = [&](const Phase& ph) {
    for (const Flow& f : ph) {
      (f.fwd ? b.fwd : b.bwd) += f.bytes;
      if (z.node(f.src) != z.node(f.dst)) b.inter += f.bytes;
    }
  };
  for (const auto& v : {pl.before, pl.ring, pl.after})
    for (const auto& ph : v) add(ph);
  add(pl.tail);
  b.fwd /= z.N, b.bwd /= z.N, b.inter /= z.N;
  return b;
}

SpScheme CostModel::choose(const SpShape& s, int N, const SpAttentionOptions& o) const {
  SpScheme best = SpScheme::RingKV;
  double best_t = predict(best, s, N, o);
  for (SpScheme c : {SpScheme::TokenRing, SpScheme::Ulysses, SpScheme::AllGatherKV}) {
    const double t = predict(c, s, N, o);
    if (t < best_t) best = c, best_t = t;
  }
  return best;
}

std::string CostModel::toJson() const {
  nlohmann::json j{{"bandwidth_Bps", p_.bandwidth_Bps},
                   {"latency_s", p_.latency_s},
                   {"topology", topologyName(p_.topology)},
                   {"kernel_flops", p_.kernel_flops},
                   {"inter_bandwidth_Bps", p_.inter_bandwidth_Bps},
                   {"inter_latency_s", p_.inter_latency_s},
                   {"inter_shared", p_.inter_shared},
                   {"merge_Bps", p_.merge_Bps},
                   {"wire_cpu_s_per_byte", p_.wire_cpu_s_per_byte}};
  return j.dump();
}

CostModel CostModel::fromJson(const std::string& text) {
  try {
    auto j = nlohmann::json::parse(text);
    CostModelParams p;
    p.bandwidth_Bps = j.at("bandwidth_Bps").get<double>();
    p.latency_s = j.at("latency_s").get<double>();
    const std::string t = j.at("topology").get<std::string>();
    if (t != "star" && t != "mesh")
      throw InvalidArgument(fmt::format("cost model: topology '{}' is not star or mesh", t));
    p.topology = t == "star" ? Topology::Star : Topology::Mesh;
    p.kernel_flops = j.at("kernel_flops").get<double>();
    // The inter-node link (absent from JSON written before two-level layouts: then the intra-node link applies).
    p.inter_bandwidth_Bps = j.value("inter_bandwidth_Bps", 0.0);
    p.inter_latency_s = j.value("inter_latency_s", 0.0);
    p.inter_shared = j.value("inter_shared", true);
    p.merge_Bps = j.value("merge_Bps", 0.0);
    p.wire_cpu_s_per_byte = j.value("wire_cpu_s_per_byte", 0.0);
    if (!(p.merge_Bps >= 0) || !(p.wire_cpu_s_per_byte >= 0))
      throw InvalidArgument("cost model: merge_Bps and wire_cpu_s_per_byte must be non-negative");
    if (!(p.bandwidth_Bps > 0) || !(p.kernel_flops > 0) || !(p.latency_s >= 0))
      throw InvalidArgument("cost model: bandwidth, kernel_flops must be positive and latency non-negative");
    if (!(p.inter_bandwidth_Bps >= 0) || !(p.inter_latency_s >= 0))
      throw InvalidArgument("cost model: inter_bandwidth_Bps and inter_latency_s must be non-negative");
    return CostModel(p);
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(fmt::format("cost model JSON: {}", e.what()));
  }
}

CostModel CostModel::calibrate(Communicator& comm, const std::string& topology) {
  if (!topology.empty() && topology != "star" && topology != "mesh")
    throw InvalidArgument(fmt::format("cost model: topology '{}' is not star or mesh", topology), comm.rank());
  CostModelParams p;
  const int N = comm.size(), r = comm.rank();
  // Kernel speed: a mid-sized non-causal block, best of 3; the slowest rank counts.
  {
    const AttentionShape as{1, 256, 256, 8, 8, 128};
    std::vector<float> q(256 * 8 * 128, 0.01f), o(q.size()), l(256 * 8);
    double best = 1e30;
    for (int i = 0; i < 3; ++i) {
      const auto t0 = Clock::now();
      blockAttention(q.data(), q.data(), q.data(), as, {}, o.data(), l.data());
      best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    const double flops = 4.0 * 256 * 256 * 8 * 128 / best;
    p.kernel_flops = allreduceMin(comm, flops);
  }
  if (N < 2) return CostModel(p);
  // Node layout: unequal nodes are priced as one node (spAttention does the same), so measure them as one.
  std::vector<std::vector<int>> nodes;
  {
    const std::vector<int> ids = normalizeNodeIds(comm.nodeIds());
    for (int q = 0; q < N; ++q) {
      const auto n = static_cast<size_t>(ids[static_cast<size_t>(q)]);
      if (nodes.size() <= n) nodes.resize(n + 1);
      nodes[n].push_back(q);
    }
    for (const auto& m : nodes)
      if (m.size() != nodes[0].size()) {
        std::vector<int> all(static_cast<size_t>(N));
        for (int q = 0; q < N; ++q) all[static_cast<size_t>(q)] = q;
        nodes = {all};
        break;
      }
  }
  const size_t bytes = size_t{4} << 20;
  std::vector<char> a(bytes), b(bytes);
  const Tag tag = tags::make(tags::kHelpers, 1);
  auto timed = [&](auto&& fn) {
    barrier(comm);
    const auto t0 = Clock::now();
    fn();
    return allreduceMax(comm, std::chrono::duration<double>(Clock::now() - t0).count());
  };
  // Latency: 8-byte ping-pong between ranks x and y.
  auto latency = [&](int x, int y) {
    const double pp = timed([&] {
      for (int i = 0; i < 10; ++i) {
        if (r == x) {
          Request s = comm.isend(a.data(), 8, y, tag), q = comm.irecv(b.data(), 8, y, tag);
          comm.wait(s, comm.deadline()), comm.wait(q, comm.deadline());
        } else if (r == y) {
          Request q = comm.irecv(b.data(), 8, x, tag);
          comm.wait(q, comm.deadline());
          Request s = comm.isend(a.data(), 8, x, tag);
          comm.wait(s, comm.deadline());
        }
      }
    });
    return pp / 20;
  };
  // Seconds of `bytes` from each sender to its receiver at once (pairs: (from, to)), best of 2.
  auto transfer = [&](const std::vector<std::pair<int, int>>& pairs) {
    double best = 1e30;
    for (int i = 0; i < 2; ++i)
      best = std::min(best, timed([&] {
                        std::vector<Request> rq;
                        for (const auto& [from, to] : pairs) {
                          if (r == from) rq.push_back(comm.isend(a.data(), bytes, to, tag));
                          if (r == to) rq.push_back(comm.irecv(b.data(), bytes, from, tag));
                        }
                        comm.waitAll(rq, comm.deadline());
                      }));
    return best;
  };
  const auto& n0 = nodes[0];
  const size_t K = n0.size();
  if (K >= 2) {
    // A link inside node 0 (on one node: ranks 0 and 1, as before): latency, then rank 1 -> rank 0.
    p.latency_s = latency(n0[0], n0[1]);
    const double one = transfer({{n0[1], n0[0]}});
    p.bandwidth_Bps = static_cast<double>(bytes) / std::max(one - p.latency_s, 1e-9);
    if (!topology.empty()) {
      p.topology = topology == "star" ? Topology::Star : Topology::Mesh;
    } else if (K >= 3) {
      // Rank 1 sends to ranks 0 and 2 at once: a shared uplink (star) takes about twice as long as one send.
      std::vector<char> c(bytes);
      const double two = timed([&] {
        if (r == n0[1]) {
          Request s[2] = {comm.isend(a.data(), bytes, n0[0], tag), comm.isend(c.data(), bytes, n0[2], tag)};
          comm.waitAll(s, comm.deadline());
        } else if (r == n0[0] || r == n0[2]) {
          Request q = comm.irecv(b.data(), bytes, n0[1], tag);
          comm.wait(q, comm.deadline());
        }
      });
      p.topology = two / one > 1.5 ? Topology::Star : Topology::Mesh;
    }
  }
  if (nodes.size() >= 2) {
    // Between nodes 0 and 1: latency and bandwidth of one flow, then every rank of node 1 to its counterpart on
    // node 0 at once: about K times as long when they share one uplink.
    const auto& n1 = nodes[1];
    p.inter_latency_s = latency(n0[0], n1[0]);
    const double one = transfer({{n1[0], n0[0]}});
    p.inter_bandwidth_Bps = static_cast<double>(bytes) / std::max(one - p.inter_latency_s, 1e-9);
    if (K >= 2) {
      std::vector<std::pair<int, int>> pairs;
      for (size_t j = 0; j < K; ++j) pairs.push_back({n1[j], n0[j]});
      const double all = transfer(pairs);
      p.inter_shared = all / one > (1.0 + static_cast<double>(K)) / 2;
    } else {
      // Nodes of one rank: there is no link inside a node; the one measured is the only one.
      p.bandwidth_Bps = p.inter_bandwidth_Bps;
      p.latency_s = p.inter_latency_s;
    }
    if (!topology.empty()) p.topology = topology == "star" ? Topology::Star : Topology::Mesh;
  }
  return CostModel(p);
}

}  // namespace flashring
