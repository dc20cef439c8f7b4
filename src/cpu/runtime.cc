// The CPU runtime (include/flashring/cpu.h): ISA selection and the kernel thread pool.
#include <cblas.h>
#include <cpuid.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "flashring/cpu.h"
#include "flashring/error.h"

namespace flashring::cpu {
namespace {

// CPUID bits that not every compiler's __builtin_cpu_supports() knows (clang 14 lacks "f16c" and "avxvnni";
// the libFuzzer build uses clang): leaf 1 ECX bit 29 (F16C), leaf 7.0 ECX bit 11 (AVX512_VNNI), leaf 7.1 EAX
// bit 4 (AVX_VNNI).
bool cpuidBit(unsigned leaf, unsigned sub, int reg, unsigned bit) {
  unsigned r[4] = {0, 0, 0, 0};
  if (__get_cpuid_count(leaf, sub, &r[0], &r[1], &r[2], &r[3]) == 0) return false;
  return (r[reg] >> bit) & 1u;
}

// CPUID (and the OS's saving of the wide registers, which libgcc checks through XGETBV) once per process.
bool cpuHasAvx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpuidBit(1, 0, 2, 29);
  }();
  return has;
}

bool cpuHasAvx512() {
  static const bool has = [] {
    __builtin_cpu_init();
    return cpuHasAvx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }();
  return has;
}

constexpr int kUnset = -1;
std::atomic<int> g_active{kUnset};

Isa initialIsa() {
  const char* env = std::getenv("FLASHRING_ISA");
  if (env == nullptr || *env == '\0') return bestIsa();
  const std::string v(env);
  Isa isa;
  if (v == "scalar") {
    isa = Isa::Scalar;
  } else if (v == "avx2") {
    isa = Isa::Avx2;
  } else if (v == "avx512") {
    isa = Isa::Avx512;
  } else {
    throw InvalidArgument("FLASHRING_ISA must be scalar, avx2 or avx512, got '" + v + "'");
  }
  if (!isaSupported(isa)) {
    throw InvalidArgument(std::string("FLASHRING_ISA=") + v + ": this CPU does not support " + isaName(isa));
  }
  return isa;
}

int initialThreads() {
  const char* env = std::getenv("FLASHRING_THREADS");
  if (env == nullptr || *env == '\0') return 1;
  char* end = nullptr;
  const long v = std::strtol(env, &end, 10);
  if (end == env || *end != '\0' || v < 1 || v > 4096)
    throw InvalidArgument(std::string("FLASHRING_THREADS must be an integer in [1, 4096], got '") + env + "'");
  return static_cast<int>(v);
}

// The kernel thread pool. A decode step makes ~200 small parallelFor calls (30 layers x 7 matmuls, each tens
// of microseconds on one thread), so the hand-off must cost far less than a condition-variable wake (a
// futex call to publish, a scheduler wake-up of the worker, another futex round for the completion):
//  - Jobs are published through one atomic word, `claim_` = generation << 32 | parts << 16 | next part.
//    Every thread, the caller included, takes parts by a compare-exchange on it that checks the generation,
//    so a worker that wakes late can never run a part of a later job, and the caller itself runs every part
//    no worker has claimed yet (a worker descheduled before it claims a part, as on a loaded machine, delays
//    nobody; one descheduled inside its part still does: qmm hands out a few chunks a thread for that).
//  - Workers spin (yielding, see pause()) for kSpinMicros after their last job before they sleep on a
//    condition variable;
//    the caller takes the lock to notify only when a worker sleeps (`sleepers_`, a Dekker-style pairing of
//    seq_cst operations with the workers' predicate check).
//  - The caller waits for the parts workers run by spinning (kSpinMicros), then on a condition variable.
// Ranges: part p of P is [n p / P, n (p + 1) / P), P <= threads(); the first exception is rethrown on the caller.
class Pool {
 public:
  ~Pool() { resize(0); }

  // Runs the job on up to `want` threads (the caller included). Returns false, running nothing, when another
  // thread's job holds the pool (or this thread's own: a parallelFor inside a range runs inline).
  bool run(int want, int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    bool expected = false;
    if (!busy_.compare_exchange_strong(expected, true, std::memory_order_acquire)) return false;
    struct Release {
      std::atomic<bool>& b;
      ~Release() { b.store(false, std::memory_order_release); }
    } release{busy_};
    if (static_cast<int>(workers_.size()) != want - 1) resize(want - 1);
    const int64_t parts = std::min<int64_t>({want, std::max<int64_t>(1, n / std::max<int64_t>(grain, 1)), kMaxParts});
    fn_ = &fn;
    n_ = n;
    error_ = nullptr;
    done_.store(0, std::memory_order_relaxed);
    ++generation_;
    claim_.store((generation_ & 0xFFFFFFFFu) << 32 | static_cast<uint64_t>(parts) << 16, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lk(m_);
      cv_.notify_all();
    }
    runParts(generation_ & 0xFFFFFFFFu);
    waitDone(parts);
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  static constexpr int64_t kMaxParts = 0xFFFF;
  static constexpr int64_t kSpinMicros = 100;

  // Takes and runs parts of job `gen` until none is left. Returns the number run.
  int64_t runParts(uint64_t gen) {
    int64_t ran = 0;
    uint64_t c = claim_.load(std::memory_order_acquire);
    for (;;) {
      const uint64_t next = c & 0xFFFF, parts = (c >> 16) & 0xFFFF;
      if ((c >> 32) != gen || next >= parts) return ran;
      if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      const auto p = static_cast<int64_t>(next), np = static_cast<int64_t>(parts);
      const int64_t b = n_ * p / np, e = n_ * (p + 1) / np;
      try {
        if (e > b) (*fn_)(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> lk(m_);
        if (!error_) error_ = std::current_exception();
      }
      ++ran;
      done_.fetch_add(1, std::memory_order_seq_cst);
      if (caller_waits_.load(std::memory_order_seq_cst)) {
        std::lock_guard<std::mutex> lk(m_);
        done_cv_.notify_all();
      }
      c = claim_.load(std::memory_order_acquire);
    }
  }

  void waitDone(int64_t parts) {
    if (done_.load(std::memory_order_acquire) == parts) return;
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
    while (done_.load(std::memory_order_acquire) != parts) {
      if (std::chrono::steady_clock::now() > until) {
        caller_waits_.store(true, std::memory_order_seq_cst);
        std::unique_lock<std::mutex> lk(m_);
        done_cv_.wait(lk, [&] { return done_.load(std::memory_order_seq_cst) == parts; });
        caller_waits_.store(false, std::memory_order_relaxed);
        return;
      }
      pause();
    }
  }

  // One step of a spin-wait: a yield, not a pause loop. On an idle core it returns at once (a syscall,
  // well under a microsecond); on a loaded machine it hands the core to whatever else is runnable, where a
  // pause loop would burn the thread's share of the CPU and get it preempted in the middle of its next part
  // (bench_qmatmul's decode_layer at 2 threads on 2 busy cores: pause-spinning 0.67x the sleeping pool,
  // yield-spinning 1.2x).
  static void pause() { std::this_thread::yield(); }

  void worker() {
    uint64_t seen = 0;  // generation (low 32 bits) of the last job this worker looked at
    for (;;) {
      // Spin for a new job, then sleep.
      uint64_t c = claim_.load(std::memory_order_acquire);
      if ((c >> 32) == seen && !stop_.load(std::memory_order_relaxed)) {
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
        for (int i = 0;; ++i) {
          c = claim_.load(std::memory_order_acquire);
          if ((c >> 32) != seen || stop_.load(std::memory_order_relaxed)) break;
          if ((i & 15) == 15 && std::chrono::steady_clock::now() > until) {
            std::unique_lock<std::mutex> lk(m_);
            sleepers_.fetch_add(1, std::memory_order_seq_cst);
            cv_.wait(lk, [&] {
              return stop_.load(std::memory_order_relaxed) || (claim_.load(std::memory_order_seq_cst) >> 32) != seen;
            });
            sleepers_.fetch_sub(1, std::memory_order_relaxed);
            c = claim_.load(std::memory_order_acquire);
            break;
          }
          pause();
        }
      }
      if (stop_.load(std::memory_order_relaxed)) return;
      seen = c >> 32;
      runParts(seen);
    }
  }

  void resize(int n) {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_.store(true, std::memory_order_seq_cst);
      cv_.notify_all();
    }
    for (auto& t : workers_) t.join();
    workers_.clear();
    stop_.store(false, std::memory_order_relaxed);
    for (int i = 0; i < n; ++i) workers_.emplace_back([this] { worker(); });
  }

  std::atomic<bool> busy_{false};  // held by the thread whose job runs
  // Owned by the caller between publications; read by the threads that claim parts of its job.
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  uint64_t generation_ = 0;
  std::exception_ptr error_;  // under m_
  alignas(64) std::atomic<uint64_t> claim_{0};
  alignas(64) std::atomic<int64_t> done_{0};
  std::atomic<bool> caller_waits_{false};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
};

std::atomic<int> g_threads{0};

// OpenBLAS follows threads(), capped by OPENBLAS_NUM_THREADS when the user set it (their word for the BLAS;
// the TSan run keeps OpenBLAS, which is not instrumented, on one thread this way).
void setBlasThreads(int n) {
  static const int cap = [] {
    const char* env = std::getenv("OPENBLAS_NUM_THREADS");
    const int v = env != nullptr ? std::atoi(env) : 0;
    return v > 0 ? v : 0;
  }();
  openblas_set_num_threads(cap > 0 ? std::min(n, cap) : n);
}

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

namespace detail {
void resetIsaSelectionForTesting() { g_active.store(kUnset, std::memory_order_release); }
}  // namespace detail

const char* isaName(Isa isa) {
  switch (isa) {
    case Isa::Scalar:
      return "scalar";
    case Isa::Avx2:
      return "avx2";
    case Isa::Avx512:
      return "avx512";
  }
  return "unknown";
}

bool isaSupported(Isa isa) {
  switch (isa) {
    case Isa::Scalar:
      return true;
    case Isa::Avx2:
      return cpuHasAvx2();
    case Isa::Avx512:
      return cpuHasAvx512();
  }
  return false;
}

Isa bestIsa() {
  static const Isa best = cpuHasAvx512() ? Isa::Avx512 : (cpuHasAvx2() ? Isa::Avx2 : Isa::Scalar);
  return best;
}

Isa activeIsa() {
  int v = g_active.load(std::memory_order_acquire);
  if (v == kUnset) {
    const int init = static_cast<int>(initialIsa());
    // A concurrent setActiveIsa() wins over the environment.
    if (g_active.compare_exchange_strong(v, init, std::memory_order_acq_rel)) v = init;
  }
  return static_cast<Isa>(v);
}

void setActiveIsa(Isa isa) {
  if (!isaSupported(isa)) {
    throw InvalidArgument(std::string("setActiveIsa: isa ") + isaName(isa) + " is not supported by this CPU");
  }
  g_active.store(static_cast<int>(isa), std::memory_order_release);
}

bool hasAvx512Vnni() {
  static const bool has = [] {
    __builtin_cpu_init();
    return cpuHasAvx512() && cpuidBit(7, 0, 2, 11);
  }();
  return has;
}

bool hasAvxVnni() {
  static const bool has = [] {
    __builtin_cpu_init();
    return cpuHasAvx2() && cpuidBit(7, 1, 0, 4);
  }();
  return has;
}

int threads() {
  int v = g_threads.load(std::memory_order_acquire);
  if (v == 0) {
    const int init = initialThreads();
    if (g_threads.compare_exchange_strong(v, init, std::memory_order_acq_rel)) {
      v = init;
      setBlasThreads(init);
    }
  }
  return v;
}

void setThreads(int n) {
  if (n < 1 || n > 4096) throw InvalidArgument("cpu::setThreads: " + std::to_string(n) + " is not in [1, 4096]");
  g_threads.store(n, std::memory_order_release);
  setBlasThreads(n);
}

int hardwareThreads() { return std::max(1u, std::thread::hardware_concurrency()); }

void parallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int t = threads();
  if (t <= 1 || n < 2 * std::max<int64_t>(grain, 1) || !pool().run(t, n, grain, fn)) fn(0, n);
}

}  // namespace flashring::cpu
