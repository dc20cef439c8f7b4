// A communicator over a subset of another communicator's ranks (like MPI_Comm_split, on any transport).
//
// The engine runs a 2-D grid of ranks: tensor-parallel groups (ranks that share a sequence shard) and
// sequence-parallel groups (ranks that share a set of heads). Each group is a GroupCommunicator: rank i
// of the group is parent rank members[i]; sends, receives, progress, abort and the workspace go to the parent. Tags are
// not translated, so two groups over one parent must never share a pair of ranks (true of the rows and
// columns of a grid: two ranks share a row or a column, never both) — the constructor cannot check that
// across groups, so it is the caller's invariant. An abort of a group aborts the parent: a failure in a
// tensor-parallel all-reduce reaches every rank of the job, not just the group.
#pragma once

#include <memory>
#include <vector>

#include "flashring/comm.h"

namespace flashring {

class GroupCommunicator final : public Communicator {
 public:
  // `members`: parent ranks in group order; must contain parent.rank() once, no duplicates, all in range.
  GroupCommunicator(Communicator& parent, std::vector<int> members);

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(members_.size()); }
  std::string transport() const override { return parent_.transport(); }
  Request isend(const void* buf, size_t bytes, int peer, Tag tag) override;
  Request irecv(void* buf, size_t bytes, int peer, Tag tag) override;
  bool test(Request& r) override { return parent_.test(r); }
  void wait(Request& r, Deadline deadline) override { parent_.wait(r, deadline); }
  void progress() override { parent_.progress(); }
  void abort(const std::string& reason) override { parent_.abort(reason); }
  bool aborted() const override { return parent_.aborted(); }
  std::vector<int> nodeIds() const override;                       // the parent's, for the members (unless setNodeIds)
  Workspace& workspace() override { return parent_.workspace(); }  // this rank's, shared with the parent

  Communicator& parent() const { return parent_; }
  const std::vector<int>& members() const { return members_; }

 private:
  Communicator& parent_;
  std::vector<int> members_;
  int rank_ = -1;
};

// MPI_Comm_split on any transport. Collective over `parent`: every rank passes a color and a key; the ranks
// with equal colors form one group, ordered by (key, parent rank). The groups of one split never share a pair
// of ranks, as the tag rule above requires; two splits of one parent may (their callers must then keep them
// apart in time, as the engine's grid rows and columns do by construction). Costs one all-gather of 16 bytes.
std::unique_ptr<GroupCommunicator> split(Communicator& parent, int64_t color, int64_t key);

}  // namespace flashring
