// Matmul on GGUF-typed weights (include/flashring/qmatmul.h), for the 32-value types; one thread unless a row
// says t:T.
//
//   qmm/gemv/<type>/<isa>/<rows>x<cols>   y = W x (decode): the activations quantized for the type, then one
//                                         dot product per weight row with the kernel of that ISA variant
//                                         (avx2+avxvnni / avx512+vnni: the VNNI integer dot products)
//   qmm/gemv/sgemv/<rows>x<cols>          the baseline: OpenBLAS sgemv on the dequantized fp32 matrix
//   qmm/tile/<type>/<isa>/<rows>x576/m:M/RxV  M activation vectors through the variant's tiles of R rows x V
//                                         vectors (TypeKernels::tiles; 1x1: the single-row dot, the baseline),
//                                         consecutive rows, us/vector = time per activation vector
//   qmm/dequant/<type>/<isa>/1536x576     dequantization to fp32 (the DequantGemm panels), Out_GB/s written
//   qmm/matmul/q4_1/1536x576/<path>/m:M   qmm::matmul at batch M through the Dot and the DequantGemm path
//                                         (the crossover sets gemmThreshold())
//   qmm/matmul_stream/<type>/<rows>x576/t:T  qmm::matmul (Dot path, m = 1) on a decode-sized stream of weights
//   qmm/decode_layer/q4_1/smollm2/t:T     the 7 matmuls of one SmolLM2-135M layer at m = 1 on T threads (wall
//                                         time: the pool's hand-off per call counts)
//   qmm/parallel_for/t:T                  one cpu::parallelFor call with a trivial body (the hand-off alone)
//
// W_GB/s counts the weight bytes read per second in the type's own encoding (fp32 for sgemv), so it compares
// with the machine's memory bandwidth; the CPU time column is the decode cost of one linear layer. 4096 x 4096 is a
// 7B-class projection (its Q4_0 weights, 9 MiB, may stay in a large L3), 576 x 1536 SmolLM2-135M's MLP (L2),
// 49152 x 576 its output head (Q8_0, 30 MB), and 184320 x 576 (block types only) as many 576-wide rows as
// the model's 30 layers hold (66 MB in Q4_1): a decode's stream of weights, out of cache.
//
//   flashring_kernel_bench --benchmark_filter=qmm/ --benchmark_min_time=0.2
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flashring/cpu.h"
#include "flashring/gguf.h"
#include "flashring/qmatmul.h"
#include "qmm/qmm_internal.h"

namespace {

namespace qmm = flashring::qmm;
namespace cpu = flashring::cpu;
namespace gguf = flashring::gguf;
using cpu::Isa;
using gguf::TensorType;

struct Weights {
  TensorType type;
  int64_t rows, cols;
  size_t row_bytes;
  std::vector<uint8_t> data;
  qmm::Matrix matrix() const { return {type, data.data(), rows, cols, row_bytes}; }
};

// Random codes with moderate scales (the values do not change the work done).
Weights makeWeights(TensorType t, int64_t rows, int64_t cols) {
  Weights w{t, rows, cols, static_cast<size_t>(cols) / gguf::blockSize(t) * gguf::blockBytes(t), {}};
  w.data.resize(w.row_bytes * static_cast<size_t>(rows));
  std::mt19937 rng(static_cast<unsigned>(t) * 7 + 1);
  for (auto& b : w.data) b = static_cast<uint8_t>(rng());
  const size_t n = static_cast<size_t>(rows * cols);
  if (t == TensorType::F32) {
    std::normal_distribution<float> normal(0.f, 0.05f);
    for (size_t i = 0; i < n; ++i) {
      const float f = normal(rng);
      std::memcpy(&w.data[4 * i], &f, 4);
    }
  } else if (t == TensorType::F16) {
    // High byte: sign, exponent 12 (|w| in [1/8, 1/4)), random mantissa: normal numbers.
    for (size_t i = 0; i < n; ++i) w.data[2 * i + 1] = static_cast<uint8_t>((w.data[2 * i + 1] & 0x83) | 0x30);
  } else if (t == TensorType::BF16) {
    // High byte: sign, exponent 122 or 123 (|w| ~ 1/32): normal numbers (subnormals would measure FP assists).
    for (size_t i = 0; i < n; ++i) w.data[2 * i + 1] = static_cast<uint8_t>((w.data[2 * i + 1] & 0x80) | 0x3D);
  } else {
    const size_t bb = gguf::blockBytes(t);
    const uint16_t scale = 0x2E66;  // ~0.1 in fp16
    for (size_t b = 0; b < w.data.size() / bb; ++b) {
      std::memcpy(&w.data[b * bb], &scale, 2);
      if (t == TensorType::Q4_1 || t == TensorType::Q5_1) std::memcpy(&w.data[b * bb + 2], &scale, 2);
    }
  }
  return w;
}

std::vector<float> randomVector(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  return x;
}

void setCounters(benchmark::State& state, size_t weight_bytes) {
  state.counters["W_GB/s"] =
      benchmark::Counter(static_cast<double>(weight_bytes) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// One GEMV through the variant's dot kernel, row by row (what qmm::matmul's Dot path does at m = 1).
void BM_Gemv(benchmark::State& state, TensorType t, Isa isa, bool vnni, int64_t rows, int64_t cols) {
  cpu::setThreads(1);
  const Weights w = makeWeights(t, rows, cols);
  const qmm::detail::TypeKernels* k = qmm::detail::legacyKernelsVariant(isa, t, vnni);
  const qmm::detail::QuantizeFn q = qmm::detail::q8Quantizer(isa);
  if (k == nullptr || q == nullptr) {
    state.SkipWithError("no kernel of its own at this ISA");
    return;
  }
  const size_t n = static_cast<size_t>(cols);
  const std::vector<float> x = randomVector(n, 2);
  std::vector<uint8_t> act(qmm::actBytes(t, n));
  std::vector<float> y(static_cast<size_t>(rows));
  const bool f32_act = qmm::actFormat(t) == qmm::ActFormat::F32;
  for (auto _ : state) {
    if (f32_act) {
      std::memcpy(act.data(), x.data(), n * sizeof(float));
    } else {
      q(x.data(), n, act.data());
    }
    for (int64_t r = 0; r < rows; ++r)
      y[static_cast<size_t>(r)] = k->dot(n, w.data.data() + r * w.row_bytes, act.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  setCounters(state, w.data.size());
}

// A GEMM of `acts` activation vectors through the variant's tiles of rows_per x acts_per dot products (1 x 1:
// the single-row dot, what qmm::matmul's Dot path did for every output); the activation quantization of the
// `acts` vectors included. Rows and vectors left over by the tile shape go through smaller tiles or dot.
void BM_GemvTile(benchmark::State& state, TensorType t, Isa isa, bool vnni, int64_t rows, int64_t cols, int lr, int lm,
                 int64_t acts) {
  cpu::setThreads(1);
  const Weights w = makeWeights(t, rows, cols);
  const qmm::detail::TypeKernels* k = qmm::detail::legacyKernelsVariant(isa, t, vnni);
  const qmm::detail::QuantizeFn q = qmm::detail::q8Quantizer(isa);
  if (k == nullptr || q == nullptr || ((lr != 0 || lm != 0) && k->tiles[lr][lm] == nullptr)) {
    state.SkipWithError("no such kernel at this ISA");
    return;
  }
  const size_t n = static_cast<size_t>(cols);
  const std::vector<float> x = randomVector(n * static_cast<size_t>(acts), 2);
  const size_t ab = qmm::actBytes(t, n);
  std::vector<uint8_t> act(ab * static_cast<size_t>(acts));
  std::vector<float> y(static_cast<size_t>(rows * acts));
  const int64_t tr = int64_t{1} << lr, tm = int64_t{1} << lm;
  for (auto _ : state) {
    for (int64_t i = 0; i < acts; ++i) q(x.data() + i * cols, n, act.data() + ab * static_cast<size_t>(i));
    for (int64_t r = 0; r < rows; r += tr) {
      const uint8_t* wr = w.data.data() + r * w.row_bytes;
      for (int64_t i = 0; i < acts; i += tm) {
        const uint8_t* ai = act.data() + ab * static_cast<size_t>(i);
        float* yo = y.data() + i * rows + r;
        if (r + tr <= rows && i + tm <= acts && (lr != 0 || lm != 0)) {
          k->tiles[lr][lm](n, wr, w.row_bytes, ai, ab, yo, static_cast<size_t>(rows));
        } else {
          for (int64_t rr = 0; rr < std::min(tr, rows - r); ++rr)
            for (int64_t ii = 0; ii < std::min(tm, acts - i); ++ii)
              yo[ii * rows + rr] = k->dot(n, wr + rr * w.row_bytes, ai + ab * static_cast<size_t>(ii));
        }
      }
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  setCounters(state, w.data.size());
  state.counters["us/vector"] = benchmark::Counter(
      1e-6 * static_cast<double>(acts), benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

// Dequantization of the whole matrix row by row (the DequantGemm path's panels); Out_GB/s counts the fp32
// written.
void BM_Dequant(benchmark::State& state, TensorType t, Isa isa, int64_t rows, int64_t cols) {
  const Weights w = makeWeights(t, rows, cols);
  const qmm::detail::TypeKernels* k = qmm::detail::legacyKernelsVariant(isa, t, false);
  if (k == nullptr) {
    state.SkipWithError("no kernel of its own at this ISA");
    return;
  }
  std::vector<float> out(static_cast<size_t>(rows * cols), 0.f);
  for (auto _ : state) {
    for (int64_t r = 0; r < rows; ++r)
      k->dequantize(w.data.data() + r * w.row_bytes, out.data() + r * cols, static_cast<size_t>(cols));
    benchmark::ClobberMemory();
  }
  state.counters["Out_GB/s"] = benchmark::Counter(static_cast<double>(out.size() * sizeof(float)) * 1e-9,
                                                  benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Sgemv(benchmark::State& state, int64_t rows, int64_t cols) {
  cpu::setThreads(1);
  const std::vector<float> a = randomVector(static_cast<size_t>(rows * cols), 3);
  const std::vector<float> x = randomVector(static_cast<size_t>(cols), 2);
  std::vector<float> y(static_cast<size_t>(rows));
  for (auto _ : state) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(rows), static_cast<blasint>(cols), 1.f, a.data(),
                static_cast<blasint>(cols), x.data(), 1, 0.f, y.data(), 1);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  setCounters(state, a.size() * sizeof(float));
}

void BM_Matmul(benchmark::State& state, qmm::MatmulPath path, int64_t m) {
  cpu::setThreads(1);
  const Weights w = makeWeights(TensorType::Q4_1, 1536, 576);
  const std::vector<float> x = randomVector(static_cast<size_t>(m * w.cols), 4);
  std::vector<float> y(static_cast<size_t>(m * w.rows));
  qmm::Workspace ws;
  const qmm::Matrix mat = w.matrix();
  for (auto _ : state) {
    qmm::matmul(mat, x.data(), m, y.data(), ws, path);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2e-9 * static_cast<double>(m * w.rows * w.cols),
                                                 benchmark::Counter::kIsIterationInvariantRate);
  // Time per activation row: the inverse of rows per second.
  state.counters["us/row"] = benchmark::Counter(
      1e-6 * static_cast<double>(m), benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.SetLabel(std::string(cpu::isaName(cpu::activeIsa())));
}

// qmm::matmul's Dot path at m = 1 on a decode-sized stream of weights (out of cache), on 1 or 2 threads: the
// driver as the model runs it (tiles on four streams of rows, chunks over the threads), W_GB/s to compare
// with the machine's read bandwidth.
void BM_MatmulStream(benchmark::State& state, TensorType t, int64_t rows, int threads) {
  cpu::setThreads(threads);
  const Weights w = makeWeights(t, rows, 576);
  const std::vector<float> x = randomVector(576, 4);
  std::vector<float> y(static_cast<size_t>(rows));
  qmm::Workspace ws;
  const qmm::Matrix mat = w.matrix();
  for (auto _ : state) {
    qmm::matmul(mat, x.data(), 1, y.data(), ws, qmm::MatmulPath::Dot);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  setCounters(state, w.data.size());
  state.SetLabel(std::string(cpu::isaName(cpu::activeIsa())));
  cpu::setThreads(1);
}

// One decode step of a SmolLM2-135M layer: its seven Q4_1 matmuls at m = 1 through qmm::matmul (q, k, v, o,
// gate, up 576 wide; down 1536 wide), on `threads` threads: the pool's hand-off per call shows against the
// one-thread time (30 layers make ~210 such calls a token).
void BM_DecodeLayer(benchmark::State& state, int threads) {
  cpu::setThreads(threads);
  const int64_t shapes[][2] = {{576, 576}, {192, 576}, {192, 576}, {576, 576}, {1536, 576}, {1536, 576}, {576, 1536}};
  std::vector<Weights> ws;
  for (const auto& s : shapes) ws.push_back(makeWeights(TensorType::Q4_1, s[0], s[1]));
  const std::vector<float> x = randomVector(1536, 4);
  std::vector<float> y(1536);
  qmm::Workspace work;
  size_t bytes = 0;
  for (const Weights& w : ws) bytes += w.data.size();
  for (auto _ : state) {
    for (const Weights& w : ws) qmm::matmul(w.matrix(), x.data(), 1, y.data(), work);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  setCounters(state, bytes);
  cpu::setThreads(1);
}

// The pool's cost per parallelFor call: `threads` ranges of a trivial body.
void BM_ParallelFor(benchmark::State& state, int threads) {
  cpu::setThreads(threads);
  std::vector<int64_t> sums(64);
  for (auto _ : state) {
    cpu::parallelFor(1024, 16, [&](int64_t b, int64_t e) { sums[static_cast<size_t>(b / 16)] += e - b; });
    benchmark::ClobberMemory();
  }
  cpu::setThreads(1);
}

std::string typeName(TensorType t) { return gguf::typeName(static_cast<uint32_t>(t)); }

// Registered at static-initialisation time, only for the ISAs this CPU runs.
const int kRegistered = [] {
  const TensorType types[] = {TensorType::Q4_0, TensorType::Q4_1, TensorType::Q5_0, TensorType::Q5_1,
                              TensorType::Q8_0, TensorType::F16,  TensorType::BF16, TensorType::F32};
  struct Variant {
    Isa isa;
    bool vnni;
    const char* name;
    bool ok;
  };
  const Variant variants[] = {
      {Isa::Scalar, false, "scalar", true},
      {Isa::Avx2, false, "avx2", cpu::isaSupported(Isa::Avx2)},
      {Isa::Avx2, true, "avx2+avxvnni", cpu::isaSupported(Isa::Avx2) && cpu::hasAvxVnni()},
      {Isa::Avx512, false, "avx512", cpu::isaSupported(Isa::Avx512)},
      {Isa::Avx512, true, "avx512+vnni", cpu::isaSupported(Isa::Avx512) && cpu::hasAvx512Vnni()},
  };
  const int64_t shapes[][2] = {{4096, 4096}, {576, 1536}, {49152, 576}, {184320, 576}};
  for (const auto& s : shapes) {
    const std::string shape = std::to_string(s[0]) + "x" + std::to_string(s[1]);
    const bool stream = s[0] == 184320;  // block types only (the fp32 copy would be 425 MB)
    if (!stream) {
      benchmark::RegisterBenchmark(("qmm/gemv/sgemv/" + shape).c_str(), BM_Sgemv, s[0], s[1])
          ->Unit(benchmark::kMicrosecond);
    }
    for (TensorType t : types) {
      for (const Variant& v : variants) {
        if (!v.ok) continue;
        const bool is_float = gguf::blockSize(t) == 1;
        if (stream && is_float) continue;
        if (is_float && v.vnni) continue;  // the VNNI variants differ in the integer dot products only
        benchmark::RegisterBenchmark(("qmm/gemv/" + typeName(t) + "/" + v.name + "/" + shape).c_str(), BM_Gemv, t,
                                     v.isa, v.vnni, s[0], s[1])
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }
  // Tiles: rows x vectors per call, at m = 1 (decode) and m = 4, 8 (short prompts), on the model's shapes.
  for (TensorType t : {TensorType::Q4_1, TensorType::Q8_0, TensorType::Q4_0}) {
    for (const Variant& v : variants) {
      if (!v.ok || v.isa == Isa::Scalar) continue;
      for (const auto& s : {std::pair<int64_t, int64_t>{1536, 576}, std::pair<int64_t, int64_t>{184320, 576}}) {
        for (int64_t acts : {1, 4, 8}) {
          if (s.first == 184320 && acts != 1) continue;
          for (int lr = 0; lr < 3; ++lr) {
            for (int lm = 0; lm < 3; ++lm) {
              if ((int64_t{1} << lm) > acts) continue;
              benchmark::RegisterBenchmark(("qmm/tile/" + typeName(t) + "/" + v.name + "/" + std::to_string(s.first) +
                                            "x" + std::to_string(s.second) + "/m:" + std::to_string(acts) + "/" +
                                            std::to_string(1 << lr) + "x" + std::to_string(1 << lm))
                                               .c_str(),
                                           BM_GemvTile, t, v.isa, v.vnni, s.first, s.second, lr, lm, acts)
                  ->Unit(benchmark::kMicrosecond);
            }
          }
        }
      }
    }
  }
  for (TensorType t : types) {
    for (const Variant& v : variants) {
      if (!v.ok || v.vnni) continue;
      benchmark::RegisterBenchmark(("qmm/dequant/" + typeName(t) + "/" + v.name + "/1536x576").c_str(), BM_Dequant, t,
                                   v.isa, int64_t{1536}, int64_t{576})
          ->Unit(benchmark::kMicrosecond);
    }
  }
  for (int threads : {1, 2}) {
    for (const auto& [t, rows] :
         {std::pair{TensorType::Q4_1, int64_t{184320}}, std::pair{TensorType::Q8_0, int64_t{49152}},
          std::pair{TensorType::Q8_0, int64_t{184320}}}) {
      benchmark::RegisterBenchmark(
          ("qmm/matmul_stream/" + typeName(t) + "/" + std::to_string(rows) + "x576/t:" + std::to_string(threads))
              .c_str(),
          BM_MatmulStream, t, rows, threads)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    }
    benchmark::RegisterBenchmark(("qmm/decode_layer/q4_1/smollm2/t:" + std::to_string(threads)).c_str(), BM_DecodeLayer,
                                 threads)
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("qmm/parallel_for/t:" + std::to_string(threads)).c_str(), BM_ParallelFor, threads)
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime();
  }
  for (int64_t m : {1, 2, 4, 8, 16, 32, 64, 512}) {
    for (const auto& p :
         {std::pair{qmm::MatmulPath::Dot, "dot"}, std::pair{qmm::MatmulPath::DequantGemm, "dequant_gemm"}}) {
      benchmark::RegisterBenchmark(
          ("qmm/matmul/q4_1/1536x576/" + std::string(p.second) + "/m:" + std::to_string(m)).c_str(), BM_Matmul, p.first,
          m)
          ->Unit(benchmark::kMicrosecond);
    }
  }
  return 0;
}();

}  // namespace
