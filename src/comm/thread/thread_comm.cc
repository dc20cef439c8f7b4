// ThreadCommunicator: ranks as threads of one process.
//
// Each rank has a mailbox holding the sends addressed to it that no receive has matched yet and the
// receives it posted that no send has matched yet, keyed by (source, tag) in posting order. Whoever
// arrives second takes the match out of the mailbox under the lock and copies the payload outside it,
// straight from the sender's buffer into the receiver's, then completes both requests. A waiter sleeps on
// its own mailbox's condition variable; a completer sets `done` first and then takes that lock before
// notifying, so no wake-up is lost.
//
// Abort must never leave a copy running into a buffer that an unwinding rank is about to free: it empties
// every mailbox under its lock (so nothing matches afterwards), and a rank that aborts waits until the
// copies already under way from or into its buffers have finished. A waiter whose request is matched
// waits for the copy to end even after an abort.
#include "flashring/thread_comm.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "comm/interrupt.h"

namespace flashring {

namespace {

struct ThreadRequest : detail::RequestState {
  int owner = -1;                    // rank that posted it
  std::atomic<bool> matched{false};  // taken out of the mailbox: a copy is under way or done
  std::atomic<bool> complete{false};
  std::string error;  // set before `complete` when the match failed
};
using ReqPtr = std::shared_ptr<ThreadRequest>;

struct Mailbox {
  std::mutex mu;
  std::condition_variable cv;
  std::unordered_map<uint64_t, std::deque<ReqPtr>> sends;  // unmatched sends to this rank
  std::unordered_map<uint64_t, std::deque<ReqPtr>> recvs;  // unmatched receives of this rank
};

uint64_t key(int src, Tag tag) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(src)) << 32) | static_cast<uint32_t>(tag);
}

}  // namespace

class ThreadCommunicator;

struct ThreadWorld::Impl {
  Impl(int n, ThreadWorldOptions o)
      : boxes(static_cast<size_t>(n)), inflight(static_cast<size_t>(n)), options(std::move(o)) {}
  std::vector<Mailbox> boxes;
  std::vector<std::atomic<int>> inflight;  // copies under way that touch each rank's buffers
  std::vector<std::unique_ptr<ThreadCommunicator>> comms;
  ThreadWorldOptions options;
  std::atomic<bool> aborted{false};
  std::mutex abort_mu;
  std::string abort_reason;

  void abort(const std::string& reason) {
    {
      std::lock_guard<std::mutex> lk(abort_mu);
      if (!aborted.load()) {
        abort_reason = reason;
        aborted.store(true);
      }
    }
    for (auto& b : boxes) {
      std::lock_guard<std::mutex> lk(b.mu);
      b.sends.clear();
      b.recvs.clear();
      b.cv.notify_all();
    }
  }
  // Abort on behalf of `rank` and return only once no copy touches that rank's buffers any more.
  void abortFrom(int rank, const std::string& reason) {
    abort(reason);
    while (inflight[static_cast<size_t>(rank)].load() > 0) std::this_thread::yield();
  }
  // Called under the destination mailbox's lock when a pair matches.
  void beginCopy(const ReqPtr& send, const ReqPtr& recv) {
    send->matched.store(true);
    recv->matched.store(true);
    inflight[static_cast<size_t>(send->owner)]++;
    inflight[static_cast<size_t>(recv->owner)]++;
  }
  std::string reason() {
    std::lock_guard<std::mutex> lk(abort_mu);
    return abort_reason;
  }

  void finish(const ReqPtr& r) {
    r->complete.store(true, std::memory_order_release);
    Mailbox& b = boxes[static_cast<size_t>(r->owner)];
    std::lock_guard<std::mutex> lk(b.mu);
    b.cv.notify_all();
  }

  // Posts `r` (a send or a receive) in the mailbox of the receiving rank: matches the oldest waiting
  // counterpart with the same (source, tag) and completes the pair, or queues `r` for a later match.
  void post(Mailbox& box, uint64_t k, const ReqPtr& r) {
    ReqPtr match;
    {
      std::lock_guard<std::mutex> lk(box.mu);
      if (aborted.load())
        throw AbortedError(fmt::format("rank {}: communicator aborted: {}", r->owner, reason()), r->owner);
      auto& theirs = r->is_send ? box.recvs : box.sends;
      auto it = theirs.find(k);
      if (it != theirs.end() && !it->second.empty()) {
        match = std::move(it->second.front());
        it->second.pop_front();
        const ReqPtr& send = r->is_send ? r : match;
        beginCopy(send, r->is_send ? match : r);
      } else {
        (r->is_send ? box.sends : box.recvs)[k].push_back(r);
      }
    }
    if (match) complete(r->is_send ? r : match, r->is_send ? match : r);
  }

  // Completes a matched pair: copies, or records the size mismatch on both and aborts everyone.
  void complete(const ReqPtr& send, const ReqPtr& recv) {
    if (send->bytes != recv->bytes) {
      std::string msg = fmt::format(
          "message size mismatch: rank {} sent {} bytes to rank {} (tag {}), which posted a receive of {} bytes",
          send->owner, send->bytes, recv->owner, send->tag, recv->bytes);
      send->error = msg;
      recv->error = msg;
      abort(msg);
    } else if (send->bytes > 0) {
      if (!options.copy) {
        std::memcpy(recv->recv_buf, send->send_buf, send->bytes);
      } else if (std::string err = options.copy(recv->recv_buf, send->send_buf, send->bytes); !err.empty()) {
        const std::string msg = fmt::format("copying {} bytes from rank {} to rank {} (tag {}) failed: {}", send->bytes,
                                            send->owner, recv->owner, send->tag, err);
        send->error = msg;
        recv->error = msg;
        abort(msg);
      }
    }
    const int so = send->owner, ro = recv->owner;
    finish(recv);
    finish(send);
    inflight[static_cast<size_t>(so)]--;
    inflight[static_cast<size_t>(ro)]--;
  }
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(ThreadWorld::Impl* world, int rank) : world_(world), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(world_->boxes.size()); }
  std::string transport() const override { return world_->options.transport; }
  bool movesMemory(MemoryKind kind) const override {
    return kind == MemoryKind::Host || (kind == MemoryKind::Cuda && world_->options.moves_cuda);
  }

  Request isend(const void* buf, size_t bytes, int peer, Tag tag) override {
    checkArgs(buf, bytes, peer, tag, "isend");
    throwIfAborted();
    auto r = makeRequest(bytes, peer, tag, true);
    r->send_buf = buf;
    countSent(bytes);
    world_->post(world_->boxes[static_cast<size_t>(peer)], key(rank_, tag), r);
    return Request(r);
  }

  Request irecv(void* buf, size_t bytes, int peer, Tag tag) override {
    checkArgs(buf, bytes, peer, tag, "irecv");
    throwIfAborted();
    auto r = makeRequest(bytes, peer, tag, false);
    r->recv_buf = buf;
    world_->post(world_->boxes[static_cast<size_t>(rank_)], key(peer, tag), r);
    return Request(r);
  }

  bool test(Request& req) override {
    auto* r = static_cast<ThreadRequest*>(req.state());
    if (!r) return true;
    if (r->complete.load(std::memory_order_acquire)) {
      checkError(*r);
      return true;
    }
    if (!r->matched.load()) throwIfAborted();
    return false;
  }

  void wait(Request& req, Deadline deadline) override {
    auto* r = static_cast<ThreadRequest*>(req.state());
    if (!r) return;
    if (!r->complete.load(std::memory_order_acquire)) {
      Mailbox& box = world_->boxes[static_cast<size_t>(rank_)];
      std::unique_lock<std::mutex> lk(box.mu);
      // With an interrupt check installed, wake every kInterruptPeriod to call it (outside the lock).
      const bool interruptible = interruptCheck() != nullptr;
      while (!r->complete.load(std::memory_order_acquire)) {
        if (world_->aborted.load() && !r->matched.load()) break;
        const Deadline wake = interruptible ? std::min(deadline, Clock::now() + kInterruptPeriod) : deadline;
        if (box.cv.wait_until(lk, wake) == std::cv_status::timeout && interruptible && Clock::now() < deadline &&
            !r->complete.load(std::memory_order_acquire) && !r->matched.load()) {
          lk.unlock();
          detail::pollInterrupt(*this);
          lk.lock();
          continue;
        }
        if (Clock::now() >= deadline && !r->complete.load(std::memory_order_acquire)) {
          lk.unlock();
          throw TimeoutError(
              fmt::format("rank {}: timed out after {} ms waiting for the {} of {} bytes {} rank {} (tag {})", rank_,
                          timeout().count(), r->is_send ? "send" : "receive", r->bytes, r->is_send ? "to" : "from",
                          r->peer, r->tag),
              rank_);
        }
      }
    }
    if (r->complete.load(std::memory_order_acquire)) {
      checkError(*r);
      return;
    }
    throwIfAborted();
  }

  void abort(const std::string& reason) override { world_->abortFrom(rank_, reason); }
  bool aborted() const override { return world_->aborted.load(); }

 private:
  ReqPtr makeRequest(size_t bytes, int peer, Tag tag, bool is_send) {
    auto r = std::make_shared<ThreadRequest>();
    r->bytes = bytes;
    r->peer = peer;
    r->tag = tag;
    r->is_send = is_send;
    r->owner = rank_;
    return r;
  }
  void checkError(const ThreadRequest& r) const {
    if (!r.error.empty()) throw InvalidArgument(fmt::format("rank {}: {}", rank_, r.error), rank_);
  }
  void throwIfAborted() const {
    if (world_->aborted.load())
      throw AbortedError(fmt::format("rank {}: communicator aborted: {}", rank_, world_->reason()), rank_);
  }

  ThreadWorld::Impl* world_;
  int rank_;
};

ThreadWorld::ThreadWorld(int size, ThreadWorldOptions options) {
  if (size < 1) throw InvalidArgument(fmt::format("ThreadWorld: size must be >= 1, got {}", size));
  impl_ = std::make_unique<Impl>(size, std::move(options));
  for (int r = 0; r < size; ++r) impl_->comms.push_back(std::make_unique<ThreadCommunicator>(impl_.get(), r));
}

ThreadWorld::~ThreadWorld() = default;
int ThreadWorld::size() const { return static_cast<int>(impl_->boxes.size()); }
Communicator& ThreadWorld::communicator(int r) {
  if (r < 0 || r >= size()) throw InvalidArgument(fmt::format("ThreadWorld: rank {} out of range [0, {})", r, size()));
  return *impl_->comms[static_cast<size_t>(r)];
}
void ThreadWorld::abort(const std::string& reason) { impl_->abort(reason); }

std::vector<std::exception_ptr> runThreadRanksCollect(int size, const std::function<void(Communicator&)>& fn,
                                                      std::chrono::milliseconds timeout,
                                                      const ThreadWorldOptions& options) {
  ThreadWorld world(size, options);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(size));
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      Communicator& comm = world.communicator(r);
      if (timeout.count() > 0) comm.setTimeout(timeout);
      try {
        fn(comm);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = std::current_exception();
        comm.abort(fmt::format("rank {} failed: {}", r, e.what()));
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
        comm.abort(fmt::format("rank {} failed with an unknown exception", r));
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

void runThreadRanks(int size, const std::function<void(Communicator&)>& fn, std::chrono::milliseconds timeout,
                    const ThreadWorldOptions& options) {
  auto errors = runThreadRanksCollect(size, fn, timeout, options);
  std::exception_ptr first;
  for (auto& e : errors) {
    if (!e) continue;
    try {
      std::rethrow_exception(e);
    } catch (const AbortedError&) {
      if (!first) first = e;
    } catch (...) {
      std::rethrow_exception(e);  // a root cause beats the aborts it caused
    }
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace flashring
