// The per-row math of exact attention shared by the CPU and CUDA kernels (FR_HD: host and device): the online
// softmax of one query row over a key block, returning (out, lse), and the log-sum-exp merge of two partial
// results. attention.h gives the layouts and the conventions these follow (BSHD, GQA head mapping, causal
// masking by global positions, out = 0 and lse = -inf for a row that sees no key). Everything is fp32 with
// exp/log of the platform (std:: on the host, CUDA's full-precision expf/log1pf on the device), so CPU and GPU
// agree to a few ulp, not bit for bit; the tests hold both to blockAttentionReference (fp64).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace flashring::attn::detail {
namespace {

FR_HD float negInfF() { return -__builtin_huge_valf(); }
#if defined(__CUDA_ARCH__)
FR_HD float expF(float x) { return expf(x); }
FR_HD float logF(float x) { return logf(x); }
FR_HD float log1pF(float x) { return log1pf(x); }
#else
FR_HD float expF(float x) { return __builtin_expf(x); }
FR_HD float logF(float x) { return __builtin_logf(x); }
FR_HD float log1pF(float x) { return __builtin_log1pf(x); }
#endif

// Geometry of one block call, in elements.
struct RowGeometry {
  int q_len, kv_len, heads, kv_heads, head_dim;
  bool causal;
  int64_t q_offset, k_offset;
  float scale;
};

// Query row (b, i, h): reads q[b, i, h, :], k/v[b, :, h / (heads / kv_heads), :], writes out[b, i, h, :] and
// lse[b, i, h]. Load(p, idx) widens an element of the input type to fp32; Store(p, idx, v) narrows. acc:
// head_dim floats of scratch. Online softmax: running max m and denominator l, the accumulator rescaled by
// exp(m_old - m_new) when the max grows.
template <class T, class Load, class Store>
FR_HD void attentionRow(const T* q, const T* k, const T* v, const RowGeometry& g, int b, int i, int h, float* acc,
                        T* out, float* lse, Load load, Store store) {
  const int group = g.heads / g.kv_heads, kvh = h / group, d = g.head_dim;
  const int64_t q_row = ((static_cast<int64_t>(b) * g.q_len + i) * g.heads + h) * d;
  const int64_t kv_stride = static_cast<int64_t>(g.kv_heads) * d;
  const int64_t kv_base = static_cast<int64_t>(b) * g.kv_len * kv_stride + static_cast<int64_t>(kvh) * d;
  int visible = g.kv_len;  // keys j < visible are seen: key position k_offset + j <= query position q_offset + i
  if (g.causal) {
    const int64_t last = g.q_offset + i - g.k_offset;  // largest visible j
    visible = last < 0 ? 0 : (last + 1 < g.kv_len ? static_cast<int>(last + 1) : g.kv_len);
  }
  for (int c = 0; c < d; ++c) acc[c] = 0.0f;
  float m = negInfF(), l = 0.0f;
  for (int j = 0; j < visible; ++j) {
    const int64_t kr = kv_base + j * kv_stride;
    float s = 0.0f;
    for (int c = 0; c < d; ++c) s += load(q, q_row + c) * load(k, kr + c);
    s *= g.scale;
    if (s > m) {
      const float alpha = expF(m - s);  // exp(-inf) = 0 on the first key
      for (int c = 0; c < d; ++c) acc[c] *= alpha;
      l *= alpha;
      m = s;
    }
    const float p = expF(s - m);
    l += p;
    for (int c = 0; c < d; ++c) acc[c] += p * load(v, kr + c);
  }
  const int64_t lse_i = (static_cast<int64_t>(b) * g.q_len + i) * g.heads + h;
  if (visible == 0 || !(l > 0.0f)) {
    for (int c = 0; c < d; ++c) store(out, q_row + c, 0.0f);
    lse[lse_i] = negInfF();
    return;
  }
  const float inv = 1.0f / l;
  for (int c = 0; c < d; ++c) store(out, q_row + c, acc[c] * inv);
  lse[lse_i] = m + logF(l);
}

// Merge of one (row, head) pair, in place (attention.h's mergeAttention): a side with lse = -inf has weight 0
// and the other side is taken bit for bit.
FR_HD void mergePair(float* o, float* lse, const float* ob, float lb, int head_dim) {
  const float la = *lse;
  if (lb == negInfF()) return;
  if (la == negInfF()) {
    for (int c = 0; c < head_dim; ++c) o[c] = ob[c];
    *lse = lb;
    return;
  }
  const bool a_max = la >= lb;
  const float mx = a_max ? la : lb;
  const float mn = a_max ? lb : la;
  const float e = expF(mn - mx);
  const float w_max = 1.f / (1.f + e);
  const float w_min = e * w_max;
  const float wa = a_max ? w_max : w_min;
  const float wb = a_max ? w_min : w_max;
  for (int c = 0; c < head_dim; ++c) o[c] = wa * o[c] + wb * ob[c];
  *lse = mx + log1pF(e);
}

}  // namespace
}  // namespace flashring::attn::detail
