// AVX2/FMA pieces of the block attention kernel: polynomial exp2, the online-softmax row update, the K
// panel packing and the two register-blocked micro-kernels (S = Q K^T and O = alpha O + P V).
//
// Micro-kernels. Both keep a 6 x 16 block of fp32 accumulators in 12 ymm registers (the classic Haswell
// sgemm shape: 6 broadcasts + 2 loads feed 12 FMAs per step):
//   S[6 rows][16 keys]  += Q[row][d] (broadcast) * Kpanel[d][16 keys]          over d < head_dim
//   O[6 rows][16 cols]  += P[row][j] (broadcast) * Vpanel[j][16 cols]         over the visible keys j
// Q rows are read from a packed copy, K from 16-key panels and V from 16-column panels (kernel.cc packs
// them), so every stream is contiguous. head_dim is padded to a multiple of 16 in the V panels and in O
// (zeros), so there are no column tails.
//
// No std:: inline function or template is called here (see kernel_internal.h).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "attention/kernel_avx2_math.h"
#include "attention/kernel_internal.h"

namespace flashring::attn::avx2 {
namespace {

constexpr int kRowsPerStrip = 6;

inline int minInt(int a, int b) { return a < b ? a : b; }

// Online softmax update of one row: s[0, n) (n > 0) are base-2 scores. Writes exp2(s - m_new) over [0, n),
// updates *m and *l, returns alpha = exp2(m_old - m_new).
inline float softmaxUpdate(float* s, int n, float* m, float* l) {
  const __m256 neg_inf = _mm256_set1_ps(-__builtin_inff());
  __m256 vmax = neg_inf;
  int j = 0;
  for (; j + 8 <= n; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + j));
  const int tail = n - j;
  const __m256i tmask = firstLanes(tail);
  if (tail > 0) {
    const __m256 x = _mm256_blendv_ps(neg_inf, _mm256_maskload_ps(s + j, tmask), _mm256_castsi256_ps(tmask));
    vmax = _mm256_max_ps(vmax, x);
  }
  const float mx = hmax(vmax);
  const float m_old = *m;
  const float m_new = m_old > mx ? m_old : mx;  // finite: n > 0 and scores are finite
  const __m256 vm = _mm256_set1_ps(m_new);
  __m256 vsum = _mm256_setzero_ps();
  j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 p = exp2Ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
    _mm256_storeu_ps(s + j, p);
    vsum = _mm256_add_ps(vsum, p);
  }
  if (tail > 0) {
    const __m256 x = _mm256_blendv_ps(neg_inf, _mm256_maskload_ps(s + j, tmask), _mm256_castsi256_ps(tmask));
    const __m256 p = exp2Ps(_mm256_sub_ps(x, vm));  // masked lanes: exp2(-inf) = 0
    _mm256_maskstore_ps(s + j, tmask, p);
    vsum = _mm256_add_ps(vsum, p);
  }
  const float alpha = exp2Scalar(m_old - m_new);  // m_old = -inf -> 0
  *l = *l * alpha + hsum(vsum);
  *m = m_new;
  return alpha;
}

// S[t][0, 16) = scale * sum_d q[t][d] * panel[d][0, 16) for R rows t (q rows contiguous, head_dim apart).
template <int R>
inline void qkPanel(const float* q, int d_len, const float* panel, __m256 scale, float* s, int lds) {
  __m256 c0[R], c1[R];
#pragma GCC unroll 6
  for (int t = 0; t < R; ++t) {
    c0[t] = _mm256_setzero_ps();
    c1[t] = _mm256_setzero_ps();
  }
#pragma GCC unroll 2
  for (int d = 0; d < d_len; ++d) {
    const __m256 k0 = _mm256_loadu_ps(panel + d * kPanel);
    const __m256 k1 = _mm256_loadu_ps(panel + d * kPanel + 8);
#pragma GCC unroll 6
    for (int t = 0; t < R; ++t) {
      const __m256 a = _mm256_broadcast_ss(q + t * d_len + d);
      c0[t] = _mm256_fmadd_ps(a, k0, c0[t]);
      c1[t] = _mm256_fmadd_ps(a, k1, c1[t]);
    }
  }
#pragma GCC unroll 6
  for (int t = 0; t < R; ++t) {
    _mm256_storeu_ps(s + t * lds, _mm256_mul_ps(c0[t], scale));
    _mm256_storeu_ps(s + t * lds + 8, _mm256_mul_ps(c1[t], scale));
  }
}

// O[t][0, 16) = alpha[t] O[t][0, 16) + sum_{j < n} P[t][j] V[j][0, 16), V a 16-column panel (rows 16 apart).
template <int R>
inline void pvPanel(const float* p, int ldp, const float* v, int n, float* o, int ldo, const float* alpha) {
  __m256 c0[R], c1[R];
#pragma GCC unroll 6
  for (int t = 0; t < R; ++t) {
    const __m256 a = _mm256_broadcast_ss(alpha + t);
    c0[t] = _mm256_mul_ps(_mm256_loadu_ps(o + t * ldo), a);
    c1[t] = _mm256_mul_ps(_mm256_loadu_ps(o + t * ldo + 8), a);
  }
#pragma GCC unroll 2
  for (int j = 0; j < n; ++j) {
    const __m256 v0 = _mm256_loadu_ps(v + j * kPanel);
    const __m256 v1 = _mm256_loadu_ps(v + j * kPanel + 8);
#pragma GCC unroll 6
    for (int t = 0; t < R; ++t) {
      const __m256 a = _mm256_broadcast_ss(p + t * ldp + j);
      c0[t] = _mm256_fmadd_ps(a, v0, c0[t]);
      c1[t] = _mm256_fmadd_ps(a, v1, c1[t]);
    }
  }
#pragma GCC unroll 6
  for (int t = 0; t < R; ++t) {
    _mm256_storeu_ps(o + t * ldo, c0[t]);
    _mm256_storeu_ps(o + t * ldo + 8, c1[t]);
  }
}

// One strip of R rows: scores over ceil(ncols/16) panels, softmax per row, then O update over ncols keys.
template <int R>
void strip(const TileArgs& a, int r0, const int* vis, int ncols) {
  const int d_len = a.head_dim;
  const int lds = (a.keys + kPanel - 1) / kPanel * kPanel;
  const int npan = (ncols + kPanel - 1) / kPanel;
  const float* q = a.q_packed + static_cast<int64_t>(r0) * d_len;
  const __m256 scale = _mm256_set1_ps(a.scale2);
  for (int pnl = 0; pnl < npan; ++pnl) {
    qkPanel<R>(q, d_len, a.k_panels + static_cast<int64_t>(pnl) * kPanel * d_len, scale, a.s + pnl * kPanel, lds);
  }
  float* alpha = a.alpha;
  for (int t = 0; t < R; ++t) {
    float* srow = a.s + t * lds;
    const int n = vis[t];
    if (n == 0) {
      alpha[t] = 1.f;
    } else {
      alpha[t] = softmaxUpdate(srow, n, a.m + r0 + t, a.l + r0 + t);
    }
    if (n < ncols) std::memset(srow + n, 0, sizeof(float) * static_cast<size_t>(ncols - n));
  }
  float* o = a.o + static_cast<int64_t>(r0) * a.ldo;
  for (int c = 0; c < a.ldo; c += kPanel) {
    pvPanel<R>(a.s, lds, a.v_packed + (c / kPanel) * a.v_panel_stride, ncols, o + c, a.ldo, alpha);
  }
}

inline void transpose8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4, __m256& r5, __m256& r6, __m256& r7) {
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
  r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
  r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
  r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
  r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
  r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
  r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
  r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
}

}  // namespace

void packKeyPanels(const float* k, int64_t ldk, int keys, int head_dim, float* dst) {
  // Two groups of 8 keys; each 8 keys x 8 dims block is one register transpose.
  for (int j0 = 0; j0 < kPanel; j0 += 8) {
    const float* rows[8];
    const int nk = keys - j0;  // may be <= 0: the whole group is padding
    for (int x = 0; x < 8; ++x) rows[x] = x < nk ? k + (j0 + x) * ldk : nullptr;
    int d = 0;
    for (; d + 8 <= head_dim; d += 8) {
      __m256 r[8];
      for (int x = 0; x < 8; ++x) r[x] = rows[x] ? _mm256_loadu_ps(rows[x] + d) : _mm256_setzero_ps();
      transpose8(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
      for (int x = 0; x < 8; ++x) _mm256_storeu_ps(dst + (d + x) * kPanel + j0, r[x]);
    }
    for (; d < head_dim; ++d) {
      for (int x = 0; x < 8; ++x) dst[d * kPanel + j0 + x] = rows[x] ? rows[x][d] : 0.f;
    }
  }
}

void microTile(const TileArgs& a) {
  const int g = a.group;
  int vis[kRowsPerStrip];
  for (int r0 = 0; r0 < a.rows; r0 += kRowsPerStrip) {
    const int rn = minInt(kRowsPerStrip, a.rows - r0);
    for (int t = 0; t < rn; ++t) vis[t] = visibleKeys(a, (r0 + t) / g);
    const int ncols = vis[rn - 1];  // rows are query-major: the last row sees the most keys
    if (ncols == 0) continue;
    switch (rn) {
      case 6:
        strip<6>(a, r0, vis, ncols);
        break;
      case 5:
        strip<5>(a, r0, vis, ncols);
        break;
      case 4:
        strip<4>(a, r0, vis, ncols);
        break;
      case 3:
        strip<3>(a, r0, vis, ncols);
        break;
      case 2:
        strip<2>(a, r0, vis, ncols);
        break;
      default:
        strip<1>(a, r0, vis, ncols);
        break;
    }
  }
}

float softmaxRow(float* s, int visible, int width, float* m, float* l) {
  const float alpha = softmaxUpdate(s, visible, m, l);
  if (visible < width) std::memset(s + visible, 0, sizeof(float) * static_cast<size_t>(width - visible));
  return alpha;
}

void scaleRow(float* o, int n, float a) {
  const __m256 va = _mm256_set1_ps(a);
  int c = 0;
  for (; c + 8 <= n; c += 8) _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_loadu_ps(o + c), va));
  for (; c < n; ++c) o[c] *= a;
}

}  // namespace flashring::attn::avx2
