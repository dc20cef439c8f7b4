// flashring_cuda_bench: the CUDA kernels' throughput beside the device's own copy bandwidth, and their error
// against the CPU reference, from the same run. For the GPU check script (bench/gpu/run_gpu_checks.sh).
//
//   codec     quantize / dequantize / dequantize-accumulate of n fp32 values per codec: GB/s of memory traffic
//             (bytes read + written) and that as a fraction of a device-to-device cudaMemcpy of the same
//             traffic (the goal: >= 80%); wire bytes compared with the CPU codec (mismatching bytes)
//   attention the block kernel (f16 and f32 in) on a causal LLaMA-like shape: ms and TFLOP/s; max error of out
//             and lse against the CPU kernel on the fp32 inputs (PyTorch SDPA on the same shape:
//             bench/gpu/sdpa_cuda.py)
// Without a usable device it prints the CUDA runtime's reason and exits 77.
//
//   flashring_cuda_bench [--n 67108864] [--iters 20] [--json out.json]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "flashring/attention.h"
#include "flashring/cuda/attention.h"
#include "flashring/cuda/codec.h"
#include "flashring/cuda/runtime.h"
#include "flashring/quant.h"

using namespace flashring;

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "cuda_bench: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// Median ms of `iters` runs of fn, timed with events on the default stream.
template <class F>
double timeMs(int iters, F&& fn) {
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  fn();  // warm-up
  check(cudaDeviceSynchronize(), "warm-up");
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    check(cudaEventRecord(a), "record");
    fn();
    check(cudaEventRecord(b), "record");
    check(cudaEventSynchronize(b), "sync");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b), "elapsed");
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  size_t n = size_t{1} << 26;
  int iters = 20;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--n" && i + 1 < argc) {
      n = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--iters" && i + 1 < argc) {
      iters = std::atoi(argv[++i]);
    } else if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr, "usage: flashring_cuda_bench [--n VALUES] [--iters N] [--json FILE]\n");
      return 2;
    }
  }
  if (cuda::deviceCount() == 0) {
    std::printf("cuda_bench: no usable CUDA device: %s\n", cuda::unavailableReason().c_str());
    return 77;
  }
  std::printf("device: %s\n", cuda::deviceName(0).c_str());
  nlohmann::json out;
  out["device"] = cuda::deviceName(0);
  out["n"] = n;

  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = nd(rng);
  cuda::DeviceBuffer dx(n * 4), dcopy(n * 4), dacc(n * 4);
  dx.upload(x.data(), n * 4);

  // The baseline: a device-to-device copy moving the same traffic (read + write).
  const double copy_ms =
      timeMs(iters, [&] { check(cudaMemcpyAsync(dcopy.data(), dx.data(), n * 4, cudaMemcpyDeviceToDevice), "copy"); });
  const double copy_gbs = 2.0 * n * 4 / (copy_ms * 1e6);
  std::printf("d2d copy   %10.3f ms  %8.1f GB/s (read + write)\n", copy_ms, copy_gbs);
  out["copy_gbs"] = copy_gbs;

  std::printf("%-22s %10s %10s %8s %10s %10s %8s %10s %8s\n", "codec", "enc ms", "enc GB/s", "of copy", "dec ms",
              "dec GB/s", "of copy", "acc GB/s", "bad B");
  for (const quant::Config& cfg :
       {quant::Config{8, 128}, quant::Config{4, 128}, quant::Config{4, 128, false, 1},
        quant::Config{4, 128, false, 0, true}, quant::Config{4, 128, false, 1, true, true}}) {
    const size_t eb = quant::encodedBytes(n, cfg);
    cuda::DeviceBuffer dq(eb);
    const double enc = timeMs(iters, [&] { cuda::quantize(dx.data(), DType::F32, n, cfg, dq.data()); });
    const double dec = timeMs(iters, [&] { cuda::dequantize(dq.data(), n, cfg, dcopy.data()); });
    const double acc =
        timeMs(iters, [&] { cuda::dequantizeAccumulate(dq.data(), n, cfg, static_cast<float*>(dacc.data())); });
    const double enc_gbs = (n * 4.0 + eb) / (enc * 1e6), dec_gbs = (n * 4.0 + eb) / (dec * 1e6);
    const double acc_gbs = (n * 8.0 + eb) / (acc * 1e6);
    std::vector<uint8_t> cpu(eb), gpu(eb);
    quant::quantize(x.data(), n, cfg, cpu.data());
    dq.download(gpu.data(), eb);
    size_t bad = 0;
    for (size_t i = 0; i < eb; ++i) bad += cpu[i] != gpu[i];
    std::printf("%-22s %10.3f %10.1f %7.0f%% %10.3f %10.1f %7.0f%% %10.1f %8zu\n", quant::describe(cfg).c_str(), enc,
                enc_gbs, 100 * enc_gbs / copy_gbs, dec, dec_gbs, 100 * dec_gbs / copy_gbs, acc_gbs, bad);
    out["codecs"].push_back({{"codec", quant::describe(cfg)},
                             {"encode_ms", enc},
                             {"encode_gbs", enc_gbs},
                             {"decode_ms", dec},
                             {"decode_gbs", dec_gbs},
                             {"accumulate_gbs", acc_gbs},
                             {"encode_fraction_of_copy", enc_gbs / copy_gbs},
                             {"mismatching_bytes", bad}});
  }

  // Attention: LLaMA-7B-like heads, causal, one block of 2048 queries against 2048 keys.
  const AttentionShape s{1, 2048, 2048, 32, 32, 128};
  BlockAttentionOptions o;
  o.causal = true;
  const size_t nq = size_t(s.q_len) * s.heads * s.head_dim, nl = size_t(s.q_len) * s.heads;
  std::vector<float> q(nq), k(nq), v(nq);
  for (auto* t : {&q, &k, &v})
    for (auto& e : *t) e = nd(rng);
  cuda::DeviceBuffer dq(nq * 4), dk(nq * 4), dv(nq * 4), dout(nq * 4), dlse(nl * 4);
  dq.upload(q.data(), nq * 4);
  dk.upload(k.data(), nq * 4);
  dv.upload(v.data(), nq * 4);
  const double flops = 4.0 * s.heads * s.head_dim * (double(s.q_len) * (s.q_len + 1) / 2);
  const double f32_ms = timeMs(std::max(3, iters / 4), [&] {
    cuda::blockAttention(dq.data(), dk.data(), dv.data(), DType::F32, s, o, dout.data(),
                         static_cast<float*>(dlse.data()));
  });
  std::vector<float> gout(nq), glse(nl), cout_(nq), clse(nl);
  dout.download(gout.data(), nq * 4);
  dlse.download(glse.data(), nl * 4);
  blockAttention(q.data(), k.data(), v.data(), s, o, cout_.data(), clse.data());
  double eo = 0, el = 0;
  for (size_t i = 0; i < nq; ++i) eo = std::max(eo, double(std::fabs(gout[i] - cout_[i])));
  for (size_t i = 0; i < nl; ++i) el = std::max(el, double(std::fabs(glse[i] - clse[i])));
  std::printf("attention f32 b1 s2048 h32 d128 causal: %.3f ms, %.2f TFLOP/s, max err out %.2e lse %.2e vs CPU\n",
              f32_ms, flops / (f32_ms * 1e9), eo, el);
  std::vector<uint16_t> h(nq);
  for (size_t i = 0; i < nq; ++i) h[i] = quant::floatToBf16(q[i]);
  dq.upload(h.data(), nq * 2);
  for (size_t i = 0; i < nq; ++i) h[i] = quant::floatToBf16(k[i]);
  dk.upload(h.data(), nq * 2);
  for (size_t i = 0; i < nq; ++i) h[i] = quant::floatToBf16(v[i]);
  dv.upload(h.data(), nq * 2);
  const double bf16_ms = timeMs(std::max(3, iters / 4), [&] {
    cuda::blockAttention(dq.data(), dk.data(), dv.data(), DType::BF16, s, o, dout.data(),
                         static_cast<float*>(dlse.data()));
  });
  std::printf("attention bf16 same shape: %.3f ms, %.2f TFLOP/s\n", bf16_ms, flops / (bf16_ms * 1e9));
  out["attention"] = {{"shape", "b1 s2048 h32 d128 causal"},
                      {"f32_ms", f32_ms},
                      {"bf16_ms", bf16_ms},
                      {"f32_tflops", flops / (f32_ms * 1e9)},
                      {"bf16_tflops", flops / (bf16_ms * 1e9)},
                      {"max_err_out", eo},
                      {"max_err_lse", el}};
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}
