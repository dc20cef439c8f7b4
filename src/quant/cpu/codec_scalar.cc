// Scalar reference codecs: plain per-group C++, the definition every SIMD kernel is tested against.
// Also the configuration helpers of quant.h (validate, encodedBytes, describe, bf16 conversions).
#include <string>

#include "flashring/error.h"
#include "quant/cpu/codec_internal.h"

namespace flashring::quant {

void validate(const Config& cfg) {
  if (cfg.bits != 4 && cfg.bits != 5 && cfg.bits != 6 && cfg.bits != 8) {
    throw InvalidArgument("quant::Config: bits must be 4, 5, 6 or 8, got " + std::to_string(cfg.bits));
  }
  if (cfg.group_size < kMinGroup || cfg.group_size > kMaxGroup || cfg.group_size % 32 != 0) {
    throw InvalidArgument("quant::Config: group_size must be a multiple of 32 in [" + std::to_string(kMinGroup) + ", " +
                          std::to_string(kMaxGroup) + "], got " + std::to_string(cfg.group_size));
  }
  if (cfg.spikes < 0 || cfg.spikes > kMaxSpikes || cfg.spikes >= cfg.group_size) {
    throw InvalidArgument("quant::Config: spikes must be in [0, " + std::to_string(kMaxSpikes) +
                          "] and below group_size, got " + std::to_string(cfg.spikes));
  }
  if (cfg.rotate && (cfg.group_size & (cfg.group_size - 1)) != 0) {
    throw InvalidArgument("quant::Config: rotate needs a power-of-two group_size (32, 64, ..., 4096), got " +
                          std::to_string(cfg.group_size));
  }
}

size_t encodedBytes(size_t n, const Config& cfg) {
  validate(cfg);
  return detail::encodedSize(n, cfg);
}

std::string describe(const Config& cfg) {
  std::string s = "int" + std::to_string(cfg.bits) + "-g" + std::to_string(cfg.group_size);
  if (cfg.symmetric) s += "-sym";
  if (cfg.spikes > 0) s += "-s" + std::to_string(cfg.spikes);
  if (cfg.rotate) s += "-rot";
  if (cfg.clip) s += "-clip";
  return s;
}

float bf16ToFloat(uint16_t b) { return detail::bf16Value(b); }
uint16_t floatToBf16(float f) { return detail::bf16Rne(f); }

namespace detail {
namespace {

void quantizeScalar(const float* x, size_t n, const Config& cfg, uint8_t* out) {
  const size_t g = static_cast<size_t>(cfg.group_size);
  const size_t groups = numGroups(n, g);
  uint8_t* codes = out + groups * sizeof(GroupMeta);
  for (size_t k = 0; k < groups; ++k) {
    const size_t begin = k * g;
    const size_t r = minOf(g, n - begin);
    const size_t bytes = r == g ? fullGroupCodeBytes(g, cfg.bits) : tailCodeBytes(r, cfg.bits);
    const GroupParams p = planGroup(x + begin, r, cfg);
    storeMeta(out + k * sizeof(GroupMeta), p.meta);
    encodeGroupScalar(x + begin, r, p, cfg.bits, codes, bytes);
    codes += bytes;
  }
}

template <bool Accumulate>
void dequantizeScalarT(const uint8_t* in, size_t n, const Config& cfg, float* out) {
  const size_t g = static_cast<size_t>(cfg.group_size);
  const size_t groups = numGroups(n, g);
  const uint8_t* codes = in + groups * sizeof(GroupMeta);
  for (size_t k = 0; k < groups; ++k) {
    const size_t begin = k * g;
    const size_t r = minOf(g, n - begin);
    const size_t bytes = r == g ? fullGroupCodeBytes(g, cfg.bits) : tailCodeBytes(r, cfg.bits);
    decodeGroupScalar<Accumulate>(loadMeta(in + k * sizeof(GroupMeta)), codes, r, cfg.bits, out + begin);
    codes += bytes;
  }
}

void dequantizeScalar(const uint8_t* in, size_t n, const Config& cfg, float* out) {
  dequantizeScalarT<false>(in, n, cfg, out);
}
void dequantizeAccumulateScalar(const uint8_t* in, size_t n, const Config& cfg, float* acc) {
  dequantizeScalarT<true>(in, n, cfg, acc);
}

void toBf16Scalar(const float* x, size_t n, uint16_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = bf16Rne(x[i]);
}
void fromBf16Scalar(const uint16_t* in, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = bf16Value(in[i]);
}
void fromBf16AccumulateScalar(const uint16_t* in, size_t n, float* acc) {
  for (size_t i = 0; i < n; ++i) acc[i] = acc[i] + bf16Value(in[i]);
}

}  // namespace

const Kernels kScalarKernels = {quantizeScalar, dequantizeScalar, dequantizeAccumulateScalar,
                                toBf16Scalar,   fromBf16Scalar,   fromBf16AccumulateScalar};

}  // namespace detail
}  // namespace flashring::quant
