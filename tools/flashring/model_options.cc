// The model flags of run, perplexity and bench ttft, and the per-process model cache.
#include "model_options.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "cli.h"
#include "flashring/comm_setting.h"
#include "flashring/cpu.h"
#include "flashring/gguf.h"
#include "flashring/llama.h"
#include "flashring/model_path.h"
#include "flashring/tokenizer.h"

namespace flashring::cli {

AllreduceOptions commOptions(const std::string& comm, int group_size, int spikes, bool rotate, bool clip) {
  return commAllreduceOptions(comm, group_size, spikes, rotate, clip, "--comm");
}

void ModelOptions::add(CLI::App& app, bool grid_flags) {
  app.add_option("-m,--model", model, "GGUF model (default: SmolLM2-135M-Instruct Q4_1 fetched by make deps)")
      ->capture_default_str();
  if (grid_flags) {
    app.add_option("--tp", tp, "tensor-parallel degree")->check(CLI::Range(1, 256))->capture_default_str();
    app.add_option("--sp", sp, "sequence-parallel degree")->check(CLI::Range(1, 256))->capture_default_str();
  }
  app.add_option(
         "--comm", comm,
         "TP all-reduce: exact (two-step fp32), bf16 (two-step bf16, the paper's baseline), int8, int6, int5, int4, "
         "int4-int8 (INT4 reduce-scatter, INT8 all-gather), int8-int4, auto, or any `bench allreduce` name; "
         "int4-refined: INT4 with error feedback, --rotate, --clip and --refine-layers 2, the INT4 setting "
         "measured within 1% of exact on the default model (+0.72% TP 3, +0.87% TP 4 on GPL-3)")
      ->capture_default_str();
  app.add_option("--group-size", group_size, "quantization group size of the low-bit all-reduces")
      ->check(CLI::Range(32, 4096))
      ->capture_default_str();
  app.add_option("--spikes", spikes,
                 "values per group of the low-bit all-reduces kept exactly in fp32 (spike reserving, for the "
                 "massive activations of LLaMA-family models); 0 = plain group-wise quantization")
      ->check(CLI::Range(0, 8))
      ->capture_default_str();
  app.add_flag_callback(
      "--no-error-feedback", [this] { error_feedback_flag = 0; }, "no error feedback, also for the low-bit codecs");
  app.add_flag_callback(
      "--error-feedback", [this] { error_feedback_flag = 1; },
      "carry each rank's quantization error of a TP all-reduce into its next one, and sum the last errors "
      "with one more all-reduce after the last layer (the residual stream then holds one all-reduce's error "
      "instead of the sum of all; INT8's perplexity change on the default model at TP 3 falls from +0.10% "
      "to +0.01%, INT4's from ~11% to ~2%). Default: on for the low-bit codecs (INT8 and below), off for "
      "exact and bf16");
  app.add_flag("--rotate", rotate,
               "rotate each group of the low-bit all-reduces by a randomized Hadamard transform before quantizing "
               "(spreads the error over the group; needs a power-of-two --group-size)");
  app.add_flag("--clip", clip,
               "search each group's clipping range for the smallest squared error (encoder only; with --rotate and "
               "--error-feedback INT4 g128 comes to ~1.3% of exact on the default model, from ~11% without them; "
               "with --refine-layers 2 too, to 0.6-0.9%)");
  app.add_option("--refine-layers", refine_layers,
                 "follow each TP all-reduce of the first N layers at once by one more all-reduce of the errors it "
                 "just made (one extra all-reduce per refined one: 2 per layer). Layer 0's all-reduces are most of "
                 "the residual stream there; with --error-feedback --rotate --clip, --refine-layers 2 takes INT4 "
                 "g128 from ~1.3% to 0.6-0.9% of exact on the default model for 6.6% more bytes")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  app.add_option("--attn", attn,
                 "SP attention: auto, tokenring, ring-kv, ulysses, allgather-kv, ulysses+tokenring, ulysses+ring-kv")
      ->check(CLI::IsMember({"auto", "tokenring", "ring-kv", "ulysses", "allgather-kv"}))
      ->capture_default_str();
  app.add_option("--append-attn", append_attn,
                 "attention of appended tokens (decode, chat turns) over the SP-sharded cache: pass-q (the new "
                 "queries travel), pass-kv (the caches travel to the owner; same results), or auto (the cost model "
                 "decides per call from the turn and cache lengths)")
      ->check(CLI::IsMember({"auto", "pass-q", "pass-kv"}))
      ->capture_default_str();
  app.add_option("--layout", layout, "sequence layout under SP: zigzag or contiguous")
      ->check(CLI::IsMember({"zigzag", "contiguous"}))
      ->capture_default_str();
  app.add_option("-t,--threads", threads,
                 "kernel (and OpenBLAS) threads per process (0: 1 when the process runs several ranks, else all "
                 "cores)")
      ->check(CLI::Range(0, 256));
  app.add_option("--weights", weights,
                 "quant: weights stay in the file's GGUF types (integer dots for decode, dequantized panels for "
                 "prefill); f32: dequantize every matrix at load (4 bytes per weight; the reference)")
      ->check(CLI::IsMember({"quant", "f32"}))
      ->capture_default_str();
  app.add_option("--gemm-threshold", gemm_threshold,
                 "batches of at least this many tokens run dequantized panels + sgemm, smaller ones integer dots "
                 "on 8-bit activations (0: the default, 16)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  app.add_option("--oneshot", oneshot,
                 "decode all-reduces as one-shot twins of --comm (one message round instead of two): auto (below "
                 "32 KiB), on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  app.add_option("--temp", sampling.temperature, "sampling temperature (0: greedy)")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  app.add_option("--top-k", sampling.top_k, "keep the k most likely tokens (0: off)")
      ->check(CLI::Range(0, 1 << 30))
      ->capture_default_str();
  app.add_option("--top-p", sampling.top_p,
                 "keep the smallest set of most likely tokens with probability >= p (1: off)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--min-p", sampling.min_p, "keep tokens with p >= min_p * p(most likely) (0: off)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--seed", sampling.seed, "sampling seed: the same tokens on every rank and from run to run");
  app.add_option("--json", json, "write the figures to this JSON file");
  app.add_option("--transport", transport.transport,
                 "thread (tp x sp ranks as threads of this process) or mpi (run under mpirun -n tp*sp)")
      ->check(CLI::IsMember({"thread", "mpi"}))
      ->capture_default_str();
  app.add_option("--timeout-ms", transport.timeout_ms,
                 "deadline of every wait (default 120000, or FLASHRING_TIMEOUT_MS)");
  app.add_option("--ranks-per-node", transport.ranks_per_node,
                 "treat consecutive blocks of this many ranks as one node (emulated multi-node topologies: "
                 "bench/netem --topology nodes:RxK sets it for MPI); the hierarchical all-reduce (--comm "
                 "hier-bf16-int4, ...) and Auto use it")
      ->check(CLI::PositiveNumber);
}

CommSetting ModelOptions::commSetting() const {
  CommSetting c;
  c.comm = comm;
  c.group_size = group_size;
  c.spikes = spikes;
  c.error_feedback = error_feedback_flag;
  c.rotate = rotate;
  c.clip = clip;
  c.refine_layers = refine_layers;
  c.oneshot = oneshot;
  return c;
}

void ModelOptions::resolve() {
  CommSetting c = commSetting();
  c.applyPreset();
  comm = c.comm;
  rotate = c.rotate;
  clip = c.clip;
  refine_layers = c.refine_layers;
  error_feedback_flag = c.error_feedback;
  error_feedback = c.errorFeedback();
}

ModelOptions ModelOptions::resolved() const {
  ModelOptions r = *this;
  r.resolve();
  return r;
}

EngineOptions ModelOptions::engineOptions() const {
  EngineOptions e;
  e.tp = tp;
  e.sp = sp;
  CommSetting c = commSetting();
  c.error_feedback = error_feedback ? 1 : 0;  // as resolve() decided, or as a caller set it afterwards
  c.apply(e, "--comm");
  e.sampling = sampling;
  e.attention = spSchemeFromName(attn);
  e.append_attention = append_attn == "pass-q"    ? SpScheme::TokenRing
                       : append_attn == "pass-kv" ? SpScheme::AllGatherKV
                                                  : SpScheme::Auto;
  e.layout = layout == "contiguous" ? SeqLayout::Contiguous : SeqLayout::Zigzag;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  e.threads = threads > 0 ? threads : (tp * sp == 1 && transport.transport == "thread" ? static_cast<int>(cores) : 1);
  return e;
}

std::string ModelOptions::codecDescription() const {
  return fmt::format("group {}, spikes {}{}{}{}{}", group_size, spikes, rotate ? ", rotate" : "", clip ? ", clip" : "",
                     error_feedback ? ", error feedback" : "",
                     refine_layers > 0 ? fmt::format(", refine {}", refine_layers) : "");
}

std::string ModelOptions::modelPath() const { return model.empty() ? defaultModelPath() : model; }

namespace {

// One model file, one tokenizer and one weight shard per TP rank, shared by the thread ranks of a process.
struct ModelCache {
  std::mutex mu;
  std::shared_ptr<const gguf::File> file;
  std::unique_ptr<Tokenizer> tokenizer;
  std::map<int, std::shared_ptr<const LlamaWeights>> shards;
  LoadOptions load;

  explicit ModelCache(const std::string& path, const LoadOptions& lo = {}) : load(lo) {
    if (!std::filesystem::exists(path)) {
      throw InvalidArgument(fmt::format(
          "model file '{}' not found; run `make deps` (it fetches the default model) or pass -m MODEL.gguf", path));
    }
    file = std::make_shared<const gguf::File>(gguf::File::open(path));
    tokenizer = std::make_unique<Tokenizer>(Tokenizer::fromGguf(*file));
  }
  std::shared_ptr<const LlamaWeights> shard(int tp, int tp_rank) {
    std::lock_guard<std::mutex> lock(mu);
    auto& s = shards[tp_rank];
    if (!s) s = LlamaWeights::load(file, tp, tp_rank, load);
    return s;
  }
};

}  // namespace

int ModelOptions::ranks() const { return tp * sp; }

void runModel(const ModelOptions& mo, const std::function<void(ModelRank&)>& body) {
  LoadOptions lo;
  lo.dequantize = mo.weights == "f32";
  auto cache = std::make_shared<ModelCache>(mo.modelPath(), lo);
  if (mo.gemm_threshold > 0) qmm::setGemmThreshold(mo.gemm_threshold);
  EngineOptions eo = mo.engineOptions();
  // The kernel thread count is process-wide: set it once here, not from every rank's thread.
  cpu::setThreads(eo.threads);
  eo.threads = 0;
  TransportOptions t = mo.transport;
  t.ranks = mo.ranks();
  runOnTransport(t, [&](Communicator& comm) {
    if (comm.size() != mo.ranks())
      throw InvalidArgument(fmt::format("--tp {} x --sp {} needs {} ranks; the job has {} (mpirun -n {})", mo.tp, mo.sp,
                                        mo.ranks(), comm.size(), mo.ranks()));
    auto weights = cache->shard(mo.tp, comm.rank() % mo.tp);
    LlamaEngine engine(comm, weights, eo);
    ModelRank rank{comm, engine, *cache->tokenizer, *cache->file};
    body(rank);
  });
}

void runModel(const ModelOptions& mo, const std::function<void(Communicator&, LlamaEngine&, const Tokenizer&)>& body) {
  runModel(mo, [&](ModelRank& r) { body(r.comm, r.engine, r.tok); });
}

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InvalidArgument(fmt::format("cannot read '{}'", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void writeJson(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path);
  if (!out) throw InvalidArgument(fmt::format("cannot write '{}'", path));
  // Replies and texts need not be valid UTF-8 (a token can end inside a character): replace what is not.
  out << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
}

nlohmann::json commonJson(const ModelOptions& mo) {
  return {{"model", mo.modelPath()},
          {"tp", mo.tp},
          {"sp", mo.sp},
          {"comm", mo.comm},
          {"group_size", mo.group_size},
          {"spikes", mo.spikes},
          {"error_feedback", mo.error_feedback},
          {"rotate", mo.rotate},
          {"clip", mo.clip},
          {"refine_layers", mo.refine_layers},
          {"attn", mo.attn},
          {"append_attn", mo.append_attn},
          {"layout", mo.layout},
          {"transport", mo.transport.transport},
          {"ranks", mo.ranks()}};
}

}  // namespace flashring::cli
