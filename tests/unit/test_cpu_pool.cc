// Tests of cpu::parallelFor (include/flashring/cpu.h, src/cpu/runtime.cc): every item of [0, n) covered once
// by at most threads() contiguous ranges of at least `grain` items; the first exception of a range rethrown
// on the caller, the pool usable afterwards; calls from several threads at once (each runs, none blocks);
// a parallelFor inside a range (runs inline); thread counts changed between calls; many calls in a row
// (the lock-free hand-off of jobs between the caller and the workers).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "flashring/cpu.h"

namespace flashring::cpu {
namespace {

class ThreadsGuard {
 public:
  ThreadsGuard() : threads_(threads()) {}
  ~ThreadsGuard() { setThreads(threads_); }
  ThreadsGuard(const ThreadsGuard&) = delete;
  ThreadsGuard& operator=(const ThreadsGuard&) = delete;

 private:
  int threads_;
};

// The ranges one call hands out, sorted.
std::vector<std::pair<int64_t, int64_t>> rangesOf(int64_t n, int64_t grain) {
  std::mutex m;
  std::vector<std::pair<int64_t, int64_t>> r;
  parallelFor(n, grain, [&](int64_t b, int64_t e) {
    std::lock_guard<std::mutex> lk(m);
    r.emplace_back(b, e);
  });
  std::sort(r.begin(), r.end());
  return r;
}

TEST(CpuPool, RangesCoverEveryItemOnce) {
  ThreadsGuard guard;
  for (int t : {1, 2, 3, 4, 7}) {
    setThreads(t);
    for (int64_t n : {int64_t{1}, int64_t{2}, int64_t{5}, int64_t{16}, int64_t{31}, int64_t{32}, int64_t{100},
                      int64_t{1000}, int64_t{49152}}) {
      for (int64_t grain : {int64_t{0}, int64_t{1}, int64_t{8}, int64_t{16}, int64_t{1000}}) {
        SCOPED_TRACE("threads " + std::to_string(t) + ", n " + std::to_string(n) + ", grain " + std::to_string(grain));
        const auto r = rangesOf(n, grain);
        ASSERT_FALSE(r.empty());
        ASSERT_LE(r.size(), static_cast<size_t>(t));
        int64_t at = 0;
        for (const auto& [b, e] : r) {
          ASSERT_EQ(b, at);
          ASSERT_LT(b, e);
          if (r.size() > 1) {
            ASSERT_GE(e - b, std::max<int64_t>(grain, 1));
          }
          at = e;
        }
        ASSERT_EQ(at, n);
      }
    }
  }
  setThreads(2);
  EXPECT_TRUE(rangesOf(0, 1).empty());
  EXPECT_TRUE(rangesOf(-3, 1).empty());
}

TEST(CpuPool, ExceptionIsRethrownOnTheCallerAndThePoolStillWorks) {
  ThreadsGuard guard;
  for (int t : {1, 2, 4}) {
    setThreads(t);
    for (int64_t bad : {int64_t{0}, int64_t{999}}) {  // the first range, the last range
      SCOPED_TRACE("threads " + std::to_string(t) + ", bad item " + std::to_string(bad));
      std::atomic<int64_t> covered{0};
      try {
        parallelFor(1000, 10, [&](int64_t b, int64_t e) {
          covered += e - b;
          if (b <= bad && bad < e) throw std::runtime_error("range failed");
        });
        ADD_FAILURE() << "no exception";
      } catch (const std::runtime_error& e) {
        EXPECT_STREQ(e.what(), "range failed");
      }
      EXPECT_EQ(covered.load(), 1000) << "the other ranges ran to the end";
      std::atomic<int64_t> sum{0};
      parallelFor(1000, 10, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) sum += i;
      });
      EXPECT_EQ(sum.load(), 999 * 1000 / 2);
    }
  }
}

TEST(CpuPool, ManyCallsInARow) {
  ThreadsGuard guard;
  for (int t : {2, 3}) {
    setThreads(t);
    std::vector<int64_t> v(257, 0);
    for (int call = 0; call < 20000; ++call) {
      const int64_t n = 1 + call % 257;
      parallelFor(n, 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) ++v[static_cast<size_t>(i)];
      });
    }
    int64_t total = 0;
    for (size_t i = 0; i < v.size(); ++i) total += v[i];
    int64_t want = 0;
    for (int call = 0; call < 20000; ++call) want += 1 + call % 257;
    EXPECT_EQ(total, want);
    // Item i is covered by every call with n > i.
    for (size_t i = 0; i < v.size(); ++i) {
      int64_t calls = 0;
      for (int call = 0; call < 20000; ++call) calls += (1 + call % 257) > static_cast<int>(i);
      ASSERT_EQ(v[i], calls) << i;
    }
  }
}

TEST(CpuPool, ConcurrentCallersNeverBlock) {
  ThreadsGuard guard;
  setThreads(2);
  // Each caller's body waits until every caller is inside a body: if any call waited for the pool while
  // another caller's job held it, this would never finish.
  constexpr int kCallers = 4;
  std::atomic<int> inside{0};
  std::vector<int64_t> sums(kCallers, 0);
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      std::mutex m;
      parallelFor(64, 1, [&](int64_t b, int64_t e) {
        if (b == 0) {
          inside.fetch_add(1);
          while (inside.load() < kCallers) std::this_thread::yield();
        }
        std::lock_guard<std::mutex> lk(m);
        for (int64_t i = b; i < e; ++i) sums[static_cast<size_t>(c)] += i;
      });
    });
  }
  for (auto& t : callers) t.join();
  for (int c = 0; c < kCallers; ++c) EXPECT_EQ(sums[static_cast<size_t>(c)], 63 * 64 / 2) << c;
}

TEST(CpuPool, NestedCallRunsInline) {
  ThreadsGuard guard;
  setThreads(2);
  std::atomic<int64_t> sum{0};
  parallelFor(100, 1, [&](int64_t b, int64_t e) {
    parallelFor(e - b, 1, [&](int64_t ib, int64_t ie) {
      for (int64_t i = ib; i < ie; ++i) sum += b + i;
    });
  });
  EXPECT_EQ(sum.load(), 99 * 100 / 2);
}

TEST(CpuPool, ThreadCountChangesBetweenCalls) {
  ThreadsGuard guard;
  for (int t : {1, 2, 4, 3, 1, 2}) {
    setThreads(t);
    std::atomic<int64_t> sum{0};
    std::atomic<int> ranges{0};
    parallelFor(4096, 16, [&](int64_t b, int64_t e) {
      ++ranges;
      for (int64_t i = b; i < e; ++i) sum += i;
    });
    EXPECT_EQ(sum.load(), 4095 * 4096 / 2) << t;
    EXPECT_LE(ranges.load(), t);
  }
}

}  // namespace
}  // namespace flashring::cpu
