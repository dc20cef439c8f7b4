// Internals of the CPU codecs: the kernel tables of each instruction set and the entry points they share. The
// wire-layout arithmetic, the per-group metadata rules and the scalar per-group encoder/decoder live in
// quant/common/group_math.h, shared with the CUDA kernels.
//
// Bit-for-bit agreement between the scalar reference and the SIMD kernels rests on one rule: everything
// that is decided once per group (statistics -> s, z, flags, 1/s, which path) is computed here, by the same
// inline code, in every translation unit. SIMD kernels only vectorise the per-element formulas of the
// "fast" groups, which are written so that one vector lane does exactly what the scalar code does for one
// element. Groups that are rare or awkward (constant, NaN/Inf, extreme ranges, the partial tail group) are
// handed to the shared scalar encoder/decoder below by every kernel.
//
// Everything here has internal linkage (anonymous namespace): the SIMD files are compiled with -mavx2 or
// -mavx512*, and an inline function with external linkage instantiated there could be picked by the linker
// for baseline code and execute AVX instructions on a CPU without them. For the same reason this header and
// the SIMD files call no std:: inline function or template (std::min, std::fma, std::isnan...: in an
// unoptimised build they are emitted as weak symbols compiled for AVX); they use the helpers and compiler
// builtins below (the memcpy/memset library functions are fine).
#pragma once

#include <cfloat>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "flashring/quant.h"
#include "quant/common/group_math.h"  // the per-group math, shared with the CUDA kernels

namespace flashring::quant::detail {

// One instruction set's kernels. Arguments are already validated (cfg valid, pointers non-null, n > 0).
struct Kernels {
  void (*quantize)(const float* x, size_t n, const Config& cfg, uint8_t* out);
  void (*dequantize)(const uint8_t* in, size_t n, const Config& cfg, float* out);
  void (*dequantizeAccumulate)(const uint8_t* in, size_t n, const Config& cfg, float* acc);
  void (*toBf16)(const float* x, size_t n, uint16_t* out);
  void (*fromBf16)(const uint16_t* in, size_t n, float* out);
  void (*fromBf16Accumulate)(const uint16_t* in, size_t n, float* acc);
};

extern const Kernels kScalarKernels;  // codec_scalar.cc
extern const Kernels kAvx2Kernels;    // codec_avx2.cc
extern const Kernels kAvx512Kernels;  // codec_avx512.cc

// Spike reserving (spikes.cc), around any ISA's kernels, for cfg.spikes > 0; the kernels themselves never
// see spikes (they are called with spikes = 0 on a copy of the input whose spike positions are replaced).
// `isa` picks the spike selection (Scalar: the SSE2 reference; Avx2 and Avx512: the AVX2 one), k the kernels.
void quantizeWithSpikes(Isa isa, const Kernels& k, const float* x, size_t n, const Config& cfg, uint8_t* out);
void dequantizeWithSpikes(const Kernels& k, const uint8_t* in, size_t n, const Config& cfg, float* out);
// Spike selection of one group of r values (1 <= r <= kMaxGroup, 1 <= k <= kMaxSpikes): copies x[0, r) to
// copy and writes the group's spike positions (quant.h's rule), ascending, to pos; returns how many.
// selectGroupSpikes uses the selection of `isa` (spikes.cc; tests compare them bit for bit).
int selectGroupSpikes(Isa isa, const float* x, size_t r, int k, float* copy, uint16_t* pos);
// The AVX2 selection (spikes_avx2.cc): returns -1, having maybe written part of copy, for the groups it
// leaves to the reference (NaN/Inf in the group, r % 32 != 0, r <= k).
int selectGroupSpikesFiniteAvx2(const float* x, size_t r, int k, float* copy, uint16_t* pos);
// The AVX2 kernel's encoding of `count` full groups of x (cfg.spikes is ignored) with the metadata to
// meta[0, count) and the codes to `codes` (codec_avx2.cc). Reading x[i], it prefetches the address
// prefetch + 4 i (any address: prefetches never fault); the spike path passes the input of its next chunk.
void quantizeFullGroupsAvx2(const float* x, size_t count, const Config& cfg, uint8_t* meta, uint8_t* codes,
                            uintptr_t prefetch);
void dequantizeAccumulateWithSpikes(const Kernels& k, const uint8_t* in, size_t n, const Config& cfg, float* acc);
// Throws InvalidArgument if an index of the spike section `idx` (of a run of n values) is neither kNoSpike nor
// inside its group (spikes.cc).
void checkSpikeIndices(const uint8_t* idx, size_t n, const Config& cfg);
// Rotation and clipping (quant.h, "Rotation"; transform.cc): one scalar implementation that every ISA calls,
// spikes included. quantizeTransformed serves cfg.rotate || cfg.clip; dequantizeTransformed serves cfg.rotate
// (clip does not change decoding), writing out = decoded or, with accumulate, out = out + decoded.
void quantizeTransformed(Isa isa, const float* x, size_t n, const Config& cfg, uint8_t* out);
void dequantizeTransformed(Isa isa, const uint8_t* in, size_t n, const Config& cfg, float* out, bool accumulate);
// The group rotation itself (g a power of two, 1 < g <= kMaxGroup): forward y = c * H * (D * v), inverse
// v = D * (c * H * y), in place. Exposed for the tests.
void hadamardRotate(float* v, size_t g, bool inverse);
// d_i of quant.h's rotation: -1.0f or +1.0f.
float rotationSign(size_t i);
// AVX2 twins of transform.cc's per-group steps (codec_avx2.cc; g a multiple of 32, all values finite), bit for
// bit their scalar references: the codes of a Fast group with the given z / inv; the decoding of a Fast group;
// the clipping search's squared errors of all candidates in one pass (8 lane sums each, lane j over i = j mod 8
// by fma, then a fixed tree); min, max
// and the constant test; the rotation with signs d and factor c.
void encodeFastGroupAvx2(const float* x, size_t g, int bits, bool symmetric, float z, float inv, uint8_t* codes);
void decodeFastGroupAvx2(const uint8_t* codes, size_t g, int bits, float s, float z, float* out);
void clipErrorsAvx2(const float* x, size_t g, int bits, bool symmetric, const float* s, const float* z,
                    const float* inv, float* err);  // kClipCandidates of each
void minMaxAvx2(const float* x, size_t g, float* mn, float* mx, bool* constant);
void hadamardRotateAvx2(float* v, size_t g, bool inverse, const float* d, float c);

// Forgets setActiveIsa() and the FLASHRING_ISA reading, so that the next activeIsa() reads the environment
// again. Tests only.
using cpu::detail::resetIsaSelectionForTesting;

}  // namespace flashring::quant::detail
