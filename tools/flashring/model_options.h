// What the model subcommands (run, perplexity, demo, bench ttft) share: the model and parallel-plan flags,
// the model cache of a process, and the entry points that one subcommand borrows from another (the demo runs
// generation and perplexity).
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "cli.h"
#include "flashring/comm_setting.h"
#include "flashring/llama.h"
#include "flashring/perplexity.h"

namespace flashring {
namespace gguf {
class File;
}
}  // namespace flashring

namespace flashring::cli {

// --comm names (flashring/comm_setting.h): commAllreduceOptions() with errors naming --comm.
AllreduceOptions commOptions(const std::string& comm, int group_size, int spikes, bool rotate = false,
                             bool clip = false);

struct ModelOptions {
  std::string model;  // empty: the default model
  int tp = 1, sp = 1;
  std::string comm = "exact";
  int group_size = 128;
  int spikes = 2;  // spike reserving on by default for models: their massive activations need it (README)
  // EngineOptions::error_feedback. Default (error_feedback_flag < 0): on for the low-bit codecs (INT8 and
  // below), off for exact and bf16; --error-feedback / --no-error-feedback set the flag. resolve() decides.
  bool error_feedback = false;
  int error_feedback_flag = -1;
  bool rotate = false;    // quant::Config::rotate of the low-bit all-reduces
  bool clip = false;      // quant::Config::clip
  int refine_layers = 0;  // EngineOptions::refine_layers
  std::string attn = "auto";
  std::string append_attn = "auto";  // --append-attn: pass-q, pass-kv or auto
  std::string layout = "zigzag";
  int threads = 0;
  std::string weights = "quant";  // quant: the file's types; f32: dequantized at load (the reference)
  int64_t gemm_threshold = 0;     // qmm::setGemmThreshold (0: the default)
  std::string oneshot = "auto";   // EngineOptions::oneshot
  SamplingOptions sampling;       // --temp --top-k --top-p --min-p --seed
  std::string json;
  TransportOptions transport;
  void add(CLI::App& app, bool grid_flags = true);  // grid_flags: --tp and --sp
  EngineOptions engineOptions() const;
  std::string modelPath() const;
  int ranks() const;
  // "group 128, spikes 2, rotate, clip, error feedback, refine 1": the low-bit options, for the reports.
  std::string codecDescription() const;
  // After parsing: the --comm presets (int4-refined) and the error-feedback default. Idempotent.
  void resolve();
  ModelOptions resolved() const;
  CommSetting commSetting() const;  // the communication flags as the library takes them
};
// What runModel() hands each rank.
struct ModelRank {
  Communicator& comm;
  LlamaEngine& engine;
  const Tokenizer& tok;
  const gguf::File& file;  // the model file (metadata: chat template, special tokens)
};

// Loads the model once per process (one file, one tokenizer, one weight shard per TP rank, shared by the
// thread ranks) and runs body on every rank with its engine.
void runModel(const ModelOptions& mo, const std::function<void(ModelRank&)>& body);
void runModel(const ModelOptions& mo, const std::function<void(Communicator&, LlamaEngine&, const Tokenizer&)>& body);

// JSON fields every model subcommand writes: the model and the plan.
nlohmann::json commonJson(const ModelOptions& mo);
void writeJson(const std::string& path, const nlohmann::json& j);
std::string readFile(const std::string& path);
double seconds(Clock::time_point a, Clock::time_point b);

// `flashring run` without --chat (run.cc). ctx_size: the context limit (0: the model's training context).
struct RunResult {
  bool root = false;  // this process ran rank 0 (the one that reports; under MPI every process returns)
  std::string model, text;
  int64_t prompt_tokens = 0, generated = 0;
  double ttft_s = 0, decode_s = 0, comm_s = 0, quant_s = 0, attn_s = 0, compute_s = 0;
  double prefill_wire_bytes = 0, wire_bytes = 0;
  SpScheme scheme = SpScheme::Auto;
};
RunResult runGenerate(const ModelOptions& mo, const std::string& prompt, int n_predict, bool stream,
                      int64_t ctx_size = 0);

// `flashring perplexity` (perplexity_cmd.cc): perplexity() of the library on every rank; rank 0 prints the
// running figures when `print`. kl: also run every window with exact communication and compare the two token
// by token (the figures of llama-perplexity --kl-divergence).
struct PplResult {
  bool root = false;  // this process ran rank 0
  PerplexityResult r;
};
PplResult runPerplexity(const ModelOptions& mo, const std::string& text, int n_ctx, int chunks, bool print,
                        bool kl = false);

void addRun(CLI::App& app);
void addPerplexity(CLI::App& app);
void addBenchTtft(CLI::App& bench);
void addBenchDecode(CLI::App& bench);

}  // namespace flashring::cli
