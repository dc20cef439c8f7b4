// Spike reserving (quant.h, "Spike reserving"): up to k values per group kept exactly as fp32, the rest of
// the group encoded by the ordinary kernels of any instruction set.
//
// Encoding works chunk by chunk (a few thousand values, so everything stays in L1/L2): copy the chunk while
// picking each group's spikes (SSE2 max/compare passes for groups of finite values, a scalar top-k scan for
// the others), write them to the spike section, overwrite their positions in the copy with the
// group's first finite non-spike value, and run the ISA's own quantize on the copy with spikes = 0. The
// kernels never see spikes, so every ISA gives the same bytes as before by construction. The chunk's
// metadata and codes are then moved to their places in the full run (a run's layout puts all metadata
// first; kernels process groups independently, so a chunk's groups encode exactly as in a whole-run call).
// Isa::Avx2 skips that move for chunks of full groups: its kernel's group encoder (quantizeFullGroupsAvx2,
// the same code as its quantize) writes the metadata and codes to their places directly, and while it reads
// the copy it prefetches the next chunk's input, so that memory keeps streaming during the encoding.
// Decoding runs the ISA's decoder on the whole run and then patches the spike positions; the accumulating
// decoder saves acc at those positions first, so that they end as saved + spike (one fp32 add, exactly
// acc + decode(x)).
//
// This file is compiled for baseline x86-64: its spike search (the reference, used by Isa::Scalar) uses SSE2
// only. Isa::Avx2 and Isa::Avx512 select with spikes_avx2.cc, which falls back to this one for the groups it
// does not handle (NaN/Inf, short tails); both pick the same spikes, bit for bit.
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
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
// The same for Isa::Avx2's direct path (see quantizeWithSpikes): 4 KiB of fp32. Small chunks keep the input
// stream's prefetches, issued by the selection pass and the encoder, evenly spread over the work.
constexpr size_t kDirectChunkValues = 1024;
constexpr size_t kMaxChunkGroups = kChunkValues / kMinGroup;
static_assert(kDirectChunkValues <= kChunkValues);
// Software prefetch distance of the one pass that reads the input from memory (as in the SIMD kernels).
constexpr uintptr_t kPrefetchBytes = 8192;

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

#if defined(__SSE2__)
inline float hmax4(__m128 v) {
  v = _mm_max_ps(v, _mm_movehl_ps(v, v));
  v = _mm_max_ss(v, _mm_shuffle_ps(v, v, 1));
  return _mm_cvtss_f32(v);
}

// The common case, without a branch per value: a group of r values (r % 16 == 0, r > k) copied to `copy`
// while its magnitudes go to `mags` and their maximum is taken; if the group holds NaN/Inf this returns -1
// (the caller then runs selectSpikes on the copy). Otherwise every value is finite and r > k, so the group
// has exactly k spikes: k times, the first position holding the largest remaining magnitude (the rule's
// order: magnitude descending, index ascending), which is then marked -1 so that it never wins again.
int selectSpikesFinite(const float* x, size_t r, int k, float* copy, float* mags, uint16_t* pos) {
  const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(static_cast<int>(kAbsMask)));
  const __m128i max_finite = _mm_set1_epi32(static_cast<int>(kInfBits - 1));
  __m128 mx0 = _mm_setzero_ps(), mx1 = _mm_setzero_ps();
  __m128i bad = _mm_setzero_si128();
  size_t i = 0;
  for (; i + 8 <= r; i += 8) {
    // The input comes from memory once, here; prefetch ahead like the kernels' pass 1 (integer address
    // arithmetic: past the end of the input is harmless for a prefetch but not a valid pointer).
    if (i % 16 == 0) {
      _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(x + i) + kPrefetchBytes), _MM_HINT_T0);
    }
    const __m128 v0 = _mm_loadu_ps(x + i), v1 = _mm_loadu_ps(x + i + 4);
    _mm_storeu_ps(copy + i, v0);
    _mm_storeu_ps(copy + i + 4, v1);
    const __m128 a0 = _mm_and_ps(v0, abs_mask), a1 = _mm_and_ps(v1, abs_mask);
    _mm_storeu_ps(mags + i, a0);
    _mm_storeu_ps(mags + i + 4, a1);
    mx0 = _mm_max_ps(mx0, a0);
    mx1 = _mm_max_ps(mx1, a1);
    bad = _mm_or_si128(bad, _mm_or_si128(_mm_cmpgt_epi32(_mm_castps_si128(a0), max_finite),
                                         _mm_cmpgt_epi32(_mm_castps_si128(a1), max_finite)));
  }
  for (; i < r; i += 4) {
    const __m128 v = _mm_loadu_ps(x + i);
    _mm_storeu_ps(copy + i, v);
    const __m128 a = _mm_and_ps(v, abs_mask);
    _mm_storeu_ps(mags + i, a);
    mx0 = _mm_max_ps(mx0, a);
    bad = _mm_or_si128(bad, _mm_cmpgt_epi32(_mm_castps_si128(a), max_finite));
  }
  if (_mm_movemask_epi8(bad) != 0) return -1;
  float mx = hmax4(_mm_max_ps(mx0, mx1));
  uint16_t chosen[kMaxSpikes];
  for (int s = 0; s < k; ++s) {
    if (s > 0) {  // four independent chains: maxps latency, not throughput, bounds one chain
      __m128 m0 = _mm_set1_ps(-1.0f), m1 = m0, m2 = m0, m3 = m0;
      for (size_t j = 0; j < r; j += 16) {  // r % 16 == 0 here
        m0 = _mm_max_ps(m0, _mm_loadu_ps(mags + j));
        m1 = _mm_max_ps(m1, _mm_loadu_ps(mags + j + 4));
        m2 = _mm_max_ps(m2, _mm_loadu_ps(mags + j + 8));
        m3 = _mm_max_ps(m3, _mm_loadu_ps(mags + j + 12));
      }
      mx = hmax4(_mm_max_ps(_mm_max_ps(m0, m1), _mm_max_ps(m2, m3)));
    }
    // First position holding mx: hit masks of 16 values at a time, one branch per 16.
    const __m128 target = _mm_set1_ps(mx);
    size_t p = 0;
    for (size_t j = 0; j < r; j += 16) {
      const unsigned hit =
          static_cast<unsigned>(_mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(mags + j), target))) |
          static_cast<unsigned>(_mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(mags + j + 4), target))) << 4 |
          static_cast<unsigned>(_mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(mags + j + 8), target))) << 8 |
          static_cast<unsigned>(_mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(mags + j + 12), target))) << 12;
      if (hit != 0) {
        p = j + static_cast<size_t>(__builtin_ctz(hit));
        break;
      }
    }
    chosen[s] = static_cast<uint16_t>(p);
    mags[p] = -1.0f;
  }
  for (int a = 0; a < k; ++a) {  // ascending positions
    const uint16_t v = chosen[a];
    int b = a;
    for (; b > 0 && pos[b - 1] > v; --b) pos[b] = pos[b - 1];
    pos[b] = v;
  }
  return k;
}
#endif

// The reference selection of one group (see selectGroupSpikes); mags: scratch of r floats.
int selectGroupSpikesReference(const float* x, size_t r, int k, float* copy, float* mags, uint16_t* pos) {
  int m = -1;
#if defined(__SSE2__)
  if (r % 16 == 0 && r > static_cast<size_t>(k)) m = selectSpikesFinite(x, r, k, copy, mags, pos);
#endif
  if (m < 0) {  // NaN/Inf in the group, a short or odd tail, or no SSE2
    std::memcpy(copy, x, r * sizeof(float));
    m = selectSpikes(copy, r, k, pos);
  }
  return m;
}

Config withoutSpikes(const Config& cfg) {
  Config c = cfg;
  c.spikes = 0;
  return c;
}

}  // namespace

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

int selectGroupSpikes(Isa isa, const float* x, size_t r, int k, float* copy, uint16_t* pos) {
  const int m = isa != Isa::Scalar ? selectGroupSpikesFiniteAvx2(x, r, k, copy, pos) : -1;
  if (m >= 0) return m;
  float mags[kMaxGroup];
  return selectGroupSpikesReference(x, r, k, copy, mags, pos);
}

void quantizeWithSpikes(Isa isa, const Kernels& kern, const float* x, size_t n, const Config& cfg, uint8_t* out) {
  const Config base = withoutSpikes(cfg);
  // The AVX2 selection for the ISAs that have AVX2 (Avx512 CPUs do); the SSE2 reference for Scalar.
  const bool avx2 = isa != Isa::Scalar;
  // Isa::Avx2 encodes whole chunks of full groups with its kernel's group encoder straight into `out` (no
  // staging of metadata and codes), in small chunks, and prefetches the next chunk's input while encoding.
  const bool direct = isa == Isa::Avx2;
  const size_t g = static_cast<size_t>(cfg.group_size);
  const int k = cfg.spikes;
  const size_t kk = static_cast<size_t>(k);
  const size_t groups = numGroups(n, g);
  const size_t cb = fullGroupCodeBytes(g, cfg.bits);
  uint8_t* codes = out + groups * sizeof(GroupMeta);
  uint8_t* idx_out = out + encodedSize(n, base);
  uint8_t* val_out = idx_out + groups * kk * sizeof(uint16_t);

  const size_t chunk_groups = std::max<size_t>(1, (direct ? kDirectChunkValues : kChunkValues) / g);
  // Scratch on the stack (~37 KiB, bounded by the chunk: no allocation, nothing kept between calls).
  // 64-byte aligned copies: the vector loads and stores of the selection and the kernels never cross a line.
  static_assert(static_cast<size_t>(kMaxGroup) <= kChunkValues, "a chunk holds at least one group");
  constexpr size_t kMaxChunkEncoded = kMaxChunkGroups * sizeof(GroupMeta) + kChunkValues;  // bits <= 8
  alignas(64) float tmp[kChunkValues];
  alignas(64) float mags_buf[kMaxGroup];
  alignas(64) uint8_t enc[kMaxChunkEncoded];
  if (chunk_groups * g > kChunkValues || encodedSize(chunk_groups * g, base) > kMaxChunkEncoded)
    throw Error("quantizeWithSpikes: a chunk outgrows its stack scratch (internal error)");
  // A chunk's spike entries, written to the spike section with one copy per array.
  uint16_t pos_chunk[kMaxChunkGroups * kMaxSpikes];
  float val_chunk[kMaxChunkGroups * kMaxSpikes];

  for (size_t q0 = 0; q0 < groups; q0 += chunk_groups) {
    const size_t ng = std::min(chunk_groups, groups - q0);
    const size_t begin = q0 * g, len = std::min(ng * g, n - begin);
    for (size_t j = 0; j < ng; ++j) {
      float* xg = tmp + j * g;
      const size_t r = std::min(g, len - j * g);
      uint16_t* pos = pos_chunk + j * kk;
      float* val = val_chunk + j * kk;
      int m = avx2 ? selectGroupSpikesFiniteAvx2(x + begin + j * g, r, k, xg, pos) : -1;
      if (m < 0) m = selectGroupSpikesReference(x + begin + j * g, r, k, xg, mags_buf, pos);
      for (int e = 0; e < m; ++e) val[e] = xg[pos[e]];
      for (int e = m; e < k; ++e) {
        pos[e] = kNoSpike;
        val[e] = 0.0f;
      }
      replaceSpikes(xg, r, pos, m, xg);
    }
    std::memcpy(idx_out + q0 * kk * sizeof(uint16_t), pos_chunk, ng * kk * sizeof(uint16_t));
    std::memcpy(val_out + q0 * kk * sizeof(float), val_chunk, ng * kk * sizeof(float));
    if (direct && len == ng * g) {
      quantizeFullGroupsAvx2(tmp, ng, base, out + q0 * sizeof(GroupMeta), codes + q0 * cb,
                             reinterpret_cast<uintptr_t>(x + begin) + len * sizeof(float));
      continue;
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
  // The accumulator's values at the spike positions: on the stack up to kSavedOnStack entries (decode-sized
  // runs), else allocated for this call (one allocation, small next to decoding the run's groups).
  constexpr size_t kSavedOnStack = 1024;
  float saved_stack[kSavedOnStack];
  std::unique_ptr<float[]> saved_heap(entries > kSavedOnStack ? new float[entries] : nullptr);
  float* saved = entries > kSavedOnStack ? saved_heap.get() : saved_stack;
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
