// libFuzzer target for the GGUF reader: parse any bytes with File::fromMemory, then use everything the
// parse produced (every metadata getter on every key, every tensor's data, small tensors dequantized).
// Only flashring::Error may come out of the library; a crash, a sanitizer report or any other exception
// is a bug. Built with clang -fsanitize=fuzzer by `make fuzz`; the same function replays the checked-in
// corpus in every build (fuzz_replay_main.cc, CTest fuzz.gguf_corpus).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "flashring/error.h"
#include "flashring/gguf.h"

namespace {

template <class Fn>
void quietly(Fn&& fn) {
  try {
    fn();
  } catch (const flashring::Error&) {
  }
}

constexpr int64_t kMaxDequantElements = int64_t{1} << 16;

void exercise(const flashring::gguf::File& f) {
  using namespace flashring::gguf;
  (void)f.version();
  (void)f.alignment();
  (void)f.path();
  for (const auto& entry : f.metadata()) {
    const std::string& key = entry.first;  // not a structured binding: clang 14 cannot capture those
    (void)f.has(key);
    quietly([&] { (void)f.getString(key); });
    quietly([&] { (void)f.getInt(key); });
    quietly([&] { (void)f.getFloat(key); });
    quietly([&] { (void)f.getBool(key); });
    quietly([&] { (void)f.getStringArray(key); });
    quietly([&] { (void)f.getIntArray(key); });
    quietly([&] { (void)f.getFloatArray(key); });
    quietly([&] { (void)f.getInt(key, 1); });
    quietly([&] { (void)f.getFloat(key, 1.0); });
    quietly([&] { (void)f.getString(key, "x"); });
  }
  quietly([&] { (void)f.getInt("general.alignment", 32); });
  quietly([&] { (void)f.tensor("no such tensor"); });
  for (const TensorInfo& t : f.tensors()) {
    (void)f.find(t.name);
    (void)f.tensor(t.name);
    const std::span<const uint8_t> raw = f.data(t);
    volatile uint8_t sink = 0;
    if (!raw.empty()) sink = static_cast<uint8_t>(raw.front() ^ raw.back());
    (void)sink;
    (void)typeName(t.raw_type);
    quietly([&] { (void)blockSize(t.type); });
    if (t.elements() > kMaxDequantElements) continue;
    quietly([&] { (void)f.dequantize(t); });
    quietly([&] {
      const int64_t rows = t.rows();
      std::vector<float> out(static_cast<size_t>(t.elements() - (rows / 2) * (t.dims.empty() ? 0 : t.dims[0])) + 1);
      f.dequantizeRows(t, rows / 2, rows - rows / 2, out.data());
      if (supported(t.type) && !raw.empty()) {
        const size_t n = static_cast<size_t>(t.dims[0]);
        std::vector<float> a(n), b(n);
        dequantizeReference(t.type, raw.data(), a.data(), n);
        dequantize(t.type, raw.data(), b.data(), n);
      }
    });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const flashring::gguf::File f = flashring::gguf::File::fromMemory(std::span<const uint8_t>(data, size));
    exercise(f);
  } catch (const flashring::Error&) {
    // Rejected input: the expected outcome for most of them.
  }
  return 0;
}
