// Pass-Q attention of a few new queries over a sharded KV cache (include/flashring/sp_attention.h).
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "collectives/common.h"
#include "comm/tags.h"
#include "flashring/attention.h"
#include "flashring/costmodel.h"
#include "flashring/sp_attention.h"
#include "flashring/workspace.h"

namespace flashring {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// This rank's partial: its cache against the queries. Causal on the owner (its cache ends with the queries'
// own tokens), full elsewhere. An empty cache gives out = 0, lse = -inf.
void partial(const float* q, const float* k, const float* v, int64_t kv_len, const SpQueryShape& s, bool owner,
             float* out, float* lse, Workspace& ws) {
  const size_t rows = static_cast<size_t>(s.q_len) * s.heads;
  if (kv_len == 0) {
    std::fill(out, out + rows * s.head_dim, 0.f);
    std::fill(lse, lse + rows, kNegInf);
    return;
  }
  AttentionShape as{1, s.q_len, static_cast<int>(kv_len), s.heads, s.kv_heads, s.head_dim};
  BlockAttentionOptions bo;
  bo.causal = owner;
  bo.q_offset = owner ? kv_len - s.q_len : 0;
  bo.k_offset = 0;
  bo.workspace = &ws;
  blockAttention(q, k, v, as, bo, out, lse);
}

void checkArgs(const char* what, int owner, int S, int me, int64_t kv_len, const SpQueryShape& s) {
  if (owner < 0 || owner >= S) throw InvalidArgument(fmt::format("{}: owner {} outside [0, {})", what, owner, S), me);
  if (s.q_len < 1 || s.heads < 1 || s.kv_heads < 1 || s.head_dim < 1 || s.heads % s.kv_heads != 0)
    throw InvalidArgument(fmt::format("{}: bad shape q_len {} heads {} kv_heads {} head_dim {}", what, s.q_len, s.heads,
                                      s.kv_heads, s.head_dim),
                          me);
  if (kv_len < 0 || (me == owner && kv_len < s.q_len))
    throw InvalidArgument(fmt::format("{}: cache of {} entries on rank {} (the owner's holds the {} new tokens)", what,
                                      kv_len, me, s.q_len),
                          me);
}

// The owner's merge of the S partials (parts[r] = rank r's (out, lse)), in SP-rank order.
void mergeParts(const float* parts, size_t qdim, size_t part_floats, int S, const SpQueryShape& s, float* out,
                Workspace::Frame& frame) {
  std::memcpy(out, parts, qdim * sizeof(float));
  float* const lse = frame.get<float>(part_floats - qdim).data();
  std::memcpy(lse, parts + qdim, (part_floats - qdim) * sizeof(float));
  for (int r = 1; r < S; ++r) {
    const float* p = parts + part_floats * static_cast<size_t>(r);
    mergeAttention(out, lse, p, p + qdim, s.q_len, s.heads, s.head_dim);
  }
}

}  // namespace

void spPassQAttention(Communicator& c, int owner, const float* q, const float* k, const float* v, int64_t kv_len,
                      const SpQueryShape& s, int step, float* out, SpAttentionStats* stats, Workspace* workspace) {
  SpAttentionStats local;
  SpAttentionStats& st = stats != nullptr ? *stats : local;
  const int S = c.size(), me = c.rank();
  checkArgs("spPassQAttention", owner, S, me, kv_len, s);
  const size_t qdim = static_cast<size_t>(s.q_len) * s.heads * s.head_dim;
  const size_t part_floats = qdim + static_cast<size_t>(s.q_len) * s.heads;
  const int next = (me + 1) % S, prev = (me + S - 1) % S;
  const Tag tq = tags::make(tags::kEngineDecodeQ, step), to = tags::make(tags::kEngineDecodeOut, step);
  st.scheme = SpScheme::TokenRing;
  Workspace& ws = detail::workspaceOf(c, workspace);
  Workspace::Frame frame(ws);
  if (me == owner) {
    Request fwd;
    if (S > 1) {
      fwd = c.isend(q, qdim * sizeof(float), next, tq);
      st.bytes_fwd += qdim * sizeof(float);
    }
    float* const parts = frame.get<float>(part_floats * static_cast<size_t>(S)).data();
    std::vector<Request> recvs;
    for (int r = 0; r < S; ++r)
      if (r != me) recvs.push_back(c.irecv(parts + part_floats * r, part_floats * sizeof(float), r, to));
    float* mine = parts + part_floats * static_cast<size_t>(me);
    {
      detail::Stopwatch sw(st.compute_s);
      partial(q, k, v, kv_len, s, true, mine, mine + qdim, ws);
    }
    {
      detail::Stopwatch sw(st.comm_s);
      if (fwd.valid()) c.wait(fwd, c.deadline());
      c.waitAll(recvs, c.deadline());
    }
    detail::Stopwatch sw(st.compute_s);
    mergeParts(parts, qdim, part_floats, S, s, out, frame);
  } else {
    float* const qin = frame.get<float>(qdim).data();
    float* const part = frame.get<float>(part_floats).data();
    Request r = c.irecv(qin, qdim * sizeof(float), prev, tq);
    {
      detail::Stopwatch sw(st.comm_s);
      c.wait(r, c.deadline());
    }
    Request fwd;
    if (next != owner) {
      fwd = c.isend(qin, qdim * sizeof(float), next, tq);
      st.bytes_fwd += qdim * sizeof(float);
    }
    {
      detail::Stopwatch sw(st.compute_s);
      partial(qin, k, v, kv_len, s, false, part, part + qdim, ws);
    }
    Request back = c.isend(part, part_floats * sizeof(float), owner, to);
    st.bytes_bwd += part_floats * sizeof(float);
    detail::Stopwatch sw(st.comm_s);
    if (fwd.valid()) c.wait(fwd, c.deadline());
    c.wait(back, c.deadline());
  }
}

void spPassKVAttention(Communicator& c, int owner, const float* q, const float* k, const float* v, int64_t kv_len,
                       const SpQueryShape& s, int step, float* out, SpAttentionStats* stats, Workspace* workspace) {
  SpAttentionStats local;
  SpAttentionStats& st = stats != nullptr ? *stats : local;
  const int S = c.size(), me = c.rank();
  checkArgs("spPassKVAttention", owner, S, me, kv_len, s);
  const size_t qdim = static_cast<size_t>(s.q_len) * s.heads * s.head_dim;
  const size_t part_floats = qdim + static_cast<size_t>(s.q_len) * s.heads;
  const size_t row = static_cast<size_t>(s.kv_heads) * s.head_dim;  // floats of one cache entry
  const Tag tlen = tags::make(tags::kEngineDecodeQ, step), tkv = tags::make(tags::kEngineDecodeOut, step);
  st.scheme = SpScheme::AllGatherKV;
  if (me != owner) {
    const int64_t len = kv_len;
    std::vector<Request> sends;
    sends.push_back(c.isend(&len, sizeof len, owner, tlen));
    if (kv_len > 0) {
      sends.push_back(c.isend(k, static_cast<size_t>(kv_len) * row * sizeof(float), owner, tkv));
      sends.push_back(c.isend(v, static_cast<size_t>(kv_len) * row * sizeof(float), owner, tkv));
    }
    st.bytes_fwd += 2 * static_cast<uint64_t>(kv_len) * row * sizeof(float);
    detail::Stopwatch sw(st.comm_s);
    c.waitAll(sends, c.deadline());
    return;
  }
  // Owner: lengths first, then every rank's K and V; partials in rank order as pass-Q computes them.
  std::vector<int64_t> lens(static_cast<size_t>(S), 0);
  std::vector<Request> len_recv(static_cast<size_t>(S));
  for (int r = 0; r < S; ++r)
    if (r != me) len_recv[static_cast<size_t>(r)] = c.irecv(&lens[static_cast<size_t>(r)], sizeof(int64_t), r, tlen);
  Workspace& ws = detail::workspaceOf(c, workspace);
  Workspace::Frame frame(ws);
  float* const parts = frame.get<float>(part_floats * static_cast<size_t>(S)).data();
  {
    detail::Stopwatch sw(st.compute_s);
    float* mine = parts + part_floats * static_cast<size_t>(me);
    partial(q, k, v, kv_len, s, true, mine, mine + qdim, ws);
  }
  for (int r = 0; r < S; ++r) {
    if (r == me) continue;
    {
      detail::Stopwatch sw(st.comm_s);
      c.wait(len_recv[static_cast<size_t>(r)], c.deadline());
    }
    const int64_t len = lens[static_cast<size_t>(r)];
    if (len < 0) throw InvalidArgument(fmt::format("spPassKVAttention: rank {} sent a cache length {}", r, len), me);
    // One rank's cache at a time: its frame ends before the next rank's K/V arrive.
    Workspace::Frame cache(ws);
    const size_t n = static_cast<size_t>(len) * row;
    float* const kr = cache.get<float>(n).data();
    float* const vr = cache.get<float>(n).data();
    if (len > 0) {
      Request rk = c.irecv(kr, n * sizeof(float), r, tkv);
      Request rv = c.irecv(vr, n * sizeof(float), r, tkv);
      detail::Stopwatch sw(st.comm_s);
      c.wait(rk, c.deadline());
      c.wait(rv, c.deadline());
    }
    detail::Stopwatch sw(st.compute_s);
    float* p = parts + part_floats * static_cast<size_t>(r);
    partial(q, kr, vr, len, s, false, p, p + qdim, ws);
  }
  detail::Stopwatch sw(st.compute_s);
  mergeParts(parts, qdim, part_floats, S, s, out, frame);
}

SpScheme chooseAppendScheme(const CostModelParams& p, const SpQueryShape& s, int64_t cache_per_rank, int ranks,
                            double* predicted_pass_q, double* predicted_pass_kv) {
  const double S = std::max(ranks, 1), T = s.q_len, L = static_cast<double>(std::max<int64_t>(cache_per_rank, 0));
  const double bw = p.bandwidth_Bps > 0 ? p.bandwidth_Bps : 1e9, a = std::max(p.latency_s, 0.0);
  const double flops = p.kernel_flops > 0 ? p.kernel_flops : 20e9;
  const double qb = T * s.heads * s.head_dim * 4.0, part = T * s.heads * (s.head_dim + 1) * 4.0;
  const double kv = 2.0 * L * s.kv_heads * s.head_dim * 4.0;
  const double attn = 4.0 * T * L * s.heads * s.head_dim / flops;    // QK^T and PV, non-causal
  const double incast = p.topology == Topology::Mesh ? 1.0 : S - 1;  // messages sharing the owner's link
  const double pass_q = (S - 1) * (a + qb / bw) + attn + incast * part / bw;
  const double pass_kv = a + incast * kv / bw + S * attn;
  if (predicted_pass_q != nullptr) *predicted_pass_q = ranks > 1 ? pass_q : attn;
  if (predicted_pass_kv != nullptr) *predicted_pass_kv = ranks > 1 ? pass_kv : attn;
  return ranks > 1 && pass_kv < pass_q ? SpScheme::AllGatherKV : SpScheme::TokenRing;
}

}  // namespace flashring
