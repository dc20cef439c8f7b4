// Harness of the MPI test binary (flashring_mpi_tests), shared by every file in tests/mpi/.
//
// CTest runs the binary under `mpiexec -n N`; every rank runs every test, in the same order. main()
// (mpi_harness.cc) creates the MpiEnvironment and one MpiCommunicator shared across tests, runs the tests,
// and exits non-zero on every rank if any test failed on any rank. Only rank 0 prints gtest's output;
// the other ranks print their own failures, prefixed with their rank (FLASHRING_TEST_ALL_RANKS=1 makes
// every rank print everything).
//
// Write tests as TEST_F(MpiTest, Name) / TEST_P on a subclass. The fixture is collective:
// - SetUp synchronises the ranks (an MPI_Allreduce on MPI_COMM_WORLD) and, if the previous test aborted
//   the shared communicator or failed on any rank (it may have left messages behind), replaces it with a
//   fresh duplicate of MPI_COMM_WORLD.
// - TearDown makes the outcome the same on every rank: a test that failed on some rank also fails on
//   the others, with a message naming the ranks where it failed.
// So every rank must run SetUp/TearDown for every test: skip only on conditions that are the same on
// every rank (the world size), and bound every wait with a deadline so a failing rank cannot hang the
// others. Tests that abort a communicator, or leave a message or receive pending, use freshComm().
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <memory>

#include "flashring/mpi/mpi_comm.h"

namespace flashring::mpitest {

int worldRank();
int worldSize();

// The communicator shared across tests (a duplicate of MPI_COMM_WORLD). Valid between SetUp and TearDown.
MpiCommunicator& sharedComm();

// Deadline `ms` milliseconds from now.
inline Deadline after(std::chrono::milliseconds ms) { return Clock::now() + ms; }
// The deadline for waits that should succeed: generous, since 4 ranks share 2 cores.
inline constexpr std::chrono::milliseconds kWaitBudget{30000};

class MpiTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  MpiCommunicator& comm() { return sharedComm(); }
  int rank() const { return worldRank(); }
  int size() const { return worldSize(); }
  // A new communicator over `parent` (collective over it), for tests that abort it or leave work behind.
  static std::unique_ptr<MpiCommunicator> freshComm(MPI_Comm parent = MPI_COMM_WORLD);
};

}  // namespace flashring::mpitest

// Skips the test (on every rank alike) unless the world has at least n ranks.
#define FLASHRING_REQUIRE_RANKS(n)                                                                      \
  do {                                                                                                  \
    if (::flashring::mpitest::worldSize() < (n))                                                        \
      GTEST_SKIP() << "needs at least " << (n) << " ranks, have " << ::flashring::mpitest::worldSize(); \
  } while (0)
