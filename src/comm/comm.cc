#include "flashring/comm.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "comm/interrupt.h"
#include "comm/tags.h"

namespace flashring {

namespace {
std::chrono::milliseconds defaultTimeout() {
  if (const char* env = std::getenv("FLASHRING_TIMEOUT_MS")) {
    char* end = nullptr;
    long long v = std::strtoll(env, &end, 10);
    if (end != env && *end == '\0' && v > 0) return std::chrono::milliseconds(v);
    throw InvalidArgument(fmt::format("FLASHRING_TIMEOUT_MS='{}' is not a positive number of milliseconds", env));
  }
  return std::chrono::milliseconds(120000);
}

// Every rank sends its 8 bytes to every other rank (one step); every rank then holds all values in rank
// order, so any reduction over them is identical on every rank.
template <typename T>
std::vector<T> allgatherValue(Communicator& comm, T v) {
  static_assert(sizeof(T) == 8);
  const int n = comm.size(), me = comm.rank();
  std::vector<T> all(static_cast<size_t>(n));
  all[static_cast<size_t>(me)] = v;
  std::vector<Request> reqs;
  reqs.reserve(2 * static_cast<size_t>(n));
  const Tag tag = tags::make(tags::kHelpers, 0);
  for (int p = 0; p < n; ++p) {
    if (p == me) continue;
    reqs.push_back(comm.irecv(&all[static_cast<size_t>(p)], sizeof(T), p, tag));
  }
  for (int p = 0; p < n; ++p) {
    if (p == me) continue;
    reqs.push_back(comm.isend(&all[static_cast<size_t>(me)], sizeof(T), p, tag));
  }
  comm.waitAll(reqs, comm.deadline());
  return all;
}
std::atomic<InterruptCheck> g_interrupt_check{nullptr};
}  // namespace

void setInterruptCheck(InterruptCheck check) { g_interrupt_check.store(check, std::memory_order_release); }
InterruptCheck interruptCheck() { return g_interrupt_check.load(std::memory_order_acquire); }

namespace detail {
void pollInterrupt(Communicator& comm) {
  const InterruptCheck check = interruptCheck();
  if (check == nullptr || !check()) return;
  const std::string reason = fmt::format("interrupted on rank {}", comm.rank());
  comm.abort(reason);
  throw InterruptedError(reason, comm.rank());
}
}  // namespace detail

Communicator::Communicator() : timeout_(defaultTimeout()) {}

std::vector<int> normalizeNodeIds(const std::vector<int>& ids) {
  std::vector<int> seen, out(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = std::find(seen.begin(), seen.end(), ids[i]);
    if (it == seen.end()) {
      seen.push_back(ids[i]);
      it = seen.end() - 1;
    }
    out[i] = static_cast<int>(it - seen.begin());
  }
  return out;
}

std::vector<int> Communicator::nodeIds() const {
  if (!node_ids_.empty()) return node_ids_;
  return std::vector<int>(static_cast<size_t>(size()), 0);
}

void Communicator::setNodeIds(std::vector<int> ids) {
  if (ids.size() != static_cast<size_t>(size()))
    throw InvalidArgument(fmt::format("setNodeIds: {} node ids for {} ranks", ids.size(), size()), rank());
  node_ids_ = normalizeNodeIds(ids);
}

void Communicator::setRanksPerNode(int ranks_per_node) {
  if (ranks_per_node < 1 || size() % ranks_per_node != 0)
    throw InvalidArgument(
        fmt::format("ranks per node: {} does not divide the communicator's {} ranks", ranks_per_node, size()), rank());
  std::vector<int> ids(static_cast<size_t>(size()));
  for (int r = 0; r < size(); ++r) ids[static_cast<size_t>(r)] = r / ranks_per_node;
  node_ids_ = std::move(ids);
}

void Communicator::waitAll(std::span<Request> rs, Deadline deadline) {
  for (auto& r : rs) wait(r, deadline);
}

void Communicator::nativeAllreduceSum(float*, size_t, Deadline, bool) {
  throw InvalidArgument(fmt::format("the '{}' transport has no native all-reduce", transport()), rank());
}

void Communicator::checkArgs(const void* buf, size_t bytes, int peer, Tag tag, const char* op) const {
  if (peer < 0 || peer >= size())
    throw InvalidArgument(fmt::format("{}: peer {} is out of range [0, {})", op, peer, size()), rank());
  if (tag < 0 || tag > kMaxTag)
    throw InvalidArgument(fmt::format("{}: tag {} is out of range [0, {}]", op, tag, kMaxTag), rank());
  if (bytes > 0 && buf == nullptr)
    throw InvalidArgument(fmt::format("{}: null buffer for {} bytes to/from peer {}", op, bytes, peer), rank());
}

void barrier(Communicator& comm) { (void)allgatherValue<uint64_t>(comm, 0); }

double allreduceMax(Communicator& comm, double v) {
  auto all = allgatherValue(comm, v);
  return *std::max_element(all.begin(), all.end());
}

double allreduceMin(Communicator& comm, double v) {
  auto all = allgatherValue(comm, v);
  return *std::min_element(all.begin(), all.end());
}

double allreduceSumDouble(Communicator& comm, double v) {
  auto all = allgatherValue(comm, v);
  double s = 0;
  for (double x : all) s += x;  // rank order: identical on every rank
  return s;
}

void checkSameOnAllRanks(Communicator& comm, uint64_t value, const char* what) {
  auto all = allgatherValue(comm, value);
  if (std::all_of(all.begin(), all.end(), [&](uint64_t x) { return x == all[0]; })) return;
  std::string list;
  for (size_t i = 0; i < all.size(); ++i) list += fmt::format("{}rank {}: {}", i ? ", " : "", i, all[i]);
  throw InvalidArgument(fmt::format("{} differs across ranks ({})", what, list), comm.rank());
}

}  // namespace flashring
