// allreduce() of tensor views (allreduce.h): host f32 and bf16 views, and the device path through the collectives'
// verbs (device_ops.h). The device schedule is exercised on the CPU with a stand-in "device" whose verbs are the
// host's but whose memory kind is Cuda: it must give the host all-reduce's bits, through the arena, header copies
// and synchronizations of the device path. The real CUDA verbs run in tests/cuda.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flashring/allreduce.h"
#include "flashring/device_ops.h"
#include "flashring/error.h"
#include "flashring/quant.h"
#include "flashring/thread_comm.h"

namespace flashring {
namespace {

std::vector<float> rankInput(int rank, size_t n) {
  std::mt19937 rng(static_cast<uint32_t>(100 + rank));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// The host's verbs, reporting device memory: the device path of the collectives on host buffers.
class StandInDevice final : public DeviceOps {
 public:
  mutable std::atomic<int> syncs{0}, allocations{0}, releases{0}, header_copies{0};
  MemoryKind memory() const override { return MemoryKind::Cuda; }
  const char* name() const override { return "stand-in"; }
  void encode(const WireCodec& c, const float* x, size_t n, std::byte* out, void* s) const override {
    hostDeviceOps().encode(c, x, n, out, s);
  }
  void decode(const WireCodec& c, const std::byte* in, size_t n, float* out, void* s) const override {
    hostDeviceOps().decode(c, in, n, out, s);
  }
  void decodeAccumulate(const WireCodec& c, const std::byte* in, size_t n, float* acc, void* s) const override {
    hostDeviceOps().decodeAccumulate(c, in, n, acc, s);
  }
  void accumulate(float* acc, const float* x, size_t n, void* s) const override {
    hostDeviceOps().accumulate(acc, x, n, s);
  }
  void zero(float* p, size_t n, void* s) const override { hostDeviceOps().zero(p, n, s); }
  void fromHost(void* d, const void* h, size_t b, void* s) const override {
    ++header_copies;
    hostDeviceOps().fromHost(d, h, b, s);
  }
  void toHost(void* h, const void* d, size_t b, void* s) const override {
    ++header_copies;
    hostDeviceOps().toHost(h, d, b, s);
  }
  void synchronize(void*) const override { ++syncs; }
  void* allocate(size_t b, void* s) const override {
    ++allocations;
    return hostDeviceOps().allocate(b, s);
  }
  void release(void* p, void* s) const override {
    ++releases;
    hostDeviceOps().release(p, s);
  }
};

AllreduceOptions withExec(AllreduceOptions o, ExecContext ctx) {
  o.exec = ctx;
  return o;
}

TEST(AllreduceViews, DeviceScheduleThroughTheVerbsGivesTheHostBits) {
  const size_t n = 10000 + 37;
  for (const char* algo : {"flash-int4", "flash-int8-int4", "twostep-bf16", "twostep-fp32", "auto"}) {
    AllreduceOptions opt = allreduceOptionsFromName(algo);
    opt.chunk_elems = 2048;  // several pipeline chunks
    std::vector<std::vector<float>> host(4), dev(4);
    runThreadRanks(4, [&](Communicator& c) {
      host[static_cast<size_t>(c.rank())] = rankInput(c.rank(), n);
      allreduce(c, host[static_cast<size_t>(c.rank())], opt);
    });
    StandInDevice ops;
    ThreadWorldOptions world;
    world.moves_cuda = true;
    runThreadRanks(
        4,
        [&](Communicator& c) {
          auto& d = dev[static_cast<size_t>(c.rank())];
          d = rankInput(c.rank(), n);
          AllreduceStats st;
          allreduce(c, TensorView::contiguous(d.data(), DType::F32, {static_cast<int64_t>(n)}, {MemoryKind::Cuda, 0}),
                    withExec(opt, ExecContext{nullptr, &ops}), &st);
          EXPECT_TRUE(st.algorithm == AllreduceAlgorithm::TwoStep || st.algorithm == AllreduceAlgorithm::Quantized);
        },
        std::chrono::milliseconds(0), world);
    for (int r = 0; r < 4; ++r) {
      ASSERT_EQ(std::memcmp(host[static_cast<size_t>(r)].data(), dev[static_cast<size_t>(r)].data(), n * 4), 0)
          << algo << " rank " << r;
    }
    EXPECT_EQ(ops.allocations.load(), 4);  // one arena per rank and call, released
    EXPECT_EQ(ops.releases.load(), 4);
    EXPECT_GT(ops.syncs.load(), 0);
    EXPECT_GT(ops.header_copies.load(), 0);
  }
}

TEST(AllreduceViews, DeviceMemoryErrorsNameWhatIsMissing) {
  std::vector<float> buf(64, 1.0f);
  const TensorView dv = TensorView::contiguous(buf.data(), DType::F32, {64}, {MemoryKind::Cuda, 0});
  StandInDevice ops;
  auto expectError = [&](ThreadWorldOptions world, ExecContext ctx, AllreduceOptions opt, const std::string& part) {
    const auto errors = runThreadRanksCollect(
        2, [&](Communicator& c) { allreduce(c, dv, withExec(opt, ctx)); }, std::chrono::milliseconds(0), world);
    for (const auto& e : errors) {
      ASSERT_TRUE(e) << part;
      try {
        std::rethrow_exception(e);
      } catch (const InvalidArgument& x) {
        EXPECT_NE(std::string(x.what()).find(part), std::string::npos) << x.what();
      } catch (const std::exception& x) {
        ADD_FAILURE() << "expected InvalidArgument (" << part << "), got " << x.what();
      }
    }
  };
  ThreadWorldOptions moves;
  moves.moves_cuda = true;
  expectError({}, {}, {}, "needs the verbs of its memory");                      // no ops
  expectError({}, ExecContext{nullptr, &ops}, {}, "does not move cuda memory");  // host-only transport
  expectError(moves, ExecContext{nullptr, &ops}, allreduceOptionsFromName("ring-fp32"), "not available");
}

TEST(AllreduceViews, HostBf16IsTheFp32ResultRoundedOnce) {
  const size_t n = 3000;
  std::vector<std::vector<float>> f32(3);
  std::vector<std::vector<uint16_t>> b16(3);
  runThreadRanks(3, [&](Communicator& c) {
    const size_t r = static_cast<size_t>(c.rank());
    std::vector<float> x = rankInput(c.rank(), n);
    b16[r].resize(n);
    quant::toBf16(x.data(), n, b16[r].data());
    f32[r].resize(n);
    quant::fromBf16(b16[r].data(), n, f32[r].data());  // the widened input
    allreduce(c, f32[r], allreduceOptionsFromName("twostep-fp32"));
    allreduce(c, TensorView::contiguous(b16[r].data(), DType::BF16, {static_cast<int64_t>(n)}),
              allreduceOptionsFromName("twostep-fp32"));
  });
  for (size_t r = 0; r < 3; ++r) {
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(b16[r][i], quant::floatToBf16(f32[r][i])) << r << " " << i;
  }
  EXPECT_THROW(runThreadRanks(1,
                              [](Communicator& c) {
                                std::vector<uint16_t> h(4);
                                allreduce(c, TensorView::contiguous(h.data(), DType::F16, {4}));
                              }),
               InvalidArgument);
}

}  // namespace
}  // namespace flashring
