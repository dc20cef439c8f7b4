// LLaMA configuration from GGUF metadata and the tensor-parallel split (see include/flashring/llama.h).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "collectives/common.h"
#include "flashring/gguf.h"
#include "flashring/llama.h"

namespace flashring {
namespace {

// [begin, begin + count) of `units` over `parts`: the first units % parts parts take one more.
std::pair<int, int> balanced(int units, int parts, int i) {
  const int base = units / parts, extra = units % parts;
  return {i * base + std::min(i, extra), base + (i < extra ? 1 : 0)};
}

}  // namespace

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
  // Split units of the row-parallel inputs (attention output, FFN down): a TP slice must start on a block.
  size_t bs_o = 1, bs_down = 1;
  for (int l = 0; l < c.n_layer; ++l) {
    const auto blockOf = [&](const std::string& name) -> size_t {
      const gguf::TensorInfo* t = f.find(name);
      return t != nullptr && gguf::supported(t->type) ? gguf::blockSize(t->type) : 1;
    };
    bs_o = std::max(bs_o, blockOf(fmt::format("blk.{}.attn_output.weight", l)));
    bs_down = std::max(bs_down, blockOf(fmt::format("blk.{}.ffn_down.weight", l)));
  }
  c.head_align = static_cast<int>(std::lcm(bs_o, static_cast<size_t>(c.head_dim)) / static_cast<size_t>(c.head_dim));
  c.ff_align = static_cast<int>(bs_down);
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
  // Heads in units of head_align heads (one unit when there are fewer units than ranks or the heads do not
  // divide into units): the first ranks take one unit more.
  const int ha = (cfg.head_align > 0 && cfg.n_head % cfg.head_align == 0 && cfg.n_head / cfg.head_align >= tp)
                     ? cfg.head_align
                     : 1;
  const auto hu = balanced(cfg.n_head / ha, tp, r);
  s.head_begin = hu.first * ha;
  s.heads = hu.second * ha;
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
  // FFN units in blocks of ff_align (the last block may be partial when n_ff is not a multiple).
  const int fa = (cfg.ff_align > 0 && (cfg.n_ff + cfg.ff_align - 1) / cfg.ff_align >= tp) ? cfg.ff_align : 1;
  const auto fu = balanced((cfg.n_ff + fa - 1) / fa, tp, r);
  s.ff_begin = fu.first * fa;
  s.ff = std::min((fu.first + fu.second) * fa, cfg.n_ff) - s.ff_begin;
  const auto vb = detail::part(static_cast<size_t>(cfg.n_vocab), tp, r);
  s.vocab_begin = static_cast<int>(vb.begin);
  s.vocab = static_cast<int>(vb.size());
  return s;
}

}  // namespace flashring
