// Array arguments: checks and the fp16 / bf16 <-> fp32 conversions (common.h).
#include <fmt/format.h>

#include <bit>
#include <cstring>

#include "common.h"
#include "flashring/cpu.h"
#include "flashring/error.h"

namespace flashring::py {

const char* dtypeName(DType d) {
  switch (d) {
    case DType::F32:
      return "float32";
    case DType::F16:
      return "float16";
    case DType::BF16:
      return "bfloat16";
  }
  return "?";
}

namespace {

std::string dlpackName(nb::dlpack::dtype t) {
  const char* kind = "?";
  switch (static_cast<nb::dlpack::dtype_code>(t.code)) {
    case nb::dlpack::dtype_code::Int:
      kind = "int";
      break;
    case nb::dlpack::dtype_code::UInt:
      kind = "uint";
      break;
    case nb::dlpack::dtype_code::Float:
      kind = "float";
      break;
    case nb::dlpack::dtype_code::Bfloat:
      kind = "bfloat";
      break;
    case nb::dlpack::dtype_code::Complex:
      kind = "complex";
      break;
    case nb::dlpack::dtype_code::Bool:
      kind = "bool";
      break;
    default:
      kind = "code";  // the fp8/fp6/fp4 and other DLPack codes
      break;
  }
  return fmt::format("{}{}", kind, t.bits);
}

template <typename Array>
FloatArray describe(const Array& a, const char* name) {
  if (a.device_type() != nb::device::cpu::value)
    throw InvalidArgument(
        fmt::format("{}: a device array (DLPack device type {}); flashring was built for CPU "
                    "memory only: move it to the CPU first (.cpu())",
                    name, a.device_type()));
  FloatArray out;
  const nb::dlpack::dtype t = a.dtype();
  if (t.lanes == 1 && t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float) && t.bits == 32)
    out.dtype = DType::F32;
  else if (t.lanes == 1 && t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float) && t.bits == 16)
    out.dtype = DType::F16;
  else if (t.lanes == 1 && t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat) && t.bits == 16)
    out.dtype = DType::BF16;
  else
    throw InvalidArgument(
        fmt::format("{}: dtype {} is not supported; expected float32, float16 or bfloat16", name, dlpackName(t)));
  out.count = 1;
  out.shape.resize(a.ndim());
  for (size_t i = 0; i < a.ndim(); ++i) {
    out.shape[i] = static_cast<int64_t>(a.shape(i));
    out.count *= a.shape(i);
  }
  // C-contiguous: strides (in elements) are the suffix products; dimensions of extent 1 may have any stride.
  int64_t expect = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && out.count > 0 && a.stride(i) != expect)
      throw InvalidArgument(
          fmt::format("{}: not C-contiguous (stride {} of dimension {}; expected {}); pass "
                      "a contiguous array (.contiguous() / np.ascontiguousarray)",
                      name, a.stride(i), i, expect));
    expect *= static_cast<int64_t>(a.shape(i));
  }
  out.data = const_cast<void*>(static_cast<const void*>(a.data()));
  return out;
}

}  // namespace

FloatArray floatArray(const nb::ndarray<>& a, const char* name) { return describe(a, name); }
FloatArray floatArray(const nb::ndarray<nb::ro>& a, const char* name) { return describe(a, name); }

uint16_t floatToBf16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  const uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float bf16ToFloat(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

float halfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13) | (mant ? 0x400000u : 0u);
  } else if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3FFu) << 13);
    }
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

uint16_t floatToHalf(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));  // NaN, quiet
  if (a >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);                        // rounds to >= 65520: Inf
  if (a < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    // Value in units of 2^-24, rounded to nearest even, via fp32 arithmetic with a magic addend.
    const float v = std::bit_cast<float>(a) + 0.5f;  // 0.5 = 2^-1: puts 2^-24 units in the low mantissa bits
    return static_cast<uint16_t>(sign | (std::bit_cast<uint32_t>(v) - 0x3F000000u));
  }
  const uint32_t mant_odd = (a >> 13) & 1u;
  const uint32_t r = a + 0xC8000FFFu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
  return static_cast<uint16_t>(sign | (r >> 13));
}

std::span<float> toF32(const FloatArray& a, std::vector<float>& scratch) {
  if (a.dtype == DType::F32) return {static_cast<float*>(a.data), a.count};
  scratch.resize(a.count);
  const auto* src = static_cast<const uint16_t*>(a.data);
  if (a.dtype == DType::BF16)
    for (size_t i = 0; i < a.count; ++i) scratch[i] = bf16ToFloat(src[i]);
  else
    for (size_t i = 0; i < a.count; ++i) scratch[i] = halfToFloat(src[i]);
  return {scratch.data(), a.count};
}

void fromF32(std::span<const float> values, const FloatArray& a) {
  if (a.dtype == DType::F32) {
    if (!values.empty() && values.data() != a.data) std::memcpy(a.data, values.data(), values.size() * sizeof(float));
    return;
  }
  auto* dst = static_cast<uint16_t*>(a.data);
  if (a.dtype == DType::BF16)
    for (size_t i = 0; i < values.size(); ++i) dst[i] = floatToBf16(values[i]);
  else
    for (size_t i = 0; i < values.size(); ++i) dst[i] = floatToHalf(values[i]);
}

}  // namespace flashring::py
