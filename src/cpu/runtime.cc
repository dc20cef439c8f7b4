// The CPU runtime (include/flashring/cpu.h): ISA selection and the kernel thread pool.
#include <cblas.h>

#include <algorithm>
#include <atomic>
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

// CPUID (and the OS's saving of the wide registers, which libgcc checks through XGETBV) once per process.
bool cpuHasAvx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
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

// Workers wait for a job; the caller takes part in it and waits for the workers to finish their ranges.
class Pool {
 public:
  ~Pool() { resize(0); }

  // Runs the job on up to `want` threads (the caller included). Returns false, running nothing, when another
  // thread's job holds the pool.
  bool run(int want, int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    if (static_cast<int>(workers_.size()) != want - 1) resize(want - 1);
    const int64_t parts = std::min<int64_t>(want, std::max<int64_t>(1, n / std::max<int64_t>(grain, 1)));
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      n_ = n;
      parts_ = parts;
      next_.store(1, std::memory_order_relaxed);  // part 0 is the caller's
      pending_ = static_cast<int>(parts - 1);
      error_ = nullptr;
      ++generation_;
    }
    cv_.notify_all();
    runPart(0);
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [&] { return pending_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  void runPart(int64_t p) {
    const int64_t b = n_ * p / parts_, e = n_ * (p + 1) / parts_;
    try {
      if (e > b) (*fn_)(b, e);
    } catch (...) {
      std::lock_guard<std::mutex> lk(m_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void worker() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      for (;;) {
        const int64_t p = next_.fetch_add(1, std::memory_order_relaxed);
        if (p >= parts_) break;
        runPart(p);
        std::lock_guard<std::mutex> lk(m_);
        if (--pending_ == 0) done_cv_.notify_all();
      }
    }
  }

  void resize(int n) {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    stop_ = false;
    for (int i = 0; i < n; ++i) workers_.emplace_back([this] { worker(); });
  }

  std::mutex busy_;  // held by the thread whose job runs
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, parts_ = 0;
  std::atomic<int64_t> next_{0};
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

std::atomic<int> g_threads{0};

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
    return cpuHasAvx512() && __builtin_cpu_supports("avx512vnni");
  }();
  return has;
}

bool hasAvxVnni() {
  static const bool has = [] {
    __builtin_cpu_init();
    return cpuHasAvx2() && __builtin_cpu_supports("avxvnni");
  }();
  return has;
}

int threads() {
  int v = g_threads.load(std::memory_order_acquire);
  if (v == 0) {
    const int init = initialThreads();
    if (g_threads.compare_exchange_strong(v, init, std::memory_order_acq_rel)) {
      v = init;
      openblas_set_num_threads(init);
    }
  }
  return v;
}

void setThreads(int n) {
  if (n < 1 || n > 4096) throw InvalidArgument("cpu::setThreads: " + std::to_string(n) + " is not in [1, 4096]");
  g_threads.store(n, std::memory_order_release);
  openblas_set_num_threads(n);
}

int hardwareThreads() { return std::max(1u, std::thread::hardware_concurrency()); }

void parallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int t = threads();
  if (t <= 1 || n < 2 * std::max<int64_t>(grain, 1) || !pool().run(t, n, grain, fn)) fn(0, n);
}

}  // namespace flashring::cpu
