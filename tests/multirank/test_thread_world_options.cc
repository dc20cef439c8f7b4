// ThreadWorldOptions (thread_comm.h): the copy hook a world moves payloads with (the one-GPU world's device copies
// use it), the transport name and the memory kinds it reports, and a failing copy aborting every rank.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <string>
#include <vector>

#include "flashring/error.h"
#include "flashring/thread_comm.h"

namespace flashring {
namespace {

TEST(ThreadWorldOptions, CopyHookMovesEveryPayloadAndItsFailureAborts) {
  std::atomic<size_t> copied{0};
  ThreadWorldOptions o;
  o.transport = "thread-test";
  o.copy = [&](void* dst, const void* src, size_t bytes) -> std::string {
    std::memcpy(dst, src, bytes);
    copied += bytes;
    return {};
  };
  runThreadRanks(
      3,
      [](Communicator& c) {
        EXPECT_EQ(c.transport(), "thread-test");
        EXPECT_FALSE(c.movesMemory(MemoryKind::Cuda));
        std::vector<int> out(10, c.rank()), in(10, -1);
        const int right = (c.rank() + 1) % c.size(), left = (c.rank() + c.size() - 1) % c.size();
        Request s = c.isend(out.data(), 40, right, 5), r = c.irecv(in.data(), 40, left, 5);
        c.wait(r, c.deadline());
        c.wait(s, c.deadline());
        EXPECT_EQ(in, std::vector<int>(10, left));
      },
      std::chrono::milliseconds(0), o);
  EXPECT_EQ(copied.load(), 3u * 40u);
  o.copy = [](void*, const void*, size_t) -> std::string { return "device lost"; };
  const auto errors = runThreadRanksCollect(
      2,
      [](Communicator& c) {
        int v = 1;
        Request q = c.rank() == 0 ? c.isend(&v, 4, 1, 1) : c.irecv(&v, 4, 0, 1);
        c.wait(q, c.deadline());
      },
      std::chrono::milliseconds(5000), o);
  for (const auto& e : errors) {
    ASSERT_TRUE(e);
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      EXPECT_NE(std::string(x.what()).find("device lost"), std::string::npos) << x.what();
    }
  }
}

}  // namespace
}  // namespace flashring
