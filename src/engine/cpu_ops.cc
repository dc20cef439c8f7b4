// The CPU backend of the forward pass (src/engine/ops.h).
#include <cmath>

#include "engine/ops.h"

namespace flashring::engine {

RopeTable::RopeTable(const int64_t* pos, int64_t rows, int rope_dim, float base) : half(rope_dim / 2) {
  cs.resize(static_cast<size_t>(rows * half));
  sn.resize(cs.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int i = 0; i < half; ++i) {
      const double theta = double(pos[r]) * std::pow(double(base), -2.0 * i / rope_dim);
      cs[static_cast<size_t>(r * half + i)] = static_cast<float>(std::cos(theta));
      sn[static_cast<size_t>(r * half + i)] = static_cast<float>(std::sin(theta));
    }
}

namespace {

class CpuBackend final : public Backend {
 public:
  void linear(const qmm::Matrix& w, const float* x, int64_t m, float* y) override { qmm::matmul(w, x, m, y, ws_); }

  void rmsNorm(const float* x, const float* w, int64_t rows, int d, float eps, float* out) override {
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * d;
      double ss = 0;
      for (int i = 0; i < d; ++i) ss += double(xr[i]) * xr[i];
      const float scale = static_cast<float>(1.0 / std::sqrt(ss / d + eps));
      float* o = out + r * d;
      for (int i = 0; i < d; ++i) o[i] = (xr[i] * scale) * w[i];
    }
  }

  void rope(float* x, int64_t rows, int heads, int hd, const RopeTable& t) override {
    for (int64_t r = 0; r < rows; ++r) {
      const float* cs = t.cs.data() + r * t.half;
      const float* sn = t.sn.data() + r * t.half;
      for (int h = 0; h < heads; ++h) {
        float* v = x + (r * heads + h) * hd;
        for (int i = 0; i < t.half; ++i) {
          const float a = v[2 * i], b = v[2 * i + 1];
          v[2 * i] = a * cs[i] - b * sn[i];
          v[2 * i + 1] = a * sn[i] + b * cs[i];
        }
      }
    }
  }

  void swiglu(float* g, const float* u, size_t n) override {
    for (size_t i = 0; i < n; ++i) g[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  }

  void attention(const float* q, const float* k, const float* v, const AttentionShape& shape,
                 const BlockAttentionOptions& options, float* out, float* lse) override {
    blockAttention(q, k, v, shape, options, out, lse);
  }

 private:
  qmm::Workspace ws_;
};

}  // namespace

std::unique_ptr<Backend> makeCpuBackend() { return std::make_unique<CpuBackend>(); }

}  // namespace flashring::engine
