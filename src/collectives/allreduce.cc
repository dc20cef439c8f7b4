#include "flashring/allreduce.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "collectives/algorithms.h"
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
AllreduceOptions resolve(const AllreduceOptions& o, size_t count, int ranks) {
  if (o.algorithm != AllreduceAlgorithm::Auto) return o;
  AllreduceOptions r = o;
  const size_t bytes = count * sizeof(float);
  r.algorithm = bytes < o.auto_threshold_bytes ? exactChoice(o, bytes, ranks) : AllreduceAlgorithm::Quantized;
  r.payload = Payload::F32;
  r.oneshot_quantized = false;
  return r;
}

void validate(const AllreduceOptions& o, int rank) {
  try {
    if (o.algorithm == AllreduceAlgorithm::Quantized || o.algorithm == AllreduceAlgorithm::Auto) {
      quant::validate(o.reduce_scatter);
      quant::validate(o.all_gather);
    }
    if (o.algorithm == AllreduceAlgorithm::OneShot && o.oneshot_quantized) quant::validate(o.reduce_scatter);
    if (o.algorithm == AllreduceAlgorithm::Auto && o.link.known() &&
        !(o.link.latency_s >= 0 && std::isfinite(o.link.latency_s) && std::isfinite(o.link.bandwidth_Bps)))
      throw InvalidArgument(fmt::format("link model: latency {} s must be finite and >= 0, bandwidth {} B/s finite",
                                        o.link.latency_s, o.link.bandwidth_Bps));
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(fmt::format("allreduce options: {}", e.what()), rank);
  }
}

void allreduceImpl(Communicator& comm, std::span<float> data, float* error, const AllreduceOptions& options,
                   AllreduceStats* stats) {
  AllreduceStats local;
  AllreduceStats& st = stats ? *stats : local;
  st = AllreduceStats{};
  validate(options, comm.rank());
  if (data.data() == nullptr && !data.empty())
    throw InvalidArgument(fmt::format("allreduce: null buffer of {} elements", data.size()), comm.rank());
  const AllreduceOptions run = resolve(options, data.size(), comm.size());
  const AllreduceAlgorithm algo = run.algorithm;
  const Payload payload = run.payload;
  st.algorithm = algo;
  if (comm.size() == 1) return;  // the sum over one rank is the buffer itself, bit for bit
  // An empty buffer still takes part (a peer with a non-empty one must get an error, not a hang); give
  // it a non-null address so the algorithms' zero-length copies stay defined.
  float empty_slot = 0;
  if (data.empty()) data = std::span<float>(&empty_slot, 0);

  const uint64_t sent0 = comm.bytesSent();
  detail::abortOnError(comm, "all-reduce", [&] {
    switch (algo) {
      case AllreduceAlgorithm::Ring:
        detail::ringAllreduce(comm, data, payload, st);
        break;
      case AllreduceAlgorithm::TwoStep:
        detail::twoStepAllreduce(comm, data, payload, options.chunk_elems, st, error);
        break;
      case AllreduceAlgorithm::Quantized:
        detail::quantizedAllreduce(comm, data, run, st, error);
        break;
      case AllreduceAlgorithm::OneShot:
        detail::oneShotAllreduce(comm, data, run, st, error);
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
  }
  return "?";
}

AllreduceAlgorithm allreduceAutoChoice(size_t count, int ranks, const AllreduceOptions& options) {
  return resolve(options, count, ranks).algorithm;
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
  } else {
    throw InvalidArgument(fmt::format(
        "unknown all-reduce algorithm '{}' (valid: ring-fp32, ring-bf16, twostep-fp32, twostep-bf16, mpi, auto, "
        "flash-int8, flash-int6, flash-int5, flash-int4, flash-int4-int8, flash-int8-int4, oneshot-fp32, oneshot-bf16, "
        "oneshot-int8, oneshot-int6, oneshot-int5, oneshot-int4)",
        name));
  }
  return o;
}

uint64_t allreduceWireBytes(size_t count, int ranks, const AllreduceOptions& o) {
  if (ranks <= 1) return 0;
  const uint64_t N = static_cast<uint64_t>(ranks);
  // The model figure (nccl-tests' busbw convention): each stage sends (N-1)/N of the buffer. A rank's
  // exact count differs by its slice's rounding; the benchmark reports the measured one beside it.
  auto exact = [&](uint64_t esize) { return 2 * (N - 1) * count * esize / N; };
  const AllreduceOptions r = resolve(o, count, ranks);
  switch (r.algorithm) {
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
