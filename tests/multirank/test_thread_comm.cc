// ThreadCommunicator: point-to-point semantics, errors, deadlines and abort across thread ranks.
#include <gtest/gtest.h>

#include <atomic>
#include <numeric>
#include <thread>
#include <vector>

#include "flashring/thread_comm.h"

using namespace flashring;
using namespace std::chrono_literals;

TEST(ThreadComm, RingExchangeCarriesData) {
  for (int n : {1, 2, 3, 8}) {
    runThreadRanks(n, [n](Communicator& c) {
      const int me = c.rank();
      std::vector<int> out(1000), in(1000, -1);
      std::iota(out.begin(), out.end(), me * 1000);
      Request rs[2] = {c.irecv(in.data(), in.size() * 4, (me + n - 1) % n, 7),
                       c.isend(out.data(), out.size() * 4, (me + 1) % n, 7)};
      c.waitAll(rs, c.deadline());
      const int from = (me + n - 1) % n;
      for (int i = 0; i < 1000; ++i) ASSERT_EQ(in[static_cast<size_t>(i)], from * 1000 + i);
    });
  }
}

TEST(ThreadComm, SameTagMessagesArriveInPostingOrder) {
  runThreadRanks(2, [](Communicator& c) {
    constexpr int kMsgs = 200;
    std::vector<int> vals(kMsgs);
    std::vector<Request> reqs;
    if (c.rank() == 0) {
      std::iota(vals.begin(), vals.end(), 0);
      for (int i = 0; i < kMsgs; ++i) reqs.push_back(c.isend(&vals[static_cast<size_t>(i)], 4, 1, 3));
    } else {
      for (int i = 0; i < kMsgs; ++i) reqs.push_back(c.irecv(&vals[static_cast<size_t>(i)], 4, 0, 3));
    }
    c.waitAll(reqs, c.deadline());
    if (c.rank() == 1) {
      for (int i = 0; i < kMsgs; ++i) EXPECT_EQ(vals[static_cast<size_t>(i)], i);
    }
  });
}

TEST(ThreadComm, DistinctTagsInBothDirectionsDoNotCross) {
  runThreadRanks(2, [](Communicator& c) {
    const int peer = 1 - c.rank();
    int fwd_out = 100 + c.rank(), bwd_out = 200 + c.rank(), fwd_in = -1, bwd_in = -1;
    // Post the receives in the opposite order of the sends on purpose.
    Request rs[4] = {c.irecv(&bwd_in, 4, peer, 2), c.irecv(&fwd_in, 4, peer, 1), c.isend(&fwd_out, 4, peer, 1),
                     c.isend(&bwd_out, 4, peer, 2)};
    c.waitAll(rs, c.deadline());
    EXPECT_EQ(fwd_in, 100 + peer);
    EXPECT_EQ(bwd_in, 200 + peer);
  });
}

TEST(ThreadComm, ZeroByteMessagesComplete) {
  runThreadRanks(3, [](Communicator& c) {
    std::vector<Request> rs;
    for (int p = 0; p < c.size(); ++p) {
      rs.push_back(c.irecv(nullptr, 0, p, 0));
      rs.push_back(c.isend(nullptr, 0, p, 0));
    }
    c.waitAll(rs, c.deadline());
    EXPECT_EQ(c.bytesSent(), 0u);
  });
}

TEST(ThreadComm, BytesSentCountsPayload) {
  runThreadRanks(2, [](Communicator& c) {
    std::vector<char> buf(12345);
    Request r = c.rank() == 0 ? c.isend(buf.data(), buf.size(), 1, 0) : c.irecv(buf.data(), buf.size(), 0, 0);
    c.wait(r, c.deadline());
    EXPECT_EQ(c.bytesSent(), c.rank() == 0 ? 12345u : 0u);
  });
}

TEST(ThreadComm, SizeMismatchFailsEveryRankQuickly) {
  const auto t0 = Clock::now();
  auto errors = runThreadRanksCollect(
      3,
      [](Communicator& c) {
        std::vector<char> buf(64);
        if (c.rank() == 0) {
          Request r = c.isend(buf.data(), 64, 1, 5);
          c.wait(r, c.deadline());
        } else if (c.rank() == 1) {
          Request r = c.irecv(buf.data(), 32, 0, 5);
          c.wait(r, c.deadline());
        } else {
          Request r = c.irecv(buf.data(), 8, 0, 6);  // never sent: must be released by the abort
          c.wait(r, c.deadline());
        }
      },
      10s);
  EXPECT_LT(Clock::now() - t0, 5s);
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(errors[static_cast<size_t>(r)]) << "rank " << r << " did not fail";
    try {
      std::rethrow_exception(errors[static_cast<size_t>(r)]);
    } catch (const InvalidArgument& e) {
      EXPECT_LT(r, 2);
      EXPECT_NE(std::string(e.what()).find("64 bytes"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("32 bytes"), std::string::npos) << e.what();
    } catch (const AbortedError& e) {
      EXPECT_EQ(r, 2);
      EXPECT_NE(std::string(e.what()).find("size mismatch"), std::string::npos) << e.what();
    }
  }
}

TEST(ThreadComm, WaitTimesOutNamingThePeer) {
  auto errors = runThreadRanksCollect(
      2,
      [](Communicator& c) {
        if (c.rank() == 1) return;  // never sends
        int x = 0;
        Request r = c.irecv(&x, 4, 1, 9);
        const auto t0 = Clock::now();
        try {
          c.wait(r, Clock::now() + 200ms);
        } catch (const TimeoutError& e) {
          EXPECT_GE(Clock::now() - t0, 190ms);
          EXPECT_LT(Clock::now() - t0, 2s);
          EXPECT_NE(std::string(e.what()).find("from rank 1"), std::string::npos) << e.what();
          EXPECT_NE(std::string(e.what()).find("tag 9"), std::string::npos) << e.what();
          throw;
        }
      },
      10s);
  EXPECT_TRUE(errors[0]);
  EXPECT_FALSE(errors[1]);
}

TEST(ThreadComm, AbortReachesEveryRankWithTheReason) {
  auto errors = runThreadRanksCollect(
      4,
      [](Communicator& c) {
        if (c.rank() == 2) {
          std::this_thread::sleep_for(50ms);
          c.abort("rank 2 found a NaN");
          throw AbortedError("aborted by me");
        }
        int x;
        Request r = c.irecv(&x, 4, 2, 0);
        c.wait(r, c.deadline());
      },
      30s);
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(errors[static_cast<size_t>(r)]);
    try {
      std::rethrow_exception(errors[static_cast<size_t>(r)]);
    } catch (const AbortedError& e) {
      if (r != 2) {
        EXPECT_NE(std::string(e.what()).find("rank 2 found a NaN"), std::string::npos) << e.what();
      }
    }
  }
}

TEST(ThreadComm, AnExceptionOnOneRankReleasesTheOthers) {
  const auto t0 = Clock::now();
  EXPECT_THROW(runThreadRanks(
                   3,
                   [](Communicator& c) {
                     if (c.rank() == 0) throw std::runtime_error("boom");
                     int x;
                     Request r = c.irecv(&x, 4, 0, 0);
                     c.wait(r, c.deadline());
                   },
                   60s),
               std::runtime_error);
  EXPECT_LT(Clock::now() - t0, 5s);
}

TEST(ThreadComm, BadArgumentsAreRejected) {
  runThreadRanks(2, [](Communicator& c) {
    int x = 0;
    EXPECT_THROW(c.isend(&x, 4, 2, 0), InvalidArgument);
    EXPECT_THROW(c.irecv(&x, 4, -1, 0), InvalidArgument);
    EXPECT_THROW(c.isend(&x, 4, 0, kMaxTag + 1), InvalidArgument);
    EXPECT_THROW(c.isend(nullptr, 4, 0, 0), InvalidArgument);
  });
  EXPECT_THROW(ThreadWorld(0), InvalidArgument);
}

TEST(ThreadComm, HelperReductionsAgreeOnEveryRank) {
  runThreadRanks(5, [](Communicator& c) {
    EXPECT_EQ(allreduceMax(c, c.rank() * 1.5), 6.0);
    EXPECT_EQ(allreduceMin(c, c.rank() * 1.5), 0.0);
    EXPECT_EQ(allreduceSumDouble(c, c.rank()), 10.0);
    barrier(c);
    EXPECT_NO_THROW(checkSameOnAllRanks(c, 42, "x"));
    try {
      checkSameOnAllRanks(c, c.rank() == 3 ? 7 : 42, "element count");
      ADD_FAILURE() << "expected a mismatch error";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("rank 3: 7"), std::string::npos) << e.what();
    }
  });
}
