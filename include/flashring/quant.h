// Group-wise low-bit codecs for the Flash Communication all-reduce.
//
// A run of n fp32 values is cut into groups of g consecutive values (g a multiple of 32 in 32..4096,
// default 128). Each group is stored as b-bit unsigned codes (b = 8, 6, 5 or 4) plus 4 bytes of metadata: a
// scale s and a zero point z, both bf16. Decoding is one fused multiply-add, x = fma(q, s, z), computed in
// fp32 with a single rounding, identical in the scalar reference and every SIMD version.
//
// Why bf16 for s and z, not fp16: range. Activations of LLaMA-family models reach thousands and some
// models' residual streams pass 65504, where fp16 overflows and the only options left are clipping (a
// silent wrong answer) or a fallback. bf16 spans fp32's whole range. Its coarser precision is paid for
// safely: z is rounded down and s up when they are stored, and codes are computed against the stored
// values, so every element's error stays within s/2 of the stored s; rounding z down widens a group's
// grid by at most |min|/128, which for activations (groups spanning zero) is under 1%.
//
// Wire layout of one encoded run (pinned; decoders on other machines rely on it):
//   GroupMeta meta[G]                 G = ceil(n / g), 4 bytes each
//   codes of group 0, 1, ..., G-1     a full group takes g*b/8 bytes; the last, partial group of r values
//                                     takes max(2, ceil(r*b/8)) bytes
//   spike section                     only with Config::spikes = k > 0: G*k uint16 indices, then G*k fp32
//                                     values (see "Spike reserving" below)
// INT4 codes: value 2i of a group in the low nibble of the group's byte i, value 2i+1 in the high nibble.
// INT5/INT6 codes (FlashCommunication V2's other widths; between INT4's accuracy and INT8's bytes): bit
// planes. A group of r values stores the low 4 bits of its codes as INT4 does (ceil(r/2) bytes), then one
// plane per further bit (bit 4, then bit 5 for INT6) of ceil(r/8) bytes: value i's bit in byte i/8, bit
// i%8. A full group thus takes g*b/8 bytes; a partial one max(2, ceil(r/2) + (b-4)*ceil(r/8)) bytes.
//
// GroupMeta semantics (L = 2^b):
//   scale bit 15 (sign) = "this group holds NaN or Inf". Then codes L-1, L-2, L-3 decode to NaN (the
//   canonical quiet NaN 0x7FC00000: sign and payload are not kept), +Inf, -Inf and finite values use codes
//   0..L-4. Non-finite values thus come out exactly where they went in and never spoil the rest of their
//   group.
//   scale == 0x0000 (no flag, zero scale) = constant group: every value is the fp32 whose high 16 bits
//   are `zero` and low 16 bits are the little-endian uint16 in the group's first two code bytes, so a
//   constant group round-trips bit-exactly. "Constant" means all values have the same bit pattern and
//   are finite (a group mixing 0.0 and -0.0 is not constant; it decodes to +0.0).
//   Otherwise x = fma(q, s, z) with s = bf16 (scale & 0x7FFF), z = bf16 zero.
// Code bits that no value uses (the high nibble after an odd tail, the bytes after a constant group's
// first two) are written as zero, so equal inputs always give equal bytes.
// Asymmetric encoding (default): over the group's finite values (with -0.0 read as +0.0),
// z = bf16_down(min), s = max(bf16_up((max - z) / qmax), 2^-126), qmax = L-1 (L-4 with the flag),
// q = clamp(round_half_even((x - z) * (1/s)), 0, qmax), x - z and 1/s computed in fp32.
//   (max - z) / qmax is computed in double and rounded up, so s * qmax >= max - z. The floor 2^-126
//   (bf16 0x0080) keeps 1/s finite; it only matters for groups whose values are all below ~1e-29.
//   z saturates at the lowest finite bf16 (-0x1.FEp127): values below it, within 0.4% of -FLT_MAX,
//   decode to it (relative error < 2^-8) - bf16 cannot hold a lower zero point.
//   Wide groups, where max - z overflows fp32 or fma(qmax, s, z) would exceed FLT_MAX (only possible
//   with |values| > 2^125), compute q = round_half_even((double(x) - z) / double(s)) in double and
//   clamp it to the largest code <= qmax whose decoded value is finite: no finite value decodes to Inf,
//   and the error stays <= s (<= s/2 below the clamped top code).
// Symmetric encoding (option): s = max(bf16_up(max|x| / (L/2 - 1)), 2^-126), z = -(L/2) * s (exact),
// q = clamp(round_half_even(x * (1/s)) + L/2, 1, L-1); groups with NaN/Inf, constant groups, and groups
// where -(L/2) * s overflows are encoded as in the asymmetric case (the decoder does not need to know
// which encoding was used).
//
// Spike reserving (Config::spikes = k > 0; FlashCommunication V2, arXiv 2508.03760). Activations of LLaMA
// models carry a few "massive" values per token (thousands where the rest of the group is O(10)); one of
// them sets a group's scale and crushes its other values to a handful of codes. With k > 0 every group
// keeps up to k values exactly, as fp32, and the rest of the group is encoded as above without them:
//   Spikes of a group: its finite values of largest |x| (|x| compared as fp32 magnitudes; ties: lower index
//   first), at most min(k, f - 1) of them where f is the group's number of finite values - so a group with
//   f <= k keeps f - 1 spikes, and groups without finite values (all NaN/Inf) keep none. NaN and Inf are
//   never spikes; they keep the flag mechanism above. A constant group is no special case (its spikes carry
//   the same bits as the rest).
//   Codes and metadata: those of a copy of the group in which every spike position holds the group's first
//   (lowest-index) finite non-spike value, so min/max, the constant test and the codes are over the
//   non-spike values only (every non-spike value's error stays within s/2 of that group's stored s); the
//   code stored at a spike position is the replacement's and is ignored by the decoder.
//   Decoding: as above, then every used spike position is overwritten with its stored fp32 value, bit for
//   bit (-0.0 and subnormals included). dequantizeAccumulate gives acc + decoded for every element, spike
//   positions included (one fp32 add).
// With k > 0 the run ends with a spike section (no padding, so it may start at an odd offset; read with
// memcpy), after the codes above:
//   uint16 index[G][k]                each group's spike positions inside the group (0..g-1), ascending,
//                                     unused entries 0xFFFF after the used ones
//   float  value[G][k]                fp32 bits of the spike at index[i][j]; 0 for unused entries
// i.e. encodedBytes grows by G * k * 6 bytes (k = 1, g = 128: 0.047 bytes per value, +9% on INT4 g128).
// Indices and values are split, not interleaved, so each array is uniform; a decoder rejects (throws
// InvalidArgument) an index that is neither 0xFFFF nor inside its group. If an index repeats in a group, the
// later value wins. With k = 0 nothing is appended and every byte is as it was before spikes existed.
//
// Rotation (Config::rotate; QuaRot/QuIP-style incoherence processing, applied per group). Groups of
// near-Gaussian activations quantized at 4 bits sit on the uniform-quantizer noise floor (~19 dB); spreading
// every value over the whole group with an orthonormal transform and clipping the range (below) lowers the
// error that matters downstream. With rotate, every full group (r = g; g must then be a power of two) whose
// values are all finite is encoded as:
//   1. spikes are picked as above and their positions set to 0.0 (not to a replacement value);
//   2. y = c * H * (D * x): D = diag(d_i), d_i = -1 where bit 0 of mix(i) is 1 and +1 otherwise, with
//      mix(i) = h ^ (h >> 13) for h = ((i * 0x9E3779B1) ^ ((i * 0x9E3779B1) >> 15)) * 0x85EBCA77 (uint32);
//      H the Sylvester-Hadamard matrix of order g, computed as the in-place fast transform (for h = 1, 2, 4,
//      ..., g/2, every pair (j, j + h) with j & h == 0 becomes (a + b, a - b), in fp32), and c the fp32
//      nearest 1/sqrt(g), multiplied last;
//   3. y is encoded as any group (asymmetric or symmetric, constant test included), without spikes.
// Decoding such a group: decode the codes as usual, apply the inverse (x = D * (c * H * y) + 0.0: the same fast
// transform, times c, times d_i, plus +0.0 so that no -0.0 comes out), then write the spikes. A group is rotated
// exactly when it is full, the run is encoded with rotate, and its scale carries no NaN/Inf flag: groups holding
// NaN/Inf, and finite groups whose rotation overflows fp32 (|x| near FLT_MAX), are encoded unrotated with the flag set
// (the flag then only reserves the top three codes), and the partial tail group is never rotated; unrotated groups keep
// the spike rule above. A rotated group's L2 error is at most sqrt(g) * s / 2 (orthonormal transform, up to fp32
// rounding of the transform itself), no longer s / 2 per element; zero groups still decode to exact (+0.0) zeros.
// Decoders must be told rotate: the bytes do not say it (the all-reduce checks that every rank agrees).
// Clipping (Config::clip; encoder only, the decoder is unchanged): for each Fast group (neither constant,
// flagged nor wide) the encoder tries the ranges [mid - c*half, mid + c*half] (symmetric: [c*min, c*max]) for
// c = 1, 15/16, ..., 11/16 (mid, half from the group's min and max, in double) and keeps the metadata of the
// smallest squared error (first wins ties); values outside the clipped range take the end codes. The squared
// error is defined in fp32 so that every ISA picks alike: d_i = fma(q_i, s, z) - x_i, eight sums
// a_j = fma(d_i, d_i, a_j) over i = j mod 8 in order, total ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)).
// Rotate and clip are computed by one scalar implementation that every ISA calls (same bytes everywhere).
// All arithmetic assumes the default fp environment (round to nearest even, no flush-to-zero/DAZ).
// Every instruction-set version produces the same bytes and the same decoded floats, bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "flashring/cpu.h"

namespace flashring::quant {

struct GroupMeta {
  uint16_t scale;  // bf16 bits; bit 15 flags a group holding NaN/Inf
  uint16_t zero;   // bf16 bits
};
static_assert(sizeof(GroupMeta) == 4, "GroupMeta is part of the wire format");

inline constexpr int kMinGroup = 32;
inline constexpr int kMaxGroup = 4096;
inline constexpr int kMaxSpikes = 8;
inline constexpr uint16_t kNoSpike = 0xFFFF;  // unused entry of a group's spike index list

struct Config {
  int bits = 8;          // 8, 6, 5 or 4
  int group_size = 128;  // multiple of 32 in [32, 4096]
  bool symmetric = false;
  int spikes = 0;       // 0..kMaxSpikes and < group_size: values per group kept exactly as fp32 (see above)
  bool rotate = false;  // randomized Hadamard rotation of each full group (group_size a power of two)
  bool clip = false;    // MSE-searched clipping of each group's range (encoder only)
};

// Throws InvalidArgument naming the bad field.
void validate(const Config& cfg);
// Bytes of an encoded run of n values (0 for n = 0).
size_t encodedBytes(size_t n, const Config& cfg);
// "int8-g128", "int4-g64-sym", "int4-g128-s1" (spikes = 1), "int4-g128-s2-rot-clip", ...
std::string describe(const Config& cfg);

// Instruction sets: chosen once for every kernel family by the CPU runtime (flashring/cpu.h).
using Isa = cpu::Isa;
using cpu::activeIsa;
using cpu::bestIsa;
using cpu::isaName;
using cpu::isaSupported;
using cpu::setActiveIsa;

// Encode n values into `out` (encodedBytes(n, cfg) bytes).
void quantize(const float* x, size_t n, const Config& cfg, void* out);
// Decode n values.
void dequantize(const void* in, size_t n, const Config& cfg, float* out);
// acc[i] = acc[i] + decoded[i], in fp32 (two roundings: decode, then add).
void dequantizeAccumulate(const void* in, size_t n, const Config& cfg, float* acc);

// The same with an explicit ISA (tests compare them bit for bit).
void quantize(Isa isa, const float* x, size_t n, const Config& cfg, void* out);
void dequantize(Isa isa, const void* in, size_t n, const Config& cfg, float* out);
void dequantizeAccumulate(Isa isa, const void* in, size_t n, const Config& cfg, float* acc);

// bf16 payloads for the exact algorithms: round to nearest even, NaN stays NaN (quiet).
void toBf16(const float* x, size_t n, uint16_t* out);
void fromBf16(const uint16_t* in, size_t n, float* out);
// acc[i] += float(in[i])
void fromBf16Accumulate(const uint16_t* in, size_t n, float* acc);
void toBf16(Isa isa, const float* x, size_t n, uint16_t* out);
void fromBf16(Isa isa, const uint16_t* in, size_t n, float* out);
void fromBf16Accumulate(Isa isa, const uint16_t* in, size_t n, float* acc);

// Scalar bf16 conversions (the same rounding as toBf16/fromBf16; every kernel uses the same internal inline
// definitions, so metadata is computed identically in the scalar and SIMD versions).
float bf16ToFloat(uint16_t b);
uint16_t floatToBf16(float f);  // round to nearest even; NaN stays a quiet NaN

}  // namespace flashring::quant
