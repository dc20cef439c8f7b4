// Internals of the MPI transport that tests need to reach.
//
// MPI counts are `int`. Payloads above the limit below go out as one message of a derived datatype
// (whole pieces of `maxCount()` bytes plus a remainder), so they keep MPI's matching and ordering and a
// size mismatch is still detected exactly; native all-reduces above it run as several all-reduces of at
// most `maxCount()` floats. The limit is INT_MAX; tests lower it (setMaxCountForTesting, or the
// environment variable FLASHRING_MPI_MAX_COUNT read once at first use) so that those paths run on
// messages of a few kilobytes instead of 2 GiB.
#pragma once

#include <cstdint>

namespace flashring::mpi_detail {

// Largest element count passed to one MPI call.
int64_t maxCount();
// Sets the limit (clamped to [1, INT_MAX]); n <= 0 restores the default. Returns the previous limit.
// Not for concurrent use with communication on other threads.
int64_t setMaxCountForTesting(int64_t n);

}  // namespace flashring::mpi_detail
