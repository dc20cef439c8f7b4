// Decode GEMV (y = W x, one activation row) on K-quant weights (Q4_K, Q5_K, Q6_K; src/qmm/kquants*.cc),
// one thread, per ISA variant of the kernels, against OpenBLAS sgemv on the same matrix dequantized to fp32
// (qmm::matmul on an F32 matrix).
//
// One iteration = quantize x to Q8K + one dot product per weight row, as qmm::matmul's integer path does.
// Counters: weight_GBps = weight bytes read per second (the quantized matrix; for sgemv its fp32 copy),
// so the K-quant rows compare with the memory bandwidth and sgemv's figure. Shapes: 4096 x 4096 and
// 11008 x 4096 (LLaMA-7B's attention and FFN matrices), and 512 x 4096, small enough (1.2-1.7 MB) to stay
// in a core's L2, where the kernels' own speed shows rather than the memory's.
//
//   flashring_kernel_bench --benchmark_filter=BM_QmmK --benchmark_min_time=0.3
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "flashring/cpu.h"
#include "flashring/gguf.h"
#include "flashring/qmatmul.h"
#include "qmm/qmm_internal.h"

namespace flashring::qmm::detail {
// The per-ISA tables behind kquantKernels() (src/qmm/kquants_*.cc).
const TypeKernels* kquantKernelsAvx2(TensorType t);
const TypeKernels* kquantKernelsAvx512(TensorType t);
const TypeKernels* kquantKernelsAvx512Vnni(TensorType t);
QuantizeFn q8kQuantizerAvx2();
QuantizeFn q8kQuantizerAvx512();
}  // namespace flashring::qmm::detail

namespace {

namespace qmm = flashring::qmm;
namespace cpu = flashring::cpu;
using qmm::TensorType;

constexpr int64_t kCols = 4096;

// A random K-quant matrix with realistic fp16 scales (~1e-2 .. 1e-3); the bytes do not change the work.
struct KMatrix {
  std::vector<uint8_t> w;
  size_t row_bytes = 0;
};
const KMatrix& kmatrix(TensorType t, int64_t rows) {
  static std::map<std::pair<int, int64_t>, std::unique_ptr<KMatrix>> cache;
  auto& slot = cache[{static_cast<int>(t), rows}];
  if (!slot) {
    slot = std::make_unique<KMatrix>();
    const size_t bb = flashring::gguf::blockBytes(t), nb = static_cast<size_t>(rows * kCols) / 256;
    slot->row_bytes = static_cast<size_t>(kCols) / 256 * bb;
    slot->w.resize(nb * bb);
    std::mt19937_64 rng(static_cast<uint64_t>(t) * 1000 + static_cast<uint64_t>(rows));
    for (auto& b : slot->w) b = static_cast<uint8_t>(rng());
    for (size_t k = 0; k < nb; ++k) {
      uint8_t* blk = slot->w.data() + k * bb;
      const uint16_t d = static_cast<uint16_t>(0x1C00 + rng() % 0x400);  // ~4e-3 .. 8e-3
      std::memcpy(t == TensorType::Q6_K ? blk + 208 : blk, &d, 2);
      if (t != TensorType::Q6_K) std::memcpy(blk + 2, &d, 2);
    }
  }
  return *slot;
}

std::vector<float> activations() {
  std::mt19937_64 rng(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(kCols);
  for (auto& v : x) v = nd(rng);
  return x;
}

struct Variant {
  const char* name;
  cpu::Isa isa;
  bool vnni;
};
const Variant kVariants[] = {{"scalar", cpu::Isa::Scalar, false},
                             {"avx2", cpu::Isa::Avx2, false},
                             {"avx512", cpu::Isa::Avx512, false},
                             {"avx512vnni", cpu::Isa::Avx512, true}};

const qmm::detail::TypeKernels* kernels(const Variant& v, TensorType t) {
  switch (v.isa) {
    case cpu::Isa::Scalar:
      return qmm::detail::kquantKernels(cpu::Isa::Scalar, t);
    case cpu::Isa::Avx2:
      return qmm::detail::kquantKernelsAvx2(t);
    case cpu::Isa::Avx512:
      return v.vnni ? qmm::detail::kquantKernelsAvx512Vnni(t) : qmm::detail::kquantKernelsAvx512(t);
  }
  return nullptr;
}
qmm::detail::QuantizeFn quantizer(const Variant& v) {
  switch (v.isa) {
    case cpu::Isa::Scalar:
      return qmm::detail::q8kQuantizer(cpu::Isa::Scalar);
    case cpu::Isa::Avx2:
      return qmm::detail::q8kQuantizerAvx2();
    case cpu::Isa::Avx512:
      return qmm::detail::q8kQuantizerAvx512();
  }
  return nullptr;
}

void setCounters(benchmark::State& state, size_t weight_bytes) {
  state.counters["weight_GBps"] =
      benchmark::Counter(static_cast<double>(weight_bytes) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_QmmKGemv(benchmark::State& state, TensorType t, Variant v, int64_t rows) {
  cpu::setThreads(1);
  const KMatrix& m = kmatrix(t, rows);
  const qmm::detail::TypeKernels* k = kernels(v, t);
  const qmm::detail::QuantizeFn q = quantizer(v);
  const std::vector<float> x = activations();
  std::vector<uint8_t> act(qmm::actBytes(t, kCols));
  std::vector<float> y(static_cast<size_t>(rows));
  for (auto _ : state) {
    q(x.data(), kCols, act.data());
    for (int64_t r = 0; r < rows; ++r)
      y[static_cast<size_t>(r)] = k->dot(kCols, m.w.data() + static_cast<size_t>(r) * m.row_bytes, act.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  setCounters(state, m.w.size());
}

// The baseline: sgemv on the dequantized matrix (built for this run, freed after it).
void BM_QmmKSgemv(benchmark::State& state, TensorType t, int64_t rows) {
  cpu::setThreads(1);
  const KMatrix& m = kmatrix(t, rows);
  std::vector<float> wf(static_cast<size_t>(rows * kCols));
  qmm::dequantizeRow(t, m.w.data(), wf.data(), wf.size());
  const qmm::Matrix f32{TensorType::F32, reinterpret_cast<const uint8_t*>(wf.data()), rows, kCols,
                        kCols * sizeof(float)};
  const std::vector<float> x = activations();
  std::vector<float> y(static_cast<size_t>(rows));
  qmm::Workspace ws;
  for (auto _ : state) {
    qmm::matmul(f32, x.data(), 1, y.data(), ws);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  setCounters(state, wf.size() * sizeof(float));
}

// The dispatching entry point at the active ISA (qmm::matmul, integer path), to show it costs the same.
void BM_QmmKMatmul(benchmark::State& state, TensorType t, int64_t rows) {
  cpu::setThreads(1);
  const KMatrix& m = kmatrix(t, rows);
  const qmm::Matrix mat{t, m.w.data(), rows, kCols, m.row_bytes};
  const std::vector<float> x = activations();
  std::vector<float> y(static_cast<size_t>(rows));
  qmm::Workspace ws;
  for (auto _ : state) {
    qmm::matmul(mat, x.data(), 1, y.data(), ws, qmm::MatmulPath::Dot);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  setCounters(state, m.w.size());
}

const int kRegistered = [] {
  const std::pair<TensorType, const char*> types[] = {
      {TensorType::Q4_K, "Q4_K"}, {TensorType::Q5_K, "Q5_K"}, {TensorType::Q6_K, "Q6_K"}};
  for (int64_t rows : {int64_t{512}, int64_t{4096}, int64_t{11008}}) {
    const std::string shape = std::to_string(rows) + "x" + std::to_string(kCols);
    for (const auto& [t, tname] : types) {
      for (const Variant& v : kVariants) {
        if (!cpu::isaSupported(v.isa) || (v.vnni && !cpu::hasAvx512Vnni())) continue;
        benchmark::RegisterBenchmark(("BM_QmmK/" + std::string(tname) + "/" + v.name + "/" + shape).c_str(),
                                     BM_QmmKGemv, t, v, rows)
            ->Unit(benchmark::kMicrosecond);
      }
      benchmark::RegisterBenchmark(
          ("BM_QmmK/" + std::string(tname) + "/matmul_" + cpu::isaName(cpu::activeIsa()) + "/" + shape).c_str(),
          BM_QmmKMatmul, t, rows)
          ->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark(("BM_QmmK/" + std::string(tname) + "/sgemv_f32/" + shape).c_str(), BM_QmmKSgemv, t,
                                   rows)
          ->Unit(benchmark::kMicrosecond);
    }
  }
  return 0;
}();

}  // namespace
