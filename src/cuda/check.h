// Checking CUDA calls: every failure becomes a DeviceError naming the call and the CUDA error.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "flashring/error.h"

namespace flashring::cuda::detail {

[[noreturn]] inline void throwCuda(cudaError_t e, const char* call, const char* where) {
  throw DeviceError(std::string("CUDA: ") + call + " failed in " + where + ": " + cudaGetErrorString(e) + " (" +
                    cudaGetErrorName(e) + ")");
}

#define FLASHRING_CUDA_CHECK(call)                                                \
  do {                                                                            \
    const cudaError_t flashring_cuda_err_ = (call);                               \
    if (flashring_cuda_err_ != cudaSuccess)                                       \
      ::flashring::cuda::detail::throwCuda(flashring_cuda_err_, #call, __func__); \
  } while (0)

inline cudaStream_t streamOf(void* s) { return static_cast<cudaStream_t>(s); }

}  // namespace flashring::cuda::detail
