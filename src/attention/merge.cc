// Log-sum-exp merge of two partial attention results over disjoint key ranges: checks, the portable
// version, the fp64 reference and the run-time choice of the AVX2 version.
//
// For one (row, head) with la = lse_a, lb = lse_b both finite, mx = max, mn = min, e = exp(mn - mx) in
// (0, 1]:
//   lse' = mx + log1p(e),   w_max = 1 / (1 + e),   w_min = e / (1 + e)
// which is exp(l - lse') for each side, written so that nothing overflows and no exp of a positive number
// is taken. A side with lse = -inf (a row that saw no key) has weight 0: the other side is copied
// unchanged (its out and lse, bit for bit), and two -inf sides stay (out_a, -inf). Comparisons decide these
// cases, not arithmetic, so a masked side's out is never read and cannot turn the result into NaN.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "attention/common/attention_math.h"
#include "attention/merge_internal.h"
#include "flashring/attention.h"
#include "flashring/cpu.h"
#include "flashring/error.h"

namespace flashring {
namespace attn {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

bool cpuHasAvx2Fma() { return cpu::activeIsa() != cpu::Isa::Scalar; }  // the CPU runtime decides

// Returns false when there is nothing to do (rows == 0).
bool checkMerge(const float* out, const float* lse, const float* out_b, const float* lse_b, int64_t rows, int heads,
                int head_dim) {
  if (rows < 0) throw InvalidArgument("mergeAttention: rows (" + std::to_string(rows) + ") must not be negative");
  if (heads <= 0) throw InvalidArgument("mergeAttention: heads (" + std::to_string(heads) + ") must be positive");
  if (head_dim <= 0) {
    throw InvalidArgument("mergeAttention: head_dim (" + std::to_string(head_dim) + ") must be positive");
  }
  if (rows == 0) return false;
  if (out == nullptr) throw InvalidArgument("mergeAttention: out is null");
  if (lse == nullptr) throw InvalidArgument("mergeAttention: lse is null");
  if (out_b == nullptr) throw InvalidArgument("mergeAttention: out_b is null");
  if (lse_b == nullptr) throw InvalidArgument("mergeAttention: lse_b is null");
  return true;
}

// The per-pair math is shared with the CUDA merge (attention/common/attention_math.h).
void mergePortable(float* out, float* lse, const float* out_b, const float* lse_b, int64_t pairs, int head_dim) {
  for (int64_t p = 0; p < pairs; ++p)
    detail::mergePair(out + p * head_dim, lse + p, out_b + p * head_dim, lse_b[p], head_dim);
}

}  // namespace

const char* mergeImplName(MergeImpl impl) {
  switch (impl) {
    case MergeImpl::Auto:
      return "auto";
    case MergeImpl::Portable:
      return "portable";
    case MergeImpl::Avx2:
      return "avx2";
  }
  return "?";
}

bool mergeImplSupported(MergeImpl impl) { return impl != MergeImpl::Avx2 || cpuHasAvx2Fma(); }

void mergeAttentionWith(MergeImpl impl, float* out, float* lse, const float* out_b, const float* lse_b, int64_t rows,
                        int heads, int head_dim) {
  if (!checkMerge(out, lse, out_b, lse_b, rows, heads, head_dim)) return;
  if (impl == MergeImpl::Auto) impl = cpuHasAvx2Fma() ? MergeImpl::Avx2 : MergeImpl::Portable;
  if (!mergeImplSupported(impl)) {
    throw InvalidArgument(std::string("mergeAttention: implementation ") + mergeImplName(impl) +
                          " needs AVX2 and FMA, which this CPU lacks");
  }
  const int64_t pairs = rows * heads;
  if (impl == MergeImpl::Avx2) {
    avx2::mergePairs(out, lse, out_b, lse_b, pairs, head_dim);
  } else {
    mergePortable(out, lse, out_b, lse_b, pairs, head_dim);
  }
}

}  // namespace attn

void mergeAttention(float* out, float* lse, const float* out_b, const float* lse_b, int64_t rows, int heads,
                    int head_dim) {
  attn::mergeAttentionWith(attn::MergeImpl::Auto, out, lse, out_b, lse_b, rows, heads, head_dim);
}

void mergeAttentionReference(float* out, float* lse, const float* out_b, const float* lse_b, int64_t rows, int heads,
                             int head_dim) {
  if (!attn::checkMerge(out, lse, out_b, lse_b, rows, heads, head_dim)) return;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  for (int64_t p = 0; p < rows * heads; ++p) {
    const double la = lse[p];
    const double lb = lse_b[p];
    if (lb == neg_inf) continue;
    float* o = out + p * head_dim;
    const float* ob = out_b + p * head_dim;
    if (la == neg_inf) {
      for (int c = 0; c < head_dim; ++c) o[c] = ob[c];
      lse[p] = lse_b[p];
      continue;
    }
    const double mx = std::max(la, lb);
    const double mn = std::min(la, lb);
    const double l = mx + std::log1p(std::exp(mn - mx));
    const double wa = std::exp(la - l);
    const double wb = std::exp(lb - l);
    for (int c = 0; c < head_dim; ++c) {
      o[c] = static_cast<float>(wa * static_cast<double>(o[c]) + wb * static_cast<double>(ob[c]));
    }
    lse[p] = static_cast<float>(l);
  }
}

}  // namespace flashring
