// Internals of the CPU block attention kernel: the implementations that can be chosen, the tile-level
// interface between the driver (kernel.cc, baseline x86-64) and the AVX2 file, and the knobs that tests and
// benchmarks use to compare implementations.
//
// Structure. kernel.cc owns everything that is not arithmetic: argument checks, the loops over batch, KV
// head, query row block and key tile, the causal key ranges, scratch memory, the progress hook and the
// final normalisation. For one (row block, key tile) it calls one "tile" function of the chosen
// implementation, which runs the FlashAttention-2 step on that tile: S = Q K^T, online softmax (running
// max m and sum l, in the base-2 domain), O = alpha O + P V.
//
// Rows of a block. A row block holds q_count consecutive queries of one batch entry for all `group`
// query heads that share one KV head (GQA), interleaved query-major: row r is query r / group, head
// g * group + r % group. Their Q rows are read in place (row (i, hh) at q + i * ldq + hh * head_dim) and
// so is K/V (key j at k + j * ldk); nothing is copied per head.
//
// The AVX2 file calls no std:: inline function or template (see src/quant/cpu/codec_internal.h for why:
// a weak symbol compiled with -mavx2 may be picked by the linker for baseline code).
#pragma once

#include <cstdint>

#include "flashring/attention.h"

namespace flashring::attn {

// Implementations of blockAttention. All give the same results up to rounding (tested against the fp64
// reference); they differ in speed and in what the CPU needs.
enum class KernelImpl {
  Auto,       // the fastest one this CPU supports (Avx2Micro with AVX2+FMA, else Portable)
  Portable,   // OpenBLAS sgemm for both products + scalar softmax (std::exp2); any x86-64
  Avx2Blas,   // OpenBLAS sgemm for both products + AVX2 softmax (polynomial exp2)
  Avx2Micro,  // own AVX2/FMA micro-kernels for both products (K packed in 16-key panels) + AVX2 softmax
};

const char* kernelImplName(KernelImpl impl);
bool kernelImplSupported(KernelImpl impl);
// Auto resolved on this CPU.
KernelImpl bestKernelImpl();

// Tiling knobs; 0 picks the implementation's default. Rows per block is the target number of (query, head)
// rows that share each K/V tile; key_tile is rounded up to a multiple of 16.
struct KernelTuning {
  int block_rows = 0;
  int key_tile = 0;
};

// blockAttention with a chosen implementation (throws InvalidArgument if the CPU lacks it).
void blockAttentionWith(KernelImpl impl, const float* q, const float* k, const float* v, const AttentionShape& shape,
                        const BlockAttentionOptions& options, float* out, float* lse, const KernelTuning& tuning = {});

// OpenBLAS thread count: cpu::setThreads / OpenBLAS's own reading (benchmarks measure both settings).
void setBlasThreads(int n);
int blasThreads();

// ------------------------------------------------------------------------------------------------------
// Tile interface (kernel.cc <-> kernel_avx2.cc).

constexpr int kPanel = 16;  // keys per packed K panel of the micro-kernel path

struct TileArgs {
  const float* q;  // row (query 0, head 0 of the group)
  int64_t ldq;     // heads * head_dim
  const float* k;  // key 0 of the tile, this KV head
  const float* v;
  int64_t ldk;  // kv_heads * head_dim (also the V row stride)
  // Avx2Micro only: packed copies, so that the micro-kernels stream contiguous memory (in BSHD the rows of
  // one head are heads * head_dim floats apart, which maps them all onto the same few L1 sets).
  const float* q_packed;  // the block's Q rows, [rows][head_dim]
  const float* k_panels;  // the tile's K, [ceil(keys/16)][head_dim][16], zero-padded
  const float* v_packed;  // the tile's V in 16-column panels: column c of key j at
                          // v_packed[(c / 16) * v_panel_stride + j * 16 + c % 16], zero-padded to ldo columns
  int64_t v_panel_stride;
  int rows;  // q_count * group
  int group;
  int head_dim;
  int keys;  // keys in the tile (> 0)
  // Causal: query i of the block sees key j of the tile iff j <= diag + i. Not causal: every key.
  bool causal;
  int64_t diag;
  float scale2;  // softmax scale * log2(e): scores are kept in the base-2 domain
  float* o;      // [rows][ldo] unnormalised accumulator (columns >= head_dim are padding)
  int ldo;       // head_dim (BLAS paths) or head_dim rounded up to 16 (Avx2Micro)
  float* m;      // [rows] running max (base 2), -inf before the first visible key
  float* l;      // [rows] running sum of exp2(s - m)
  float* s;      // scratch, at least rows * round_up(key_tile, 16) floats
  float* alpha;  // scratch, at least rows floats
};

// Keys of the tile that query i of the block sees: a prefix of length visibleKeys(a, i).
// static: no weak symbol shared with the AVX2 translation unit.
static inline int visibleKeys(const TileArgs& a, int64_t i) {
  if (!a.causal) return a.keys;
  const int64_t n = a.diag + i + 1;
  return n <= 0 ? 0 : (n >= a.keys ? a.keys : static_cast<int>(n));
}

namespace avx2 {
// K rows [keys][head_dim] (stride ldk) -> panels [ceil(keys/16)][head_dim][16], zero-padded.
void packKeyPanels(const float* k, int64_t ldk, int keys, int head_dim, float* dst);
// One key tile for all rows of the block with the micro-kernels.
void microTile(const TileArgs& a);
// One softmax row of the BLAS path: s[0, visible) are scores (base 2); on return s[0, visible) holds
// exp2(s - m_new) and s[visible, width) zeros; updates *m, *l and returns alpha = exp2(m_old - m_new).
// visible > 0.
float softmaxRow(float* s, int visible, int width, float* m, float* l);
// o[0, n) *= a
void scaleRow(float* o, int n, float a);
}  // namespace avx2

}  // namespace flashring::attn
