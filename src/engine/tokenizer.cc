// Byte-level BPE (GPT-2 style) as llama.cpp runs it: special-token partition, pre-tokenizer regexes
// (PCRE2, UTF + UCP, JIT when available), GPT-2 byte alphabet, merges by rank with a priority queue.
#include "flashring/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <queue>
#include <unordered_map>
#include <utility>

namespace flashring {
namespace {

// ---- UTF-8 ----------------------------------------------------------------------------------------------

// Length of the valid UTF-8 sequence at s[i] (1..4), or 0 when it is not one. Strict, as PCRE2 requires:
// no overlong forms, no surrogates, nothing above U+10FFFF.
size_t validSequenceLength(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return 1;
  size_t len = 0;
  uint32_t min = 0;
  uint32_t cp = 0;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, min = 0x80, cp = b0 & 0x1Fu;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, min = 0x800, cp = b0 & 0x0Fu;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, min = 0x10000, cp = b0 & 0x07u;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3Fu);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

// `text` with every byte that does not start a valid sequence replaced by U+FFFD (llama.cpp's rule).
// Returns a view of `text` itself when it is valid (the common case: no copy).
std::string_view sanitizeUtf8(std::string_view text, std::string& storage) {
  size_t i = 0;
  while (i < text.size()) {
    const size_t n = validSequenceLength(text, i);
    if (n == 0) break;
    i += n;
  }
  if (i == text.size()) return text;
  storage.assign(text.substr(0, i));
  while (i < text.size()) {
    const size_t n = validSequenceLength(text, i);
    if (n == 0) {
      storage += "\xEF\xBF\xBD";
      ++i;
    } else {
      storage.append(text.substr(i, n));
      i += n;
    }
  }
  return storage;
}

void appendUtf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// ---- GPT-2's byte alphabet ------------------------------------------------------------------------------
// Printable Latin-1 bytes stand for themselves; the other 68 bytes map, in byte order, to U+0100.. so that
// every byte is one visible character and a token never holds raw whitespace or control bytes.
struct ByteAlphabet {
  std::array<std::string, 256> encoded;  // byte -> UTF-8 of its character
  std::array<int16_t, 0x144> decoded{};  // code point -> byte, -1 when not in the alphabet

  ByteAlphabet() {
    decoded.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? b : next++;
      appendUtf8(encoded[b], cp);
      decoded[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& byteAlphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

// Token text in the byte alphabet -> raw bytes. A character outside the alphabet (not produced by byte-level
// BPE) is kept as its UTF-8 (llama.cpp writes an "[UNK_BYTE_0x..]" marker instead).
std::string decodeByteLevel(std::string_view text) {
  const ByteAlphabet& alphabet = byteAlphabet();
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    size_t n = validSequenceLength(text, i);
    if (n == 0) {
      out += text[i++];
      continue;
    }
    uint32_t cp = 0;
    if (n == 1) {
      cp = static_cast<unsigned char>(text[i]);
    } else if (n == 2) {
      cp = ((static_cast<unsigned char>(text[i]) & 0x1Fu) << 6) | (static_cast<unsigned char>(text[i + 1]) & 0x3Fu);
    } else {
      cp = 0x144;  // three or four bytes: never in the alphabet
    }
    if (cp < alphabet.decoded.size() && alphabet.decoded[cp] >= 0) {
      out += static_cast<char>(alphabet.decoded[cp]);
    } else {
      out.append(text.substr(i, n));
    }
    i += n;
  }
  return out;
}

// ---- pre-tokenizer regular expressions (llama.cpp's llm_tokenizer_bpe, by tokenizer.ggml.pre) -----------

constexpr const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr const char* kLlama3Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct PreTokenizer {
  std::vector<const char*> names;
  std::vector<const char*> regexes;
  bool ignore_merges = false;  // a whole pre-token that is a token is taken as is (llama.cpp's llama3)
};

const std::vector<PreTokenizer>& preTokenizers() {
  static const std::vector<PreTokenizer> table = {
      {{"default"}, {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2Regex, R"(\p{N}+)", "[0-9][0-9][0-9]"}, false},
      {{"gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais"}, {kGpt2Regex}, false},
      {{"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"},
       {R"(\p{N})", kGpt2Regex},
       false},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3"}, {kLlama3Regex}, true},
      {{"dbrx", "smaug-bpe"}, {kLlama3Regex}, false},
      {{"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"}, {kQwen2Regex}, false},
      {{"falcon"}, {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2Regex, "[0-9][0-9][0-9]"}, false},
  };
  return table;
}

class Regex {
 public:
  explicit Regex(const char* pattern) {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err,
                          &err_offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw Error(fmt::format("tokenizer: cannot compile pre-tokenizer regex '{}' at offset {}: {}", pattern,
                              static_cast<size_t>(err_offset), reinterpret_cast<const char*>(msg)));
    }
    // JIT is an optimisation only: without it (not built in, or no executable memory) the interpreter runs.
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
  }
  Regex(Regex&& o) noexcept : code_(std::exchange(o.code_, nullptr)) {}
  Regex& operator=(Regex&&) = delete;
  Regex(const Regex&) = delete;
  ~Regex() {
    if (code_) pcre2_code_free(code_);
  }
  const pcre2_code* code() const { return code_; }

 private:
  pcre2_code* code_ = nullptr;
};

struct MatchData {
  explicit MatchData(const pcre2_code* code) : data(pcre2_match_data_create_from_pattern(code, nullptr)) {
    if (!data) throw Error("tokenizer: out of memory creating PCRE2 match data");
  }
  ~MatchData() { pcre2_match_data_free(data); }
  MatchData(const MatchData&) = delete;
  MatchData& operator=(const MatchData&) = delete;
  pcre2_match_data* data;
};

struct Span {
  size_t begin, end;
};

// llama.cpp's unicode_regex_split: each regex cuts every current piece (matched on its own, so look-arounds
// see the piece's ends) into its matches and the unmatched gaps between them.
void splitPieces(std::string_view text, const Regex& regex, const std::vector<Span>& in, std::vector<Span>& out) {
  out.clear();
  MatchData md(regex.code());
  const auto* subject_base = reinterpret_cast<PCRE2_SPTR>(text.data());
  for (const Span piece : in) {
    const size_t len = piece.end - piece.begin;
    size_t pos = 0;      // next search start, relative to the piece
    size_t emitted = 0;  // end of what has been emitted, relative to the piece
    while (pos < len) {
      const int rc =
          pcre2_match(regex.code(), subject_base + piece.begin, len, pos, PCRE2_NO_UTF_CHECK, md.data, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        throw Error(fmt::format("tokenizer: pre-tokenizer regex failed: {}", reinterpret_cast<const char*>(msg)));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.data);
      const size_t mb = ov[0];
      const size_t me = ov[1];
      if (me == mb) {  // an empty match cuts nothing; step over one character
        pos = mb + 1;
        while (pos < len && (static_cast<unsigned char>(text[piece.begin + pos]) & 0xC0) == 0x80) ++pos;
        continue;
      }
      if (mb > emitted) out.push_back({piece.begin + emitted, piece.begin + mb});
      out.push_back({piece.begin + mb, piece.begin + me});
      emitted = pos = me;
    }
    if (emitted < len) out.push_back({piece.begin + emitted, piece.end});
  }
}

struct Bigram {
  int32_t rank;
  int32_t left;  // symbol index
  int32_t left_id, right_id, result;
  bool operator>(const Bigram& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
};

uint64_t pairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// Merge ranks keyed by symbol pair: open addressing with linear probing over a power-of-two table at most
// half full. Looking up pairs is most of BPE's time; this costs about one cache miss where a node-based
// std::unordered_map costs two or three.
class MergeTable {
 public:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    slots_.assign(cap, Slot{kEmpty, {0, 0}});
    mask_ = cap - 1;
  }
  // Keeps the first insertion of a key (the best rank).
  void insert(uint64_t key, Merge m) {
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return;
      if (slots_[i].key == kEmpty) {
        slots_[i] = Slot{key, m};
        return;
      }
    }
  }
  const Merge* find(uint64_t key) const {
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i].merge;
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // symbol ids are < 2^31, so no real key is all ones
  struct Slot {
    uint64_t key;
    Merge merge;
  };
  static size_t hash(uint64_t x) {  // splitmix64's finaliser
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return static_cast<size_t>(x ^ (x >> 31));
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

bool isSpecialType(int32_t type) { return type == 2 || type == 3 || type == 4; }

}  // namespace

struct Tokenizer::Impl {
  TokenizerVocab vocab;
  int32_t n_vocab = 0;
  std::vector<Regex> regexes;
  bool ignore_merges = false;

  // Every string BPE can form gets a symbol id: a token's id when the vocabulary has it (the last of
  // duplicates wins, as in llama.cpp), else an id past the vocabulary into `extra_symbols`. Strings compare
  // as ids, so merges are looked up by an integer pair.
  std::unordered_map<std::string, int32_t> symbol_of;
  std::vector<std::string> extra_symbols;
  std::array<int32_t, 256> byte_symbol{};
  MergeTable merges;

  struct Special {
    std::string_view text;
    TokenId id;
    bool needs_parse_special;  // control/unknown: only with parse_special; user-defined: always
  };
  std::vector<Special> specials;  // longest first

  std::vector<std::string> pieces;  // decoded bytes of each token
  std::vector<TokenId> eog;

  int32_t intern(std::string s) {
    auto [it, inserted] = symbol_of.try_emplace(std::move(s), 0);
    if (inserted) {
      it->second = n_vocab + static_cast<int32_t>(extra_symbols.size());
      extra_symbols.push_back(it->first);
    }
    return it->second;
  }
  std::string_view symbolText(int32_t sym) const {
    return sym < n_vocab ? std::string_view(vocab.tokens[sym]) : std::string_view(extra_symbols[sym - n_vocab]);
  }
  int32_t type(TokenId id) const { return vocab.token_types.empty() ? 1 : vocab.token_types[id]; }

  void appendBytes(std::string_view raw, std::vector<TokenId>& out) const;
  struct WordScratch {  // reused across the words of one encode() call
    std::vector<int32_t> syms, next, prev;
    std::vector<Bigram> heap;
  };
  void encodeWord(std::string_view word, WordScratch& w, std::vector<TokenId>& out) const;
  std::vector<Span> split(std::string_view text) const;  // pre-tokenizer pieces of valid UTF-8 `text`
  void encodeText(std::string_view raw, std::vector<TokenId>& out) const;
};

Tokenizer::Tokenizer(TokenizerVocab vocab) : impl_(std::make_unique<Impl>()) {
  Impl& im = *impl_;
  im.vocab = std::move(vocab);
  const TokenizerVocab& v = im.vocab;
  if (v.model != "gpt2") {
    throw InvalidArgument(
        fmt::format("tokenizer: tokenizer.ggml.model '{}' is not supported (only 'gpt2', byte-level BPE)", v.model));
  }
  if (v.tokens.empty()) throw InvalidArgument("tokenizer: the vocabulary has no tokens");
  if (v.tokens.size() > static_cast<size_t>(INT32_MAX / 2)) {
    throw InvalidArgument(fmt::format("tokenizer: {} tokens is too many", v.tokens.size()));
  }
  im.n_vocab = static_cast<int32_t>(v.tokens.size());
  if (!v.token_types.empty() && v.token_types.size() != v.tokens.size()) {
    throw InvalidArgument(
        fmt::format("tokenizer: {} token types for {} tokens (tokenizer.ggml.token_type must "
                    "have one entry per token)",
                    v.token_types.size(), v.tokens.size()));
  }
  for (auto [name, id] :
       {std::pair<const char*, TokenId>{"bos", v.bos}, {"eos", v.eos}, {"unk", v.unk}, {"pad", v.pad}}) {
    if (id < -1 || id >= im.n_vocab) {
      throw InvalidArgument(
          fmt::format("tokenizer: {} token id {} is out of range (vocabulary of {} tokens)", name, id, im.n_vocab));
    }
  }
  if (v.add_bos && v.bos < 0) throw InvalidArgument("tokenizer: add_bos_token is true but there is no bos token");

  const PreTokenizer* pre = nullptr;
  const std::string pre_name = v.pre.empty() ? "default" : v.pre;  // llama.cpp: missing -> default
  for (const PreTokenizer& p : preTokenizers()) {
    for (const char* n : p.names) {
      if (pre_name == n) pre = &p;
    }
  }
  if (!pre) {
    throw InvalidArgument(fmt::format("tokenizer: unknown pre-tokenizer tokenizer.ggml.pre = '{}' (supported: {})",
                                      v.pre, fmt::join(supportedPreTokenizers(), ", ")));
  }
  for (const char* r : pre->regexes) im.regexes.emplace_back(r);
  im.ignore_merges = pre->ignore_merges;

  im.symbol_of.reserve(v.tokens.size() + v.merges.size() / 8 + 256);
  for (int32_t i = 0; i < im.n_vocab; ++i) im.symbol_of[v.tokens[i]] = i;
  const ByteAlphabet& alphabet = byteAlphabet();
  for (int b = 0; b < 256; ++b) im.byte_symbol[b] = im.intern(alphabet.encoded[b]);

  im.merges.reserve(v.merges.size());
  for (size_t r = 0; r < v.merges.size(); ++r) {
    const std::string& m = v.merges[r];
    const size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
    if (sp == std::string::npos || sp + 1 >= m.size()) {
      throw InvalidArgument(fmt::format("tokenizer: merge {} '{}' is not of the form 'left right'", r, m));
    }
    const int32_t a = im.intern(m.substr(0, sp));
    const int32_t b = im.intern(m.substr(sp + 1));
    const int32_t ab = im.intern(m.substr(0, sp) + m.substr(sp + 1));
    im.merges.insert(pairKey(a, b), MergeTable::Merge{static_cast<int32_t>(r), ab});  // first (best) rank wins
  }

  im.pieces.resize(v.tokens.size());
  for (int32_t i = 0; i < im.n_vocab; ++i) {
    const int32_t t = im.type(i);
    if (isSpecialType(t)) {
      im.pieces[i] = v.tokens[i];
      if (!v.tokens[i].empty()) im.specials.push_back({v.tokens[i], i, t != 4});
    } else if (t != 5) {  // unused tokens decode to nothing, as in llama.cpp
      im.pieces[i] = decodeByteLevel(v.tokens[i]);
    }
  }
  std::stable_sort(im.specials.begin(), im.specials.end(),
                   [](const Impl::Special& a, const Impl::Special& b) { return a.text.size() > b.text.size(); });

  if (v.eos >= 0) im.eog.push_back(v.eos);
  for (const char* name : {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>"}) {
    if (auto it = im.symbol_of.find(name); it != im.symbol_of.end() && it->second < im.n_vocab) {
      if (std::find(im.eog.begin(), im.eog.end(), it->second) == im.eog.end()) im.eog.push_back(it->second);
    }
  }
}

Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

// One token per byte for a piece that BPE could not turn into a token. A byte without a token of its own is
// dropped, as llama.cpp and `tokenizers` both do (SmolLM2 has none for 0x04, 0x13, ... 0xFF; its unknown
// token is <|endoftext|>, which would end the text for the model).
void Tokenizer::Impl::appendBytes(std::string_view raw, std::vector<TokenId>& out) const {
  for (const char c : raw) {
    const int32_t sym = byte_symbol[static_cast<unsigned char>(c)];
    if (sym < n_vocab) out.push_back(sym);
  }
}

// BPE on one pre-token (raw bytes): start from one symbol per byte (its character in the byte alphabet),
// repeatedly merge the adjacent pair of lowest rank (leftmost on ties) until no pair has a rank. A priority
// queue of candidate pairs with lazy invalidation keeps it O(n log n) in the word length. Symbol i always
// covers raw bytes [i, next[i]), which is what falls back to byte tokens when it is not a token.
void Tokenizer::Impl::encodeWord(std::string_view word, WordScratch& w, std::vector<TokenId>& out) const {
  if (ignore_merges) {
    std::string mapped;
    for (const char c : word) mapped += byteAlphabet().encoded[static_cast<unsigned char>(c)];
    if (auto it = symbol_of.find(mapped); it != symbol_of.end() && it->second < n_vocab) {
      out.push_back(it->second);
      return;
    }
  }
  const auto n = static_cast<int32_t>(word.size());
  std::vector<int32_t>& syms = w.syms;
  std::vector<int32_t>& next = w.next;
  std::vector<int32_t>& prev = w.prev;
  std::vector<Bigram>& heap = w.heap;
  syms.resize(n);
  next.resize(n);
  prev.resize(n);
  for (int32_t i = 0; i < n; ++i) {
    syms[i] = byte_symbol[static_cast<unsigned char>(word[i])];
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  heap.clear();
  auto consider = [&](int32_t l) {
    if (l < 0) return;
    const int32_t r = next[l];
    if (r < 0) return;
    const MergeTable::Merge* m = merges.find(pairKey(syms[l], syms[r]));
    if (!m) return;
    heap.push_back({m->rank, l, syms[l], syms[r], m->result});
    std::push_heap(heap.begin(), heap.end(), std::greater<>());
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const Bigram bg = heap.back();
    heap.pop_back();
    const int32_t l = bg.left;
    const int32_t r = next[l];
    // Stale: the left symbol was absorbed (syms = -1) or either side changed since the pair was queued.
    if (syms[l] != bg.left_id || r < 0 || syms[r] != bg.right_id) continue;
    syms[l] = bg.result;
    syms[r] = -1;
    next[l] = next[r];
    if (next[r] >= 0) prev[next[r]] = l;
    consider(prev[l]);
    consider(l);
  }
  for (int32_t i = 0; i >= 0 && i < n; i = next[i]) {
    if (syms[i] < n_vocab) {
      out.push_back(syms[i]);
    } else {
      appendBytes(word.substr(i, (next[i] < 0 ? n : next[i]) - i), out);
    }
  }
}

std::vector<Span> Tokenizer::Impl::split(std::string_view text) const {
  std::vector<Span> a{{0, text.size()}}, b;
  if (text.empty()) return {};
  for (const Regex& re : regexes) {
    splitPieces(text, re, a, b);
    std::swap(a, b);
  }
  return a;
}

void Tokenizer::Impl::encodeText(std::string_view raw, std::vector<TokenId>& out) const {
  std::string storage;
  const std::string_view text = sanitizeUtf8(raw, storage);
  const std::vector<Span> a = split(text);
  Impl::WordScratch scratch;
  // Prose repeats its words: BPE runs once per distinct piece of this call, later copies reuse the ids
  // (they already sit in `out`). The result depends only on the piece, so this changes nothing but time.
  struct Seen {
    size_t first, count;
  };
  std::unordered_map<std::string_view, Seen> seen;
  seen.reserve(a.size() / 4 + 16);
  for (const Span s : a) {
    const std::string_view word = text.substr(s.begin, s.end - s.begin);
    if (auto it = seen.find(word); it != seen.end()) {
      for (size_t k = 0; k < it->second.count; ++k) {
        const TokenId id = out[it->second.first + k];  // a copy: push_back may reallocate
        out.push_back(id);
      }
      continue;
    }
    const size_t first = out.size();
    encodeWord(word, scratch, out);
    seen.emplace(word, Seen{first, out.size() - first});
  }
}

std::vector<TokenId> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  const Impl& im = *impl_;
  std::vector<TokenId> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && im.vocab.add_bos) out.push_back(im.vocab.bos);
  if (text.empty()) return out;

  // llama.cpp's tokenizer_st_partition: for each special token, longest first, cut every remaining text
  // fragment at each of its occurrences.
  struct Fragment {
    TokenId token;  // -1: text [begin, end)
    size_t begin, end;
  };
  std::vector<Fragment> frags{{-1, 0, text.size()}}, cut;
  for (const Impl::Special& sp : im.specials) {
    if (sp.needs_parse_special && !parse_special) continue;
    cut.clear();
    bool found = false;
    for (const Fragment& f : frags) {
      if (f.token >= 0) {
        cut.push_back(f);
        continue;
      }
      size_t pos = f.begin;
      while (pos < f.end) {
        const size_t m = text.substr(0, f.end).find(sp.text, pos);
        if (m == std::string_view::npos) break;
        found = true;
        if (m > pos) cut.push_back({-1, pos, m});
        cut.push_back({sp.id, m, m + sp.text.size()});
        pos = m + sp.text.size();
      }
      if (pos < f.end) cut.push_back({-1, pos, f.end});
    }
    if (found) std::swap(frags, cut);
  }
  for (const Fragment& f : frags) {
    if (f.token >= 0) {
      out.push_back(f.token);
    } else {
      im.encodeText(text.substr(f.begin, f.end - f.begin), out);
    }
  }
  return out;
}

std::string Tokenizer::tokenText(TokenId id) const {
  if (id < 0 || id >= impl_->n_vocab) {
    throw InvalidArgument(
        fmt::format("tokenizer: token id {} is out of range (vocabulary of {} tokens)", id, impl_->n_vocab));
  }
  return impl_->pieces[id];
}

std::string Tokenizer::decode(const std::vector<TokenId>& ids) const {
  std::string out;
  for (const TokenId id : ids) {
    if (id < 0 || id >= impl_->n_vocab) {
      throw InvalidArgument(
          fmt::format("tokenizer: token id {} is out of range (vocabulary of {} tokens)", id, impl_->n_vocab));
    }
    out += impl_->pieces[id];
  }
  return out;
}

int32_t Tokenizer::vocabSize() const { return impl_->n_vocab; }
TokenId Tokenizer::bos() const { return impl_->vocab.bos; }
TokenId Tokenizer::eos() const { return impl_->vocab.eos; }
bool Tokenizer::isEog(TokenId id) const {
  return id >= 0 && std::find(impl_->eog.begin(), impl_->eog.end(), id) != impl_->eog.end();
}
const TokenizerVocab& Tokenizer::vocab() const { return impl_->vocab; }

std::vector<std::string> Tokenizer::pretokenize(std::string_view text) const {
  std::string storage;
  const std::string_view valid = sanitizeUtf8(text, storage);
  std::vector<std::string> pieces;
  for (const Span s : impl_->split(valid)) pieces.emplace_back(valid.substr(s.begin, s.end - s.begin));
  return pieces;
}

std::vector<std::string> Tokenizer::supportedPreTokenizers() {
  std::vector<std::string> names;
  for (const PreTokenizer& p : preTokenizers()) {
    for (const char* n : p.names) names.emplace_back(n);
  }
  return names;
}

}  // namespace flashring
