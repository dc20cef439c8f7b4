// Cost model of the sequence-parallel schemes (algorithms.md section 2) and its calibration.
#include "flashring/costmodel.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
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
  switch (scheme) {
    case SpScheme::TokenRing: {
      // The lowest rank receives full-size Q and returns full-size results on every step (algorithms.md).
      const double fwd = q / BW + lat, back = res / BW + lat;
      const double step = star ? fwd + back : std::max(fwd, back);
      return C / N + (N - 1) * std::max(C / N, step) + back;
    }
    case SpScheme::RingKV: {
      const double step = kv / BW + lat;
      return C / N + (N - 1) * std::max(C / N, step);
    }
    case SpScheme::Ulysses: {
      // Each rank sends (N-1)/N of its Q and of the K/V heads its peers need (at least one KV head each).
      const double kv_heads_sent = std::max<double>(s.kv_heads, N);
      const double in = (N - 1.0) / N * tok * (s.heads + 2 * kv_heads_sent) * s.head_dim * 4;
      const double out = (N - 1.0) / N * q;
      const double links = star ? 1.0 : N - 1.0;
      return (in + out) / (BW * links) + 2 * lat * (star ? N - 1 : 1) + C;
    }
    case SpScheme::AllGatherKV: {
      const double links = star ? 1.0 : N - 1.0;
      return (N - 1.0) * kv / (BW * links) + lat * (star ? N - 1 : 1) + C;
    }
    case SpScheme::Auto:
      break;
  }
  return predict(choose(s, N, o), s, N, o);
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
                   {"kernel_flops", p_.kernel_flops}};
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
    if (!(p.bandwidth_Bps > 0) || !(p.kernel_flops > 0) || !(p.latency_s >= 0))
      throw InvalidArgument("cost model: bandwidth, kernel_flops must be positive and latency non-negative");
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
  const size_t bytes = size_t{4} << 20;
  std::vector<char> a(bytes), b(bytes);
  const Tag tag = tags::make(tags::kHelpers, 1);
  auto timed = [&](auto&& fn) {
    barrier(comm);
    const auto t0 = Clock::now();
    fn();
    return allreduceMax(comm, std::chrono::duration<double>(Clock::now() - t0).count());
  };
  // Latency: 8-byte ping-pong between ranks 0 and 1.
  const double pp = timed([&] {
    for (int i = 0; i < 10; ++i) {
      if (r == 0) {
        Request s = comm.isend(a.data(), 8, 1, tag), q = comm.irecv(b.data(), 8, 1, tag);
        comm.wait(s, comm.deadline()), comm.wait(q, comm.deadline());
      } else if (r == 1) {
        Request q = comm.irecv(b.data(), 8, 0, tag);
        comm.wait(q, comm.deadline());
        Request s = comm.isend(a.data(), 8, 0, tag);
        comm.wait(s, comm.deadline());
      }
    }
  });
  p.latency_s = pp / 20;
  // Bandwidth of one link: rank 1 -> rank 0, best of 2.
  double one = 1e30;
  for (int i = 0; i < 2; ++i)
    one = std::min(one, timed([&] {
                     if (r == 1) {
                       Request s = comm.isend(a.data(), bytes, 0, tag);
                       comm.wait(s, comm.deadline());
                     } else if (r == 0) {
                       Request q = comm.irecv(b.data(), bytes, 1, tag);
                       comm.wait(q, comm.deadline());
                     }
                   }));
  p.bandwidth_Bps = static_cast<double>(bytes) / std::max(one - p.latency_s, 1e-9);
  if (!topology.empty()) {
    p.topology = topology == "star" ? Topology::Star : Topology::Mesh;
  } else if (N >= 3) {
    // Rank 1 sends to ranks 0 and 2 at once: a shared uplink (star) takes about twice as long as one send.
    std::vector<char> c(bytes);
    const double two = timed([&] {
      if (r == 1) {
        Request s[2] = {comm.isend(a.data(), bytes, 0, tag), comm.isend(c.data(), bytes, 2, tag)};
        comm.waitAll(s, comm.deadline());
      } else if (r == 0 || r == 2) {
        Request q = comm.irecv(b.data(), bytes, 1, tag);
        comm.wait(q, comm.deadline());
      }
    });
    p.topology = two / one > 1.5 ? Topology::Star : Topology::Mesh;
  }
  return CostModel(p);
}

}  // namespace flashring
