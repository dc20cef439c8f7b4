// Decode-shaped attention (one query row per head against a long KV block, SmolLM2-135M's heads): the kernel
// blockAttention() runs against the portable OpenBLAS implementation. Measured while choosing the decode
// path: a key-major loop without packing (one row needs no tiles) ran 1.9x slower at 2048 keys and 3.4x at
// 32768 than the packed AVX2 micro-kernels, so decode uses the same kernel as prefill.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "attention/kernel_internal.h"
#include "flashring/attention.h"

namespace {

using namespace flashring;

struct Data {
  AttentionShape s;
  std::vector<float> q, k, v, out, lse;
  explicit Data(int kv) : s{1, 1, kv, 9, 3, 64} {  // SmolLM2-135M's heads
    std::mt19937 g(1);
    std::normal_distribution<float> d;
    q.resize(9 * 64);
    k.resize(static_cast<size_t>(kv) * 3 * 64);
    v.resize(k.size());
    for (auto* x : {&q, &k, &v})
      for (auto& e : *x) e = d(g);
    out.resize(q.size());
    lse.resize(9);
  }
};

void BM_DecodeAttention(benchmark::State& st) {
  Data d(static_cast<int>(st.range(0)));
  for (auto _ : st) blockAttention(d.q.data(), d.k.data(), d.v.data(), d.s, {}, d.out.data(), d.lse.data());
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations()) * static_cast<int64_t>(d.k.size() * 8));
  st.SetLabel(std::string("blockAttention: ") + attn::kernelImplName(attn::bestKernelImpl()));
}

void BM_DecodeAttentionPortable(benchmark::State& st) {
  Data d(static_cast<int>(st.range(0)));
  const auto impl = attn::KernelImpl::Portable;
  for (auto _ : st)
    attn::blockAttentionWith(impl, d.q.data(), d.k.data(), d.v.data(), d.s, {}, d.out.data(), d.lse.data());
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations()) * static_cast<int64_t>(d.k.size() * 8));
  st.SetLabel(std::string("baseline: ") + attn::kernelImplName(impl));
}

BENCHMARK(BM_DecodeAttention)->Arg(2048)->Arg(32768)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DecodeAttentionPortable)->Arg(2048)->Arg(32768)->Unit(benchmark::kMicrosecond);

}  // namespace
