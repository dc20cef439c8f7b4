#include "flashring/allreduce.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <utility>
#include <vector>

#include "collectives/algorithms.h"
#include "collectives/codec.h"
#include "collectives/common.h"

namespace flashring {

namespace {
// Auto below auto_threshold_bytes: OneShot or TwoStep fp32 (allreduce.h states the rule and the model).
AllreduceAlgorithm exactChoice(const AllreduceOptions& o, size_t bytes, int ranks) {
  if (!o.link.known())
    return bytes < o.oneshot_threshold_bytes ? AllreduceAlgorithm::OneShot : AllreduceAlgorithm::TwoStep;
  const double N = std::max(ranks, 1), B = static_cast<double>(bytes), a = o.link.latency_s, bw = o.link.bandwidth_Bps;
  const double one = o.link.mesh ? a + B / bw : a + (N - 1) * B / bw;
  const double two = o.link.mesh ? 2 * a + 2 * B / (N * bw) : 2 * a + 2 * (N - 1) / N * B / bw;
  return one < two ? AllreduceAlgorithm::OneShot : AllreduceAlgorithm::TwoStep;
}

// What Auto means for `count` floats on `ranks` ranks: exact fp32 below the threshold (one-shot or two-step),
// quantized above. Returns the options that actually run (algorithm resolved, payload fp32 for Auto's exact
// paths).
// multi_node: the ranks span several nodes of several ranks each (Auto then goes hierarchical above the
// threshold, bf16 inside the nodes and the reduce_scatter codec between them).
AllreduceOptions resolve(const AllreduceOptions& o, size_t count, int ranks, bool multi_node) {
  if (o.algorithm != AllreduceAlgorithm::Auto) return o;
  AllreduceOptions r = o;
  const size_t bytes = count * sizeof(float);
  if (bytes < o.auto_threshold_bytes) {
    r.algorithm = exactChoice(o, bytes, ranks);
  } else if (multi_node) {
    r.algorithm = AllreduceAlgorithm::Hierarchical;
    r.hier.intra = StageCodec{0, Payload::BF16};
    r.hier.inter = StageCodec{o.reduce_scatter.bits, Payload::F32};
    r.hier.inter_oneshot = false;
  } else {
    r.algorithm = AllreduceAlgorithm::Quantized;
  }
  r.payload = Payload::F32;
  r.oneshot_quantized = false;
  return r;
}

// From the options alone: hier.ranks_per_node > 0 dividing ranks into >= 2 nodes of >= 2 ranks.
bool multiNodeFromOptions(const AllreduceOptions& o, int ranks) {
  const int k = o.hier.ranks_per_node;
  return k >= 2 && ranks % k == 0 && ranks / k >= 2;
}

bool multiNode(const Communicator& comm, const AllreduceOptions& o) {
  if (o.hier.ranks_per_node > 0) return multiNodeFromOptions(o, comm.size());
  // Several nodes of the same size >= 2 (what Hierarchical runs on); unequal nodes stay flat instead of failing.
  const std::vector<int> ids = normalizeNodeIds(comm.nodeIds());
  const int nodes = ids.empty() ? 1 : 1 + *std::max_element(ids.begin(), ids.end());
  std::vector<int> count(static_cast<size_t>(nodes), 0);
  for (int id : ids) ++count[static_cast<size_t>(id)];
  return nodes >= 2 && count[0] >= 2 && std::all_of(count.begin(), count.end(), [&](int c) { return c == count[0]; });
}

bool validBits(int b) { return b == 0 || b == 8 || b == 6 || b == 5 || b == 4; }

void validate(const AllreduceOptions& o, int rank) {
  try {
    if (o.algorithm == AllreduceAlgorithm::Quantized || o.algorithm == AllreduceAlgorithm::Auto) {
      quant::validate(o.reduce_scatter);
      quant::validate(o.all_gather);
    }
    if (o.algorithm == AllreduceAlgorithm::OneShot && o.oneshot_quantized) quant::validate(o.reduce_scatter);
    if (o.algorithm == AllreduceAlgorithm::Hierarchical) {
      if (!validBits(o.hier.intra.bits) || !validBits(o.hier.inter.bits))
        throw InvalidArgument(fmt::format("hierarchical stage bits {} / {}: expected 0 (exact), 8, 6, 5 or 4",
                                          o.hier.intra.bits, o.hier.inter.bits));
      if (o.hier.intra.bits > 0 || o.hier.inter.bits > 0) quant::validate(o.reduce_scatter);
      if (o.hier.ranks_per_node < 0) throw InvalidArgument("hier.ranks_per_node must be >= 0");
    }
    if (o.algorithm == AllreduceAlgorithm::Auto && o.link.known() &&
        !(o.link.latency_s >= 0 && std::isfinite(o.link.latency_s) && std::isfinite(o.link.bandwidth_Bps)))
      throw InvalidArgument(fmt::format("link model: latency {} s must be finite and >= 0, bandwidth {} B/s finite",
                                        o.link.latency_s, o.link.bandwidth_Bps));
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(fmt::format("allreduce options: {}", e.what()), rank);
  }
}

void allreduceImpl(Communicator& comm, std::span<float> data, float* error, const AllreduceOptions& options,
                   AllreduceStats* stats, const ExecContext& ctx = {}) {
  AllreduceStats local;
  AllreduceStats& st = stats ? *stats : local;
  st = AllreduceStats{};
  validate(options, comm.rank());
  if (data.data() == nullptr && !data.empty())
    throw InvalidArgument(fmt::format("allreduce: null buffer of {} elements", data.size()), comm.rank());
  const bool multi = options.algorithm == AllreduceAlgorithm::Auto &&
                     data.size() * sizeof(float) >= options.auto_threshold_bytes && multiNode(comm, options);
  const AllreduceOptions run = resolve(options, data.size(), comm.size(), multi);
  AllreduceAlgorithm algo = run.algorithm;
  const Payload payload = run.payload;
  const bool device = ctx.ops != nullptr && ctx.ops->memory() != MemoryKind::Host;
  if (device && options.algorithm == AllreduceAlgorithm::Auto)  // the device runs the two-step only (so far)
    algo = data.size() * sizeof(float) >= options.auto_threshold_bytes ? AllreduceAlgorithm::Quantized
                                                                       : AllreduceAlgorithm::TwoStep;
  if (device && algo != AllreduceAlgorithm::TwoStep && algo != AllreduceAlgorithm::Quantized)
    throw InvalidArgument(fmt::format("allreduce: {} on {} memory is not available; the device runs twostep-* and "
                                      "flash-* (the pipelined two-step)",
                                      allreduceAlgorithmName(algo), ctx.ops->name()),
                          comm.rank());
  st.algorithm = algo;
  if (comm.size() == 1) return;  // the sum over one rank is the buffer itself, bit for bit
  // An empty buffer still takes part (a peer with a non-empty one must get an error, not a hang); give
  // it a non-null address so the algorithms' zero-length copies stay defined.
  float empty_slot = 0;
  if (data.empty()) data = std::span<float>(&empty_slot, 0);

  const uint64_t sent0 = comm.bytesSent();
  Workspace& ws = detail::workspaceOf(comm, options.workspace);
  detail::abortOnError(comm, "all-reduce", [&] {
    switch (algo) {
      case AllreduceAlgorithm::Ring:
        detail::ringAllreduce(comm, data, payload, ws, st);
        break;
      case AllreduceAlgorithm::TwoStep:
        detail::twoStepAllreduce(comm, data, payload, options.chunk_elems, ws, st, error, ctx);
        break;
      case AllreduceAlgorithm::Quantized:
        detail::quantizedAllreduce(comm, data, run, ws, st, error, ctx);
        break;
      case AllreduceAlgorithm::OneShot:
        detail::oneShotAllreduce(comm, data, run, ws, st, error);
        break;
      case AllreduceAlgorithm::Hierarchical:
        detail::hierarchicalAllreduce(comm, data, run, ws, st, error);
        break;
      case AllreduceAlgorithm::Native: {
        if (options.check_sizes) checkSameOnAllRanks(comm, data.size(), "allreduce element count");
        detail::Stopwatch w(st.wait_s);
        comm.nativeAllreduceSum(data.data(), data.size(), comm.deadline(), options.native_blocking);
        break;
      }
      case AllreduceAlgorithm::Auto:
        break;
    }
  });
  st.wire_bytes = comm.bytesSent() - sent0;
}
}  // namespace

void allreduce(Communicator& comm, std::span<float> data, const AllreduceOptions& options, AllreduceStats* stats) {
  allreduceImpl(comm, data, nullptr, options, stats);
}

void allreduce(Communicator& comm, const TensorView& data, const AllreduceOptions& options, AllreduceStats* stats) {
  const ExecContext& ctx = options.exec;
  data.checkContiguous("allreduce");
  const size_t n = static_cast<size_t>(data.numel());
  if (data.device.kind == MemoryKind::Host) {
    if (ctx.ops != nullptr && ctx.ops->memory() != MemoryKind::Host)
      throw InvalidArgument(fmt::format("allreduce: {} is host memory but the context's verbs are {}'s",
                                        data.describe(), ctx.ops->name()),
                            comm.rank());
    if (data.dtype == DType::F32) {
      allreduceImpl(comm, std::span<float>(static_cast<float*>(data.data), n), nullptr, options, stats);
      return;
    }
    if (data.dtype == DType::F16)
      throw InvalidArgument(fmt::format("allreduce: {}: host fp16 is not supported; pass f32 or bf16", data.describe()),
                            comm.rank());
    std::vector<float> wide(n);
    auto* b = static_cast<uint16_t*>(data.data);
    quant::fromBf16(b, n, wide.data());
    allreduceImpl(comm, wide, nullptr, options, stats);
    quant::toBf16(wide.data(), n, b);
    return;
  }
  if (ctx.ops == nullptr || ctx.ops->memory() != data.device.kind)
    throw InvalidArgument(fmt::format("allreduce: {} needs the verbs of its memory in the ExecContext "
                                      "(AllreduceOptions::exec = cuda::context(stream), flashring/cuda/context.h)",
                                      data.describe()),
                          comm.rank());
  if (!comm.movesMemory(data.device.kind))
    throw InvalidArgument(fmt::format("allreduce: the {} transport does not move {} memory ({}); use NCCL or the "
                                      "one-GPU thread world (cuda/thread_world.h)",
                                      comm.transport(), memoryKindName(data.device.kind), data.describe()),
                          comm.rank());
  if (data.dtype != DType::F32)
    throw InvalidArgument(fmt::format("allreduce: {}: device tensors must be f32", data.describe()), comm.rank());
  allreduceImpl(comm, std::span<float>(static_cast<float*>(data.data), n), nullptr, options, stats, ctx);
}

void allreduceWithError(Communicator& comm, std::span<float> data, std::span<float> error,
                        const AllreduceOptions& options, AllreduceStats* stats) {
  if (error.size() != data.size())
    throw InvalidArgument(fmt::format("allreduceWithError: error has {} elements, data {}", error.size(), data.size()),
                          comm.rank());
  if (!error.empty() && (error.data() < data.data() + data.size() && data.data() < error.data() + error.size()))
    throw InvalidArgument("allreduceWithError: error overlaps data", comm.rank());
  std::fill(error.begin(), error.end(), 0.f);
  allreduceImpl(comm, data, error.empty() ? nullptr : error.data(), options, stats);
}

std::string allreduceAlgorithmName(AllreduceAlgorithm a) {
  switch (a) {
    case AllreduceAlgorithm::Auto:
      return "auto";
    case AllreduceAlgorithm::Ring:
      return "ring";
    case AllreduceAlgorithm::TwoStep:
      return "twostep";
    case AllreduceAlgorithm::Quantized:
      return "flash";
    case AllreduceAlgorithm::Native:
      return "native";
    case AllreduceAlgorithm::OneShot:
      return "oneshot";
    case AllreduceAlgorithm::Hierarchical:
      return "hierarchical";
  }
  return "?";
}

AllreduceAlgorithm allreduceAutoChoice(size_t count, int ranks, const AllreduceOptions& options) {
  return resolve(options, count, ranks, multiNodeFromOptions(options, ranks)).algorithm;
}

AllreduceOptions allreduceOptionsFromName(std::string_view name, const AllreduceOptions& base) {
  AllreduceOptions o = base;
  auto codec = [&](int b1, int b2) {
    o.algorithm = AllreduceAlgorithm::Quantized;
    o.reduce_scatter.bits = b1;
    o.all_gather.bits = b2;
  };
  auto oneshot = [&](int bits) {  // bits 0: the payload
    o.algorithm = AllreduceAlgorithm::OneShot;
    o.oneshot_quantized = bits > 0;
    if (bits > 0) o.reduce_scatter.bits = bits;
  };
  if (name == "ring-fp32") {
    o.algorithm = AllreduceAlgorithm::Ring, o.payload = Payload::F32;
  } else if (name == "ring-bf16") {
    o.algorithm = AllreduceAlgorithm::Ring, o.payload = Payload::BF16;
  } else if (name == "twostep-fp32") {
    o.algorithm = AllreduceAlgorithm::TwoStep, o.payload = Payload::F32;
  } else if (name == "twostep-bf16") {
    o.algorithm = AllreduceAlgorithm::TwoStep, o.payload = Payload::BF16;
  } else if (name == "mpi" || name == "native") {
    o.algorithm = AllreduceAlgorithm::Native;
  } else if (name == "auto") {
    o.algorithm = AllreduceAlgorithm::Auto;
  } else if (name == "flash-int8") {
    codec(8, 8);
  } else if (name == "flash-int4") {
    codec(4, 4);
  } else if (name == "flash-int6") {
    codec(6, 6);
  } else if (name == "flash-int5") {
    codec(5, 5);
  } else if (name == "flash-int4-int8") {
    codec(4, 8);
  } else if (name == "flash-int8-int4") {
    codec(8, 4);
  } else if (name == "oneshot-fp32") {
    oneshot(0), o.payload = Payload::F32;
  } else if (name == "oneshot-bf16") {
    oneshot(0), o.payload = Payload::BF16;
  } else if (name == "oneshot-int8") {
    oneshot(8);
  } else if (name == "oneshot-int6") {
    oneshot(6);
  } else if (name == "oneshot-int5") {
    oneshot(5);
  } else if (name == "oneshot-int4") {
    oneshot(4);
  } else if (name.substr(0, 5) == "hier-") {
    // hier-<intra>-<inter> or hier-<intra>-oneshot-<inter>
    auto stage = [&](std::string_view c, StageCodec& out) {
      if (c == "fp32") return out = {0, Payload::F32}, true;
      if (c == "bf16") return out = {0, Payload::BF16}, true;
      if (c == "int8") return out = {8, Payload::F32}, true;
      if (c == "int6") return out = {6, Payload::F32}, true;
      if (c == "int5") return out = {5, Payload::F32}, true;
      if (c == "int4") return out = {4, Payload::F32}, true;
      return false;
    };
    std::string_view rest = name.substr(5);
    const size_t dash = rest.find('-');
    bool ok = dash != std::string_view::npos && stage(rest.substr(0, dash), o.hier.intra);
    std::string_view inter = ok ? rest.substr(dash + 1) : std::string_view{};
    o.hier.inter_oneshot = inter.substr(0, 8) == "oneshot-";
    if (o.hier.inter_oneshot) inter = inter.substr(8);
    ok = ok && stage(inter, o.hier.inter);
    if (!ok)
      throw InvalidArgument(
          fmt::format("unknown hierarchical all-reduce '{}': expected hier-<intra>-<inter> or "
                      "hier-<intra>-oneshot-<inter>, each of fp32, bf16, int8, int6, int5, int4 "
                      "(e.g. hier-bf16-int4)",
                      name));
    o.algorithm = AllreduceAlgorithm::Hierarchical;
  } else {
    throw InvalidArgument(fmt::format(
        "unknown all-reduce algorithm '{}' (valid: ring-fp32, ring-bf16, twostep-fp32, twostep-bf16, mpi, auto, "
        "flash-int8, flash-int6, flash-int5, flash-int4, flash-int4-int8, flash-int8-int4, oneshot-fp32, oneshot-bf16, "
        "oneshot-int8, oneshot-int6, oneshot-int5, oneshot-int4, hier-<intra>-<inter>, hier-<intra>-oneshot-<inter>)",
        name));
  }
  return o;
}

namespace {
// Hierarchical: (intra-node bytes, inter-node bytes) of one rank, the layout from hier.ranks_per_node.
std::pair<uint64_t, uint64_t> hierBytes(size_t count, int ranks, const AllreduceOptions& o) {
  const int k = o.hier.ranks_per_node > 0 && ranks % o.hier.ranks_per_node == 0 ? o.hier.ranks_per_node : ranks;
  const uint64_t K = static_cast<uint64_t>(k);
  const detail::Codec ci = detail::stageCodec(o.hier.intra, o.reduce_scatter);
  const uint64_t intra = k > 1 ? 2 * (K - 1) * ci.bytes(count / K) : 0;
  const uint64_t inter = ranks / k > 1 ? allreduceWireBytes(count / K, ranks / k, detail::interOptions(o)) : 0;
  return {intra, inter};
}
}  // namespace

uint64_t allreduceInterNodeBytes(size_t count, int ranks, const AllreduceOptions& o) {
  const AllreduceOptions r = resolve(o, count, ranks, multiNodeFromOptions(o, ranks));
  if (r.algorithm == AllreduceAlgorithm::Hierarchical) return hierBytes(count, ranks, r).second;
  const int k = o.hier.ranks_per_node > 0 && ranks % o.hier.ranks_per_node == 0 ? o.hier.ranks_per_node : ranks;
  // A flat algorithm spreads its bytes evenly over the peers: those on other nodes get (N-K)/(N-1) of them.
  const uint64_t all = allreduceWireBytes(count, ranks, r);
  return ranks > 1 ? all * static_cast<uint64_t>(ranks - k) / static_cast<uint64_t>(ranks - 1) : 0;
}

uint64_t allreduceWireBytes(size_t count, int ranks, const AllreduceOptions& o) {
  if (ranks <= 1) return 0;
  const uint64_t N = static_cast<uint64_t>(ranks);
  // The model figure (nccl-tests' busbw convention): each stage sends (N-1)/N of the buffer. A rank's
  // exact count differs by its slice's rounding; the benchmark reports the measured one beside it.
  auto exact = [&](uint64_t esize) { return 2 * (N - 1) * count * esize / N; };
  const AllreduceOptions r = resolve(o, count, ranks, multiNodeFromOptions(o, ranks));
  switch (r.algorithm) {
    case AllreduceAlgorithm::Hierarchical: {
      const auto [intra, inter] = hierBytes(count, ranks, r);
      return intra + inter;
    }
    case AllreduceAlgorithm::Ring:
    case AllreduceAlgorithm::TwoStep:
      return exact(r.payload == Payload::BF16 ? 2 : 4);
    case AllreduceAlgorithm::Native:
      return exact(4);
    case AllreduceAlgorithm::Quantized: {
      const uint64_t per = (N - 1) * count / N;
      return quant::encodedBytes(per, o.reduce_scatter) + quant::encodedBytes(per, o.all_gather);
    }
    case AllreduceAlgorithm::OneShot:  // the whole encoding to each of the N-1 peers
      return (N - 1) * (r.oneshot_quantized ? quant::encodedBytes(count, r.reduce_scatter)
                                            : count * (r.payload == Payload::BF16 ? 2 : 4));
    case AllreduceAlgorithm::Auto:
      break;
  }
  return 0;
}

}  // namespace flashring
