// The CPU runtime: the one place that decides which instruction set the kernels use and how many threads
// they run on.
//
// ISA. Every kernel family (all-reduce codecs, GGUF dequantization, quantized matmul, attention) reads
// activeIsa(): the best ISA the CPU has (CPUID, with the OS's saving of the wide registers checked), unless
// FLASHRING_ISA=scalar|avx2|avx512 was set at first use or setActiveIsa() overrides it. The library is
// compiled for baseline x86-64; the per-ISA source files are only entered when the CPU has their
// instructions, so one binary runs on any x86-64.
//
// Threads. threads() is the number of threads a kernel call may use (1 = the calling thread only). It is
// process-wide, like OpenBLAS's setting, which setThreads() sets to the same value. Ranks that run as
// threads of one process should each keep to 1 thread when there are no more cores than ranks (the tools
// choose that by default). parallelFor() runs work items on a pool of threads() - 1 workers plus the caller;
// a call made while another thread's parallelFor holds the pool runs on its own thread alone (never waits
// for the pool, so thread ranks cannot deadlock on it).
#pragma once

#include <cstdint>
#include <functional>

namespace flashring::cpu {

// Instruction sets with their own kernels.
enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };
const char* isaName(Isa isa);
// The best ISA this CPU supports (Avx2 means AVX2 + FMA + F16C; Avx512 means F, BW, VL and DQ besides).
Isa bestIsa();
// The ISA the dispatching kernels use.
Isa activeIsa();
// Override the dispatch (tests, benchmarks). Throws InvalidArgument if the CPU lacks the ISA.
void setActiveIsa(Isa isa);
bool isaSupported(Isa isa);
// AVX-512 VNNI (vpdpbusd) on top of Avx512, and AVX-VNNI on top of Avx2: integer dot-product kernels use
// them when present.
bool hasAvx512Vnni();
bool hasAvxVnni();

// Threads for kernel calls (>= 1). Default: FLASHRING_THREADS if set, else 1.
int threads();
// Sets threads() and OpenBLAS's thread count (capped by OPENBLAS_NUM_THREADS when set). Throws
// InvalidArgument for n < 1.
void setThreads(int n);
// Number of hardware threads of the machine (at least 1).
int hardwareThreads();

// Runs fn(begin, end) over [0, n) cut into at most threads() contiguous ranges of at least `grain` items.
// Returns when every range is done; an exception from any range is rethrown on the caller (the first one).
void parallelFor(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn);

namespace detail {
void resetIsaSelectionForTesting();
}

}  // namespace flashring::cpu
