// Tokenizer::fromGguf: the `tokenizer.ggml.*` metadata of a GGUF file into a TokenizerVocab. Kept apart
// from tokenizer.cc so that the tokenizer itself does not depend on the GGUF reader.
#include <fmt/format.h>

#include <limits>

#include "flashring/gguf.h"
#include "flashring/tokenizer.h"

namespace flashring {

namespace {

TokenId tokenIdKey(const gguf::File& file, const char* key, size_t n_tokens) {
  const int64_t id = file.getInt(key, -1);
  if (id < -1 || id >= static_cast<int64_t>(n_tokens)) {
    throw InvalidArgument(fmt::format("tokenizer: {}: {} = {} is out of range (vocabulary of {} tokens)", file.path(),
                                      key, id, n_tokens));
  }
  return static_cast<TokenId>(id);
}

}  // namespace

Tokenizer Tokenizer::fromGguf(const gguf::File& file) {
  TokenizerVocab v;
  if (!file.has("tokenizer.ggml.model")) {
    throw InvalidArgument(fmt::format("tokenizer: {} has no tokenizer (tokenizer.ggml.model is missing)", file.path()));
  }
  v.model = file.getString("tokenizer.ggml.model");
  if (v.model != "gpt2") {
    throw InvalidArgument(
        fmt::format("tokenizer: {}: tokenizer.ggml.model '{}' is not supported (only 'gpt2', byte-level BPE)",
                    file.path(), v.model));
  }
  v.pre = file.getString("tokenizer.ggml.pre", "default");
  v.tokens = file.getStringArray("tokenizer.ggml.tokens");
  if (file.has("tokenizer.ggml.token_type")) {
    const std::vector<int64_t> types = file.getIntArray("tokenizer.ggml.token_type");
    if (types.size() != v.tokens.size()) {
      throw InvalidArgument(fmt::format("tokenizer: {}: tokenizer.ggml.token_type has {} entries for {} tokens",
                                        file.path(), types.size(), v.tokens.size()));
    }
    v.token_types.reserve(types.size());
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] < 0 || types[i] > 6) {
        throw InvalidArgument(fmt::format(
            "tokenizer: {}: tokenizer.ggml.token_type[{}] = {} is not a token type (0..6)", file.path(), i, types[i]));
      }
      v.token_types.push_back(static_cast<int32_t>(types[i]));
    }
  }
  if (file.has("tokenizer.ggml.merges")) v.merges = file.getStringArray("tokenizer.ggml.merges");
  v.bos = tokenIdKey(file, "tokenizer.ggml.bos_token_id", v.tokens.size());
  v.eos = tokenIdKey(file, "tokenizer.ggml.eos_token_id", v.tokens.size());
  v.unk = tokenIdKey(file, "tokenizer.ggml.unknown_token_id", v.tokens.size());
  v.pad = tokenIdKey(file, "tokenizer.ggml.padding_token_id", v.tokens.size());
  v.add_bos = file.has("tokenizer.ggml.add_bos_token") && file.getBool("tokenizer.ggml.add_bos_token");
  return Tokenizer(std::move(v));
}

}  // namespace flashring
