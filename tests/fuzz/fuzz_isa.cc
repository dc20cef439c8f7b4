// The one symbol of the codec dispatcher (src/quant/cpu/dispatch.cc) that the GGUF dequantizer needs,
// for the libFuzzer build only. That build compiles just the GGUF sources with clang, and clang 14 does
// not know "f16c" as a __builtin_cpu_supports() feature, so dispatch.cc itself does not compile there.
// Same rule as dispatch.cc: AVX2 when the CPU has AVX2, FMA and F16C, unless FLASHRING_ISA=scalar.
#include <cpuid.h>

#include <cstdlib>
#include <cstring>

#include "flashring/quant.h"

namespace flashring::quant {

Isa activeIsa() {
  static const Isa isa = [] {
    const char* env = std::getenv("FLASHRING_ISA");
    if (env != nullptr && std::strcmp(env, "scalar") == 0) return Isa::Scalar;
    unsigned a = 0, b = 0, c = 0, d = 0;
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_F16C) != 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c ? Isa::Avx2 : Isa::Scalar;
  }();
  return isa;
}

}  // namespace flashring::quant
