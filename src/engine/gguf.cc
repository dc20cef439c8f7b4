// GGUF reader: parsing and validation of the header, metadata and tensor infos, the memory mapping, the
// typed metadata getters and row dequantization of tensors.
//
// Every read goes through Reader, which checks the bytes are there first; every count is checked against
// the bytes left before anything is reserved, so a corrupt count cannot make us allocate more than a small
// multiple of the file's size. Errors name the item being read ("metadata 'x'", "tensor 'y'") and the
// field, and give the byte offset of the field.
#include "flashring/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <utility>

#include "engine/dequant_internal.h"

namespace flashring::gguf {
namespace {

constexpr uint64_t kDefaultAlignment = 32;
constexpr uint64_t kMaxAlignment = uint64_t{1} << 31;        // ggml stores it as a uint32
constexpr uint32_t kMaxDims = 4;                             // GGML_MAX_DIMS
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;                  // key length, type, smallest value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // name length, n_dims, one dim, type, offset

const char* valueTypeName(ValueType t) {
  switch (t) {
    case ValueType::UInt8:
      return "uint8";
    case ValueType::Int8:
      return "int8";
    case ValueType::UInt16:
      return "uint16";
    case ValueType::Int16:
      return "int16";
    case ValueType::UInt32:
      return "uint32";
    case ValueType::Int32:
      return "int32";
    case ValueType::Float32:
      return "float32";
    case ValueType::Bool:
      return "bool";
    case ValueType::String:
      return "string";
    case ValueType::Array:
      return "array";
    case ValueType::UInt64:
      return "uint64";
    case ValueType::Int64:
      return "int64";
    case ValueType::Float64:
      return "float64";
  }
  return "unknown";
}

bool isIntegerType(ValueType t) {
  switch (t) {
    case ValueType::UInt8:
    case ValueType::Int8:
    case ValueType::UInt16:
    case ValueType::Int16:
    case ValueType::UInt32:
    case ValueType::Int32:
    case ValueType::UInt64:
    case ValueType::Int64:
      return true;
    default:
      return false;
  }
}

bool isFloatType(ValueType t) { return t == ValueType::Float32 || t == ValueType::Float64; }

// Bytes one element of a type takes at least (a string: its 8-byte length); 0 for unknown types.
uint64_t minEncodedSize(uint32_t raw) {
  switch (static_cast<ValueType>(raw)) {
    case ValueType::UInt8:
    case ValueType::Int8:
    case ValueType::Bool:
      return 1;
    case ValueType::UInt16:
    case ValueType::Int16:
      return 2;
    case ValueType::UInt32:
    case ValueType::Int32:
    case ValueType::Float32:
      return 4;
    case ValueType::UInt64:
    case ValueType::Int64:
    case ValueType::Float64:
    case ValueType::String:
      return 8;
    case ValueType::Array:
      return 12;  // element type and count
  }
  return 0;
}

std::string describeType(const Value& v) {
  if (v.type == ValueType::Array) return std::string("array of ") + valueTypeName(v.array_type);
  return valueTypeName(v.type);
}

// Bounds-checked little-endian reads over the image. `ctx` names the item being parsed, for messages.
class Reader {
 public:
  Reader(std::span<const uint8_t> bytes, const std::string& name) : b_(bytes), name_(name) {}

  uint64_t pos() const { return pos_; }
  uint64_t size() const { return b_.size(); }
  uint64_t remaining() const { return b_.size() - pos_; }
  void setContext(std::string ctx) { ctx_ = std::move(ctx); }

  [[noreturn]] void fail(uint64_t at, const std::string& what) const {
    throw FormatError(name_ + ": " + (ctx_.empty() ? "" : ctx_ + ": ") + what + " (at byte offset " +
                      std::to_string(at) + ")");
  }

  void need(uint64_t n, const char* field) const {
    if (n > remaining()) {
      fail(pos_, std::string(field) + ": needs " + std::to_string(n) + " bytes but the file ends after " +
                     std::to_string(remaining()) + " more (file is " + std::to_string(size()) + " bytes)");
    }
  }

  template <class T>
  T read(const char* field) {
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string readString(const char* field) {
    const uint64_t at = pos_;
    const auto len = read<uint64_t>(field);
    if (len > remaining()) {
      fail(at, std::string(field) + ": string length " + std::to_string(len) + " runs past the end of the file (" +
                   std::to_string(remaining()) + " bytes left)");
    }
    std::string s(reinterpret_cast<const char*>(b_.data() + pos_), static_cast<size_t>(len));
    pos_ += len;
    return s;
  }

 private:
  std::span<const uint8_t> b_;
  const std::string& name_;
  std::string ctx_;
  uint64_t pos_ = 0;
};

}  // namespace

int64_t TensorInfo::elements() const {
  if (dims.empty()) return 0;
  int64_t n = 1;
  for (int64_t d : dims) n *= d;  // cannot overflow for parsed tensors: checked at open
  return n;
}

int64_t TensorInfo::rows() const {
  if (dims.empty()) return 0;
  int64_t n = 1;
  for (size_t i = 1; i < dims.size(); ++i) n *= dims[i];
  return n;
}

struct File::Impl {
  std::string path;
  std::span<const uint8_t> bytes;
  void* map = nullptr;
  size_t map_len = 0;
  uint32_t version = 0;
  uint64_t alignment = kDefaultAlignment;
  uint64_t data_offset = 0;
  std::map<std::string, Value> metadata;
  std::vector<TensorInfo> tensors;
  std::map<std::string, size_t, std::less<>> index;

  ~Impl() {
    if (map != nullptr) ::munmap(map, map_len);
  }

  void parse();
  Value readValue(Reader& r, uint32_t raw_type, const char* field);
  const Value& get(std::string_view key) const;
  [[noreturn]] void wrongType(std::string_view key, const Value& v, const char* expected) const {
    throw FormatError(path + ": metadata '" + std::string(key) + "' is " + describeType(v) + ", expected " + expected);
  }
};

Value File::Impl::readValue(Reader& r, uint32_t raw_type, const char* field) {
  Value v;
  v.type = static_cast<ValueType>(raw_type);
  const uint64_t at = r.pos();
  switch (v.type) {
    case ValueType::UInt8:
      v.data = static_cast<int64_t>(r.read<uint8_t>(field));
      break;
    case ValueType::Int8:
      v.data = static_cast<int64_t>(r.read<int8_t>(field));
      break;
    case ValueType::UInt16:
      v.data = static_cast<int64_t>(r.read<uint16_t>(field));
      break;
    case ValueType::Int16:
      v.data = static_cast<int64_t>(r.read<int16_t>(field));
      break;
    case ValueType::UInt32:
      v.data = static_cast<int64_t>(r.read<uint32_t>(field));
      break;
    case ValueType::Int32:
      v.data = static_cast<int64_t>(r.read<int32_t>(field));
      break;
    case ValueType::UInt64: {
      const auto u = r.read<uint64_t>(field);
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        r.fail(at, std::string(field) + ": uint64 value " + std::to_string(u) +
                       " is above 2^63-1 (held as int64; treated as corrupt)");
      }
      v.data = static_cast<int64_t>(u);
      break;
    }
    case ValueType::Int64:
      v.data = r.read<int64_t>(field);
      break;
    case ValueType::Float32:
      v.data = static_cast<double>(r.read<float>(field));
      break;
    case ValueType::Float64:
      v.data = r.read<double>(field);
      break;
    case ValueType::Bool: {
      const auto b = r.read<uint8_t>(field);
      if (b > 1) r.fail(at, std::string(field) + ": bool value " + std::to_string(b) + " is neither 0 nor 1");
      v.data = b == 1;
      break;
    }
    case ValueType::String:
      v.data = r.readString(field);
      break;
    case ValueType::Array: {
      const auto elem = r.read<uint32_t>("array element type");
      if (elem == static_cast<uint32_t>(ValueType::Array)) {
        r.fail(at, "arrays of arrays are not supported (no model key uses them)");
      }
      const uint64_t elem_size = minEncodedSize(elem);
      if (elem_size == 0) r.fail(at, "array element type " + std::to_string(elem) + " is unknown (0..12)");
      v.array_type = static_cast<ValueType>(elem);
      const uint64_t count_at = r.pos();
      const auto count = r.read<uint64_t>("array length");
      if (count > r.remaining() / elem_size) {
        r.fail(count_at,
               "array length " + std::to_string(count) + " of " + valueTypeName(v.array_type) + " needs at least " +
                   (count > UINT64_MAX / elem_size ? std::string("2^64") : std::to_string(count * elem_size)) +
                   " bytes but only " + std::to_string(r.remaining()) + " remain");
      }
      const auto n = static_cast<size_t>(count);
      if (isIntegerType(v.array_type)) {
        std::vector<int64_t> out;
        out.reserve(n);
        for (size_t i = 0; i < n; ++i) out.push_back(std::get<int64_t>(readValue(r, elem, "array element").data));
        v.data = std::move(out);
      } else if (isFloatType(v.array_type)) {
        std::vector<double> out;
        out.reserve(n);
        for (size_t i = 0; i < n; ++i) out.push_back(std::get<double>(readValue(r, elem, "array element").data));
        v.data = std::move(out);
      } else if (v.array_type == ValueType::Bool) {
        std::vector<bool> out;
        out.reserve(n);
        for (size_t i = 0; i < n; ++i) out.push_back(std::get<bool>(readValue(r, elem, "array element").data));
        v.data = std::move(out);
      } else {
        std::vector<std::string> out;
        out.reserve(n);
        for (size_t i = 0; i < n; ++i) out.push_back(r.readString("array element"));
        v.data = std::move(out);
      }
      break;
    }
    default:
      r.fail(at - 4, "value type " + std::to_string(raw_type) + " is unknown (0..12)");
  }
  return v;
}

void File::Impl::parse() {
  Reader r(bytes, path);
  r.setContext("header");
  r.need(4, "magic");
  if (std::memcmp(bytes.data(), "GGUF", 4) != 0) {
    char hex[32];
    std::snprintf(hex, sizeof(hex), "%02x %02x %02x %02x", bytes[0], bytes[1], bytes[2], bytes[3]);
    r.fail(0, std::string("magic: expected \"GGUF\" (47 47 55 46), got ") + hex + ": not a GGUF file");
  }
  r.read<uint32_t>("magic");
  version = r.read<uint32_t>("version");
  if (version == 1) {
    r.fail(4,
           "version 1 is not supported (GGUF v1 has 32-bit counts and lengths; convert the model again with a "
           "current llama.cpp / gguf-py)");
  }
  if (version != 2 && version != 3) {
    const bool swapped = (version & 0xFFFFu) == 0 && (version >> 16) != 0;
    r.fail(4, "version " + std::to_string(version) + " is not supported (only 2 and 3" +
                  (swapped ? "; this looks like a big-endian file, which is not supported" : "") + ")");
  }
  const uint64_t tensor_count_at = r.pos();
  const auto tensor_count = r.read<uint64_t>("tensor_count");
  const uint64_t kv_count_at = r.pos();
  const auto kv_count = r.read<uint64_t>("kv_count");
  if (kv_count > r.remaining() / kMinKvBytes) {
    r.fail(kv_count_at, "kv_count " + std::to_string(kv_count) + " metadata entries cannot fit in the " +
                            std::to_string(r.remaining()) + " bytes left (each takes at least " +
                            std::to_string(kMinKvBytes) + ")");
  }
  if (tensor_count > (r.remaining() - kv_count * kMinKvBytes) / kMinTensorInfoBytes) {
    r.fail(tensor_count_at, "tensor_count " + std::to_string(tensor_count) + " tensor infos cannot fit in the " +
                                std::to_string(r.remaining()) + " bytes left (each takes at least " +
                                std::to_string(kMinTensorInfoBytes) + ")");
  }

  uint64_t alignment_at = 0;
  for (uint64_t i = 0; i < kv_count; ++i) {
    r.setContext("metadata entry " + std::to_string(i));
    const uint64_t key_at = r.pos();
    std::string key = r.readString("key");
    r.setContext("metadata '" + key + "'");
    if (metadata.count(key) != 0) r.fail(key_at, "duplicate key");
    const auto type = r.read<uint32_t>("value type");
    if (key == "general.alignment") alignment_at = r.pos();
    metadata.emplace(std::move(key), readValue(r, type, "value"));
  }

  if (auto it = metadata.find("general.alignment"); it != metadata.end()) {
    r.setContext("metadata 'general.alignment'");
    if (!isIntegerType(it->second.type)) {
      r.fail(alignment_at, "is " + describeType(it->second) + ", expected an unsigned integer");
    }
    const int64_t a = std::get<int64_t>(it->second.data);
    if (a <= 0 || (a & (a - 1)) != 0 || static_cast<uint64_t>(a) > kMaxAlignment) {
      r.fail(alignment_at, std::to_string(a) + " is not a nonzero power of two (at most 2^31)");
    }
    alignment = static_cast<uint64_t>(a);
  }

  std::vector<uint64_t> offset_at(static_cast<size_t>(tensor_count));
  tensors.reserve(static_cast<size_t>(tensor_count));
  for (uint64_t i = 0; i < tensor_count; ++i) {
    r.setContext("tensor info " + std::to_string(i));
    const uint64_t name_at = r.pos();
    TensorInfo t;
    t.name = r.readString("name");
    r.setContext("tensor '" + t.name + "'");
    if (index.count(t.name) != 0) r.fail(name_at, "duplicate tensor name");
    const uint64_t ndims_at = r.pos();
    const auto n_dims = r.read<uint32_t>("n_dims");
    if (n_dims == 0 || n_dims > kMaxDims) {
      r.fail(ndims_at, "n_dims " + std::to_string(n_dims) + " is outside 1.." + std::to_string(kMaxDims));
    }
    int64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim_at = r.pos();
      const auto dim = r.read<uint64_t>("dims");
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        r.fail(dim_at, "dims[" + std::to_string(d) + "] = " + std::to_string(dim) + " is above 2^63-1");
      }
      t.dims.push_back(static_cast<int64_t>(dim));
      // Zero dims count as 1 here, so that rows() (the product of dims[1..]) is bounded too when dims[0] is 0.
      if (__builtin_mul_overflow(elements, std::max<int64_t>(static_cast<int64_t>(dim), 1), &elements)) {
        std::string all;
        for (int64_t x : t.dims) all += (all.empty() ? "" : " x ") + std::to_string(x);
        r.fail(dim_at, "dims " + all + ": the element (or row) count overflows 64 bits");
      }
    }
    const uint64_t type_at = r.pos();
    t.raw_type = r.read<uint32_t>("type");
    t.type = static_cast<TensorType>(t.raw_type);
    offset_at[i] = r.pos();
    t.offset = r.read<uint64_t>("offset");

    size_t bs = 0, bb = 0;
    const char* gname = nullptr;
    if (detail::ggmlTypeGeometry(t.raw_type, &bs, &bb, &gname)) {
      const auto dim0 = static_cast<uint64_t>(t.dims[0]);
      if (dim0 % bs != 0) {
        r.fail(type_at, "dims[0] = " + std::to_string(dim0) + " is not a multiple of " + gname + "'s block size " +
                            std::to_string(bs));
      }
      uint64_t bytes_count = 0;
      if (__builtin_mul_overflow(static_cast<uint64_t>(t.rows()), dim0 / bs, &bytes_count) ||
          __builtin_mul_overflow(bytes_count, static_cast<uint64_t>(bb), &bytes_count)) {
        r.fail(type_at, std::string("data size of ") + gname + " tensor overflows 64 bits");
      }
      t.bytes = bytes_count;
    }
    // Unknown types keep bytes = 0: we cannot size them, and data() gives an empty span.
    index.emplace(t.name, tensors.size());
    tensors.push_back(std::move(t));
  }

  const uint64_t infos_end = r.pos();
  data_offset = (infos_end + alignment - 1) / alignment * alignment;
  const uint64_t file_size = bytes.size();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& t = tensors[i];
    r.setContext("tensor '" + t.name + "'");
    if (t.offset % alignment != 0) {
      r.fail(offset_at[i],
             "offset " + std::to_string(t.offset) + " is not a multiple of the alignment " + std::to_string(alignment));
    }
    const bool fits = data_offset <= file_size && t.offset <= file_size - data_offset &&
                      t.bytes <= file_size - data_offset - t.offset;
    if (!fits) {
      r.fail(offset_at[i], "data [offset " + std::to_string(t.offset) + ", " + std::to_string(t.bytes) +
                               " bytes] ends past the end of the file (" + std::to_string(file_size) +
                               " bytes; data section starts at " + std::to_string(data_offset) + ")");
    }
  }
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return tensors[a].offset < tensors[b].offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const TensorInfo& prev = tensors[order[k - 1]];
    const TensorInfo& cur = tensors[order[k]];
    if (prev.bytes > 0 && cur.bytes > 0 && prev.offset + prev.bytes > cur.offset) {
      r.setContext("tensor '" + cur.name + "'");
      r.fail(offset_at[order[k]], "data [offset " + std::to_string(cur.offset) + ", " + std::to_string(cur.bytes) +
                                      " bytes] overlaps tensor '" + prev.name + "' [offset " +
                                      std::to_string(prev.offset) + ", " + std::to_string(prev.bytes) + " bytes]");
    }
  }
}

const Value& File::Impl::get(std::string_view key) const {
  auto it = metadata.find(std::string(key));
  if (it == metadata.end()) throw FormatError(path + ": metadata key '" + std::string(key) + "' is missing");
  return it->second;
}

File::File(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
File::File(File&&) noexcept = default;
File& File::operator=(File&&) noexcept = default;
File::~File() = default;

File File::fromMemory(std::span<const uint8_t> bytes, std::string name) {
  auto impl = std::make_unique<Impl>();
  impl->path = std::move(name);
  impl->bytes = bytes;
  impl->parse();
  return File(std::move(impl));
}

File File::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("gguf: cannot open '" + path + "': " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    const int err = errno;
    ::close(fd);
    throw Error("gguf: cannot open '" + path +
                "': " + (S_ISREG(st.st_mode) ? std::strerror(err) : "not a regular file"));
  }
  const auto size = static_cast<size_t>(st.st_size);
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    if (p == MAP_FAILED) throw Error("gguf: cannot map '" + path + "': " + std::strerror(err));
    impl->map = p;
    impl->map_len = size;
    impl->bytes = std::span<const uint8_t>(static_cast<const uint8_t*>(p), size);
  } else {
    ::close(fd);
  }
  impl->parse();
  return File(std::move(impl));
}

const std::string& File::path() const { return impl_->path; }
uint32_t File::version() const { return impl_->version; }
uint64_t File::alignment() const { return impl_->alignment; }
const std::map<std::string, Value>& File::metadata() const { return impl_->metadata; }
const std::vector<TensorInfo>& File::tensors() const { return impl_->tensors; }

bool File::has(std::string_view key) const { return impl_->metadata.count(std::string(key)) != 0; }

std::string File::getString(std::string_view key) const {
  const Value& v = impl_->get(key);
  if (v.type != ValueType::String) impl_->wrongType(key, v, "a string");
  return std::get<std::string>(v.data);
}

int64_t File::getInt(std::string_view key) const {
  const Value& v = impl_->get(key);
  if (!isIntegerType(v.type)) impl_->wrongType(key, v, "an integer");
  return std::get<int64_t>(v.data);
}

double File::getFloat(std::string_view key) const {
  const Value& v = impl_->get(key);
  if (isFloatType(v.type)) return std::get<double>(v.data);
  if (isIntegerType(v.type)) return static_cast<double>(std::get<int64_t>(v.data));
  impl_->wrongType(key, v, "a number");
}

bool File::getBool(std::string_view key) const {
  const Value& v = impl_->get(key);
  if (v.type != ValueType::Bool) impl_->wrongType(key, v, "a bool");
  return std::get<bool>(v.data);
}

std::vector<std::string> File::getStringArray(std::string_view key) const {
  const Value& v = impl_->get(key);
  if (v.type != ValueType::Array || v.array_type != ValueType::String) {
    impl_->wrongType(key, v, "an array of strings");
  }
  return std::get<std::vector<std::string>>(v.data);
}

std::vector<int64_t> File::getIntArray(std::string_view key) const {
  const Value& v = impl_->get(key);
  if (v.type != ValueType::Array || !isIntegerType(v.array_type)) impl_->wrongType(key, v, "an array of integers");
  return std::get<std::vector<int64_t>>(v.data);
}

std::vector<double> File::getFloatArray(std::string_view key) const {
  const Value& v = impl_->get(key);
  if (v.type == ValueType::Array && isFloatType(v.array_type)) return std::get<std::vector<double>>(v.data);
  if (v.type == ValueType::Array && isIntegerType(v.array_type)) {
    const auto& ints = std::get<std::vector<int64_t>>(v.data);
    return std::vector<double>(ints.begin(), ints.end());
  }
  impl_->wrongType(key, v, "an array of numbers");
}

int64_t File::getInt(std::string_view key, int64_t def) const { return has(key) ? getInt(key) : def; }
double File::getFloat(std::string_view key, double def) const { return has(key) ? getFloat(key) : def; }
std::string File::getString(std::string_view key, const std::string& def) const {
  return has(key) ? getString(key) : def;
}

const TensorInfo* File::find(std::string_view name) const {
  auto it = impl_->index.find(name);
  return it == impl_->index.end() ? nullptr : &impl_->tensors[it->second];
}

const TensorInfo& File::tensor(std::string_view name) const {
  const TensorInfo* t = find(name);
  if (t == nullptr) throw FormatError(impl_->path + ": tensor '" + std::string(name) + "' is missing");
  return *t;
}

std::span<const uint8_t> File::data(const TensorInfo& t) const {
  // A TensorInfo may be a copy, or from another file: only trust the one we validated.
  const TensorInfo* mine = find(t.name);
  if (mine == nullptr || mine->offset != t.offset || mine->bytes != t.bytes || mine->raw_type != t.raw_type ||
      mine->dims != t.dims) {
    throw InvalidArgument("gguf: tensor '" + t.name + "' is not a tensor of " + impl_->path);
  }
  return impl_->bytes.subspan(static_cast<size_t>(impl_->data_offset + mine->offset), static_cast<size_t>(mine->bytes));
}

void File::dequantizeRows(const TensorInfo& t, int64_t row_begin, int64_t row_count, float* out) const {
  const std::span<const uint8_t> raw = data(t);
  if (!supported(t.type)) {
    throw FormatError(impl_->path + ": tensor '" + t.name + "': cannot dequantize tensor type " + typeName(t.raw_type) +
                      " (supported: f32, f16, bf16, q8_0, q4_0, q4_1)");
  }
  const int64_t rows = t.rows();
  if (row_begin < 0 || row_count < 0 || row_begin > rows || row_count > rows - row_begin) {
    throw InvalidArgument("gguf: tensor '" + t.name + "': rows [" + std::to_string(row_begin) + ", +" +
                          std::to_string(row_count) + ") are outside its " + std::to_string(rows) + " rows");
  }
  if (row_count == 0 || t.dims[0] == 0) return;  // nothing to write
  if (out == nullptr) throw InvalidArgument("gguf: tensor '" + t.name + "': dequantizeRows into a null buffer");
  const auto row_values = static_cast<size_t>(t.dims[0]);
  const size_t row_bytes = row_values / blockSize(t.type) * blockBytes(t.type);
  gguf::dequantize(t.type, raw.data() + static_cast<size_t>(row_begin) * row_bytes, out,
                   static_cast<size_t>(row_count) * row_values);
}

std::vector<float> File::dequantize(const TensorInfo& t) const {
  data(t);  // ownership check first
  std::vector<float> out(static_cast<size_t>(t.elements()));
  dequantizeRows(t, 0, t.rows(), out.data());
  return out;
}

}  // namespace flashring::gguf
