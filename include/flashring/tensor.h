// Tensor views: what the device-generic entry points take instead of std::span<float> / const float*.
//
// A TensorView names memory it does not own: a pointer, an element type (fp32, fp16 or bf16), a shape and
// strides in elements (row-major contiguous unless said otherwise), and where the memory lives (host, or a
// CUDA device and its index). An ExecContext says where device work is queued (a CUDA stream; the host
// ignores it). Invariants every consumer relies on: ndim in [1, kMaxDims], shape[i] >= 0, numel() is the
// product of the shape (0 for an empty tensor, which is valid), strides are those of the shape when
// isContiguous(); data may be null only when numel() == 0. Transports say which memory kinds they move
// (Communicator::movesMemory); a view in memory a transport cannot move is an InvalidArgument naming both.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>

namespace flashring {

enum class DType : uint8_t { F32, F16, BF16 };
size_t dtypeSize(DType t);       // 4, 2, 2
const char* dtypeName(DType t);  // "f32", "f16", "bf16"

enum class MemoryKind : uint8_t { Host, Cuda };
const char* memoryKindName(MemoryKind k);  // "host", "cuda"

struct Device {
  MemoryKind kind = MemoryKind::Host;
  int index = 0;  // the CUDA device ordinal for MemoryKind::Cuda; 0 on the host
  bool operator==(const Device&) const = default;
};
std::string describe(const Device& d);  // "host", "cuda:1"

class DeviceOps;  // device_ops.h

// Where device work is queued and with what. stream: a cudaStream_t (nullptr: the legacy default stream); ops: the
// verbs of the device's memory (cuda::context(stream) fills both). Host work runs on the calling thread and
// ignores them.
struct ExecContext {
  void* stream = nullptr;
  const DeviceOps* ops = nullptr;
};

struct TensorView {
  static constexpr int kMaxDims = 4;
  void* data = nullptr;
  DType dtype = DType::F32;
  int ndim = 1;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> strides{};  // in elements
  Device device{};

  // A row-major contiguous view (throws InvalidArgument for ndim outside [1, kMaxDims] or a negative extent).
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device = {});
  static TensorView of(std::span<float> v, Device device = {}) {
    return contiguous(v.data(), DType::F32, {static_cast<int64_t>(v.size())}, device);
  }
  int64_t numel() const;
  size_t bytes() const { return static_cast<size_t>(numel()) * dtypeSize(dtype); }
  bool isContiguous() const;
  // "f32[4, 128] host", for error messages.
  std::string describe() const;
  // Throws InvalidArgument naming `what` unless the view is valid (see the invariants above) and contiguous.
  void checkContiguous(const char* what) const;
};

}  // namespace flashring
