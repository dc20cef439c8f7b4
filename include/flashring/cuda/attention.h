// Exact attention building blocks on a CUDA device (flashring::cuda): the block kernel returning (out, lse) and
// the log-sum-exp merge, with the layouts and conventions of attention.h (BSHD, GQA by head groups, causal
// masking by global positions, out = 0 and lse = -inf for a row that sees no key).
//
// q, k, v and out are device arrays of `dtype` (f32, f16 or bf16; out in the same type as q), lse is fp32;
// scores, softmax and accumulation are fp32 whatever the input type. The per-row math is
// src/attention/common/attention_math.h, shared with a CPU twin that the unit tests hold to
// blockAttentionReference on every machine. head_dim is at most kMaxHeadDim. Work is queued on ctx.stream;
// options.progress is not called (the device runs asynchronously). Bad shapes throw InvalidArgument before
// anything is queued; CUDA failures throw DeviceError.
#pragma once

#include <cstdint>

#include "flashring/attention.h"
#include "flashring/tensor.h"

namespace flashring::cuda {

inline constexpr int kMaxHeadDim = 256;

void blockAttention(const void* q, const void* k, const void* v, DType dtype, const AttentionShape& shape,
                    const BlockAttentionOptions& options, void* out, float* lse, ExecContext ctx = {});

// mergeAttention of attention.h on device arrays (fp32).
void mergeAttention(float* out, float* lse, const float* out_b, const float* lse_b, int64_t rows, int heads,
                    int head_dim, ExecContext ctx = {});

}  // namespace flashring::cuda
