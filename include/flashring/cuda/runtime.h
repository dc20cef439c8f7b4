// The CUDA runtime as flashring sees it (flashring::cuda; only in builds with FLASHRING_WITH_CUDA).
//
// Whether a device is usable, and the one way CUDA failures are reported: every CUDA call of the library is
// checked, and a failure is a DeviceError naming the call, the CUDA error and the device. Kernels are queued on
// the stream of an ExecContext (tensor.h) and return without waiting, unless a function says it synchronizes.
#pragma once

#include <string>

#include "flashring/tensor.h"

namespace flashring::cuda {

// Number of usable CUDA devices: 0 without a GPU or without a driver (never throws).
int deviceCount();
// Why no device is usable ("" when one is): the CUDA error of cudaGetDeviceCount, e.g. "CUDA driver version is
// insufficient for CUDA runtime version (cudaErrorInsufficientDriver)" on a machine with the toolkit but no
// driver. Tests that need a GPU skip with this message.
std::string unavailableReason();
// "NVIDIA H200 (sm_90, 139 GiB)" for device `index`; throws DeviceError when it does not exist.
std::string deviceName(int index = 0);

// Waits for the work queued on ctx.stream (DeviceError on a failure of that work).
void synchronize(ExecContext ctx = {});

// Device memory, owned (cudaMalloc / cudaFree); moves only. For tests, benchmarks and workspaces.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  // Synchronous copies (tests, setup).
  void upload(const void* host, size_t bytes, size_t offset = 0);
  void download(void* host, size_t bytes, size_t offset = 0) const;

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace flashring::cuda
