// The forward pass's compute operations behind a small backend interface, so that the forward pass
// (llama_engine.cc) is written once for every device. The CPU backend runs the quantized matmuls of
// qmatmul.h, fp32 norms/RoPE/SwiGLU, and flashring's block attention kernel.
//
// A backend object belongs to one engine (one rank): it holds that rank's workspaces, so calls from
// different ranks never share scratch memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "flashring/attention.h"
#include "flashring/qmatmul.h"

namespace flashring::engine {

// cos/sin of RoPE for a set of positions (rope type "norm", as llama.cpp applies it to LLaMA: adjacent
// pairs (x[2i], x[2i+1]) of each head rotate by pos * base^(-2i / rope_dim)).
struct RopeTable {
  int half = 0;
  std::vector<float> cs, sn;  // [rows, half]
  RopeTable(const int64_t* pos, int64_t rows, int rope_dim, float base);
};

class Backend {
 public:
  virtual ~Backend() = default;
  // y[m, w.rows] = x[m, w.cols] * W^T
  virtual void linear(const qmm::Matrix& w, const float* x, int64_t m, float* y) = 0;
  // out = x / rms(x) * w, per row of d values (sum of squares in fp64)
  virtual void rmsNorm(const float* x, const float* w, int64_t rows, int d, float eps, float* out) = 0;
  // In place, rows of `heads` heads of hd values each.
  virtual void rope(float* x, int64_t rows, int heads, int hd, const RopeTable& t) = 0;
  // g = silu(g) * u
  virtual void swiglu(float* g, const float* u, size_t n) = 0;
  virtual void attention(const float* q, const float* k, const float* v, const AttentionShape& shape,
                         const BlockAttentionOptions& options, float* out, float* lse) = 0;
};

std::unique_ptr<Backend> makeCpuBackend();

}  // namespace flashring::engine
