// Shared pieces of the Python extension flashring._core: communicator handles, array arguments, the GIL.
//
// Arrays come in as nanobind ndarrays (numpy arrays through the buffer protocol / DLPack, PyTorch CPU tensors
// through DLPack), never implicitly converted (every array parameter is .noconvert()), so an in-place argument
// is always the caller's memory. fp32 is used in place without a copy; fp16 / bf16 are converted to fp32 (and
// written back in their dtype for in-place arguments). Every rejection is an InvalidArgument naming the
// argument, which Python sees as flashring.InvalidArgument (a ValueError).
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "flashring/comm.h"

namespace nb = nanobind;

namespace flashring::py {

// A communicator as Python holds it: the C++ communicator and what keeps it alive (the thread world, the parent
// of a split, or the MPI communicator itself). close() drops this handle's hold; using a closed handle raises.
struct Comm {
  std::shared_ptr<void> owner;
  Communicator* comm = nullptr;
  std::string kind;  // "thread", "mpi", "group"
  Communicator& get() const;
  void close();
};

enum class DType { F32, F16, BF16 };
const char* dtypeName(DType d);

// A C-contiguous CPU array of f32 / f16 / bf16 values.
struct FloatArray {
  void* data = nullptr;
  size_t count = 0;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  int64_t dim(size_t i) const { return shape[i]; }
};

// Checks `a` (device CPU, dtype float32/float16/bfloat16, C-contiguous) and describes it; `name` is the
// Python argument's name for the error message. Empty arrays are allowed (count 0).
FloatArray floatArray(const nb::ndarray<>& a, const char* name);
// Same, for a read-only input.
FloatArray floatArray(const nb::ndarray<nb::ro>& a, const char* name);

// fp32 view of `a`: the array itself when it is fp32, else a converted copy in `scratch`.
std::span<float> toF32(const FloatArray& a, std::vector<float>& scratch);
// Writes `values` back into `a` in its dtype (no-op when `values` is a's own memory).
void fromF32(std::span<const float> values, const FloatArray& a);

// bf16 / fp16 <-> fp32, round to nearest even (NaN kept quiet).
uint16_t floatToBf16(float f);
float bf16ToFloat(uint16_t h);
uint16_t floatToHalf(float f);
float halfToFloat(uint16_t h);

// Binding functions of the module's parts (module.cc calls them in order).
void bindErrors(nb::module_& m);
void bindComm(nb::module_& m);
void bindAllreduce(nb::module_& m);
void bindAttention(nb::module_& m);
void bindEngine(nb::module_& m);

}  // namespace flashring::py
