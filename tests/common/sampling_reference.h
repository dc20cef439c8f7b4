// Test references for token choice (sampling.h): deterministic logits, vocabulary splits, the exact
// filtered distribution computed independently over the full vocabulary (long double, llama.cpp's chain),
// and a chi-square check of sampled tokens against it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "flashring/sampling.h"

namespace flashring::testref {

// Uniform in [0, 1) from (seed, i), for logits that are the same on every platform and rank.
inline double unitHash(uint64_t seed, uint64_t i) {
  return static_cast<double>(Sampler::mix64(seed * 0x9E3779B97F4A7C15ull + i + 1) >> 11) * 0x1.0p-53;
}

// Logits like a language model's: a few large values, a long tail. `ties` rounds them to quarters so that
// many are equal (ties must go to the lowest id).
inline std::vector<float> makeLogits(int64_t v, uint64_t seed, float spread = 8.f, bool ties = false) {
  std::vector<float> z(static_cast<size_t>(v));
  for (int64_t i = 0; i < v; ++i) {
    const double a = unitHash(seed, static_cast<uint64_t>(i)), b = unitHash(seed + 7, static_cast<uint64_t>(i));
    double x = spread * (a * a * a) - 2.0 * b;
    if (ties) x = std::round(x * 4) / 4;
    z[static_cast<size_t>(i)] = static_cast<float>(x);
  }
  return z;
}

// Slice sizes of `v` tokens on `n` ranks, uneven on purpose: pattern 0 gives rank r a weight r + 1, pattern
// 1 puts most tokens on the last rank, pattern 2 leaves rank 1 empty (when n > 2).
inline std::vector<int64_t> splitSizes(int64_t v, int n, int pattern) {
  std::vector<int64_t> w(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    if (pattern == 0) w[static_cast<size_t>(r)] = r + 1;
    if (pattern == 1) w[static_cast<size_t>(r)] = r == n - 1 ? 5 * n : 1;
    if (pattern == 2) w[static_cast<size_t>(r)] = (n > 2 && r == 1) ? 0 : 2 + r % 2;
  }
  const int64_t total_w = std::accumulate(w.begin(), w.end(), int64_t{0});
  std::vector<int64_t> s(static_cast<size_t>(n));
  int64_t used = 0;
  for (int r = 0; r < n; ++r) {
    s[static_cast<size_t>(r)] = r == n - 1 ? v - used : v * w[static_cast<size_t>(r)] / total_w;
    used += s[static_cast<size_t>(r)];
  }
  return s;
}

inline std::vector<int64_t> splitBegins(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> b(sizes.size(), 0);
  for (size_t r = 1; r < sizes.size(); ++r) b[r] = b[r - 1] + sizes[r - 1];
  return b;
}

// The exact distribution chooseToken() draws from, over the full vocabulary, written from the
// documented semantics without the library's code: candidate order (logit desc, id asc); top-k; top-p
// (smallest prefix with softmax(z) mass >= p over the top-k survivors, at least one); min-p (z >= max +
// log(min_p)); softmax(z / T) over what is left. Temperature 0: one-hot at the first maximum.
inline std::vector<double> filteredDistribution(const std::vector<float>& z, const SamplingOptions& o) {
  const size_t v = z.size();
  std::vector<size_t> order(v);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return z[a] > z[b]; });
  std::vector<double> p(v, 0.0);
  if (o.temperature == 0.f) {
    p[order[0]] = 1;
    return p;
  }
  size_t n = v;
  if (o.top_k > 0 && static_cast<size_t>(o.top_k) < v) n = static_cast<size_t>(o.top_k);
  const long double m = z[order[0]];
  if (o.top_p < 1.f) {
    long double s = 0;
    for (size_t j = 0; j < n; ++j) s += std::exp(static_cast<long double>(z[order[j]]) - m);
    long double cum = 0;
    for (size_t j = 0; j < n; ++j) {
      cum += std::exp(static_cast<long double>(z[order[j]]) - m) / s;
      if (cum >= static_cast<long double>(o.top_p)) {
        n = j + 1;
        break;
      }
    }
  }
  if (o.min_p > 0.f) {
    const long double thr = m + std::log(static_cast<long double>(o.min_p));
    size_t j = 0;
    while (j < n && static_cast<long double>(z[order[j]]) >= thr) ++j;
    n = std::max<size_t>(j, 1);
  }
  long double s = 0;
  for (size_t j = 0; j < n; ++j) s += std::exp((static_cast<long double>(z[order[j]]) - m) / o.temperature);
  for (size_t j = 0; j < n; ++j)
    p[order[j]] = static_cast<double>(std::exp((static_cast<long double>(z[order[j]]) - m) / o.temperature) / s);
  return p;
}

struct FitResult {
  double chi2 = 0;
  int df = 0;
  double threshold = 0;
  int64_t impossible = 0;  // draws of tokens whose probability is 0
  double tv = 0;           // total-variation distance of the empirical distribution
  bool ok() const { return impossible == 0 && chi2 <= threshold; }
  std::string describe() const {
    return "chi2 " + std::to_string(chi2) + " (df " + std::to_string(df) + ", threshold " + std::to_string(threshold) +
           "), draws of impossible tokens " + std::to_string(impossible) + ", TV " + std::to_string(tv);
  }
};

// Pearson chi-square of `counts` against `p`, pooling tokens whose expected count is below 5. The threshold
// df + 6 sqrt(2 df) + 6 is far in the tail (p < 1e-6 for the df used here); the draws are seeded, so the
// test is deterministic.
inline FitResult fit(const std::vector<int64_t>& counts, const std::vector<double>& p) {
  int64_t draws = 0;
  for (int64_t c : counts) draws += c;
  FitResult r;
  double pooled_e = 0, pooled_o = 0;
  int bins = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const double e = p[i] * static_cast<double>(draws), o = static_cast<double>(counts[i]);
    r.tv += 0.5 * std::abs(o / static_cast<double>(draws) - p[i]);
    if (p[i] == 0) {
      r.impossible += counts[i];
      continue;
    }
    if (e < 5) {
      pooled_e += e;
      pooled_o += o;
      continue;
    }
    r.chi2 += (o - e) * (o - e) / e;
    ++bins;
  }
  if (pooled_e > 0) {
    r.chi2 += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e;
    ++bins;
  }
  r.df = std::max(bins - 1, 1);
  r.threshold = r.df + 6 * std::sqrt(2.0 * r.df) + 6;
  return r;
}

}  // namespace flashring::testref
