// Rotation and clipping around the group codec (quant.h, "Rotation"): the scalar implementation that every
// instruction set calls, so the bytes are the same everywhere by construction.
//
// Encoding works group by group on a stack copy: pick the spikes (the ISA's selection, bit-identical across
// ISAs), zero their positions and rotate the group (full, all-finite groups), or fall back to the plain spike
// rule (tail, NaN/Inf, rotation overflow: then flagged), plan the metadata with the shared per-group rules of
// codec_internal.h, optionally search the clipping ratio, and encode with the shared scalar group encoder.
// Decoding is the shared scalar group decoder, the inverse rotation, then the spikes.
//
// This file is compiled for baseline x86-64 (it may use std:: freely; it is never compiled with -mavx*).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "quant/cpu/codec_internal.h"

namespace flashring::quant::detail {
namespace {

constexpr uint32_t kInfBits = 0x7F800000u;

struct SignTable {
  std::array<float, kMaxGroup> d{};
  SignTable() {
    for (size_t i = 0; i < d.size(); ++i) d[i] = rotationSignOf(static_cast<uint32_t>(i));
  }
};
const SignTable& signs() {
  static const SignTable t;
  return t;
}

// c of quant.h's rotation: the fp32 nearest 1/sqrt(g).
float rotationFactor(size_t g) { return rotationFactorOf(g); }

// Branchless (the compiler vectorizes it): no NaN/Inf among v[0, r).
bool allFinite(const float* v, size_t r) { return allFiniteRef(v, r); }

GroupParams planWithFlag(const float* v, const GroupStats& st, const Config& cfg, bool force_flag) {
  return planFromStats(st, floatBits(v[0]), cfg.bits, cfg.symmetric, force_flag);
}

GroupParams clipSearch(const float* v, size_t r, const GroupParams& p0, float mnf, float mxf, const Config& cfg,
                       bool simd) {
  if (p0.kind != GroupKind::Fast) return p0;
  // Candidate k: c = (16 - k) / 16; a candidate that is not Fast is skipped (evaluated as p0, never chosen).
  GroupParams cand[kClipCandidates];
  bool usable[kClipCandidates];
  cand[0] = p0;
  usable[0] = true;
  for (int k = 1; k < kClipCandidates; ++k) {
    cand[k] = clipCandidate(k, mnf, mxf, cfg.bits, cfg.symmetric);
    usable[k] = cand[k].kind == GroupKind::Fast;
    if (!usable[k]) cand[k] = p0;
  }
  float err[kClipCandidates];
  if (simd) {
    // symmetric: every candidate shares p0's encoding kind (a Fast symmetric group's candidates are symmetric too,
    // and an asymmetric one's asymmetric: paramsFromStats falls back to asymmetric only for huge ranges).
    float s[kClipCandidates], z[kClipCandidates], inv[kClipCandidates];
    bool same_kind = true;
    for (int k = 0; k < kClipCandidates; ++k) {
      s[k] = cand[k].s;
      z[k] = cand[k].z;
      inv[k] = cand[k].inv;
      same_kind = same_kind && cand[k].symmetric == p0.symmetric;
    }
    if (same_kind) {
      clipErrorsAvx2(v, r, cfg.bits, p0.symmetric, s, z, inv, err);
    } else {
      for (int k = 0; k < kClipCandidates; ++k) err[k] = groupErrorRef(v, r, cand[k], cfg.bits);
    }
  } else {
    for (int k = 0; k < kClipCandidates; ++k) err[k] = groupErrorRef(v, r, cand[k], cfg.bits);
  }
  int best = 0;
  for (int k = 1; k < kClipCandidates; ++k)
    if (usable[k] && err[k] < err[best]) best = k;
  return cand[best];
}

// The rotation with the AVX2 twin where the ISA has it.
void rotateGroup(bool simd, float* v, size_t g, bool inverse) {
  if (simd) {
    hadamardRotateAvx2(v, g, inverse, signs().d.data(), rotationFactor(g));
  } else {
    hadamardRotate(v, g, inverse);
  }
}

}  // namespace

float rotationSign(size_t i) { return signs().d[i]; }

void hadamardRotate(float* v, size_t g, bool inverse) { hadamardRotateRef(v, g, inverse); }

void quantizeTransformed(Isa isa, const float* x, size_t n, const Config& cfg, uint8_t* out) {
  const size_t g = static_cast<size_t>(cfg.group_size);
  const int k = cfg.spikes;
  const size_t kk = static_cast<size_t>(k);
  Config base = cfg;
  base.spikes = 0;
  const size_t groups = numGroups(n, g);
  uint8_t* codes = out + groups * sizeof(GroupMeta);
  uint8_t* idx_out = out + encodedSize(n, base);
  uint8_t* val_out = idx_out + groups * kk * sizeof(uint16_t);
  alignas(64) float buf[kMaxGroup];
  uint16_t pos[kMaxSpikes];
  size_t code_off = 0;
  const bool simd = isa != Isa::Scalar;
  if (!simd) {  // the reference: the shared per-group encoder the CUDA kernels run (group_math.h)
    for (size_t q = 0; q < groups; ++q) {
      const size_t r = std::min(g, n - q * g);
      encodeGroupRef(x + q * g, r, g, cfg.bits, cfg.symmetric, k, cfg.rotate, cfg.clip, buf,
                     out + q * sizeof(GroupMeta), codes + groupCodeOffset(q, g, cfg.bits), idx_out + q * kk * 2,
                     val_out + q * kk * 4);
    }
    return;
  }
  for (size_t q = 0; q < groups; ++q) {
    const size_t r = std::min(g, n - q * g);
    const float* xg = x + q * g;
    int m = 0;
    if (k > 0) {
      m = selectGroupSpikes(isa, xg, r, k, buf, pos);
      for (size_t e = 0; e < kk; ++e) {
        const uint16_t p = static_cast<int>(e) < m ? pos[e] : kNoSpike;
        const float val = static_cast<int>(e) < m ? xg[pos[e]] : 0.0f;
        std::memcpy(idx_out + (q * kk + e) * sizeof(uint16_t), &p, sizeof p);
        std::memcpy(val_out + (q * kk + e) * sizeof(float), &val, sizeof val);
      }
    } else {
      std::memcpy(buf, xg, r * sizeof(float));
    }
    bool rotated = false, force_flag = false;
    const bool finite = allFinite(xg, r);
    if (cfg.rotate && r == g && finite) {
      for (int e = 0; e < m; ++e) buf[pos[e]] = 0.0f;
      rotateGroup(simd, buf, g, false);
      if (allFinite(buf, g)) {
        rotated = true;
      } else {  // |x| near FLT_MAX: encode the group as it is, flagged so that the decoder does not rotate it
        std::memcpy(buf, xg, r * sizeof(float));
        force_flag = true;
      }
    }
    if (!rotated) replaceSpikes(xg, r, pos, m, buf);  // the plain spike rule
    // Full groups of finite values (rotated or not) on an AVX2 ISA: the vector steps; the rest: the scalar ones.
    // (Unrotated, buf holds x with finite spike replacements: finite exactly when x is.)
    const bool simd_group = simd && r == g && !force_flag && (rotated || finite);
    GroupParams p;
    float mn = 0, mx = 0;
    if (simd_group) {
      bool constant = false;
      minMaxAvx2(buf, r, &mn, &mx, &constant);
      p = constant ? constantParams(floatBits(buf[0])) : paramsFromStats(mn, mx, false, cfg.bits, cfg.symmetric);
    } else {
      const GroupStats st = scalarStats(buf, r);
      mn = st.mn;
      mx = st.mx;
      p = planWithFlag(buf, st, cfg, force_flag);
    }
    if (cfg.clip) p = clipSearch(buf, r, p, mn, mx, cfg, simd_group);
    storeMeta(out + q * sizeof(GroupMeta), p.meta);
    const size_t cb = r == g ? fullGroupCodeBytes(g, cfg.bits) : tailCodeBytes(r, cfg.bits);
    if (simd_group && p.kind == GroupKind::Fast) {
      encodeFastGroupAvx2(buf, r, cfg.bits, p.symmetric, p.z, p.inv, codes + code_off);
    } else {
      encodeGroupScalar(buf, r, p, cfg.bits, codes + code_off, cb);
    }
    code_off += cb;
  }
}

void dequantizeTransformed(Isa isa, const uint8_t* in, size_t n, const Config& cfg, float* out, bool accumulate) {
  const bool simd = isa != Isa::Scalar;
  const size_t g = static_cast<size_t>(cfg.group_size);
  const size_t kk = static_cast<size_t>(cfg.spikes);
  Config base = cfg;
  base.spikes = 0;
  const size_t groups = numGroups(n, g);
  const uint8_t* codes = in + groups * sizeof(GroupMeta);
  const uint8_t* idx = in + encodedSize(n, base);
  const uint8_t* val = idx + groups * kk * sizeof(uint16_t);
  checkSpikeIndices(idx, n, cfg);  // the whole section first, so that a corrupt run leaves `out` untouched
  alignas(64) float buf[kMaxGroup];
  if (!simd) {  // the reference: the shared per-group decoder the CUDA kernels run (group_math.h)
    for (size_t q = 0; q < groups; ++q) {
      const size_t r = std::min(g, n - q * g);
      decodeGroupRef(in + q * sizeof(GroupMeta), codes + groupCodeOffset(q, g, cfg.bits), r, g, cfg.bits, cfg.spikes,
                     cfg.rotate, idx + q * kk * 2, val + q * kk * 4, buf, out + q * g, accumulate);
    }
    return;
  }
  size_t code_off = 0;
  for (size_t q = 0; q < groups; ++q) {
    const size_t r = std::min(g, n - q * g);
    const GroupMeta meta = loadMeta(in + q * sizeof(GroupMeta));
    const bool fast = meta.scale != 0 && (meta.scale & kScaleFlag) == 0;
    if (simd && r == g && fast) {
      decodeFastGroupAvx2(codes + code_off, g, cfg.bits, bf16Value(meta.scale), bf16Value(meta.zero), buf);
    } else {
      decodeGroupScalar<false>(meta, codes + code_off, r, cfg.bits, buf);
    }
    code_off += r == g ? fullGroupCodeBytes(g, cfg.bits) : tailCodeBytes(r, cfg.bits);
    if (r == g && (meta.scale & kScaleFlag) == 0) rotateGroup(simd, buf, g, true);
    for (size_t e = 0; e < kk; ++e) {
      uint16_t p;
      std::memcpy(&p, idx + (q * kk + e) * sizeof p, sizeof p);
      if (p != kNoSpike) std::memcpy(buf + p, val + (q * kk + e) * sizeof(float), sizeof(float));
    }
    float* o = out + q * g;
    if (accumulate) {
      for (size_t i = 0; i < r; ++i) o[i] = o[i] + buf[i];
    } else {
      std::memcpy(o, buf, r * sizeof(float));
    }
  }
}

}  // namespace flashring::quant::detail
