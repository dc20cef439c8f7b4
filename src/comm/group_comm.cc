#include "flashring/group_comm.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <tuple>

#include "flashring/allgather.h"

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

std::vector<int> GroupCommunicator::nodeIds() const {
  if (!node_ids_.empty()) return node_ids_;
  const std::vector<int> parent = parent_.nodeIds();
  std::vector<int> ids;
  ids.reserve(members_.size());
  for (int m : members_) ids.push_back(parent[static_cast<size_t>(m)]);
  return normalizeNodeIds(ids);
}

std::unique_ptr<GroupCommunicator> split(Communicator& parent, int64_t color, int64_t key) {
  const int n = parent.size();
  const int64_t mine[2] = {color, key};
  const auto all = allgatherv(parent, mine, std::vector<size_t>(static_cast<size_t>(n), sizeof(mine)), 0);
  std::vector<std::tuple<int64_t, int>> same;  // (key, parent rank) of the ranks with my color
  for (int r = 0; r < n; ++r) {
    int64_t v[2];
    std::memcpy(v, all[static_cast<size_t>(r)].data(), sizeof(v));
    if (v[0] == color) same.emplace_back(v[1], r);
  }
  std::sort(same.begin(), same.end());
  std::vector<int> members;
  members.reserve(same.size());
  for (const auto& [k, r] : same) members.push_back(r);
  return std::make_unique<GroupCommunicator>(parent, std::move(members));
}

}  // namespace flashring
