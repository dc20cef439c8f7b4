// Tokenizer throughput on the default model's vocabulary (SmolLM2, 49152 tokens, pre = "smollm"), one core.
//
//   BM_TokenizerEncode        encode the GPL-3 text (35 KB of English prose): bytes/s is the number to
//                             compare with Hugging Face `tokenizers` on the same vocabulary:
//                             python3 tests/tools/tokenizer_reference.py MODEL --time-file
//                             /usr/share/common-licenses/GPL-3
//   BM_TokenizerPretokenize   the regex pre-tokenizer alone (PCRE2), to see how encode's time divides
//   BM_TokenizerDecode        decode the GPL-3 ids back to text
//   BM_TokenizerLoad          Tokenizer::fromGguf on an open file (vocabulary and merge tables)
//
// Skipped with a message when the model or the text is missing.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "flashring/gguf.h"
#include "flashring/model_path.h"
#include "flashring/tokenizer.h"

namespace {

constexpr const char* kText = "/usr/share/common-licenses/GPL-3";

struct Fixture {
  std::string error;
  std::unique_ptr<flashring::gguf::File> file;
  std::unique_ptr<flashring::Tokenizer> tok;
  std::string text;
};

const Fixture& fixture() {
  static const Fixture f = [] {
    Fixture r;
    const std::string path = flashring::findDefaultModel();
    if (path.empty()) {
      r.error = "default model not found at " + flashring::defaultModelPath();
      return r;
    }
    if (!std::filesystem::exists(kText)) {
      r.error = std::string(kText) + " is missing";
      return r;
    }
    r.file = std::make_unique<flashring::gguf::File>(flashring::gguf::File::open(path));
    r.tok = std::make_unique<flashring::Tokenizer>(flashring::Tokenizer::fromGguf(*r.file));
    std::ifstream in(kText, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    r.text = ss.str();
    return r;
  }();
  return f;
}

void BM_TokenizerEncode(benchmark::State& state) {
  const Fixture& f = fixture();
  if (!f.tok) {
    state.SkipWithError(f.error.c_str());
    return;
  }
  size_t tokens = 0;
  for (auto _ : state) {
    auto ids = f.tok->encode(f.text);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * f.text.size()));
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_TokenizerPretokenize(benchmark::State& state) {
  const Fixture& f = fixture();
  if (!f.tok) {
    state.SkipWithError(f.error.c_str());
    return;
  }
  size_t pieces = 0;
  for (auto _ : state) {
    auto p = f.tok->pretokenize(f.text);
    pieces = p.size();
    benchmark::DoNotOptimize(p.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * f.text.size()));
  state.counters["pieces"] = static_cast<double>(pieces);
}

void BM_TokenizerDecode(benchmark::State& state) {
  const Fixture& f = fixture();
  if (!f.tok) {
    state.SkipWithError(f.error.c_str());
    return;
  }
  const auto ids = f.tok->encode(f.text);
  for (auto _ : state) {
    auto text = f.tok->decode(ids);
    benchmark::DoNotOptimize(text.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * f.text.size()));
}

void BM_TokenizerLoad(benchmark::State& state) {
  const Fixture& f = fixture();
  if (!f.tok) {
    state.SkipWithError(f.error.c_str());
    return;
  }
  for (auto _ : state) {
    auto tok = flashring::Tokenizer::fromGguf(*f.file);
    benchmark::DoNotOptimize(&tok);
  }
}

}  // namespace

BENCHMARK(BM_TokenizerEncode)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TokenizerPretokenize)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TokenizerDecode)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_TokenizerLoad)->Unit(benchmark::kMillisecond);
