// CPU block attention: argument checks, the tiling driver, the OpenBLAS tile and the fp64 reference.
//
// The driver (FlashAttention-2 order): for each batch entry and KV head, the queries are cut into row
// blocks of q_block queries x `group` heads; each row block keeps its running max m, running sum l and
// unnormalised output O and walks the key tiles. Under causal masking a row block only visits the keys
// that its last query sees (the visible set of a query is a prefix of the keys, in global positions), so
// fully masked tiles are never touched and the masked part of the diagonal tile is skipped per row
// strip by the tile functions. A row that sees no key ends with l = 0 and becomes out = 0, lse = -inf.
//
// Own micro-kernels or OpenBLAS. Both are here (KernelImpl); Auto takes the micro-kernels because they
// measured faster on every benchmark shape (BM_Attention, 2-core Zen 3, one thread: 1.07x to 1.6x over
// sgemm + AVX2 softmax with its best tiling). sgemm wants large operands, while the online softmax wants
// small tiles, more so under causal masking; the micro-kernels also avoid sgemm's own packing per call.
// OpenBLAS remains the fallback for CPUs without AVX2/FMA.
//
// OpenBLAS threads. The Debian pthread OpenBLAS splits any sgemm with m*n*k above ~256K over its threads.
// Its thread count belongs to the CPU runtime (cpu::setThreads, flashring/cpu.h), which the tools set to 1
// per rank when ranks share the cores: measured with two ranks on two cores at once (1024 x 1024 MHA):
// 347 ms with 1 BLAS thread, 1028 ms with 2 (oversubscribed), although a lone call is 1.7x faster with 2.
// The default Avx2Micro path calls no BLAS at all.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "attention/kernel_internal.h"
#include "flashring/cpu.h"
#include "flashring/error.h"
#include "flashring/workspace.h"

namespace flashring {
namespace attn {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr double kLog2e = 1.4426950408889634073599246810018921;
constexpr double kLn2 = 0.6931471805599453094172321214581766;

// The CPU runtime decides (FLASHRING_ISA=scalar forces the portable paths).
bool cpuHasAvx2Fma() { return cpu::activeIsa() != cpu::Isa::Scalar; }

std::string field(const char* name, int64_t value) { return std::string(name) + " (" + std::to_string(value) + ")"; }

void checkPointer(const void* p, const char* name) {
  if (p == nullptr) throw InvalidArgument(std::string("blockAttention: ") + name + " is null");
}

// In BSHD the rows of one head are heads * head_dim floats apart, each on its own pages, where the hardware
// prefetcher does not follow: the packing loops prefetch the rows they will copy next (measured: packing
// took ~7% of a 512 x 512 MHA call without it, ~4.5% with it).
constexpr int kPrefetchRows = 8;
void prefetchRow(const float* p, int d) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < static_cast<int64_t>(d) * 4; off += 64) __builtin_prefetch(c + off);
}

// Scratch of one call, from the caller's workspace (or one local to the call). Not value-initialised: zeroing
// megabytes of fresh scratch before the first tile would delay the first progress call; pages are touched
// tile by tile instead.
struct Scratch {
  float *o = nullptr, *m = nullptr, *l = nullptr, *s = nullptr, *alpha = nullptr;
  float *q_packed = nullptr, *k_panels = nullptr, *v_packed = nullptr;
};

// ---------------------------------------------------------------------------------------------------------
// Portable pieces of the BLAS tile.

float softmaxRowScalar(float* s, int visible, int width, float* m, float* l) {
  float mx = kNegInf;
  for (int j = 0; j < visible; ++j) mx = std::max(mx, s[j]);
  const float m_new = std::max(*m, mx);  // finite: visible > 0
  const float alpha = std::exp2(*m - m_new);
  float sum = 0.f;
  for (int j = 0; j < visible; ++j) {
    const float p = std::exp2(s[j] - m_new);
    s[j] = p;
    sum += p;
  }
  for (int j = visible; j < width; ++j) s[j] = 0.f;
  *l = *l * alpha + sum;
  *m = m_new;
  return alpha;
}

// One key tile with two sgemm per query head of the group (K/V of the tile stay in cache across heads).
void blasTile(const TileArgs& a, int q_count, bool simd) {
  const int d = a.head_dim;
  const int g = a.group;
  const int ncols = visibleKeys(a, q_count - 1);  // the last query sees the most keys
  if (ncols == 0) return;
  const int ldq = static_cast<int>(a.ldq);
  const int ldk = static_cast<int>(a.ldk);
  for (int hh = 0; hh < g; ++hh) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, q_count, ncols, d, a.scale2, a.q + hh * d, ldq, a.k, ldk, 0.f,
                a.s, ncols);
    for (int i = 0; i < q_count; ++i) {
      const int r = i * g + hh;
      float* srow = a.s + static_cast<int64_t>(i) * ncols;
      const int vis = visibleKeys(a, i);
      if (vis == 0) {
        std::memset(srow, 0, sizeof(float) * static_cast<size_t>(ncols));
        continue;
      }
      float* orow = a.o + static_cast<int64_t>(r) * a.ldo;
      if (simd) {
        const float alpha = avx2::softmaxRow(srow, vis, ncols, a.m + r, a.l + r);
        if (alpha != 1.f) avx2::scaleRow(orow, d, alpha);
      } else {
        const float alpha = softmaxRowScalar(srow, vis, ncols, a.m + r, a.l + r);
        if (alpha != 1.f) {
          for (int c = 0; c < d; ++c) orow[c] *= alpha;
        }
      }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, q_count, d, ncols, 1.f, a.s, ncols, a.v, ldk, 1.f,
                a.o + hh * a.ldo, g * a.ldo);
  }
}

// Default tiling, from BM_AttentionTuning (bench/kernels/bench_attention.cc) on a 2-core Zen 3 (32 KiB L1d,
// 512 KiB L2 per core). Micro-kernels: 96 rows share each K/V tile; a K + V tile of ~128 KiB (128 keys at
// head_dim 128, 256 at 64) amortises the per-tile softmax and O reload; rows 48..192 x tile 128..256 are
// all within ~5% of each other, 32-key and >= 384-key tiles are worse. BLAS: sgemm needs big operands to
// reach its speed (64 x 128 tiles run at ~57 GFLOP/s, 256 x 256 at ~66 on MHA 1024).
KernelTuning defaultTuning(KernelImpl impl, int head_dim) {
  if (impl == KernelImpl::Avx2Micro) return {96, head_dim <= 64 ? 256 : 128};
  return {256, 256};
}

void run(KernelImpl impl, const float* q, const float* k, const float* v, const AttentionShape& shape,
         const BlockAttentionOptions& options, float* out, float* lse, const KernelTuning& tuning) {
  const int sq = shape.q_len;
  const int skv = shape.kv_len;
  const int h = shape.heads;
  const int hkv = shape.kv_heads;
  const int d = shape.head_dim;
  const int g = h / hkv;
  const int64_t ldq = static_cast<int64_t>(h) * d;
  const int64_t ldk = static_cast<int64_t>(hkv) * d;
  const double scale = options.scale == 0.f ? 1.0 / std::sqrt(static_cast<double>(d)) : options.scale;
  const float scale2 = static_cast<float>(scale * kLog2e);
  const bool micro = impl == KernelImpl::Avx2Micro;

  const KernelTuning def = defaultTuning(impl, d);
  const int block_rows = tuning.block_rows > 0 ? tuning.block_rows : def.block_rows;
  int key_tile = tuning.key_tile > 0 ? tuning.key_tile : def.key_tile;
  key_tile = (key_tile + kPanel - 1) / kPanel * kPanel;
  const int q_block = std::clamp(block_rows / g, 1, sq);
  const int rows_max = q_block * g;

  // Micro-kernels: O and the V panels are padded to a multiple of 16 columns.
  const int ldo = micro ? (d + kPanel - 1) / kPanel * kPanel : d;
  const int panels_total = (skv + kPanel - 1) / kPanel;
  const size_t rows_sz = static_cast<size_t>(rows_max);
  const size_t sizes[] = {rows_sz * ldo,
                          rows_sz,
                          rows_sz,
                          rows_sz,
                          rows_sz * key_tile,
                          micro ? rows_sz * d : 0,
                          micro ? static_cast<size_t>(panels_total) * kPanel * d : 0,
                          micro ? static_cast<size_t>(skv) * ldo : 0};
  Workspace local;  // used only without options.workspace
  Workspace::Frame frame(options.workspace != nullptr ? *options.workspace : local);
  size_t need = 0;
  for (size_t n : sizes) need += Workspace::footprint(n * sizeof(float));
  frame.reserve(need);  // one allocation when the workspace is new (or local)
  Scratch sc;
  float** slots[] = {&sc.o, &sc.m, &sc.l, &sc.alpha, &sc.s, &sc.q_packed, &sc.k_panels, &sc.v_packed};
  for (size_t i = 0; i < std::size(sizes); ++i) *slots[i] = frame.get<float>(sizes[i]).data();

  // Progress: the clock is read only every ~1M multiply-adds (~20-40 us), the hook called every >= 0.5 ms.
  using Clock = std::chrono::steady_clock;
  constexpr int64_t kClockEveryMacs = int64_t{1} << 20;
  constexpr auto kProgressEvery = std::chrono::microseconds(500);
  const bool has_progress = static_cast<bool>(options.progress);
  Clock::time_point last_progress = has_progress ? Clock::now() : Clock::time_point{};
  int64_t macs_since_clock = 0;

  TileArgs a{};
  a.ldq = ldq;
  a.ldk = ldk;
  a.group = g;
  a.head_dim = d;
  a.causal = options.causal;
  a.scale2 = scale2;
  a.o = sc.o;
  a.ldo = ldo;
  a.v_panel_stride = static_cast<int64_t>(skv) * kPanel;
  a.m = sc.m;
  a.l = sc.l;
  a.s = sc.s;
  a.alpha = sc.alpha;

  for (int b = 0; b < shape.batch; ++b) {
    for (int kh = 0; kh < hkv; ++kh) {
      const float* kbase = k + (static_cast<int64_t>(b) * skv * hkv + kh) * d;
      const float* vbase = v + (static_cast<int64_t>(b) * skv * hkv + kh) * d;
      // K panels (and V rows) of this (batch, KV head) packed so far. Every row block visits a prefix of the
      // keys, so packing on demand packs each key once and never one that no query sees.
      int panels_packed = 0;
      // Packs K panels and V rows [panels_packed, upto) just before the tile that first needs them: they are
      // then still in cache when the tile runs (what matters when few rows share each key, e.g. decode),
      // and the progress hook keeps its cadence during long packing.
      auto packPanelsUpTo = [&](int upto) {
        for (int p = panels_packed; p < upto; ++p) {
          const int nk = std::min(kPanel, skv - p * kPanel);
          const int64_t key0 = static_cast<int64_t>(p) * kPanel;
          if (p + 1 < panels_total) {
            const int64_t next0 = key0 + kPanel;
            for (int64_t j = next0; j < std::min<int64_t>(next0 + kPanel, skv); ++j) {
              prefetchRow(kbase + j * ldk, d);
              prefetchRow(vbase + j * ldk, d);
            }
          }
          avx2::packKeyPanels(kbase + key0 * ldk, ldk, nk, d, sc.k_panels + key0 * d);
          for (int j = 0; j < nk; ++j) {
            const float* src = vbase + (key0 + j) * ldk;
            float* dst = sc.v_packed + (key0 + j) * kPanel;
            for (int c = 0; c < ldo; c += kPanel, dst += a.v_panel_stride) {
              const int n = std::min(kPanel, d - c);
              std::memcpy(dst, src + c, sizeof(float) * n);
              if (n < kPanel) std::memset(dst + n, 0, sizeof(float) * (kPanel - n));
            }
          }
          // A strided copy costs about as much as ~16 multiply-adds per element.
          macs_since_clock += int64_t{16} * 2 * nk * d;
        }
        panels_packed = std::max(panels_packed, upto);
      };
      for (int i0 = 0; i0 < sq; i0 += q_block) {
        const int qc = std::min(q_block, sq - i0);
        const int rows = qc * g;
        // Keys [0, kend) are visible to some query of the block. Causal: key j is visible to the last query
        // iff k_offset + j <= q_offset + i0 + qc - 1.
        int kend = skv;
        int64_t diag0 = 0;  // query 0 of the block sees tile-relative key j iff j <= diag0 - j0
        if (options.causal) {
          diag0 = options.q_offset + i0 - options.k_offset;
          kend = static_cast<int>(std::clamp<int64_t>(diag0 + qc, 0, skv));
        }
        std::fill_n(sc.m, rows, kNegInf);
        std::fill_n(sc.l, rows, 0.f);
        std::fill_n(sc.o, static_cast<size_t>(rows) * ldo, 0.f);
        a.q = q + ((static_cast<int64_t>(b) * sq + i0) * h + static_cast<int64_t>(kh) * g) * d;
        a.rows = rows;

        if (micro && kend > 0) {
          for (int r = 0; r < rows; ++r) {
            if (r + kPrefetchRows < rows) {
              const int ahead = r + kPrefetchRows;
              prefetchRow(a.q + static_cast<int64_t>(ahead / g) * ldq + static_cast<int64_t>(ahead % g) * d, d);
            }
            std::memcpy(sc.q_packed + static_cast<int64_t>(r) * d,
                        a.q + static_cast<int64_t>(r / g) * ldq + static_cast<int64_t>(r % g) * d, sizeof(float) * d);
          }
        }

        for (int j0 = 0; j0 < kend; j0 += key_tile) {
          a.keys = std::min(key_tile, kend - j0);
          if (micro) packPanelsUpTo((j0 + a.keys + kPanel - 1) / kPanel);
          a.k = kbase + static_cast<int64_t>(j0) * ldk;
          a.v = vbase + static_cast<int64_t>(j0) * ldk;
          a.q_packed = micro ? sc.q_packed : nullptr;
          a.k_panels = micro ? sc.k_panels + static_cast<int64_t>(j0) * d : nullptr;
          a.v_packed = micro ? sc.v_packed + static_cast<int64_t>(j0) * kPanel : nullptr;
          // The tile needs masking only if the first query does not see all of it.
          a.causal = options.causal && diag0 - j0 < a.keys - 1;
          a.diag = diag0 - j0;
          switch (impl) {
            case KernelImpl::Avx2Micro:
              avx2::microTile(a);
              break;
            case KernelImpl::Avx2Blas:
              blasTile(a, qc, true);
              break;
            default:
              blasTile(a, qc, false);
              break;
          }
          if (has_progress) {
            macs_since_clock += static_cast<int64_t>(rows) * a.keys * d;
            if (macs_since_clock >= kClockEveryMacs) {
              macs_since_clock = 0;
              const auto now = Clock::now();
              if (now - last_progress >= kProgressEvery) {
                options.progress();
                last_progress = Clock::now();
              }
            }
          }
        }

        // Normalise and write the block out.
        for (int r = 0; r < rows; ++r) {
          const int64_t row = (static_cast<int64_t>(b) * sq + i0 + r / g) * h + static_cast<int64_t>(kh) * g + r % g;
          float* dst = out + row * d;
          const float lsum = sc.l[static_cast<size_t>(r)];
          if (lsum > 0.f) {
            const float inv = 1.f / lsum;
            const float* src = sc.o + static_cast<int64_t>(r) * ldo;
            for (int c = 0; c < d; ++c) dst[c] = src[c] * inv;
            lse[row] = static_cast<float>(
                (static_cast<double>(sc.m[static_cast<size_t>(r)]) + std::log2(static_cast<double>(lsum))) * kLn2);
          } else {
            std::memset(dst, 0, sizeof(float) * static_cast<size_t>(d));
            lse[row] = kNegInf;
          }
        }
      }
    }
  }
}

void checkArguments(const float* q, const float* k, const float* v, const AttentionShape& shape,
                    const BlockAttentionOptions& options, const float* out, const float* lse) {
  validate(shape);
  checkPointer(q, "q");
  checkPointer(k, "k");
  checkPointer(v, "v");
  checkPointer(out, "out");
  checkPointer(lse, "lse");
  if (!std::isfinite(options.scale)) throw InvalidArgument("blockAttention: scale must be finite");
}

}  // namespace

const char* kernelImplName(KernelImpl impl) {
  switch (impl) {
    case KernelImpl::Auto:
      return "auto";
    case KernelImpl::Portable:
      return "portable";
    case KernelImpl::Avx2Blas:
      return "avx2-blas";
    case KernelImpl::Avx2Micro:
      return "avx2-micro";
  }
  return "?";
}

bool kernelImplSupported(KernelImpl impl) {
  switch (impl) {
    case KernelImpl::Auto:
    case KernelImpl::Portable:
      return true;
    case KernelImpl::Avx2Blas:
    case KernelImpl::Avx2Micro:
      return cpuHasAvx2Fma();
  }
  return false;
}

KernelImpl bestKernelImpl() { return cpuHasAvx2Fma() ? KernelImpl::Avx2Micro : KernelImpl::Portable; }

void blockAttentionWith(KernelImpl impl, const float* q, const float* k, const float* v, const AttentionShape& shape,
                        const BlockAttentionOptions& options, float* out, float* lse, const KernelTuning& tuning) {
  checkArguments(q, k, v, shape, options, out, lse);
  if (impl == KernelImpl::Auto) impl = bestKernelImpl();
  if (!kernelImplSupported(impl)) {
    throw InvalidArgument(std::string("blockAttention: implementation ") + kernelImplName(impl) +
                          " needs AVX2 and FMA, which this CPU lacks");
  }
  run(impl, q, k, v, shape, options, out, lse, tuning);
}

void setBlasThreads(int n) { cpu::setThreads(n); }

int blasThreads() { return openblas_get_num_threads(); }

}  // namespace attn

void validate(const AttentionShape& s) {
  auto positive = [](int value, const char* name) {
    if (value <= 0) throw InvalidArgument("attention shape: " + attn::field(name, value) + " must be positive");
  };
  positive(s.batch, "batch");
  positive(s.q_len, "q_len");
  positive(s.kv_len, "kv_len");
  positive(s.heads, "heads");
  positive(s.kv_heads, "kv_heads");
  positive(s.head_dim, "head_dim");
  if (s.heads % s.kv_heads != 0) {
    throw InvalidArgument("attention shape: " + attn::field("heads", s.heads) + " must be a multiple of " +
                          attn::field("kv_heads", s.kv_heads));
  }
  // Row strides are passed to BLAS as int.
  if (static_cast<int64_t>(s.heads) * s.head_dim > std::numeric_limits<int>::max()) {
    throw InvalidArgument("attention shape: heads * head_dim (" +
                          std::to_string(static_cast<int64_t>(s.heads) * s.head_dim) + ") does not fit an int");
  }
}

void blockAttention(const float* q, const float* k, const float* v, const AttentionShape& shape,
                    const BlockAttentionOptions& options, float* out, float* lse) {
  attn::blockAttentionWith(attn::KernelImpl::Auto, q, k, v, shape, options, out, lse);
}

void blockAttentionReference(const float* q, const float* k, const float* v, const AttentionShape& shape,
                             const BlockAttentionOptions& options, float* out, float* lse) {
  attn::checkArguments(q, k, v, shape, options, out, lse);
  const int sq = shape.q_len;
  const int skv = shape.kv_len;
  const int h = shape.heads;
  const int hkv = shape.kv_heads;
  const int d = shape.head_dim;
  const int g = h / hkv;
  const double scale = options.scale == 0.f ? 1.0 / std::sqrt(static_cast<double>(d)) : options.scale;
  std::vector<double> s(static_cast<size_t>(skv));
  std::vector<double> acc(static_cast<size_t>(d));
  for (int b = 0; b < shape.batch; ++b) {
    for (int i = 0; i < sq; ++i) {
      for (int head = 0; head < h; ++head) {
        const int kh = head / g;
        const int64_t row = (static_cast<int64_t>(b) * sq + i) * h + head;
        const float* qr = q + row * d;
        double mx = -std::numeric_limits<double>::infinity();
        int visible = 0;
        for (int j = 0; j < skv; ++j) {
          if (options.causal && options.k_offset + j > options.q_offset + i) {
            s[static_cast<size_t>(j)] = -std::numeric_limits<double>::infinity();
            continue;
          }
          const float* kr = k + ((static_cast<int64_t>(b) * skv + j) * hkv + kh) * d;
          double dot = 0.0;
          for (int c = 0; c < d; ++c) dot += static_cast<double>(qr[c]) * static_cast<double>(kr[c]);
          s[static_cast<size_t>(j)] = dot * scale;
          mx = std::max(mx, s[static_cast<size_t>(j)]);
          ++visible;
        }
        float* o = out + row * d;
        if (visible == 0) {
          std::fill_n(o, d, 0.f);
          lse[row] = -std::numeric_limits<float>::infinity();
          continue;
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        double sum = 0.0;
        for (int j = 0; j < skv; ++j) {
          if (s[static_cast<size_t>(j)] == -std::numeric_limits<double>::infinity()) continue;
          const double p = std::exp(s[static_cast<size_t>(j)] - mx);
          sum += p;
          const float* vr = v + ((static_cast<int64_t>(b) * skv + j) * hkv + kh) * d;
          for (int c = 0; c < d; ++c) acc[static_cast<size_t>(c)] += p * static_cast<double>(vr[c]);
        }
        for (int c = 0; c < d; ++c) o[c] = static_cast<float>(acc[static_cast<size_t>(c)] / sum);
        lse[row] = static_cast<float>(mx + std::log(sum));
      }
    }
  }
}

}  // namespace flashring
