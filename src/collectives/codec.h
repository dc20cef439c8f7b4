// What the two-step and one-shot all-reduces put on the wire: the per-stage codec (quantized groups, bf16 or
// raw fp32) and the 16-byte header every message starts with. One definition, so that the one-shot encodes
// exactly as the two-step's reduce-scatter does and both name a codec by the same tag.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "flashring/device_ops.h"
#include "flashring/quant.h"

namespace flashring::detail {

// What one stage sends: quantized groups, bf16, or raw fp32.
struct Codec {
  enum Kind { Quant, Bf16, F32 } kind;
  quant::Config cfg;
  // What a receiver must agree on to decode: kind, and for Quant bits, group size, spikes and rotate (symmetric
  // and clip only change the encoder). Sent in every message header, so that ranks configured differently get
  // an error instead of decoding each other's bytes wrongly.
  uint32_t tag() const {
    if (kind != Quant) return kind == Bf16 ? 2u : 3u;
    return 1u | static_cast<uint32_t>(cfg.bits) << 2 | static_cast<uint32_t>(cfg.spikes) << 6 |
           static_cast<uint32_t>(cfg.rotate) << 10 | static_cast<uint32_t>(cfg.group_size / 32) << 11;
  }
  std::string name() const { return kind == Quant ? quant::describe(cfg) : (kind == Bf16 ? "bf16" : "fp32"); }
  WireCodec wire() const { return WireCodec{static_cast<WireCodec::Kind>(kind), cfg}; }
  static Codec of(const WireCodec& w) { return Codec{static_cast<Kind>(w.kind), w.cfg}; }
  size_t bytes(size_t n) const { return kind == Quant ? quant::encodedBytes(n, cfg) : n * (kind == Bf16 ? 2 : 4); }
  void encode(const float* x, size_t n, std::byte* out) const {
    if (kind == Quant)
      quant::quantize(x, n, cfg, out);
    else if (kind == Bf16)
      quant::toBf16(x, n, reinterpret_cast<uint16_t*>(out));
    else
      std::memcpy(out, x, n * 4);
  }
  void decode(const std::byte* in, size_t n, float* out) const {
    if (kind == Quant)
      quant::dequantize(in, n, cfg, out);
    else if (kind == Bf16)
      quant::fromBf16(reinterpret_cast<const uint16_t*>(in), n, out);
    else
      std::memcpy(out, in, n * 4);
  }
  void decodeAccumulate(const std::byte* in, size_t n, float* acc) const {
    if (kind == Quant) {
      quant::dequantizeAccumulate(in, n, cfg, acc);
    } else if (kind == Bf16) {
      quant::fromBf16Accumulate(reinterpret_cast<const uint16_t*>(in), n, acc);
    } else {
      for (size_t i = 0; i < n; ++i) {
        float v;
        std::memcpy(&v, in + i * 4, 4);
        acc[i] += v;
      }
    }
  }
};

// err[i] = want[i] - got[i], or 0 where that is not finite (NaN/Inf travel exactly: nothing to carry). err may
// alias got.
inline void storeError(const float* want, const float* got, size_t n, float* err) {
  for (size_t i = 0; i < n; ++i) {
    const float d = want[i] - got[i];
    err[i] = std::isfinite(d) ? d : 0.f;
  }
}

struct Header {
  uint64_t count;
  uint64_t chunk;  // chunk index (kOneShotChunk for the one-shot) in the low 32 bits, the codec's tag() in the high 32
};
static_assert(sizeof(Header) == 16);

// Header::chunk's low 32 bits in a one-shot message. The one-shot posts its messages with the two-step's
// reduce-scatter tag for chunk 0, so that ranks which disagree on the algorithm (Auto resolved differently
// because their buffer sizes differ) match each other's first message and fail on the size or this mark
// instead of waiting for the deadline.
inline constexpr uint32_t kOneShotChunk = 0xFFFFFFFFu;

}  // namespace flashring::detail
