// Single-core throughput of the group-wise codecs and the bf16 conversions, per instruction set.
//
// Every benchmark reports bytes_per_second over the *fp32* bytes of the run (4 n), so the GB/s column of
// quantize, dequantize, dequantize-accumulate and quantize+dequantize compares directly with memcpy of the
// same fp32 buffer. Target (flash all-reduce on CPU): quantize + dequantize >= 50% of memcpy, i.e.
// q+dq GB/s >= memcpy GB/s / 2, at n = 4M floats (16 MiB), g = 128, INT8 and INT4.
//
//   flashring_kernel_bench --benchmark_filter='codec|bf16|memcpy' --benchmark_min_time=0.2
// The -s1 and -s2 rows (one or two spikes per group of 128, quant.h "Spike reserving") give the cost of
// spike reserving against the plain int8-g128 and int4-g128 rows.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flashring/quant.h"

namespace {

using flashring::quant::Config;
using flashring::quant::Isa;
namespace q = flashring::quant;

constexpr size_t kN = size_t{4} << 20;  // 4M floats = 16 MiB

struct Buffers {
  std::vector<float> x, y, acc;
  std::vector<uint8_t> enc;
  std::vector<uint16_t> b16;

  Buffers() : x(kN), y(kN), acc(kN), enc(kN + kN / 32 * (4 + 6 * 8) + 64), b16(kN) {
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (auto& v : x) v = normal(rng);
    std::fill(y.begin(), y.end(), 0.0f);  // touch every page before timing
    std::fill(acc.begin(), acc.end(), 0.0f);
    std::fill(enc.begin(), enc.end(), uint8_t{0});
    std::fill(b16.begin(), b16.end(), uint16_t{0});
  }
};

Buffers& buffers() {
  static Buffers b;
  return b;
}

void setFp32Bytes(benchmark::State& state) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(kN * sizeof(float)));
}

void BM_Memcpy(benchmark::State& state) {
  Buffers& b = buffers();
  for (auto _ : state) {
    std::memcpy(b.y.data(), b.x.data(), kN * sizeof(float));
    benchmark::ClobberMemory();
  }
  setFp32Bytes(state);
}

enum class Op { Quantize, Dequantize, DequantizeAcc, QuantDequant };

void BM_Codec(benchmark::State& state, Isa isa, Op op, Config cfg) {
  Buffers& b = buffers();
  q::quantize(isa, b.x.data(), kN, cfg, b.enc.data());  // valid input for the decoders
  for (auto _ : state) {
    switch (op) {
      case Op::Quantize:
        q::quantize(isa, b.x.data(), kN, cfg, b.enc.data());
        break;
      case Op::Dequantize:
        q::dequantize(isa, b.enc.data(), kN, cfg, b.y.data());
        break;
      case Op::DequantizeAcc:
        q::dequantizeAccumulate(isa, b.enc.data(), kN, cfg, b.acc.data());
        break;
      case Op::QuantDequant:
        q::quantize(isa, b.x.data(), kN, cfg, b.enc.data());
        q::dequantize(isa, b.enc.data(), kN, cfg, b.y.data());
        break;
    }
    benchmark::ClobberMemory();
  }
  setFp32Bytes(state);
  state.counters["encoded_MiB"] = static_cast<double>(q::encodedBytes(kN, cfg)) / (1 << 20);
}

enum class Bf16Op { To, From, FromAcc };

void BM_Bf16(benchmark::State& state, Isa isa, Bf16Op op) {
  Buffers& b = buffers();
  q::toBf16(isa, b.x.data(), kN, b.b16.data());
  for (auto _ : state) {
    switch (op) {
      case Bf16Op::To:
        q::toBf16(isa, b.x.data(), kN, b.b16.data());
        break;
      case Bf16Op::From:
        q::fromBf16(isa, b.b16.data(), kN, b.y.data());
        break;
      case Bf16Op::FromAcc:
        q::fromBf16Accumulate(isa, b.b16.data(), kN, b.acc.data());
        break;
    }
    benchmark::ClobberMemory();
  }
  setFp32Bytes(state);
}

// Registered at static-initialisation time (so BENCHMARK_MAIN works) and only for the ISAs this CPU runs.
const int kRegistered = [] {
  benchmark::RegisterBenchmark("memcpy/16MiB", BM_Memcpy);
  const Isa isas[] = {Isa::Scalar, Isa::Avx2, Isa::Avx512};
  const struct {
    Op op;
    const char* name;
  } ops[] = {{Op::Quantize, "quantize"},
             {Op::Dequantize, "dequantize"},
             {Op::DequantizeAcc, "dequantize_acc"},
             {Op::QuantDequant, "quant+dequant"}};
  // INT8, INT6, INT5 and INT4 g128, without and with one or two spikes per group (spike reserving: its cost
  // over plain). INT6/INT5 are bit planes over the INT4 layout (quant.h): their cost over INT4 and INT8.
  const Config cfgs[] = {{8, 128, false},
                         {6, 128, false},
                         {5, 128, false},
                         {4, 128, false},
                         {8, 128, false, 1},
                         {4, 128, false, 1},
                         {8, 128, false, 2},
                         {6, 128, false, 2},
                         {4, 128, false, 2},
                         // Rotation and clipping (quant.h "Rotation"): their cost over plain INT4 s2.
                         {4, 128, false, 2, true, false},
                         {4, 128, false, 2, false, true},
                         {4, 128, false, 2, true, true}};
  for (const Config& cfg : cfgs) {
    for (const auto& o : ops) {
      for (Isa isa : isas) {
        if (!q::isaSupported(isa)) continue;
        const std::string name = std::string("codec/") + o.name + "/" + q::describe(cfg) + "/" + q::isaName(isa);
        benchmark::RegisterBenchmark(name.c_str(), BM_Codec, isa, o.op, cfg);
      }
    }
  }
  const struct {
    Bf16Op op;
    const char* name;
  } bops[] = {{Bf16Op::To, "toBf16"}, {Bf16Op::From, "fromBf16"}, {Bf16Op::FromAcc, "fromBf16Accumulate"}};
  for (const auto& o : bops) {
    for (Isa isa : isas) {
      if (!q::isaSupported(isa)) continue;
      benchmark::RegisterBenchmark((std::string("bf16/") + o.name + "/" + q::isaName(isa)).c_str(), BM_Bf16, isa, o.op);
    }
  }
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
