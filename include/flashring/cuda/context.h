// The CUDA device's verbs for the collectives (device_ops.h) and the ExecContext that carries them
// (flashring::cuda). allreduce(comm, TensorView on the device, options) with options.exec = cuda::context(stream) runs
// the pipelined two-step on device buffers with the CUDA codecs (cuda/codec.h): the same schedule and bytes as on the
// host.
#pragma once

#include "flashring/device_ops.h"
#include "flashring/tensor.h"

namespace flashring::cuda {

const DeviceOps& deviceOps();
// {stream, &deviceOps()}: stream is a cudaStream_t (nullptr: the legacy default stream).
inline ExecContext context(void* stream = nullptr) { return ExecContext{stream, &deviceOps()}; }

}  // namespace flashring::cuda
