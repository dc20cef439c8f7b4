// Pass-Q attention of a few new queries over a sharded KV cache (include/flashring/sp_attention.h).
#include <fmt/format.h>

#include <cstring>
#include <limits>
#include <vector>

#include "collectives/common.h"
#include "comm/tags.h"
#include "flashring/attention.h"
#include "flashring/sp_attention.h"

namespace flashring {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// This rank's partial: its cache against the queries. Causal on the owner (its cache ends with the queries'
// own tokens), full elsewhere. An empty cache gives out = 0, lse = -inf.
void partial(const float* q, const float* k, const float* v, int64_t kv_len, const SpQueryShape& s, bool owner,
             float* out, float* lse) {
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
  blockAttention(q, k, v, as, bo, out, lse);
}

}  // namespace

void spPassQAttention(Communicator& c, int owner, const float* q, const float* k, const float* v, int64_t kv_len,
                      const SpQueryShape& s, int step, float* out, SpAttentionStats* stats) {
  SpAttentionStats local;
  SpAttentionStats& st = stats != nullptr ? *stats : local;
  const int S = c.size(), me = c.rank();
  if (owner < 0 || owner >= S)
    throw InvalidArgument(fmt::format("spPassQAttention: owner {} outside [0, {})", owner, S), me);
  if (s.q_len < 1 || s.heads < 1 || s.kv_heads < 1 || s.head_dim < 1 || s.heads % s.kv_heads != 0)
    throw InvalidArgument(fmt::format("spPassQAttention: bad shape q_len {} heads {} kv_heads {} head_dim {}", s.q_len,
                                      s.heads, s.kv_heads, s.head_dim),
                          me);
  if (kv_len < 0 || (me == owner && kv_len < s.q_len))
    throw InvalidArgument(
        fmt::format("spPassQAttention: cache of {} entries on rank {} (the owner's holds the {} new tokens)", kv_len,
                    me, s.q_len),
        me);
  const size_t qdim = static_cast<size_t>(s.q_len) * s.heads * s.head_dim;
  const size_t part_floats = qdim + static_cast<size_t>(s.q_len) * s.heads;
  const int next = (me + 1) % S, prev = (me + S - 1) % S;
  const Tag tq = tags::make(tags::kEngineDecodeQ, step), to = tags::make(tags::kEngineDecodeOut, step);
  st.scheme = SpScheme::TokenRing;
  if (me == owner) {
    Request fwd;
    if (S > 1) {
      fwd = c.isend(q, qdim * sizeof(float), next, tq);
      st.bytes_fwd += qdim * sizeof(float);
    }
    std::vector<float> parts(part_floats * static_cast<size_t>(S));
    std::vector<Request> recvs;
    for (int r = 0; r < S; ++r)
      if (r != me) recvs.push_back(c.irecv(parts.data() + part_floats * r, part_floats * sizeof(float), r, to));
    float* mine = parts.data() + part_floats * static_cast<size_t>(me);
    {
      detail::Stopwatch sw(st.compute_s);
      partial(q, k, v, kv_len, s, true, mine, mine + qdim);
    }
    {
      detail::Stopwatch sw(st.comm_s);
      if (fwd.valid()) c.wait(fwd, c.deadline());
      c.waitAll(recvs, c.deadline());
    }
    detail::Stopwatch sw(st.compute_s);
    std::memcpy(out, parts.data(), qdim * sizeof(float));
    std::vector<float> lse(parts.begin() + static_cast<std::ptrdiff_t>(qdim),
                           parts.begin() + static_cast<std::ptrdiff_t>(part_floats));
    for (int r = 1; r < S; ++r) {
      const float* p = parts.data() + part_floats * static_cast<size_t>(r);
      mergeAttention(out, lse.data(), p, p + qdim, s.q_len, s.heads, s.head_dim);
    }
  } else {
    std::vector<float> qin(qdim), part(part_floats);
    Request r = c.irecv(qin.data(), qdim * sizeof(float), prev, tq);
    {
      detail::Stopwatch sw(st.comm_s);
      c.wait(r, c.deadline());
    }
    Request fwd;
    if (next != owner) {
      fwd = c.isend(qin.data(), qdim * sizeof(float), next, tq);
      st.bytes_fwd += qdim * sizeof(float);
    }
    {
      detail::Stopwatch sw(st.compute_s);
      partial(qin.data(), k, v, kv_len, s, false, part.data(), part.data() + qdim);
    }
    Request back = c.isend(part.data(), part_floats * sizeof(float), owner, to);
    st.bytes_bwd += part_floats * sizeof(float);
    detail::Stopwatch sw(st.comm_s);
    if (fwd.valid()) c.wait(fwd, c.deadline());
    c.wait(back, c.deadline());
  }
}

}  // namespace flashring
