// NcclCommunicator (nccl/nccl_comm.h): deferred posting into NCCL groups, non-blocking communicator, deadlines.
#include "flashring/nccl/nccl_comm.h"

#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nccl.h>

#include <cstring>
#include <thread>

#include "comm/tags.h"
#include "cuda/check.h"
#include "flashring/error.h"

namespace flashring {

namespace {

[[noreturn]] void throwNccl(ncclResult_t r, const char* call, int rank) {
  throw DeviceError(
      fmt::format("NCCL: {} failed on rank {}: {} ({})", call, rank, ncclGetErrorString(r), static_cast<int>(r)), rank);
}

#define FLASHRING_NCCL_CHECK(call, rank)                                         \
  do {                                                                           \
    const ncclResult_t flashring_nccl_r_ = (call);                               \
    if (flashring_nccl_r_ != ncclSuccess && flashring_nccl_r_ != ncclInProgress) \
      throwNccl(flashring_nccl_r_, #call, rank);                                 \
  } while (0)

// An event recorded after one issued group, owned by the requests of that group (and the communicator's `last`).
struct Event {
  cudaEvent_t e = nullptr;
  Event() { FLASHRING_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming)); }
  ~Event() { (void)cudaEventDestroy(e); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};

struct NcclRequest : detail::RequestState {
  std::shared_ptr<Event> event;  // null until its group is issued
};

bool isDevicePointer(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

}  // namespace

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  std::shared_ptr<Event> last;
  std::vector<std::shared_ptr<NcclRequest>> pending;
  bool aborted = false;
  std::string reason;

  // Waits for the non-blocking communicator to leave ncclInProgress (init, group end), with the deadline.
  void settle(int rank, Deadline deadline, const char* what) {
    for (;;) {
      ncclResult_t st = ncclSuccess;
      FLASHRING_NCCL_CHECK(ncclCommGetAsyncError(comm, &st), rank);
      if (st == ncclSuccess) return;
      if (st != ncclInProgress) throwNccl(st, what, rank);
      if (Clock::now() > deadline)
        throw TimeoutError(fmt::format("NCCL: {} did not complete on rank {} before the deadline", what, rank), rank);
      std::this_thread::yield();
    }
  }
};

NcclUniqueIdBytes NcclCommunicator::newUniqueId() {
  ncclUniqueId id;
  FLASHRING_NCCL_CHECK(ncclGetUniqueId(&id), -1);
  NcclUniqueIdBytes out{};
  static_assert(sizeof(id.internal) == std::tuple_size_v<NcclUniqueIdBytes>);
  std::memcpy(out.data(), id.internal, out.size());
  return out;
}

NcclCommunicator::NcclCommunicator(const NcclUniqueIdBytes& id, int rank, int size, int device,
                                   std::chrono::milliseconds timeout)
    : rank_(rank), size_(size), device_(device), impl_(std::make_unique<Impl>()) {
  if (size < 1 || rank < 0 || rank >= size) {
    throw InvalidArgument(fmt::format("NcclCommunicator: rank {} of size {}", rank, size));
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    (void)cudaGetLastError();
    throw DeviceError(fmt::format("NcclCommunicator: no usable CUDA device on rank {}", rank), rank);
  }
  if (device < 0 || device >= devices) {
    throw InvalidArgument(
        fmt::format("NcclCommunicator: device {} on rank {}; this machine has {}", device, rank, devices));
  }
  FLASHRING_CUDA_CHECK(cudaSetDevice(device));
  FLASHRING_CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
  ncclUniqueId uid;
  std::memcpy(uid.internal, id.data(), id.size());
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every call returns at once; we poll with deadlines
  FLASHRING_NCCL_CHECK(ncclCommInitRankConfig(&impl_->comm, size, uid, rank, &config), rank);
  setTimeout(timeout);
  impl_->settle(rank, Clock::now() + timeout, "ncclCommInitRankConfig (waiting for every rank to join)");
}

NcclCommunicator::~NcclCommunicator() {
  if (impl_ == nullptr) return;
  if (impl_->comm != nullptr) {
    if (impl_->aborted) {
      (void)ncclCommAbort(impl_->comm);
    } else {
      (void)ncclCommFinalize(impl_->comm);
      (void)ncclCommDestroy(impl_->comm);
    }
  }
  impl_->last.reset();
  if (impl_->stream != nullptr) (void)cudaStreamDestroy(impl_->stream);
}

std::unique_ptr<NcclCommunicator> NcclCommunicator::bootstrap(Communicator& host, int device) {
  const Tag kIdTag = tags::make(tags::kBootstrap, 0);
  NcclUniqueIdBytes id{};
  if (host.rank() == 0) {
    id = newUniqueId();
    std::vector<Request> sends;
    for (int r = 1; r < host.size(); ++r) sends.push_back(host.isend(id.data(), id.size(), r, kIdTag));
    host.waitAll(sends, host.deadline());
  } else {
    Request r = host.irecv(id.data(), id.size(), 0, kIdTag);
    host.wait(r, host.deadline());
  }
  if (device < 0) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
      (void)cudaGetLastError();
      throw DeviceError(fmt::format("NcclCommunicator::bootstrap: no usable CUDA device on rank {}", host.rank()),
                        host.rank());
    }
    device = host.rank() % n;
  }
  return std::make_unique<NcclCommunicator>(id, host.rank(), host.size(), device, host.timeout());
}

void* NcclCommunicator::stream() const { return impl_->stream; }
void* NcclCommunicator::event() const { return impl_->last ? impl_->last->e : nullptr; }

Request NcclCommunicator::post(bool is_send, const void* send_buf, void* recv_buf, size_t bytes, int peer, Tag tag) {
  const char* op = is_send ? "isend" : "irecv";
  checkArgs(is_send ? send_buf : recv_buf, bytes, peer, tag, op);
  if (impl_->aborted) throw AbortedError(impl_->reason, rank_);
  if (bytes > 0 && !isDevicePointer(is_send ? send_buf : recv_buf)) {
    throw InvalidArgument(fmt::format("NcclCommunicator::{} on rank {}: the buffer is host memory; NCCL moves "
                                      "device memory only (use the thread or MPI transport for host buffers)",
                                      op, rank_),
                          rank_);
  }
  auto r = std::make_shared<NcclRequest>();
  r->send_buf = send_buf;
  r->recv_buf = recv_buf;
  r->bytes = bytes;
  r->peer = peer;
  r->tag = tag;
  r->is_send = is_send;
  impl_->pending.push_back(r);
  if (is_send) countSent(bytes);
  return Request(r);
}

Request NcclCommunicator::isend(const void* buf, size_t bytes, int peer, Tag tag) {
  return post(true, buf, nullptr, bytes, peer, tag);
}

Request NcclCommunicator::irecv(void* buf, size_t bytes, int peer, Tag tag) {
  return post(false, nullptr, buf, bytes, peer, tag);
}

// Issues every pending operation as one group, then records one event after it.
void NcclCommunicator::flush() {
  if (impl_->pending.empty()) return;
  FLASHRING_NCCL_CHECK(ncclGroupStart(), rank_);
  for (auto& r : impl_->pending) {
    if (r->bytes == 0) continue;  // nothing to move; completes with the group
    if (r->is_send) {
      FLASHRING_NCCL_CHECK(ncclSend(r->send_buf, r->bytes, ncclUint8, r->peer, impl_->comm, impl_->stream), rank_);
    } else {
      FLASHRING_NCCL_CHECK(ncclRecv(r->recv_buf, r->bytes, ncclUint8, r->peer, impl_->comm, impl_->stream), rank_);
    }
  }
  FLASHRING_NCCL_CHECK(ncclGroupEnd(), rank_);
  impl_->settle(rank_, deadline(), "ncclGroupEnd");
  auto e = std::make_shared<Event>();
  FLASHRING_CUDA_CHECK(cudaEventRecord(e->e, impl_->stream));
  impl_->last = e;
  for (auto& r : impl_->pending) r->event = e;
  impl_->pending.clear();
}

bool NcclCommunicator::test(Request& req) {
  if (!req.valid() || req.state()->done) return true;
  if (impl_->aborted) throw AbortedError(impl_->reason, rank_);
  auto* r = static_cast<NcclRequest*>(req.state());
  if (r->event == nullptr) flush();
  ncclResult_t st = ncclSuccess;
  FLASHRING_NCCL_CHECK(ncclCommGetAsyncError(impl_->comm, &st), rank_);
  if (st != ncclSuccess && st != ncclInProgress) {
    abort(fmt::format("NCCL error on rank {}: {}", rank_, ncclGetErrorString(st)));
    throw TransportError(impl_->reason, rank_);
  }
  const cudaError_t q = cudaEventQuery(r->event->e);
  if (q == cudaSuccess) {
    r->done = true;
    return true;
  }
  if (q != cudaErrorNotReady) cuda::detail::throwCuda(q, "cudaEventQuery", "NcclCommunicator::test");
  return false;
}

void NcclCommunicator::wait(Request& req, Deadline deadline) {
  auto next_check = Clock::now() + kInterruptPeriod;
  while (!test(req)) {
    const auto now = Clock::now();
    if (now > deadline) {
      const std::string what = fmt::format(
          "NcclCommunicator: rank {} timed out waiting for a {} of {} bytes {} rank {} (tag {})", rank_,
          req.isSend() ? "send" : "receive", req.bytes(), req.isSend() ? "to" : "from", req.peer(), req.tag());
      abort(what);
      throw TimeoutError(what, rank_);
    }
    if (now > next_check) {
      next_check = now + kInterruptPeriod;
      if (InterruptCheck check = interruptCheck(); check != nullptr && check()) {
        abort(fmt::format("interrupted on rank {}", rank_));
        throw InterruptedError(fmt::format("NcclCommunicator: interrupted on rank {}", rank_), rank_);
      }
    }
    std::this_thread::yield();
  }
}

void NcclCommunicator::abort(const std::string& reason) {
  if (impl_->aborted) return;
  impl_->aborted = true;
  impl_->reason = reason;
  if (impl_->comm != nullptr) (void)ncclCommAbort(impl_->comm);
  impl_->comm = nullptr;
}

bool NcclCommunicator::aborted() const { return impl_->aborted; }

void NcclCommunicator::nativeAllreduceSum(float* data, size_t count, Deadline deadline, bool /*blocking*/) {
  if (impl_->aborted) throw AbortedError(impl_->reason, rank_);
  if (count == 0) return;
  if (!isDevicePointer(data)) {
    throw InvalidArgument(fmt::format("NcclCommunicator::nativeAllreduceSum on rank {}: host memory", rank_), rank_);
  }
  flush();
  FLASHRING_NCCL_CHECK(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, impl_->comm, impl_->stream), rank_);
  impl_->settle(rank_, deadline, "ncclAllReduce");
  for (;;) {
    const cudaError_t q = cudaStreamQuery(impl_->stream);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) cuda::detail::throwCuda(q, "cudaStreamQuery", "nativeAllreduceSum");
    if (Clock::now() > deadline) {
      abort(fmt::format("NcclCommunicator: ncclAllReduce timed out on rank {}", rank_));
      throw TimeoutError(impl_->reason, rank_);
    }
    std::this_thread::yield();
  }
}

}  // namespace flashring
