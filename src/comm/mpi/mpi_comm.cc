// MpiCommunicator: flashring's Communicator over MPI (see mpi_comm.h for the contract).
//
// How each guarantee is kept:
// - Isolation: the given communicator is duplicated (MPI_Comm_dup, collective over it), so flashring's
//   messages never match the application's. The duplicate has MPI_ERRORS_RETURN; every failing MPI call
//   becomes TransportError("rank R: <call>: <MPI_Error_string>").
// - Large messages: a payload above mpi_detail::maxCount() (INT_MAX) bytes travels as ONE message of a
//   derived datatype (whole pieces plus a remainder), not as several messages: MPI's non-overtaking
//   matching and its size checks then hold for it exactly as for a small one (splitting into several
//   messages could let a receive of k pieces silently match the first k pieces of a longer send).
// - Receives are matched by probe: irecv only queues the receive; every wait/test/progress call runs
//   MPI_Improbe(peer, tag) for the head of each (peer, tag) queue and, once a message is there, checks its
//   size (MPI_Get_elements_x) and receives it with MPI_Imrecv. Queue order is posting order and MPI's
//   matching is non-overtaking, so messages still match receives in posting order. Why not MPI_Irecv:
//   OpenMPI 4.1.4 (ob1 over vader/CMA and over tcp) writes a too-large rendezvous message PAST THE END of
//   the receive buffer before reporting MPI_ERR_TRUNCATE (measured: a 6 MiB send into a 4 MiB receive
//   overwrote the 2 MiB after it, and a 50 KB send into 33 KB overwrote 17 KB on vader), so a mismatch must
//   be caught before anything is received. The price: an eager message that arrives before its receive
//   is matched is copied once more (out of MPI's unexpected-message buffer, as with any late receive), and
//   a rendezvous transfer starts at the receiver's next poll rather than at its next MPI call of any kind;
//   every wait polls all queues, so a rank waiting on one receive still lets the others match.
// - Size mismatch: a message larger than its receive is detected at the probe and never received; one
//   smaller is received and detected on completion. Either way the receive fails with InvalidArgument
//   naming both sizes, the peer and the tag, and the communicator is aborted, so the sender and every
//   other rank see AbortedError carrying that text. (The too-large message stays matched but unreceived;
//   its sender's request never completes, which is harmless once the communicator is aborted.)
// - Abort: abort(reason) sends "rank R aborted: reason" (at most ~1 KiB, far below every eager limit, so
//   the sends complete locally even when a peer never looks) to every other rank over a second duplicate,
//   the control communicator, which carries nothing else. Waits, test, progress and aborted() probe it
//   (MPI_Improbe on MPI_ANY_SOURCE): aborted() every time, the others at most every kAbortPollInterval
//   (100 us) while they poll, because each wildcard probe is one more pass of MPI's progress engine
//   (probing on every spin made an 8-byte round trip over vader 5x slower). Once a notice has arrived, or
//   this rank aborted, every wait and test throws AbortedError with that text, and isend/irecv throw it
//   too. Notices are not forwarded: the origin sends one to every peer itself.
// - Why a separate control communicator, and why it is never freed: a notice reaches every peer, also
//   peers that destroy the communicator before they look. OpenMPI 4.1.4 keeps a message that arrives for
//   a freed context id and hands it, with its old sequence number, to the next communicator that gets
//   that id; the receiver's ob1 sequence numbers for that peer are then off by one and a later message
//   (even MPI_Barrier on MPI_COMM_WORLD) is never matched. Measured here: a loop of {dup, bcast, rank 0
//   sends a notice, everyone frees, dup, ring exchange, barrier} hung in 3 of 5 runs of 4 ranks over tcp,
//   and in 0 of 8 with the notices on a second duplicate that is never freed. So each MpiCommunicator
//   keeps one MPI context id until MPI_Finalize (OpenMPI has 65535), plus its data duplicate if it was
//   aborted or destroyed with work pending (stale data messages may still be addressed to it).
// - Pending operations after an abort: receives not yet matched are simply dropped (MPI never saw their
//   buffers). Receives already handed to MPI (their message is arriving) are given up to kCleanupGrace
//   to finish, because the caller frees their buffers as the AbortedError unwinds. Sends cannot be
//   cancelled in OpenMPI; a send whose receiver never receives stays pending. The destructor gives
//   everything another kCleanupGrace, then releases what is left with MPI_Request_free (a rendezvous send
//   nobody receives is never read again). Unreceived messages and freed pending sends do not keep
//   MPI_Finalize from returning (OpenMPI 4.1.4, vader and tcp: the MPI tests run such destructive tests
//   and then finalize). Residual risk: a rank that destroys a communicator before it has seen a peer's
//   abort, while that peer's data message to it is still in flight, frees the data duplicate and can
//   receive the stale message in a later communicator (see above); every rank that waits once more
//   after the abort keeps the duplicate instead.
// - Deadlines: wait polls MPI_Test (plus the probes above); after kSpinsBeforeYield polls it calls
//   sched_yield() between polls so that oversubscribed ranks (4 ranks on 2 cores) let their peers run.
// - Native all-reduce: MPI_Iallreduce(MPI_IN_PLACE, MPI_FLOAT, MPI_SUM) polled like a wait, in pieces of
//   at most maxCount() floats. A non-blocking collective cannot be cancelled: after a timeout or an abort
//   it is left behind (tested again, never freed, in the destructor) and the communicator must not run
//   another collective (the caller should abort). Its traffic is NOT counted in bytesSent(): that counter
//   is the payload this rank posted with isend, and MPI's own algorithm (and so its traffic) is unknown.
// - Threads: one thread at a time per communicator, for every call (test, progress and aborted()
//   included). Different communicators may be driven from different threads at once only when
//   MpiEnvironment::threadLevel() is MPI_THREAD_MULTIPLE (Debian's OpenMPI provides it).
#include "flashring/mpi/mpi_comm.h"

#include <fmt/format.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <deque>
#include <exception>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "comm/interrupt.h"
#include "comm/mpi/mpi_internal.h"

namespace flashring {

namespace mpi_detail {
namespace {
std::atomic<int64_t> g_max_count{0};  // 0: not read from the environment yet

int64_t defaultMaxCount() {
  if (const char* env = std::getenv("FLASHRING_MPI_MAX_COUNT")) {
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    if (end != env && *end == '\0' && v > 0) return std::min<int64_t>(v, INT_MAX);
    throw InvalidArgument(fmt::format("FLASHRING_MPI_MAX_COUNT='{}' is not a positive count", env));
  }
  return INT_MAX;
}
}  // namespace

int64_t maxCount() {
  int64_t v = g_max_count.load(std::memory_order_relaxed);
  if (v == 0) {
    v = defaultMaxCount();
    g_max_count.store(v, std::memory_order_relaxed);
  }
  return v;
}

int64_t setMaxCountForTesting(int64_t n) {
  const int64_t old = maxCount();
  g_max_count.store(n <= 0 ? defaultMaxCount() : std::min<int64_t>(n, INT_MAX), std::memory_order_relaxed);
  return old;
}
}  // namespace mpi_detail

namespace {

constexpr int kSpinsBeforeYield = 256;
constexpr auto kCleanupGrace = std::chrono::milliseconds(1000);
constexpr auto kAbortPollInterval = std::chrono::microseconds(100);
constexpr size_t kMaxReasonChars = 1024;

std::string mpiErrorString(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) return fmt::format("MPI error code {}", rc);
  return std::string(text, static_cast<size_t>(len));
}

int errorClass(int rc) {
  int cls = rc;
  if (MPI_Error_class(rc, &cls) != MPI_SUCCESS) return rc;
  return cls;
}

bool mpiFinalized() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  return finalized != 0;
}

long long msSince(Clock::time_point t) {
  return static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count());
}

struct MpiRequest final : detail::RequestState {
  const void* owner = nullptr;
  MPI_Request req = MPI_REQUEST_NULL;
  MPI_Datatype type = MPI_DATATYPE_NULL;  // derived type of a message above maxCount() bytes; owned
  bool posted = false;                    // handed to MPI (a send, or a receive whose message was probed)
  std::exception_ptr error;               // why it failed: size mismatch or an MPI error
};

std::string describe(const detail::RequestState& s) {
  return s.is_send ? fmt::format("send of {} bytes to peer {} with tag {}", s.bytes, s.peer, s.tag)
                   : fmt::format("recv of {} bytes from peer {} with tag {}", s.bytes, s.peer, s.tag);
}

}  // namespace

struct MpiCommunicator::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Comm ctrl = MPI_COMM_NULL;  // a second duplicate, only for abort notices; never freed (see the top)
  int rank = 0;
  int size = 1;
  static constexpr int kAbortTag = 0;  // on `ctrl`, where nothing else travels

  // Operations handed to MPI: sends, and receives whose message has been probed. Completed ones are
  // dropped lazily (compact()).
  std::vector<std::shared_ptr<MpiRequest>> pending;
  size_t done_in_pending = 0;
  std::vector<MPI_Request> handles;  // scratch for MPI_Testsome
  std::vector<int> indices;
  std::vector<MPI_Status> statuses;
  // Receives not matched yet, in posting order per (peer, tag).
  std::map<std::pair<int, Tag>, std::deque<std::shared_ptr<MpiRequest>>> unmatched;

  std::vector<MPI_Request> stuck;  // native all-reduces abandoned by a timeout or abort

  bool aborted = false;
  std::string abort_message;
  int abort_origin = -1;
  std::string notice;  // the notice this rank sent; must outlive notice_reqs
  std::vector<MPI_Request> notice_reqs;
  std::string deferred_abort;  // a size mismatch found while matching or testing; aborts afterwards
  Clock::time_point last_abort_poll{};

  [[noreturn]] void fail(int rc, const std::string& what) const {
    throw TransportError(fmt::format("rank {}: {} failed: {}", rank, what, mpiErrorString(rc)), rank);
  }
  void check(int rc, const char* what) const {
    if (rc != MPI_SUCCESS) fail(rc, what);
  }

  void throwIfAborted() const {
    if (aborted) throw AbortedError(abort_message, abort_origin);
  }

  MpiRequest* own(Request& r, const char* op) const {
    if (!r.valid()) return nullptr;
    auto* q = dynamic_cast<MpiRequest*>(r.state());
    if (q == nullptr || q->owner != this)
      throw InvalidArgument(fmt::format("{}: the request was not posted on this MpiCommunicator", op), rank);
    return q;
  }

  // One message of `bytes` bytes above maxCount(): whole pieces of maxCount() bytes, then the remainder.
  MPI_Datatype bigType(size_t bytes) const {
    const auto piece_len = static_cast<size_t>(mpi_detail::maxCount());
    const size_t pieces = bytes / piece_len, rem = bytes % piece_len;
    if (pieces > static_cast<size_t>(INT_MAX))
      throw InvalidArgument(fmt::format("rank {}: message of {} bytes is too large for MPI", rank, bytes), rank);
    MPI_Datatype piece = MPI_DATATYPE_NULL, body = MPI_DATATYPE_NULL, result = MPI_DATATYPE_NULL;
    check(MPI_Type_contiguous(static_cast<int>(piece_len), MPI_BYTE, &piece), "MPI_Type_contiguous");
    check(MPI_Type_contiguous(static_cast<int>(pieces), piece, &body), "MPI_Type_contiguous");
    MPI_Type_free(&piece);
    if (rem == 0) {
      result = body;
    } else {
      int lens[2] = {1, static_cast<int>(rem)};
      MPI_Aint displs[2] = {0, static_cast<MPI_Aint>(pieces * piece_len)};
      MPI_Datatype types[2] = {body, MPI_BYTE};
      check(MPI_Type_create_struct(2, lens, displs, types, &result), "MPI_Type_create_struct");
      MPI_Type_free(&body);
    }
    check(MPI_Type_commit(&result), "MPI_Type_commit");
    return result;
  }

  // (count, datatype) describing q.bytes bytes; sets q.type when a derived type is needed.
  std::pair<int, MPI_Datatype> layout(MpiRequest& q) const {
    if (q.bytes <= static_cast<size_t>(mpi_detail::maxCount())) return {static_cast<int>(q.bytes), MPI_BYTE};
    q.type = bigType(q.bytes);
    return {1, q.type};
  }

  void postSend(const std::shared_ptr<MpiRequest>& q) {
    const auto [count, type] = layout(*q);
    const int rc = MPI_Isend(q->send_buf, count, type, q->peer, q->tag, comm, &q->req);
    if (rc != MPI_SUCCESS) {
      if (q->type != MPI_DATATYPE_NULL) MPI_Type_free(&q->type);
      fail(rc, "MPI_Isend");
    }
    q->posted = true;
    pending.push_back(q);
  }

  std::string mismatchMessage(const MpiRequest& q, long long sent) const {
    return fmt::format(
        "rank {}: size mismatch: a receive of {} bytes from peer {} with tag {} matched a send of {} bytes", rank,
        q.bytes, q.peer, q.tag, sent);
  }

  void failMismatch(MpiRequest& q, long long sent) {
    const std::string msg = mismatchMessage(q, sent);
    q.error = std::make_exception_ptr(InvalidArgument(msg, rank));
    if (deferred_abort.empty()) deferred_abort = msg;
  }

  // Hands to MPI every queued receive whose message has arrived, in posting order per (peer, tag).
  void matchQueue(std::deque<std::shared_ptr<MpiRequest>>& dq) {
    while (!dq.empty()) {
      MpiRequest& q = *dq.front();
      int flag = 0;
      MPI_Message msg = MPI_MESSAGE_NULL;
      MPI_Status st;
      check(MPI_Improbe(q.peer, q.tag, comm, &flag, &msg, &st), "MPI_Improbe");
      if (!flag) return;
      MPI_Count sent = MPI_UNDEFINED;
      check(MPI_Get_elements_x(&st, MPI_BYTE, &sent), "MPI_Get_elements_x");
      if (sent == MPI_UNDEFINED || sent > static_cast<MPI_Count>(q.bytes)) {
        // Never receive it: OpenMPI would write the excess past the end of the buffer. The message stays
        // matched and unreceived; the communicator is about to be aborted.
        q.done = true;
        failMismatch(q, static_cast<long long>(sent));
        dq.pop_front();
        continue;
      }
      // A smaller message is received (safely) and reported by finish().
      const auto [count, type] = layout(q);
      const int rc = MPI_Imrecv(q.recv_buf, count, type, &msg, &q.req);
      if (rc != MPI_SUCCESS) {
        if (q.type != MPI_DATATYPE_NULL) MPI_Type_free(&q.type);
        fail(rc, "MPI_Imrecv");
      }
      q.posted = true;
      pending.push_back(std::move(dq.front()));
      dq.pop_front();
    }
  }

  void matchAll() {
    for (auto it = unmatched.begin(); it != unmatched.end();) {
      matchQueue(it->second);
      it = it->second.empty() ? unmatched.erase(it) : std::next(it);
    }
  }

  // Records the outcome of a request MPI reported complete with error code `rc` and status `st`.
  void finish(MpiRequest& q, const MPI_Status& st, int rc) {
    q.done = true;
    ++done_in_pending;
    if (q.req != MPI_REQUEST_NULL) MPI_Request_free(&q.req);  // completed with an error: MPI may keep it
    if (!q.is_send && rc == MPI_SUCCESS) {
      MPI_Count got = MPI_UNDEFINED;
      if (MPI_Get_elements_x(&st, q.type != MPI_DATATYPE_NULL ? q.type : MPI_BYTE, &got) != MPI_SUCCESS)
        got = MPI_UNDEFINED;
      if (got != static_cast<MPI_Count>(q.bytes)) failMismatch(q, static_cast<long long>(got));
    } else if (rc != MPI_SUCCESS) {
      q.error = std::make_exception_ptr(
          TransportError(fmt::format("rank {}: {} failed: {}", rank, describe(q), mpiErrorString(rc)), rank));
    }
    if (q.type != MPI_DATATYPE_NULL) MPI_Type_free(&q.type);
  }

  void compact() {
    if (done_in_pending == 0) return;
    std::erase_if(pending, [](const std::shared_ptr<MpiRequest>& q) { return q->done; });
    done_in_pending = 0;
  }

  void flushDeferredAbort() {
    if (deferred_abort.empty()) return;
    std::string msg = std::move(deferred_abort);
    deferred_abort.clear();
    abortLocal(msg);
  }

  // One MPI_Test on a posted `q`; true once it is complete (successfully or not).
  bool testOne(MpiRequest& q) {
    if (q.done) return true;
    if (!q.posted) return false;
    int flag = 0;
    MPI_Status st;
    const int rc = MPI_Test(&q.req, &flag, &st);
    if (rc == MPI_SUCCESS && !flag) return false;
    finish(q, st, rc);  // an error code means the request completed with that error
    if (done_in_pending > 64 && 2 * done_in_pending > pending.size()) compact();
    return true;
  }

  // Matches queued receives, then one MPI_Testsome over every posted request. Drives MPI's progress.
  void testAll() {
    matchAll();
    compact();
    if (!pending.empty()) {
      const size_t n = pending.size();
      handles.resize(n);
      indices.resize(n);
      statuses.resize(n);
      for (size_t i = 0; i < n; ++i) handles[i] = pending[i]->req;
      int outcount = 0;
      const int rc = MPI_Testsome(static_cast<int>(n), handles.data(), &outcount, indices.data(), statuses.data());
      if (rc != MPI_SUCCESS && errorClass(rc) != MPI_ERR_IN_STATUS) fail(rc, "MPI_Testsome");
      if (outcount == MPI_UNDEFINED) outcount = 0;
      for (int k = 0; k < outcount; ++k) {
        const auto i = static_cast<size_t>(indices[static_cast<size_t>(k)]);
        MpiRequest& q = *pending[i];
        q.req = handles[i];
        const MPI_Status& st = statuses[static_cast<size_t>(k)];
        finish(q, st, rc == MPI_SUCCESS ? MPI_SUCCESS : st.MPI_ERROR);
      }
      compact();
    }
    flushDeferredAbort();
  }

  // pollAbort() at most every kAbortPollInterval: a wildcard MPI_Improbe runs MPI's progress engine once
  // more, and doing it on every spin tripled the small-message round trip over vader (0.7 -> 4 us).
  void pollAbortSometimes(Clock::time_point now) {
    if (now - last_abort_poll >= kAbortPollInterval) pollAbort();
  }

  // Receives an abort notice if one has arrived; never throws for the notice itself.
  void pollAbort() {
    if (aborted) return;
    last_abort_poll = Clock::now();
    int flag = 0;
    MPI_Message msg = MPI_MESSAGE_NULL;
    MPI_Status st;
    check(MPI_Improbe(MPI_ANY_SOURCE, kAbortTag, ctrl, &flag, &msg, &st), "MPI_Improbe");
    if (!flag) return;
    int n = 0;
    MPI_Get_count(&st, MPI_CHAR, &n);
    std::string text(static_cast<size_t>(std::max(n, 0)), '\0');
    check(MPI_Mrecv(text.data(), n, MPI_CHAR, &msg, MPI_STATUS_IGNORE), "MPI_Mrecv");
    enterAborted(std::move(text), st.MPI_SOURCE);
  }

  void abortLocal(const std::string& reason) {
    if (aborted) return;
    std::string r = reason.size() > kMaxReasonChars ? reason.substr(0, kMaxReasonChars) + "..." : reason;
    notice = fmt::format("rank {} aborted: {}", rank, r);
    for (int p = 0; p < size; ++p) {
      if (p == rank) continue;
      MPI_Request req = MPI_REQUEST_NULL;
      // A failing send (a dead peer) must not stop the notice to the others.
      if (MPI_Isend(notice.data(), static_cast<int>(notice.size()), MPI_CHAR, p, kAbortTag, ctrl, &req) == MPI_SUCCESS)
        notice_reqs.push_back(req);
    }
    enterAborted(notice, rank);
  }

  void enterAborted(std::string message, int origin) {
    aborted = true;
    abort_message = std::move(message);
    abort_origin = origin;
    dropUnmatched();
    // The caller unwinds and frees buffers next: let receives MPI is already writing into finish first.
    drain(kCleanupGrace, /*sends_too=*/false);
  }

  // Receives MPI has not seen yet are simply forgotten: their buffers were never handed out.
  void dropUnmatched() {
    for (auto& [key, dq] : unmatched)
      for (auto& q : dq) q->done = true;
    unmatched.clear();
  }

  // Tests posted requests until none (or, unless sends_too, no receive) is left, or `grace` passes.
  // Errors are swallowed: this runs on paths that already report one.
  bool drain(std::chrono::milliseconds grace, bool sends_too) {
    const auto until = Clock::now() + grace;
    for (;;) {
      bool left = false;
      try {
        testAll();
        for (auto& q : pending)
          if (!q->done && (sends_too || !q->is_send)) left = true;
        if (sends_too) {
          int flag = 0;
          if (!notice_reqs.empty() &&
              MPI_Testall(static_cast<int>(notice_reqs.size()), notice_reqs.data(), &flag, MPI_STATUSES_IGNORE) ==
                  MPI_SUCCESS &&
              flag)
            notice_reqs.clear();
          if (!notice_reqs.empty()) left = true;
          for (auto& s : stuck) {
            if (s == MPI_REQUEST_NULL) continue;
            int done = 0;
            if (MPI_Test(&s, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || !done) left = true;
          }
        }
      } catch (const std::exception&) {
        return false;
      }
      if (!left) return true;
      if (Clock::now() >= until) return false;
      sched_yield();
    }
  }
};

MpiEnvironment::MpiEnvironment(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (mpiFinalized()) throw TransportError("MpiEnvironment: MPI has already been finalized");
  if (!initialized) {
    const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &thread_level_);
    if (rc != MPI_SUCCESS) throw TransportError("MpiEnvironment: MPI_Init_thread failed: " + mpiErrorString(rc));
    owns_ = true;
  } else {
    MPI_Query_thread(&thread_level_);
  }
  if (thread_level_ < MPI_THREAD_FUNNELED) {
    if (owns_) MPI_Finalize();
    throw TransportError(
        fmt::format("MpiEnvironment: MPI provides thread level {}, MPI_THREAD_FUNNELED is required", thread_level_));
  }
}

MpiEnvironment::~MpiEnvironment() {
  if (owns_ && !mpiFinalized()) MPI_Finalize();
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm) : impl_(std::make_unique<Impl>()) {
  Impl& d = *impl_;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized || mpiFinalized())
    throw TransportError("MpiCommunicator: MPI is not initialized (create an MpiEnvironment first) or is finalized");
  if (comm == MPI_COMM_NULL) throw InvalidArgument("MpiCommunicator: the communicator is MPI_COMM_NULL");
  int inter = 0;
  if (MPI_Comm_test_inter(comm, &inter) == MPI_SUCCESS && inter)
    throw InvalidArgument("MpiCommunicator: intercommunicators are not supported");
  int rc = MPI_Comm_dup(comm, &d.comm);
  if (rc != MPI_SUCCESS) throw TransportError("MpiCommunicator: MPI_Comm_dup failed: " + mpiErrorString(rc));
  try {
    d.check(MPI_Comm_set_errhandler(d.comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    d.check(MPI_Comm_rank(d.comm, &d.rank), "MPI_Comm_rank");
    d.check(MPI_Comm_size(d.comm, &d.size), "MPI_Comm_size");
    MPI_Comm_set_name(d.comm, const_cast<char*>("flashring"));
    d.check(MPI_Comm_dup(d.comm, &d.ctrl), "MPI_Comm_dup");
    d.check(MPI_Comm_set_errhandler(d.ctrl, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    // The node layout (comm.h: nodeIds): each rank names its node by the lowest rank sharing its memory.
    MPI_Comm shm = MPI_COMM_NULL;
    d.check(MPI_Comm_split_type(d.comm, MPI_COMM_TYPE_SHARED, d.rank, MPI_INFO_NULL, &shm), "MPI_Comm_split_type");
    int leader = d.rank;
    const int rc_min = MPI_Allreduce(&d.rank, &leader, 1, MPI_INT, MPI_MIN, shm);
    MPI_Comm_free(&shm);
    d.check(rc_min, "MPI_Allreduce");
    std::vector<int> leaders(static_cast<size_t>(d.size));
    d.check(MPI_Allgather(&leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, d.comm), "MPI_Allgather");
    node_ids_ = normalizeNodeIds(leaders);
    // Emulated multi-node topologies (bench/netem --topology nodes:RxK) put every "node" on one host: their
    // launcher names the layout instead.
    if (const char* env = std::getenv("FLASHRING_RANKS_PER_NODE"); env != nullptr && *env != '\0') {
      char* end = nullptr;
      const long k = std::strtol(env, &end, 10);
      if (end == env || *end != '\0' || k < 1 || d.size % k != 0)
        throw InvalidArgument(
            fmt::format("FLASHRING_RANKS_PER_NODE='{}' does not divide the {} MPI ranks", env, d.size), d.rank);
      setRanksPerNode(static_cast<int>(k));
    }
  } catch (...) {
    if (d.ctrl != MPI_COMM_NULL) MPI_Comm_free(&d.ctrl);
    MPI_Comm_free(&d.comm);
    throw;
  }
}

MpiCommunicator::~MpiCommunicator() {
  if (!impl_) return;
  Impl& d = *impl_;
  if (mpiFinalized()) return;  // MPI took its objects with it
  try {
    d.pollAbort();  // an abort notice that has arrived decides below whether the duplicate is kept
  } catch (const std::exception&) {
  }
  d.compact();
  bool unfinished = !d.unmatched.empty() || !d.pending.empty() || !d.stuck.empty();
  d.dropUnmatched();
  d.drain(unfinished || !d.notice_reqs.empty() ? kCleanupGrace : std::chrono::milliseconds(0), /*sends_too=*/true);
  for (auto& q : d.pending) {
    if (q->done) continue;
    if (q->req != MPI_REQUEST_NULL) MPI_Request_free(&q->req);  // completes (or not) in the background
    if (q->type != MPI_DATATYPE_NULL) MPI_Type_free(&q->type);  // MPI keeps it until the operation ends
    q->done = true;
  }
  for (auto& r : d.notice_reqs)
    if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
  // Abandoned non-blocking collectives are left as they are: freeing an active one is not allowed.
  // A duplicate that was aborted or still had work posted is deliberately NOT freed: messages addressed
  // to it may still be in flight (abort notices, sends nobody received), and OpenMPI hands a freed
  // context id to the next new communicator, whose receives would then match those stale messages.
  // Kept, it costs one context id and a little memory until MPI_Finalize.
  // The control duplicate is never freed (see the top of this file).
  if (d.aborted || unfinished) return;
  if (d.comm != MPI_COMM_NULL) MPI_Comm_free(&d.comm);
}

int MpiCommunicator::rank() const { return impl_->rank; }
int MpiCommunicator::size() const { return impl_->size; }
MPI_Comm MpiCommunicator::handle() const { return impl_->comm; }

Request MpiCommunicator::isend(const void* buf, size_t bytes, int peer, Tag tag) {
  checkArgs(buf, bytes, peer, tag, "isend");
  Impl& d = *impl_;
  d.throwIfAborted();
  auto q = std::make_shared<MpiRequest>();
  q->owner = &d;
  q->send_buf = buf;
  q->bytes = bytes;
  q->peer = peer;
  q->tag = tag;
  q->is_send = true;
  d.postSend(q);
  countSent(bytes);
  return Request(std::move(q));
}

Request MpiCommunicator::irecv(void* buf, size_t bytes, int peer, Tag tag) {
  checkArgs(buf, bytes, peer, tag, "irecv");
  Impl& d = *impl_;
  d.throwIfAborted();
  auto q = std::make_shared<MpiRequest>();
  q->owner = &d;
  q->recv_buf = buf;
  q->bytes = bytes;
  q->peer = peer;
  q->tag = tag;
  q->is_send = false;
  d.unmatched[{peer, tag}].push_back(q);
  return Request(std::move(q));
}

bool MpiCommunicator::test(Request& r) {
  Impl& d = *impl_;
  MpiRequest* q = d.own(r, "test");
  if (q == nullptr) return true;
  if (q->error) std::rethrow_exception(q->error);
  d.pollAbortSometimes(Clock::now());
  d.throwIfAborted();
  if (!q->posted) d.matchAll();
  const bool done = d.testOne(*q);
  d.flushDeferredAbort();
  if (q->error) std::rethrow_exception(q->error);
  d.throwIfAborted();
  return done;
}

void MpiCommunicator::wait(Request& r, Deadline deadline) {
  Impl& d = *impl_;
  MpiRequest* q = d.own(r, "wait");
  if (q == nullptr) return;
  if (q->error) std::rethrow_exception(q->error);
  const auto start = Clock::now();
  const bool interruptible = interruptCheck() != nullptr;
  auto next_interrupt_check = start + kInterruptPeriod;
  for (int spins = 0;; ++spins) {
    const auto now = Clock::now();
    if (interruptible && now >= next_interrupt_check) {
      next_interrupt_check = now + kInterruptPeriod;
      detail::pollInterrupt(*this);
    }
    d.pollAbortSometimes(now);
    d.throwIfAborted();
    // Every queue, not only q's: a peer may be waiting for one of our other receives before it sends q.
    d.matchAll();
    const bool done = d.testOne(*q);
    d.flushDeferredAbort();
    if (q->error) std::rethrow_exception(q->error);
    d.throwIfAborted();
    if (done) return;
    if (now >= deadline)
      throw TimeoutError(
          fmt::format("rank {}: wait timed out after {} ms: {} has not completed{}", d.rank, msSince(start),
                      describe(*q), q->is_send || q->posted ? "" : " (no message has arrived)"),
          d.rank);
    if (spins >= kSpinsBeforeYield) sched_yield();
  }
}

void MpiCommunicator::progress() {
  Impl& d = *impl_;
  if (d.aborted) return;
  d.pollAbortSometimes(Clock::now());
  if (d.aborted || (d.pending.empty() && d.unmatched.empty())) return;  // the probe drove MPI's progress once
  d.testAll();
}

void MpiCommunicator::abort(const std::string& reason) { impl_->abortLocal(reason); }

bool MpiCommunicator::aborted() const {
  try {
    impl_->pollAbort();
  } catch (const std::exception&) {
    // A failing probe is reported by the next wait; aborted() only answers the question.
  }
  return impl_->aborted;
}

void MpiCommunicator::nativeAllreduceSum(float* data, size_t count, Deadline deadline, bool blocking) {
  Impl& d = *impl_;
  if (count > 0 && data == nullptr)
    throw InvalidArgument(fmt::format("nativeAllreduceSum: null buffer for {} floats", count), d.rank);
  d.pollAbort();
  d.throwIfAborted();
  const auto piece = static_cast<size_t>(mpi_detail::maxCount());
  const auto start = Clock::now();
  for (size_t off = 0; off < count; off += piece) {
    const size_t n = std::min(piece, count - off);
    if (blocking) {
      d.check(MPI_Allreduce(MPI_IN_PLACE, data + off, static_cast<int>(n), MPI_FLOAT, MPI_SUM, d.comm),
              "MPI_Allreduce");
      continue;
    }
    MPI_Request req = MPI_REQUEST_NULL;
    d.check(MPI_Iallreduce(MPI_IN_PLACE, data + off, static_cast<int>(n), MPI_FLOAT, MPI_SUM, d.comm, &req),
            "MPI_Iallreduce");
    for (int spins = 0;; ++spins) {
      int flag = 0;
      d.check(MPI_Test(&req, &flag, MPI_STATUS_IGNORE), "MPI_Test(MPI_Iallreduce)");
      if (flag) break;
      const auto now = Clock::now();
      d.pollAbortSometimes(now);
      if (d.aborted) {
        d.stuck.push_back(req);
        d.throwIfAborted();
      }
      if (now >= deadline) {
        d.stuck.push_back(req);
        throw TimeoutError(fmt::format("rank {}: native all-reduce of {} floats (piece at {} of {} floats) timed out "
                                       "after {} ms",
                                       d.rank, count, off, n, msSince(start)),
                           d.rank);
      }
      if (spins >= kSpinsBeforeYield) sched_yield();
    }
  }
}

}  // namespace flashring
