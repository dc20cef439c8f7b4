// Tests of the GGUF reader (include/flashring/gguf.h): GGUF images written here by a small independent
// writer (every value type, arrays, v2 and v3, alignments 32 and 64, every supported tensor type), the
// dequantization kernels against values computed here from the ggml block layouts, AVX2 against the scalar
// reference bit for bit, and corrupt images (every truncation, absurd counts, bad offsets...) that must
// raise FormatError naming the field. Then two checks against the PyPI `gguf` package, an implementation
// independent of ours: a file its GGUFWriter wrote, and its dequantizer on the default model (both skip
// with a message when python3 or the package is missing).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/dequant_internal.h"  // detail::dequantizeAvx2 (the SIMD path itself, whatever FLASHRING_ISA says)
#include "flashring/error.h"
#include "flashring/gguf.h"
#include "flashring/model_path.h"
#include "flashring/quant.h"

namespace flashring::gguf {
namespace {

// ------------------------------------------------------------------------------------------------------
// An independent GGUF writer: the format from ggml's docs/gguf.md, written field by field.

struct Bytes {
  std::vector<uint8_t> b;
  template <class T>
  void put(T v) {
    const size_t at = b.size();
    b.resize(at + sizeof(T));
    std::memcpy(b.data() + at, &v, sizeof(T));
  }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
  }
  void raw(const std::vector<uint8_t>& v) { b.insert(b.end(), v.begin(), v.end()); }
};

struct TestTensor {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type;
  std::vector<uint8_t> data;
  std::optional<uint64_t> offset;  // default: packed, each start aligned
};

class Writer {
 public:
  uint32_t version = 3;
  uint64_t alignment = 32;  // used for layout; written as general.alignment only through kv()
  std::optional<uint64_t> tensor_count_override, kv_count_override;

  // A key/value with the value's encoding already in `payload` (type written first).
  void kv(const std::string& key, ValueType type, const Bytes& payload) {
    Bytes e;
    e.str(key);
    e.put<uint32_t>(static_cast<uint32_t>(type));
    e.raw(payload.b);
    kvs_.push_back(e.b);
  }
  template <class T>
  void kvScalar(const std::string& key, ValueType type, T v) {
    Bytes p;
    p.put<T>(v);
    kv(key, type, p);
  }
  void kvString(const std::string& key, const std::string& v) {
    Bytes p;
    p.str(v);
    kv(key, ValueType::String, p);
  }
  template <class T>
  void kvArray(const std::string& key, ValueType elem, const std::vector<T>& v) {
    Bytes p;
    p.put<uint32_t>(static_cast<uint32_t>(elem));
    p.put<uint64_t>(v.size());
    for (const T& x : v) p.put<T>(x);
    kv(key, ValueType::Array, p);
  }
  void kvStringArray(const std::string& key, const std::vector<std::string>& v) {
    Bytes p;
    p.put<uint32_t>(static_cast<uint32_t>(ValueType::String));
    p.put<uint64_t>(v.size());
    for (const auto& s : v) p.str(s);
    kv(key, ValueType::Array, p);
  }
  void setAlignment(uint64_t a) {
    alignment = a;
    kvScalar<uint32_t>("general.alignment", ValueType::UInt32, static_cast<uint32_t>(a));
  }
  void tensor(TestTensor t) { tensors_.push_back(std::move(t)); }

  // The image. The last tensor's data ends the file (no trailing padding), so that every shorter prefix
  // of the image is a truncated file.
  std::vector<uint8_t> build() const {
    Bytes out;
    out.b = {'G', 'G', 'U', 'F'};
    out.put<uint32_t>(version);
    out.put<uint64_t>(tensor_count_override.value_or(tensors_.size()));
    out.put<uint64_t>(kv_count_override.value_or(kvs_.size()));
    for (const auto& e : kvs_) out.raw(e);
    std::vector<uint64_t> offsets;
    uint64_t next = 0;
    for (const auto& t : tensors_) {
      const uint64_t off = t.offset.value_or(next);
      offsets.push_back(off);
      next = alignUp(off + t.data.size());
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const auto& t = tensors_[i];
      out.str(t.name);
      out.put<uint32_t>(static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) out.put<uint64_t>(d);
      out.put<uint32_t>(t.type);
      out.put<uint64_t>(offsets[i]);
    }
    const size_t data_start = tensors_.empty() ? out.b.size() : alignUp(out.b.size());
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const size_t at = data_start + offsets[i];
      if (offsets[i] > (1u << 20) || tensors_[i].data.empty()) continue;  // out-of-file offsets: nothing to write
      if (out.b.size() < at + tensors_[i].data.size()) out.b.resize(at + tensors_[i].data.size(), 0);
      std::memcpy(out.b.data() + at, tensors_[i].data.data(), tensors_[i].data.size());
    }
    if (out.b.size() < data_start) out.b.resize(data_start, 0);
    return out.b;
  }

 private:
  uint64_t alignUp(uint64_t x) const { return (x + alignment - 1) / alignment * alignment; }
  std::vector<std::vector<uint8_t>> kvs_;
  std::vector<TestTensor> tensors_;
};

// ------------------------------------------------------------------------------------------------------
// Independent statements of the number formats and block layouts.

uint32_t bitsOf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// binary16 by its definition, in double (exact), then to float (exact: every half is a float).
float halfValue(uint16_t h) {
  const int sign = (h >> 15) & 1, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  double v;
  if (exp == 0x1F) {
    v = mant == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  } else if (exp == 0) {
    v = std::ldexp(static_cast<double>(mant), -24);
  } else {
    v = std::ldexp(1.0 + mant / 1024.0, exp - 15);
  }
  return static_cast<float>(sign ? -v : v);
}

float bf16Value(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A finite, normal half near `x` (truncating the float's mantissa; enough for test data).
uint16_t toHalf(float x) {
  const uint32_t u = bitsOf(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const int e = static_cast<int>((u >> 23) & 0xFF) - 127 + 15;
  if (e <= 0) return sign;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7BFF);
  return static_cast<uint16_t>(sign | (e << 10) | ((u >> 13) & 0x3FF));
}

std::vector<uint8_t> randomBytes(size_t n, std::mt19937& rng) {
  std::vector<uint8_t> v(n);
  for (auto& x : v) x = static_cast<uint8_t>(rng());
  return v;
}

// Random blocks of a type with finite, moderate scales (special scales are tested separately).
std::vector<uint8_t> randomTensorData(TensorType t, size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  std::vector<uint8_t> v = randomBytes(n / blockSize(t) * blockBytes(t), rng);
  const size_t bb = blockBytes(t);
  auto setHalf = [&](size_t at, float x) {
    const uint16_t h = toHalf(x);
    std::memcpy(v.data() + at, &h, 2);
  };
  switch (t) {
    case TensorType::F32:
      for (size_t i = 0; i < n; ++i) {
        const float x = u(rng);
        std::memcpy(v.data() + 4 * i, &x, 4);
      }
      break;
    case TensorType::F16:
      for (size_t i = 0; i < n; ++i) setHalf(2 * i, u(rng));
      break;
    case TensorType::BF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t b = static_cast<uint16_t>(bitsOf(u(rng)) >> 16);
        std::memcpy(v.data() + 2 * i, &b, 2);
      }
      break;
    case TensorType::Q8_0:
    case TensorType::Q4_0:
      for (size_t b = 0; b < n / 32; ++b) setHalf(b * bb, u(rng) / 16);
      break;
    case TensorType::Q4_1:
      for (size_t b = 0; b < n / 32; ++b) {
        setHalf(b * bb, u(rng) / 16);
        setHalf(b * bb + 2, u(rng));
      }
      break;
    default:
      ADD_FAILURE() << "randomTensorData: no generator for " << typeName(static_cast<uint32_t>(t));
  }
  return v;
}

// Values of `n` elements of type t, from the layouts in ggml-common.h / dequantize_row_* in ggml-quants.c.
std::vector<float> expectedValues(TensorType t, const std::vector<uint8_t>& d, size_t n) {
  std::vector<float> out(n);
  auto u16 = [&](size_t at) {
    uint16_t h;
    std::memcpy(&h, d.data() + at, 2);
    return h;
  };
  for (size_t i = 0; i < n; ++i) {
    const size_t blk = i / 32, j = i % 32;
    switch (t) {
      case TensorType::F32:
        std::memcpy(&out[i], d.data() + 4 * i, 4);
        break;
      case TensorType::F16:
        out[i] = halfValue(u16(2 * i));
        break;
      case TensorType::BF16:
        out[i] = bf16Value(u16(2 * i));
        break;
      case TensorType::Q8_0: {  // {fp16 d; int8 qs[32]}
        const auto q = static_cast<int8_t>(d[blk * 34 + 2 + j]);
        out[i] = static_cast<float>(q) * halfValue(u16(blk * 34));
        break;
      }
      case TensorType::Q4_0: {  // {fp16 d; uint8 qs[16]}: j<16 low nibble of qs[j], else high of qs[j-16]
        const uint8_t byte = d[blk * 18 + 2 + (j % 16)];
        const int q = (j < 16 ? (byte & 0xF) : (byte >> 4)) - 8;
        out[i] = static_cast<float>(q) * halfValue(u16(blk * 18));
        break;
      }
      case TensorType::Q4_1: {  // {fp16 d; fp16 m; uint8 qs[16]}
        const uint8_t byte = d[blk * 20 + 4 + (j % 16)];
        const int q = j < 16 ? (byte & 0xF) : (byte >> 4);
        const float prod = static_cast<float>(q) * halfValue(u16(blk * 20));
        out[i] = prod + halfValue(u16(blk * 20 + 2));
        break;
      }
      default:
        ADD_FAILURE() << "expectedValues: no layout for " << typeName(static_cast<uint32_t>(t));
    }
  }
  return out;
}

void expectBitsEqual(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    // NaNs: same bits as well (payloads included).
    ASSERT_EQ(bitsOf(got[i]), bitsOf(want[i])) << what << " element " << i << ": " << got[i] << " vs " << want[i];
  }
}

constexpr TensorType kAllTypes[] = {TensorType::F32,  TensorType::F16,  TensorType::BF16,
                                    TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1};

// Runs `fn`, expects FormatError whose message contains every one of `needles`.
template <class Fn>
void expectFormatError(Fn&& fn, std::initializer_list<const char*> needles) {
  try {
    fn();
    ADD_FAILURE() << "no FormatError; expected one mentioning " << *needles.begin();
  } catch (const FormatError& e) {
    const std::string msg = e.what();
    for (const char* n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "message: " << msg << "\nlacks: " << n;
  }
}

File parse(const std::vector<uint8_t>& img) { return File::fromMemory(img); }

// ------------------------------------------------------------------------------------------------------

TEST(GgufTypes, BlockGeometryAndNames) {
  EXPECT_EQ(blockSize(TensorType::F32), 1u);
  EXPECT_EQ(blockBytes(TensorType::F32), 4u);
  EXPECT_EQ(blockBytes(TensorType::F16), 2u);
  EXPECT_EQ(blockBytes(TensorType::BF16), 2u);
  EXPECT_EQ(blockSize(TensorType::Q8_0), 32u);
  EXPECT_EQ(blockBytes(TensorType::Q8_0), 34u);
  EXPECT_EQ(blockBytes(TensorType::Q4_0), 18u);
  EXPECT_EQ(blockBytes(TensorType::Q4_1), 20u);
  EXPECT_EQ(typeName(3), "q4_1");
  EXPECT_EQ(typeName(8), "q8_0");
  EXPECT_EQ(typeName(30), "bf16");
  EXPECT_EQ(typeName(10), "type 10");  // q2_K: sized, not read
  for (TensorType t : kAllTypes) EXPECT_TRUE(supported(t));
  EXPECT_FALSE(supported(static_cast<TensorType>(10)));
  EXPECT_THROW(blockSize(static_cast<TensorType>(1000)), FormatError);
}

class GgufVersions : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GgufVersions, EveryValueTypeRoundTrips) {
  Writer w;
  w.version = GetParam();
  w.kvScalar<uint8_t>("u8", ValueType::UInt8, 250);
  w.kvScalar<int8_t>("i8", ValueType::Int8, -120);
  w.kvScalar<uint16_t>("u16", ValueType::UInt16, 65000);
  w.kvScalar<int16_t>("i16", ValueType::Int16, -32000);
  w.kvScalar<uint32_t>("u32", ValueType::UInt32, 4000000000u);
  w.kvScalar<int32_t>("i32", ValueType::Int32, -2000000000);
  w.kvScalar<uint64_t>("u64", ValueType::UInt64, uint64_t{1} << 62);
  w.kvScalar<int64_t>("i64", ValueType::Int64, std::numeric_limits<int64_t>::min());
  w.kvScalar<float>("f32", ValueType::Float32, 0.1f);
  w.kvScalar<double>("f64", ValueType::Float64, -1e300);
  w.kvScalar<uint8_t>("bool.t", ValueType::Bool, 1);
  w.kvScalar<uint8_t>("bool.f", ValueType::Bool, 0);
  w.kvString("str", "hello world");
  w.kvString("str.empty", "");
  w.kvString("str.utf8", "ünïcödé ✓");
  w.kvArray<uint8_t>("a.u8", ValueType::UInt8, {0, 255});
  w.kvArray<int8_t>("a.i8", ValueType::Int8, {-128, 127});
  w.kvArray<uint16_t>("a.u16", ValueType::UInt16, {1, 65535});
  w.kvArray<int16_t>("a.i16", ValueType::Int16, {-32768});
  w.kvArray<uint32_t>("a.u32", ValueType::UInt32, {4294967295u, 0});
  w.kvArray<int32_t>("a.i32", ValueType::Int32, {-1, 2, -3});
  w.kvArray<uint64_t>("a.u64", ValueType::UInt64, {uint64_t{1} << 63 >> 1});
  w.kvArray<int64_t>("a.i64", ValueType::Int64, {});
  w.kvArray<float>("a.f32", ValueType::Float32, {1.5f, -0.0f});
  w.kvArray<double>("a.f64", ValueType::Float64, {3.25});
  w.kvArray<uint8_t>("a.bool", ValueType::Bool, {1, 0, 1});
  w.kvStringArray("a.str", {"a", "", "ccc"});
  const auto img = w.build();
  const File f = parse(img);

  EXPECT_EQ(f.version(), GetParam());
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.metadata().size(), 27u);
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(f.getInt("u8"), 250);
  EXPECT_EQ(f.getInt("i8"), -120);
  EXPECT_EQ(f.getInt("u16"), 65000);
  EXPECT_EQ(f.getInt("i16"), -32000);
  EXPECT_EQ(f.getInt("u32"), 4000000000LL);
  EXPECT_EQ(f.getInt("i32"), -2000000000);
  EXPECT_EQ(f.getInt("u64"), int64_t{1} << 62);
  EXPECT_EQ(f.getInt("i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(f.getFloat("f32"), static_cast<double>(0.1f));
  EXPECT_EQ(f.getFloat("f64"), -1e300);
  EXPECT_EQ(f.getFloat("u8"), 250.0);  // integers are numbers too
  EXPECT_TRUE(f.getBool("bool.t"));
  EXPECT_FALSE(f.getBool("bool.f"));
  EXPECT_EQ(f.getString("str"), "hello world");
  EXPECT_EQ(f.getString("str.empty"), "");
  EXPECT_EQ(f.getString("str.utf8"), "ünïcödé ✓");
  EXPECT_EQ(f.getIntArray("a.u8"), (std::vector<int64_t>{0, 255}));
  EXPECT_EQ(f.getIntArray("a.i8"), (std::vector<int64_t>{-128, 127}));
  EXPECT_EQ(f.getIntArray("a.u16"), (std::vector<int64_t>{1, 65535}));
  EXPECT_EQ(f.getIntArray("a.i16"), (std::vector<int64_t>{-32768}));
  EXPECT_EQ(f.getIntArray("a.u32"), (std::vector<int64_t>{4294967295LL, 0}));
  EXPECT_EQ(f.getIntArray("a.i32"), (std::vector<int64_t>{-1, 2, -3}));
  EXPECT_EQ(f.getIntArray("a.u64"), (std::vector<int64_t>{int64_t{1} << 62}));
  EXPECT_TRUE(f.getIntArray("a.i64").empty());
  EXPECT_EQ(f.getFloatArray("a.f32"), (std::vector<double>{1.5, -0.0}));
  EXPECT_TRUE(std::signbit(f.getFloatArray("a.f32")[1]));
  EXPECT_EQ(f.getFloatArray("a.f64"), (std::vector<double>{3.25}));
  EXPECT_EQ(f.getFloatArray("a.i32"), (std::vector<double>{-1, 2, -3}));
  EXPECT_EQ(f.getStringArray("a.str"), (std::vector<std::string>{"a", "", "ccc"}));
  const Value& b = f.metadata().at("a.bool");
  EXPECT_EQ(b.type, ValueType::Array);
  EXPECT_EQ(b.array_type, ValueType::Bool);
  EXPECT_EQ(std::get<std::vector<bool>>(b.data), (std::vector<bool>{true, false, true}));
  EXPECT_EQ(f.metadata().at("u16").type, ValueType::UInt16);
  EXPECT_EQ(f.metadata().at("a.f32").array_type, ValueType::Float32);

  // Defaults, missing keys and wrong types name the key.
  EXPECT_TRUE(f.has("u8"));
  EXPECT_FALSE(f.has("nope"));
  EXPECT_EQ(f.getInt("nope", 7), 7);
  EXPECT_EQ(f.getFloat("nope", 2.5), 2.5);
  EXPECT_EQ(f.getString("nope", "d"), "d");
  EXPECT_EQ(f.getInt("u8", 7), 250);
  expectFormatError([&] { f.getInt("nope"); }, {"'nope'", "missing"});
  expectFormatError([&] { f.getInt("str"); }, {"'str'", "string", "integer"});
  expectFormatError([&] { f.getInt("str", 3); }, {"'str'"});
  expectFormatError([&] { f.getString("u8"); }, {"'u8'", "uint8"});
  expectFormatError([&] { f.getBool("u8"); }, {"'u8'"});
  expectFormatError([&] { f.getFloat("str"); }, {"'str'"});
  expectFormatError([&] { f.getStringArray("a.u8"); }, {"'a.u8'", "array of uint8"});
  expectFormatError([&] { f.getIntArray("a.f32"); }, {"'a.f32'"});
  expectFormatError([&] { f.getFloatArray("str"); }, {"'str'"});
  expectFormatError([&] { f.tensor("w"); }, {"tensor 'w'", "missing"});
  EXPECT_EQ(f.find("w"), nullptr);
}

INSTANTIATE_TEST_SUITE_P(V2AndV3, GgufVersions, ::testing::Values(2u, 3u),
                         [](const auto& p) { return std::string("v") + std::to_string(p.param); });

// Tensors of every supported type, in files with alignment 32 and 64: layout, raw bytes, values.
class GgufAlignment : public ::testing::TestWithParam<uint64_t> {};

TEST_P(GgufAlignment, TensorsOfEveryTypeRoundTrip) {
  std::mt19937 rng(7);
  Writer w;
  if (GetParam() != 32) w.setAlignment(GetParam());
  w.kvString("general.architecture", "test");
  struct Want {
    std::string name;
    TensorType type;
    std::vector<uint64_t> dims;
    std::vector<uint8_t> data;
  };
  std::vector<Want> want;
  const std::vector<uint64_t> shapes[] = {{64, 3}, {32}, {96, 2, 2}, {32, 1, 1, 3}};
  int k = 0;
  for (TensorType t : kAllTypes) {
    for (const auto& dims : shapes) {
      uint64_t n = 1;
      for (uint64_t d : dims) n *= d;
      Want x{std::string("t") + std::to_string(k++) + "." + typeName(static_cast<uint32_t>(t)), t, dims,
             randomTensorData(t, n, rng)};
      w.tensor({x.name, dims, static_cast<uint32_t>(t), x.data, std::nullopt});
      want.push_back(std::move(x));
    }
  }
  const auto img = w.build();
  const File f = parse(img);
  EXPECT_EQ(f.alignment(), GetParam());
  ASSERT_EQ(f.tensors().size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const TensorInfo& t = f.tensors()[i];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, want[i].name);
    EXPECT_EQ(t.type, want[i].type);
    EXPECT_EQ(t.raw_type, static_cast<uint32_t>(want[i].type));
    ASSERT_EQ(t.dims.size(), want[i].dims.size());
    for (size_t d = 0; d < t.dims.size(); ++d) EXPECT_EQ(static_cast<uint64_t>(t.dims[d]), want[i].dims[d]);
    EXPECT_EQ(t.offset % GetParam(), 0u);
    EXPECT_EQ(t.bytes, want[i].data.size());
    EXPECT_EQ(t.rows() * t.dims[0], t.elements());
    const auto raw = f.data(t);
    ASSERT_EQ(raw.size(), want[i].data.size());
    EXPECT_EQ(0, std::memcmp(raw.data(), want[i].data.data(), raw.size()));
    EXPECT_EQ(static_cast<size_t>(raw.data() - img.data()) % GetParam(), 0u);  // data section aligned too
    expectBitsEqual(f.dequantize(t), expectedValues(t.type, want[i].data, static_cast<size_t>(t.elements())), t.name);
    EXPECT_EQ(&f.tensor(t.name), &t);
  }
}

INSTANTIATE_TEST_SUITE_P(Alignments, GgufAlignment, ::testing::Values(32u, 64u),
                         [](const auto& p) { return std::string("align") + std::to_string(p.param); });

TEST(GgufDequant, RowRanges) {
  std::mt19937 rng(3);
  for (TensorType t : kAllTypes) {
    SCOPED_TRACE(typeName(static_cast<uint32_t>(t)));
    Writer w;
    const auto data = randomTensorData(t, 64 * 5, rng);
    w.tensor({"w", {64, 5}, static_cast<uint32_t>(t), data, std::nullopt});
    const auto img = w.build();
    const File f = parse(img);
    const TensorInfo& info = f.tensor("w");
    const std::vector<float> all = f.dequantize(info);
    ASSERT_EQ(all.size(), 320u);
    for (int64_t b = 0; b <= 5; ++b) {
      for (int64_t c = 0; b + c <= 5; ++c) {
        std::vector<float> part(static_cast<size_t>(c * 64) + 1, 12345.f);
        f.dequantizeRows(info, b, c, part.data());
        for (int64_t i = 0; i < c * 64; ++i) ASSERT_EQ(bitsOf(part[i]), bitsOf(all[b * 64 + i])) << b << " " << c;
        EXPECT_EQ(part.back(), 12345.f) << "wrote past row_count rows";
      }
    }
    float sink[64];
    EXPECT_THROW(f.dequantizeRows(info, 5, 1, sink), InvalidArgument);
    EXPECT_THROW(f.dequantizeRows(info, -1, 1, sink), InvalidArgument);
    EXPECT_THROW(f.dequantizeRows(info, 0, -1, sink), InvalidArgument);
    EXPECT_THROW(f.dequantizeRows(info, 4, std::numeric_limits<int64_t>::max(), sink), InvalidArgument);
    EXPECT_THROW(f.dequantizeRows(info, 0, 1, nullptr), InvalidArgument);
    // A copy of the info is fine; a doctored one is not.
    TensorInfo copy = info;
    EXPECT_EQ(f.dequantize(copy).size(), 320u);
    copy.offset += 64;
    EXPECT_THROW(f.dequantize(copy), InvalidArgument);
  }
}

TEST(GgufDequant, KernelArgumentChecks) {
  float out[32];
  uint8_t in[34] = {};
  EXPECT_THROW(dequantize(TensorType::Q8_0, in, out, 31), InvalidArgument);
  EXPECT_THROW(dequantizeReference(TensorType::Q4_1, in, out, 16), InvalidArgument);
  expectFormatError([&] { dequantize(static_cast<TensorType>(10), in, out, 32); }, {"type 10"});
  dequantize(TensorType::Q8_0, nullptr, nullptr, 0);  // nothing to do
}

// The AVX2 kernels against the scalar reference, bit for bit, on random blocks whose scales include every
// class of fp16: zero, subnormal, normal, max, inf, NaN (quiet and signalling, either sign).
TEST(GgufDequant, Avx2MatchesScalarBitForBit) {
  if (!quant::isaSupported(quant::Isa::Avx2)) GTEST_SKIP() << "this CPU has no AVX2+F16C: only the scalar path runs";
  std::mt19937 rng(11);
  const uint16_t specials[] = {0x0000, 0x8000, 0x0001, 0x03FF, 0x8200, 0x0400, 0x3C00, 0xBC00, 0x7BFF,
                               0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFD55, 0x7FFF, 0x1234, 0x0155};
  for (TensorType t : kAllTypes) {
    SCOPED_TRACE(typeName(static_cast<uint32_t>(t)));
    for (size_t n : {32u, 64u, 96u, 32u * 37, 4096u}) {
      std::vector<uint8_t> src = randomBytes(n / blockSize(t) * blockBytes(t), rng);  // any bits at all
      if (t == TensorType::Q8_0 || t == TensorType::Q4_0 || t == TensorType::Q4_1) {
        const size_t bb = blockBytes(t);
        for (size_t b = 0; b < n / 32; ++b) {
          if (rng() % 2 == 0) {
            const uint16_t d = specials[rng() % std::size(specials)];
            std::memcpy(&src[b * bb], &d, 2);
          }
          if (t == TensorType::Q4_1 && rng() % 2 == 0) {
            const uint16_t m = specials[rng() % std::size(specials)];
            std::memcpy(&src[b * bb + 2], &m, 2);
          }
        }
      }
      std::vector<float> ref(n), simd(n);
      dequantizeReference(t, src.data(), ref.data(), n);
      detail::dequantizeAvx2(t, src.data(), simd.data(), n);
      expectBitsEqual(simd, ref, std::string("n=") + std::to_string(n));
      // Random-bit blocks are not the independent reference's business for NaN payloads, but values are.
      const auto want = expectedValues(t, src, n);
      for (size_t i = 0; i < n; ++i) {
        if (std::isnan(want[i])) {
          ASSERT_TRUE(std::isnan(ref[i])) << i;
        } else {
          ASSERT_EQ(bitsOf(ref[i]), bitsOf(want[i])) << i;
        }
      }
    }
  }
}

// Every one of the 65536 halves: the scalar conversion, F16C's, and the definition agree.
TEST(GgufDequant, EveryHalfConvertsExactly) {
  std::vector<uint8_t> src(65536 * 2);
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto v = static_cast<uint16_t>(h);
    std::memcpy(&src[2 * h], &v, 2);
  }
  std::vector<float> ref(65536);
  dequantizeReference(TensorType::F16, src.data(), ref.data(), 65536);
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = halfValue(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(ref[h])) << h;
      ASSERT_EQ(bitsOf(ref[h]) >> 31, h >> 15) << h;  // sign kept
    } else {
      ASSERT_EQ(bitsOf(ref[h]), bitsOf(want)) << "half 0x" << std::hex << h;
    }
  }
  if (quant::isaSupported(quant::Isa::Avx2)) {
    std::vector<float> simd(65536);
    detail::dequantizeAvx2(TensorType::F16, src.data(), simd.data(), 65536);
    expectBitsEqual(simd, ref, "f16 (F16C vs scalar, NaN payloads included)");
  }
}

// The dispatching entry point follows FLASHRING_ISA / setActiveIsa().
TEST(GgufDequant, DispatchFollowsActiveIsa) {
  std::mt19937 rng(5);
  const auto src = randomBytes(20 * 64, rng);
  std::vector<float> a(64 * 32), b(64 * 32);
  const quant::Isa saved = quant::activeIsa();
  quant::setActiveIsa(quant::Isa::Scalar);
  EXPECT_FALSE(detail::dequantUsesAvx2());
  dequantize(TensorType::Q4_1, src.data(), a.data(), a.size());
  quant::setActiveIsa(saved);
  dequantize(TensorType::Q4_1, src.data(), b.data(), b.size());
  EXPECT_EQ(detail::dequantUsesAvx2(), saved != quant::Isa::Scalar);
  expectBitsEqual(b, a, "dispatch");
}

TEST(GgufFile, UnknownTensorTypesStillOpen) {
  Writer w;
  std::vector<uint8_t> q2k(84 * 2, 0x11);
  w.tensor({"k", {256, 2}, 10, q2k, std::nullopt});  // q2_K: sized from ggml's table
  w.tensor({"x", {7}, 999, {}, std::nullopt});       // a type nobody knows: no size
  w.tensor({"f", {4}, 0, std::vector<uint8_t>(16, 0), std::nullopt});
  const auto img = w.build();
  const File f = parse(img);
  const TensorInfo& k = f.tensor("k");
  EXPECT_FALSE(supported(k.type));
  EXPECT_EQ(k.raw_type, 10u);
  EXPECT_EQ(k.bytes, 168u);
  EXPECT_EQ(f.data(k).size(), 168u);
  expectFormatError([&] { f.dequantize(k); }, {"tensor 'k'", "type 10"});
  const TensorInfo& x = f.tensor("x");
  EXPECT_EQ(x.bytes, 0u);
  expectFormatError([&] { f.dequantize(x); }, {"tensor 'x'", "type 999"});
  EXPECT_EQ(f.dequantize(f.tensor("f")), std::vector<float>(4, 0.f));
}

TEST(GgufFile, OpensFromDiskAndReportsMissingFiles) {
  Writer w;
  w.kvString("general.name", "disk");
  w.tensor({"w", {32}, 8, std::vector<uint8_t>(34, 1), std::nullopt});
  const auto img = w.build();
  const auto path =
      std::filesystem::temp_directory_path() / (std::string("flashring_gguf_") + std::to_string(::getpid()));
  {
    std::ofstream o(path, std::ios::binary);
    o.write(reinterpret_cast<const char*>(img.data()), static_cast<std::streamsize>(img.size()));
  }
  {
    File f = File::open(path.string());
    EXPECT_EQ(f.path(), path.string());
    EXPECT_EQ(f.getString("general.name"), "disk");
    File moved = std::move(f);
    EXPECT_EQ(moved.dequantize(moved.tensor("w")).size(), 32u);
  }
  std::filesystem::remove(path);
  try {
    File::open(path.string());
    ADD_FAILURE() << "opened a missing file";
  } catch (const FormatError&) {
    ADD_FAILURE() << "a missing file is not a format error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
  EXPECT_THROW(File::open(std::filesystem::temp_directory_path().string()), Error);  // a directory
}

// ------------------------------------------------------------------------------------------------------
// Corrupt images.

// A small file with every kind of field: scalars, a string, arrays, three tensors.
std::vector<uint8_t> smallImage() {
  Writer w;
  w.kvString("general.architecture", "llama");
  w.kvScalar<uint32_t>("llama.block_count", ValueType::UInt32, 2);
  w.kvScalar<float>("f", ValueType::Float32, 1.5f);
  w.kvScalar<uint8_t>("b", ValueType::Bool, 1);
  w.kvArray<int32_t>("ints", ValueType::Int32, {1, 2, 3});
  w.kvStringArray("toks", {"<s>", "a"});
  w.tensor({"a", {32, 2}, 3, std::vector<uint8_t>(40, 0x21), std::nullopt});
  w.tensor({"b", {8}, 0, std::vector<uint8_t>(32, 0), std::nullopt});
  w.tensor({"c", {32}, 8, std::vector<uint8_t>(34, 0x7), std::nullopt});
  return w.build();
}

TEST(GgufCorrupt, EveryTruncationIsAFormatError) {
  const auto img = smallImage();
  ASSERT_NO_THROW(parse(img));
  for (size_t n = 0; n < img.size(); ++n) {
    // A heap copy of exactly n bytes, so that ASan sees any read past the end.
    std::vector<uint8_t> cut(img.begin(), img.begin() + static_cast<std::ptrdiff_t>(n));
    cut.shrink_to_fit();
    try {
      parse(cut);
      ADD_FAILURE() << "truncated to " << n << " of " << img.size() << " bytes and still parsed";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("byte offset"), std::string::npos) << e.what();
    }
  }
}

TEST(GgufCorrupt, HeaderFields) {
  auto img = smallImage();
  {
    auto bad = img;
    bad[0] = 'X';
    expectFormatError([&] { parse(bad); }, {"magic", "byte offset 0"});
  }
  for (uint32_t v : {1u, 99u, 0x03000000u}) {
    Writer w;
    w.version = v;
    expectFormatError([&] { parse(w.build()); }, {"version", "not supported", "offset 4"});
  }
  {
    Writer w;
    w.version = 1;
    expectFormatError([&] { parse(w.build()); }, {"version 1 is not supported"});
  }
  {
    Writer w;
    w.tensor_count_override = uint64_t{1} << 60;
    expectFormatError([&] { parse(w.build()); }, {"tensor_count 1152921504606846976", "offset 8"});
  }
  {
    Writer w;
    w.kv_count_override = uint64_t{1} << 60;
    expectFormatError([&] { parse(w.build()); }, {"kv_count", "offset 16"});
  }
  {
    Writer w;
    w.kv_count_override = ~uint64_t{0};
    w.tensor_count_override = ~uint64_t{0};
    expectFormatError([&] { parse(w.build()); }, {"kv_count"});
  }
}

TEST(GgufCorrupt, MetadataFields) {
  {  // a key's length past the end of the file
    Writer w;
    Bytes p;
    p.put<uint64_t>(uint64_t{1} << 40);
    w.kv("k", ValueType::String, p);
    expectFormatError([&] { parse(w.build()); }, {"metadata 'k'", "string length 1099511627776", "offset 37"});
  }
  {
    Writer w;
    w.kvString("dup", "a");
    w.kvString("dup", "b");
    expectFormatError([&] { parse(w.build()); }, {"metadata 'dup'", "duplicate key"});
  }
  {
    Writer w;
    Bytes p;
    p.put<uint32_t>(static_cast<uint32_t>(ValueType::Int32));
    p.put<uint64_t>(uint64_t{1} << 61);
    w.kv("arr", ValueType::Array, p);
    expectFormatError([&] { parse(w.build()); }, {"metadata 'arr'", "array length 2305843009213693952"});
  }
  {
    Writer w;
    Bytes p;
    p.put<uint32_t>(static_cast<uint32_t>(ValueType::String));
    p.put<uint64_t>(2);
    p.str("x");
    p.put<uint64_t>(1000);  // the second string's length runs off the end
    w.kv("toks", ValueType::Array, p);
    expectFormatError([&] { parse(w.build()); }, {"metadata 'toks'", "array element"});
  }
  {
    Writer w;
    Bytes p;
    p.put<uint32_t>(static_cast<uint32_t>(ValueType::Array));
    p.put<uint64_t>(0);
    w.kv("nested", ValueType::Array, p);
    expectFormatError([&] { parse(w.build()); }, {"metadata 'nested'", "arrays of arrays"});
  }
  {
    Writer w;
    w.kvScalar<uint32_t>("t", static_cast<ValueType>(13), 0);
    expectFormatError([&] { parse(w.build()); }, {"metadata 't'", "value type 13"});
  }
  {
    Writer w;
    w.kvScalar<uint8_t>("flag", ValueType::Bool, 2);
    expectFormatError([&] { parse(w.build()); }, {"metadata 'flag'", "bool value 2"});
  }
  {
    Writer w;
    w.kvScalar<uint64_t>("big", ValueType::UInt64, ~uint64_t{0});
    expectFormatError([&] { parse(w.build()); }, {"metadata 'big'", "uint64 value 18446744073709551615"});
  }
  for (uint32_t a : {0u, 3u, 48u}) {
    Writer w;
    w.kvScalar<uint32_t>("general.alignment", ValueType::UInt32, a);
    expectFormatError([&] { parse(w.build()); },
                      {"general.alignment", "not a nonzero power of two", "offset 53"});  // 24 + 8 + 17 + 4
  }
  {
    Writer w;
    w.kvString("general.alignment", "32");
    expectFormatError([&] { parse(w.build()); }, {"general.alignment", "string"});
  }
}

TEST(GgufCorrupt, TensorInfoFields) {
  const std::vector<uint8_t> q(34, 0);
  {
    Writer w;
    w.tensor({"t", {32, 2, 2, 2, 2}, 8, std::vector<uint8_t>(34 * 16, 0), std::nullopt});
    expectFormatError([&] { parse(w.build()); }, {"tensor 't'", "n_dims 5"});
  }
  {
    Writer w;
    w.tensor({"t", {}, 0, {}, std::nullopt});
    expectFormatError([&] { parse(w.build()); }, {"tensor 't'", "n_dims 0"});
  }
  {
    Writer w;
    w.tensor({"t", {uint64_t{1} << 32, uint64_t{1} << 32}, 0, {}, std::nullopt});
    expectFormatError([&] { parse(w.build()); }, {"tensor 't'", "dims 4294967296 x 4294967296", "overflows"});
  }
  {  // elements() is 0, but rows() would overflow (found by the fuzzer)
    Writer w;
    w.tensor({"t", {0, uint64_t{1} << 45, uint64_t{1} << 19}, 0, {}, std::nullopt});
    expectFormatError([&] { parse(w.build()); }, {"tensor 't'", "overflows"});
  }
  {  // a zero dim is allowed: an empty tensor
    Writer w;
    w.tensor({"t", {0, 3}, 8, {}, std::nullopt});
    const auto img = w.build();
    const File f = parse(img);
    EXPECT_EQ(f.tensor("t").elements(), 0);
    EXPECT_EQ(f.tensor("t").rows(), 3);
    EXPECT_EQ(f.tensor("t").bytes, 0u);
    EXPECT_TRUE(f.dequantize(f.tensor("t")).empty());
  }
  {
    Writer w;
    w.tensor({"t", {~uint64_t{0}}, 0, {}, std::nullopt});
    expectFormatError([&] { parse(w.build()); }, {"tensor 't'", "dims[0]"});
  }
  {
    Writer w;
    w.tensor({"t", {uint64_t{1} << 62}, 0, {}, std::nullopt});  // elements fit; bytes (x4) do not
    expectFormatError([&] { parse(w.build()); }, {"tensor 't'", "overflows"});
  }
  {
    Writer w;
    w.tensor({"t", {48}, 8, std::vector<uint8_t>(68, 0), std::nullopt});
    expectFormatError([&] { parse(w.build()); }, {"tensor 't'", "dims[0] = 48", "block size 32"});
  }
  {
    Writer w;
    w.tensor({"t", {32}, 8, q, uint64_t{16}});
    expectFormatError([&] { parse(w.build()); }, {"tensor 't'", "offset 16", "alignment 32"});
  }
  {
    Writer w;
    w.tensor({"a", {32}, 8, q, std::nullopt});
    w.tensor({"a", {32}, 8, q, std::nullopt});
    expectFormatError([&] { parse(w.build()); }, {"tensor 'a'", "duplicate tensor name"});
  }
  {
    Writer w;
    w.tensor({"blk.0.attn_q.weight", {32, 4}, 8, q, std::nullopt});  // 136 bytes declared, 34 written
    expectFormatError([&] { parse(w.build()); },
                      {"tensor 'blk.0.attn_q.weight'", "data [offset 0, 136 bytes] ends past the end of the file"});
  }
  {
    Writer w;
    w.tensor({"t", {32}, 8, q, uint64_t{1} << 62});
    expectFormatError([&] { parse(w.build()); }, {"tensor 't'", "ends past the end of the file"});
  }
  {
    Writer w;
    w.tensor({"a", {64, 2}, 0, std::vector<uint8_t>(512, 0), uint64_t{0}});
    w.tensor({"b", {32}, 8, q, uint64_t{256}});
    expectFormatError([&] { parse(w.build()); }, {"tensor 'b'", "overlaps tensor 'a'"});
  }
  {  // a tensor name whose length runs off the end
    Writer w;
    w.tensor({"t", {32}, 8, q, std::nullopt});
    auto img = w.build();
    const uint64_t huge = uint64_t{1} << 50;
    std::memcpy(&img[24], &huge, 8);
    expectFormatError([&] { parse(img); }, {"tensor info 0", "name", "string length", "offset 24"});
  }
}

// ------------------------------------------------------------------------------------------------------
// The default model and the PyPI gguf package.

bool pythonGgufAvailable() {
  static const bool ok = std::system("python3 -c 'import gguf' >/dev/null 2>&1") == 0;
  return ok;
}

std::filesystem::path scratchDir(const std::string& what) {
  auto dir =
      std::filesystem::path(FLASHRING_FIXTURE_DIR) / ("gguf_" + what + std::string("_") + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

std::string toolPath(const char* name) { return std::string(FLASHRING_TEST_SOURCE_DIR) + "/tools/" + name; }

TEST(GgufModel, DefaultModelHeaderAndTensors) {
  const std::string path = findDefaultModel();
  if (path.empty()) GTEST_SKIP() << "default model not found (" << defaultModelPath() << "); make deps fetches it";
  const File f = File::open(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.tensors().size(), 272u);
  EXPECT_EQ(f.getString("general.architecture"), "llama");
  EXPECT_EQ(f.getInt("llama.block_count"), 30);
  EXPECT_EQ(f.getInt("llama.attention.head_count"), 9);
  EXPECT_EQ(f.getStringArray("tokenizer.ggml.tokens").size(), 49152u);
  const TensorInfo& emb = f.tensor("token_embd.weight");
  EXPECT_EQ(emb.dims, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(emb.type, TensorType::Q8_0);
  EXPECT_EQ(emb.bytes, 49152u * 18 * 34);
  for (const TensorInfo& t : f.tensors()) EXPECT_TRUE(supported(t.type)) << t.name;
  std::vector<float> row(576);
  f.dequantizeRows(emb, 100, 1, row.data());
  for (float v : row) EXPECT_TRUE(std::isfinite(v));
}

// blk.0.attn_q.weight dequantized by us and by gguf-py. Expected max abs diff: exactly 0. Both compute
// q*d + m in float32 with the same two roundings (numpy's (d * qs) + m is elementwise, never fused; we
// never fuse either), and fp16 -> fp32 is exact in both; so any difference at all is a bug.
TEST(GgufModel, DequantizeMatchesGgufPy) {
  const std::string path = findDefaultModel();
  if (path.empty()) GTEST_SKIP() << "default model not found (" << defaultModelPath() << ")";
  if (!pythonGgufAvailable()) GTEST_SKIP() << "python3 with the PyPI gguf package not found: comparison skipped";
  const File f = File::open(path);
  const TensorInfo& t = f.tensor("blk.0.attn_q.weight");
  EXPECT_EQ(t.type, TensorType::Q4_1);
  const std::vector<float> ours = f.dequantize(t);
  const auto out = scratchDir("dequant") / "attn_q.f32";
  const std::string cmd =
      "python3 '" + toolPath("gguf_dequant_ref.py") + "' '" + path + "' blk.0.attn_q.weight '" + out.string() + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(out, std::ios::binary);
  std::vector<float> theirs(ours.size());
  in.read(reinterpret_cast<char*>(theirs.data()), static_cast<std::streamsize>(theirs.size() * 4));
  ASSERT_EQ(static_cast<size_t>(in.gcount()), ours.size() * 4);
  EXPECT_EQ(in.peek(), std::ifstream::traits_type::eof()) << "gguf-py gave more values than we did";
  double max_diff = 0;
  for (size_t i = 0; i < ours.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(ours[i]) - theirs[i]));
  }
  EXPECT_EQ(max_diff, 0.0);
  std::filesystem::remove_all(out.parent_path());
}

// A file written by gguf-py's GGUFWriter, against the JSON of what it wrote.
TEST(GgufModel, ReadsWhatGgufPyWrote) {
  if (!pythonGgufAvailable()) GTEST_SKIP() << "python3 with the PyPI gguf package not found: comparison skipped";
  const auto dir = scratchDir("ref");
  const std::string cmd = "python3 '" + toolPath("gguf_write_ref.py") + "' '" + dir.string() + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream js(dir / "ref.json");
  const nlohmann::json ref = nlohmann::json::parse(js);
  const File f = File::open((dir / "ref.gguf").string());
  EXPECT_EQ(f.version(), ref["version"].get<uint32_t>());
  EXPECT_EQ(f.metadata().size(), ref["metadata"].size());
  for (const auto& [key, tv] : ref["metadata"].items()) {
    SCOPED_TRACE(key);
    const std::string kind = tv[0].get<std::string>();
    const auto& v = tv[1];
    ASSERT_TRUE(f.has(key));
    if (kind == "string") {
      EXPECT_EQ(f.getString(key), v.get<std::string>());
    } else if (kind == "bool") {
      EXPECT_EQ(f.getBool(key), v.get<bool>());
    } else if (kind == "float32" || kind == "float64") {
      EXPECT_EQ(f.getFloat(key), v.get<double>());
    } else if (kind == "array:string") {
      EXPECT_EQ(f.getStringArray(key), v.get<std::vector<std::string>>());
    } else if (kind == "array:int32") {
      EXPECT_EQ(f.getIntArray(key), v.get<std::vector<int64_t>>());
    } else if (kind == "array:float32") {
      EXPECT_EQ(f.getFloatArray(key), v.get<std::vector<double>>());
    } else {
      EXPECT_EQ(f.getInt(key), v.get<int64_t>());
    }
    if (kind.rfind("array:", 0) != 0 && kind != "bool" && kind != "string") {
      const char* names[] = {"uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
                             "bool",  "string", "array",  "uint64", "int64",  "float64"};
      EXPECT_EQ(names[static_cast<int>(f.metadata().at(key).type)], kind);
    }
  }
  ASSERT_EQ(f.tensors().size(), ref["tensors"].size());
  for (const auto& rt : ref["tensors"]) {
    const std::string name = rt["name"].get<std::string>();
    SCOPED_TRACE(name);
    const TensorInfo& t = f.tensor(name);
    EXPECT_EQ(t.dims, rt["dims"].get<std::vector<int64_t>>());
    EXPECT_EQ(t.raw_type, rt["type"].get<uint32_t>());
    const std::string hex = rt["hex"].get<std::string>();
    const auto raw = f.data(t);
    ASSERT_EQ(raw.size() * 2, hex.size());
    for (size_t i = 0; i < raw.size(); ++i) {
      ASSERT_EQ(static_cast<unsigned long>(raw[i]), std::stoul(hex.substr(2 * i, 2), nullptr, 16)) << "byte " << i;
    }
    const auto want = rt["values"].get<std::vector<double>>();
    const auto got = f.dequantize(t);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], static_cast<float>(want[i])) << "value " << i;
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace flashring::gguf
