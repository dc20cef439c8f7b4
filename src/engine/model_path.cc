#include "flashring/model_path.h"

#include <cstdlib>
#include <filesystem>

namespace flashring {

std::string defaultModelPath() {
  if (const char* m = std::getenv("FLASHRING_MODEL"); m && *m) return m;
  std::filesystem::path dir;
  if (const char* d = std::getenv("FLASHRING_MODEL_DIR"); d && *d) {
    dir = d;
  } else if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) {
    dir = std::filesystem::path(x) / "flashring" / "models";
  } else {
    const char* home = std::getenv("HOME");
    dir = std::filesystem::path(home && *home ? home : ".") / ".cache" / "flashring" / "models";
  }
  return (dir / kDefaultModelFile).string();
}

std::string findDefaultModel() {
  std::string p = defaultModelPath();
  std::error_code ec;
  return std::filesystem::is_regular_file(p, ec) ? p : std::string();
}

}  // namespace flashring
