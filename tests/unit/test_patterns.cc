// Transport-free index arithmetic: ring schedules and slice partitioning.
#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "collectives/common.h"
#include "comm/patterns/ring.h"
#include "comm/tags.h"

using namespace flashring;

TEST(Ring, ReduceScatterScheduleEndsWithEachRankOwningItsChunk) {
  for (int n = 1; n <= 9; ++n) {
    // Simulate which ranks' contributions each (rank, chunk) partial sum holds.
    std::vector<std::vector<std::set<int>>> has(n, std::vector<std::set<int>>(n));
    for (int r = 0; r < n; ++r)
      for (int c = 0; c < n; ++c) has[r][c] = {r};
    for (int s = 0; s < n - 1; ++s) {
      auto next = has;
      for (int r = 0; r < n; ++r) {
        const int to = ring::next(r, n);
        const int c = ring::rsSendChunk(r, s, n);
        ASSERT_EQ(c, ring::rsRecvChunk(to, s, n)) << "sender and receiver disagree at step " << s;
        next[to][c].insert(has[r][c].begin(), has[r][c].end());
      }
      has = next;
    }
    for (int r = 0; r < n; ++r) EXPECT_EQ(has[r][ring::ownedChunk(r, n)].size(), static_cast<size_t>(n)) << "n=" << n;
  }
}

TEST(Ring, AllGatherScheduleDeliversEveryChunkEverywhere) {
  for (int n = 1; n <= 9; ++n) {
    std::vector<std::set<int>> has(n);
    for (int r = 0; r < n; ++r) has[r] = {ring::ownedChunk(r, n)};
    for (int s = 0; s < n - 1; ++s) {
      auto next = has;
      for (int r = 0; r < n; ++r) {
        const int to = ring::next(r, n);
        const int c = ring::agSendChunk(r, s, n);
        ASSERT_TRUE(has[r].count(c)) << "rank " << r << " forwards chunk " << c << " it does not have";
        ASSERT_EQ(c, ring::agRecvChunk(to, s, n));
        next[to].insert(c);
      }
      has = next;
    }
    for (int r = 0; r < n; ++r) EXPECT_EQ(has[r].size(), static_cast<size_t>(n));
  }
}

TEST(Ring, WrapHandlesNegativeOffsets) {
  EXPECT_EQ(ring::wrap(0, -1, 4), 3);
  EXPECT_EQ(ring::wrap(1, -9, 4), 0);
  EXPECT_EQ(ring::prev(0, 1), 0);
  EXPECT_EQ(ring::next(3, 4), 0);
}

TEST(Partition, CoversTheRangeOnAlignedBoundaries) {
  for (size_t n : {0, 1, 31, 128, 1000, 4097, 100000}) {
    for (int parts : {1, 2, 3, 4, 7, 8}) {
      for (size_t align : {1, 16, 128}) {
        size_t expect_begin = 0;
        for (int i = 0; i < parts; ++i) {
          auto r = detail::part(n, parts, i, align);
          EXPECT_EQ(r.begin, expect_begin);
          EXPECT_LE(r.begin, r.end);
          if (r.end != n) {
            EXPECT_EQ(r.end % align, 0u);
          }
          expect_begin = r.end;
        }
        EXPECT_EQ(expect_begin, n);
      }
    }
  }
}

TEST(Tags, SpacesDoNotOverlapAndStayInRange) {
  EXPECT_NE(tags::make(tags::kSpForward, 3), tags::make(tags::kSpBackward, 3));
  EXPECT_EQ(tags::make(tags::kRingReduceScatter, tags::kStepMask + 1), tags::make(tags::kRingReduceScatter, 0));
  EXPECT_LE(tags::make(tags::kSpAllToAll, tags::kStepMask), kMaxTag);
}
