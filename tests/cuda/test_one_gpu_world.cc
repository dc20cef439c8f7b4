// The one-GPU thread world (cuda/thread_world.h): ranks as threads exchanging device buffers. Skips without a GPU;
// the copy hook itself is checked on the host in every build (tests/multirank/test_thread_world_options.cc).
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "flashring/cuda/runtime.h"
#include "flashring/cuda/thread_world.h"
#include "flashring/error.h"

namespace flashring {
namespace {

TEST(OneGpuWorld, RanksExchangeDeviceBuffers) {
  REQUIRE_CUDA_DEVICE();
  cuda::runOneGpuRanks(4, [](Communicator& c) {
    EXPECT_EQ(c.transport(), "thread-cuda");
    EXPECT_TRUE(c.movesMemory(MemoryKind::Cuda));
    std::vector<float> host(256, static_cast<float>(c.rank())), back(256);
    cuda::DeviceBuffer mine(1024), theirs(1024);
    mine.upload(host.data(), 1024);
    const int right = (c.rank() + 1) % c.size(), left = (c.rank() + c.size() - 1) % c.size();
    Request s = c.isend(mine.data(), 1024, right, 2), r = c.irecv(theirs.data(), 1024, left, 2);
    c.wait(r, c.deadline());
    c.wait(s, c.deadline());
    theirs.download(back.data(), 1024);
    EXPECT_EQ(back, std::vector<float>(256, static_cast<float>(left)));
  });
}

}  // namespace
}  // namespace flashring
