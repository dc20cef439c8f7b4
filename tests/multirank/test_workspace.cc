// Workspaces on thread ranks (workspace.h): every rank has its own, a group shares its parent's; the
// collectives and attention schemes reuse theirs without growing after the first call and give the same bits
// in a caller's workspace as in the communicator's; one workspace handed to two ranks fails every rank
// instead of racing; the engine runs in a workspace of its own.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "common/allreduce_reference.h"
#include "common/engine_fixtures.h"
#include "common/sp_reference.h"
#include "flashring/allreduce.h"
#include "flashring/group_comm.h"
#include "flashring/sp_attention.h"
#include "flashring/thread_comm.h"
#include "flashring/workspace.h"

using namespace flashring;
using namespace std::chrono_literals;

TEST(WorkspaceRanks, EveryRankHasItsOwnAndAGroupSharesItsParents) {
  constexpr int N = 4;
  std::mutex mu;
  std::set<const Workspace*> seen;
  runThreadRanks(
      N,
      [&](Communicator& comm) {
        GroupCommunicator pair(comm, comm.rank() < 2 ? std::vector<int>{0, 1} : std::vector<int>{2, 3});
        EXPECT_EQ(&pair.workspace(), &comm.workspace());
        std::lock_guard<std::mutex> lock(mu);
        seen.insert(&comm.workspace());
      },
      60s);
  EXPECT_EQ(seen.size(), static_cast<size_t>(N));  // two ranks never share one
}

namespace {

struct Named {
  std::string name;
  AllreduceOptions options;
};

std::vector<Named> allreduceCases() {
  std::vector<Named> v;
  for (const char* n : {"ring-fp32", "ring-bf16", "twostep-fp32", "twostep-bf16", "flash-int4", "flash-int8-int4",
                        "oneshot-fp32", "oneshot-int6", "hier-bf16-int4", "hier-int8-oneshot-int4"}) {
    AllreduceOptions o = allreduceOptionsFromName(n);
    o.chunk_elems = 8192;  // several pipeline chunks
    o.hier.ranks_per_node = 2;
    v.push_back({n, o});
  }
  AllreduceOptions spikes = allreduceOptionsFromName("flash-int4");
  spikes.reduce_scatter.spikes = spikes.all_gather.spikes = 2;
  spikes.chunk_elems = 8192;
  v.push_back({"flash-int4-spikes2", spikes});
  return v;
}

}  // namespace

TEST(WorkspaceAllreduce, ReusedWorkspacesStopGrowingAndGiveTheSameBits) {
  constexpr int N = 4;
  for (const Named& c : allreduceCases()) {
    for (size_t n : {size_t{1000}, size_t{50003}}) {
      SCOPED_TRACE(fmt::format("{} n={}", c.name, n));
      runThreadRanks(
          N,
          [&](Communicator& comm) {
            const auto input = testref::rankInput(comm.rank(), n);
            Workspace& mine = comm.workspace();
            // The communicator's workspace when none is given.
            auto x = input;
            allreduce(comm, x, c.options);
            const auto expect = x;
            EXPECT_GT(mine.bytesReserved(), 0u);
            const size_t reserved = mine.bytesReserved();
            const uint64_t allocations = mine.allocations();
            for (int i = 0; i < 3; ++i) {
              x = input;
              allreduce(comm, x, c.options);
              EXPECT_TRUE(testref::sameBits(x, expect));
            }
            EXPECT_EQ(mine.bytesReserved(), reserved);
            EXPECT_EQ(mine.allocations(), allocations);
            // A caller's workspace: the same bits, the communicator's left alone, no growth after the first call.
            Workspace ws;
            AllreduceOptions o = c.options;
            o.workspace = &ws;
            std::vector<float> err(n);
            for (int i = 0; i < 4; ++i) {
              x = input;
              allreduce(comm, x, o);
              EXPECT_TRUE(testref::sameBits(x, expect));
              x = input;
              allreduceWithError(comm, x, err, o);
              EXPECT_TRUE(testref::sameBits(x, expect));
              if (i == 0) {
                EXPECT_GT(ws.bytesReserved(), 0u);
              }
            }
            const size_t ws_reserved = ws.bytesReserved();
            const uint64_t ws_allocations = ws.allocations();
            x = input;
            allreduce(comm, x, o);
            EXPECT_EQ(ws.bytesReserved(), ws_reserved);
            EXPECT_EQ(ws.allocations(), ws_allocations);
            EXPECT_EQ(ws.bytesInUse(), 0u);
            EXPECT_EQ(mine.allocations(), allocations);
          },
          60s);
    }
  }
}

TEST(WorkspaceSpAttention, ReusedWorkspacesStopGrowingAndGiveTheSameBits) {
  constexpr int N = 4;
  const SpShape s{1, 61, 4, 2, 32};
  const size_t S = static_cast<size_t>(s.seq_len), qw = static_cast<size_t>(s.heads * s.head_dim),
               kw = static_cast<size_t>(s.kv_heads * s.head_dim);
  const auto q = testref::randn(S * qw, 1), k = testref::randn(S * kw, 2), v = testref::randn(S * kw, 3);
  for (SpScheme scheme : {SpScheme::TokenRing, SpScheme::RingKV, SpScheme::Ulysses, SpScheme::AllGatherKV,
                          SpScheme::UlyssesTokenRing, SpScheme::UlyssesRingKV}) {
    SCOPED_TRACE(spSchemeName(scheme));
    runThreadRanks(
        N,
        [&](Communicator& comm) {
          comm.setRanksPerNode(2);  // the two-level schemes: 2 nodes of 2
          const int r = comm.rank();
          const auto ql = testref::shard(q, s, qw, N, r, SeqLayout::Zigzag),
                     kl = testref::shard(k, s, kw, N, r, SeqLayout::Zigzag),
                     vl = testref::shard(v, s, kw, N, r, SeqLayout::Zigzag);
          SpAttentionOptions o;
          o.scheme = scheme;
          std::vector<float> expect(ql.size()), expect_lse(ql.size() / s.head_dim);
          spAttention(comm, ql.data(), kl.data(), vl.data(), s, o, expect.data(), expect_lse.data());
          EXPECT_GT(comm.workspace().bytesReserved(), 0u);
          Workspace ws;
          o.workspace = &ws;
          size_t reserved = 0;
          uint64_t allocations = 0;
          for (int i = 0; i < 4; ++i) {
            std::vector<float> out(ql.size()), lse(expect_lse.size());
            spAttention(comm, ql.data(), kl.data(), vl.data(), s, o, out.data(), lse.data());
            EXPECT_TRUE(testref::sameBits(out, expect));
            EXPECT_TRUE(testref::sameBits(lse, expect_lse));
            if (i == 0) {
              reserved = ws.bytesReserved();
              allocations = ws.allocations();
              EXPECT_GT(reserved, 0u);
            }
          }
          EXPECT_EQ(ws.bytesReserved(), reserved);
          EXPECT_EQ(ws.allocations(), allocations);
        },
        60s);
  }
}

TEST(WorkspaceSpAttention, PassQAndPassKvReuseTheirWorkspace) {
  constexpr int N = 3;
  const SpQueryShape s{2, 4, 2, 32};
  for (bool pass_kv : {false, true}) {
    SCOPED_TRACE(pass_kv ? "pass-KV" : "pass-Q");
    runThreadRanks(
        N,
        [&](Communicator& comm) {
          const int64_t len = 10 + comm.rank();
          const auto q = testref::randn(size_t(s.q_len) * s.heads * s.head_dim, 1);
          const auto k = testref::randn(size_t(len) * s.kv_heads * s.head_dim, 2 + comm.rank());
          const auto v = testref::randn(size_t(len) * s.kv_heads * s.head_dim, 9 + comm.rank());
          auto* run = pass_kv ? &spPassKVAttention : &spPassQAttention;
          const int owner = 1;
          std::vector<float> expect(q.size()), out(q.size());
          run(comm, owner, q.data(), k.data(), v.data(), len, s, 0, expect.data(), nullptr, nullptr);
          Workspace ws;
          run(comm, owner, q.data(), k.data(), v.data(), len, s, 1, out.data(), nullptr, &ws);
          const size_t reserved = ws.bytesReserved();
          const uint64_t allocations = ws.allocations();
          if (!pass_kv || comm.rank() == owner) {  // pass-KV's other ranks only send their caches
            EXPECT_GT(reserved, 0u);
          }
          for (int i = 0; i < 3; ++i) {
            run(comm, owner, q.data(), k.data(), v.data(), len, s, 2 + i, out.data(), nullptr, &ws);
            if (comm.rank() == owner) {
              EXPECT_TRUE(testref::sameBits(out, expect));
            }
          }
          EXPECT_EQ(ws.bytesReserved(), reserved);
          EXPECT_EQ(ws.allocations(), allocations);
        },
        60s);
  }
}

TEST(WorkspaceShared, OneWorkspaceHandedToEveryRankFailsThemAllInsteadOfRacing) {
  constexpr int N = 3;
  Workspace shared;
  AllreduceOptions o = allreduceOptionsFromName("flash-int8");
  o.workspace = &shared;  // wrong: one workspace for three ranks
  const auto errors = runThreadRanksCollect(
      N,
      [&](Communicator& comm) {
        auto x = testref::rankInput(comm.rank(), 4096);
        allreduce(comm, x, o);
      },
      60s);
  int invalid = 0;
  for (const auto& e : errors) {
    ASSERT_NE(e, nullptr) << "a rank completed an all-reduce in a shared workspace";
    try {
      std::rethrow_exception(e);
    } catch (const InvalidArgument& x) {
      EXPECT_NE(std::string(x.what()).find("another thread"), std::string::npos) << x.what();
      ++invalid;
    } catch (const AbortedError&) {
    }
  }
  EXPECT_GE(invalid, 1);
  EXPECT_EQ(shared.depth(), 0);
}

TEST(WorkspaceEngine, TheEngineRunsInAWorkspaceOfItsOwn) {
  const testref::ModelFixture f = testref::tinyFixture("tiny-uneven");
  if (!f.present) GTEST_SKIP() << f.missing;
  for (SpScheme append : {SpScheme::TokenRing, SpScheme::AllGatherKV}) {
    SCOPED_TRACE(spSchemeName(append));
    EngineOptions o;
    o.tp = 2;
    o.sp = 2;
    o.attention = SpScheme::TokenRing;
    o.append_attention = append;
    o.allreduce = allreduceOptionsFromName("flash-int8");
    testref::runGrid(f.gguf_path, o, [&](Communicator& comm, LlamaEngine& eng) {
      TokenId t = eng.prefill(std::vector<TokenId>(f.tokens.begin(), f.tokens.begin() + 9));
      for (int i = 0; i < 3; ++i) t = eng.decode(t);
      // Every all-reduce and attention call went to the engine's workspace, none to the communicator's.
      EXPECT_EQ(comm.workspace().bytesReserved(), 0u);
      EXPECT_EQ(eng.tpComm().workspace().bytesReserved(), 0u);
    });
  }
}
