// The TP communication of an engine by name, as `flashring --comm NAME` and flashring.Llama(comm=NAME) take it:
// exact (two-step fp32), bf16 (two-step bf16), int8, int6, int5, int4, int4-int8 (INT4 reduce-scatter, INT8
// all-gather), int8-int4, auto, any allreduceOptionsFromName() name (`flashring bench allreduce`'s), and the
// preset int4-refined (INT4 with error feedback, rotation, clipping and two refined layers: the INT4 setting
// measured within 1% of exact communication on the default model).
#pragma once

#include <string>
#include <string_view>

#include "flashring/allreduce.h"
#include "flashring/llama.h"

namespace flashring {

// The all-reduce a --comm name stands for (presets resolved first, see CommSetting::applyPreset). rotate/clip:
// quant::Config::rotate and ::clip of both stages (ignored by the exact algorithms). Throws InvalidArgument
// "`what` 'NAME': use exact, bf16, ..." for a name it does not know.
AllreduceOptions commAllreduceOptions(const std::string& comm, int group_size, int spikes, bool rotate = false,
                                      bool clip = false, std::string_view what = "comm");

// Whether `comm` quantizes below 16 bits: int8, int6, int5, int4, int4-int8, int8-int4, int4-refined, the
// flash-* / oneshot-int* all-reduce names and the hierarchical ones with a quantized stage (hier-bf16-int4).
bool lowBitComm(const std::string& comm);

struct CommSetting {
  std::string comm = "exact";
  int group_size = 128;  // quantization group of the low-bit all-reduces
  int spikes = 2;        // values per group kept in fp32 (spike reserving; the models' massive activations)
  // EngineOptions::error_feedback: 1 on, 0 off, -1 the default (on for the low-bit codecs, off otherwise).
  int error_feedback = -1;
  bool rotate = false, clip = false;
  int refine_layers = 0;         // EngineOptions::refine_layers
  std::string oneshot = "auto";  // EngineOptions::oneshot: auto, on, off

  // Expands a preset name (int4-refined: int4 with rotate, clip, refine_layers >= 2 and error feedback unless
  // it was turned off). Idempotent; other names are left as they are.
  void applyPreset();
  bool errorFeedback() const;  // the resolved EngineOptions::error_feedback
  // Sets e.allreduce, error_feedback, refine_layers and oneshot (from a copy with the preset applied). Throws
  // InvalidArgument naming `what` for an unknown name, and for an oneshot other than auto / on / off.
  void apply(EngineOptions& e, std::string_view what = "comm") const;
};

}  // namespace flashring
