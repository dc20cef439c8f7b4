// The matmul driver (include/flashring/qmatmul.h): integer dot products for small batches, dequantized
// panels + OpenBLAS sgemm for large ones, F32 weights straight to OpenBLAS.
#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>

#include "flashring/error.h"
#include "qmm/qmm_internal.h"

namespace flashring::qmm {
namespace {

std::atomic<int64_t> g_gemm_threshold{16};

// Panel rows for the dequantize + sgemm path: ~2 MB of fp32 (a few hundred rows of a 4096-wide matrix),
// at least 64 rows so that sgemm gets a useful n.
int64_t panelRows(const Matrix& w) {
  const int64_t by_bytes = (int64_t{2} << 20) / std::max<int64_t>(1, w.cols * 4);
  return std::clamp<int64_t>(by_bytes, 64, std::max<int64_t>(w.rows, 1));
}

void checkMatrix(const Matrix& w, const float* x, int64_t m, const float* y) {
  if (m < 0) throw InvalidArgument("qmm::matmul: m = " + std::to_string(m) + " < 0");
  if (w.rows < 0 || w.cols < 0) throw InvalidArgument("qmm::matmul: negative matrix dimensions");
  if (!hasKernels(w.type))
    throw InvalidArgument("qmm::matmul: no kernels for tensor type " + gguf::typeName(static_cast<uint32_t>(w.type)));
  if (w.cols % static_cast<int64_t>(gguf::blockSize(w.type)) != 0)
    throw InvalidArgument("qmm::matmul: row length " + std::to_string(w.cols) + " is not a multiple of " +
                          gguf::typeName(static_cast<uint32_t>(w.type)) + "'s block size");
  const size_t need = static_cast<size_t>(w.cols) / gguf::blockSize(w.type) * gguf::blockBytes(w.type);
  if (w.row_bytes < need)
    throw InvalidArgument("qmm::matmul: row_bytes " + std::to_string(w.row_bytes) + " < " + std::to_string(need) +
                          " bytes of a row");
  if (m > 0 && w.rows > 0 && (w.data == nullptr || x == nullptr || y == nullptr))
    throw InvalidArgument("qmm::matmul: null pointer");
}

void matmulF32(const Matrix& w, const float* x, int64_t m, float* y) {
  const auto* a = reinterpret_cast<const float*>(w.data);
  const auto ld = static_cast<blasint>(w.row_bytes / sizeof(float));
  if (m == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(w.rows), static_cast<blasint>(w.cols), 1.f, a, ld, x,
                1, 0.f, y, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m), static_cast<blasint>(w.rows),
              static_cast<blasint>(w.cols), 1.f, x, static_cast<blasint>(w.cols), a, ld, 0.f, y,
              static_cast<blasint>(w.rows));
}

// The outputs of one block of 2^lr rows (r, r + rs, r + 2 rs, ...) by 2^lm activation vectors (from i): the
// table's tile of that shape, else two blocks of half the rows (or, at one row, half the vectors), down to
// single dot products. Every way gives the same bits (a tile computes each output as dot does).
void dotBlock(const detail::TypeKernels& k, size_t n, const Matrix& w, const uint8_t* act, size_t ab, float* y, int lr,
              int lm, int64_t r, int64_t rs, int64_t i) {
  const uint8_t* row = w.data + static_cast<size_t>(r) * w.row_bytes;
  const uint8_t* a = act + ab * static_cast<size_t>(i);
  if (lr == 0 && lm == 0) {
    y[i * w.rows + r] = k.dot(n, row, a);
  } else if (k.tiles[lr][lm] != nullptr) {
    const int64_t nr = int64_t{1} << lr, nv = int64_t{1} << lm;
    float out[16];
    k.tiles[lr][lm](n, row, static_cast<size_t>(rs) * w.row_bytes, a, ab, out, static_cast<size_t>(nr));
    for (int64_t v = 0; v < nv; ++v)
      for (int64_t s = 0; s < nr; ++s) y[(i + v) * w.rows + r + s * rs] = out[v * nr + s];
  } else if (lr > 0) {
    dotBlock(k, n, w, act, ab, y, lr - 1, lm, r, rs, i);
    dotBlock(k, n, w, act, ab, y, lr - 1, lm, r + (rs << (lr - 1)), rs, i);
  } else {
    dotBlock(k, n, w, act, ab, y, 0, lm - 1, r, rs, i);
    dotBlock(k, n, w, act, ab, y, 0, lm - 1, r, rs, i + (int64_t{1} << (lm - 1)));
  }
}

// Rows are read as kStreams streams (matmulDot); a block of rows takes one from each.
constexpr int kStreamsLog2 = 2;

// The number of activation vectors of a block (log2) for m vectors: at m = 1 one (the 4 x 1 tile: the
// activation loads shared by four rows), else the most the table's tiles take, 4 (two 2 x 4 tiles a block of
// four rows) or 2 (one 4 x 2). bench_qmatmul's qmm/tile rows (Q4_1, 1536 x 576, AVX-512 VNNI, in L2): m = 1
// 4x1 1.29x the single dot, 2x1 1.23x; m = 4 and 8: 2x4 1.7x, 4x2 1.6x, 2x2 / 1x4 1.45x.
int vectorsLog2(const detail::TypeKernels& k, int64_t m) {
  for (int lm = 2; lm > 0; --lm) {
    if ((int64_t{1} << lm) > m) continue;
    for (int lr = 0; lr <= kStreamsLog2; ++lr)
      if (k.tiles[lr][lm] != nullptr) return lm;
  }
  return 0;
}

void matmulDot(const Matrix& w, const float* x, int64_t m, float* y, Workspace& ws) {
  const detail::TypeKernels& k = detail::resolvedKernels(w.type);
  const size_t n = static_cast<size_t>(w.cols);
  const size_t ab = actBytes(w.type, n);
  ws.act.resize(ab * static_cast<size_t>(m));
  const ActFormat f = actFormat(w.type);
  if (f == ActFormat::F32) {
    std::memcpy(ws.act.data(), x, n * sizeof(float) * static_cast<size_t>(m));
  } else {
    const detail::QuantizeFn q = detail::resolvedQuantizer(f);
    for (int64_t i = 0; i < m; ++i) q(x + i * w.cols, n, ws.act.data() + ab * static_cast<size_t>(i));
  }
  const uint8_t* act = ws.act.data();
  const int lm = vectorsLog2(k, m);
  // Rows [begin, end) x every vector, in blocks of 2^kStreamsLog2 rows by 2^lm vectors (the vectors left
  // over in smaller powers of two). A block takes its rows from four streams, four runs of (end - begin) / 4
  // consecutive rows, rather than four consecutive rows: one core reads several streams of memory faster
  // than one (a 96 MB read on this project's 2-core test machine: 12.4 GB/s as one stream, 14.4 as two,
  // 15.8 as four), and the hardware prefetchers follow each. The default model decodes at 1.39x the tokens
  // a second with 4 x 1 tiles on four streams than on four consecutive rows (8 and 16 streams: 1.2x). The
  // rows left over (fewer than four) go through smaller blocks. The vectors are the inner loop, so a block's
  // weight rows are read from memory once.
  const auto rows = [&](int64_t begin, int64_t end) {
    const int64_t q = (end - begin) >> kStreamsLog2;
    const auto vectors = [&](int lr, int64_t r, int64_t rs) {
      for (int64_t i = 0; i < m;) {
        int bm = lm;
        while (i + (int64_t{1} << bm) > m) --bm;
        dotBlock(k, n, w, act, ab, y, lr, bm, r, rs, i);
        i += int64_t{1} << bm;
      }
    };
    const detail::TileFn decode = m == 1 ? k.tiles[kStreamsLog2][0] : nullptr;
    if (decode != nullptr) {
      // m = 1 with a 4 x 1 tile (decode): the tile straight into y.
      const size_t stride = static_cast<size_t>(q) * w.row_bytes;
      for (int64_t j = 0; j < q; ++j) {
        const int64_t r = begin + j;
        float out[4];
        decode(n, w.data + static_cast<size_t>(r) * w.row_bytes, stride, act, ab, out, 4);
        for (int s = 0; s < 4; ++s) y[r + s * q] = out[s];
      }
    } else {
      for (int64_t j = 0; j < q; ++j) vectors(kStreamsLog2, begin + j, q);
    }
    for (int64_t r = begin + (q << kStreamsLog2); r < end;) {
      int lr = kStreamsLog2;
      while (r + (int64_t{1} << lr) > end) --lr;
      vectors(lr, r, 1);
      r += int64_t{1} << lr;
    }
  };
  const int t = cpu::threads();
  if (t <= 1 || w.rows < 32) {
    rows(0, w.rows);
    return;
  }
  // Chunks of rows (each read as streams, as above) taken from a shared counter by every thread of the job,
  // the caller included, so that a thread that starts late or is descheduled holds up at most its chunk: two
  // a thread. Default model at -t 2 on a quiet moment of the 2-core machine: 1 chunk a thread 1.53x the
  // tokens a second of -t 1, 2 chunks 1.50x, 3 1.40x, 8 1.28x (fewer, longer streams read faster).
  const int64_t chunk = std::max<int64_t>(64, (w.rows + 2 * t - 1) / (2 * t));
  const int64_t chunks = (w.rows + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  cpu::parallelFor(std::min<int64_t>(t, chunks), 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
         c = next.fetch_add(1, std::memory_order_relaxed))
      rows(c * chunk, std::min(w.rows, (c + 1) * chunk));
  });
}

void matmulDequantGemm(const Matrix& w, const float* x, int64_t m, float* y, Workspace& ws) {
  const detail::TypeKernels& k = detail::resolvedKernels(w.type);
  const int64_t pr = panelRows(w);
  ws.panel.resize(static_cast<size_t>(std::min(pr, w.rows) * w.cols));
  for (int64_t p0 = 0; p0 < w.rows; p0 += pr) {
    const int64_t rows = std::min(pr, w.rows - p0);
    float* panel = ws.panel.data();
    cpu::parallelFor(rows, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        k.dequantize(w.data + static_cast<size_t>(p0 + r) * w.row_bytes, panel + r * w.cols,
                     static_cast<size_t>(w.cols));
    });
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m), static_cast<blasint>(rows),
                static_cast<blasint>(w.cols), 1.f, x, static_cast<blasint>(w.cols), panel, static_cast<blasint>(w.cols),
                0.f, y + p0, static_cast<blasint>(w.rows));
  }
}

}  // namespace

Matrix Matrix::rowRange(int64_t begin, int64_t count) const {
  if (begin < 0 || count < 0 || begin + count > rows)
    throw InvalidArgument("qmm::Matrix::rowRange: rows [" + std::to_string(begin) + ", " +
                          std::to_string(begin + count) + ") outside [0, " + std::to_string(rows) + ")");
  Matrix m = *this;
  m.data = data + static_cast<size_t>(begin) * row_bytes;
  m.rows = count;
  return m;
}

int64_t gemmThreshold() { return g_gemm_threshold.load(std::memory_order_relaxed); }
void setGemmThreshold(int64_t m) {
  if (m < 1) throw InvalidArgument("qmm::setGemmThreshold: " + std::to_string(m) + " < 1");
  g_gemm_threshold.store(m, std::memory_order_relaxed);
}

void matmul(const Matrix& w, const float* x, int64_t m, float* y, Workspace& ws, MatmulPath path) {
  checkMatrix(w, x, m, y);
  if (m == 0 || w.rows == 0) return;
  if (w.cols == 0) {
    std::fill(y, y + m * w.rows, 0.f);
    return;
  }
  if (path == MatmulPath::Auto) {
    if (w.type == TensorType::F32) {
      matmulF32(w, x, m, y);
      return;
    }
    path = m < gemmThreshold() ? MatmulPath::Dot : MatmulPath::DequantGemm;
  }
  if (path == MatmulPath::Dot) {
    matmulDot(w, x, m, y, ws);
  } else {
    matmulDequantGemm(w, x, m, y, ws);
  }
}

void matmul(const Matrix& w, const float* x, int64_t m, float* y, Workspace& ws) {
  matmul(w, x, m, y, ws, MatmulPath::Auto);
}

}  // namespace flashring::qmm
