// Sequence-parallel exact attention: TokenRing and the baselines behind one call.
//
// Each rank holds a shard of the sequence: q [batch, local_len, heads, head_dim], k and v
// [batch, local_len, kv_heads, head_dim] (layouts as attention.h). The global sequence of `seq_len`
// tokens is cut into shards by `layout`:
//   Contiguous  rank r holds part r of N (parts differ by at most one token)
//   Zigzag      the sequence is cut into 2N chunks; rank r holds chunks r and 2N-1-r, concatenated,
//               which balances causal work across ranks
// localLength() says how many tokens a rank holds. Every scheme returns the exact attention output of
// the rank's own queries over the whole sequence (causal or not), differing only in data movement:
//   TokenRing    K/V stay; each rank's Q travels one hop per step (to rank r-1, so that under causal
//                zigzag the hops that need the whole Q come first and later hops carry only the half
//                that still has work), and the partial (out, lse) goes straight back to the Q's owner
//                on its own tag, while the next step computes. arXiv 2412.20501.
//   RingKV       ring attention: Q stays, K/V rotate one hop per step (to rank r+1), merged locally.
//   Ulysses      all-to-all to head-sharded full-sequence tensors (uneven head splits allowed; KV heads
//                replicated where query heads of a rank need them), local attention, all-to-all back.
//   AllGatherKV  all-gather K/V, local Q against the full sequence.
//   Two-level schemes, for SP groups spread over several nodes (USP's composition, with TokenRing across
//   nodes; arXiv 2405.07719). The group of N = R nodes x K ranks (Communicator::nodeIds(); every node must
//   hold the same number of ranks, else InvalidArgument) runs, on every rank:
//     1. Ulysses inside the node: an all-to-all among the node's K ranks turns the sequence-sharded Q/K/V
//        into head-sharded tensors over the node's combined sequence (the union of its ranks' shards, in
//        global order): query heads split K ways, KV heads replicated where query heads need them;
//     2. across nodes, among the R ranks that hold the same heads (one per node), the named ring:
//          ulysses+tokenring  (UlyssesTokenRing) TokenRing, each node's combined Q travelling
//          ulysses+ring-kv    (UlyssesRingKV)    ring attention, each node's combined K/V travelling
//        over the nodes' combined sequences (so causal zigzag over N ranks stays balanced over R nodes);
//     3. the inverse all-to-all inside the node (out, and lse when asked for).
//   The layout of the sequence is still `layout` over all N ranks, so the result is the other schemes'.
//   The intra- and inter-node groups never share a pair of ranks (group_comm.h). On one node they reduce
//   to Ulysses, on nodes of one rank to the ring.
//   Auto         the cost model (costmodel.h) picks per call from the shape, the measured link and
//                kernel speeds, the topology and the node layout (the two-level schemes are candidates
//                when the group spans several nodes of several ranks each).
// Partial results merge by log-sum-exp in fp32 (attention.h); the overload with lse also returns each row's
// log-sum-exp over the whole sequence (flash-attention's return_lse).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flashring/attention.h"
#include "flashring/comm.h"

namespace flashring {

enum class SpScheme { Auto, TokenRing, RingKV, Ulysses, AllGatherKV, UlyssesTokenRing, UlyssesRingKV };
enum class SeqLayout { Contiguous, Zigzag };

struct SpShape {
  int batch = 1;
  int64_t seq_len = 0;  // global
  int heads = 1;
  int kv_heads = 1;
  int head_dim = 64;
};

class CostModel;

struct SpAttentionOptions {
  SpScheme scheme = SpScheme::Auto;
  SeqLayout layout = SeqLayout::Zigzag;
  bool causal = true;
  float scale = 0.f;                 // 0: 1/sqrt(head_dim)
  const CostModel* model = nullptr;  // Auto: the calibrated model (nullptr: a default, uncalibrated one)
  // Scratch memory (Q/KV/result buffers, all-to-all staging, the block kernel's tiles): this rank's own
  // workspace, never another rank's (workspace.h); nullptr: the communicator's (Communicator::workspace()).
  Workspace* workspace = nullptr;
};

struct SpAttentionStats {
  SpScheme scheme = SpScheme::Auto;  // what ran
  double compute_s = 0;              // in the block kernel and merges
  double comm_s = 0;                 // blocked waiting for messages
  uint64_t bytes_fwd = 0;            // bytes this rank sent in the forward direction (Q / KV / all-to-all in)
  uint64_t bytes_bwd = 0;            // bytes sent back (results / all-to-all out)
  uint64_t bytes_inter = 0;          // two-level schemes: the part of bytes_fwd + bytes_bwd sent to other nodes (the
                                     // ring across nodes); 0 for the single-level schemes (not counted per peer)
  double predicted_s = 0;            // the cost model's prediction for the scheme that ran (0 if none)
  std::vector<double> step_compute_s, step_comm_s;  // per step, for the ring schemes
};

// Tokens rank `rank` of `ranks` holds, and their global positions as (offset, length) segments.
int64_t localLength(int64_t seq_len, int ranks, int rank, SeqLayout layout);
struct Segment {
  int64_t global_offset;
  int64_t length;
};
std::vector<Segment> localSegments(int64_t seq_len, int ranks, int rank, SeqLayout layout);

// The node layout of an SP group: `nodes` nodes of `ranks_per_node` ranks each.
struct SpNodeLayout {
  int nodes = 1;
  int ranks_per_node = 1;
  int ranks() const { return nodes * ranks_per_node; }
};
// From comm.nodeIds(). Throws InvalidArgument, naming the node sizes, unless every node holds the same number
// of ranks. The same on every rank (nodeIds() is).
SpNodeLayout spNodeLayout(const Communicator& comm);

// out: [batch, local_len, heads, head_dim]. Shapes and options must agree on every rank (checked).
void spAttention(Communicator& comm, const float* q, const float* k, const float* v, const SpShape& shape,
                 const SpAttentionOptions& options, float* out, SpAttentionStats* stats = nullptr);

// Same, and also the log-sum-exp of every query row over the whole sequence (as blockAttention returns it
// for the unsharded sequence, attention.h): lse [batch, local_len, heads], natural log, scaled scores
// included; what flash-attention returns as softmax_lse (there [batch, heads, seq]). Every scheme produces
// it: TokenRing, RingKV and AllGatherKV have it from their merges on the queries' own rank; Ulysses computes
// it on the head-sharded side and its all-to-all back carries it with out (1/head_dim more bytes back,
// counted in bytes_bwd).
// Invariants: out is bit-identical to the call without lse; lse agrees with single-rank blockAttention's
// lse within 1e-5. lse == nullptr is the call above. Asking for lse is part of the call's options: pass a
// non-null lse on every rank or on none (checked with the shape); a rank whose shard is empty passes any
// non-null pointer, which is not written.
void spAttention(Communicator& comm, const float* q, const float* k, const float* v, const SpShape& shape,
                 const SpAttentionOptions& options, float* out, float* lse, SpAttentionStats* stats = nullptr);

// Attention of q_len new queries held by `owner` over a KV cache sharded across the SP ranks, by passing
// Q (TokenRing's idea applied to decode, and to a short turn over a long cached prefix, where moving the
// few queries is far cheaper than moving the cache): the owner sends Q along the ring, every rank forwards
// it before attending it to its own cache and sends (out, lse) straight back to the owner, which merges
// the partials in SP-rank order (so the result does not depend on arrival order).
// Collective over `sp`. Every rank: k, v = its cache [kv_len, kv_heads, head_dim]. On the owner: q =
// [q_len, heads, head_dim]; its cache ends with the q_len new tokens' K/V (causal among them, every earlier
// entry visible), out receives [q_len, heads, head_dim]. Elsewhere q and out are not read (may be null) and
// the whole local cache precedes the new tokens. `step` keeps consecutive calls' messages apart (the
// engine passes the layer). Shapes must agree on every rank. workspace: the scratch memory of the call (the
// partials, the received Q or K/V, the kernel's tiles), as SpAttentionOptions::workspace; nullptr: sp's.
struct SpQueryShape {
  int q_len = 1;
  int heads = 1;
  int kv_heads = 1;
  int head_dim = 64;
};
void spPassQAttention(Communicator& sp, int owner, const float* q, const float* k, const float* v, int64_t kv_len,
                      const SpQueryShape& shape, int step, float* out, SpAttentionStats* stats = nullptr,
                      Workspace* workspace = nullptr);

// The same attention by passing the cache instead (pass-KV, Meta's context-parallel inference's other
// option): every other rank sends its K/V (a length, then the data) to the owner, which attends its queries
// to each rank's cache itself and merges in SP-rank order. The partials and their merge are pass-Q's, so
// the result is bitwise identical to spPassQAttention's; only what moves differs (2 kv_len * kv_heads *
// head_dim floats from every rank instead of Q along the ring and (out, lse) back) and where the work runs
// (all on the owner). Same arguments and contract as spPassQAttention.
void spPassKVAttention(Communicator& sp, int owner, const float* q, const float* k, const float* v, int64_t kv_len,
                       const SpQueryShape& shape, int step, float* out, SpAttentionStats* stats = nullptr,
                       Workspace* workspace = nullptr);

// Which of the two an appended turn should use: TokenRing (pass-Q) or AllGatherKV (pass-KV), from the link
// and kernel figures of `params` (CostModel::params(): latency, bandwidth, topology, kernel FLOP/s) for
// q_len new queries against `cache_per_rank` cached entries on each of `ranks` ranks:
//   pass-Q   (ranks-1) (latency + Q / bw)          Q along the ring, one hop after another
//            + attention of the queries to one cache  (all ranks at once)
//            + (ranks-1) (out, lse) / bw            into the owner (star; a mesh: one of them)
//   pass-KV  latency + (ranks-1) K/V / bw           every cache into the owner (star; a mesh: one)
//            + ranks x that attention               all on the owner
// Pass-KV when strictly lower. Depends only on its arguments: pass the same values on every rank (the mean
// cache length, global / ranks, not the rank's own). predicted_s, when given, receives both times.
struct CostModelParams;
SpScheme chooseAppendScheme(const CostModelParams& params, const SpQueryShape& shape, int64_t cache_per_rank, int ranks,
                            double* predicted_pass_q = nullptr, double* predicted_pass_kv = nullptr);

std::string spSchemeName(SpScheme s);
// tokenring, ring-kv, ulysses, allgather-kv, ulysses+tokenring, ulysses+ring-kv, auto
SpScheme spSchemeFromName(const std::string& name);
bool spSchemeIsTwoLevel(SpScheme s);  // UlyssesTokenRing, UlyssesRingKV

}  // namespace flashring
