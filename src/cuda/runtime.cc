// flashring::cuda runtime helpers (cuda/runtime.h).
#include "flashring/cuda/runtime.h"

#include <cuda_runtime.h>

#include <string>

#include "cuda/check.h"

namespace flashring::cuda {

int deviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error so that later calls do not report it
    return 0;
  }
  return n;
}

std::string unavailableReason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string(cudaGetErrorString(e)) + " (" + cudaGetErrorName(e) + ")";
  }
  if (n == 0) return "no CUDA device (cudaGetDeviceCount returned 0)";
  return "";
}

std::string deviceName(int index) {
  cudaDeviceProp p{};
  FLASHRING_CUDA_CHECK(cudaGetDeviceProperties(&p, index));
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
         std::to_string(p.totalGlobalMem >> 30) + " GiB)";
}

void synchronize(ExecContext ctx) { FLASHRING_CUDA_CHECK(cudaStreamSynchronize(detail::streamOf(ctx.stream))); }

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) FLASHRING_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) (void)cudaFree(ptr_);  // never throws from a destructor
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void DeviceBuffer::upload(const void* host, size_t bytes, size_t offset) {
  if (offset + bytes > bytes_) throw InvalidArgument("DeviceBuffer::upload: past the end of the buffer");
  if (bytes > 0)
    FLASHRING_CUDA_CHECK(cudaMemcpy(static_cast<char*>(ptr_) + offset, host, bytes, cudaMemcpyHostToDevice));
}

void DeviceBuffer::download(void* host, size_t bytes, size_t offset) const {
  if (offset + bytes > bytes_) throw InvalidArgument("DeviceBuffer::download: past the end of the buffer");
  if (bytes > 0)
    FLASHRING_CUDA_CHECK(cudaMemcpy(host, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost));
}

}  // namespace flashring::cuda
