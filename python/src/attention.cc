// Attention for Python: block attention, the lse merge, sequence-parallel attention, the cost model
// (flashring/attention.h, flashring/sp_attention.h, flashring/costmodel.h).
//
// Arrays are BSHD as in flash-attention: q / out [batch, seq, heads, head_dim], k / v [batch, seq, kv_heads,
// head_dim]. lse arrays here are flash-attention's [batch, heads, seq] float32 (softmax_lse); the C++ API's
// [batch, seq, heads] is transposed on the way in and out. Inputs are float32 (read in place) or float16 /
// bfloat16 (converted to fp32); out is written in its own dtype. Every shape problem is an InvalidArgument
// naming the argument. The GIL is released around every kernel and collective.
#include "flashring/attention.h"

#include <fmt/format.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "flashring/costmodel.h"
#include "flashring/error.h"
#include "flashring/sp_attention.h"

namespace flashring::py {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

std::string shapeStr(const FloatArray& a) {
  std::string s = "(";
  for (size_t i = 0; i < a.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(a.shape[i]);
  return s + (a.shape.size() == 1 ? ",)" : ")");
}

int toInt(int64_t v, const char* name, const char* what) {
  if (v > std::numeric_limits<int>::max()) throw InvalidArgument(fmt::format("{}: {} {} is too large", name, what, v));
  return static_cast<int>(v);
}

void needDims(const FloatArray& a, const char* name, size_t ndim, const char* layout) {
  if (a.shape.size() != ndim)
    throw InvalidArgument(fmt::format("{}: expected {} dimensions {}, got shape {}", name, ndim, layout, shapeStr(a)));
}

// The shapes of q, k, v (BSHD, k and v alike, heads a multiple of kv_heads); `same_len` also requires
// k's sequence length to be q's (a sequence-parallel shard).
void checkQkv(const FloatArray& q, const FloatArray& k, const FloatArray& v, bool same_len) {
  needDims(q, "q", 4, "[batch, seq_q, heads, head_dim]");
  needDims(k, "k", 4, "[batch, seq_k, kv_heads, head_dim]");
  needDims(v, "v", 4, "[batch, seq_k, kv_heads, head_dim]");
  if (q.dim(0) < 1 || q.dim(2) < 1 || q.dim(3) < 1)
    throw InvalidArgument(fmt::format("q: batch, heads and head_dim must be positive, got shape {}", shapeStr(q)));
  if (k.dim(2) < 1) throw InvalidArgument(fmt::format("k: kv_heads must be positive, got shape {}", shapeStr(k)));
  if (k.dim(0) != q.dim(0))
    throw InvalidArgument(fmt::format("k: batch {} differs from q's {} (shapes k {}, q {})", k.dim(0), q.dim(0),
                                      shapeStr(k), shapeStr(q)));
  if (k.dim(3) != q.dim(3))
    throw InvalidArgument(fmt::format("k: head_dim {} differs from q's {} (shapes k {}, q {})", k.dim(3), q.dim(3),
                                      shapeStr(k), shapeStr(q)));
  if (v.shape != k.shape)
    throw InvalidArgument(fmt::format("v: shape {} differs from k's {}", shapeStr(v), shapeStr(k)));
  if (q.dim(2) % k.dim(2) != 0)
    throw InvalidArgument(
        fmt::format("k: kv_heads {} must divide q's heads {} (GQA / MQA groups)", k.dim(2), q.dim(2)));
  if (same_len && k.dim(1) != q.dim(1))
    throw InvalidArgument(fmt::format("k: {} local tokens, but q has {} (shapes k {}, q {})", k.dim(1), q.dim(1),
                                      shapeStr(k), shapeStr(q)));
  toInt(q.dim(0), "q", "batch");
  toInt(q.dim(1), "q", "sequence length");
  toInt(k.dim(1), "k", "sequence length");
  toInt(q.dim(2), "q", "heads");
  toInt(q.dim(3), "q", "head_dim");
}

void checkOut(const FloatArray& out, const FloatArray& q) {
  if (out.shape != q.shape)
    throw InvalidArgument(fmt::format("out: shape {} must equal q's {}", shapeStr(out), shapeStr(q)));
}

// lse in flash-attention's layout [batch, heads, seq], float32.
void checkLse(const FloatArray& lse, const char* name, int64_t batch, int64_t heads, int64_t seq) {
  if (lse.dtype != DType::F32)
    throw InvalidArgument(fmt::format("{}: must be float32 (log-sum-exp values), got {}", name, dtypeName(lse.dtype)));
  const std::vector<int64_t> want{batch, heads, seq};
  if (lse.shape != want)
    throw InvalidArgument(
        fmt::format("{}: shape {} must be [batch, heads, seq] = ({}, {}, {})", name, shapeStr(lse), batch, heads, seq));
}

// An fp32 buffer for a write-only output: the array itself when it is fp32, else scratch (not converted).
float* outF32(const FloatArray& a, std::vector<float>& scratch) {
  if (a.dtype == DType::F32 && a.count > 0) return static_cast<float*>(a.data);
  scratch.resize(std::max<size_t>(a.count, 1));
  return scratch.data();
}

// [B, S, H] <-> [B, H, S].
void bshToBhs(const float* src, float* dst, size_t B, size_t S, size_t H) {
  for (size_t b = 0; b < B; ++b)
    for (size_t s = 0; s < S; ++s)
      for (size_t h = 0; h < H; ++h) dst[(b * H + h) * S + s] = src[(b * S + s) * H + h];
}
void bhsToBsh(const float* src, float* dst, size_t B, size_t S, size_t H) {
  for (size_t b = 0; b < B; ++b)
    for (size_t h = 0; h < H; ++h)
      for (size_t s = 0; s < S; ++s) dst[(b * S + s) * H + h] = src[(b * H + h) * S + s];
}

float checkScale(double scale) {
  if (!std::isfinite(scale) || scale < 0)
    throw InvalidArgument(fmt::format("scale: must be a finite positive number (0: 1/sqrt(head_dim)), got {}", scale));
  return static_cast<float>(scale);
}

SeqLayout layoutFromName(const std::string& name) {
  if (name == "zigzag") return SeqLayout::Zigzag;
  if (name == "contiguous") return SeqLayout::Contiguous;
  throw InvalidArgument(fmt::format("layout: '{}' is not 'zigzag' or 'contiguous'", name));
}
const char* layoutName(SeqLayout l) { return l == SeqLayout::Zigzag ? "zigzag" : "contiguous"; }

SpScheme schemeArg(const std::string& name) {
  try {
    return spSchemeFromName(name);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(std::string("scheme: ") + e.what());
  }
}

using BlockFn = void (*)(const float*, const float*, const float*, const AttentionShape&, const BlockAttentionOptions&,
                         float*, float*);

// block_attention / block_attention_reference: lse [batch, heads, seq_q] float32.
void blockAttentionBinding(BlockFn fn, nb::ndarray<nb::ro> q, nb::ndarray<nb::ro> k, nb::ndarray<nb::ro> v,
                           nb::ndarray<> out, nb::ndarray<> lse, bool causal, int64_t q_offset, int64_t k_offset,
                           double scale) {
  const FloatArray qa = floatArray(q, "q"), ka = floatArray(k, "k"), va = floatArray(v, "v");
  const FloatArray oa = floatArray(out, "out"), la = floatArray(lse, "lse");
  checkQkv(qa, ka, va, false);
  checkOut(oa, qa);
  checkLse(la, "lse", qa.dim(0), qa.dim(2), qa.dim(1));
  const AttentionShape shape{static_cast<int>(qa.dim(0)), static_cast<int>(qa.dim(1)), static_cast<int>(ka.dim(1)),
                             static_cast<int>(qa.dim(2)), static_cast<int>(ka.dim(2)), static_cast<int>(qa.dim(3))};
  BlockAttentionOptions o;
  o.causal = causal;
  o.q_offset = q_offset;
  o.k_offset = k_offset;
  o.scale = checkScale(scale);
  if (qa.count == 0) return;  // no queries
  nb::gil_scoped_release release;
  const size_t B = static_cast<size_t>(shape.batch), S = static_cast<size_t>(shape.q_len),
               H = static_cast<size_t>(shape.heads);
  std::vector<float> sq, sk, sv, so, sl(B * S * H);
  float* o_ptr = outF32(oa, so);
  if (shape.kv_len == 0) {  // no keys: every row sees nothing (attention.h: out 0, lse -inf)
    std::fill(o_ptr, o_ptr + oa.count, 0.f);
    std::fill(sl.begin(), sl.end(), kNegInf);
  } else {
    fn(toF32(qa, sq).data(), toF32(ka, sk).data(), toF32(va, sv).data(), shape, o, o_ptr, sl.data());
  }
  fromF32({o_ptr, oa.count}, oa);
  bshToBhs(sl.data(), static_cast<float*>(la.data), B, S, H);
}

}  // namespace

void bindAttention(nb::module_& m) {
  m.def(
      "block_attention",
      [](nb::ndarray<nb::ro> q, nb::ndarray<nb::ro> k, nb::ndarray<nb::ro> v, nb::ndarray<> out, nb::ndarray<> lse,
         bool causal, int64_t q_offset, int64_t k_offset, double scale) {
        blockAttentionBinding(&blockAttention, q, k, v, out, lse, causal, q_offset, k_offset, scale);
      },
      nb::arg("q").noconvert(), nb::arg("k").noconvert(), nb::arg("v").noconvert(), nb::arg("out").noconvert(),
      nb::arg("lse").noconvert(), nb::arg("causal"), nb::arg("q_offset"), nb::arg("k_offset"), nb::arg("scale"),
      "Exact attention of q [b, s_q, h, d] over k, v [b, s_k, kvh, d] into out (q's shape) and lse [b, h, s_q] "
      "float32 (flashring/attention.h). scale 0: 1/sqrt(d).");
  m.def(
      "block_attention_reference",
      [](nb::ndarray<nb::ro> q, nb::ndarray<nb::ro> k, nb::ndarray<nb::ro> v, nb::ndarray<> out, nb::ndarray<> lse,
         bool causal, int64_t q_offset, int64_t k_offset, double scale) {
        blockAttentionBinding(&blockAttentionReference, q, k, v, out, lse, causal, q_offset, k_offset, scale);
      },
      nb::arg("q").noconvert(), nb::arg("k").noconvert(), nb::arg("v").noconvert(), nb::arg("out").noconvert(),
      nb::arg("lse").noconvert(), nb::arg("causal"), nb::arg("q_offset"), nb::arg("k_offset"), nb::arg("scale"),
      "block_attention with the scalar fp64 reference kernel (slow; for tests).");

  m.def(
      "merge_attention",
      [](nb::ndarray<> out, nb::ndarray<> lse, nb::ndarray<nb::ro> out_b, nb::ndarray<nb::ro> lse_b) {
        const FloatArray oa = floatArray(out, "out"), la = floatArray(lse, "lse");
        const FloatArray ob = floatArray(out_b, "out_b"), lb = floatArray(lse_b, "lse_b");
        needDims(oa, "out", 4, "[batch, seq, heads, head_dim]");
        if (ob.shape != oa.shape)
          throw InvalidArgument(fmt::format("out_b: shape {} must equal out's {}", shapeStr(ob), shapeStr(oa)));
        checkLse(la, "lse", oa.dim(0), oa.dim(2), oa.dim(1));
        checkLse(lb, "lse_b", oa.dim(0), oa.dim(2), oa.dim(1));
        if (oa.count > 0 && (oa.data == ob.data || la.data == lb.data))
          throw InvalidArgument("out_b: must not be the same memory as out (nor lse_b as lse)");
        const size_t B = static_cast<size_t>(oa.dim(0)), S = static_cast<size_t>(oa.dim(1)),
                     H = static_cast<size_t>(oa.dim(2));
        const int heads = toInt(oa.dim(2), "out", "heads"), dim = toInt(oa.dim(3), "out", "head_dim");
        if (oa.count == 0) return;
        nb::gil_scoped_release release;
        std::vector<float> so, sb, la_bsh(B * S * H), lb_bsh(B * S * H);
        bhsToBsh(static_cast<const float*>(la.data), la_bsh.data(), B, S, H);
        bhsToBsh(static_cast<const float*>(lb.data), lb_bsh.data(), B, S, H);
        const std::span<float> o = toF32(oa, so);
        mergeAttention(o.data(), la_bsh.data(), toF32(ob, sb).data(), lb_bsh.data(), static_cast<int64_t>(B * S), heads,
                       dim);
        fromF32(o, oa);
        bshToBhs(la_bsh.data(), static_cast<float*>(la.data), B, S, H);
      },
      nb::arg("out").noconvert(), nb::arg("lse").noconvert(), nb::arg("out_b").noconvert(),
      nb::arg("lse_b").noconvert(),
      "Merges the partial result (out_b, lse_b) into (out, lse) in place; out [b, s, h, d], lse [b, h, s] float32.");

  m.def(
      "local_length",
      [](int64_t seq_len, int ranks, int rank, const std::string& layout) {
        if (seq_len < 0) throw InvalidArgument(fmt::format("seq_len: must be >= 0, got {}", seq_len));
        if (ranks < 1) throw InvalidArgument(fmt::format("world: must be at least 1, got {}", ranks));
        if (rank < 0 || rank >= ranks) throw InvalidArgument(fmt::format("rank: {} is not in [0, {})", rank, ranks));
        return localLength(seq_len, ranks, rank, layoutFromName(layout));
      },
      nb::arg("seq_len"), nb::arg("ranks"), nb::arg("rank"), nb::arg("layout"));
  m.def(
      "local_segments",
      [](int64_t seq_len, int ranks, int rank, const std::string& layout) {
        if (seq_len < 0) throw InvalidArgument(fmt::format("seq_len: must be >= 0, got {}", seq_len));
        if (ranks < 1) throw InvalidArgument(fmt::format("world: must be at least 1, got {}", ranks));
        if (rank < 0 || rank >= ranks) throw InvalidArgument(fmt::format("rank: {} is not in [0, {})", rank, ranks));
        std::vector<std::pair<int64_t, int64_t>> out;
        for (const Segment& s : localSegments(seq_len, ranks, rank, layoutFromName(layout)))
          out.emplace_back(s.global_offset, s.length);
        return out;
      },
      nb::arg("seq_len"), nb::arg("ranks"), nb::arg("rank"), nb::arg("layout"),
      "The (global_offset, length) segments of the sequence that `rank` holds, in local order.");

  nb::class_<SpAttentionStats>(m, "SpAttentionStats", "What one sp_attention call did on this rank.")
      .def_prop_ro("scheme", [](const SpAttentionStats& s) { return spSchemeName(s.scheme); })
      .def_ro("compute_s", &SpAttentionStats::compute_s)
      .def_ro("comm_s", &SpAttentionStats::comm_s)
      .def_ro("bytes_fwd", &SpAttentionStats::bytes_fwd)
      .def_ro("bytes_bwd", &SpAttentionStats::bytes_bwd)
      .def_ro("predicted_s", &SpAttentionStats::predicted_s)
      .def_ro("step_compute_s", &SpAttentionStats::step_compute_s)
      .def_ro("step_comm_s", &SpAttentionStats::step_comm_s)
      .def("__repr__", [](const SpAttentionStats& s) {
        return fmt::format(
            "SpAttentionStats(scheme='{}', compute_s={:.6f}, comm_s={:.6f}, bytes_fwd={}, bytes_bwd={}, "
            "predicted_s={:.6f})",
            spSchemeName(s.scheme), s.compute_s, s.comm_s, s.bytes_fwd, s.bytes_bwd, s.predicted_s);
      });

  m.def(
      "sp_attention",
      [](Comm& c, nb::ndarray<nb::ro> q, nb::ndarray<nb::ro> k, nb::ndarray<nb::ro> v, nb::ndarray<> out,
         nb::ndarray<> lse, int64_t seq_len, bool causal, double scale, const std::string& scheme,
         const std::string& layout, const CostModel* model) {
        Communicator& comm = c.get();
        const FloatArray qa = floatArray(q, "q"), ka = floatArray(k, "k"), va = floatArray(v, "v");
        const FloatArray oa = floatArray(out, "out");
        checkQkv(qa, ka, va, true);
        checkOut(oa, qa);
        const bool want_lse = lse.is_valid();
        FloatArray la;
        if (want_lse) {
          la = floatArray(lse, "lse");
          checkLse(la, "lse", qa.dim(0), qa.dim(2), qa.dim(1));
        }
        SpAttentionOptions o;
        o.scheme = schemeArg(scheme);
        o.layout = layoutFromName(layout);
        o.causal = causal;
        o.scale = checkScale(scale);
        o.model = model;
        if (seq_len < 1) throw InvalidArgument(fmt::format("seq_len: must be positive, got {}", seq_len));
        const int N = comm.size(), r = comm.rank();
        const int64_t L = localLength(seq_len, N, r, o.layout);
        if (qa.dim(1) != L)
          throw InvalidArgument(fmt::format(
              "q: {} local tokens on rank {}, but the {} layout of seq_len {} over {} ranks gives rank {} {} tokens "
              "(shard with zigzag_shard / local_segments)",
              qa.dim(1), r, layoutName(o.layout), seq_len, N, r, L));
        const SpShape shape{static_cast<int>(qa.dim(0)), seq_len, static_cast<int>(qa.dim(2)),
                            static_cast<int>(ka.dim(2)), static_cast<int>(qa.dim(3))};
        SpAttentionStats stats;
        {
          nb::gil_scoped_release release;
          const size_t B = static_cast<size_t>(shape.batch), H = static_cast<size_t>(shape.heads);
          std::vector<float> sq, sk, sv, so, sl(want_lse ? std::max<size_t>(B * static_cast<size_t>(L) * H, 1) : 0);
          float* o_ptr = outF32(oa, so);
          spAttention(comm, toF32(qa, sq).data(), toF32(ka, sk).data(), toF32(va, sv).data(), shape, o,
                      oa.count > 0 ? o_ptr : nullptr, want_lse ? sl.data() : nullptr, &stats);
          fromF32({o_ptr, oa.count}, oa);
          if (want_lse) bshToBhs(sl.data(), static_cast<float*>(la.data), B, static_cast<size_t>(L), H);
        }
        return stats;
      },
      nb::arg("comm"), nb::arg("q").noconvert(), nb::arg("k").noconvert(), nb::arg("v").noconvert(),
      nb::arg("out").noconvert(), nb::arg("lse").noconvert().none(), nb::arg("seq_len"), nb::arg("causal"),
      nb::arg("scale"), nb::arg("scheme"), nb::arg("layout"), nb::arg("model").none(),
      "Sequence-parallel attention of this rank's shard (collective; flashring/sp_attention.h). lse: None or "
      "[b, h, local_len] float32, None on every rank or on none.");

  nb::class_<CostModel>(m, "CostModel", "Cost model of the sequence-parallel schemes (flashring/costmodel.h).")
      .def(nb::init<>())
      .def_static(
          "calibrate",
          [](Comm& c, const std::string& topology) {
            Communicator& comm = c.get();
            nb::gil_scoped_release release;
            return CostModel::calibrate(comm, topology);
          },
          nb::arg("comm"), nb::arg("topology") = "")
      .def("to_json", &CostModel::toJson)
      .def_static("from_json", &CostModel::fromJson, nb::arg("json"))
      .def_prop_rw(
          "bandwidth_Bps", [](const CostModel& cm) { return cm.params().bandwidth_Bps; },
          [](CostModel& cm, double x) {
            if (!(x > 0) || !std::isfinite(x))
              throw InvalidArgument(fmt::format("bandwidth_Bps: must be positive, got {}", x));
            cm.params().bandwidth_Bps = x;
          })
      .def_prop_rw(
          "latency_s", [](const CostModel& cm) { return cm.params().latency_s; },
          [](CostModel& cm, double x) {
            if (!(x >= 0) || !std::isfinite(x))
              throw InvalidArgument(fmt::format("latency_s: must be >= 0, got {}", x));
            cm.params().latency_s = x;
          })
      .def_prop_rw(
          "kernel_flops", [](const CostModel& cm) { return cm.params().kernel_flops; },
          [](CostModel& cm, double x) {
            if (!(x > 0) || !std::isfinite(x))
              throw InvalidArgument(fmt::format("kernel_flops: must be positive, got {}", x));
            cm.params().kernel_flops = x;
          })
      .def_prop_rw(
          "topology", [](const CostModel& cm) { return std::string(topologyName(cm.params().topology)); },
          [](CostModel& cm, const std::string& t) {
            if (t != "star" && t != "mesh")
              throw InvalidArgument(fmt::format("topology: '{}' is not 'star' or 'mesh'", t));
            cm.params().topology = t == "star" ? Topology::Star : Topology::Mesh;
          })
      .def(
          "predict",
          [](const CostModel& cm, const std::string& scheme, int batch, int64_t seq_len, int heads, int kv_heads,
             int head_dim, int ranks, bool causal, const std::string& layout) {
            const SpScheme s = schemeArg(scheme);
            if (batch < 1 || seq_len < 1 || heads < 1 || kv_heads < 1 || head_dim < 1 || ranks < 1)
              throw InvalidArgument("predict: batch, seq_len, heads, kv_heads, head_dim and ranks must be positive");
            SpAttentionOptions o;
            o.causal = causal;
            o.layout = layoutFromName(layout);
            return cm.predict(s, {batch, seq_len, heads, kv_heads, head_dim}, ranks, o);
          },
          nb::arg("scheme"), nb::arg("batch"), nb::arg("seq_len"), nb::arg("heads"), nb::arg("kv_heads"),
          nb::arg("head_dim"), nb::arg("ranks"), nb::arg("causal"), nb::arg("layout"))
      .def(
          "choose",
          [](const CostModel& cm, int batch, int64_t seq_len, int heads, int kv_heads, int head_dim, int ranks,
             bool causal, const std::string& layout) {
            if (batch < 1 || seq_len < 1 || heads < 1 || kv_heads < 1 || head_dim < 1 || ranks < 1)
              throw InvalidArgument("choose: batch, seq_len, heads, kv_heads, head_dim and ranks must be positive");
            SpAttentionOptions o;
            o.causal = causal;
            o.layout = layoutFromName(layout);
            return spSchemeName(cm.choose({batch, seq_len, heads, kv_heads, head_dim}, ranks, o));
          },
          nb::arg("batch"), nb::arg("seq_len"), nb::arg("heads"), nb::arg("kv_heads"), nb::arg("head_dim"),
          nb::arg("ranks"), nb::arg("causal"), nb::arg("layout"));
}

}  // namespace flashring::py
