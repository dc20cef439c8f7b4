// Sampling options and the Sampler's random stream (sampling.h).
#include "flashring/sampling.h"

#include <fmt/format.h>

#include <cmath>

#include "collectives/sampling_internal.h"

namespace flashring {

namespace detail {

std::string samplingOptionsError(const SamplingOptions& o) {
  if (!(o.temperature >= 0.f) || !std::isfinite(o.temperature))
    return fmt::format("SamplingOptions.temperature must be finite and >= 0 (0 = greedy), got {}", o.temperature);
  if (o.top_k < 0) return fmt::format("SamplingOptions.top_k must be >= 0 (0 = off), got {}", o.top_k);
  if (!(o.top_p > 0.f && o.top_p <= 1.f))
    return fmt::format("SamplingOptions.top_p must be in (0, 1] (1 = off), got {}", o.top_p);
  if (!(o.min_p >= 0.f && o.min_p < 1.f))
    return fmt::format("SamplingOptions.min_p must be in [0, 1) (0 = off), got {}", o.min_p);
  return {};
}

}  // namespace detail

void validateSamplingOptions(const SamplingOptions& options) {
  std::string e = detail::samplingOptionsError(options);
  if (!e.empty()) throw InvalidArgument(e);
}

uint64_t Sampler::mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Sampler::nextU64() {
  ++step_;
  return mix64(seed_ + step_ * 0x9E3779B97F4A7C15ull);
}

double Sampler::nextDouble() { return static_cast<double>(nextU64() >> 11) * 0x1.0p-53; }

}  // namespace flashring
