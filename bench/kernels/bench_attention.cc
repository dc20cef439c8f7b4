// Single-core throughput of the block attention kernel and the LSE merge.
//
// Shapes: one rank's block in the TokenRing paper's LLaMA2-7B attention (MHA, 32 heads x 128), q_len =
// kv_len = 1024 and 512, non-causal (an off-diagonal block) and causal-diagonal (the block against its own
// keys); a GQA 4:1 block (32 query heads over 8 KV heads); a head_dim 64 block. FLOP/s counts
// 4 * q * kv * heads * head_dim for non-causal and 4 * (visible query-key pairs) * heads * head_dim for
// causal (q (q + 1) / 2 pairs on the diagonal: about half). The same shapes with PyTorch's
// scaled_dot_product_attention: bench/sdpa_torch.py.
//
//   BM_Attention/<impl>/q/kv/heads/kv_heads/head_dim/causal      implementations side by side
//       impl 0 = avx2-micro (own micro-kernels, the default), 1 = avx2-blas (OpenBLAS sgemm + AVX2 softmax),
//       2 = portable (OpenBLAS sgemm + scalar softmax)
//   BM_AttentionBlasThreads/<threads>/...   avx2-blas with OpenBLAS at 1 and 2 threads
//   BM_AttentionTuning/<impl>/<block_rows>/<key_tile>/...   the tiling sweep behind the defaults
//   BM_AttentionMerge/<impl>/rows/heads/head_dim   impl 0 = auto (AVX2), 1 = portable; bytes = 3 out arrays
//
//   flashring_kernel_bench --benchmark_filter='BM_Attention/' --benchmark_min_time=1
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "attention/kernel_internal.h"
#include "attention/merge_internal.h"
#include "flashring/attention.h"

namespace {

using flashring::AttentionShape;
using flashring::BlockAttentionOptions;
using flashring::attn::KernelImpl;
using flashring::attn::KernelTuning;

struct Tensors {
  std::vector<float> q, k, v, out, lse;
};

Tensors makeTensors(const AttentionShape& s) {
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.f, 1.f);
  Tensors t;
  t.q.resize(size_t(s.batch) * s.q_len * s.heads * s.head_dim);
  t.k.resize(size_t(s.batch) * s.kv_len * s.kv_heads * s.head_dim);
  t.v.resize(t.k.size());
  t.out.resize(t.q.size());
  t.lse.resize(size_t(s.batch) * s.q_len * s.heads);
  for (auto& x : t.q) x = normal(rng);
  for (auto& x : t.k) x = normal(rng);
  for (auto& x : t.v) x = normal(rng);
  return t;
}

// 4 flops per visible (query, key, head, dim): 2 for Q K^T, 2 for P V.
double attentionFlops(const AttentionShape& s, bool causal) {
  double pairs = 0;
  if (!causal) {
    pairs = double(s.q_len) * s.kv_len;
  } else {  // diagonal block: query i sees keys 0..i
    for (int i = 0; i < s.q_len; ++i) pairs += i + 1 < s.kv_len ? i + 1 : s.kv_len;
  }
  return 4.0 * pairs * s.heads * s.head_dim * s.batch;
}

KernelImpl implOf(int64_t i) {
  switch (i) {
    case 0:
      return KernelImpl::Avx2Micro;
    case 1:
      return KernelImpl::Avx2Blas;
    default:
      return KernelImpl::Portable;
  }
}

// Args from index `first`: q, kv, heads, kv_heads, head_dim, causal.
AttentionShape shapeOf(const benchmark::State& state, int first, bool* causal) {
  AttentionShape s;
  s.batch = 1;
  s.q_len = int(state.range(first));
  s.kv_len = int(state.range(first + 1));
  s.heads = int(state.range(first + 2));
  s.kv_heads = int(state.range(first + 3));
  s.head_dim = int(state.range(first + 4));
  *causal = state.range(first + 5) != 0;
  return s;
}

void runAttention(benchmark::State& state, KernelImpl impl, const AttentionShape& s, bool causal,
                  const KernelTuning& tuning) {
  if (!flashring::attn::kernelImplSupported(impl)) {
    state.SkipWithError("implementation not supported on this CPU");
    return;
  }
  Tensors t = makeTensors(s);
  BlockAttentionOptions o;
  o.causal = causal;
  for (auto _ : state) {
    flashring::attn::blockAttentionWith(impl, t.q.data(), t.k.data(), t.v.data(), s, o, t.out.data(), t.lse.data(),
                                        tuning);
    benchmark::DoNotOptimize(t.out.data());
    benchmark::ClobberMemory();
  }
  state.counters["FLOP/s"] =
      benchmark::Counter(attentionFlops(s, causal), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(flashring::attn::kernelImplName(impl));
}

void BM_Attention(benchmark::State& state) {
  bool causal = false;
  const AttentionShape s = shapeOf(state, 1, &causal);
  flashring::attn::setBlasThreads(1);
  runAttention(state, implOf(state.range(0)), s, causal, {});
}

void BM_AttentionBlasThreads(benchmark::State& state) {
  bool causal = false;
  const AttentionShape s = shapeOf(state, 1, &causal);
  flashring::attn::setBlasThreads(int(state.range(0)));
  runAttention(state, KernelImpl::Avx2Blas, s, causal, {});
  flashring::attn::setBlasThreads(1);
}

void BM_AttentionTuning(benchmark::State& state) {
  bool causal = false;
  const AttentionShape s = shapeOf(state, 3, &causal);
  flashring::attn::setBlasThreads(1);
  runAttention(state, implOf(state.range(0)), s, causal, {int(state.range(1)), int(state.range(2))});
}

// The paper's shapes: {q, kv, heads, kv_heads, head_dim, causal}.
const std::vector<std::vector<int64_t>> kShapes = {
    {1024, 1024, 32, 32, 128, 0}, {1024, 1024, 32, 32, 128, 1},  // LLaMA2-7B MHA
    {512, 512, 32, 32, 128, 0},   {512, 512, 32, 32, 128, 1},    //
    {1024, 1024, 32, 8, 128, 0},  {1024, 1024, 32, 8, 128, 1},   // GQA 4:1
    {1024, 1024, 32, 32, 64, 0},                                 // head_dim 64
};

void attentionArgs(benchmark::internal::Benchmark* b) {
  for (int64_t impl : {0, 1, 2}) {
    for (const auto& s : kShapes) {
      std::vector<int64_t> args{impl};
      args.insert(args.end(), s.begin(), s.end());
      b->Args(args);
    }
  }
  b->ArgNames({"impl", "q", "kv", "h", "hkv", "d", "causal"});
}

void blasThreadArgs(benchmark::internal::Benchmark* b) {
  for (int64_t threads : {1, 2}) {
    for (const auto& s : {kShapes[0], kShapes[1], kShapes[2]}) {
      std::vector<int64_t> args{threads};
      args.insert(args.end(), s.begin(), s.end());
      b->Args(args);
    }
  }
  b->ArgNames({"threads", "q", "kv", "h", "hkv", "d", "causal"});
}

void tuningArgs(benchmark::internal::Benchmark* b) {
  const std::vector<std::vector<int64_t>> shapes = {kShapes[0], kShapes[1], kShapes[4], kShapes[6]};
  for (const auto& s : shapes) {
    for (int64_t rows : {48, 96, 192}) {
      for (int64_t tile : {32, 64, 128, 256, 512}) {
        std::vector<int64_t> args{0, rows, tile};
        args.insert(args.end(), s.begin(), s.end());
        b->Args(args);
      }
    }
    for (int64_t rows : {64, 256, 1024}) {
      for (int64_t tile : {128, 256, 1024}) {
        std::vector<int64_t> args{1, rows, tile};
        args.insert(args.end(), s.begin(), s.end());
        b->Args(args);
      }
    }
  }
  b->ArgNames({"impl", "rows", "tile", "q", "kv", "h", "hkv", "d", "causal"});
}

BENCHMARK(BM_Attention)->Apply(attentionArgs)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AttentionBlasThreads)->Apply(blasThreadArgs)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AttentionTuning)->Apply(tuningArgs)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_AttentionMerge(benchmark::State& state) {
  const auto impl = state.range(0) == 0 ? flashring::attn::MergeImpl::Auto : flashring::attn::MergeImpl::Portable;
  const int64_t rows = state.range(1);
  const int heads = int(state.range(2));
  const int d = int(state.range(3));
  const size_t pairs = size_t(rows) * heads;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.f, 1.f), ul(0.f, 10.f);
  std::vector<float> out(pairs * d), out_b(pairs * d), lse(pairs), lse_b(pairs);
  for (auto& x : out_b) x = u(rng);
  for (auto& x : lse_b) x = ul(rng);
  for (auto& x : out) x = u(rng);
  for (auto& x : lse) x = ul(rng);
  for (auto _ : state) {
    // Merging the same b again and again: lse only grows (stays finite), and the cost does not depend on values.
    flashring::attn::mergeAttentionWith(impl, out.data(), lse.data(), out_b.data(), lse_b.data(), rows, heads, d);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(pairs * d * 3 * sizeof(float)));
  state.SetLabel(flashring::attn::mergeImplName(impl));
}
BENCHMARK(BM_AttentionMerge)
    ->Args({0, 1024, 32, 128})
    ->Args({1, 1024, 32, 128})
    ->Args({0, 64, 32, 128})
    ->Args({1, 64, 32, 128})
    ->ArgNames({"impl", "rows", "h", "d"})
    ->Unit(benchmark::kMicrosecond);

}  // namespace
