// MpiCommunicator: point-to-point semantics, errors on every rank, native all-reduce, wrapping.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "comm/mpi/mpi_internal.h"
#include "mpi/mpi_harness.h"

namespace flashring::mpitest {
namespace {

using namespace std::chrono_literals;

// Payload byte i of a message from `src` with `tag`: differs between sources, tags and positions.
uint8_t pattern(int src, int tag, size_t i) {
  return static_cast<uint8_t>((static_cast<size_t>(src) * 131u + static_cast<size_t>(tag) * 7u + i * 13u + (i >> 9)) &
                              0xffu);
}

std::vector<uint8_t> payload(size_t n, int src, int tag) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = pattern(src, tag, i);
  return v;
}

// Index of the first byte that is not the payload of (src, tag), or -1 if all match.
long long firstBadByte(const std::vector<uint8_t>& v, int src, int tag) {
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] != pattern(src, tag, i)) return static_cast<long long>(i);
  return -1;
}

int rightOf(const Communicator& c) { return (c.rank() + 1) % c.size(); }
int leftOf(const Communicator& c) { return (c.rank() + c.size() - 1) % c.size(); }

long long msSince(Clock::time_point t) {
  return static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count());
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Lowers the transport's per-call count limit for one test, so the >INT_MAX paths run on small messages.
class MaxCountGuard {
 public:
  explicit MaxCountGuard(int64_t n) : old_(mpi_detail::setMaxCountForTesting(n)) {}
  ~MaxCountGuard() { mpi_detail::setMaxCountForTesting(old_); }
  MaxCountGuard(const MaxCountGuard&) = delete;
  MaxCountGuard& operator=(const MaxCountGuard&) = delete;

 private:
  int64_t old_;
};

TEST_F(MpiTest, DuplicatesTheGivenCommunicator) {
  MpiCommunicator& c = comm();
  EXPECT_EQ(c.rank(), rank());
  EXPECT_EQ(c.size(), size());
  EXPECT_EQ(c.transport(), "mpi");
  EXPECT_TRUE(c.hasNativeAllreduce());
  int cmp = MPI_UNEQUAL;
  MPI_Comm_compare(c.handle(), MPI_COMM_WORLD, &cmp);
  EXPECT_EQ(cmp, MPI_CONGRUENT) << "a duplicate, not MPI_COMM_WORLD itself";
  MPI_Errhandler eh = MPI_ERRHANDLER_NULL;
  MPI_Comm_get_errhandler(c.handle(), &eh);
  EXPECT_TRUE(eh == MPI_ERRORS_RETURN);
  MPI_Errhandler_free(&eh);
  EXPECT_FALSE(c.aborted());
}

class RingExchange : public MpiTest, public ::testing::WithParamInterface<size_t> {};

TEST_P(RingExchange, EachRankReceivesItsLeftNeighboursData) {
  MpiCommunicator& c = comm();
  const size_t n = GetParam();
  const int tag = 3, right = rightOf(c), left = leftOf(c);
  auto out = payload(n, c.rank(), tag);
  std::vector<uint8_t> in(n, 0xEE);
  std::array<Request, 2> rs = {c.irecv(in.data(), n, left, tag), c.isend(out.data(), n, right, tag)};
  c.waitAll(rs, after(kWaitBudget));
  EXPECT_EQ(firstBadByte(in, left, tag), -1) << n << " bytes from rank " << left;
  EXPECT_EQ(c.bytesSent(), n);
  EXPECT_TRUE(rs[0].valid());
  EXPECT_EQ(rs[0].bytes(), n);
  EXPECT_EQ(rs[0].peer(), left);
  EXPECT_FALSE(rs[0].isSend());
  EXPECT_TRUE(rs[1].isSend());
}

INSTANTIATE_TEST_SUITE_P(Sizes, RingExchange,
                         ::testing::Values(size_t{1}, size_t{7}, size_t{4093}, size_t{65537}, size_t{(4u << 20) + 3}));

TEST_F(MpiTest, ManyMessagesWithOneTagArriveInPostingOrder) {
  MpiCommunicator& c = comm();
  constexpr size_t kCount = 400;
  const int tag = 11, right = rightOf(c), left = leftOf(c);
  // Sizes vary with the index, so a message matched out of order is also a size mismatch (an error).
  auto sizeOf = [](size_t i) { return 8 + 8 * (i % 5); };
  std::vector<std::vector<uint64_t>> in(kCount), out(kCount);
  std::vector<Request> recvs(kCount), sends(kCount);
  for (size_t i = 0; i < kCount; ++i) {
    in[i].assign(sizeOf(i) / 8, ~uint64_t{0});
    out[i].assign(sizeOf(i) / 8, 0);
    for (size_t k = 0; k < out[i].size(); ++k) out[i][k] = static_cast<uint64_t>(c.rank()) << 32 | i << 8 | k;
  }
  // Half of the receives are posted before the sends, half after; they are waited for in reverse.
  for (size_t i = 0; i < kCount / 2; ++i) recvs[i] = c.irecv(in[i].data(), sizeOf(i), left, tag);
  for (size_t i = 0; i < kCount; ++i) sends[i] = c.isend(out[i].data(), sizeOf(i), right, tag);
  for (size_t i = kCount / 2; i < kCount; ++i) recvs[i] = c.irecv(in[i].data(), sizeOf(i), left, tag);
  for (size_t i = kCount; i-- > 0;) c.wait(recvs[i], after(kWaitBudget));
  c.waitAll(sends, after(kWaitBudget));
  for (size_t i = 0; i < kCount; ++i)
    for (size_t k = 0; k < in[i].size(); ++k)
      ASSERT_EQ(in[i][k], static_cast<uint64_t>(left) << 32 | i << 8 | k) << "message " << i << " word " << k;
}

TEST_F(MpiTest, DistinctTagsInBothDirectionsDoNotCross) {
  MpiCommunicator& c = comm();
  // With 2 ranks left == right: only the tags keep the two directions apart. Different sizes per
  // direction make a crossing a size mismatch as well as wrong data.
  const int to_right = 100, to_left = 101, right = rightOf(c), left = leftOf(c);
  const size_t n_right = 3000, n_left = 5000;
  for (int round = 0; round < 20; ++round) {
    auto out_r = payload(n_right, c.rank(), to_right + round);
    auto out_l = payload(n_left, c.rank(), to_left + round);
    std::vector<uint8_t> from_right(n_left), from_left(n_right);
    std::array<Request, 4> rs = {
        c.irecv(from_right.data(), n_left, right, to_left),  // posted first: must not take the other stream
        c.irecv(from_left.data(), n_right, left, to_right),
        c.isend(out_l.data(), n_left, left, to_left),
        c.isend(out_r.data(), n_right, right, to_right),
    };
    c.waitAll(rs, after(kWaitBudget));
    ASSERT_EQ(firstBadByte(from_left, left, to_right + round), -1) << "round " << round;
    ASSERT_EQ(firstBadByte(from_right, right, to_left + round), -1) << "round " << round;
  }
}

TEST_F(MpiTest, ZeroByteMessagesMatchInOrder) {
  MpiCommunicator& c = comm();
  const int tag = 12, right = rightOf(c), left = leftOf(c);
  const std::vector<size_t> sizes = {0, 16, 0, 0, 32, 0};
  std::vector<std::vector<uint8_t>> in(sizes.size()), out(sizes.size());
  std::vector<Request> rs;
  for (size_t i = 0; i < sizes.size(); ++i) {
    in[i].assign(sizes[i], 0);
    out[i] = payload(sizes[i], c.rank(), tag + static_cast<int>(i));
    rs.push_back(c.irecv(sizes[i] ? in[i].data() : nullptr, sizes[i], left, tag));
  }
  for (size_t i = 0; i < sizes.size(); ++i)
    rs.push_back(c.isend(sizes[i] ? out[i].data() : nullptr, sizes[i], right, tag));
  c.waitAll(rs, after(kWaitBudget));
  for (size_t i = 0; i < sizes.size(); ++i) EXPECT_EQ(firstBadByte(in[i], left, tag + static_cast<int>(i)), -1) << i;
  EXPECT_EQ(c.bytesSent(), 48u);
}

TEST_F(MpiTest, LargeMessagesBothWaysAtOnce) {
  MpiCommunicator& c = comm();
  const size_t n = (8u << 20) + 5;
  const int right = rightOf(c), left = leftOf(c);
  auto out_r = payload(n, c.rank(), 21);
  auto out_l = payload(n, c.rank(), 22);
  std::vector<uint8_t> from_left(n), from_right(n);
  std::array<Request, 4> rs = {c.irecv(from_left.data(), n, left, 21), c.irecv(from_right.data(), n, right, 22),
                               c.isend(out_r.data(), n, right, 21), c.isend(out_l.data(), n, left, 22)};
  // Drive completion the way compute loops do: progress() between tiles, then test().
  const auto deadline = after(kWaitBudget);
  size_t done = 0;
  while (done < rs.size()) {
    c.progress();
    done = 0;
    for (auto& r : rs) done += c.test(r) ? 1 : 0;
    ASSERT_LT(Clock::now(), deadline) << "large exchange did not complete";
  }
  EXPECT_EQ(firstBadByte(from_left, left, 21), -1);
  EXPECT_EQ(firstBadByte(from_right, right, 22), -1);
  EXPECT_EQ(c.bytesSent(), 2 * n);
}

TEST_F(MpiTest, MessagesAboveTheCountLimitUseTheDerivedTypePath) {
  MaxCountGuard guard(1000);  // on every rank: the limit decides how both sides post
  MpiCommunicator& c = comm();
  const int right = rightOf(c), left = leftOf(c);
  const std::vector<size_t> sizes = {999, 1000, 1001, 2000, 12345, 0, 1};
  size_t total = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const size_t n = sizes[i];
    const int tag_r = 30 + static_cast<int>(i), tag_l = 60 + static_cast<int>(i);
    auto out_r = payload(n, c.rank(), tag_r), out_l = payload(n, c.rank(), tag_l);
    std::vector<uint8_t> from_left(n, 0xEE), from_right(n, 0xEE);
    std::array<Request, 4> rs = {c.irecv(from_left.data(), n, left, tag_r), c.irecv(from_right.data(), n, right, tag_l),
                                 c.isend(out_r.data(), n, right, tag_r), c.isend(out_l.data(), n, left, tag_l)};
    c.waitAll(rs, after(kWaitBudget));
    EXPECT_EQ(firstBadByte(from_left, left, tag_r), -1) << n << " bytes";
    EXPECT_EQ(firstBadByte(from_right, right, tag_l), -1) << n << " bytes";
    total += 2 * n;
  }
  EXPECT_EQ(c.bytesSent(), total);
}

TEST_F(MpiTest, TestIsNonBlockingAndProgressCompletesRequests) {
  MpiCommunicator& c = comm();
  const int right = rightOf(c), left = leftOf(c);
  int data = -1;
  Request r = c.irecv(&data, sizeof data, left, 1);
  // The left neighbour sends only after our "go" below, so nothing can have arrived yet.
  EXPECT_FALSE(c.test(r));
  int go = 1, go_in = 0;
  Request g = c.isend(&go, sizeof go, left, 2);
  Request gi = c.irecv(&go_in, sizeof go_in, right, 2);
  c.wait(gi, after(kWaitBudget));
  const int value = 1000 + c.rank();
  Request s = c.isend(&value, sizeof value, right, 1);
  const auto deadline = after(kWaitBudget);
  while (!c.test(r)) {
    c.progress();
    ASSERT_LT(Clock::now(), deadline);
  }
  EXPECT_EQ(data, 1000 + left);
  EXPECT_TRUE(c.test(r)) << "a completed request stays complete";
  c.wait(s, after(kWaitBudget));
  c.wait(g, after(kWaitBudget));
  Request none;
  EXPECT_TRUE(c.test(none));
  c.wait(none, after(1ms));
}

TEST_F(MpiTest, BadArgumentsThrowInvalidArgumentWithoutAborting) {
  MpiCommunicator& c = comm();
  int x = 0;
  EXPECT_THROW(c.isend(&x, sizeof x, c.size(), 0), InvalidArgument);
  EXPECT_THROW(c.irecv(&x, sizeof x, -1, 0), InvalidArgument);
  EXPECT_THROW(c.isend(&x, sizeof x, 0, kMaxTag + 1), InvalidArgument) << "tags above kMaxTag are reserved";
  EXPECT_THROW(c.irecv(&x, sizeof x, 0, -1), InvalidArgument);
  EXPECT_THROW(c.isend(nullptr, 4, 0, 0), InvalidArgument);
  EXPECT_THROW(c.nativeAllreduceSum(nullptr, 4, after(1s), false), InvalidArgument);
  auto other = freshComm();
  const int right = rightOf(c), left = leftOf(c);
  Request foreign = other->irecv(&x, sizeof x, left, 0);
  EXPECT_THROW(c.wait(foreign, after(1s)), InvalidArgument);
  EXPECT_THROW(c.test(foreign), InvalidArgument);
  int y = 5;
  Request s = other->isend(&y, sizeof y, right, 0);
  other->wait(foreign, after(kWaitBudget));
  other->wait(s, after(kWaitBudget));
  EXPECT_EQ(x, 5);
  EXPECT_FALSE(c.aborted());
  EXPECT_FALSE(other->aborted());
}

TEST_F(MpiTest, BytesSentCountsPostedSendPayloadOnly) {
  MpiCommunicator& c = comm();
  const int right = rightOf(c), left = leftOf(c);
  const std::vector<size_t> sizes = {100, 0, 5000, 1u << 20};
  size_t sum = 0;
  for (size_t n : sizes) {
    std::vector<uint8_t> out(n, 1), in(n);
    std::array<Request, 2> rs = {c.irecv(in.data(), n, left, 40), c.isend(out.data(), n, right, 40)};
    c.waitAll(rs, after(kWaitBudget));
    sum += n;
  }
  // Only rank 0 sends one more message: receiving it must not count on its right neighbour.
  std::vector<uint8_t> extra(777, 2), extra_in(777);
  Request er, es;
  if (c.rank() == 0) es = c.isend(extra.data(), extra.size(), right, 41);
  if (left == 0) er = c.irecv(extra_in.data(), extra_in.size(), 0, 41);
  c.wait(er, after(kWaitBudget));
  c.wait(es, after(kWaitBudget));
  std::vector<float> v(1000, 1.0f);
  c.nativeAllreduceSum(v.data(), v.size(), after(kWaitBudget), false);  // MPI's own traffic: not counted
  EXPECT_EQ(c.bytesSent(), sum + (c.rank() == 0 ? 777u : 0u));
  c.resetBytesSent();
  EXPECT_EQ(c.bytesSent(), 0u);
}

class NativeAllreduce : public MpiTest, public ::testing::WithParamInterface<std::pair<size_t, int64_t>> {};

TEST_P(NativeAllreduce, SumsExactlyOverAllRanks) {
  const auto [count, max_count] = GetParam();
  MaxCountGuard guard(max_count);
  MpiCommunicator& c = comm();
  const int n = c.size();
  // Small integers: every partial sum is exact in fp32, whatever order MPI adds in.
  std::vector<float> v(count);
  for (size_t i = 0; i < count; ++i) v[i] = static_cast<float>((c.rank() + 1) * static_cast<int>(i % 1021));
  const int ranks_sum = n * (n + 1) / 2;
  for (bool blocking : {false, true}) {
    for (size_t i = 0; i < count; ++i) v[i] = static_cast<float>((c.rank() + 1) * static_cast<int>(i % 1021));
    c.nativeAllreduceSum(v.data(), count, after(kWaitBudget), blocking);
    for (size_t i = 0; i < count; ++i)
      ASSERT_EQ(v[i], static_cast<float>(ranks_sum * static_cast<int>(i % 1021)))
          << "element " << i << " of " << count << (blocking ? " (MPI_Allreduce)" : " (MPI_Iallreduce)");
  }
  EXPECT_EQ(c.bytesSent(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Counts, NativeAllreduce,
                         ::testing::Values(std::pair<size_t, int64_t>{0, 0}, std::pair<size_t, int64_t>{1, 0},
                                           std::pair<size_t, int64_t>{1000, 0},
                                           std::pair<size_t, int64_t>{4u << 20, 0},  // 16 MiB
                                           std::pair<size_t, int64_t>{2503, 1000},   // 3 pieces via the hook
                                           std::pair<size_t, int64_t>{3000, 1000}));

TEST_F(MpiTest, WrapsASplitCommunicatorWithoutSeeingItsMessages) {
  MPI_Comm user = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, rank() % 2, rank(), &user);
  int ur = 0, us = 1;
  MPI_Comm_rank(user, &ur);
  MPI_Comm_size(user, &us);
  const int uright = (ur + 1) % us, uleft = (ur + us - 1) % us;
  {
    MpiCommunicator fc(user);
    EXPECT_EQ(fc.rank(), ur);
    EXPECT_EQ(fc.size(), us);
    int cmp = MPI_UNEQUAL;
    MPI_Comm_compare(fc.handle(), user, &cmp);
    EXPECT_EQ(cmp, MPI_CONGRUENT);

    // The application's wildcard receive is posted first and must not take flashring's message.
    int user_in = -1;
    MPI_Request user_recv = MPI_REQUEST_NULL;
    MPI_Status user_status;
    MPI_Irecv(&user_in, 1, MPI_INT, MPI_ANY_SOURCE, MPI_ANY_TAG, user, &user_recv);
    const int fr_out = 2000 + ur;
    int fr_in = -1;
    std::array<Request, 2> rs = {fc.irecv(&fr_in, sizeof fr_in, uleft, 5), fc.isend(&fr_out, sizeof fr_out, uright, 5)};
    fc.waitAll(rs, after(kWaitBudget));
    EXPECT_EQ(fr_in, 2000 + uleft);
    int flag = 1;
    MPI_Test(&user_recv, &flag, &user_status);
    EXPECT_FALSE(flag) << "the application's receive matched a flashring message";
    MPI_Barrier(user);  // every rank has looked before any application message is sent

    const int user_out = 1000 + ur;
    MPI_Send(&user_out, 1, MPI_INT, uright, 5, user);
    MPI_Wait(&user_recv, &user_status);
    EXPECT_EQ(user_in, 1000 + uleft);
    EXPECT_EQ(user_status.MPI_TAG, 5);

    // The two halves run independent all-reduces on their own duplicates.
    float v = static_cast<float>(rank() + 1);
    fc.nativeAllreduceSum(&v, 1, after(kWaitBudget), false);
    float expect = 0;
    for (int r = rank() % 2; r < size(); r += 2) expect += static_cast<float>(r + 1);
    EXPECT_EQ(v, expect);
  }
  MPI_Comm_free(&user);
}

// ---- Destructive tests: each uses its own communicator, aborted or left with pending work. ----

struct MismatchCase {
  size_t send_bytes;
  size_t recv_bytes;
  int64_t max_count;  // 0: default limit; else the derived-type path runs
};

class SizeMismatch : public MpiTest, public ::testing::WithParamInterface<MismatchCase> {};

TEST_P(SizeMismatch, FailsOnTheReceiverAndAbortsEveryRank) {
  const MismatchCase mc = GetParam();
  MaxCountGuard guard(mc.max_count);
  auto c = freshComm();
  const int sender = 0, receiver = size() > 1 ? 1 : 0, tag = 7;
  std::vector<uint8_t> out(mc.send_bytes, 3), in(mc.recv_bytes);
  const auto start = Clock::now();
  const auto deadline = after(20s);
  Request s;
  if (rank() == sender) s = c->isend(out.data(), out.size(), receiver, tag);
  if (rank() == receiver) {
    Request r = c->irecv(in.data(), in.size(), sender, tag);
    try {
      c->wait(r, deadline);
      ADD_FAILURE() << "the receive of " << mc.recv_bytes << " bytes matched a send of " << mc.send_bytes
                    << " bytes without an error";
    } catch (const InvalidArgument& e) {
      const std::string what = e.what();
      EXPECT_TRUE(contains(what, std::to_string(mc.recv_bytes) + " bytes")) << what;
      EXPECT_TRUE(contains(what, "send of " + std::to_string(mc.send_bytes) + " bytes")) << what;
      EXPECT_TRUE(contains(what, "peer " + std::to_string(sender))) << what;
      EXPECT_TRUE(contains(what, "tag " + std::to_string(tag))) << what;
      EXPECT_EQ(e.rank(), receiver);
      if (rank() == 0) std::printf("receiver's error: %s\n", what.c_str());
    }
  } else {
    // The sender's own send may complete first (eager), but its next wait must see the abort.
    if (s.valid()) {
      try {
        c->wait(s, deadline);
      } catch (const AbortedError&) {
      }
    }
    uint8_t never = 0;
    try {
      // irecv itself throws if the notice has already been seen.
      Request r = c->irecv(&never, 1, receiver, 99);
      c->wait(r, deadline);
      ADD_FAILURE() << "a receive nobody sends completed";
    } catch (const AbortedError& e) {
      const std::string what = e.what();
      EXPECT_TRUE(contains(what, "rank " + std::to_string(receiver) + " aborted")) << what;
      EXPECT_TRUE(contains(what, "size mismatch")) << what;
      EXPECT_TRUE(contains(what, std::to_string(mc.recv_bytes) + " bytes")) << what;
      EXPECT_EQ(e.rank(), receiver);
    }
  }
  EXPECT_LT(msSince(start), 15000) << "the error must arrive well before the deadline";
  EXPECT_TRUE(c->aborted());
  uint8_t b = 0;
  EXPECT_THROW(c->isend(&b, 1, 0, 1), AbortedError);
}

INSTANTIATE_TEST_SUITE_P(Cases, SizeMismatch,
                         ::testing::Values(MismatchCase{1000, 800, 0},           // larger send: truncation
                                           MismatchCase{800, 1000, 0},           // smaller send
                                           MismatchCase{6u << 20, 4u << 20, 0},  // rendezvous, truncation
                                           MismatchCase{4u << 20, 6u << 20, 0},  // rendezvous, short
                                           MismatchCase{3000, 2000, 1000},       // derived type, truncation
                                           MismatchCase{2000, 3000, 1000},       // derived type, short
                                           MismatchCase{2500, 900, 1000}));      // derived vs plain

TEST_F(MpiTest, WaitTimesOutWhenThePeerNeverSendsAndCanBeRetried) {
  auto c = freshComm();
  const int right = rightOf(*c), left = leftOf(*c), tag = 42;
  int64_t in = 0;
  Request r = c->irecv(&in, sizeof in, left, tag);
  const auto start = Clock::now();
  try {
    c->wait(r, after(300ms));
    ADD_FAILURE() << "no timeout";
  } catch (const TimeoutError& e) {
    const long long ms = msSince(start);
    const std::string what = e.what();
    EXPECT_GE(ms, 300);
    EXPECT_LT(ms, 300 + 5000) << "the timeout must fire close to the deadline";
    EXPECT_TRUE(contains(what, "recv")) << what;
    EXPECT_TRUE(contains(what, "8 bytes")) << what;
    EXPECT_TRUE(contains(what, "peer " + std::to_string(left))) << what;
    EXPECT_TRUE(contains(what, "tag 42")) << what;
    EXPECT_EQ(e.rank(), c->rank());
  }
  EXPECT_FALSE(c->aborted()) << "a timeout alone does not abort";
  // The receive is still posted: once the peer sends, waiting again succeeds.
  MPI_Barrier(MPI_COMM_WORLD);
  const int64_t out = 777 + c->rank();
  Request s = c->isend(&out, sizeof out, right, tag);
  c->wait(r, after(kWaitBudget));
  c->wait(s, after(kWaitBudget));
  EXPECT_EQ(in, 777 + left);
}

TEST_F(MpiTest, DestroyingACommunicatorWithPendingWorkDoesNotHang) {
  const auto start = Clock::now();
  {
    auto c = freshComm();
    const int right = rightOf(*c), left = leftOf(*c);
    std::vector<uint8_t> in(64), big(6u << 20, 9);
    Request r = c->irecv(in.data(), in.size(), left, 50);     // nobody sends: cancelled
    Request s = c->isend(big.data(), big.size(), right, 51);  // nobody receives: a rendezvous send
    EXPECT_FALSE(c->test(r));
    (void)s;
  }
  EXPECT_LT(msSince(start), 10000);
  // A fresh communicator works normally afterwards.
  auto c2 = freshComm();
  int out = c2->rank(), in = -1;
  std::array<Request, 2> rs = {c2->irecv(&in, sizeof in, leftOf(*c2), 50),
                               c2->isend(&out, sizeof out, rightOf(*c2), 50)};
  c2->waitAll(rs, after(kWaitBudget));
  EXPECT_EQ(in, leftOf(*c2));
}

TEST_F(MpiTest, AbortOnOneRankReachesEveryRankWithItsReason) {
  auto c = freshComm();
  const int aborter = size() - 1;
  const std::string reason = "injected failure 42 from the test";
  const std::string expected = "rank " + std::to_string(aborter) + " aborted: " + reason;
  if (rank() == aborter) {
    // Large sends nobody will receive are pending when the abort happens.
    std::vector<uint8_t> big(8u << 20, 1);
    std::vector<Request> sends;
    for (int p = 0; p < size(); ++p)
      if (p != rank()) sends.push_back(c->isend(big.data(), big.size(), p, 9));
    c->abort(reason);
    c->abort("a second abort is ignored");
    EXPECT_TRUE(c->aborted());
    for (auto& s : sends) {
      try {
        c->wait(s, after(5s));
        ADD_FAILURE() << "wait after abort returned";
      } catch (const AbortedError& e) {
        EXPECT_EQ(std::string(e.what()), expected);
      }
    }
    uint8_t b = 0;
    EXPECT_THROW(c->irecv(&b, 1, 0, 1), AbortedError);
    c.reset();  // the pending sends are released; MPI_Finalize at exit must still return
  } else {
    uint8_t x = 0;
    Request r = c->irecv(&x, 1, aborter, 5);
    const auto start = Clock::now();
    try {
      c->wait(r, after(20s));
      ADD_FAILURE() << "a receive nobody sends completed";
    } catch (const AbortedError& e) {
      EXPECT_EQ(std::string(e.what()), expected);
      EXPECT_EQ(e.rank(), aborter);
    }
    EXPECT_LT(msSince(start), 15000);
    EXPECT_TRUE(c->aborted());
    EXPECT_THROW(c->test(r), AbortedError);
    EXPECT_THROW(c->wait(r, after(1s)), AbortedError);
    EXPECT_THROW(c->isend(&x, 1, aborter, 5), AbortedError);
  }
}

TEST_F(MpiTest, ACommunicatorCreatedAfterAnAbortedOneIsNotAborted) {
  FLASHRING_REQUIRE_RANKS(2);
  // Rank 0 aborts and every rank drops the communicator at once, so notices may still be in flight when
  // the next duplicate is created (OpenMPI reuses context ids): the next one must not see them.
  for (int round = 0; round < 10; ++round) {
    {
      auto dead = freshComm();
      if (rank() == 0) dead->abort("round " + std::to_string(round));
    }
    auto next = freshComm();
    int out = 100 * round + next->rank(), in = -1;
    std::array<Request, 2> rs = {next->irecv(&in, sizeof in, leftOf(*next), 1),
                                 next->isend(&out, sizeof out, rightOf(*next), 1)};
    next->waitAll(rs, after(kWaitBudget));
    EXPECT_EQ(in, 100 * round + leftOf(*next));
    const auto until = Clock::now() + 20ms;
    while (Clock::now() < until) ASSERT_FALSE(next->aborted()) << "round " << round;
    MPI_Barrier(MPI_COMM_WORLD);
  }
}

TEST_F(MpiTest, AbortedFlagIsSeenByPollingAlone) {
  FLASHRING_REQUIRE_RANKS(2);
  auto c = freshComm();
  if (rank() == 0) {
    c->abort("polled");
  } else {
    const auto deadline = after(20s);
    while (!c->aborted()) ASSERT_LT(Clock::now(), deadline) << "aborted() never saw rank 0's notice";
  }
  EXPECT_TRUE(c->aborted());
}

TEST_F(MpiTest, AbortReachesRanksInsideNativeAllreduce) {
  FLASHRING_REQUIRE_RANKS(2);
  auto c = freshComm();
  std::vector<float> v(1000, 1.0f);
  if (rank() == 0) {
    c->abort("rank 0 will not join the all-reduce");
  } else {
    const auto start = Clock::now();
    try {
      c->nativeAllreduceSum(v.data(), v.size(), after(20s), false);
      ADD_FAILURE() << "the all-reduce completed without rank 0";
    } catch (const AbortedError& e) {
      EXPECT_TRUE(contains(e.what(), "rank 0 aborted: rank 0 will not join")) << e.what();
    }
    EXPECT_LT(msSince(start), 15000);
  }
}

TEST_F(MpiTest, NativeAllreduceTimesOutWhenARankDoesNotJoin) {
  FLASHRING_REQUIRE_RANKS(2);
  auto c = freshComm();
  std::vector<float> v(1000, 1.0f);
  if (rank() != 0) {
    const auto start = Clock::now();
    try {
      c->nativeAllreduceSum(v.data(), v.size(), after(300ms), false);
      ADD_FAILURE() << "the all-reduce completed without rank 0";
    } catch (const TimeoutError& e) {
      EXPECT_TRUE(contains(e.what(), "all-reduce")) << e.what();
      EXPECT_GE(msSince(start), 300);
      EXPECT_LT(msSince(start), 300 + 5000);
    }
  }
  // The caller's duty after a timeout: abort, so that the communicator is known dead everywhere. Rank 0
  // aborts only once the others have timed out (an earlier abort would reach them as AbortedError).
  MPI_Barrier(MPI_COMM_WORLD);
  c->abort("test: all-reduce timed out");
}

// A real message above INT_MAX bytes: 2 GiB per buffer, so only on request.
TEST_F(MpiTest, HugeMessageAboveIntMax) {
  if (std::getenv("FLASHRING_MPI_TEST_HUGE") == nullptr)
    GTEST_SKIP() << "set FLASHRING_MPI_TEST_HUGE=1 to send a real 2 GiB + 4 KiB message (needs ~4.3 GB per rank)";
  MpiCommunicator& c = comm();
  const size_t n = (size_t{1} << 31) + 4099;
  std::vector<uint8_t> out(n), in(n, 0);
  for (size_t i = 0; i < n; ++i) out[i] = pattern(c.rank(), 0, i);
  std::array<Request, 2> rs = {c.irecv(in.data(), n, leftOf(c), 0), c.isend(out.data(), n, rightOf(c), 0)};
  c.waitAll(rs, after(std::chrono::milliseconds(300000)));
  long long bad = -1;
  for (size_t i = 0; i < n && bad < 0; ++i)
    if (in[i] != pattern(leftOf(c), 0, i)) bad = static_cast<long long>(i);
  EXPECT_EQ(bad, -1);
}

}  // namespace
}  // namespace flashring::mpitest
