#include "flashring/group_comm.h"

#include <fmt/format.h>

#include <algorithm>

namespace flashring {

GroupCommunicator::GroupCommunicator(Communicator& parent, std::vector<int> members)
    : parent_(parent), members_(std::move(members)) {
  if (members_.empty()) throw InvalidArgument("GroupCommunicator: empty member list", parent.rank());
  std::vector<int> sorted = members_;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
    throw InvalidArgument("GroupCommunicator: a parent rank is listed twice", parent.rank());
  if (sorted.front() < 0 || sorted.back() >= parent.size())
    throw InvalidArgument(fmt::format("GroupCommunicator: member out of range [0, {})", parent.size()), parent.rank());
  auto it = std::find(members_.begin(), members_.end(), parent.rank());
  if (it == members_.end())
    throw InvalidArgument(fmt::format("GroupCommunicator: parent rank {} is not a member", parent.rank()),
                          parent.rank());
  rank_ = static_cast<int>(it - members_.begin());
  setTimeout(parent.timeout());
}

Request GroupCommunicator::isend(const void* buf, size_t bytes, int peer, Tag tag) {
  checkArgs(buf, bytes, peer, tag, "isend");
  countSent(bytes);
  return parent_.isend(buf, bytes, members_[static_cast<size_t>(peer)], tag);
}

Request GroupCommunicator::irecv(void* buf, size_t bytes, int peer, Tag tag) {
  checkArgs(buf, bytes, peer, tag, "irecv");
  return parent_.irecv(buf, bytes, members_[static_cast<size_t>(peer)], tag);
}

}  // namespace flashring
