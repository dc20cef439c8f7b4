// LLaMA forward pass with tensor and sequence parallelism (see include/flashring/llama.h).
#include "flashring/llama.h"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "collectives/common.h"
#include "comm/tags.h"
#include "flashring/attention.h"
#include "flashring/costmodel.h"
#include "flashring/gguf.h"
#include "flashring/group_comm.h"

namespace flashring {

// ---------------------------------------------------------------------------------------------------------
// Configuration

LlamaConfig LlamaConfig::fromGguf(const gguf::File& f) {
  LlamaConfig c;
  c.arch = f.getString("general.architecture");
  // Architectures with LLaMA's block structure and tensor names.
  if (c.arch != "llama" && c.arch != "mistral") {
    throw InvalidArgument(
        fmt::format("{}: general.architecture is '{}'; flashring runs LLaMA-architecture models "
                    "('llama', 'mistral')",
                    f.path(), c.arch));
  }
  const std::string a = c.arch + ".";
  c.name = f.getString("general.name", "");
  auto positive = [&](const std::string& key, int64_t v) {
    if (v <= 0 || v > (int64_t{1} << 30))
      throw gguf::FormatError(fmt::format("{}: metadata {} = {} is not a sensible positive size", f.path(), key, v));
    return static_cast<int>(v);
  };
  c.n_layer = positive(a + "block_count", f.getInt(a + "block_count"));
  c.n_embd = positive(a + "embedding_length", f.getInt(a + "embedding_length"));
  c.n_head = positive(a + "attention.head_count", f.getInt(a + "attention.head_count"));
  c.n_head_kv = positive(a + "attention.head_count_kv", f.getInt(a + "attention.head_count_kv", c.n_head));
  c.n_ff = positive(a + "feed_forward_length", f.getInt(a + "feed_forward_length"));
  if (c.n_embd % c.n_head != 0)
    throw gguf::FormatError(fmt::format("{}: {}embedding_length {} is not a multiple of the head count {}", f.path(), a,
                                        c.n_embd, c.n_head));
  c.head_dim = positive(a + "attention.key_length", f.getInt(a + "attention.key_length", c.n_embd / c.n_head));
  if (c.head_dim * c.n_head != c.n_embd)
    throw InvalidArgument(fmt::format("{}: head_dim {} x heads {} != embedding_length {} is not supported", f.path(),
                                      c.head_dim, c.n_head, c.n_embd));
  if (c.n_head % c.n_head_kv != 0)
    throw gguf::FormatError(
        fmt::format("{}: head_count {} is not a multiple of head_count_kv {}", f.path(), c.n_head, c.n_head_kv));
  c.rope_dim = positive(a + "rope.dimension_count", f.getInt(a + "rope.dimension_count", c.head_dim));
  if (c.rope_dim > c.head_dim || c.rope_dim % 2 != 0)
    throw gguf::FormatError(fmt::format("{}: rope.dimension_count {} must be even and at most head_dim {}", f.path(),
                                        c.rope_dim, c.head_dim));
  c.n_ctx_train = f.getInt(a + "context_length", 0);
  c.rope_base = static_cast<float>(f.getFloat(a + "rope.freq_base", 10000.0));
  c.rms_eps = static_cast<float>(f.getFloat(a + "attention.layer_norm_rms_epsilon", 1e-5));
  if (!(c.rope_base > 0.f) || !(c.rms_eps > 0.f) || !std::isfinite(c.rope_base) || !std::isfinite(c.rms_eps))
    throw gguf::FormatError(fmt::format("{}: rope.freq_base {} and layer_norm_rms_epsilon {} must be positive",
                                        f.path(), c.rope_base, c.rms_eps));
  if (f.has(a + "rope.scaling.type") && f.getString(a + "rope.scaling.type") != "none")
    throw InvalidArgument(
        fmt::format("{}: rope scaling '{}' is not supported", f.path(), f.getString(a + "rope.scaling.type")));

  const gguf::TensorInfo& emb = f.tensor("token_embd.weight");
  if (emb.dims.size() != 2 || emb.dims[0] != c.n_embd)
    throw gguf::FormatError(fmt::format("{}: token_embd.weight must be [{}, n_vocab]", f.path(), c.n_embd));
  c.n_vocab = positive("token_embd.weight dims[1]", emb.dims[1]);
  c.tied_output = f.find("output.weight") == nullptr;
  return c;
}

std::string LlamaConfig::describe() const {
  return fmt::format("{} ({}): {} layers, n_embd {}, {} heads / {} KV heads x {}, ff {}, vocab {}, rope base {:g}{}",
                     name.empty() ? arch : name, arch, n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab,
                     rope_base, tied_output ? ", tied output" : "");
}

double LlamaConfig::linearMacsPerToken() const {
  const double d = n_embd, q = double(n_head) * head_dim, kv = double(n_head_kv) * head_dim;
  return n_layer * (d * q + 2 * d * kv + q * d + 3 * d * n_ff);
}

TpShard tpShard(const LlamaConfig& cfg, int tp, int r) {
  if (tp < 1 || r < 0 || r >= tp) throw InvalidArgument(fmt::format("tpShard: rank {} of {}", r, tp));
  if (tp > cfg.n_head)
    throw InvalidArgument(
        fmt::format("tensor-parallel degree {} exceeds the model's {} attention heads", tp, cfg.n_head));
  TpShard s;
  // Heads: the first n_head % tp ranks take one more.
  const int base = cfg.n_head / tp, extra = cfg.n_head % tp;
  s.head_begin = r * base + std::min(r, extra);
  s.heads = base + (r < extra ? 1 : 0);
  const int group = cfg.n_head / cfg.n_head_kv;
  std::vector<int> kv_of;
  for (int h = s.head_begin; h < s.head_begin + s.heads; ++h) kv_of.push_back(h / group);
  std::vector<int> distinct = kv_of;
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  // The GQA kernel needs each local KV head to serve an equal run of consecutive local query heads.
  s.grouped = s.heads % static_cast<int>(distinct.size()) == 0;
  if (s.grouped) {
    const int per = s.heads / static_cast<int>(distinct.size());
    for (int i = 0; i < s.heads; ++i) s.grouped = s.grouped && kv_of[i] == distinct[i / per];
  }
  s.kv_heads = s.grouped ? distinct : kv_of;  // otherwise one KV head per query head (duplicates allowed)
  const auto ff = detail::part(static_cast<size_t>(cfg.n_ff), tp, r);
  s.ff_begin = static_cast<int>(ff.begin);
  s.ff = static_cast<int>(ff.size());
  const auto vb = detail::part(static_cast<size_t>(cfg.n_vocab), tp, r);
  s.vocab_begin = static_cast<int>(vb.begin);
  s.vocab = static_cast<int>(vb.size());
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// Weights

namespace {

const gguf::TensorInfo& matrix(const gguf::File& f, const std::string& name, int64_t in, int64_t out) {
  const gguf::TensorInfo& t = f.tensor(name);
  if (t.dims.size() != 2 || t.dims[0] != in || t.dims[1] != out)
    throw gguf::FormatError(fmt::format("{}: tensor '{}' has dims [{}], expected [{}, {}]", f.path(), name,
                                        fmt::join(t.dims, ", "), in, out));
  return t;
}

std::vector<float> vectorTensor(const gguf::File& f, const std::string& name, int64_t n) {
  const gguf::TensorInfo& t = f.tensor(name);
  if (t.elements() != n)
    throw gguf::FormatError(fmt::format("{}: tensor '{}' has {} values, expected {}", f.path(), name, t.elements(), n));
  return f.dequantize(t);
}

// Rows [begin, begin + count) of a matrix tensor.
std::vector<float> rows(const gguf::File& f, const gguf::TensorInfo& t, int64_t begin, int64_t count) {
  std::vector<float> out(static_cast<size_t>(count * t.dims[0]));
  if (count > 0) f.dequantizeRows(t, begin, count, out.data());
  return out;
}

// Rows listed in `which` (each `block` consecutive rows starting at which[i] * block).
std::vector<float> rowBlocks(const gguf::File& f, const gguf::TensorInfo& t, const std::vector<int>& which,
                             int64_t block) {
  std::vector<float> out(static_cast<size_t>(which.size() * block * t.dims[0]));
  for (size_t i = 0; i < which.size(); ++i)
    f.dequantizeRows(t, which[i] * block, block, out.data() + i * block * t.dims[0]);
  return out;
}

// Columns [begin, begin + count) of a matrix tensor with `out_rows` rows.
std::vector<float> columns(const gguf::File& f, const gguf::TensorInfo& t, int64_t begin, int64_t count) {
  const int64_t in = t.dims[0], out_rows = t.dims[1];
  std::vector<float> row(static_cast<size_t>(in));
  std::vector<float> out(static_cast<size_t>(out_rows * count));
  for (int64_t r = 0; r < out_rows; ++r) {
    f.dequantizeRows(t, r, 1, row.data());
    std::memcpy(out.data() + r * count, row.data() + begin, static_cast<size_t>(count) * sizeof(float));
  }
  return out;
}

}  // namespace

std::shared_ptr<const LlamaWeights> LlamaWeights::load(std::shared_ptr<const gguf::File> file, int tp, int tp_rank) {
  const gguf::File& f = *file;
  auto w = std::make_shared<LlamaWeights>();
  w->cfg = LlamaConfig::fromGguf(f);
  const LlamaConfig& c = w->cfg;
  w->tp = tp;
  w->tp_rank = tp_rank;
  w->shard = tpShard(c, tp, tp_rank);
  const TpShard& s = w->shard;
  const int hd = c.head_dim, D = c.n_embd;
  w->layers.resize(static_cast<size_t>(c.n_layer));
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = fmt::format("blk.{}.", l);
    LlamaLayerWeights& L = w->layers[static_cast<size_t>(l)];
    L.attn_norm = vectorTensor(f, p + "attn_norm.weight", D);
    L.ffn_norm = vectorTensor(f, p + "ffn_norm.weight", D);
    const auto& tq = matrix(f, p + "attn_q.weight", D, int64_t{c.n_head} * hd);
    const auto& tk = matrix(f, p + "attn_k.weight", D, int64_t{c.n_head_kv} * hd);
    const auto& tv = matrix(f, p + "attn_v.weight", D, int64_t{c.n_head_kv} * hd);
    const auto& to = matrix(f, p + "attn_output.weight", int64_t{c.n_head} * hd, D);
    const auto& tg = matrix(f, p + "ffn_gate.weight", D, c.n_ff);
    const auto& tu = matrix(f, p + "ffn_up.weight", D, c.n_ff);
    const auto& td = matrix(f, p + "ffn_down.weight", c.n_ff, D);
    L.wq = rows(f, tq, int64_t{s.head_begin} * hd, int64_t{s.heads} * hd);
    L.wk = rowBlocks(f, tk, s.kv_heads, hd);
    L.wv = rowBlocks(f, tv, s.kv_heads, hd);
    L.wo = columns(f, to, int64_t{s.head_begin} * hd, int64_t{s.heads} * hd);
    L.w_gate = rows(f, tg, s.ff_begin, s.ff);
    L.w_up = rows(f, tu, s.ff_begin, s.ff);
    L.w_down = columns(f, td, s.ff_begin, s.ff);
  }
  w->output_norm = vectorTensor(f, "output_norm.weight", D);
  const auto& tout =
      c.tied_output ? matrix(f, "token_embd.weight", D, c.n_vocab) : matrix(f, "output.weight", D, c.n_vocab);
  w->output = rows(f, tout, s.vocab_begin, s.vocab);
  w->file = std::move(file);
  return w;
}

void LlamaWeights::embed(TokenId token, float* out) const {
  if (token < 0 || token >= cfg.n_vocab)
    throw InvalidArgument(fmt::format("token id {} is outside the vocabulary [0, {})", token, cfg.n_vocab));
  file->dequantizeRows(file->tensor("token_embd.weight"), token, 1, out);
}

size_t LlamaWeights::bytes() const {
  size_t n = output_norm.size() + output.size();
  for (const auto& L : layers)
    n += L.attn_norm.size() + L.ffn_norm.size() + L.wq.size() + L.wk.size() + L.wv.size() + L.wo.size() +
         L.w_gate.size() + L.w_up.size() + L.w_down.size();
  return n * sizeof(float);
}

// ---------------------------------------------------------------------------------------------------------
// Kernels of the forward pass (fp32; the GEMMs in OpenBLAS)

namespace {

// C[m, n] = A[m, k] * W[n, k]^T  (W holds one output per row, as GGUF stores linear layers).
void linear(const float* a, int64_t m, int64_t k, const std::vector<float>& w, int64_t n, float* c) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    std::fill(c, c + m * n, 0.f);
    return;
  }
  if (m == 1) {
    // One token (decode): a matrix-vector product. OpenBLAS 0.3.21's sgemm does not forward m = 1 to gemv
    // and packs the whole weight matrix per call (measured: 4x slower decode).
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(n), static_cast<blasint>(k), 1.f, w.data(),
                static_cast<blasint>(k), a, 1, 0.f, c, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m), static_cast<blasint>(n),
              static_cast<blasint>(k), 1.f, a, static_cast<blasint>(k), w.data(), static_cast<blasint>(k), 0.f, c,
              static_cast<blasint>(n));
}

void rmsNorm(const float* x, const float* w, int64_t rows, int d, float eps, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    double ss = 0;
    for (int i = 0; i < d; ++i) ss += double(xr[i]) * xr[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / d + eps));
    float* o = out + r * d;
    for (int i = 0; i < d; ++i) o[i] = (xr[i] * scale) * w[i];
  }
}

// RoPE as llama.cpp applies it to LLaMA (rope type "norm"): adjacent pairs (x[2i], x[2i+1]) of each head
// rotate by pos * base^(-2i / rope_dim). GGUF conversion permutes the Q/K weights so that this equals the
// Hugging Face (rotate-half) formulation of the original checkpoint.
struct RopeTable {
  int half = 0;
  std::vector<float> cs, sn;  // [rows, half]
  RopeTable(const int64_t* pos, int64_t rows, int rope_dim, float base) : half(rope_dim / 2) {
    cs.resize(static_cast<size_t>(rows * half));
    sn.resize(cs.size());
    for (int64_t r = 0; r < rows; ++r)
      for (int i = 0; i < half; ++i) {
        const double theta = double(pos[r]) * std::pow(double(base), -2.0 * i / rope_dim);
        cs[static_cast<size_t>(r * half + i)] = static_cast<float>(std::cos(theta));
        sn[static_cast<size_t>(r * half + i)] = static_cast<float>(std::sin(theta));
      }
  }
};

void rope(float* x, int64_t rows, int heads, int hd, const RopeTable& t) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* cs = t.cs.data() + r * t.half;
    const float* sn = t.sn.data() + r * t.half;
    for (int h = 0; h < heads; ++h) {
      float* v = x + (r * heads + h) * hd;
      for (int i = 0; i < t.half; ++i) {
        const float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * cs[i] - b * sn[i];
        v[2 * i + 1] = a * sn[i] + b * cs[i];
      }
    }
  }
}

void swiglu(float* g, const float* u, size_t n) {
  for (size_t i = 0; i < n; ++i) g[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
}

// Every rank sends its bytes to every other rank; returns all of them in rank order. `sizes` are the byte
// counts of every rank (known to all; a mismatch fails in the transport with both sizes named).
std::vector<std::vector<uint8_t>> allgatherv(Communicator& comm, const void* mine, const std::vector<size_t>& sizes,
                                             int step) {
  const int n = comm.size(), me = comm.rank();
  std::vector<std::vector<uint8_t>> all(static_cast<size_t>(n));
  for (int p = 0; p < n; ++p) all[static_cast<size_t>(p)].resize(std::max<size_t>(sizes[static_cast<size_t>(p)], 1));
  if (sizes[static_cast<size_t>(me)] > 0)
    std::memcpy(all[static_cast<size_t>(me)].data(), mine, sizes[static_cast<size_t>(me)]);
  if (n == 1) return all;
  const Tag tag = tags::make(tags::kEngineGather, step);
  std::vector<Request> reqs;
  for (int p = 0; p < n; ++p)
    if (p != me) reqs.push_back(comm.irecv(all[static_cast<size_t>(p)].data(), sizes[static_cast<size_t>(p)], p, tag));
  for (int p = 0; p < n; ++p)
    if (p != me)
      reqs.push_back(comm.isend(all[static_cast<size_t>(me)].data(), sizes[static_cast<size_t>(me)], p, tag));
  comm.waitAll(reqs, comm.deadline());
  return all;
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Engine

struct LlamaEngine::Impl {
  Communicator& world;
  std::shared_ptr<const LlamaWeights> w;
  EngineOptions opts;
  const LlamaConfig& cfg;
  const TpShard& shard;
  int tp_rank, sp_rank;
  std::unique_ptr<GroupCommunicator> tp_group, sp_group;
  Communicator* tp_comm;
  Communicator* sp_comm;
  std::unique_ptr<CostModel> own_model;
  const CostModel* model = nullptr;

  int kvh;  // local KV heads (after replication)
  // KV cache, per layer [len, kvh, hd], holding this rank's tokens (prompt shard, plus decoded tokens on the
  // owner).
  std::vector<std::vector<float>> k_cache, v_cache;
  int64_t local_len = 0;
  int64_t global_len = 0;
  int owner = 0;
  std::vector<float> last_logits;
  EngineStats st;

  // Scratch.
  std::vector<float> x, h, q, att, o, g, u;
  std::vector<float> carry;    // error feedback (EngineOptions::error_feedback) and refinement
  std::vector<float> refined;  // refinement: the summed errors (EngineOptions::refine_layers)

  Impl(Communicator& wc, std::shared_ptr<const LlamaWeights> weights, const EngineOptions& o_)
      : world(wc), w(std::move(weights)), opts(o_), cfg(w->cfg), shard(w->shard) {
    if (opts.tp < 1 || opts.sp < 1 || opts.tp * opts.sp != world.size())
      throw InvalidArgument(fmt::format("LlamaEngine: tp {} x sp {} != {} ranks", opts.tp, opts.sp, world.size()),
                            world.rank());
    checkRefineLayers(opts.refine_layers);
    tp_rank = world.rank() % opts.tp;
    sp_rank = world.rank() / opts.tp;
    if (w->tp != opts.tp || w->tp_rank != tp_rank)
      throw InvalidArgument(fmt::format("LlamaEngine: weights are shard {} of {}, rank needs shard {} of {}",
                                        w->tp_rank, w->tp, tp_rank, opts.tp),
                            world.rank());
    // The grid's rows and columns share no pair of ranks, so the groups cannot mix messages (group_comm.h).
    if (opts.tp == world.size()) {
      tp_comm = &world;
    } else {
      std::vector<int> m;
      for (int t = 0; t < opts.tp; ++t) m.push_back(sp_rank * opts.tp + t);
      tp_group = std::make_unique<GroupCommunicator>(world, m);
      tp_comm = tp_group.get();
    }
    if (opts.sp == world.size()) {
      sp_comm = &world;
    } else {
      std::vector<int> m;
      for (int s = 0; s < opts.sp; ++s) m.push_back(s * opts.tp + tp_rank);
      sp_group = std::make_unique<GroupCommunicator>(world, m);
      sp_comm = sp_group.get();
    }
    kvh = static_cast<int>(shard.kv_heads.size());
    k_cache.resize(static_cast<size_t>(cfg.n_layer));
    v_cache.resize(static_cast<size_t>(cfg.n_layer));
    if (opts.blas_threads > 0) openblas_set_num_threads(opts.blas_threads);
    model = opts.cost_model;
    if (opts.sp > 1 && opts.attention == SpScheme::Auto && model == nullptr) {
      own_model = std::make_unique<CostModel>(CostModel::calibrate(*sp_comm));
      model = own_model.get();
    }
  }

  // Runs `body`, adding its wall time and the communicator bytes to the stats.
  template <typename F>
  void timed(F&& body) {
    // Group sends are posted on the world communicator, which counts them.
    const uint64_t b0 = world.bytesSent();
    detail::Stopwatch sw(st.wall_s);
    body();
    st.wire_bytes += world.bytesSent() - b0;
  }

  void checkRefineLayers(int n) const {
    if (n < 0) throw InvalidArgument(fmt::format("LlamaEngine: refine_layers {} < 0", n), world.rank());
  }

  // Whether the TP all-reduce makes errors worth carrying or refining (Ring and Native leave the error zero;
  // the fp32 two-step is exact).
  bool allreduceErrs() const {
    const AllreduceAlgorithm a = opts.allreduce.algorithm;
    return opts.tp > 1 && a != AllreduceAlgorithm::Ring && a != AllreduceAlgorithm::Native &&
           !(a == AllreduceAlgorithm::TwoStep && opts.allreduce.payload == Payload::F32);
  }

  void countAllreduce(const AllreduceStats& as) {
    st.quant_s += as.codec_s;
    st.comm_s += as.wait_s;
    ++st.allreduces;
  }

  void tpAllreduce(int layer, int which, float* data, size_t n) {
    if (opts.tp > 1) {
      const bool refine = layer < opts.refine_layers && allreduceErrs();
      AllreduceStats as;
      if (opts.error_feedback || refine) {
        // carry: this rank's share of the previous all-reduce's error in this forward pass (zeroed by blocks();
        // without error feedback it is only the refinement's scratch and always zero here).
        for (size_t i = 0; i < n; ++i) data[i] += carry[i];
        allreduceWithError(*tp_comm, std::span<float>(data, n), std::span<float>(carry.data(), n), opts.allreduce, &as);
      } else {
        allreduce(*tp_comm, std::span<float>(data, n), opts.allreduce, &as);
      }
      countAllreduce(as);
      if (refine) {
        // The errors just made, summed at once and added: what is left is the error of quantizing them.
        refined.assign(carry.begin(), carry.begin() + static_cast<std::ptrdiff_t>(n));
        AllreduceStats rs;
        if (opts.error_feedback) {
          allreduceWithError(*tp_comm, std::span<float>(refined.data(), n), std::span<float>(carry.data(), n),
                             opts.allreduce, &rs);
        } else {
          allreduce(*tp_comm, std::span<float>(refined.data(), n), opts.allreduce, &rs);
          std::fill(carry.begin(), carry.begin() + static_cast<std::ptrdiff_t>(n), 0.f);
        }
        countAllreduce(rs);
        for (size_t i = 0; i < n; ++i) data[i] += refined[i];
      }
    }
    if (opts.on_allreduce) opts.on_allreduce(layer, which, std::span<const float>(data, n));
  }

  // Error feedback's last step: nothing follows the last all-reduce to take its error, so the ranks' carries
  // are summed by one more all-reduce (same options) and added to the residual stream. Its own error is that
  // of quantizing the (small) error, not the activations. Skipped where the algorithm makes no error to carry.
  void flushErrorFeedback(size_t n) {
    if (!opts.error_feedback || !allreduceErrs()) return;
    o.assign(carry.begin(), carry.begin() + static_cast<std::ptrdiff_t>(n));
    AllreduceStats as;
    allreduce(*tp_comm, std::span<float>(o.data(), n), opts.allreduce, &as);
    countAllreduce(as);
    for (size_t i = 0; i < n; ++i) x[i] += o[i];
    if (opts.on_allreduce) opts.on_allreduce(cfg.n_layer, 2, std::span<const float>(o.data(), n));
  }

  // The transformer blocks over `len` tokens of this rank at global positions `pos`, appending their K/V to
  // the cache. On return x holds the final hidden states (before the output norm).
  // Prompt mode (decode_owner < 0): the tokens are this rank's SP shard of a `global` long sequence and the
  // attention is spAttention. Decode mode: one token on the owner group, pass-Q over the SP ranks; the
  // other SP groups call with len 0 and serve the owner's queries.
  void blocks(const TokenId* tokens, int64_t len, const int64_t* pos, int64_t global, bool decode) {
    const int D = cfg.n_embd, hd = cfg.head_dim, H = shard.heads;
    const size_t qdim = static_cast<size_t>(H) * hd, kvdim = static_cast<size_t>(kvh) * hd;
    const bool am_owner = !decode || sp_rank == owner;
    x.assign(static_cast<size_t>(len) * D, 0.f);
    carry.assign(opts.error_feedback || opts.refine_layers > 0 ? x.size() : 0, 0.f);
    for (int64_t t = 0; t < len; ++t) w->embed(tokens[t], x.data() + t * D);
    h.resize(std::max<size_t>(x.size(), 1));
    q.resize(std::max<size_t>(len * qdim, 1));
    att.resize(std::max<size_t>(len * qdim, 1));
    o.resize(std::max<size_t>(x.size(), 1));
    g.resize(std::max<size_t>(static_cast<size_t>(len) * shard.ff, 1));
    u.resize(g.size());
    const RopeTable rt(pos, len, cfg.rope_dim, cfg.rope_base);
    for (int l = 0; l < cfg.n_layer; ++l) {
      const LlamaLayerWeights& L = w->layers[static_cast<size_t>(l)];
      auto& kc = k_cache[static_cast<size_t>(l)];
      auto& vc = v_cache[static_cast<size_t>(l)];
      if (am_owner) {
        rmsNorm(x.data(), L.attn_norm.data(), len, D, cfg.rms_eps, h.data());
        linear(h.data(), len, D, L.wq, static_cast<int64_t>(qdim), q.data());
        const size_t at = static_cast<size_t>(local_len) * kvdim;
        kc.resize(at + len * kvdim);
        vc.resize(at + len * kvdim);
        linear(h.data(), len, D, L.wk, static_cast<int64_t>(kvdim), kc.data() + at);
        linear(h.data(), len, D, L.wv, static_cast<int64_t>(kvdim), vc.data() + at);
        rope(q.data(), len, H, hd, rt);
        rope(kc.data() + at, len, kvh, hd, rt);
      }
      if (!decode) {
        SpShape shape{1, global, H, kvh, hd};
        SpAttentionOptions so;
        so.scheme = opts.attention;
        so.layout = opts.layout;
        so.causal = true;
        so.model = model;
        SpAttentionStats ss;
        spAttention(*sp_comm, q.data(), kc.data(), vc.data(), shape, so, att.data(), &ss);
        st.comm_s += ss.comm_s;
        st.attn_s += ss.compute_s;
        st.last_scheme = opts.sp > 1 ? ss.scheme : SpScheme::Auto;
      } else {
        decodeAttention(l, am_owner);
      }
      if (!am_owner) continue;
      linear(att.data(), len, static_cast<int64_t>(qdim), L.wo, D, o.data());
      tpAllreduce(l, 0, o.data(), static_cast<size_t>(len) * D);
      for (size_t i = 0; i < static_cast<size_t>(len) * D; ++i) x[i] += o[i];
      rmsNorm(x.data(), L.ffn_norm.data(), len, D, cfg.rms_eps, h.data());
      linear(h.data(), len, D, L.w_gate, shard.ff, g.data());
      linear(h.data(), len, D, L.w_up, shard.ff, u.data());
      swiglu(g.data(), u.data(), static_cast<size_t>(len) * shard.ff);
      linear(g.data(), len, shard.ff, L.w_down, D, o.data());
      tpAllreduce(l, 1, o.data(), static_cast<size_t>(len) * D);
      for (size_t i = 0; i < static_cast<size_t>(len) * D; ++i) x[i] += o[i];
    }
    if (am_owner) {
      flushErrorFeedback(static_cast<size_t>(len) * D);
      local_len += len;
    }
  }

  // Attention of the newest token's query (on the owner; its K/V already appended at local_len) against
  // this rank's KV shard, non-causal (every cached position precedes it).
  void partialAttention(const float* qv, int layer, int64_t kv_len, float* out, float* lse) {
    const int H = shard.heads, hd = cfg.head_dim;
    if (kv_len == 0) {
      std::fill(out, out + static_cast<size_t>(H) * hd, 0.f);
      std::fill(lse, lse + H, kNegInf);
      return;
    }
    detail::Stopwatch sw(st.attn_s);
    AttentionShape s{1, 1, static_cast<int>(kv_len), H, kvh, hd};
    BlockAttentionOptions bo;
    bo.causal = false;
    blockAttention(qv, k_cache[static_cast<size_t>(layer)].data(), v_cache[static_cast<size_t>(layer)].data(), s, bo,
                   out, lse);
  }

  // Pass-Q decode attention over the SP ranks: Q goes owner -> owner+1 -> ... around the ring, every rank
  // forwards it before computing, and sends its partial (out, lse) straight back to the owner, which merges
  // them in SP-rank order.
  void decodeAttention(int layer, bool am_owner) {
    const int H = shard.heads, hd = cfg.head_dim, S = opts.sp;
    const size_t qdim = static_cast<size_t>(H) * hd;
    const size_t part_floats = qdim + static_cast<size_t>(H);
    const int next = (sp_rank + 1) % S, prev = (sp_rank + S - 1) % S;
    const Tag tq = tags::make(tags::kEngineDecodeQ, layer), to = tags::make(tags::kEngineDecodeOut, layer);
    Communicator& c = *sp_comm;
    if (am_owner) {
      Request fwd;
      if (S > 1) fwd = c.isend(q.data(), qdim * sizeof(float), next, tq);
      std::vector<float> parts(part_floats * static_cast<size_t>(S));
      std::vector<Request> recvs;
      for (int s = 0; s < S; ++s)
        if (s != sp_rank) recvs.push_back(c.irecv(parts.data() + part_floats * s, part_floats * sizeof(float), s, to));
      float* mine = parts.data() + part_floats * static_cast<size_t>(sp_rank);
      partialAttention(q.data(), layer, local_len + 1, mine, mine + qdim);
      {
        detail::Stopwatch sw(st.comm_s);
        if (fwd.valid()) c.wait(fwd, c.deadline());
        c.waitAll(recvs, c.deadline());
      }
      detail::Stopwatch sw(st.attn_s);
      std::memcpy(att.data(), parts.data(), qdim * sizeof(float));
      std::vector<float> lse(parts.begin() + static_cast<std::ptrdiff_t>(qdim),
                             parts.begin() + static_cast<std::ptrdiff_t>(part_floats));
      for (int s = 1; s < S; ++s) {
        const float* p = parts.data() + part_floats * static_cast<size_t>(s);
        mergeAttention(att.data(), lse.data(), p, p + qdim, 1, H, hd);
      }
    } else {
      std::vector<float> qin(qdim), part(part_floats);
      Request r = c.irecv(qin.data(), qdim * sizeof(float), prev, tq);
      {
        detail::Stopwatch sw(st.comm_s);
        c.wait(r, c.deadline());
      }
      Request fwd;
      if (next != owner) fwd = c.isend(qin.data(), qdim * sizeof(float), next, tq);
      partialAttention(qin.data(), layer, local_len, part.data(), part.data() + qdim);
      Request back = c.isend(part.data(), part_floats * sizeof(float), owner, to);
      detail::Stopwatch sw(st.comm_s);
      if (fwd.valid()) c.wait(fwd, c.deadline());
      c.wait(back, c.deadline());
    }
  }

  // Vocab-parallel logits of `rows` hidden states (after the output norm): this rank's slice.
  std::vector<float> logitSlice(const float* hidden, int64_t rows) {
    std::vector<float> z(static_cast<size_t>(rows) * shard.vocab);
    linear(hidden, rows, cfg.n_embd, w->output, shard.vocab, z.data());
    return z;
  }

  // Full logits of one hidden state on every rank of the TP group.
  std::vector<float> fullLogits(const float* hidden) {
    std::vector<float> z = logitSlice(hidden, 1);
    std::vector<size_t> sizes;
    for (int t = 0; t < opts.tp; ++t) sizes.push_back(tpShard(cfg, opts.tp, t).vocab * sizeof(float));
    std::vector<std::vector<uint8_t>> all;
    {
      detail::Stopwatch sw(st.comm_s);
      all = allgatherv(*tp_comm, z.data(), sizes, 0);
    }
    std::vector<float> full(static_cast<size_t>(cfg.n_vocab));
    size_t at = 0;
    for (int t = 0; t < opts.tp; ++t) {
      std::memcpy(full.data() + at, all[static_cast<size_t>(t)].data(), sizes[static_cast<size_t>(t)]);
      at += sizes[static_cast<size_t>(t)] / sizeof(float);
    }
    return full;
  }

  static TokenId argmax(const std::vector<float>& z) {
    // First maximum; NaN never wins (a NaN logit means the model is broken: say so).
    TokenId best = -1;
    float bv = kNegInf;
    for (size_t i = 0; i < z.size(); ++i) {
      if (std::isnan(z[i])) throw Error(fmt::format("logit of token {} is NaN", i));
      if (best < 0 || z[i] > bv) {
        bv = z[i];
        best = static_cast<TokenId>(i);
      }
    }
    return best;
  }

  // The owner group computes the next token from the last hidden state (x row `row`); the other SP groups
  // receive it from the owner rank of their own TP index.
  TokenId nextToken(int64_t row) {
    TokenId tok = -1;
    if (sp_rank == owner) {
      std::vector<float> hn(static_cast<size_t>(cfg.n_embd));
      rmsNorm(x.data() + row * cfg.n_embd, w->output_norm.data(), 1, cfg.n_embd, cfg.rms_eps, hn.data());
      last_logits = fullLogits(hn.data());
      tok = argmax(last_logits);
    } else {
      last_logits.clear();
    }
    if (opts.sp > 1) {
      detail::Stopwatch sw(st.comm_s);
      Communicator& c = *sp_comm;
      const Tag tag = tags::make(tags::kEngineToken, 0);
      if (sp_rank == owner) {
        std::vector<Request> rs;
        for (int s = 0; s < opts.sp; ++s)
          if (s != owner) rs.push_back(c.isend(&tok, sizeof(tok), s, tag));
        c.waitAll(rs, c.deadline());
      } else {
        Request r = c.irecv(&tok, sizeof(tok), owner, tag);
        c.wait(r, c.deadline());
      }
    }
    return tok;
  }

  // This rank's shard of a prompt: token ids and global positions.
  void shardOf(std::span<const TokenId> tokens, std::vector<TokenId>& ids, std::vector<int64_t>& pos) const {
    ids.clear();
    pos.clear();
    for (const Segment& sg : localSegments(static_cast<int64_t>(tokens.size()), opts.sp, sp_rank, opts.layout))
      for (int64_t i = 0; i < sg.length; ++i) {
        pos.push_back(sg.global_offset + i);
        ids.push_back(tokens[static_cast<size_t>(sg.global_offset + i)]);
      }
  }

  void checkPrompt(std::span<const TokenId> tokens, const char* what) {
    checkSameOnAllRanks(world, tokens.size(), what);
    if (tokens.empty()) throw InvalidArgument(fmt::format("{}: empty token sequence", what), world.rank());
    for (TokenId t : tokens)
      if (t < 0 || t >= cfg.n_vocab)
        throw InvalidArgument(fmt::format("{}: token id {} is outside the vocabulary [0, {})", what, t, cfg.n_vocab),
                              world.rank());
  }

  void resetCache() {
    for (auto& k : k_cache) k.clear();
    for (auto& v : v_cache) v.clear();
    local_len = 0;
    global_len = 0;
  }

  // Prompt forward of this rank's shard; x holds the hidden states of the shard's tokens afterwards.
  void prompt(std::span<const TokenId> tokens, std::vector<int64_t>& pos) {
    resetCache();
    std::vector<TokenId> ids;
    shardOf(tokens, ids, pos);
    const int64_t n = static_cast<int64_t>(tokens.size());
    blocks(ids.data(), static_cast<int64_t>(ids.size()), pos.data(), n, false);
    global_len = n;
    // The owner holds position n-1.
    for (int s = 0; s < opts.sp; ++s)
      for (const Segment& sg : localSegments(n, opts.sp, s, opts.layout))
        if (sg.length > 0 && sg.global_offset + sg.length == n) owner = s;
  }
};

LlamaEngine::LlamaEngine(Communicator& world, std::shared_ptr<const LlamaWeights> weights, const EngineOptions& opts) {
  detail::abortOnError(world, "LlamaEngine", [&] { impl_ = std::make_unique<Impl>(world, std::move(weights), opts); });
}

LlamaEngine::~LlamaEngine() = default;

TokenId LlamaEngine::prefill(std::span<const TokenId> tokens) {
  Impl& m = *impl_;
  TokenId next = -1;
  detail::abortOnError(m.world, "prefill", [&] {
    m.checkPrompt(tokens, "prefill");
    m.timed([&] {
      std::vector<int64_t> pos;
      m.prompt(tokens, pos);
      int64_t row = -1;
      for (size_t i = 0; i < pos.size(); ++i)
        if (pos[i] == static_cast<int64_t>(tokens.size()) - 1) row = static_cast<int64_t>(i);
      next = m.nextToken(row < 0 ? 0 : row);
    });
  });
  return next;
}

TokenId LlamaEngine::decode(TokenId token) {
  Impl& m = *impl_;
  TokenId next = -1;
  detail::abortOnError(m.world, "decode", [&] {
    if (m.global_len == 0) throw InvalidArgument("decode before prefill", m.world.rank());
    if (token < 0 || token >= m.cfg.n_vocab)
      throw InvalidArgument(fmt::format("decode: token id {} is outside the vocabulary [0, {})", token, m.cfg.n_vocab),
                            m.world.rank());
    m.timed([&] {
      const int64_t pos = m.global_len;
      const bool owner = m.sp_rank == m.owner;
      m.blocks(&token, owner ? 1 : 0, &pos, pos + 1, true);
      ++m.global_len;
      next = m.nextToken(0);
    });
  });
  return next;
}

const std::vector<float>& LlamaEngine::lastLogits() const { return impl_->last_logits; }
int64_t LlamaEngine::position() const { return impl_->global_len; }

LlamaEngine::Score LlamaEngine::score(std::span<const TokenId> tokens, int64_t first) {
  Impl& m = *impl_;
  Score result;
  detail::abortOnError(m.world, "score", [&] {
    m.checkPrompt(tokens, "score");
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (first < 0 || first >= n - 1)
      throw InvalidArgument(fmt::format("score: first scored position {} must be in [0, {})", first, n - 1),
                            m.world.rank());
    m.timed([&] {
      std::vector<int64_t> pos;
      m.prompt(tokens, pos);
      // Rows of this shard that predict a scored token: position p predicts tokens[p + 1].
      std::vector<int64_t> rows;
      for (size_t i = 0; i < pos.size(); ++i)
        if (pos[i] >= first && pos[i] < n - 1) rows.push_back(static_cast<int64_t>(i));
      const int D = m.cfg.n_embd;
      std::vector<float> hn(rows.size() * static_cast<size_t>(D));
      for (size_t i = 0; i < rows.size(); ++i)
        rmsNorm(m.x.data() + rows[i] * D, m.w->output_norm.data(), 1, D, m.cfg.rms_eps, hn.data() + i * D);
      std::vector<float> z = m.logitSlice(hn.data(), static_cast<int64_t>(rows.size()));
      // Per row: the slice's log-sum-exp and the target's logit when this slice holds it (else -inf).
      const int V = m.shard.vocab, v0 = m.shard.vocab_begin;
      std::vector<float> stats(rows.size() * 2);
      for (size_t i = 0; i < rows.size(); ++i) {
        const float* zr = z.data() + i * V;
        float mx = kNegInf;
        for (int j = 0; j < V; ++j) mx = std::max(mx, zr[j]);
        double s = 0;
        for (int j = 0; j < V; ++j) s += std::exp(double(zr[j]) - mx);
        stats[2 * i] = V > 0 ? static_cast<float>(mx + std::log(s)) : kNegInf;
        const TokenId target = tokens[static_cast<size_t>(pos[static_cast<size_t>(rows[i])] + 1)];
        stats[2 * i + 1] = (target >= v0 && target < v0 + V) ? zr[target - v0] : kNegInf;
      }
      std::vector<std::vector<uint8_t>> all;
      {
        detail::Stopwatch sw(m.st.comm_s);
        all = allgatherv(*m.tp_comm, stats.data(),
                         std::vector<size_t>(static_cast<size_t>(m.opts.tp), stats.size() * sizeof(float)), 1);
      }
      double nll = 0, nll_sq = 0;
      for (size_t i = 0; i < rows.size(); ++i) {
        double mx = -std::numeric_limits<double>::infinity(), target = -std::numeric_limits<double>::infinity();
        for (int t = 0; t < m.opts.tp; ++t) {
          const float* s = reinterpret_cast<const float*>(all[static_cast<size_t>(t)].data());
          mx = std::max(mx, double(s[2 * i]));
          target = std::max(target, double(s[2 * i + 1]));
        }
        double sum = 0;
        for (int t = 0; t < m.opts.tp; ++t)
          sum += std::exp(double(reinterpret_cast<const float*>(all[static_cast<size_t>(t)].data())[2 * i]) - mx);
        const double e = mx + std::log(sum) - target;
        nll += e;
        nll_sq += e * e;
      }
      // Each SP group counts its own rows once (its TP rank 0 reports; the others add zero).
      const bool reporter = m.tp_rank == 0;
      detail::Stopwatch sw(m.st.comm_s);
      result.nll = allreduceSumDouble(m.world, reporter ? nll : 0.0);
      result.nll_sq = allreduceSumDouble(m.world, reporter ? nll_sq : 0.0);
      result.count = static_cast<int64_t>(
          std::llround(allreduceSumDouble(m.world, reporter ? static_cast<double>(rows.size()) : 0.0)));
    });
  });
  return result;
}

std::vector<float> LlamaEngine::allLogits(std::span<const TokenId> tokens) {
  Impl& m = *impl_;
  std::vector<float> full;
  detail::abortOnError(m.world, "allLogits", [&] {
    m.checkPrompt(tokens, "allLogits");
    const int64_t n = static_cast<int64_t>(tokens.size());
    std::vector<int64_t> pos;
    m.timed([&] { m.prompt(tokens, pos); });  // the stats count the forward pass, not the gather below
    const int D = m.cfg.n_embd, V = m.cfg.n_vocab;
    const int64_t len = static_cast<int64_t>(pos.size());
    std::vector<float> hn(static_cast<size_t>(len) * D);
    rmsNorm(m.x.data(), m.w->output_norm.data(), len, D, m.cfg.rms_eps, hn.data());
    std::vector<float> z = m.logitSlice(hn.data(), len);
    // Gather every rank's (positions x vocab slice) block over the world.
    std::vector<size_t> sizes;
    for (int r = 0; r < m.world.size(); ++r) {
      const int s = r / m.opts.tp, t = r % m.opts.tp;
      sizes.push_back(static_cast<size_t>(localLength(n, m.opts.sp, s, m.opts.layout)) *
                      static_cast<size_t>(tpShard(m.cfg, m.opts.tp, t).vocab) * sizeof(float));
    }
    auto all = allgatherv(m.world, z.data(), sizes, 2);
    full.assign(static_cast<size_t>(n) * V, 0.f);
    for (int r = 0; r < m.world.size(); ++r) {
      const int s = r / m.opts.tp, t = r % m.opts.tp;
      const TpShard sh = tpShard(m.cfg, m.opts.tp, t);
      const float* src = reinterpret_cast<const float*>(all[static_cast<size_t>(r)].data());
      int64_t i = 0;
      for (const Segment& sg : localSegments(n, m.opts.sp, s, m.opts.layout))
        for (int64_t j = 0; j < sg.length; ++j, ++i)
          std::memcpy(full.data() + (sg.global_offset + j) * V + sh.vocab_begin, src + i * sh.vocab,
                      static_cast<size_t>(sh.vocab) * sizeof(float));
    }
  });
  return full;
}

void LlamaEngine::setAllreduceOptions(const AllreduceOptions& options) { impl_->opts.allreduce = options; }
void LlamaEngine::setErrorCorrection(bool error_feedback, int refine_layers) {
  impl_->checkRefineLayers(refine_layers);
  impl_->opts.error_feedback = error_feedback;
  impl_->opts.refine_layers = refine_layers;
}
const EngineStats& LlamaEngine::stats() const { return impl_->st; }
void LlamaEngine::resetStats() { impl_->st = EngineStats{}; }
int LlamaEngine::tpRank() const { return impl_->tp_rank; }
int LlamaEngine::spRank() const { return impl_->sp_rank; }
int LlamaEngine::ownerSpRank() const { return impl_->owner; }
const LlamaConfig& LlamaEngine::config() const { return impl_->cfg; }
Communicator& LlamaEngine::tpComm() { return *impl_->tp_comm; }
Communicator& LlamaEngine::spComm() { return *impl_->sp_comm; }

}  // namespace flashring
