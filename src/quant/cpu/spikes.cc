// Spike reserving (quant.h, "Spike reserving"): up to k values per group kept exactly as fp32, the rest of
// the group encoded by the ordinary kernels of any instruction set.
//
// Encoding works chunk by chunk (a few thousand values, so everything stays in L1/L2): copy the chunk,
// pick each group's spikes, write them to the spike section, overwrite their positions in the copy with the
// group's first finite non-spike value, and run the ISA's own quantize on the copy with spikes = 0. The
// kernels never see spikes, so every ISA gives the same bytes as before by construction. The chunk's
// metadata and codes are then moved to their places in the full run (a run's layout puts all metadata
// first; kernels process groups independently, so a chunk's groups encode exactly as in a whole-run call).
// Decoding runs the ISA's decoder on the whole run and then patches the spike positions; the accumulating
// decoder saves acc at those positions first, so that they end as saved + spike (one fp32 add, exactly
// acc + decode(x)).
//
// This file is compiled for baseline x86-64: the spike search uses SSE2 only.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "flashring/error.h"
#include "quant/cpu/codec_internal.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace flashring::quant::detail {
namespace {

constexpr uint32_t kAbsMask = 0x7FFFFFFFu;
constexpr uint32_t kInfBits = 0x7F800000u;
// Values per encoding chunk (rounded to whole groups, at least one group): 16 KiB of fp32.
constexpr size_t kChunkValues = 4096;

// The k largest magnitudes seen so far, sorted by (magnitude descending, index ascending). Magnitudes are
// the fp32 bits without the sign: for finite values their integer order is the order of |x|.
struct TopK {
  uint32_t mag[kMaxSpikes];
  uint16_t pos[kMaxSpikes];
  int count = 0;
  int k = 0;

  // A value enters only with a magnitude above this (-1 while not full; magnitudes are < 2^31). Strict:
  // a later value equal to the k-th largest does not displace it (ties go to the lower index).
  int32_t threshold() const { return count < k ? -1 : static_cast<int32_t>(mag[k - 1]); }

  void offer(uint32_t m, uint16_t i) {
    int p = count < k ? count++ : k - 1;  // when full, the last entry is dropped
    while (p > 0 && mag[p - 1] < m) {     // after equal magnitudes: they have lower indices
      mag[p] = mag[p - 1];
      pos[p] = pos[p - 1];
      --p;
    }
    mag[p] = m;
    pos[p] = i;
  }

  void scalarScan(const float* x, size_t begin, size_t end, bool& nonfinite) {
    for (size_t i = begin; i < end; ++i) {
      const uint32_t m = floatBits(x[i]) & kAbsMask;
      if (m >= kInfBits) {
        nonfinite = true;
        continue;
      }
      if (static_cast<int32_t>(m) > threshold()) offer(m, static_cast<uint16_t>(i));
    }
  }
};

// Spikes of one group of r values: writes their positions, ascending, to pos and returns how many.
int selectSpikes(const float* x, size_t r, int k, uint16_t* pos) {
  TopK t;
  t.k = k;
  bool nonfinite = false;
  size_t i = 0;
#if defined(__SSE2__)
  // 16 values at a time: most blocks hold no value above the current k-th largest magnitude and are
  // skipped after four compares; a block that does is re-scanned in scalar code, in index order.
  const __m128i abs_mask = _mm_set1_epi32(static_cast<int>(kAbsMask));
  const __m128i inf = _mm_set1_epi32(static_cast<int>(kInfBits));
  const __m128i max_finite = _mm_set1_epi32(static_cast<int>(kInfBits - 1));
  for (; i + 16 <= r; i += 16) {
    const __m128i thr = _mm_set1_epi32(t.threshold());
    __m128i cand = _mm_setzero_si128(), bad = _mm_setzero_si128();
    for (size_t j = 0; j < 16; j += 4) {
      const __m128i m = _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i + j)), abs_mask);
      cand = _mm_or_si128(cand, _mm_and_si128(_mm_cmpgt_epi32(m, thr), _mm_cmpgt_epi32(inf, m)));
      bad = _mm_or_si128(bad, _mm_cmpgt_epi32(m, max_finite));
    }
    if (_mm_movemask_epi8(bad) != 0) nonfinite = true;
    if (_mm_movemask_epi8(cand) != 0) t.scalarScan(x, i, i + 16, nonfinite);
  }
#endif
  t.scalarScan(x, i, r, nonfinite);
  // At least one finite value must stay out of the spikes: it stands in for them in the encoded copy.
  int used = t.count;
  if (nonfinite) {
    size_t finite = 0;
    for (size_t j = 0; j < r; ++j) finite += (floatBits(x[j]) & kAbsMask) < kInfBits ? 1 : 0;
    if (static_cast<size_t>(used) >= finite) used = finite == 0 ? 0 : static_cast<int>(finite) - 1;
  } else if (static_cast<size_t>(used) >= r) {
    used = static_cast<int>(r) - 1;
  }
  for (int a = 0; a < used; ++a) {  // insertion sort by position (at most kMaxSpikes entries)
    const uint16_t v = t.pos[a];
    int b = a;
    for (; b > 0 && pos[b - 1] > v; --b) pos[b] = pos[b - 1];
    pos[b] = v;
  }
  return used;
}

Config withoutSpikes(const Config& cfg) {
  Config c = cfg;
  c.spikes = 0;
  return c;
}

// Throws if an index of the spike section is neither kNoSpike nor inside its group.
void checkSpikeIndices(const uint8_t* idx, size_t n, const Config& cfg) {
  const size_t g = static_cast<size_t>(cfg.group_size), k = static_cast<size_t>(cfg.spikes);
  const size_t groups = numGroups(n, g);
  for (size_t q = 0; q < groups; ++q) {
    const size_t r = std::min(g, n - q * g);
    for (size_t e = 0; e < k; ++e) {
      uint16_t p;
      std::memcpy(&p, idx + (q * k + e) * sizeof p, sizeof p);
      if (p != kNoSpike && p >= r) {
        throw InvalidArgument(
            fmt::format("quant: corrupt spike section: index {} in group {} of {} values (entry {})", p, q, r, e));
      }
    }
  }
}

}  // namespace

void quantizeWithSpikes(const Kernels& kern, const float* x, size_t n, const Config& cfg, uint8_t* out) {
  const Config base = withoutSpikes(cfg);
  const size_t g = static_cast<size_t>(cfg.group_size);
  const int k = cfg.spikes;
  const size_t kk = static_cast<size_t>(k);
  const size_t groups = numGroups(n, g);
  const size_t cb = fullGroupCodeBytes(g, cfg.bits);
  uint8_t* codes = out + groups * sizeof(GroupMeta);
  uint8_t* idx_out = out + encodedSize(n, base);
  uint8_t* val_out = idx_out + groups * kk * sizeof(uint16_t);

  const size_t chunk_groups = std::max<size_t>(1, kChunkValues / g);
  thread_local std::vector<float> tmp_buf;
  thread_local std::vector<uint8_t> enc_buf;
  if (tmp_buf.size() < chunk_groups * g) tmp_buf.resize(chunk_groups * g);
  if (enc_buf.size() < encodedSize(chunk_groups * g, base)) enc_buf.resize(encodedSize(chunk_groups * g, base));
  float* tmp = tmp_buf.data();
  uint8_t* enc = enc_buf.data();

  for (size_t q0 = 0; q0 < groups; q0 += chunk_groups) {
    const size_t ng = std::min(chunk_groups, groups - q0);
    const size_t begin = q0 * g, len = std::min(ng * g, n - begin);
    std::memcpy(tmp, x + begin, len * sizeof(float));
    for (size_t j = 0; j < ng; ++j) {
      float* xg = tmp + j * g;
      const size_t r = std::min(g, len - j * g);
      uint16_t pos[kMaxSpikes];
      float val[kMaxSpikes];
      const int m = selectSpikes(xg, r, k, pos);
      for (int e = 0; e < m; ++e) val[e] = xg[pos[e]];
      for (int e = m; e < k; ++e) {
        pos[e] = kNoSpike;
        val[e] = 0.0f;
      }
      if (m > 0) {
        // The first finite non-spike value (there is one: m <= finite values - 1).
        float repl = 0.0f;
        for (size_t i = 0, e = 0; i < r; ++i) {
          if (e < static_cast<size_t>(m) && pos[e] == i) {
            ++e;
            continue;
          }
          if ((floatBits(xg[i]) & kAbsMask) < kInfBits) {
            repl = xg[i];
            break;
          }
        }
        for (int e = 0; e < m; ++e) xg[pos[e]] = repl;
      }
      std::memcpy(idx_out + (q0 + j) * kk * sizeof(uint16_t), pos, kk * sizeof(uint16_t));
      std::memcpy(val_out + (q0 + j) * kk * sizeof(float), val, kk * sizeof(float));
    }
    kern.quantize(tmp, len, base, enc);
    std::memcpy(out + q0 * sizeof(GroupMeta), enc, ng * sizeof(GroupMeta));
    std::memcpy(codes + q0 * cb, enc + ng * sizeof(GroupMeta), encodedSize(len, base) - ng * sizeof(GroupMeta));
  }
}

void dequantizeWithSpikes(const Kernels& kern, const uint8_t* in, size_t n, const Config& cfg, float* out) {
  const Config base = withoutSpikes(cfg);
  const uint8_t* idx = in + encodedSize(n, base);
  checkSpikeIndices(idx, n, cfg);
  kern.dequantize(in, n, base, out);
  const size_t g = static_cast<size_t>(cfg.group_size), k = static_cast<size_t>(cfg.spikes);
  const size_t groups = numGroups(n, g);
  const uint8_t* val = idx + groups * k * sizeof(uint16_t);
  for (size_t e = 0; e < groups * k; ++e) {
    uint16_t p;
    std::memcpy(&p, idx + e * sizeof p, sizeof p);
    if (p != kNoSpike) std::memcpy(out + (e / k) * g + p, val + e * sizeof(float), sizeof(float));
  }
}

void dequantizeAccumulateWithSpikes(const Kernels& kern, const uint8_t* in, size_t n, const Config& cfg, float* acc) {
  const Config base = withoutSpikes(cfg);
  const uint8_t* idx = in + encodedSize(n, base);
  checkSpikeIndices(idx, n, cfg);
  const size_t g = static_cast<size_t>(cfg.group_size), k = static_cast<size_t>(cfg.spikes);
  const size_t entries = numGroups(n, g) * k;
  const uint8_t* val = idx + entries * sizeof(uint16_t);
  thread_local std::vector<float> saved_buf;
  if (saved_buf.size() < entries) saved_buf.resize(entries);
  float* saved = saved_buf.data();
  for (size_t e = 0; e < entries; ++e) {
    uint16_t p;
    std::memcpy(&p, idx + e * sizeof p, sizeof p);
    if (p != kNoSpike) saved[e] = acc[(e / k) * g + p];
  }
  kern.dequantizeAccumulate(in, n, base, acc);
  for (size_t e = 0; e < entries; ++e) {
    uint16_t p;
    std::memcpy(&p, idx + e * sizeof p, sizeof p);
    if (p != kNoSpike) {
      float v;
      std::memcpy(&v, val + e * sizeof v, sizeof v);
      acc[(e / k) * g + p] = saved[e] + v;
    }
  }
}

}  // namespace flashring::quant::detail
