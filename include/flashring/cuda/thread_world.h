// N ranks as threads sharing one GPU (flashring::cuda): the thread transport with device-to-device copies, so that
// every algorithm runs end to end on a single GPU in tests (NCCL allows one rank per device).
//
// A matched send and receive are copied with cudaMemcpyAsync(cudaMemcpyDefault) on the copying thread's own
// stream (cudaStreamPerThread: each rank thread copies on a separate stream), then that stream is synchronized,
// so a request completes when its bytes are in place, as on the host. Buffers may be device or host memory
// (unified addressing tells them apart). A CUDA failure fails both requests and aborts the world with the error.
#pragma once

#include <chrono>
#include <functional>

#include "flashring/thread_comm.h"

namespace flashring::cuda {

// Options for ThreadWorld / runThreadRanks: transport "thread-cuda", movesMemory(Cuda) = true, copies on `device`.
ThreadWorldOptions oneGpuWorld(int device = 0);

// runThreadRanks over oneGpuWorld(device); each rank thread calls cudaSetDevice(device) before fn.
void runOneGpuRanks(int size, const std::function<void(Communicator&)>& fn, int device = 0,
                    std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

}  // namespace flashring::cuda
