// Run-time selection of the codec kernels and argument checking of the public entry points.
//
// The ISA comes from the CPU runtime (flashring/cpu.h), which every kernel family shares.
#include <string>

#include "flashring/error.h"
#include "quant/cpu/codec_internal.h"

namespace flashring::quant {
namespace {

const detail::Kernels& kernelsFor(Isa isa) {
  switch (isa) {
    case Isa::Avx512:
      return detail::kAvx512Kernels;
    case Isa::Avx2:
      return detail::kAvx2Kernels;
    case Isa::Scalar:
      break;
  }
  return detail::kScalarKernels;
}

// Explicit-ISA entry points must not run instructions the CPU lacks.
const detail::Kernels& checkedKernels(Isa isa) {
  if (!isaSupported(isa)) {
    throw InvalidArgument(std::string("quant: isa ") + isaName(isa) + " is not supported by this CPU");
  }
  return kernelsFor(isa);
}

// Kernels for a codec call: the AVX-512 file has no INT5/INT6 kernels (they are bit planes of AVX2 byte
// codes), so those widths use the AVX2 ones on AVX-512 CPUs - the same bytes either way.
const detail::Kernels& codecKernels(Isa isa, const Config& cfg) {
  const detail::Kernels& k = checkedKernels(isa);
  return (isa == Isa::Avx512 && detail::isPlanar(cfg.bits)) ? detail::kAvx2Kernels : k;
}

void checkCodecArgs(const void* src, const char* src_name, const void* dst, const char* dst_name, size_t n,
                    const Config& cfg) {
  validate(cfg);
  if (n > 0 && src == nullptr) throw InvalidArgument(std::string("quant: ") + src_name + " is null with n > 0");
  if (n > 0 && dst == nullptr) throw InvalidArgument(std::string("quant: ") + dst_name + " is null with n > 0");
}

void checkBf16Args(const void* src, const char* src_name, const void* dst, const char* dst_name, size_t n) {
  if (n > 0 && src == nullptr) throw InvalidArgument(std::string("quant: ") + src_name + " is null with n > 0");
  if (n > 0 && dst == nullptr) throw InvalidArgument(std::string("quant: ") + dst_name + " is null with n > 0");
}

}  // namespace

void quantize(Isa isa, const float* x, size_t n, const Config& cfg, void* out) {
  checkCodecArgs(x, "x", out, "out", n, cfg);
  const detail::Kernels& k = codecKernels(isa, cfg);
  if (n == 0) return;
  if (cfg.rotate || cfg.clip) {
    detail::quantizeTransformed(isa, x, n, cfg, static_cast<uint8_t*>(out));
    return;
  }
  if (cfg.spikes > 0) {
    detail::quantizeWithSpikes(isa, k, x, n, cfg, static_cast<uint8_t*>(out));
    return;
  }
  k.quantize(x, n, cfg, static_cast<uint8_t*>(out));
}

void dequantize(Isa isa, const void* in, size_t n, const Config& cfg, float* out) {
  checkCodecArgs(in, "in", out, "out", n, cfg);
  const detail::Kernels& k = codecKernels(isa, cfg);
  if (n == 0) return;
  if (cfg.rotate) {
    detail::dequantizeTransformed(isa, static_cast<const uint8_t*>(in), n, cfg, out, false);
    return;
  }
  if (cfg.spikes > 0) {
    detail::dequantizeWithSpikes(k, static_cast<const uint8_t*>(in), n, cfg, out);
    return;
  }
  k.dequantize(static_cast<const uint8_t*>(in), n, cfg, out);
}

void dequantizeAccumulate(Isa isa, const void* in, size_t n, const Config& cfg, float* acc) {
  checkCodecArgs(in, "in", acc, "acc", n, cfg);
  const detail::Kernels& k = codecKernels(isa, cfg);
  if (n == 0) return;
  if (cfg.rotate) {
    detail::dequantizeTransformed(isa, static_cast<const uint8_t*>(in), n, cfg, acc, true);
    return;
  }
  if (cfg.spikes > 0) {
    detail::dequantizeAccumulateWithSpikes(k, static_cast<const uint8_t*>(in), n, cfg, acc);
    return;
  }
  k.dequantizeAccumulate(static_cast<const uint8_t*>(in), n, cfg, acc);
}

void quantize(const float* x, size_t n, const Config& cfg, void* out) { quantize(activeIsa(), x, n, cfg, out); }
void dequantize(const void* in, size_t n, const Config& cfg, float* out) { dequantize(activeIsa(), in, n, cfg, out); }
void dequantizeAccumulate(const void* in, size_t n, const Config& cfg, float* acc) {
  dequantizeAccumulate(activeIsa(), in, n, cfg, acc);
}

void toBf16(Isa isa, const float* x, size_t n, uint16_t* out) {
  checkBf16Args(x, "x", out, "out", n);
  const detail::Kernels& k = checkedKernels(isa);
  if (n == 0) return;
  k.toBf16(x, n, out);
}

void fromBf16(Isa isa, const uint16_t* in, size_t n, float* out) {
  checkBf16Args(in, "in", out, "out", n);
  const detail::Kernels& k = checkedKernels(isa);
  if (n == 0) return;
  k.fromBf16(in, n, out);
}

void fromBf16Accumulate(Isa isa, const uint16_t* in, size_t n, float* acc) {
  checkBf16Args(in, "in", acc, "acc", n);
  const detail::Kernels& k = checkedKernels(isa);
  if (n == 0) return;
  k.fromBf16Accumulate(in, n, acc);
}

void toBf16(const float* x, size_t n, uint16_t* out) { toBf16(activeIsa(), x, n, out); }
void fromBf16(const uint16_t* in, size_t n, float* out) { fromBf16(activeIsa(), in, n, out); }
void fromBf16Accumulate(const uint16_t* in, size_t n, float* acc) { fromBf16Accumulate(activeIsa(), in, n, acc); }

}  // namespace flashring::quant
