// The host's DeviceOps (device_ops.h): the CPU codecs and plain memory.
#include <cstdlib>
#include <cstring>
#include <new>

#include "collectives/codec.h"
#include "flashring/device_ops.h"

namespace flashring {
namespace {

static_assert(static_cast<int>(WireCodec::Quant) == static_cast<int>(detail::Codec::Quant) &&
              static_cast<int>(WireCodec::Bf16) == static_cast<int>(detail::Codec::Bf16) &&
              static_cast<int>(WireCodec::F32) == static_cast<int>(detail::Codec::F32));

class HostOps final : public DeviceOps {
 public:
  MemoryKind memory() const override { return MemoryKind::Host; }
  const char* name() const override { return "host"; }
  void encode(const WireCodec& c, const float* x, size_t n, std::byte* out, void*) const override {
    detail::Codec::of(c).encode(x, n, out);
  }
  void decode(const WireCodec& c, const std::byte* in, size_t n, float* out, void*) const override {
    detail::Codec::of(c).decode(in, n, out);
  }
  void decodeAccumulate(const WireCodec& c, const std::byte* in, size_t n, float* acc, void*) const override {
    detail::Codec::of(c).decodeAccumulate(in, n, acc);
  }
  void accumulate(float* acc, const float* x, size_t n, void*) const override {
    for (size_t i = 0; i < n; ++i) acc[i] += x[i];
  }
  void zero(float* p, size_t n, void*) const override {
    if (n > 0) std::memset(p, 0, n * sizeof(float));
  }
  void fromHost(void* dst, const void* host, size_t bytes, void*) const override {
    if (bytes > 0) std::memcpy(dst, host, bytes);
  }
  void toHost(void* host, const void* src, size_t bytes, void*) const override {
    if (bytes > 0) std::memcpy(host, src, bytes);
  }
  void synchronize(void*) const override {}
  void* allocate(size_t bytes, void*) const override {
    void* p = ::operator new (bytes == 0 ? 1 : bytes, std::align_val_t{64});
    return p;
  }
  void release(void* p, void*) const override { ::operator delete (p, std::align_val_t{64}); }
};

}  // namespace

const DeviceOps& hostDeviceOps() {
  static const HostOps ops;
  return ops;
}

}  // namespace flashring
