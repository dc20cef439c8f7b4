// main() and the collective fixture of the MPI test binary; see mpi_harness.h.
#include "mpi/mpi_harness.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace flashring::mpitest {

namespace {

int g_rank = 0;
int g_size = 1;
std::unique_ptr<MpiCommunicator> g_shared;
bool g_refresh = false;  // the last test failed somewhere: give the next one a clean communicator

constexpr const char* kHarnessTag = "[harness] ";

// For ranks other than 0: prints only this rank's failures, prefixed with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    const std::string msg = r.message();
    if (msg.find(kHarnessTag) != std::string::npos) return;  // the echo of another rank's failure
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", g_rank, r.file_name() ? r.file_name() : "?", r.line_number(),
                 msg.c_str());
    std::fflush(stderr);
  }
  void OnTestEnd(const ::testing::TestInfo& t) override {
    if (!t.result()->Failed()) return;
    std::fprintf(stderr, "[rank %d] [  FAILED  ] %s.%s\n", g_rank, t.test_suite_name(), t.name());
    std::fflush(stderr);
  }
};

void setUpSharedComm() {
  g_shared = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
  if (std::getenv("FLASHRING_TIMEOUT_MS") == nullptr) g_shared->setTimeout(kWaitBudget);
}

}  // namespace

int worldRank() { return g_rank; }
int worldSize() { return g_size; }

MpiCommunicator& sharedComm() { return *g_shared; }

std::unique_ptr<MpiCommunicator> MpiTest::freshComm(MPI_Comm parent) {
  auto c = std::make_unique<MpiCommunicator>(parent);
  if (std::getenv("FLASHRING_TIMEOUT_MS") == nullptr) c->setTimeout(kWaitBudget);
  return c;
}

void MpiTest::SetUp() {
  int mine = (g_refresh || g_shared->aborted()) ? 1 : 0, any = 0;
  MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any) {
    g_shared.reset();
    setUpSharedComm();
  }
  g_refresh = false;
  g_shared->resetBytesSent();
}

void MpiTest::TearDown() {
  int mine = HasFailure() ? 1 : 0;
  std::vector<int> all(static_cast<size_t>(g_size));
  MPI_Allgather(&mine, 1, MPI_INT, all.data(), 1, MPI_INT, MPI_COMM_WORLD);
  std::string where;
  for (int r = 0; r < g_size; ++r)
    if (all[static_cast<size_t>(r)]) where += (where.empty() ? "" : ", ") + std::to_string(r);
  if (where.empty()) return;
  g_refresh = true;
  if (!mine) ADD_FAILURE() << kHarnessTag << "this test failed on rank(s) " << where;
}

}  // namespace flashring::mpitest

int main(int argc, char** argv) {
  using namespace flashring::mpitest;
  flashring::MpiEnvironment env(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  ::testing::InitGoogleTest(&argc, argv);

  // Every rank must run the same tests in the same order: share rank 0's shuffle seed.
  int seed = GTEST_FLAG_GET(random_seed);
  MPI_Bcast(&seed, 1, MPI_INT, 0, MPI_COMM_WORLD);
  GTEST_FLAG_SET(random_seed, seed);

  const bool all_ranks_print = std::getenv("FLASHRING_TEST_ALL_RANKS") != nullptr;
  if (g_rank != 0 && !all_ranks_print) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter);
  }

  setUpSharedComm();
  const int rc = RUN_ALL_TESTS();
  g_shared.reset();

  int failed = rc != 0 ? 1 : 0, failed_ranks = 0;
  MPI_Allreduce(&failed, &failed_ranks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (g_rank == 0 && failed_ranks > 0) {
    std::fprintf(stderr, "flashring_mpi_tests: failures on %d of %d rank(s)\n", failed_ranks, g_size);
    std::fflush(stderr);
  }
  return failed_ranks > 0 ? 1 : 0;
}
