// Single-core throughput of GGUF dequantization (include/flashring/gguf.h), scalar reference against AVX2,
// for the types the default model uses (Q8_0, Q4_1) and F16, on a 4096 x 4096 weight matrix.
//
// bytes_per_second counts the fp32 *output* (4 bytes per value), so the GB/s column compares directly with
// the memcpy baseline, which copies the same 64 MiB of floats.
//
//   flashring_kernel_bench --benchmark_filter=BM_Dequant --benchmark_min_time=0.5
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "engine/dequant_internal.h"
#include "flashring/gguf.h"
#include "flashring/quant.h"

namespace {

namespace g = flashring::gguf;

constexpr size_t kRows = 4096, kCols = 4096, kN = kRows * kCols;

struct DequantBuffers {
  std::vector<float> src_f32, out;
  DequantBuffers() : src_f32(kN), out(kN) {
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (auto& v : src_f32) v = normal(rng);
    std::fill(out.begin(), out.end(), 0.0f);  // touch every page before timing
  }
};

DequantBuffers& buffers() {
  static DequantBuffers b;
  return b;
}

// Random blocks with moderate fp16 scales (the values do not change the work done).
std::vector<uint8_t> encoded(g::TensorType t) {
  std::mt19937 rng(static_cast<unsigned>(t) + 1);
  std::vector<uint8_t> v(kN / g::blockSize(t) * g::blockBytes(t));
  for (auto& x : v) x = static_cast<uint8_t>(rng());
  const size_t bb = g::blockBytes(t);
  const uint16_t scale = 0x2E66;  // ~0.1 in fp16
  if (t == g::TensorType::F16) {
    for (size_t i = 0; i < kN; ++i) v[2 * i + 1] &= 0x3B;  // finite halves
  } else {
    for (size_t b = 0; b < v.size() / bb; ++b) {
      std::memcpy(&v[b * bb], &scale, 2);
      if (t == g::TensorType::Q4_1) std::memcpy(&v[b * bb + 2], &scale, 2);
    }
  }
  return v;
}

void setOutputBytes(benchmark::State& state) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(kN * sizeof(float)));
}

void BM_DequantMemcpy(benchmark::State& state) {
  DequantBuffers& b = buffers();
  for (auto _ : state) {
    std::memcpy(b.out.data(), b.src_f32.data(), kN * sizeof(float));
    benchmark::ClobberMemory();
  }
  setOutputBytes(state);
}

void BM_Dequant(benchmark::State& state, g::TensorType t, bool avx2) {
  if (avx2 && !flashring::quant::isaSupported(flashring::quant::Isa::Avx2)) {
    state.SkipWithError("this CPU has no AVX2");
    return;
  }
  DequantBuffers& b = buffers();
  const std::vector<uint8_t> src = encoded(t);
  for (auto _ : state) {
    if (avx2) {
      g::detail::dequantizeAvx2(t, src.data(), b.out.data(), kN);
    } else {
      g::dequantizeReference(t, src.data(), b.out.data(), kN);
    }
    benchmark::ClobberMemory();
  }
  setOutputBytes(state);
  state.counters["in_MiB"] = static_cast<double>(src.size()) / (1 << 20);
}

BENCHMARK(BM_DequantMemcpy)->Name("BM_Dequant/memcpy_f32")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Dequant, q4_1_scalar, g::TensorType::Q4_1, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Dequant, q4_1_avx2, g::TensorType::Q4_1, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Dequant, q8_0_scalar, g::TensorType::Q8_0, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Dequant, q8_0_avx2, g::TensorType::Q8_0, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Dequant, f16_scalar, g::TensorType::F16, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Dequant, f16_avx2, g::TensorType::F16, true)->Unit(benchmark::kMillisecond);

}  // namespace
