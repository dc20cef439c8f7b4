// The group-wise codecs of quant.h on a CUDA device (flashring::cuda).
//
// Same wire format, same bytes: for every Config (INT8/6/5/4, symmetric, spikes, rotation, clipping) the bytes
// written by quantize() are bit-identical to flashring::quant::quantize of the same values on the CPU, and the
// decoded floats are bit-identical to the CPU decoders'. This holds because the per-group and per-element math
// is one code, compiled for host and device (src/quant/common/group_math.h), which the CPU test suite checks
// against the scalar reference on every machine; on a GPU the CUDA tests compare the bytes directly.
// Inputs in fp16 or bf16 are widened to fp32 first (exact), so their bytes equal the CPU codec's on the widened
// values. Decoding to fp16 or bf16 rounds the fp32 result to nearest even; accumulation is always fp32.
//
// All pointers are device pointers; work is queued on ctx.stream and the call returns without waiting, except
// that decoding a run with spikes checks the spike section first and synchronizes the stream to report a
// corrupt index (InvalidArgument, as on the CPU, with `out` untouched). Bad configurations throw
// InvalidArgument before anything is queued; CUDA failures throw DeviceError.
#pragma once

#include <cstddef>

#include "flashring/quant.h"
#include "flashring/tensor.h"

namespace flashring::cuda {

// Encode n values of type `dtype` at x into out (quant::encodedBytes(n, cfg) bytes).
void quantize(const void* x, DType dtype, size_t n, const quant::Config& cfg, void* out, ExecContext ctx = {});
// Decode n values into out, of type out_dtype.
void dequantize(const void* in, size_t n, const quant::Config& cfg, void* out, DType out_dtype = DType::F32,
                ExecContext ctx = {});
// acc[i] = acc[i] + decoded[i], in fp32.
void dequantizeAccumulate(const void* in, size_t n, const quant::Config& cfg, float* acc, ExecContext ctx = {});

}  // namespace flashring::cuda
