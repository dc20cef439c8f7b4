// --comm names of the engine's TP all-reduce (flashring/comm_setting.h).
#include "flashring/comm_setting.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>

#include "flashring/error.h"

namespace flashring {

AllreduceOptions commAllreduceOptions(const std::string& comm, int group_size, int spikes, bool rotate, bool clip,
                                      std::string_view what) {
  static const std::map<std::string, std::string> aliases = {
      {"exact", "twostep-fp32"},        {"bf16", "twostep-bf16"},        {"int8", "flash-int8"},
      {"int6", "flash-int6"},           {"int5", "flash-int5"},          {"int4", "flash-int4"},
      {"int4-int8", "flash-int4-int8"}, {"int8-int4", "flash-int8-int4"}};
  auto it = aliases.find(comm);
  AllreduceOptions base;
  base.reduce_scatter.group_size = base.all_gather.group_size = group_size;
  base.reduce_scatter.spikes = base.all_gather.spikes = spikes;
  base.reduce_scatter.rotate = base.all_gather.rotate = rotate;
  base.reduce_scatter.clip = base.all_gather.clip = clip;
  try {
    return allreduceOptionsFromName(it == aliases.end() ? comm : it->second, base);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(
        fmt::format("{} '{}': use exact, bf16, int8, int6, int5, int4, int4-int8, int8-int4, int4-refined, auto, or "
                    "an all-reduce name ({})",
                    what, comm, e.what()));
  }
}

bool lowBitComm(const std::string& comm) {
  static const std::set<std::string> low = {"int8", "int6", "int5", "int4", "int4-int8", "int8-int4", "int4-refined"};
  return low.count(comm) > 0 || comm.rfind("flash-", 0) == 0 || comm.rfind("oneshot-int", 0) == 0 ||
         (comm.rfind("hier-", 0) == 0 && comm.find("int") != std::string::npos);
}

void CommSetting::applyPreset() {
  if (comm == "int4-refined") {
    // The INT4 setting measured within 1% of exact communication on the default model (README).
    comm = "int4";
    rotate = clip = true;
    refine_layers = std::max(refine_layers, 2);
    if (error_feedback < 0) error_feedback = 1;
  }
}

bool CommSetting::errorFeedback() const {
  CommSetting c = *this;
  c.applyPreset();
  return c.error_feedback >= 0 ? c.error_feedback == 1 : lowBitComm(c.comm);
}

void CommSetting::apply(EngineOptions& e, std::string_view what) const {
  CommSetting c = *this;
  c.applyPreset();
  if (c.oneshot != "auto" && c.oneshot != "on" && c.oneshot != "off")
    throw InvalidArgument(fmt::format("oneshot '{}': use auto, on or off", c.oneshot));
  if (c.refine_layers < 0) throw InvalidArgument(fmt::format("refine_layers {}: must be >= 0", c.refine_layers));
  e.allreduce = commAllreduceOptions(c.comm, c.group_size, c.spikes, c.rotate, c.clip, what);
  e.error_feedback = c.errorFeedback();
  e.refine_layers = c.refine_layers;
  e.oneshot = c.oneshot == "on" ? OneShotMode::On : c.oneshot == "off" ? OneShotMode::Off : OneShotMode::Auto;
}

}  // namespace flashring
