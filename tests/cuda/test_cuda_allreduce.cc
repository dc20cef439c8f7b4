// The pipelined two-step all-reduce on device buffers (allreduce of a CUDA TensorView with cuda::context()), four
// ranks sharing one GPU (cuda/thread_world.h): bitwise the host all-reduce of the same inputs. Skips without a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "cuda_test_util.h"
#include "flashring/allreduce.h"
#include "flashring/cuda/context.h"
#include "flashring/cuda/runtime.h"
#include "flashring/cuda/thread_world.h"

namespace flashring {
namespace {

TEST(CudaAllreduce, OneGpuRanksGiveTheHostBits) {
  REQUIRE_CUDA_DEVICE();
  const size_t n = (size_t{1} << 20) + 333;
  auto input = [&](int rank) {
    std::mt19937 rng(static_cast<uint32_t>(rank + 1));
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& x : v) x = nd(rng);
    return v;
  };
  for (const char* algo : {"flash-int4", "flash-int8", "twostep-bf16", "twostep-fp32"}) {
    AllreduceOptions opt = allreduceOptionsFromName(algo);
    std::vector<std::vector<float>> host(4), dev(4);
    runThreadRanks(4, [&](Communicator& c) {
      host[static_cast<size_t>(c.rank())] = input(c.rank());
      allreduce(c, host[static_cast<size_t>(c.rank())], opt);
    });
    cuda::runOneGpuRanks(4, [&](Communicator& c) {
      const std::vector<float> x = input(c.rank());
      cuda::DeviceBuffer d(n * 4);
      d.upload(x.data(), n * 4);
      AllreduceOptions dev_opt = opt;
      dev_opt.exec = cuda::context();
      allreduce(c, TensorView::contiguous(d.data(), DType::F32, {static_cast<int64_t>(n)}, {MemoryKind::Cuda, 0}),
                dev_opt);
      auto& out = dev[static_cast<size_t>(c.rank())];
      out.resize(n);
      d.download(out.data(), n * 4);
    });
    for (int r = 0; r < 4; ++r)
      ASSERT_EQ(std::memcmp(host[static_cast<size_t>(r)].data(), dev[static_cast<size_t>(r)].data(), n * 4), 0)
          << algo << " rank " << r;
  }
}

}  // namespace
}  // namespace flashring
