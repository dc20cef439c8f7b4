// Built-in LLaMA shapes for `flashring simulate` (the models' config.json on the Hugging Face Hub, meta-llama/*).
#include <fmt/format.h>

#include <map>

#include "flashring/error.h"
#include "flashring/simulate.h"

namespace flashring::sim {

namespace {

LlamaConfig shape(const char* name, int layers, int embd, int heads, int kv, int ff, int vocab, int64_t ctx,
                  float rope_base) {
  LlamaConfig c;
  c.name = name;
  c.n_layer = layers;
  c.n_embd = embd;
  c.n_head = heads;
  c.n_head_kv = kv;
  c.head_dim = embd / heads;
  c.rope_dim = c.head_dim;
  c.n_ff = ff;
  c.n_vocab = vocab;
  c.n_ctx_train = ctx;
  c.rope_base = rope_base;
  c.tied_output = false;
  return c;
}

const std::map<std::string, LlamaConfig>& models() {
  static const std::map<std::string, LlamaConfig> m = {
      {"llama-2-7b", shape("LLaMA-2-7B", 32, 4096, 32, 32, 11008, 32000, 4096, 10000.f)},
      {"llama-2-13b", shape("LLaMA-2-13B", 40, 5120, 40, 40, 13824, 32000, 4096, 10000.f)},
      {"llama-2-70b", shape("LLaMA-2-70B", 80, 8192, 64, 8, 28672, 32000, 4096, 10000.f)},
      {"llama-3-8b", shape("LLaMA-3-8B", 32, 4096, 32, 8, 14336, 128256, 8192, 500000.f)},
      {"llama-3-70b", shape("LLaMA-3-70B", 80, 8192, 64, 8, 28672, 128256, 8192, 500000.f)},
  };
  return m;
}

}  // namespace

std::vector<std::string> builtinModelNames() {
  std::vector<std::string> names;
  for (const auto& [k, v] : models()) names.push_back(k);
  return names;
}

LlamaConfig builtinModel(const std::string& name) {
  auto it = models().find(name);
  if (it == models().end())
    throw InvalidArgument(fmt::format("unknown model '{}': use one of {} or a GGUF file path", name,
                                      fmt::join(builtinModelNames(), ", ")));
  return it->second;
}

}  // namespace flashring::sim
