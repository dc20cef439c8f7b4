// TensorView (flashring/tensor.h): shapes, strides, contiguity and the errors that name what was wrong.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "flashring/config.h"
#include "flashring/error.h"
#include "flashring/tensor.h"

namespace flashring {
namespace {

TEST(TensorView, ContiguousShapeAndStrides) {
  std::vector<float> buf(2 * 3 * 4);
  const TensorView v = TensorView::contiguous(buf.data(), DType::F32, {2, 3, 4});
  EXPECT_EQ(v.ndim, 3);
  EXPECT_EQ(v.numel(), 24);
  EXPECT_EQ(v.bytes(), 96u);
  EXPECT_EQ(v.strides[0], 12);
  EXPECT_EQ(v.strides[1], 4);
  EXPECT_EQ(v.strides[2], 1);
  EXPECT_TRUE(v.isContiguous());
  EXPECT_EQ(v.describe(), "f32[2, 3, 4] host");
  EXPECT_NO_THROW(v.checkContiguous("test"));
  const TensorView h = TensorView::contiguous(buf.data(), DType::BF16, {5}, Device{MemoryKind::Cuda, 1});
  EXPECT_EQ(h.bytes(), 10u);
  EXPECT_EQ(h.describe(), "bf16[5] cuda:1");
  EXPECT_EQ(dtypeSize(DType::F16), 2u);
}

TEST(TensorView, StridedAndInvalidViewsAreNamed) {
  std::vector<float> buf(16);
  TensorView v = TensorView::contiguous(buf.data(), DType::F32, {4, 2});
  v.strides[0] = 4;  // every other pair: not contiguous
  EXPECT_FALSE(v.isContiguous());
  try {
    v.checkContiguous("allreduce");
    FAIL() << "a strided view was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("allreduce: f32[4, 2] host is not contiguous"), std::string::npos) << e.what();
  }
  EXPECT_THROW(TensorView::contiguous(buf.data(), DType::F32, {2, -1}), InvalidArgument);
  EXPECT_THROW(TensorView::contiguous(buf.data(), DType::F32, {1, 1, 1, 1, 1}), InvalidArgument);
  const TensorView null_data = TensorView::contiguous(nullptr, DType::F32, {3});
  EXPECT_THROW(null_data.checkContiguous("x"), InvalidArgument);
  const TensorView empty = TensorView::contiguous(nullptr, DType::F32, {0, 7});  // empty is valid
  EXPECT_EQ(empty.numel(), 0);
  EXPECT_NO_THROW(empty.checkContiguous("x"));
}

TEST(BuildConfig, MacrosAreZeroOrOne) {
  EXPECT_TRUE(FLASHRING_WITH_MPI == 0 || FLASHRING_WITH_MPI == 1);
  EXPECT_TRUE(FLASHRING_WITH_CUDA == 0 || FLASHRING_WITH_CUDA == 1);
  EXPECT_TRUE(FLASHRING_WITH_NCCL == 0 || FLASHRING_WITH_NCCL == 1);
  EXPECT_FALSE(FLASHRING_WITH_NCCL && !FLASHRING_WITH_CUDA);
  EXPECT_STREQ(FLASHRING_VERSION_STRING, "0.1.0");
}

}  // namespace
}  // namespace flashring
