// The verbs a memory kind provides to the collectives: what the pipelined two-step all-reduce does to its
// buffers, so that one schedule (src/collectives/twostep.cc) runs on host memory and on a device.
//
// The collectives never touch payload memory directly: they encode a slice into a message, decode or
// decode-and-accumulate a received message, add their own slice into the accumulator, and read or write the
// 16-byte message headers, all through these verbs; a transport then moves the messages (it must move this
// memory kind: Communicator::movesMemory). Host memory: hostDeviceOps() (the CPU codecs, std::memcpy). CUDA:
// cuda::deviceOps() (flashring/cuda/context.h), whose kernels give the same bytes as the CPU codecs, so host
// and device runs of the same all-reduce are bitwise identical. Work may be queued (on ExecContext::stream);
// synchronize() is called before a transport reads a message the verbs wrote, and the copies to and from the
// host are synchronous.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashring/quant.h"
#include "flashring/tensor.h"

namespace flashring {

// One stage's encoding on the wire: group-wise quantized (cfg), bf16, or raw fp32.
struct WireCodec {
  enum Kind : uint8_t { Quant, Bf16, F32 } kind = F32;
  quant::Config cfg{};
};

class DeviceOps {
 public:
  virtual ~DeviceOps() = default;
  virtual MemoryKind memory() const = 0;
  virtual const char* name() const = 0;
  // out: the codec's bytes of x[0, n) (quant::encodedBytes, or 2n / 4n bytes).
  virtual void encode(const WireCodec& c, const float* x, size_t n, std::byte* out, void* stream) const = 0;
  virtual void decode(const WireCodec& c, const std::byte* in, size_t n, float* out, void* stream) const = 0;
  // acc[i] = acc[i] + decoded[i] (fp32).
  virtual void decodeAccumulate(const WireCodec& c, const std::byte* in, size_t n, float* acc, void* stream) const = 0;
  // acc[i] = acc[i] + x[i] (fp32); zero(): p[0, n) = +0.0.
  virtual void accumulate(float* acc, const float* x, size_t n, void* stream) const = 0;
  virtual void zero(float* p, size_t n, void* stream) const = 0;
  // Synchronous copies between this memory and the host (message headers).
  virtual void fromHost(void* dst, const void* host, size_t bytes, void* stream) const = 0;
  virtual void toHost(void* host, const void* src, size_t bytes, void* stream) const = 0;
  // Waits for the work queued on stream.
  virtual void synchronize(void* stream) const = 0;
  // Scratch of this memory kind, for one call (the collectives' message arena).
  virtual void* allocate(size_t bytes, void* stream) const = 0;
  virtual void release(void* p, void* stream) const = 0;
};

// The host's verbs (the CPU codecs of quant.h).
const DeviceOps& hostDeviceOps();

}  // namespace flashring
