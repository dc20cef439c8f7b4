// Workspace (workspace.h): a stack of frames over a list of blocks per memory kind.
//
// Each arena hands memory out by bumping an offset in its current block; a frame records (block, offset,
// bytes in use) of every arena when it opens and restores them when it ends. An allocation that does not fit
// the current block moves to the next one (the blocks after the current one are always free), replacing it
// by a bigger one if it is too small, so nothing handed out ever moves. At the end of the outermost frame
// several blocks are merged into one of the peak size, which every later call of the same sizes fits.
#include "flashring/workspace.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>

#include "flashring/error.h"

#if defined(__SANITIZE_ADDRESS__)
#define FLASHRING_WORKSPACE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FLASHRING_WORKSPACE_ASAN 1
#endif
#endif
#ifdef FLASHRING_WORKSPACE_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace flashring {
namespace {

// Smallest block: small calls (decode-sized all-reduces) share one block instead of one each.
constexpr size_t kMinBlock = size_t{64} << 10;
#ifdef FLASHRING_WORKSPACE_ASAN
// A poisoned gap after every buffer, so that an overrun into the next buffer is reported.
constexpr size_t kRedzone = Workspace::kAlignment;
#else
constexpr size_t kRedzone = 0;
#endif

// What get<T>(0) points at: never written, never read.
alignas(Workspace::kAlignment) std::byte g_empty[Workspace::kAlignment];

void poison(MemoryKind kind, const std::byte* p, size_t n) {
#ifdef FLASHRING_WORKSPACE_ASAN
  if (kind == MemoryKind::Host && n > 0) ASAN_POISON_MEMORY_REGION(p, n);
#else
  (void)kind, (void)p, (void)n;
#endif
}

void unpoison(MemoryKind kind, std::byte* p, size_t n) {
#ifdef FLASHRING_WORKSPACE_ASAN
  if (kind == MemoryKind::Host && n > 0) {
    ASAN_UNPOISON_MEMORY_REGION(p, n);
    std::memset(p, 0xFF, n);  // NaN as floats: a read of unwritten scratch fails the tests
  }
#else
  (void)kind, (void)p, (void)n;
#endif
}

class HostAllocator final : public WorkspaceAllocator {
 public:
  MemoryKind kind() const override { return MemoryKind::Host; }
  void* allocate(size_t bytes) override { return ::operator new (bytes, std::align_val_t{Workspace::kAlignment}); }
  void deallocate(void* p, size_t) noexcept override { ::operator delete (p, std::align_val_t{Workspace::kAlignment}); }
};

[[noreturn]] void fatal(const char* what) {
  std::fputs(what, stderr);
  std::fputc('\n', stderr);
  std::abort();
}

// Never destroyed: a communicator with static storage duration may free its workspace after this file's
// statics are gone.
WorkspaceAllocator* hostAllocator() {
  static HostAllocator* const a = new HostAllocator();
  return a;
}

}  // namespace

Workspace::Workspace() { arena(MemoryKind::Host).allocator = hostAllocator(); }

Workspace::~Workspace() {
  if (depth_ != 0) fatal("flashring: a Workspace was destroyed while one of its frames is open");
  for (Arena& a : arenas_) freeBlocks(a, 0);
}

void Workspace::claim() {
  const std::thread::id me = std::this_thread::get_id();
  std::thread::id owner = owner_.load(std::memory_order_acquire);
  if (owner == me) return;
  owner = std::thread::id{};
  if (owner_.compare_exchange_strong(owner, me, std::memory_order_acquire)) return;
  throw InvalidArgument(
      "workspace: in use by another thread (a Workspace belongs to one rank or thread at a time: give each rank its "
      "own, e.g. Communicator::workspace())");
}

void Workspace::setAllocator(std::unique_ptr<WorkspaceAllocator> allocator) {
  if (allocator == nullptr) throw InvalidArgument("workspace: setAllocator(nullptr)");
  claim();
  if (depth_ != 0) throw InvalidArgument("workspace: setAllocator() while a frame is open");
  Arena& a = arena(allocator->kind());
  freeBlocks(a, 0);
  a.peak = 0;
  a.owned = std::move(allocator);
  a.allocator = a.owned.get();
  owner_.store(std::thread::id{}, std::memory_order_release);
}

bool Workspace::hasAllocator(MemoryKind kind) const { return arena(kind).allocator != nullptr; }

void Workspace::release() {
  claim();
  if (depth_ != 0) throw InvalidArgument(fmt::format("workspace: release() while {} frame(s) are open", depth_));
  for (Arena& a : arenas_) {
    freeBlocks(a, 0);
    a.peak = 0;
  }
  owner_.store(std::thread::id{}, std::memory_order_release);
}

size_t Workspace::bytesReserved(MemoryKind kind) const {
  size_t n = 0;
  for (const Block& b : arena(kind).blocks) n += b.size;
  return n;
}

size_t Workspace::bytesReserved() const {
  size_t n = 0;
  for (int k = 0; k < kMemoryKinds; ++k) n += bytesReserved(static_cast<MemoryKind>(k));
  return n;
}

size_t Workspace::bytesInUse() const {
  size_t n = 0;
  for (const Arena& a : arenas_) n += a.in_use;
  return n;
}

size_t Workspace::peakBytes() const {
  size_t n = 0;
  for (const Arena& a : arenas_) n += a.peak;
  return n;
}

void Workspace::allocateBlock(Arena& a, size_t bytes) {
  const size_t size = std::max(bytes, kMinBlock);
  Block b;
  b.data = static_cast<std::byte*>(a.allocator->allocate(size));
  b.size = size;
  ++allocations_;
  poison(a.allocator->kind(), b.data, b.size);
  a.blocks.push_back(b);
}

void Workspace::freeBlocks(Arena& a, size_t from) noexcept {
  for (size_t i = from; i < a.blocks.size(); ++i) {
    Block& b = a.blocks[i];
#ifdef FLASHRING_WORKSPACE_ASAN
    if (a.allocator->kind() == MemoryKind::Host) ASAN_UNPOISON_MEMORY_REGION(b.data, b.size);
#endif
    a.allocator->deallocate(b.data, b.size);
  }
  if (from < a.blocks.size()) a.blocks.resize(from);
  if (a.blocks.empty()) a.block = a.offset = 0;
}

void Workspace::merge(Arena& a) {
  // The peak, or, when calls outgrew the one block they used to fit (a KV cache growing by a token per decode
  // step), twice that block: growing by small steps then allocates O(log) times, not on every call.
  const size_t size = std::max(a.peak, 2 * a.base);
  freeBlocks(a, 0);
  a.block = a.offset = 0;
  if (size > 0) allocateBlock(a, size);
}

Workspace::Frame::Frame(Workspace& ws) : ws_(&ws), depth_(0), exceptions_(std::uncaught_exceptions()) {
  ws.claim();
  depth_ = ++ws.depth_;
  for (int k = 0; k < kMemoryKinds; ++k) {
    Arena& a = ws.arenas_[static_cast<size_t>(k)];
    marks_[static_cast<size_t>(k)] = {a.block, a.offset, a.in_use};
    if (depth_ == 1) a.base = a.blocks.size() == 1 ? a.blocks[0].size : 0;
  }
}

Workspace::Frame::~Frame() {
  Workspace& ws = *ws_;
  if (ws.depth_ != depth_) fatal("flashring: Workspace frames ended out of order");
  for (int k = 0; k < kMemoryKinds; ++k) {
    Arena& a = ws.arenas_[static_cast<size_t>(k)];
    const Mark& m = marks_[static_cast<size_t>(k)];
    // Poison what this frame handed out (from the mark to the current position), but only on a normal end: a frame
    // ended by an exception may leave messages posted that a peer's transport still reads or writes until the
    // abort reaches it (the memory stays live for exactly that reason, see the header), so it stays unpoisoned.
    if (!a.blocks.empty() && a.allocator && std::uncaught_exceptions() <= exceptions_) {
      const MemoryKind kind = a.allocator->kind();
      for (size_t b = m.block; b <= a.block && b < a.blocks.size(); ++b) {
        const size_t from = b == m.block ? m.offset : 0, to = b == a.block ? a.offset : a.blocks[b].size;
        if (to > from) poison(kind, a.blocks[b].data + from, to - from);
      }
    }
    a.block = m.block;
    a.offset = m.offset;
    a.in_use = m.in_use;
  }
  if (--ws.depth_ > 0) return;
  // The outermost frame. Merging frees blocks, which only a normal end may do (see the header).
  if (std::uncaught_exceptions() <= exceptions_) {
    for (Arena& a : ws.arenas_) {
      if (a.blocks.size() <= 1) continue;
      try {
        ws.merge(a);
      } catch (...) {  // out of memory: the blocks are gone and the next call allocates again
      }
    }
  }
  ws.owner_.store(std::thread::id{}, std::memory_order_release);
}

void* Workspace::Frame::take(size_t bytes, MemoryKind kind) {
  Workspace& ws = *ws_;
  if (ws.depth_ != depth_)
    throw InvalidArgument(
        fmt::format("workspace: get() from frame {} while frame {} is open (only the innermost "
                    "frame hands out memory)",
                    depth_, ws.depth_));
  if (bytes == 0) return g_empty;
  Arena& a = ws.arena(kind);
  if (!a.allocator)
    throw InvalidArgument(
        fmt::format("workspace: no allocator for {} memory (Workspace::setAllocator)", memoryKindName(kind)));
  const size_t need = footprint(bytes);
  ws.makeRoom(a, need);
  std::byte* p = a.blocks[a.block].data + a.offset;
  a.offset += need;
  a.in_use += need;
  a.peak = std::max(a.peak, a.in_use);
  unpoison(kind, p, bytes);
  return p;
}

void Workspace::Frame::reserve(size_t bytes, MemoryKind kind) {
  Workspace& ws = *ws_;
  if (ws.depth_ != depth_)
    throw InvalidArgument(fmt::format("workspace: reserve() on frame {} while frame {} is open", depth_, ws.depth_));
  Arena& a = ws.arena(kind);
  if (bytes == 0 || !a.allocator) return;
  ws.makeRoom(a, bytes);
}

size_t Workspace::footprint(size_t bytes) {
  if (bytes > std::numeric_limits<size_t>::max() / 2) Frame::tooLarge(bytes, 1);
  return bytes == 0 ? 0 : (bytes + kAlignment - 1) / kAlignment * kAlignment + kRedzone;
}

void Workspace::makeRoom(Arena& a, size_t need) {
  if (!a.blocks.empty() && a.offset + need <= a.blocks[a.block].size) return;
  const size_t next = a.blocks.empty() ? 0 : a.block + 1;
  if (next >= a.blocks.size() || a.blocks[next].size < need) {
    freeBlocks(a, next);  // free (they follow the current block): replaced by a bigger one
    allocateBlock(a, need);
  }
  a.block = next;
  a.offset = 0;
}

void Workspace::Frame::tooLarge(size_t count, size_t size) {
  throw InvalidArgument(fmt::format("workspace: {} elements of {} bytes do not fit in memory", count, size));
}

}  // namespace flashring
