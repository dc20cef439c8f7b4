// GGUF model files: reading, validating and dequantizing.
//
// GGUF (ggml's model format, versions 2 and 3) is a little-endian header, a list of typed metadata
// key/values (strings, integers, floats, bools and arrays of them), a list of tensor descriptions (name,
// dimensions, ggml type, offset) and, after padding to `general.alignment` bytes (default 32), the tensor
// data. gguf::File memory-maps the file and checks every count, length, offset and size against the file
// before using it: a truncated or corrupt file raises gguf::FormatError naming the field and the byte
// offset where it went wrong, never a crash or an out-of-bounds read (a libFuzzer target keeps it so).
//
// Dimensions follow ggml: dims[0] is the innermost (contiguous) one. A weight matrix of a linear layer
// with `in` inputs and `out` outputs has dims {in, out}: row r (an output) is `in` contiguous values.
// Dequantization of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K has a scalar
// reference and SIMD paths chosen at run time; all give the same floats bit for bit (the last five through
// the quantized-matmul kernels of qmatmul.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "flashring/error.h"

namespace flashring::gguf {

// The file does not follow the format (or is cut short). what() names the field and the byte offset.
class FormatError : public Error {
 public:
  using Error::Error;
};

// ggml tensor types (numbering from ggml.h). Only the ones listed in `supported()` can be dequantized.
enum class TensorType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  BF16 = 30,
};
bool supported(TensorType t);
std::string typeName(uint32_t raw_type);  // "q4_1", or "type 12" for ones we do not know
// Values per block and bytes per block (1 and 4 for F32). Throws FormatError for unknown types.
size_t blockSize(TensorType t);
size_t blockBytes(TensorType t);

// GGUF metadata value types (gguf.h numbering).
enum class ValueType : uint32_t {
  UInt8 = 0,
  Int8 = 1,
  UInt16 = 2,
  Int16 = 3,
  UInt32 = 4,
  Int32 = 5,
  Float32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  UInt64 = 10,
  Int64 = 11,
  Float64 = 12,
};

// One metadata value. Integers of every width are held as int64_t (uint64 values above INT64_MAX are
// rejected as corrupt), floats as double, arrays as a vector of one kind.
struct Value {
  ValueType type = ValueType::UInt8;
  ValueType array_type = ValueType::UInt8;  // element type when type == Array
  std::variant<int64_t, double, bool, std::string, std::vector<int64_t>, std::vector<double>, std::vector<std::string>,
               std::vector<bool>>
      data;
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // dims[0] innermost
  uint32_t raw_type = 0;
  TensorType type = TensorType::F32;  // valid when supported(type)
  uint64_t offset = 0;                // from the start of the data section
  uint64_t bytes = 0;                 // size of the data
  int64_t elements() const;
  int64_t rows() const;  // elements() / dims[0]
};

class File {
 public:
  // Memory-maps and validates `path`. Throws FormatError (corrupt/truncated) or Error (cannot open).
  static File open(const std::string& path);
  // Parses an in-memory image (not copied: `bytes` must outlive the File). For tests and the fuzzer.
  static File fromMemory(std::span<const uint8_t> bytes, std::string name = "<memory>");

  File(File&&) noexcept;
  File& operator=(File&&) noexcept;
  ~File();

  const std::string& path() const;
  uint32_t version() const;
  uint64_t alignment() const;
  const std::map<std::string, Value>& metadata() const;
  const std::vector<TensorInfo>& tensors() const;

  bool has(std::string_view key) const;
  // Typed getters. Throw FormatError naming the key when it is missing or of another type; integer
  // getters accept any integer type whose value fits.
  std::string getString(std::string_view key) const;
  int64_t getInt(std::string_view key) const;
  double getFloat(std::string_view key) const;  // Float32/Float64 (integers accepted)
  bool getBool(std::string_view key) const;
  std::vector<std::string> getStringArray(std::string_view key) const;
  std::vector<int64_t> getIntArray(std::string_view key) const;
  std::vector<double> getFloatArray(std::string_view key) const;
  // With a default when the key is absent (still throws when present with the wrong type).
  int64_t getInt(std::string_view key, int64_t def) const;
  double getFloat(std::string_view key, double def) const;
  std::string getString(std::string_view key, const std::string& def) const;

  const TensorInfo* find(std::string_view name) const;       // nullptr when absent
  const TensorInfo& tensor(std::string_view name) const;     // throws FormatError naming it when absent
  std::span<const uint8_t> data(const TensorInfo& t) const;  // the raw bytes (bounds checked at open)

  // Dequantize rows [row_begin, row_begin + row_count) of `t` (a row is dims[0] values) into `out`
  // (row_count * dims[0] floats). Throws InvalidArgument for an out-of-range request, FormatError for an
  // unsupported type.
  void dequantizeRows(const TensorInfo& t, int64_t row_begin, int64_t row_count, float* out) const;
  std::vector<float> dequantize(const TensorInfo& t) const;  // all of it

 private:
  struct Impl;
  explicit File(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Row dequantization kernels: `n` values (a multiple of the type's block size) from `src` to `dst`.
// The reference is plain C++; dequantize() dispatches to AVX2 when the CPU has it (FLASHRING_ISA=scalar
// forces the reference). Identical results.
void dequantizeReference(TensorType t, const uint8_t* src, float* dst, size_t n);
void dequantize(TensorType t, const uint8_t* src, float* dst, size_t n);

}  // namespace flashring::gguf
