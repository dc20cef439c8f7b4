// TensorView helpers (tensor.h).
#include "flashring/tensor.h"

#include <fmt/format.h>

#include "flashring/error.h"

namespace flashring {

size_t dtypeSize(DType t) { return t == DType::F32 ? 4 : 2; }

const char* dtypeName(DType t) {
  switch (t) {
    case DType::F32:
      return "f32";
    case DType::F16:
      return "f16";
    case DType::BF16:
      return "bf16";
  }
  return "?";
}

const char* memoryKindName(MemoryKind k) { return k == MemoryKind::Host ? "host" : "cuda"; }

std::string describe(const Device& d) {
  return d.kind == MemoryKind::Host ? std::string("host") : fmt::format("cuda:{}", d.index);
}

TensorView TensorView::contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device) {
  if (shape.size() < 1 || shape.size() > static_cast<size_t>(kMaxDims)) {
    throw InvalidArgument(fmt::format("TensorView: {} dimensions; 1 to {} are supported", shape.size(), kMaxDims));
  }
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.ndim = static_cast<int>(shape.size());
  v.device = device;
  int i = 0;
  for (int64_t e : shape) {
    if (e < 0) throw InvalidArgument(fmt::format("TensorView: extent {} of dimension {} is negative", e, i));
    v.shape[static_cast<size_t>(i++)] = e;
  }
  int64_t stride = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.strides[static_cast<size_t>(d)] = stride;
    stride *= v.shape[static_cast<size_t>(d)];
  }
  return v;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[static_cast<size_t>(d)];
  return n;
}

bool TensorView::isContiguous() const {
  int64_t stride = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    const auto i = static_cast<size_t>(d);
    if (shape[i] != 1 && strides[i] != stride) return false;
    stride *= shape[i];
  }
  return true;
}

std::string TensorView::describe() const {
  std::string s = fmt::format("{}[", dtypeName(dtype));
  for (int d = 0; d < ndim; ++d) s += fmt::format("{}{}", d ? ", " : "", shape[static_cast<size_t>(d)]);
  return s + "] " + flashring::describe(device);
}

void TensorView::checkContiguous(const char* what) const {
  if (ndim < 1 || ndim > kMaxDims) throw InvalidArgument(fmt::format("{}: tensor with {} dimensions", what, ndim));
  for (int d = 0; d < ndim; ++d) {
    if (shape[static_cast<size_t>(d)] < 0)
      throw InvalidArgument(fmt::format("{}: negative extent in {}", what, describe()));
  }
  if (data == nullptr && numel() > 0) throw InvalidArgument(fmt::format("{}: null data for {}", what, describe()));
  if (!isContiguous()) throw InvalidArgument(fmt::format("{}: {} is not contiguous", what, describe()));
}

}  // namespace flashring
