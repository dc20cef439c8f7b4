// The hierarchical all-reduce (allreduce.h: Hierarchical) on thread ranks with given node layouts: the exact
// variant against the documented summation order bit for bit, replicas identical, the low-bit variants'
// error and error feedback, the layout from ranks_per_node and from setNodeIds (non-contiguous nodes), Auto's
// choice, wire bytes, and the errors: unequal nodes, sizes that differ across ranks.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "common/allreduce_reference.h"
#include "flashring/allreduce.h"
#include "flashring/thread_comm.h"

using namespace flashring;
using namespace std::chrono_literals;

namespace {

struct HierRun {
  std::vector<std::vector<float>> out, err;
  std::vector<AllreduceStats> stats;
};

// nodes[r]: rank r's node (empty: options.hier.ranks_per_node decides).
HierRun runHier(int ranks, size_t n, const AllreduceOptions& o, const std::vector<int>& nodes = {},
                bool with_error = false) {
  HierRun res;
  res.out.resize(static_cast<size_t>(ranks));
  res.err.resize(static_cast<size_t>(ranks));
  res.stats.resize(static_cast<size_t>(ranks));
  runThreadRanks(
      ranks,
      [&](Communicator& c) {
        if (!nodes.empty()) c.setNodeIds(nodes);
        const size_t r = static_cast<size_t>(c.rank());
        auto x = testref::rankInput(c.rank(), n, 3);
        std::vector<float> e(n);
        if (with_error)
          allreduceWithError(c, x, e, o, &res.stats[r]);
        else
          allreduce(c, x, o, &res.stats[r]);
        res.out[r] = std::move(x);
        res.err[r] = std::move(e);
      },
      60s);
  return res;
}

AllreduceOptions hier(const std::string& name, int ranks_per_node) {
  AllreduceOptions o = allreduceOptionsFromName(name);
  o.hier.ranks_per_node = ranks_per_node;
  return o;
}

}  // namespace

using Layout = std::tuple<int, int>;  // nodes, ranks per node
class HierarchicalLayouts : public ::testing::TestWithParam<Layout> {};

// hier-fp32-fp32: each node sums in local-rank order (fp32), then the nodes' sums are added in node order (the
// fp32 two-step across nodes): exactly this order, bit for bit, on every rank.
TEST_P(HierarchicalLayouts, ExactMatchesTheDocumentedOrder) {
  const auto [nodes, per] = GetParam();
  const int ranks = nodes * per;
  for (size_t n : {size_t{0}, size_t{1}, size_t{37}, size_t{4099}, size_t{70001}}) {
    AllreduceOptions o = hier("hier-fp32-fp32", per);
    o.chunk_elems = 1000;  // several pipeline chunks for the larger sizes
    const HierRun r = runHier(ranks, n, o);
    std::vector<float> want(n, 0.f);
    for (int node = 0; node < nodes; ++node) {
      std::vector<float> s(n, 0.f);
      for (int k = 0; k < per; ++k) {
        const auto x = testref::rankInput(node * per + k, n, 3);
        for (size_t i = 0; i < n; ++i) s[i] += x[i];
      }
      for (size_t i = 0; i < n; ++i) want[i] += s[i];
    }
    for (int q = 0; q < ranks; ++q)
      ASSERT_TRUE(testref::sameBits(r.out[static_cast<size_t>(q)], want)) << "rank " << q << ", n " << n;
    EXPECT_EQ(r.stats[0].algorithm, AllreduceAlgorithm::Hierarchical);
  }
}

TEST_P(HierarchicalLayouts, LowBitReplicasIdenticalAndErrorSmall) {
  const auto [nodes, per] = GetParam();
  const int ranks = nodes * per;
  const size_t n = 20000;
  std::vector<double> exact(n, 0.0);
  for (int q = 0; q < ranks; ++q) {
    const auto x = testref::rankInput(q, n, 3);
    for (size_t i = 0; i < n; ++i) exact[i] += x[i];
  }
  double scale = 0;
  for (double v : exact) scale = std::max(scale, std::abs(v));
  for (const std::string name : {"hier-bf16-int4", "hier-int8-int8", "hier-bf16-oneshot-int8", "hier-int4-bf16"}) {
    AllreduceOptions o = hier(name, per);
    o.chunk_elems = 3000;  // pipelined over several chunks
    const HierRun r = runHier(ranks, n, o, {}, /*with_error=*/true);
    for (int q = 1; q < ranks; ++q)
      ASSERT_TRUE(testref::sameBits(r.out[0], r.out[static_cast<size_t>(q)])) << name << ": rank " << q;
    double max_err = 0, max_fb = 0;
    for (size_t i = 0; i < n; ++i) {
      const double d = exact[i] - r.out[0][i];
      max_err = std::max(max_err, std::abs(d));
      double e = 0;
      for (int q = 0; q < ranks; ++q) e += r.err[static_cast<size_t>(q)][i];
      max_fb = std::max(max_fb, std::abs(d - e));  // the errors sum to exact minus result
    }
    const bool int4 = name.find("int4") != std::string::npos;
    EXPECT_LT(max_err / scale, int4 ? 0.15 : 0.02) << name;
    if (nodes * per > 1) {
      EXPECT_GT(max_err, 0.0) << name;
    }
    EXPECT_LT(max_fb / scale, 1e-5) << name << ": error feedback does not sum to the error";
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, HierarchicalLayouts,
                         ::testing::Values(Layout{2, 2}, Layout{2, 3}, Layout{3, 2}, Layout{4, 1}, Layout{1, 4},
                                           Layout{1, 1}),
                         [](const ::testing::TestParamInfo<Layout>& p) {
                           return fmt::format("{}x{}", std::get<0>(p.param), std::get<1>(p.param));
                         });

// Nodes from setNodeIds, not consecutive: ranks {0, 2} and {1, 3}. The exact variant then sums node {0, 2} in
// the order 0, 2 and adds node {1, 3}'s sum.
TEST(Hierarchical, NodeIdsFromTheCommunicator) {
  const size_t n = 1000;
  const HierRun r = runHier(4, n, allreduceOptionsFromName("hier-fp32-fp32"), {5, 9, 5, 9});
  const auto x0 = testref::rankInput(0, n, 3), x1 = testref::rankInput(1, n, 3), x2 = testref::rankInput(2, n, 3),
             x3 = testref::rankInput(3, n, 3);
  std::vector<float> want(n);
  for (size_t i = 0; i < n; ++i) want[i] = (x0[i] + x2[i]) + (x1[i] + x3[i]);
  for (int q = 0; q < 4; ++q) ASSERT_TRUE(testref::sameBits(r.out[static_cast<size_t>(q)], want)) << "rank " << q;
}

TEST(Hierarchical, AutoGoesHierarchicalAcrossNodesAboveTheThreshold) {
  AllreduceOptions o;  // Auto
  o.hier.ranks_per_node = 2;
  const size_t big = (size_t{1} << 20) / sizeof(float) * 2, small = 1000;
  EXPECT_EQ(allreduceAutoChoice(big, 4, o), AllreduceAlgorithm::Hierarchical);
  EXPECT_EQ(allreduceAutoChoice(small, 4, o), AllreduceAlgorithm::OneShot);
  EXPECT_EQ(allreduceAutoChoice(big, 4, AllreduceOptions{}), AllreduceAlgorithm::Quantized);  // one node
  const HierRun r = runHier(4, big, AllreduceOptions{}, {0, 0, 1, 1});  // layout from the communicator
  EXPECT_EQ(r.stats[0].algorithm, AllreduceAlgorithm::Hierarchical);
  for (int q = 1; q < 4; ++q) ASSERT_TRUE(testref::sameBits(r.out[0], r.out[static_cast<size_t>(q)]));
}

// Inter-node bytes halve against the flat Flash INT4 all-reduce on 2 nodes x 2 (the premise), and the
// measured bytes are the model's plus the headers.
TEST(Hierarchical, WireBytes) {
  const size_t n = size_t{1} << 20;
  const AllreduceOptions h = hier("hier-bf16-int4", 2), flat = hier("flash-int4", 2);
  EXPECT_LT(static_cast<double>(allreduceInterNodeBytes(n, 4, h)) * 1.9,
            static_cast<double>(allreduceInterNodeBytes(n, 4, flat)));
  const HierRun r = runHier(4, n, h);
  const uint64_t model = allreduceWireBytes(n, 4, h);
  EXPECT_GE(r.stats[0].wire_bytes, model);
  EXPECT_LE(r.stats[0].wire_bytes, model + 64 * 16);
}

// Auto over unequal nodes (3 + 1 ranks) stays flat instead of failing as an explicit hier-* does.
TEST(Hierarchical, AutoStaysFlatOnUnequalNodes) {
  const size_t big = (size_t{1} << 20) / sizeof(float) * 2;
  const HierRun r = runHier(4, big, AllreduceOptions{}, {0, 0, 0, 1});
  EXPECT_EQ(r.stats[0].algorithm, AllreduceAlgorithm::Quantized);
  for (int q = 1; q < 4; ++q) ASSERT_TRUE(testref::sameBits(r.out[0], r.out[static_cast<size_t>(q)]));
}

TEST(Hierarchical, Errors) {
  // Nodes of unequal size.
  EXPECT_THROW(runHier(3, 100, allreduceOptionsFromName("hier-bf16-int4"), {0, 0, 1}), InvalidArgument);
  // ranks_per_node that does not divide the ranks.
  EXPECT_THROW(runHier(4, 100, hier("hier-bf16-int4", 3)), InvalidArgument);
  EXPECT_THROW(allreduceOptionsFromName("hier-int3-int4"), InvalidArgument);
  EXPECT_THROW(allreduceOptionsFromName("hier-bf16"), InvalidArgument);
  // A rank with a different element count fails on every rank, inside a node and across nodes.
  for (int odd : {1, 2}) {
    std::vector<std::string> errors(4);
    runThreadRanksCollect(
        4,
        [&](Communicator& c) {
          std::vector<float> x(100 + (c.rank() == odd ? 1 : 0), 1.f);
          try {
            allreduce(c, x, hier("hier-bf16-int4", 2));
          } catch (const Error& e) {
            errors[static_cast<size_t>(c.rank())] = e.what();
            throw;
          }
        },
        20s);
    for (int q = 0; q < 4; ++q) EXPECT_FALSE(errors[static_cast<size_t>(q)].empty()) << "rank " << q << " odd " << odd;
  }
}
