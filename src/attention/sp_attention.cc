// Sequence-parallel attention schemes: TokenRing (pass-Q), RingKV (pass-KV), Ulysses, AllGatherKV, and the
// two-level ulysses+tokenring / ulysses+ring-kv.
#include "flashring/sp_attention.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "collectives/common.h"
#include "comm/patterns/ring.h"
#include "comm/tags.h"
#include "flashring/costmodel.h"
#include "flashring/group_comm.h"

namespace flashring {

using detail::Range;

int64_t localLength(int64_t seq_len, int ranks, int rank, SeqLayout layout) {
  int64_t n = 0;
  for (const auto& s : localSegments(seq_len, ranks, rank, layout)) n += s.length;
  return n;
}

std::vector<Segment> localSegments(int64_t seq_len, int ranks, int rank, SeqLayout layout) {
  const auto S = static_cast<size_t>(seq_len);
  if (layout == SeqLayout::Contiguous) {
    const Range r = detail::part(S, ranks, rank);
    return {{static_cast<int64_t>(r.begin), static_cast<int64_t>(r.size())}};
  }
  const Range a = detail::part(S, 2 * ranks, rank), b = detail::part(S, 2 * ranks, 2 * ranks - 1 - rank);
  return {{static_cast<int64_t>(a.begin), static_cast<int64_t>(a.size())},
          {static_cast<int64_t>(b.begin), static_cast<int64_t>(b.size())}};
}

std::string spSchemeName(SpScheme s) {
  switch (s) {
    case SpScheme::Auto:
      return "auto";
    case SpScheme::TokenRing:
      return "tokenring";
    case SpScheme::RingKV:
      return "ring-kv";
    case SpScheme::Ulysses:
      return "ulysses";
    case SpScheme::AllGatherKV:
      return "allgather-kv";
    case SpScheme::UlyssesTokenRing:
      return "ulysses+tokenring";
    case SpScheme::UlyssesRingKV:
      return "ulysses+ring-kv";
  }
  return "?";
}

SpScheme spSchemeFromName(const std::string& name) {
  for (SpScheme s : {SpScheme::Auto, SpScheme::TokenRing, SpScheme::RingKV, SpScheme::Ulysses, SpScheme::AllGatherKV,
                     SpScheme::UlyssesTokenRing, SpScheme::UlyssesRingKV})
    if (spSchemeName(s) == name) return s;
  throw InvalidArgument(
      fmt::format("unknown attention scheme '{}' (valid: tokenring, ring-kv, ulysses, allgather-kv, ulysses+tokenring, "
                  "ulysses+ring-kv, auto)",
                  name));
}

bool spSchemeIsTwoLevel(SpScheme s) { return s == SpScheme::UlyssesTokenRing || s == SpScheme::UlyssesRingKV; }

namespace {

// The ranks of every node (parent ranks, ascending), nodes numbered as normalizeNodeIds does.
std::vector<std::vector<int>> nodeMembers(const Communicator& comm) {
  const std::vector<int> ids = normalizeNodeIds(comm.nodeIds());
  if (ids.size() != static_cast<size_t>(comm.size()))
    throw InvalidArgument(
        fmt::format("spAttention: the communicator gave {} node ids for {} ranks", ids.size(), comm.size()),
        comm.rank());
  std::vector<std::vector<int>> members;
  for (int r = 0; r < comm.size(); ++r) {
    const auto n = static_cast<size_t>(ids[static_cast<size_t>(r)]);
    if (members.size() <= n) members.resize(n + 1);
    members[n].push_back(r);
  }
  return members;
}

// The node layout; when nodes differ in size, "" is replaced by what differs and the layout is one flat node.
SpNodeLayout nodeLayoutOf(const std::vector<std::vector<int>>& members, std::string& unequal) {
  size_t total = 0;
  for (const auto& m : members) total += m.size();
  for (size_t n = 1; n < members.size(); ++n)
    if (members[n].size() != members[0].size()) {
      unequal = fmt::format("node 0 holds {} ranks, node {} holds {}; every node must hold the same number",
                            members[0].size(), n, members[n].size());
      return {1, static_cast<int>(total)};
    }
  return {static_cast<int>(members.size()), static_cast<int>(members[0].size())};
}

}  // namespace

SpNodeLayout spNodeLayout(const Communicator& comm) {
  std::string why;
  const SpNodeLayout L = nodeLayoutOf(nodeMembers(comm), why);
  if (!why.empty())
    throw InvalidArgument(fmt::format("spNodeLayout: rank {}: {} (Communicator::nodeIds)", comm.rank(), why),
                          comm.rank());
  return L;
}

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// memcpy of n floats that accepts null pointers when n == 0 (empty shards have no storage).
inline void copyFloats(float* dst, const float* src, size_t n) {
  if (n > 0) std::memcpy(dst, src, n * sizeof(float));
}

// Per-rank geometry of one call.
struct Geometry {
  int N, r;
  SpShape shape;
  SeqLayout layout;
  bool causal;
  float scale;
  size_t qrow, kvrow;                      // floats per token of q / of k (heads*d, kv_heads*d)
  std::vector<std::vector<Segment>> segs;  // per rank
  std::vector<int64_t> len;                // per rank

  Geometry(int n, int rank, const SpShape& s, const SpAttentionOptions& o)
      : N(n), r(rank), shape(s), layout(o.layout), causal(o.causal), scale(o.scale) {
    qrow = static_cast<size_t>(s.heads) * static_cast<size_t>(s.head_dim);
    kvrow = static_cast<size_t>(s.kv_heads) * static_cast<size_t>(s.head_dim);
    for (int p = 0; p < n; ++p) {
      segs.push_back(localSegments(s.seq_len, n, p, o.layout));
      len.push_back(localLength(s.seq_len, n, p, o.layout));
    }
  }
  // Explicit per-rank segments (the two-level schemes: a node's combined sequence, or a rank's rows of it).
  Geometry(int n, int rank, const SpShape& s, const SpAttentionOptions& o, std::vector<std::vector<Segment>> per_rank)
      : N(n), r(rank), shape(s), layout(o.layout), causal(o.causal), scale(o.scale), segs(std::move(per_rank)) {
    qrow = static_cast<size_t>(s.heads) * static_cast<size_t>(s.head_dim);
    kvrow = static_cast<size_t>(s.kv_heads) * static_cast<size_t>(s.head_dim);
    for (const auto& ps : segs) {
      int64_t l = 0;
      for (const auto& g : ps) l += g.length;
      len.push_back(l);
    }
  }
  size_t B() const { return static_cast<size_t>(shape.batch); }
  size_t L(int p) const { return static_cast<size_t>(len[static_cast<size_t>(p)]); }
  const std::vector<Segment>& S(int p) const { return segs[static_cast<size_t>(p)]; }

  // First local row of owner o's queries that has any visible key among holder h's keys. Rows before it
  // have no work at h; for the layouts here the rows with work always form a suffix.
  int64_t needStart(int o, int h) const {
    const auto& qs = S(o);
    if (!causal) return 0;
    int64_t kmin = std::numeric_limits<int64_t>::max();
    for (const auto& k : S(h))
      if (k.length > 0) kmin = std::min(kmin, k.global_offset);
    int64_t row = 0;
    for (const auto& q : qs) {
      if (q.length > 0 && q.global_offset + q.length - 1 >= kmin) return row;
      row += q.length;
    }
    return row;  // no work
  }
};

// Rows [a, a+rows) of owner's local query rows, restricted to its segments: the segments of that range.
std::vector<Segment> subSegments(const std::vector<Segment>& segs, int64_t a) {
  std::vector<Segment> out;
  int64_t row = 0;
  for (const auto& s : segs) {
    const int64_t b = std::max(a, row), e = row + s.length;
    if (b < e) out.push_back({s.global_offset + (b - row), e - b});
    row += s.length;
  }
  return out;
}

// Scratch memory: every scheme opens a frame on the call's workspace (SpAttentionOptions::workspace, else the
// communicator's) and takes its buffers from it; the block kernel's frames nest inside. The buffers outlive
// an unwinding (workspace.h), as the transports need until the abort.

// Attention of packed queries q [B, qrows, H, D] (global positions qsegs) against packed keys/values
// [B, kvrows, Hkv, D] (positions ksegs), merged into (out, lse) [B, qrows, H, D] / [B, qrows, H].
void attendInto(const Geometry& g, const float* q, int64_t qrows, const std::vector<Segment>& qsegs, const float* k,
                const float* v, int64_t kvrows, const std::vector<Segment>& ksegs, float* out, float* lse,
                Communicator& comm, Workspace& ws) {
  if (qrows == 0 || kvrows == 0) return;
  const size_t H = static_cast<size_t>(g.shape.heads), D = static_cast<size_t>(g.shape.head_dim);
  BlockAttentionOptions bo;
  bo.scale = g.scale;
  bo.progress = [&comm] { comm.progress(); };
  bo.workspace = &ws;
  // One partial result of the longest query segment, reused for every block.
  size_t max_tokens = 0;
  for (const auto& qs : qsegs) max_tokens = std::max(max_tokens, static_cast<size_t>(qs.length));
  Workspace::Frame frame(ws);
  float* const tmp_out = frame.get<float>(max_tokens * H * D).data();
  float* const tmp_lse = frame.get<float>(max_tokens * H).data();
  for (size_t b = 0; b < g.B(); ++b) {
    int64_t qa = 0;
    for (const auto& qs : qsegs) {
      if (qs.length == 0) continue;
      float* o = out + (b * static_cast<size_t>(qrows) + static_cast<size_t>(qa)) * H * D;
      float* l = lse + (b * static_cast<size_t>(qrows) + static_cast<size_t>(qa)) * H;
      const float* qp = q + (b * static_cast<size_t>(qrows) + static_cast<size_t>(qa)) * g.qrow;
      // Non-causal: all keys at once (positions do not matter, and the packed K/V rows are contiguous).
      if (!g.causal) {
        AttentionShape as{1,
                          static_cast<int>(qs.length),
                          static_cast<int>(kvrows),
                          g.shape.heads,
                          g.shape.kv_heads,
                          g.shape.head_dim};
        const size_t kb = b * static_cast<size_t>(kvrows) * g.kvrow;
        blockAttention(qp, k + kb, v + kb, as, bo, tmp_out, tmp_lse);
        mergeAttention(o, l, tmp_out, tmp_lse, qs.length, g.shape.heads, g.shape.head_dim);
      } else {
        int64_t ka = 0;
        for (const auto& ks : ksegs) {
          const int64_t krow = ka;
          ka += ks.length;
          if (ks.length == 0 || ks.global_offset > qs.global_offset + qs.length - 1) continue;  // all masked
          // Fully visible blocks skip the mask.
          bo.causal = ks.global_offset + ks.length - 1 > qs.global_offset;
          bo.q_offset = qs.global_offset;
          bo.k_offset = ks.global_offset;
          AttentionShape as{1,
                            static_cast<int>(qs.length),
                            static_cast<int>(ks.length),
                            g.shape.heads,
                            g.shape.kv_heads,
                            g.shape.head_dim};
          const size_t kb = (b * static_cast<size_t>(kvrows) + static_cast<size_t>(krow)) * g.kvrow;
          blockAttention(qp, k + kb, v + kb, as, bo, tmp_out, tmp_lse);
          mergeAttention(o, l, tmp_out, tmp_lse, qs.length, g.shape.heads, g.shape.head_dim);
        }
      }
      qa += qs.length;
    }
  }
}

void initAcc(float* out, float* lse, size_t rows, size_t H, size_t D) {
  std::fill(out, out + rows * H * D, 0.f);
  std::fill(lse, lse + rows * H, kNegInf);
}

// Copy rows [a, a+rows) of every batch of a packed [B, total, width] tensor into dst [B, rows, width].
void packRows(const float* src, size_t B, size_t total, size_t a, size_t rows, size_t width, float* dst) {
  for (size_t b = 0; b < B; ++b) copyFloats(dst + b * rows * width, src + (b * total + a) * width, rows * width);
}

// ---------------------------------------------------------------------------------------------------- TokenRing
void tokenRing(Communicator& comm, const Geometry& g, const float* q, const float* k, const float* v, float* out,
               float* lse, SpAttentionStats& st, Workspace& ws) {
  const int N = g.N, r = g.r;
  const size_t B = g.B(), H = static_cast<size_t>(g.shape.heads), D = static_cast<size_t>(g.shape.head_dim);
  const size_t resw = H * D + H;  // floats per result row: out then lse, packed per message as [out | lse]
  const size_t Lr = g.L(r);
  Workspace::Frame frame(ws);
  float* const acc_lse = frame.get<float>(B * Lr * H).data();
  std::fill(acc_lse, acc_lse + B * Lr * H, kNegInf);
  std::fill(out, out + B * Lr * H * D, 0.f);
  st.step_compute_s.assign(static_cast<size_t>(N), 0);
  st.step_comm_s.assign(static_cast<size_t>(N), 0);
  const int prev = ring::prev(r, N), next = ring::next(r, N);
  // Q rows of owner `o` that holder `h` receives, as a suffix start: the rows with work at h or at any holder
  // after it on o's path (o-1, o-2, ...), since each holder forwards a suffix of what it got. For the layouts
  // of one level that is needStart(o, h) itself (the need only shrinks along the path); a node's combined
  // sequence may not be so ordered.
  auto need = [&](int o, int h) {
    int64_t a = std::numeric_limits<int64_t>::max();
    for (int t = ring::wrap(o, -h, N); t < N; ++t) a = std::min(a, g.needStart(o, ring::wrap(o, -t, N)));
    return static_cast<size_t>(a);
  };

  // Results for my queries: at step s they come from holder r - s, rows [needStart(r, r-s), Lr).
  std::vector<size_t> res_off(static_cast<size_t>(N), 0);
  size_t total = 0;
  for (int s = 1; s < N; ++s) {
    res_off[static_cast<size_t>(s)] = total;
    total += B * (Lr - need(r, ring::wrap(r, -s, N))) * resw;
  }
  float* const rres = frame.get<float>(total).data();
  // Q buffers (three, in turn: received, being forwarded, being computed on) and result buffers (two), each as
  // large as the largest step that uses it.
  size_t qmax[3] = {0, 0, 0}, resmax[2] = {0, 0};
  if (N > 1) {
    qmax[0] = B * (Lr - need(r, prev)) * g.qrow;
    const int o1 = ring::wrap(r, 1, N);
    qmax[1] = B * (g.L(o1) - need(o1, r)) * g.qrow;
  }
  for (int s = 1; s < N; ++s) {
    const int o = ring::wrap(r, s, N), o2 = ring::wrap(r, s + 1, N);
    if (s + 1 < N) qmax[(s + 1) % 3] = std::max(qmax[(s + 1) % 3], B * (g.L(o2) - need(o2, r)) * g.qrow);
    resmax[s % 2] = std::max(resmax[s % 2], B * (g.L(o) - need(o, r)) * resw);
  }
  float* const qbuf[3] = {frame.get<float>(qmax[0]).data(), frame.get<float>(qmax[1]).data(),
                          frame.get<float>(qmax[2]).data()};
  float* const res[2] = {frame.get<float>(resmax[0]).data(), frame.get<float>(resmax[1]).data()};
  std::vector<Request> res_recv(static_cast<size_t>(N)), res_send(static_cast<size_t>(N)),
      q_send(static_cast<size_t>(N)), q_recv(static_cast<size_t>(N));
  for (int s = 1; s < N; ++s) {
    const int h = ring::wrap(r, -s, N);
    const size_t rows = Lr - need(r, h);
    if (rows == 0) continue;
    res_recv[static_cast<size_t>(s)] =
        comm.irecv(rres + res_off[static_cast<size_t>(s)], B * rows * resw * 4, h, tags::make(tags::kSpBackward, s));
  }
  auto waitTimed = [&](Request& req, int s) {
    detail::Stopwatch t(st.step_comm_s[static_cast<size_t>(s)]);
    comm.wait(req, comm.deadline());
  };

  // Step 0 -> 1: my Q to rank r-1 (the rows it needs), and the receive of the Q I hold at step 1.
  if (N > 1) {
    const size_t a = need(r, prev), rows = Lr - a;
    packRows(q, B, Lr, a, rows, g.qrow, qbuf[0]);
    if (rows > 0) {
      q_send[0] = comm.isend(qbuf[0], B * rows * g.qrow * 4, prev, tags::make(tags::kSpForward, 1));
      st.bytes_fwd += B * rows * g.qrow * 4;
    }
    const int o = ring::wrap(r, 1, N);
    const size_t rrows = g.L(o) - need(o, r);
    if (rrows > 0) q_recv[1] = comm.irecv(qbuf[1], B * rrows * g.qrow * 4, next, tags::make(tags::kSpForward, 1));
  }
  {
    detail::Stopwatch t(st.step_compute_s[0]);
    attendInto(g, q, static_cast<int64_t>(Lr), g.S(r), k, v, static_cast<int64_t>(Lr), g.S(r), out, acc_lse, comm, ws);
  }
  for (int s = 1; s < N; ++s) {
    const int o = ring::wrap(r, s, N);  // owner of the Q I hold at step s
    const size_t a = need(o, r), rows = g.L(o) - a;
    float* qcur = qbuf[s % 3];
    if (rows > 0) waitTimed(q_recv[static_cast<size_t>(s)], s);
    // Forward what rank r-1 needs at step s+1 (a suffix of what I hold), and post my next receive.
    if (s + 1 < N) {
      const size_t a2 = need(o, prev), rows2 = g.L(o) - a2;
      if (a2 < a)
        throw Error(fmt::format("TokenRing: rank {} holds rows from {} of rank {}'s Q, rank {} needs rows from {}", r,
                                a, o, prev, a2),
                    r);
      if (rows2 > 0) {
        const float* src = qcur;
        if (B > 1 && a2 > a) {  // a shorter suffix of every batch: repack (kept until the send completes)
          float* fwd = frame.get<float>(B * rows2 * g.qrow).data();
          packRows(qcur, B, rows, a2 - a, rows2, g.qrow, fwd);
          src = fwd;
        } else {
          src = qcur + (a2 - a) * g.qrow;
        }
        q_send[static_cast<size_t>(s)] =
            comm.isend(src, B * rows2 * g.qrow * 4, prev, tags::make(tags::kSpForward, s + 1));
        st.bytes_fwd += B * rows2 * g.qrow * 4;
      }
      const int o2 = ring::wrap(r, s + 1, N);
      const size_t rrows = g.L(o2) - need(o2, r);
      // The buffer for step s+1 held step s-2's Q; its forward send must be done before we overwrite it.
      if (s >= 2) waitTimed(q_send[static_cast<size_t>(s - 2)], s);
      if (rrows > 0)
        q_recv[static_cast<size_t>(s + 1)] =
            comm.irecv(qbuf[(s + 1) % 3], B * rrows * g.qrow * 4, next, tags::make(tags::kSpForward, s + 1));
    }
    if (rows == 0) continue;
    // Compute the visiting Q against my K/V into a result buffer [out | lse], and send it to its owner.
    float* const rb = res[s % 2];
    if (s >= 3 && res_send[static_cast<size_t>(s - 2)].valid()) waitTimed(res_send[static_cast<size_t>(s - 2)], s);
    {
      detail::Stopwatch t(st.step_compute_s[static_cast<size_t>(s)]);
      float* ro = rb;
      float* rl = rb + B * rows * H * D;
      initAcc(ro, rl, B * rows, H, D);
      attendInto(g, qcur, static_cast<int64_t>(rows), subSegments(g.S(o), static_cast<int64_t>(a)), k, v,
                 static_cast<int64_t>(Lr), g.S(r), ro, rl, comm, ws);
    }
    res_send[static_cast<size_t>(s)] = comm.isend(rb, B * rows * resw * 4, o, tags::make(tags::kSpBackward, s));
    st.bytes_bwd += B * rows * resw * 4;
  }
  // Merge the partial results for my queries, in step order.
  for (int s = 1; s < N; ++s) {
    const int h = ring::wrap(r, -s, N);
    const size_t a = need(r, h), rows = Lr - a;
    if (rows == 0) continue;
    waitTimed(res_recv[static_cast<size_t>(s)], s);
    detail::Stopwatch t(st.compute_s);
    const float* ro = rres + res_off[static_cast<size_t>(s)];
    const float* rl = ro + B * rows * H * D;
    for (size_t b = 0; b < B; ++b)
      mergeAttention(out + (b * Lr + a) * H * D, acc_lse + (b * Lr + a) * H, ro + b * rows * H * D, rl + b * rows * H,
                     static_cast<int64_t>(rows), g.shape.heads, g.shape.head_dim);
  }
  for (auto& rq : q_send) waitTimed(rq, N - 1);
  for (auto& rq : res_send) waitTimed(rq, N - 1);
  if (lse) copyFloats(lse, acc_lse, B * Lr * H);
}

// ------------------------------------------------------------------------------------------------------ RingKV
void ringKV(Communicator& comm, const Geometry& g, const float* q, const float* k, const float* v, float* out,
            float* lse, SpAttentionStats& st, Workspace& ws) {
  const int N = g.N, r = g.r;
  const size_t B = g.B(), H = static_cast<size_t>(g.shape.heads), D = static_cast<size_t>(g.shape.head_dim);
  const size_t Lr = g.L(r);
  Workspace::Frame frame(ws);
  float* const acc_lse = frame.get<float>(B * Lr * H).data();
  std::fill(acc_lse, acc_lse + B * Lr * H, kNegInf);
  std::fill(out, out + B * Lr * H * D, 0.f);
  st.step_compute_s.assign(static_cast<size_t>(N), 0);
  st.step_comm_s.assign(static_cast<size_t>(N), 0);
  const int prev = ring::prev(r, N), next = ring::next(r, N);
  std::vector<Request> sends(static_cast<size_t>(N)), recvs(static_cast<size_t>(N));
  auto kvFloats = [&](int owner) { return 2 * B * g.L(owner) * g.kvrow; };
  // Three [K | V] buffers in turn (step s computes on s % 3), each as large as the largest shard it holds.
  size_t kvmax[3] = {kvFloats(r), 0, 0};
  for (int s = 0; s + 1 < N; ++s)
    kvmax[(s + 1) % 3] = std::max(kvmax[(s + 1) % 3], kvFloats(ring::wrap(r, -(s + 1), N)));
  float* const kvbuf[3] = {frame.get<float>(kvmax[0]).data(), frame.get<float>(kvmax[1]).data(),
                           frame.get<float>(kvmax[2]).data()};
  // Packed [K | V] of my shard.
  copyFloats(kvbuf[0], k, B * Lr * g.kvrow);
  copyFloats(kvbuf[0] + B * Lr * g.kvrow, v, B * Lr * g.kvrow);
  auto waitTimed = [&](Request& req, int s) {
    detail::Stopwatch t(st.step_comm_s[static_cast<size_t>(s)]);
    comm.wait(req, comm.deadline());
  };
  for (int s = 0; s < N; ++s) {
    const int owner = ring::wrap(r, -s, N);  // whose K/V I hold at step s
    const float* kv = kvbuf[s % 3];
    if (s > 0) waitTimed(recvs[static_cast<size_t>(s)], s);
    if (s + 1 < N) {
      if (s >= 2) waitTimed(sends[static_cast<size_t>(s - 2)], s);
      const int o2 = ring::wrap(r, -(s + 1), N);
      recvs[static_cast<size_t>(s + 1)] =
          comm.irecv(kvbuf[(s + 1) % 3], kvFloats(o2) * 4, prev, tags::make(tags::kSpForward, s + 1));
      sends[static_cast<size_t>(s)] = comm.isend(kv, kvFloats(owner) * 4, next, tags::make(tags::kSpForward, s + 1));
      st.bytes_fwd += kvFloats(owner) * 4;
    }
    detail::Stopwatch t(st.step_compute_s[static_cast<size_t>(s)]);
    const size_t Lo = g.L(owner);
    attendInto(g, q, static_cast<int64_t>(Lr), g.S(r), kv, kv + B * Lo * g.kvrow, static_cast<int64_t>(Lo), g.S(owner),
               out, acc_lse, comm, ws);
  }
  for (auto& rq : sends) waitTimed(rq, N - 1);
  if (lse) copyFloats(lse, acc_lse, B * Lr * H);
}

// ------------------------------------------------------------------------------------------------- AllGatherKV
void allGatherKV(Communicator& comm, const Geometry& g, const float* q, const float* k, const float* v, float* out,
                 float* lse, SpAttentionStats& st, Workspace& ws) {
  const int N = g.N, r = g.r;
  const size_t B = g.B(), H = static_cast<size_t>(g.shape.heads), D = static_cast<size_t>(g.shape.head_dim);
  const size_t S = static_cast<size_t>(g.shape.seq_len), Lr = g.L(r);
  Workspace::Frame frame(ws);
  float* const kfull = frame.get<float>(B * S * g.kvrow).data();
  float* const vfull = frame.get<float>(B * S * g.kvrow).data();
  std::vector<size_t> off(static_cast<size_t>(N) + 1, 0);
  for (int p = 0; p < N; ++p) off[static_cast<size_t>(p) + 1] = off[static_cast<size_t>(p)] + 2 * B * g.L(p) * g.kvrow;
  float* const recvbuf = frame.get<float>(off[static_cast<size_t>(N)]).data();
  float* const acc_lse = frame.get<float>(B * Lr * H).data();
  // My packed [K | V] lives in my slot of recvbuf and is sent to everyone.
  float* mine = recvbuf + off[static_cast<size_t>(r)];
  copyFloats(mine, k, B * Lr * g.kvrow);
  copyFloats(mine + B * Lr * g.kvrow, v, B * Lr * g.kvrow);
  std::vector<Request> reqs;
  const Tag tag = tags::make(tags::kSpAllToAll, 0);
  for (int p = 0; p < N; ++p)
    if (p != r) reqs.push_back(comm.irecv(recvbuf + off[static_cast<size_t>(p)], 2 * B * g.L(p) * g.kvrow * 4, p, tag));
  for (int i = 1; i < N; ++i) {
    const int p = (r + i) % N;
    reqs.push_back(comm.isend(mine, 2 * B * Lr * g.kvrow * 4, p, tag));
    st.bytes_fwd += 2 * B * Lr * g.kvrow * 4;
  }
  {
    detail::Stopwatch t(st.comm_s);
    comm.waitAll(reqs, comm.deadline());
  }
  detail::Stopwatch t(st.compute_s);
  // Assemble K and V in global order.
  for (int p = 0; p < N; ++p) {
    const float* src = recvbuf + off[static_cast<size_t>(p)];
    const size_t Lp = g.L(p);
    for (size_t b = 0; b < B; ++b) {
      int64_t row = 0;
      for (const auto& seg : g.S(p)) {
        const size_t n = static_cast<size_t>(seg.length) * g.kvrow;
        const size_t dst = (b * S + static_cast<size_t>(seg.global_offset)) * g.kvrow;
        const size_t srow = (b * Lp + static_cast<size_t>(row)) * g.kvrow;
        copyFloats(kfull + dst, src + srow, n);
        copyFloats(vfull + dst, src + B * Lp * g.kvrow + srow, n);
        row += seg.length;
      }
    }
  }
  std::fill(acc_lse, acc_lse + B * Lr * H, kNegInf);
  std::fill(out, out + B * Lr * H * D, 0.f);
  const std::vector<Segment> all{{0, static_cast<int64_t>(S)}};
  attendInto(g, q, static_cast<int64_t>(Lr), g.S(r), kfull, vfull, static_cast<int64_t>(S), all, out, acc_lse, comm,
             ws);
  if (lse) copyFloats(lse, acc_lse, B * Lr * H);
}

// All-to-all of variable-size float blocks: block p of `send` (offsets soff[p]..soff[p+1]) goes to rank p
// and lands in block p of `recv` (roff); my own block is copied. Adds the bytes sent and the wait time.
void allToAllv(Communicator& comm, const float* send, const std::vector<size_t>& soff, float* recv,
               const std::vector<size_t>& roff, Tag tag, uint64_t& bytes, double& wait_s) {
  const int N = comm.size(), r = comm.rank();
  auto at = [](const std::vector<size_t>& v, int p) { return v[static_cast<size_t>(p)]; };
  std::vector<Request> reqs;
  for (int p = 0; p < N; ++p)
    if (p != r) reqs.push_back(comm.irecv(recv + at(roff, p), (at(roff, p + 1) - at(roff, p)) * 4, p, tag));
  for (int i = 1; i < N; ++i) {  // start with the next rank so that not every rank hits rank 0 first
    const int p = (r + i) % N;
    const size_t n = at(soff, p + 1) - at(soff, p);
    reqs.push_back(comm.isend(send + at(soff, p), n * 4, p, tag));
    bytes += n * 4;
  }
  copyFloats(recv + at(roff, r), send + at(soff, r), (at(soff, r + 1) - at(soff, r)));
  detail::Stopwatch t(wait_s);
  comm.waitAll(reqs, comm.deadline());
}

// ----------------------------------------------------------------------------------------------------- Ulysses
// Ulysses in two halves around the attention, so that the two-level schemes can run a ring in between:
// ulyssesIn turns my sequence shard into full-sequence tensors of my heads (qf [B, S, hq, D], kf/vf
// [B, S, hk_local, D], S = g.shape.seq_len, rows at the segments' offsets), ulyssesOut sends rows of of/lf
// ([B, S, hq, D] / [B, S, hq]) back to their ranks' out/lse.
// The buffers of one call, from the caller's frame (ulyssesIn takes the first five, ulyssesOut the last two).
struct UlyssesBuffers {
  float *sendbuf = nullptr, *recvbuf = nullptr, *qf = nullptr, *kf = nullptr, *vf = nullptr, *of = nullptr,
        *lf = nullptr, *obuf = nullptr, *orecv = nullptr;
};
struct UlyssesHeads {
  Range myq, mykv;
  size_t hq = 0, hk = 0, hk_local = 0;
  bool aligned = true;
};
Range ulyssesQHeads(const Geometry& g, int p) { return detail::part(static_cast<size_t>(g.shape.heads), g.N, p); }
Range ulyssesKvHeads(const Geometry& g, int p) {
  const size_t grp = static_cast<size_t>(g.shape.heads / g.shape.kv_heads);
  const Range h = ulyssesQHeads(g, p);
  return h.size() == 0 ? Range{0, 0} : Range{h.begin / grp, (h.end - 1) / grp + 1};
}
UlyssesHeads ulyssesHeads(const Geometry& g) {
  const size_t grp = static_cast<size_t>(g.shape.heads / g.shape.kv_heads);
  UlyssesHeads u;
  u.myq = ulyssesQHeads(g, g.r);
  u.mykv = ulyssesKvHeads(g, g.r);
  u.hq = u.myq.size();
  u.hk = u.mykv.size();
  // When my query heads do not start on a KV group boundary (uneven splits), K/V are expanded to one head per
  // query head so the kernel's h / group mapping holds.
  u.aligned = u.hq == 0 || (u.myq.begin % grp == 0 && u.hq % grp == 0);
  u.hk_local = u.aligned ? u.hk : u.hq;
  return u;
}

void ulyssesIn(Communicator& comm, const Geometry& g, const float* q, const float* k, const float* v,
               UlyssesBuffers& ub, Workspace::Frame& frame, SpAttentionStats& st) {
  const int N = g.N, r = g.r;
  const size_t B = g.B(), D = static_cast<size_t>(g.shape.head_dim);
  const size_t S = static_cast<size_t>(g.shape.seq_len), Lr = g.L(r);
  const size_t H = static_cast<size_t>(g.shape.heads), Hkv = static_cast<size_t>(g.shape.kv_heads), grp = H / Hkv;
  auto qh = [&](int p) { return ulyssesQHeads(g, p); };
  auto kvh = [&](int p) { return ulyssesKvHeads(g, p); };
  const UlyssesHeads u = ulyssesHeads(g);
  const size_t hq = u.hq, hk = u.hk;
  // Message to p: my rows of p's heads: [Q (B, Lr, |qh p|, D) | K (B, Lr, |kvh p|, D) | V (same)].
  auto inFloats = [&](int p, size_t rows) { return B * rows * (qh(p).size() + 2 * kvh(p).size()) * D; };
  std::vector<size_t> soff(static_cast<size_t>(N) + 1, 0), roff(static_cast<size_t>(N) + 1, 0);
  for (int p = 0; p < N; ++p) {
    soff[static_cast<size_t>(p) + 1] = soff[static_cast<size_t>(p)] + inFloats(p, Lr);
    roff[static_cast<size_t>(p) + 1] = roff[static_cast<size_t>(p)] + B * g.L(p) * (hq + 2 * hk) * D;
  }
  ub.sendbuf = frame.get<float>(soff[static_cast<size_t>(N)]).data();
  ub.recvbuf = frame.get<float>(roff[static_cast<size_t>(N)]).data();
  {
    detail::Stopwatch t(st.compute_s);
    for (int p = 0; p < N; ++p) {
      float* dst = ub.sendbuf + soff[static_cast<size_t>(p)];
      const Range hp = qh(p), kp = kvh(p);
      for (size_t row = 0; row < B * Lr; ++row) {
        copyFloats(dst + row * hp.size() * D, q + row * H * D + hp.begin * D, hp.size() * D);
      }
      dst += B * Lr * hp.size() * D;
      for (const float* src : {k, v}) {
        for (size_t row = 0; row < B * Lr; ++row)
          copyFloats(dst + row * kp.size() * D, src + row * Hkv * D + kp.begin * D, kp.size() * D);
        dst += B * Lr * kp.size() * D;
      }
    }
  }
  const Tag tin = tags::make(tags::kSpAllToAll, 1);
  allToAllv(comm, ub.sendbuf, soff, ub.recvbuf, roff, tin, st.bytes_fwd, st.comm_s);
  // Full-sequence tensors of my heads, in global order.
  const size_t hk_local = u.hk_local;
  detail::Stopwatch t(st.compute_s);
  ub.qf = frame.get<float>(B * S * hq * D).data();
  ub.kf = frame.get<float>(B * S * hk_local * D).data();
  ub.vf = frame.get<float>(B * S * hk_local * D).data();
  for (int p = 0; p < N; ++p) {
    const float* src = ub.recvbuf + roff[static_cast<size_t>(p)];
    const size_t Lp = g.L(p);
    const float* sq = src;
    const float* sk = src + B * Lp * hq * D;
    const float* sv = sk + B * Lp * hk * D;
    for (size_t b = 0; b < B; ++b) {
      int64_t row = 0;
      for (const auto& seg : g.S(p)) {
        for (int64_t i = 0; i < seg.length; ++i) {
          const size_t lrow = b * Lp + static_cast<size_t>(row + i);
          const size_t grow = b * S + static_cast<size_t>(seg.global_offset + i);
          copyFloats(ub.qf + grow * hq * D, sq + lrow * hq * D, hq * D);
          if (u.aligned) {
            copyFloats(ub.kf + grow * hk * D, sk + lrow * hk * D, hk * D);
            copyFloats(ub.vf + grow * hk * D, sv + lrow * hk * D, hk * D);
          } else {
            for (size_t h = 0; h < hq; ++h) {
              const size_t kh = (u.myq.begin + h) / grp - u.mykv.begin;
              copyFloats(ub.kf + (grow * hq + h) * D, sk + (lrow * hk + kh) * D, D);
              copyFloats(ub.vf + (grow * hq + h) * D, sv + (lrow * hk + kh) * D, D);
            }
          }
        }
        row += seg.length;
      }
    }
  }
}

void ulyssesOut(Communicator& comm, const Geometry& g, UlyssesBuffers& ub, Workspace::Frame& frame, float* out,
                float* lse, SpAttentionStats& st) {
  const int N = g.N, r = g.r;
  const size_t B = g.B(), D = static_cast<size_t>(g.shape.head_dim);
  const size_t S = static_cast<size_t>(g.shape.seq_len), Lr = g.L(r), H = static_cast<size_t>(g.shape.heads);
  const size_t lw = lse ? 1 : 0;  // lse floats per (row, head) in the messages back
  const size_t hq = ulyssesHeads(g).hq;
  {
    // Back to sequence-sharded: rank p gets its rows of my heads, [out (B, Lp, hq, D) | lse (B, Lp, hq)] (the
    // lse part only when the call asks for lse, which every rank agrees on: checkInputs).
    detail::Stopwatch t(st.compute_s);
    ub.obuf = frame.get<float>(B * S * hq * (D + lw)).data();
    size_t o = 0;
    for (int p = 0; p < N; ++p) {
      for (size_t b = 0; b < B; ++b)
        for (const auto& seg : g.S(p)) {
          const size_t n = static_cast<size_t>(seg.length) * hq * D;
          copyFloats(ub.obuf + o, ub.of + (b * S + static_cast<size_t>(seg.global_offset)) * hq * D, n);
          o += n;
        }
      if (lw == 0) continue;
      for (size_t b = 0; b < B; ++b)
        for (const auto& seg : g.S(p)) {
          const size_t n = static_cast<size_t>(seg.length) * hq;
          copyFloats(ub.obuf + o, ub.lf + (b * S + static_cast<size_t>(seg.global_offset)) * hq, n);
          o += n;
        }
    }
  }
  std::vector<size_t> ooff(static_cast<size_t>(N) + 1, 0), rooff(static_cast<size_t>(N) + 1, 0);
  for (int p = 0; p < N; ++p) {
    ooff[static_cast<size_t>(p) + 1] = ooff[static_cast<size_t>(p)] + B * g.L(p) * hq * (D + lw);
    rooff[static_cast<size_t>(p) + 1] = rooff[static_cast<size_t>(p)] + B * Lr * ulyssesQHeads(g, p).size() * (D + lw);
  }
  ub.orecv = frame.get<float>(rooff[static_cast<size_t>(N)]).data();
  const Tag tout = tags::make(tags::kSpAllToAll, 2);
  allToAllv(comm, ub.obuf, ooff, ub.orecv, rooff, tout, st.bytes_bwd, st.comm_s);
  detail::Stopwatch t(st.compute_s);
  for (int p = 0; p < N; ++p) {
    const Range hp = ulyssesQHeads(g, p);
    const float* src = ub.orecv + rooff[static_cast<size_t>(p)];
    for (size_t row = 0; row < B * Lr; ++row)
      copyFloats(out + row * H * D + hp.begin * D, src + row * hp.size() * D, hp.size() * D);
    if (lw == 0) continue;
    const float* lsrc = src + B * Lr * hp.size() * D;
    for (size_t row = 0; row < B * Lr; ++row) copyFloats(lse + row * H + hp.begin, lsrc + row * hp.size(), hp.size());
  }
}

void ulysses(Communicator& comm, const Geometry& g, const float* q, const float* k, const float* v, float* out,
             float* lse, SpAttentionStats& st, Workspace& ws) {
  Workspace::Frame frame(ws);
  UlyssesBuffers ub;
  ulyssesIn(comm, g, q, k, v, ub, frame, st);
  const UlyssesHeads u = ulyssesHeads(g);
  const size_t B = g.B(), D = static_cast<size_t>(g.shape.head_dim), S = static_cast<size_t>(g.shape.seq_len);
  {
    detail::Stopwatch t(st.compute_s);
    ub.of = frame.get<float>(B * S * u.hq * D).data();
    ub.lf = frame.get<float>(B * S * u.hq).data();
    if (u.hq > 0 && S > 0) {
      BlockAttentionOptions bo;
      bo.causal = g.causal;
      bo.scale = g.scale;
      bo.progress = [&comm] { comm.progress(); };
      bo.workspace = &ws;
      AttentionShape as{g.shape.batch,          static_cast<int>(S),          static_cast<int>(S),
                        static_cast<int>(u.hq), static_cast<int>(u.hk_local), g.shape.head_dim};
      blockAttention(ub.qf, ub.kf, ub.vf, as, bo, ub.of, ub.lf);
    }
  }
  ulyssesOut(comm, g, ub, frame, out, lse, st);
}

// -------------------------------------------------------------------------------------------------- Two-level
// Node n's combined sequence: the segments of its ranks, in global order, adjacent ones merged.
std::vector<Segment> nodeSegments(const std::vector<int>& members, int64_t seq_len, int N, SeqLayout layout) {
  std::vector<Segment> all;
  for (int p : members)
    for (const auto& g : localSegments(seq_len, N, p, layout))
      if (g.length > 0) all.push_back(g);
  std::sort(all.begin(), all.end(),
            [](const Segment& a, const Segment& b) { return a.global_offset < b.global_offset; });
  std::vector<Segment> merged;
  for (const auto& g : all) {
    if (!merged.empty() && merged.back().global_offset + merged.back().length == g.global_offset)
      merged.back().length += g.length;
    else
      merged.push_back(g);
  }
  return merged;
}

// Row of global position `pos` in a combined sequence `ns` (pos must lie in it).
int64_t combinedRow(const std::vector<Segment>& ns, int64_t pos) {
  int64_t row = 0;
  for (const auto& g : ns) {
    if (pos >= g.global_offset && pos < g.global_offset + g.length) return row + (pos - g.global_offset);
    row += g.length;
  }
  throw Error(fmt::format("two-level SP: position {} is in no segment of its node", pos));
}

void twoLevel(Communicator& comm, const std::vector<std::vector<int>>& members, SpScheme scheme, const SpShape& shape,
              const SpAttentionOptions& o, const float* q, const float* k, const float* v, float* out, float* lse,
              SpAttentionStats& st, Workspace& ws) {
  const int R = static_cast<int>(members.size()), K = static_cast<int>(members[0].size()), N = comm.size();
  int node = -1, local = -1;
  for (int n = 0; n < R; ++n)
    for (int j = 0; j < K; ++j)
      if (members[static_cast<size_t>(n)][static_cast<size_t>(j)] == comm.rank()) node = n, local = j;
  const auto& mine = members[static_cast<size_t>(node)];
  std::vector<std::vector<Segment>> node_segs;
  for (const auto& m : members) node_segs.push_back(nodeSegments(m, shape.seq_len, N, o.layout));
  const auto& ns = node_segs[static_cast<size_t>(node)];
  // The rows of each of my node's ranks, as segments of the node's combined sequence.
  std::vector<std::vector<Segment>> intra_segs(static_cast<size_t>(K));
  int64_t Lnode = 0;
  for (const auto& g : ns) Lnode += g.length;
  for (int j = 0; j < K; ++j)
    for (const auto& g : localSegments(shape.seq_len, N, mine[static_cast<size_t>(j)], o.layout))
      if (g.length > 0) intra_segs[static_cast<size_t>(j)].push_back({combinedRow(ns, g.global_offset), g.length});
  // Inside the node: its ranks; across nodes: the rank of each node with my local index (same heads). The two
  // never share a pair of ranks (one pair is on one node, the other on two), as group_comm.h requires.
  GroupCommunicator intra(comm, mine);
  std::vector<int> ring;
  for (const auto& m : members) ring.push_back(m[static_cast<size_t>(local)]);
  GroupCommunicator inter(comm, ring);
  SpShape is = shape;
  is.seq_len = Lnode;
  const Geometry gi(K, local, is, o, std::move(intra_segs));
  Workspace::Frame frame(ws);
  UlyssesBuffers ub;
  ulyssesIn(intra, gi, q, k, v, ub, frame, st);
  const UlyssesHeads u = ulyssesHeads(gi);
  const size_t B = gi.B(), D = static_cast<size_t>(shape.head_dim), L = static_cast<size_t>(Lnode);
  ub.of = frame.get<float>(B * L * u.hq * D).data();
  ub.lf = frame.get<float>(B * L * u.hq).data();
  std::fill(ub.of, ub.of + B * L * u.hq * D, 0.f);
  std::fill(ub.lf, ub.lf + B * L * u.hq, kNegInf);
  if (u.hq > 0) {  // the same on every rank of my ring (it depends on my local index only)
    const SpShape es{shape.batch, shape.seq_len, static_cast<int>(u.hq), static_cast<int>(u.hk_local), shape.head_dim};
    const Geometry ge(R, node, es, o, node_segs);
    SpAttentionStats rs;
    if (scheme == SpScheme::UlyssesTokenRing)
      tokenRing(inter, ge, ub.qf, ub.kf, ub.vf, ub.of, ub.lf, rs, ws);
    else
      ringKV(inter, ge, ub.qf, ub.kf, ub.vf, ub.of, ub.lf, rs, ws);
    st.bytes_fwd += rs.bytes_fwd;
    st.bytes_bwd += rs.bytes_bwd;
    st.bytes_inter += rs.bytes_fwd + rs.bytes_bwd;
    st.compute_s += rs.compute_s;
    st.comm_s += rs.comm_s;
    st.step_compute_s = std::move(rs.step_compute_s);
    st.step_comm_s = std::move(rs.step_comm_s);
  }
  ulyssesOut(intra, gi, ub, frame, out, lse, st);
}

// Local checks; throws before any message.
void checkArgsLocal(Communicator& comm, const float* q, const float* k, const float* v, const SpShape& s,
                    const SpAttentionOptions& o, const float* out) {
  const int r = comm.rank();
  if (s.batch < 1 || s.seq_len < 1 || s.heads < 1 || s.kv_heads < 1 || s.head_dim < 1)
    throw InvalidArgument(fmt::format("spAttention: batch, seq_len, heads, kv_heads and head_dim must be positive "
                                      "(got batch={} seq_len={} heads={} kv_heads={} head_dim={})",
                                      s.batch, s.seq_len, s.heads, s.kv_heads, s.head_dim),
                          r);
  if (s.heads % s.kv_heads != 0)
    throw InvalidArgument(
        fmt::format("spAttention: heads ({}) must be a multiple of kv_heads ({})", s.heads, s.kv_heads), r);
  if (s.seq_len > std::numeric_limits<int>::max())
    throw InvalidArgument(fmt::format("spAttention: seq_len {} is too long", s.seq_len), r);
  if (localLength(s.seq_len, comm.size(), r, o.layout) > 0 && (!q || !k || !v || !out))
    throw InvalidArgument("spAttention: null q, k, v or out", r);
  if (!std::isfinite(o.scale) || o.scale < 0)
    throw InvalidArgument(fmt::format("spAttention: bad scale {}", o.scale), r);
}

// Same shape, options, node layout and resolved scheme on every rank (one message round), else every rank fails.
void checkInputs(Communicator& comm, const SpShape& s, const SpAttentionOptions& o, const float* lse, SpScheme resolved,
                 const SpNodeLayout& nl) {
  const int r = comm.rank();
  // Same shape and options everywhere, or every rank fails with the values named.
  // Fold every field through splitmix64 so different shapes cannot cancel out as shifted XORs could.
  uint64_t key = 0;
  for (uint64_t f :
       {static_cast<uint64_t>(s.seq_len), static_cast<uint64_t>(s.batch), static_cast<uint64_t>(s.heads),
        static_cast<uint64_t>(s.kv_heads), static_cast<uint64_t>(s.head_dim), static_cast<uint64_t>(o.layout),
        static_cast<uint64_t>(o.causal), static_cast<uint64_t>(o.scheme), static_cast<uint64_t>(lse != nullptr),
        static_cast<uint64_t>(resolved), static_cast<uint64_t>(nl.nodes), static_cast<uint64_t>(nl.ranks_per_node)}) {
    uint64_t z = key ^ f;
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    key = z ^ (z >> 31);
  }
  checkSameOnAllRanks(
      comm, key,
      fmt::format("spAttention shape/options (rank {}: batch={} seq_len={} heads={} kv_heads={} head_dim={} layout={} "
                  "causal={} scheme={}{} lse={} nodes={}x{})",
                  r, s.batch, s.seq_len, s.heads, s.kv_heads, s.head_dim,
                  o.layout == SeqLayout::Zigzag ? "zigzag" : "contiguous", o.causal, spSchemeName(o.scheme),
                  o.scheme == resolved ? std::string() : "->" + spSchemeName(resolved), lse ? "requested" : "none",
                  nl.nodes, nl.ranks_per_node)
          .c_str());
}

}  // namespace

void spAttention(Communicator& comm, const float* q, const float* k, const float* v, const SpShape& shape,
                 const SpAttentionOptions& options, float* out, SpAttentionStats* stats) {
  spAttention(comm, q, k, v, shape, options, out, nullptr, stats);
}

void spAttention(Communicator& comm, const float* q, const float* k, const float* v, const SpShape& shape,
                 const SpAttentionOptions& options, float* out, float* lse, SpAttentionStats* stats) {
  SpAttentionStats local;
  SpAttentionStats& st = stats ? *stats : local;
  st = SpAttentionStats{};
  detail::abortOnError(comm, "spAttention", [&] {
    checkArgsLocal(comm, q, k, v, shape, options, out);
    SpAttentionOptions o = options;
    if (o.scale == 0.f) o.scale = 1.f / std::sqrt(static_cast<float>(shape.head_dim));
    const CostModel fallback;
    const CostModel& model = options.model ? *options.model : fallback;
    // The node layout (identical on every rank); unequal nodes are an error for the two-level schemes only, and
    // Auto then prices the group as one node.
    const auto members = nodeMembers(comm);
    std::string unequal;
    const SpNodeLayout nl = nodeLayoutOf(members, unequal);
    if (o.scheme == SpScheme::Auto) o.scheme = comm.size() == 1 ? SpScheme::AllGatherKV : model.choose(shape, nl, o);
    if (spSchemeIsTwoLevel(o.scheme) && !unequal.empty())
      throw InvalidArgument(fmt::format("spAttention {}: rank {}: {} (Communicator::nodeIds)", spSchemeName(o.scheme),
                                        comm.rank(), unequal),
                            comm.rank());
    checkInputs(comm, shape, options, lse, o.scheme, nl);
    st.scheme = o.scheme;
    st.predicted_s = model.predict(o.scheme, shape, nl, o);
    const Geometry g(comm.size(), comm.rank(), shape, o);
    Workspace& ws = options.workspace != nullptr ? *options.workspace : comm.workspace();
    switch (o.scheme) {
      case SpScheme::TokenRing:
        tokenRing(comm, g, q, k, v, out, lse, st, ws);
        break;
      case SpScheme::RingKV:
        ringKV(comm, g, q, k, v, out, lse, st, ws);
        break;
      case SpScheme::Ulysses:
        ulysses(comm, g, q, k, v, out, lse, st, ws);
        break;
      case SpScheme::AllGatherKV:
        allGatherKV(comm, g, q, k, v, out, lse, st, ws);
        break;
      case SpScheme::UlyssesTokenRing:
      case SpScheme::UlyssesRingKV:
        twoLevel(comm, members, o.scheme, shape, o, q, k, v, out, lse, st, ws);
        break;
      case SpScheme::Auto:
        break;
    }
    // The ring schemes time each step; their totals are the sums.
    for (double t : st.step_compute_s) st.compute_s += t;
    for (double t : st.step_comm_s) st.comm_s += t;
  });
}

}  // namespace flashring
