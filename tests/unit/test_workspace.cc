// Workspace (workspace.h): alignment, reuse without growth, merging, growth by small steps, release and
// destruction returning memory, nested frames, memory kinds, one thread at a time, unwinding; and the block
// kernel in a caller's workspace (same bits as its local one, no growth across calls, nested calls).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "flashring/attention.h"
#include "flashring/error.h"
#include "flashring/workspace.h"

using namespace flashring;

namespace {

bool aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % Workspace::kAlignment == 0; }

// Host memory that counts what it hands out; the counts outlive the workspace.
struct Counts {
  int64_t live_bytes = 0;
  int calls = 0;
};
class CountingAllocator final : public WorkspaceAllocator {
 public:
  CountingAllocator(std::shared_ptr<Counts> c, MemoryKind kind) : c_(std::move(c)), kind_(kind) {}
  MemoryKind kind() const override { return kind_; }
  void* allocate(size_t bytes) override {
    c_->live_bytes += static_cast<int64_t>(bytes);
    ++c_->calls;
    return ::operator new (bytes, std::align_val_t{Workspace::kAlignment});
  }
  void deallocate(void* p, size_t bytes) noexcept override {
    c_->live_bytes -= static_cast<int64_t>(bytes);
    ::operator delete (p, std::align_val_t{Workspace::kAlignment});
  }

 private:
  std::shared_ptr<Counts> c_;
  MemoryKind kind_;
};

// One "call": a few buffers of a fixed pattern, one of them in a nested frame, each written in full.
void fakeCall(Workspace& ws, size_t scale) {
  Workspace::Frame f(ws);
  auto a = f.get<float>(1000 * scale);
  auto b = f.get<std::byte>(70000 * scale + 3);
  std::fill(a.begin(), a.end(), 1.f);
  std::memset(b.data(), 7, b.size());
  {
    Workspace::Frame inner(ws);
    auto c = inner.get<uint16_t>(50000 * scale);
    std::fill(c.begin(), c.end(), uint16_t{3});
  }
  auto d = f.get<double>(300 * scale);
  std::fill(d.begin(), d.end(), 2.0);
}

}  // namespace

TEST(Workspace, BuffersAreAlignedAndEmptyOnesNonNull) {
  Workspace ws;
  EXPECT_EQ(ws.bytesReserved(), 0u);  // nothing until a frame asks
  Workspace::Frame f(ws);
  for (size_t n : {size_t{1}, size_t{3}, size_t{17}, size_t{1000}, size_t{100000}}) {
    auto s = f.get<float>(n);
    EXPECT_EQ(s.size(), n);
    EXPECT_TRUE(aligned(s.data())) << n;
    std::fill(s.begin(), s.end(), 0.5f);
  }
  auto e = f.get<float>(0);
  EXPECT_EQ(e.size(), 0u);
  EXPECT_NE(e.data(), nullptr);
  EXPECT_EQ(Workspace::footprint(0), 0u);
  EXPECT_GE(Workspace::footprint(1), Workspace::kAlignment);
  EXPECT_THROW(f.get<float>(SIZE_MAX / 2), InvalidArgument);
}

TEST(Workspace, ReusedAcrossCallsItStopsGrowingAfterTheFirst) {
  Workspace ws;
  fakeCall(ws, 1);
  const size_t reserved = ws.bytesReserved();
  const uint64_t allocations = ws.allocations();
  EXPECT_GT(reserved, 0u);
  EXPECT_EQ(ws.bytesInUse(), 0u);
  for (int i = 0; i < 20; ++i) {
    fakeCall(ws, 1);
    fakeCall(ws, 0);  // smaller calls fit too
  }
  EXPECT_EQ(ws.bytesReserved(), reserved);
  EXPECT_EQ(ws.allocations(), allocations);
}

TEST(Workspace, SeveralBlocksAreMergedIntoOneOfThePeakSize) {
  auto counts = std::make_shared<Counts>();
  Workspace ws;
  ws.setAllocator(std::make_unique<CountingAllocator>(counts, MemoryKind::Host));
  size_t footprints = 0;
  {
    Workspace::Frame f(ws);
    for (size_t n : {size_t{100000}, size_t{200000}, size_t{300000}}) {  // each overflows the block before it
      f.get<std::byte>(n);
      footprints += Workspace::footprint(n);
    }
    EXPECT_EQ(ws.bytesInUse(), footprints);
    EXPECT_EQ(counts->calls, 3);
  }
  EXPECT_EQ(ws.peakBytes(), footprints);
  EXPECT_EQ(ws.bytesReserved(), footprints);  // one block, exactly the peak
  EXPECT_EQ(counts->calls, 4);
  EXPECT_EQ(counts->live_bytes, static_cast<int64_t>(footprints));
  {
    Workspace::Frame f(ws);
    for (size_t n : {size_t{100000}, size_t{200000}, size_t{300000}}) f.get<std::byte>(n);
  }
  EXPECT_EQ(counts->calls, 4);  // the second call fits
}

TEST(Workspace, SizesGrowingCallByCallAllocateLogarithmically) {
  Workspace ws;
  for (size_t n = 1000; n < 1000 + 4000 * 64; n += 4000) {  // a KV cache growing a little per decode step
    Workspace::Frame f(ws);
    auto a = f.get<float>(n);
    auto b = f.get<float>(n);
    a[0] = b[0] = 1.f;
  }
  EXPECT_LE(ws.allocations(), 20u);  // 64 growing calls, not one allocation (or two) each
}

TEST(Workspace, ReleaseAndDestructionReturnEveryByte) {
  auto counts = std::make_shared<Counts>();
  {
    Workspace ws;
    ws.setAllocator(std::make_unique<CountingAllocator>(counts, MemoryKind::Host));
    fakeCall(ws, 2);
    EXPECT_GT(counts->live_bytes, 0);
    EXPECT_EQ(counts->live_bytes, static_cast<int64_t>(ws.bytesReserved()));
    ws.release();
    EXPECT_EQ(counts->live_bytes, 0);
    EXPECT_EQ(ws.bytesReserved(), 0u);
    EXPECT_EQ(ws.peakBytes(), 0u);
    fakeCall(ws, 1);  // usable again
    EXPECT_GT(counts->live_bytes, 0);
  }
  EXPECT_EQ(counts->live_bytes, 0);  // the destructor freed the rest
}

TEST(Workspace, FramesNestWithoutClobberingTheirParents) {
  Workspace ws;
  Workspace::Frame outer(ws);
  EXPECT_EQ(ws.depth(), 1);
  auto a = outer.get<int>(1000);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<int>(i);
  const int* inner_at = nullptr;
  {
    Workspace::Frame inner(ws);
    EXPECT_EQ(ws.depth(), 2);
    // Only the innermost frame hands out memory: the outer one's buffers would be reset under it.
    EXPECT_THROW(outer.get<int>(1), InvalidArgument);
    auto b = inner.get<int>(5000);
    EXPECT_TRUE(b.data() >= a.data() + a.size() || b.data() + b.size() <= a.data());
    std::fill(b.begin(), b.end(), -1);
    inner_at = b.data();
    {
      Workspace::Frame deeper(ws);
      auto c = deeper.get<int>(300000);  // a new block: nothing moves
      std::fill(c.begin(), c.end(), -2);
    }
    for (int v : b) ASSERT_EQ(v, -1);
  }
  EXPECT_EQ(ws.depth(), 1);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], static_cast<int>(i));
  {
    Workspace::Frame again(ws);  // the inner frame's memory came back
    EXPECT_EQ(again.get<int>(5000).data(), inner_at);
  }
  auto d = outer.get<int>(10);  // the outer frame hands out again once the inner ones ended
  EXPECT_EQ(d.data(), inner_at);
  EXPECT_THROW(ws.release(), InvalidArgument);  // a frame is open
  EXPECT_THROW(ws.setAllocator(std::make_unique<CountingAllocator>(std::make_shared<Counts>(), MemoryKind::Host)),
               InvalidArgument);
}

TEST(Workspace, MemoryKindsHaveTheirOwnBlocksAndNeedAnAllocator) {
  Workspace ws;
  EXPECT_TRUE(ws.hasAllocator(MemoryKind::Host));
  EXPECT_FALSE(ws.hasAllocator(MemoryKind::Cuda));
  {
    Workspace::Frame f(ws);
    try {
      f.get<float>(10, MemoryKind::Cuda);
      FAIL() << "expected InvalidArgument";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("cuda"), std::string::npos) << e.what();
    }
    EXPECT_EQ(f.get<float>(0, MemoryKind::Cuda).size(), 0u);  // nothing to allocate
  }
  // A stand-in device allocator (host memory behind it): its bytes are counted apart from the host's.
  auto counts = std::make_shared<Counts>();
  ws.setAllocator(std::make_unique<CountingAllocator>(counts, MemoryKind::Cuda));
  EXPECT_TRUE(ws.hasAllocator(MemoryKind::Cuda));
  {
    Workspace::Frame f(ws);
    f.get<float>(1000);
    f.get<float>(2000, MemoryKind::Cuda);
  }
  EXPECT_EQ(ws.bytesReserved(MemoryKind::Cuda), static_cast<size_t>(counts->live_bytes));
  EXPECT_GT(ws.bytesReserved(MemoryKind::Host), 0u);
  EXPECT_EQ(ws.bytesReserved(), ws.bytesReserved(MemoryKind::Host) + ws.bytesReserved(MemoryKind::Cuda));
  EXPECT_THROW(ws.setAllocator(nullptr), InvalidArgument);
}

TEST(Workspace, AnotherThreadCannotOpenAFrameWhileOneIsOpen) {
  Workspace ws;
  bool threw = false;
  {
    Workspace::Frame f(ws);
    f.get<float>(10);
    std::thread t([&] {
      try {
        Workspace::Frame g(ws);
      } catch (const InvalidArgument&) {
        threw = true;
      }
    });
    t.join();
  }
  EXPECT_TRUE(threw);
  // Sequential use from another thread (ordered by the join) is fine.
  bool ok = false;
  std::thread t([&] {
    fakeCall(ws, 1);
    ok = true;
  });
  t.join();
  EXPECT_TRUE(ok);
  fakeCall(ws, 1);
}

TEST(Workspace, AFrameEndedByAnExceptionFreesNothing) {
  auto counts = std::make_shared<Counts>();
  Workspace ws;
  ws.setAllocator(std::make_unique<CountingAllocator>(counts, MemoryKind::Host));
  try {
    Workspace::Frame f(ws);
    f.get<std::byte>(100000);
    f.get<std::byte>(200000);  // a second block
    throw std::runtime_error("failed mid-call");
  } catch (const std::runtime_error&) {
  }
  // A transport may still write into the buffers until its abort returns: both blocks are still held.
  EXPECT_EQ(counts->calls, 2);
  EXPECT_EQ(ws.depth(), 0);
  EXPECT_EQ(ws.bytesInUse(), 0u);
  EXPECT_GE(counts->live_bytes, 300000);
  fakeCall(ws, 1);  // the next normal end merges them
  EXPECT_EQ(ws.bytesReserved(), ws.peakBytes());
}

// ------------------------------------------------------------------------------------------- block kernel

namespace {

std::vector<float> randomVector(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

struct Attn {
  AttentionShape shape;
  std::vector<float> q, k, v;
  explicit Attn(AttentionShape s, uint32_t seed = 1) : shape(s) {
    q = randomVector(size_t(shape.q_len) * shape.heads * shape.head_dim, seed);
    k = randomVector(size_t(shape.kv_len) * shape.kv_heads * shape.head_dim, seed + 1);
    v = randomVector(size_t(shape.kv_len) * shape.kv_heads * shape.head_dim, seed + 2);
  }
  std::pair<std::vector<float>, std::vector<float>> run(const BlockAttentionOptions& o) const {
    std::vector<float> out(q.size()), lse(size_t(shape.q_len) * shape.heads);
    blockAttention(q.data(), k.data(), v.data(), shape, o, out.data(), lse.data());
    return {out, lse};
  }
};

bool sameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

}  // namespace

TEST(WorkspaceKernel, ACallersWorkspaceGivesTheSameBitsAndStopsGrowing) {
  const Attn t({1, 48, 200, 4, 2, 64});
  BlockAttentionOptions o;
  o.causal = true;
  o.q_offset = 152;
  const auto local = t.run(o);  // no workspace: one local to the call
  Workspace ws;
  o.workspace = &ws;
  const auto first = t.run(o);
  const size_t reserved = ws.bytesReserved();
  const uint64_t allocations = ws.allocations();
  EXPECT_EQ(allocations, 1u);  // the kernel reserves its whole need at once
  for (int i = 0; i < 5; ++i) {
    const auto again = t.run(o);
    EXPECT_TRUE(sameBits(again.first, local.first));
    EXPECT_TRUE(sameBits(again.second, local.second));
  }
  EXPECT_TRUE(sameBits(first.first, local.first));
  EXPECT_TRUE(sameBits(first.second, local.second));
  EXPECT_EQ(ws.bytesReserved(), reserved);
  EXPECT_EQ(ws.allocations(), allocations);
  EXPECT_EQ(ws.bytesInUse(), 0u);
}

TEST(WorkspaceKernel, ACallFromTheProgressHookNestsInTheSameWorkspace) {
  const Attn small({1, 8, 40, 2, 1, 32}, 10);
  const auto small_alone = small.run({});
  // Enough work for the hook (called about every 0.5 ms) to run a few times.
  const Attn large({1, 512, 2048, 8, 8, 64}, 20);
  Workspace ws;
  BlockAttentionOptions plain;
  plain.workspace = &ws;
  const auto large_alone = large.run(plain);

  BlockAttentionOptions o = plain;
  int calls = 0;
  bool nested_same = true;
  o.progress = [&] {
    BlockAttentionOptions n;
    n.workspace = &ws;  // the outer call's frame is open: this one nests above it
    const auto nested = small.run(n);
    nested_same =
        nested_same && sameBits(nested.first, small_alone.first) && sameBits(nested.second, small_alone.second);
    ++calls;
  };
  const auto large_nested = large.run(o);
  if (calls == 0) GTEST_SKIP() << "the progress hook was not called (a very fast CPU)";
  EXPECT_TRUE(sameBits(large_nested.first, large_alone.first));
  EXPECT_TRUE(sameBits(large_nested.second, large_alone.second));
  EXPECT_TRUE(nested_same);
  EXPECT_EQ(ws.depth(), 0);
}

// AddressSanitizer builds poison what no frame has handed out, so an overrun or a use after the frame ended is
// reported (an arena would otherwise hide both from ASan), and fill fresh buffers with NaN.
#if defined(__SANITIZE_ADDRESS__)
TEST(WorkspaceDeathTest, AddressSanitizerSeesOverrunsAndUsesAfterTheFrame) {
  {
    Workspace ws;
    Workspace::Frame f(ws);
    auto s = f.get<float>(4);
    EXPECT_TRUE(std::isnan(s[0]) && std::isnan(s[3]));
  }
  EXPECT_DEATH(
      {
        Workspace ws;
        Workspace::Frame f(ws);
        volatile char* p = f.get<char>(10).data();
        p[10] = 1;
      },
      "use-after-poison");
  EXPECT_DEATH(
      {
        Workspace ws;
        volatile float* p = nullptr;
        {
          Workspace::Frame f(ws);
          p = f.get<float>(16).data();
        }
        p[0] = 1.f;
      },
      "use-after-poison");
}
#endif
