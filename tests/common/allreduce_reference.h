// Test references for the all-reduce: deterministic per-rank inputs, the exact fp64 sum, and independent
// sequential models of the quantized two-step algorithm (same codec calls, same slice and chunk rules as
// documented in allreduce.h / twostep.cc) and of the one-shot algorithm, whose outputs the real algorithms
// must match bit for bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "collectives/common.h"
#include "flashring/allreduce.h"
#include "flashring/quant.h"

namespace flashring::testref {

// Inputs of rank r: a mix of scales, like activations (most values O(1), a few outliers).
inline std::vector<float> rankInput(int r, size_t n, uint32_t seed = 1) {
  std::mt19937 g(seed * 7919u + static_cast<uint32_t>(r) * 104729u);
  std::normal_distribution<float> d(0.f, 1.f);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<float> x(n);
  for (auto& v : x) {
    v = d(g);
    if (u(g) < 0.002f) v *= 40.f;  // outliers
  }
  return x;
}

// Inputs with massive activations, like a LLaMA MLP output (SmolLM2-135M layer 28: a few values of ~14000
// per token where the rest has rms ~27): N(0, 27) plus, in every 128 values, one value of magnitude 5000..14000
// at a channel shared by all ranks (sign and size per rank), and a second one in every fourth block.
inline std::vector<float> massiveRankInput(int r, size_t n, uint32_t seed = 1) {
  std::mt19937 g(seed * 7919u + static_cast<uint32_t>(r) * 104729u);
  std::normal_distribution<float> d(0.f, 27.f);
  std::uniform_real_distribution<float> u(5000.f, 14000.f);
  std::vector<float> x(n);
  for (auto& v : x) v = d(g);
  std::mt19937 where(seed);  // rank-independent positions
  for (size_t b = 0; b < n; b += 128) {
    for (int j = 0; j < ((b / 128) % 4 == 0 ? 2 : 1); ++j) {
      const size_t i = b + where() % 128;
      if (i < n) x[i] = (g() % 2 ? 1.f : -1.f) * u(g);
    }
  }
  return x;
}

inline std::vector<double> exactSumOf(const std::vector<std::vector<float>>& inputs) {
  std::vector<double> s(inputs.empty() ? 0 : inputs[0].size(), 0.0);
  for (const auto& x : inputs)
    for (size_t i = 0; i < s.size(); ++i) s[i] += x[i];
  return s;
}

inline std::vector<double> exactSum(int ranks, size_t n, uint32_t seed = 1) {
  std::vector<double> s(n, 0.0);
  for (int r = 0; r < ranks; ++r) {
    auto x = rankInput(r, n, seed);
    for (size_t i = 0; i < n; ++i) s[i] += x[i];
  }
  return s;
}

inline std::vector<double> absSum(int ranks, size_t n, uint32_t seed = 1) {
  std::vector<double> s(n, 0.0);
  for (int r = 0; r < ranks; ++r) {
    auto x = rankInput(r, n, seed);
    for (size_t i = 0; i < n; ++i) s[i] += std::fabs(x[i]);
  }
  return s;
}

// Bitwise equality of two float vectors (NaN payloads included); defined for empty vectors too.
inline bool sameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// ||a - e||_2 / ||e||_2
inline double relError(const std::vector<float>& a, const std::vector<double>& e) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - e[i]) * (a[i] - e[i]);
    den += e[i] * e[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// Sequential model of the Flash all-reduce over `inputs` (one vector per rank). Codec settings (bits, group
// size, symmetry, spikes) come from the options; the codec runs with the scalar kernels.
inline std::vector<float> quantizedModel(const std::vector<std::vector<float>>& inputs, const AllreduceOptions& o) {
  const int N = static_cast<int>(inputs.size());
  const size_t n = inputs[0].size();
  if (N == 1) return inputs[0];
  const size_t align = static_cast<size_t>(std::max(o.reduce_scatter.group_size, o.all_gather.group_size));
  const size_t unit = static_cast<size_t>(N) * align;
  size_t chunk = o.chunk_elems == 0 ? n : o.chunk_elems;
  chunk = std::max(unit, (chunk + unit - 1) / unit * unit);
  std::vector<float> out(n);
  for (size_t c0 = 0; c0 < n; c0 += chunk) {
    const size_t len = std::min(chunk, n - c0);
    for (int j = 0; j < N; ++j) {
      const detail::Range r = detail::part(len, N, j, align);
      const size_t m = r.size();
      std::vector<float> acc(m, 0.f);
      for (int p = 0; p < N; ++p) {
        const float* x = inputs[static_cast<size_t>(p)].data() + c0 + r.begin;
        if (p == j) {
          for (size_t i = 0; i < m; ++i) acc[i] += x[i];
        } else {
          // acc + decode(x), element by element: what dequantizeAccumulate promises (spikes included).
          std::vector<std::byte> enc(quant::encodedBytes(m, o.reduce_scatter));
          quant::quantize(quant::Isa::Scalar, x, m, o.reduce_scatter, enc.data());
          std::vector<float> dec(m);
          quant::dequantize(quant::Isa::Scalar, enc.data(), m, o.reduce_scatter, dec.data());
          for (size_t i = 0; i < m; ++i) acc[i] = acc[i] + dec[i];
        }
      }
      std::vector<std::byte> enc(quant::encodedBytes(m, o.all_gather));
      quant::quantize(quant::Isa::Scalar, acc.data(), m, o.all_gather, enc.data());
      quant::dequantize(quant::Isa::Scalar, enc.data(), m, o.all_gather, out.data() + c0 + r.begin);
    }
  }
  return out;
}

// What every rank decodes of rank p's buffer `x` in the one-shot all-reduce: x encoded once with the one-shot's
// codec (the reduce-scatter codec when oneshot_quantized, else the payload: bf16 or raw fp32) and decoded, with
// the scalar kernels.
inline std::vector<float> oneShotDecoded(const std::vector<float>& x, const AllreduceOptions& o) {
  const size_t n = x.size();
  std::vector<float> dec(x);
  if (o.oneshot_quantized) {
    std::vector<std::byte> enc(std::max<size_t>(1, quant::encodedBytes(n, o.reduce_scatter)));
    quant::quantize(quant::Isa::Scalar, x.data(), n, o.reduce_scatter, enc.data());
    quant::dequantize(quant::Isa::Scalar, enc.data(), n, o.reduce_scatter, dec.data());
  } else if (o.payload == Payload::BF16) {
    std::vector<uint16_t> b(std::max<size_t>(1, n));
    quant::toBf16(quant::Isa::Scalar, x.data(), n, b.data());
    quant::fromBf16(quant::Isa::Scalar, b.data(), n, dec.data());
  }
  return dec;
}

// Sequential model of the one-shot all-reduce over `inputs` (one vector per rank): the N decodings summed in fp32
// in rank order 0..N-1, starting from +0.0 (so a lone -0.0 comes out +0.0). One rank: its buffer, untouched.
inline std::vector<float> oneShotModel(const std::vector<std::vector<float>>& inputs, const AllreduceOptions& o) {
  if (inputs.size() == 1) return inputs[0];
  std::vector<float> out(inputs[0].size(), 0.f);
  for (const auto& x : inputs) {
    const auto dec = oneShotDecoded(x, o);
    for (size_t i = 0; i < out.size(); ++i) out[i] = out[i] + dec[i];
  }
  return out;
}

// The error allreduceWithError hands back on a rank whose buffer is `x` (of `ranks`): x minus its decoding, 0
// where that is not finite; all zero on one rank.
inline std::vector<float> oneShotErrorModel(const std::vector<float>& x, int ranks, const AllreduceOptions& o) {
  std::vector<float> e(x.size(), 0.f);
  if (ranks == 1) return e;
  const auto dec = oneShotDecoded(x, o);
  for (size_t i = 0; i < x.size(); ++i) {
    const float d = x[i] - dec[i];
    e[i] = std::isfinite(d) ? d : 0.f;
  }
  return e;
}

}  // namespace flashring::testref
