// Exact attention building blocks: the block kernel that returns (out, lse), and the log-sum-exp merge.
//
// Sequence-parallel schemes (sp_attention.h) compute attention of a query block against one key/value
// block at a time and merge the partial results; both pieces live here. Everything is fp32.
//
// Layouts (row-major, contiguous):
//   q, out   [batch, q_len, heads, head_dim]          ("BSHD", as flash-attention)
//   k, v     [batch, kv_len, kv_heads, head_dim]
//   lse      [batch, q_len, heads]                     natural log of the softmax denominator, scaled
//                                                      scores included; -inf for a row with no visible key
// GQA/MQA: query head h reads key/value head h / (heads / kv_heads); nothing is copied or replicated.
// Causal masking uses global positions: query i of the block sits at q_offset + i, key j at
// k_offset + j, and the query sees the key iff key position <= query position. So a zigzag chunk or a
// block that follows a cached prefix is masked correctly by passing its offsets.
// A row that sees no key gets out = 0 and lse = -inf; merging it with anything leaves the other side
// unchanged (never NaN).
#pragma once

#include <cstdint>
#include <functional>

namespace flashring {

class Workspace;  // workspace.h

struct AttentionShape {
  int batch = 1;
  int q_len = 0;
  int kv_len = 0;
  int heads = 1;
  int kv_heads = 1;
  int head_dim = 64;
};

struct BlockAttentionOptions {
  bool causal = false;
  int64_t q_offset = 0;  // global position of the block's first query (causal only)
  int64_t k_offset = 0;  // global position of the block's first key (causal only)
  float scale = 0.f;     // softmax scale; 0 means 1/sqrt(head_dim)
  // Called between tiles, about every 0.5 ms of work (never more often; a call shorter than that may not
  // call it at all), so that a transport can move bytes while the kernel computes
  // (MpiCommunicator::progress). Keep it cheap. A blockAttention called from it on the same thread with the
  // same workspace runs in a frame nested in this call's (workspace.h), so it does not clobber this call.
  std::function<void()> progress;
  // Scratch memory (packed K/V, the running max/sum and the output accumulator): the caller's workspace, kept
  // between calls. nullptr: a workspace local to the call, so every call allocates and frees its scratch (one
  // allocation of the size below, plus its page faults when the allocator maps fresh memory for it).
  Workspace* workspace = nullptr;
};

// Throws InvalidArgument naming the bad field (non-positive sizes, heads % kv_heads != 0, null pointers).
void validate(const AttentionShape& s);

// out and lse are overwritten. Runs on the calling thread only: it never starts threads (callers run one
// rank per thread or process). Scratch memory comes from options.workspace: about 2 * kv_len * head_dim
// floats (one KV head's K and V, packed) plus a few row blocks. Accuracy against
// blockAttentionReference: max abs error <= 1e-5 on out and lse for scaled scores up to ~10-15 in
// magnitude (larger scores are limited by the fp32 rounding of the scores themselves). Deterministic: the
// same inputs give the same bits. Uses AVX2/FMA micro-kernels when the CPU has them, else OpenBLAS sgemm
// (which then sets OpenBLAS to one thread, process-wide, at its first use).
void blockAttention(const float* q, const float* k, const float* v, const AttentionShape& shape,
                    const BlockAttentionOptions& options, float* out, float* lse);

// Scalar reference: plain (not online) softmax in fp64, one query row at a time. Slow; for tests.
void blockAttentionReference(const float* q, const float* k, const float* v, const AttentionShape& shape,
                             const BlockAttentionOptions& options, float* out, float* lse);

// Merge a second partial result into the first, in place, over `rows` rows of `heads` heads each
// (rows = batch * q_len for whole blocks):
//   lse' = max + log1p(exp(min - max)),  out' = exp(lse_a - lse') out_a + exp(lse_b - lse') out_b
// Rows with lse_b = -inf keep (out_a, lse_a); rows with lse_a = -inf take (out_b, lse_b), bit for bit (the
// out of a -inf side is never read). rows = 0 does nothing. Agrees with mergeAttentionReference within
// 1e-6 on out and ~1 ulp on lse.
void mergeAttention(float* out, float* lse, const float* out_b, const float* lse_b, int64_t rows, int heads,
                    int head_dim);
// Scalar reference of the merge (fp64 inside).
void mergeAttentionReference(float* out, float* lse, const float* out_b, const float* lse_b, int64_t rows, int heads,
                             int head_dim);

}  // namespace flashring
