// The one-GPU thread world (cuda/thread_world.h).
#include "flashring/cuda/thread_world.h"

#include <cuda_runtime.h>

#include <string>

#include "cuda/check.h"

namespace flashring::cuda {

ThreadWorldOptions oneGpuWorld(int device) {
  ThreadWorldOptions o;
  o.transport = "thread-cuda";
  o.moves_cuda = true;
  o.copy = [device](void* dst, const void* src, size_t bytes) -> std::string {
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, cudaStreamPerThread);
    if (e == cudaSuccess) e = cudaStreamSynchronize(cudaStreamPerThread);
    if (e == cudaSuccess) return {};
    (void)cudaGetLastError();
    return std::string("cudaMemcpyAsync: ") + cudaGetErrorString(e);
  };
  return o;
}

void runOneGpuRanks(int size, const std::function<void(Communicator&)>& fn, int device,
                    std::chrono::milliseconds timeout) {
  runThreadRanks(
      size,
      [&](Communicator& comm) {
        FLASHRING_CUDA_CHECK(cudaSetDevice(device));
        fn(comm);
      },
      timeout, oneGpuWorld(device));
}

}  // namespace flashring::cuda
