// All-gather of variable-size byte buffers (include/flashring/allgather.h).
#include "flashring/allgather.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "comm/tags.h"
#include "flashring/error.h"

namespace flashring {

std::vector<std::vector<uint8_t>> allgatherv(Communicator& comm, const void* mine, const std::vector<size_t>& sizes,
                                             int step) {
  const int n = comm.size(), me = comm.rank();
  if (static_cast<int>(sizes.size()) != n)
    throw InvalidArgument(fmt::format("allgatherv: {} sizes for {} ranks", sizes.size(), n), me);
  std::vector<std::vector<uint8_t>> all(static_cast<size_t>(n));
  for (int p = 0; p < n; ++p) all[static_cast<size_t>(p)].resize(std::max<size_t>(sizes[static_cast<size_t>(p)], 1));
  if (sizes[static_cast<size_t>(me)] > 0)
    std::memcpy(all[static_cast<size_t>(me)].data(), mine, sizes[static_cast<size_t>(me)]);
  if (n == 1) return all;
  const Tag tag = tags::make(tags::kEngineGather, step);
  std::vector<Request> reqs;
  for (int p = 0; p < n; ++p)
    if (p != me) reqs.push_back(comm.irecv(all[static_cast<size_t>(p)].data(), sizes[static_cast<size_t>(p)], p, tag));
  for (int p = 0; p < n; ++p)
    if (p != me)
      reqs.push_back(comm.isend(all[static_cast<size_t>(me)].data(), sizes[static_cast<size_t>(me)], p, tag));
  comm.waitAll(reqs, comm.deadline());
  return all;
}

}  // namespace flashring
