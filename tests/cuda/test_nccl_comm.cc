// NcclCommunicator (flashring/nccl/nccl_comm.h). On one GPU: a communicator of one rank (NCCL allows one rank
// per device), sends to itself, the native all-reduce, the deadline on a receive nothing will match, host
// memory refused. Skips without a GPU; the unique id, which needs no device, is checked everywhere.
#include "flashring/config.h"
#if FLASHRING_WITH_NCCL
#include <gtest/gtest.h>

#include <chrono>
#include <exception>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "flashring/cuda/runtime.h"
#include "flashring/error.h"
#include "flashring/nccl/nccl_comm.h"
#include "flashring/thread_comm.h"

namespace flashring {
namespace {

TEST(NcclComm, ConstructionNeedsADevice) {
  if (cuda::deviceCount() > 0) GTEST_SKIP() << "a device is present: the no-device error path does not apply";
  NcclUniqueIdBytes id{};
  EXPECT_THROW(NcclCommunicator(id, 0, 1, 0), DeviceError);
  EXPECT_THROW(NcclCommunicator(id, 2, 1, 0), InvalidArgument);
}

TEST(NcclComm, UniqueIdsNeedNoDevice) {
  const NcclUniqueIdBytes a = NcclCommunicator::newUniqueId(), b = NcclCommunicator::newUniqueId();
  EXPECT_NE(a, b);
  EXPECT_NE(a, NcclUniqueIdBytes{});
}

// Without a device, bootstrap still carries the id over the host transport, then fails on every rank with the
// reason (no hang, no rank left behind).
TEST(NcclComm, BootstrapWithoutADeviceFailsOnEveryRank) {
  if (cuda::deviceCount() > 0) GTEST_SKIP() << "a device is present: the no-device error path does not apply";
  const auto errors = runThreadRanksCollect(3, [](Communicator& host) { (void)NcclCommunicator::bootstrap(host); });
  ASSERT_EQ(errors.size(), 3u);
  for (const auto& e : errors) {
    ASSERT_TRUE(e);
    try {
      std::rethrow_exception(e);
    } catch (const DeviceError& d) {  // the rank that found it
      EXPECT_NE(std::string(d.what()).find("no usable CUDA device"), std::string::npos) << d.what();
    } catch (const AbortedError& a) {  // the others, told by the abort, with the reason
      EXPECT_NE(std::string(a.what()).find("no usable CUDA device"), std::string::npos) << a.what();
    } catch (const std::exception& x) {
      ADD_FAILURE() << "expected DeviceError or AbortedError, got " << x.what();
    }
  }
}

TEST(NcclComm, OneRankSendsToItselfAndReduces) {
  REQUIRE_CUDA_DEVICE();
  NcclCommunicator comm(NcclCommunicator::newUniqueId(), 0, 1, 0, std::chrono::seconds(30));
  EXPECT_EQ(comm.transport(), "nccl");
  EXPECT_TRUE(comm.movesMemory(MemoryKind::Cuda));
  EXPECT_FALSE(comm.movesMemory(MemoryKind::Host));
  std::vector<float> host(1000), back(1000);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i) * 0.5f;
  cuda::DeviceBuffer a(4000), b(4000);
  a.upload(host.data(), 4000);
  Request s = comm.isend(a.data(), 4000, 0, 1), r = comm.irecv(b.data(), 4000, 0, 1);
  comm.wait(r, comm.deadline());
  comm.wait(s, comm.deadline());
  b.download(back.data(), 4000);
  EXPECT_EQ(back, host);
  comm.nativeAllreduceSum(static_cast<float*>(b.data()), 1000, comm.deadline(), true);
  b.download(back.data(), 4000);
  EXPECT_EQ(back, host);  // one rank: the sum is the value
  std::vector<float> h(4);
  EXPECT_THROW(comm.isend(h.data(), 16, 0, 1), InvalidArgument);  // host memory
}

TEST(NcclComm, UnmatchedReceiveEndsAtTheDeadline) {
  REQUIRE_CUDA_DEVICE();
  NcclCommunicator comm(NcclCommunicator::newUniqueId(), 0, 1, 0, std::chrono::seconds(30));
  cuda::DeviceBuffer b(64);
  Request r = comm.irecv(b.data(), 64, 0, 3);
  EXPECT_THROW(comm.wait(r, Clock::now() + std::chrono::milliseconds(300)), TimeoutError);
  EXPECT_TRUE(comm.aborted());
}

TEST(NcclComm, BootstrapOverThreads) {
  REQUIRE_CUDA_DEVICE();
  // One rank per device: as many thread ranks as there are GPUs (one here), the id sent over the threads.
  const int n = cuda::deviceCount();
  runThreadRanks(n, [](Communicator& host) {
    auto nccl = NcclCommunicator::bootstrap(host);
    EXPECT_EQ(nccl->rank(), host.rank());
    EXPECT_EQ(nccl->size(), host.size());
  });
}

}  // namespace
}  // namespace flashring
#endif
