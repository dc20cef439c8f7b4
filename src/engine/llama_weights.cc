// The loader: checks every tensor of a LLaMA GGUF file, then maps one TP rank's slices of the weights in
// their GGUF types (see include/flashring/llama.h).
#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "flashring/gguf.h"
#include "flashring/llama.h"

namespace flashring {
namespace {

struct Expect {
  std::string name;
  int64_t in, out;  // dims {in, out}; out = 0 for a vector of `in` values
};

// Every tensor the forward pass reads, with its shape.
std::vector<Expect> expectedTensors(const LlamaConfig& c) {
  const int64_t D = c.n_embd, q = int64_t{c.n_head} * c.head_dim, kv = int64_t{c.n_head_kv} * c.head_dim;
  std::vector<Expect> e;
  e.push_back({"token_embd.weight", D, c.n_vocab});
  e.push_back({"output_norm.weight", D, 0});
  if (!c.tied_output) e.push_back({"output.weight", D, c.n_vocab});
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = fmt::format("blk.{}.", l);
    e.push_back({p + "attn_norm.weight", D, 0});
    e.push_back({p + "ffn_norm.weight", D, 0});
    e.push_back({p + "attn_q.weight", D, q});
    e.push_back({p + "attn_k.weight", D, kv});
    e.push_back({p + "attn_v.weight", D, kv});
    e.push_back({p + "attn_output.weight", q, D});
    e.push_back({p + "ffn_gate.weight", D, c.n_ff});
    e.push_back({p + "ffn_up.weight", D, c.n_ff});
    e.push_back({p + "ffn_down.weight", c.n_ff, D});
  }
  return e;
}

void checkTensor(const gguf::File& f, const Expect& e) {
  const gguf::TensorInfo* t = f.find(e.name);
  if (t == nullptr) throw gguf::FormatError(fmt::format("{}: tensor '{}' is missing", f.path(), e.name));
  if (e.out == 0) {
    if (t->elements() != e.in)
      throw gguf::FormatError(
          fmt::format("{}: tensor '{}' has {} values, expected {}", f.path(), e.name, t->elements(), e.in));
  } else if (t->dims.size() != 2 || t->dims[0] != e.in || t->dims[1] != e.out) {
    throw gguf::FormatError(fmt::format("{}: tensor '{}' has dims [{}], expected [{}, {}]", f.path(), e.name,
                                        fmt::join(t->dims, ", "), e.in, e.out));
  }
  if (!gguf::supported(t->type) || !qmm::hasKernels(t->type))
    throw gguf::FormatError(
        fmt::format("{}: tensor '{}' has type {}, which flashring cannot run (supported: f32, "
                    "f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K)",
                    f.path(), e.name, gguf::typeName(t->raw_type)));
}

// Drops the file pages of `bytes` (those wholly inside it) from this process's resident set once they were
// copied: a rank keeps resident only the slices it computes with. Advisory; errors are ignored.
void releasePages(std::span<const uint8_t> bytes) {
  static const long page = sysconf(_SC_PAGESIZE);
  if (page <= 0 || bytes.empty()) return;
  const auto p = reinterpret_cast<uintptr_t>(bytes.data());
  const uintptr_t b = (p + page - 1) / page * page, e = (p + bytes.size()) / page * page;
  if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

class Mapper {
 public:
  Mapper(const gguf::File& f, LlamaWeights& w, const LoadOptions& o) : f_(f), w_(w), o_(o) {}

  qmm::Matrix whole(const std::string& name) const {
    const gguf::TensorInfo& t = f_.tensor(name);
    qmm::Matrix m;
    m.type = t.type;
    m.data = f_.data(t).data();
    m.rows = t.dims[1];
    m.cols = t.dims[0];
    m.row_bytes = static_cast<size_t>(m.cols) / gguf::blockSize(t.type) * gguf::blockBytes(t.type);
    return m;
  }

  // Rows [begin, begin + count): a view (a copy as fp32 under LoadOptions::dequantize).
  qmm::Matrix rows(const std::string& name, int64_t begin, int64_t count) {
    return finish(whole(name).rowRange(begin, count));
  }

  // Rows `block` at a time starting at which[i] * block: a view when they are consecutive, else a copy.
  qmm::Matrix rowBlocks(const std::string& name, const std::vector<int>& which, int64_t block) {
    const qmm::Matrix m = whole(name);
    bool consecutive = true;
    for (size_t i = 1; i < which.size(); ++i) consecutive = consecutive && which[i] == which[i - 1] + 1;
    if (consecutive) return finish(m.rowRange(which.empty() ? 0 : which[0] * block, int64_t(which.size()) * block));
    std::vector<uint8_t>& buf = w_.owned.emplace_back(static_cast<size_t>(which.size() * block) * m.row_bytes);
    for (size_t i = 0; i < which.size(); ++i)
      std::memcpy(buf.data() + i * block * m.row_bytes, m.data + which[i] * block * m.row_bytes,
                  static_cast<size_t>(block) * m.row_bytes);
    qmm::Matrix c = m;
    c.data = buf.data();
    c.rows = static_cast<int64_t>(which.size()) * block;
    return finish(c);
  }

  // Columns [begin, begin + count) of every row, repacked contiguously: in the file's type when the slice
  // falls on block boundaries, else as F32 (exact, 4 bytes per value; noted).
  qmm::Matrix columns(const std::string& name, int64_t begin, int64_t count) {
    const qmm::Matrix m = whole(name);
    if (begin == 0 && count == m.cols) return finish(m);
    const int64_t bs = static_cast<int64_t>(gguf::blockSize(m.type));
    qmm::Matrix c = m;
    c.cols = count;
    if (begin % bs == 0 && count % bs == 0 && !o_.dequantize) {
      const size_t bb = gguf::blockBytes(m.type);
      c.row_bytes = static_cast<size_t>(count / bs) * bb;
      std::vector<uint8_t>& buf = w_.owned.emplace_back(static_cast<size_t>(m.rows) * c.row_bytes);
      for (int64_t r = 0; r < m.rows; ++r)
        std::memcpy(buf.data() + r * c.row_bytes, m.data + r * m.row_bytes + static_cast<size_t>(begin / bs) * bb,
                    c.row_bytes);
      c.data = buf.data();
    } else {
      if (!o_.dequantize)
        w_.notes.push_back(fmt::format("{}: columns [{}, {}) do not fall on {}-value blocks: repacked as f32", name,
                                       begin, begin + count, bs));
      std::vector<float> row(static_cast<size_t>(m.cols));
      c.type = gguf::TensorType::F32;
      c.row_bytes = static_cast<size_t>(count) * sizeof(float);
      std::vector<uint8_t>& buf = w_.owned.emplace_back(static_cast<size_t>(m.rows) * c.row_bytes);
      for (int64_t r = 0; r < m.rows; ++r) {
        gguf::dequantize(m.type, m.data + r * m.row_bytes, row.data(), row.size());
        std::memcpy(buf.data() + r * c.row_bytes, row.data() + begin, c.row_bytes);
      }
      c.data = buf.data();
    }
    releasePages({m.data, m.bytes()});
    return c;
  }

  std::vector<float> vector(const std::string& name) const { return f_.dequantize(f_.tensor(name)); }

 private:
  // Under LoadOptions::dequantize, an fp32 copy of the view.
  qmm::Matrix finish(const qmm::Matrix& m) {
    if (!o_.dequantize || m.type == gguf::TensorType::F32) return m;
    qmm::Matrix c = m;
    c.type = gguf::TensorType::F32;
    c.row_bytes = static_cast<size_t>(m.cols) * sizeof(float);
    std::vector<uint8_t>& buf = w_.owned.emplace_back(static_cast<size_t>(m.rows) * c.row_bytes);
    for (int64_t r = 0; r < m.rows; ++r)
      gguf::dequantize(m.type, m.data + r * m.row_bytes, reinterpret_cast<float*>(buf.data() + r * c.row_bytes),
                       static_cast<size_t>(m.cols));
    c.data = buf.data();
    return c;
  }

  const gguf::File& f_;
  LlamaWeights& w_;
  const LoadOptions& o_;
};

}  // namespace

std::shared_ptr<const LlamaWeights> LlamaWeights::load(std::shared_ptr<const gguf::File> file, int tp, int tp_rank,
                                                       const LoadOptions& options) {
  const gguf::File& f = *file;
  auto w = std::make_shared<LlamaWeights>();
  w->cfg = LlamaConfig::fromGguf(f);
  const LlamaConfig& c = w->cfg;
  // Everything is checked before anything is mapped: a bad file fails at once, naming the tensor.
  for (const Expect& e : expectedTensors(c)) checkTensor(f, e);
  w->tp = tp;
  w->tp_rank = tp_rank;
  w->shard = tpShard(c, tp, tp_rank);
  const TpShard& s = w->shard;
  const int hd = c.head_dim;
  Mapper map(f, *w, options);
  w->layers.resize(static_cast<size_t>(c.n_layer));
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = fmt::format("blk.{}.", l);
    LlamaLayerWeights& L = w->layers[static_cast<size_t>(l)];
    L.attn_norm = map.vector(p + "attn_norm.weight");
    L.ffn_norm = map.vector(p + "ffn_norm.weight");
    L.wq = map.rows(p + "attn_q.weight", int64_t{s.head_begin} * hd, int64_t{s.heads} * hd);
    L.wk = map.rowBlocks(p + "attn_k.weight", s.kv_heads, hd);
    L.wv = map.rowBlocks(p + "attn_v.weight", s.kv_heads, hd);
    L.wo = map.columns(p + "attn_output.weight", int64_t{s.head_begin} * hd, int64_t{s.heads} * hd);
    L.w_gate = map.rows(p + "ffn_gate.weight", s.ff_begin, s.ff);
    L.w_up = map.rows(p + "ffn_up.weight", s.ff_begin, s.ff);
    L.w_down = map.columns(p + "ffn_down.weight", s.ff_begin, s.ff);
  }
  w->output_norm = map.vector("output_norm.weight");
  w->output = map.rows(c.tied_output ? "token_embd.weight" : "output.weight", s.vocab_begin, s.vocab);
  w->token_embd = map.whole("token_embd.weight");
  w->file = std::move(file);
  return w;
}

void LlamaWeights::embed(TokenId token, float* out) const {
  if (token < 0 || token >= cfg.n_vocab)
    throw InvalidArgument(fmt::format("token id {} is outside the vocabulary [0, {})", token, cfg.n_vocab));
  gguf::dequantize(token_embd.type, token_embd.data + static_cast<size_t>(token) * token_embd.row_bytes, out,
                   static_cast<size_t>(token_embd.cols));
}

size_t LlamaWeights::bytes() const {
  size_t n = (output_norm.size()) * sizeof(float) + output.bytes();
  for (const auto& L : layers)
    n += (L.attn_norm.size() + L.ffn_norm.size()) * sizeof(float) + L.wq.bytes() + L.wk.bytes() + L.wv.bytes() +
         L.wo.bytes() + L.w_gate.bytes() + L.w_up.bytes() + L.w_down.bytes();
  return n;
}

size_t LlamaWeights::ownedBytes() const {
  size_t n = 0;
  for (const auto& b : owned) n += b.size();
  return n;
}

}  // namespace flashring
