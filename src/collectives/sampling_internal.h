// Private pieces of token choice shared by sampling.cc and token_choice.cc.
#pragma once

#include <string>

#include "flashring/sampling.h"

namespace flashring::detail {

// Empty when the options are valid; otherwise what validateSamplingOptions() would throw, naming the field.
std::string samplingOptionsError(const SamplingOptions& options);

}  // namespace flashring::detail
