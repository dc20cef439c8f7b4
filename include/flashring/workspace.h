// Workspace: the reusable scratch memory of the collectives, the attention schemes and the kernels.
//
// A collective or kernel needs temporary buffers whose sizes depend on the call (encoded messages, fp32
// accumulators, packed K/V tiles). Allocating them per call puts malloc and page faults on the hot path; a
// Workspace keeps them from one call to the next instead. Memory is handed out by a Frame, a scope on the
// workspace: frame.get<T>(n) returns n uninitialised T, 64-byte aligned, valid until the frame ends; then
// everything the frame handed out goes back to the workspace (not to the system). Frames nest, as calls do
// (an attention scheme's frame, and inside it the block kernel's): a frame's buffers lie above its parent's
// and only the innermost open frame hands out memory, so a nested user never clobbers its caller's buffers.
//
// Who owns one. Every entry point that needs scratch takes an optional Workspace* (AllreduceOptions,
// SpAttentionOptions, BlockAttentionOptions, spPassQAttention/spPassKVAttention). Null means the
// communicator's own (Communicator::workspace(), freed with the communicator) for collectives, and a
// workspace local to the call for the comm-less block kernel (its buffers are then allocated and freed on
// every call). Long-lived callers (the engine) pass one per rank.
//
// Invariants:
//  - Growing never moves memory already handed out: a frame that needs more than the workspace holds gets a
//    new block. When the outermost frame ends normally, a workspace holding several blocks of one memory kind
//    replaces them with one block of the peak size (at least twice the block it replaces, so that sizes
//    growing call by call allocate O(log) times), so a workspace reused by calls of the same sizes
//    allocates during the first call only and bytesReserved() is constant from then on.
//  - Memory goes back to the system only in release() (no frame open) and in the destructor. A frame that
//    ends by an exception returns its buffers to the workspace but frees nothing, so a transport that is
//    still writing into them until its communicator's abort() returns writes into live memory.
//  - One thread at a time: a workspace belongs to one rank (thread); it is not thread-safe. The outermost
//    frame claims it for the calling thread until it ends, and a frame opened meanwhile on another thread
//    throws InvalidArgument (two ranks handed one workspace fail instead of racing). Sequential use from
//    several threads is fine when something else orders it (a join, a mutex).
//  - Memory kinds: each MemoryKind has its own blocks and allocator. Host memory (aligned operator new) is
//    built in; another kind (CUDA device memory) needs setAllocator() first, and get() of a kind without an
//    allocator throws InvalidArgument naming it.
//  - Contents are unspecified (never zeroed): every byte must be written before it is read. Builds with
//    AddressSanitizer poison the host memory that is not handed out and fill what get() returns with 0xFF
//    bytes (NaN as floats), so an overrun or a read of unwritten scratch shows up in the sanitizer runs.
//  - get<T>(0) returns an empty span with a non-null pointer (zero-length memcpy/memset stay defined) that
//    must not be dereferenced.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <thread>
#include <type_traits>
#include <vector>

#include "flashring/tensor.h"

namespace flashring {

// Where one memory kind of a workspace comes from. allocate() returns at least `bytes` bytes aligned to
// Workspace::kAlignment, or throws (std::bad_alloc, DeviceError); deallocate() gets back the same size.
class WorkspaceAllocator {
 public:
  virtual ~WorkspaceAllocator() = default;
  virtual MemoryKind kind() const = 0;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* p, size_t bytes) noexcept = 0;
};

class Workspace {
 public:
  static constexpr size_t kAlignment = 64;  // of every buffer (a cache line; AVX-512 loads)
  static constexpr int kMemoryKinds = 2;    // MemoryKind::Host, MemoryKind::Cuda

  Workspace();  // host memory only; allocates nothing until a frame asks
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // Installs the allocator of allocator->kind(), freeing what the old one reserved. InvalidArgument while
  // a frame is open.
  void setAllocator(std::unique_ptr<WorkspaceAllocator> allocator);
  bool hasAllocator(MemoryKind kind) const;

  class Frame {
   public:
    // Opens a frame on `ws` (InvalidArgument if another thread has a frame open on it).
    explicit Frame(Workspace& ws);
    ~Frame();
    Frame(const Frame&) = delete;
    Frame& operator=(const Frame&) = delete;

    // `count` uninitialised T of memory `kind`, valid until this frame ends. InvalidArgument unless this is
    // the innermost open frame, or for a kind without an allocator, or if the size overflows.
    template <typename T>
    std::span<T> get(size_t count, MemoryKind kind = MemoryKind::Host) {
      static_assert(std::is_trivially_copyable_v<T> && std::is_trivially_destructible_v<T>,
                    "workspace buffers hold trivially copyable types only");
      static_assert(alignof(T) <= kAlignment);
      if (count > std::numeric_limits<size_t>::max() / sizeof(T)) tooLarge(count, sizeof(T));
      return {static_cast<T*>(take(count * sizeof(T), kind)), count};
    }
    // Makes the next get()s of this frame, up to `bytes` of footprint() in all, come from one block, allocating
    // it now if the current block lacks the room: a caller that knows its whole need (a kernel with a
    // short-lived workspace) then costs one allocation instead of a few.
    void reserve(size_t bytes, MemoryKind kind = MemoryKind::Host);
    Workspace& workspace() const { return *ws_; }

   private:
    void* take(size_t bytes, MemoryKind kind);
    [[noreturn]] static void tooLarge(size_t count, size_t size);
    friend class Workspace;
    struct Mark {
      size_t block = 0, offset = 0, in_use = 0;
    };
    Workspace* ws_;
    int depth_;       // 1 for the outermost frame
    int exceptions_;  // std::uncaught_exceptions() at construction: ending by unwinding frees nothing
    std::array<Mark, kMemoryKinds> marks_;
  };

  // Bytes held from the allocators (all kinds, or one), in use by open frames, and the most ever in use at
  // once since construction or release() (the size the blocks are merged into).
  size_t bytesReserved() const;
  size_t bytesReserved(MemoryKind kind) const;
  size_t bytesInUse() const;
  size_t peakBytes() const;
  // Calls to an allocator since construction: constant once a workspace has seen its largest call.
  uint64_t allocations() const { return allocations_; }
  // Open frames (0: none).
  int depth() const { return depth_; }
  // The bytes a get() of `bytes` bytes takes from its block: rounded up to kAlignment (plus a redzone in
  // AddressSanitizer builds); 0 for 0.
  static size_t footprint(size_t bytes);
  // Returns every block to its allocator. InvalidArgument while a frame is open.
  void release();

 private:
  struct Block {
    std::byte* data = nullptr;
    size_t size = 0;
  };
  struct Arena {
    WorkspaceAllocator* allocator = nullptr;  // owned, or the built-in host allocator (stateless, shared)
    std::unique_ptr<WorkspaceAllocator> owned;
    std::vector<Block> blocks;  // blocks[block] is being filled; the ones after it are free
    size_t block = 0, offset = 0, in_use = 0, peak = 0;
    size_t base = 0;  // the one block's size when the outermost frame opened (0: none, or several)
  };
  Arena& arena(MemoryKind kind) { return arenas_[static_cast<size_t>(kind)]; }
  const Arena& arena(MemoryKind kind) const { return arenas_[static_cast<size_t>(kind)]; }
  void claim();  // makes the calling thread the owner, or throws
  void allocateBlock(Arena& a, size_t bytes);
  void makeRoom(Arena& a, size_t need);  // the current block has `need` bytes free after this
  void freeBlocks(Arena& a, size_t from) noexcept;
  void merge(Arena& a);  // several blocks -> one of the peak size (no frame open)

  std::array<Arena, kMemoryKinds> arenas_;
  int depth_ = 0;
  uint64_t allocations_ = 0;
  std::atomic<std::thread::id> owner_{};
};

}  // namespace flashring
