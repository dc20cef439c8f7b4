// The CUDA codecs (flashring/cuda/codec.h) against the CPU codecs: the same wire bytes and the same decoded
// floats, bit for bit, for every option and every input dtype. Without a usable GPU the device tests skip with
// the CUDA runtime's own reason (for example "CUDA driver version is insufficient ..." on a machine that has the
// toolkit but no GPU); the argument checks that need no device run everywhere.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "flashring/cuda/codec.h"
#include "flashring/cuda/runtime.h"
#include "flashring/error.h"
#include "flashring/quant.h"

namespace flashring {
namespace {

std::vector<float> input(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = nd(rng);
  for (size_t i = 0; i < n; i += 997) x[i] = 4000.0f;  // spikes
  if (n > 300) {
    x[129] = std::numeric_limits<float>::quiet_NaN();
    x[140] = -std::numeric_limits<float>::infinity();
    for (size_t i = 256; i < 256 + 64 && i < n; ++i) x[i] = 0.5f;  // a constant stretch
  }
  return x;
}

std::vector<quant::Config> configs() {
  std::vector<quant::Config> v;
  for (int bits : {4, 5, 6, 8})
    for (bool sym : {false, true})
      for (int spikes : {0, 2})
        for (bool rot : {false, true}) v.push_back({bits, 128, sym, spikes, rot, bits == 4});
  v.push_back({4, 32, false, 1, false, false});
  v.push_back({8, 96, false, 0, false, true});
  return v;
}

TEST(CudaRuntime, SaysWhetherADeviceIsUsable) {
  const int n = cuda::deviceCount();
  const std::string why = cuda::unavailableReason();
  if (n == 0) {
    EXPECT_FALSE(why.empty());
    EXPECT_THROW(cuda::DeviceBuffer(1024), DeviceError);
    std::cout << "[ no device ] " << why << "\n";
  } else {
    EXPECT_TRUE(why.empty()) << why;
    EXPECT_FALSE(cuda::deviceName(0).empty());
    std::cout << "[ device ] " << cuda::deviceName(0) << "\n";
  }
}

TEST(CudaCodec, BadArgumentsAreRejectedBeforeAnyDeviceWork) {
  quant::Config bad;
  bad.bits = 3;
  float dummy = 0;
  uint8_t out[16];
  EXPECT_THROW(cuda::quantize(&dummy, DType::F32, 1, bad, out), InvalidArgument);
  EXPECT_THROW(cuda::dequantize(out, 1, bad, &dummy), InvalidArgument);
  EXPECT_THROW(cuda::quantize(nullptr, DType::F32, 8, quant::Config{}, out), InvalidArgument);
  EXPECT_NO_THROW(cuda::quantize(nullptr, DType::F32, 0, quant::Config{}, nullptr));  // empty: nothing to do
  EXPECT_NO_THROW(cuda::dequantizeAccumulate(nullptr, 0, quant::Config{}, nullptr));
}

TEST(CudaCodec, WireBytesEqualTheCpuCodec) {
  REQUIRE_CUDA_DEVICE();
  for (const quant::Config& cfg : configs()) {
    for (size_t n : {size_t{1}, size_t{200}, size_t{128 * 40 + 33}, size_t{1} << 16}) {
      const std::vector<float> x = input(n, static_cast<uint32_t>(n + cfg.bits));
      std::vector<uint8_t> want(quant::encodedBytes(n, cfg)), got(want.size(), 0xCD);
      quant::quantize(x.data(), n, cfg, want.data());
      cuda::DeviceBuffer dx(n * 4), dq(want.size());
      dx.upload(x.data(), n * 4);
      cuda::quantize(dx.data(), DType::F32, n, cfg, dq.data());
      cuda::synchronize();
      dq.download(got.data(), got.size());
      ASSERT_EQ(got, want) << quant::describe(cfg) << " n=" << n;

      std::vector<float> dec(n), dec_cpu(n);
      quant::dequantize(want.data(), n, cfg, dec_cpu.data());
      cuda::DeviceBuffer dout(n * 4);
      cuda::dequantize(dq.data(), n, cfg, dout.data());
      cuda::synchronize();
      dout.download(dec.data(), n * 4);
      ASSERT_EQ(std::memcmp(dec.data(), dec_cpu.data(), n * 4), 0) << quant::describe(cfg) << " n=" << n;

      std::vector<float> acc = input(n, 7), acc_cpu = acc;
      quant::dequantizeAccumulate(want.data(), n, cfg, acc_cpu.data());
      dout.upload(acc.data(), n * 4);
      cuda::dequantizeAccumulate(dq.data(), n, cfg, static_cast<float*>(dout.data()));
      cuda::synchronize();
      dout.download(acc.data(), n * 4);
      ASSERT_EQ(std::memcmp(acc.data(), acc_cpu.data(), n * 4), 0) << quant::describe(cfg) << " n=" << n;
    }
  }
}

uint16_t toHalfBits(float f) {  // test-side fp16 rounding (nearest even) for inputs that are exact in fp16
  _Float16 h = static_cast<_Float16>(f);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}

TEST(CudaCodec, HalfAndBf16InputsEncodeAsTheirWidenedValues) {
  REQUIRE_CUDA_DEVICE();
  const size_t n = 128 * 33 + 5;
  const quant::Config cfg{4, 128, false, 1, true, false};
  std::vector<float> x = input(n, 3);
  for (auto& v : x)
    if (std::isfinite(v)) v = std::round(v * 64.0f) / 64.0f;  // exact in fp16 and bf16's range of interest
  for (DType t : {DType::F16, DType::BF16}) {
    std::vector<uint16_t> h(n);
    std::vector<float> widened(n);
    for (size_t i = 0; i < n; ++i) {
      h[i] = t == DType::BF16 ? quant::floatToBf16(x[i]) : toHalfBits(x[i]);
      widened[i] = t == DType::BF16 ? quant::bf16ToFloat(h[i]) : static_cast<float>(std::bit_cast<_Float16>(h[i]));
    }
    std::vector<uint8_t> want(quant::encodedBytes(n, cfg)), got(want.size());
    quant::quantize(widened.data(), n, cfg, want.data());
    cuda::DeviceBuffer dx(n * 2), dq(want.size());
    dx.upload(h.data(), n * 2);
    cuda::quantize(dx.data(), t, n, cfg, dq.data());
    cuda::synchronize();
    dq.download(got.data(), got.size());
    EXPECT_EQ(got, want) << dtypeName(t);
    // Decoding to the narrow type rounds the fp32 decode to nearest even.
    std::vector<float> dec(n);
    quant::dequantize(want.data(), n, cfg, dec.data());
    cuda::DeviceBuffer dout(n * 2);
    cuda::dequantize(dq.data(), n, cfg, dout.data(), t);
    cuda::synchronize();
    std::vector<uint16_t> narrow(n);
    dout.download(narrow.data(), n * 2);
    for (size_t i = 0; i < n; ++i) {
      const uint16_t expect = t == DType::BF16 ? quant::floatToBf16(dec[i]) : toHalfBits(dec[i]);
      if (std::isnan(dec[i])) continue;  // NaN payloads may differ between the two roundings
      ASSERT_EQ(narrow[i], expect) << dtypeName(t) << " at " << i;
    }
  }
}

TEST(CudaCodec, CorruptSpikeIndexIsAnErrorAndLeavesTheOutput) {
  REQUIRE_CUDA_DEVICE();
  const size_t n = 1000;
  const quant::Config cfg{4, 128, false, 2, false, false};
  const std::vector<float> x = input(n, 5);
  std::vector<uint8_t> enc(quant::encodedBytes(n, cfg));
  quant::quantize(x.data(), n, cfg, enc.data());
  const size_t groups = (n + 127) / 128;
  const size_t idx_off = enc.size() - groups * 2 * 6;
  const uint16_t bad = 200;  // outside its group of 128
  std::memcpy(enc.data() + idx_off, &bad, 2);
  cuda::DeviceBuffer din(enc.size()), dout(n * 4);
  din.upload(enc.data(), enc.size());
  std::vector<float> sentinel(n, 42.0f), after(n);
  dout.upload(sentinel.data(), n * 4);
  EXPECT_THROW(cuda::dequantize(din.data(), n, cfg, dout.data()), InvalidArgument);
  dout.download(after.data(), n * 4);
  EXPECT_EQ(after, sentinel);
}

}  // namespace
}  // namespace flashring
