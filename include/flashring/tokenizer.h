// Byte-level BPE tokenizer (GPT-2 style), built from a GGUF file's `tokenizer.ggml.*` metadata.
//
// Encoding: special tokens (control / user-defined tokens such as <|im_start|>) are split out first when
// `parse_special` is set; the rest is cut by the pre-tokenizer's regular expressions (chosen by
// `tokenizer.ggml.pre`: "gpt2", "smollm", ... — run with PCRE2 in UTF + Unicode-property mode, so \p{L} and
// \p{N} are the Unicode classes), each piece is mapped to GPT-2's printable byte alphabet and merged by BPE
// in merge-rank order. Decoding maps tokens back to bytes (special tokens as their text).
//
// llama.cpp (src/llama-vocab.cpp) is the behaviour followed, where it and Hugging Face's `tokenizers` differ:
// - Control (3) and unknown (2) tokens are split out of the text only when `parse_special` is set;
//   user-defined (4) tokens always are (as in both llama.cpp and `tokenizers`). Longer ones are tried first.
// - Invalid UTF-8 in the input does not throw: each byte that does not start a valid sequence becomes
//   U+FFFD (as llama.cpp's unicode_cpts_from_utf8 does), so decode(encode(x)) == x only for valid UTF-8.
// - A BPE result that is not a token falls back to one token per byte; a byte that has no token of its
//   own is dropped (llama.cpp and `tokenizers` agree; SmolLM2 has no token for 0x04, 0x13 and a few more,
//   and its `unk` is <|endoftext|>), so decode(encode(x)) == x also needs every byte of x in the vocabulary.
// - `token_types` may be left empty (every token normal); otherwise it needs one entry per token.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "flashring/error.h"

namespace flashring {

namespace gguf {
class File;
}

using TokenId = int32_t;

// What a tokenizer needs; fromGguf() fills it from `tokenizer.ggml.*`.
struct TokenizerVocab {
  std::string model = "gpt2";        // tokenizer.ggml.model; only "gpt2" (byte-level BPE) is supported
  std::string pre = "default";       // tokenizer.ggml.pre
  std::vector<std::string> tokens;   // tokenizer.ggml.tokens, in the byte-level alphabet
  std::vector<int32_t> token_types;  // tokenizer.ggml.token_type (1 normal, 3 control, 4 user-defined, ...)
  std::vector<std::string> merges;   // tokenizer.ggml.merges, "a b", highest priority first
  TokenId bos = -1, eos = -1, unk = -1, pad = -1;
  bool add_bos = false;  // tokenizer.ggml.add_bos_token
};

class Tokenizer {
 public:
  explicit Tokenizer(TokenizerVocab vocab);  // throws InvalidArgument naming what is inconsistent
  static Tokenizer fromGguf(const gguf::File& file);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // add_bos: prepend BOS when the vocabulary asks for it (add_bos_token) — as llama.cpp does.
  std::vector<TokenId> encode(std::string_view text, bool add_bos = true, bool parse_special = true) const;
  std::string decode(const std::vector<TokenId>& ids) const;
  std::string tokenText(TokenId id) const;  // the decoded bytes of one token (for streaming)

  int32_t vocabSize() const;
  TokenId bos() const;
  TokenId eos() const;
  bool isEog(TokenId id) const;  // end of generation: eos, or <|im_end|>/<|endoftext|> style tokens
  const TokenizerVocab& vocab() const;

  // The pieces the pre-tokenizer's regular expressions cut `text` into, before BPE (invalid UTF-8 already
  // replaced; special tokens are not split out here). For tests and debugging.
  std::vector<std::string> pretokenize(std::string_view text) const;
  // The `tokenizer.ggml.pre` names accepted (each maps to llama.cpp's regular expressions for it).
  static std::vector<std::string> supportedPreTokenizers();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flashring
