#!/usr/bin/env python3
"""Python-call overhead of flashring.all_reduce against the same all-reduce looped in C++, in one run.

    PYTHONPATH=build/python .venv/bin/python bench/python/allreduce_overhead.py [--ranks 4] [--json out.json]

Both run on the same thread ranks, buffers and options, alternating (C++ loop, Python loop, C++, ...) so the
machine's state is the same for both; each rank times `iters` back-to-back calls after a barrier, the
slowest rank's time counts, and the median over `--reps` alternations is reported. The C++ loop is
flashring._core.allreduce_loop (no Python between calls). Overhead = Python - C++ per call. Also reported:
the same at 1 rank, where the all-reduce itself does nothing, so the difference is the binding's own cost.
Writes rows for bench/plot.py (algo = "cpp <name>" / "python <name>", speedup = C++ time / Python time).
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np

import flashring as fr
from flashring import _core


def measure(ranks, count, algo, iters, reps):
    opts = fr.collectives._options(algo, 128, 0, False, False, False, {})
    # Zeros: repeated in-place sums stay finite (random data would overflow to Inf after ~60 calls).
    bufs = [np.zeros(count, np.float32) for _ in range(ranks)]
    cpp, py = [], []

    def fn(c):
        x = bufs[c.rank]
        out = []
        for _ in range(reps):
            for kind in ("cpp", "py"):
                c.barrier()
                if kind == "cpp":
                    t = _core.allreduce_loop(c._h, x, opts, iters)
                else:
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        fr.all_reduce(x, c, algo=algo)
                    t = time.perf_counter() - t0
                out.append((kind, t))
        return out

    res = fr.run_threads(ranks, fn)
    for i in range(len(res[0])):
        kind = res[0][i][0]
        slowest = max(r[i][1] for r in res) / iters
        (cpp if kind == "cpp" else py).append(slowest)
    return statistics.median(cpp), statistics.median(py)


def same_bits(ranks, count, algo):
    """One call of each on the same random inputs: the Python path must leave the C++ loop's bits."""
    opts = fr.collectives._options(algo, 128, 0, False, False, False, {})
    x = np.random.default_rng(7).standard_normal((ranks, count)).astype(np.float32)
    a, b = x.copy(), x.copy()
    fr.run_threads(ranks, lambda c: (_core.allreduce_loop(c._h, a[c.rank], opts, 1), fr.all_reduce(b[c.rank], c, algo=algo)))
    return bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--algo", default="twostep-fp32", help="all-reduce algorithm (flashring.ALGORITHMS)")
    ap.add_argument("--sizes", default="4K,16M", help="comma-separated message sizes in bytes of fp32 (K/M suffixes)")
    ap.add_argument("--reps", type=int, default=7, help="alternations of the C++ and Python loops (median)")
    ap.add_argument("--json", help="write rows for bench/plot.py here")
    a = ap.parse_args()
    sizes = [int(s[:-1]) * (1024 if s[-1] in "Kk" else 1 << 20) if s[-1] in "KkMm" else int(s) for s in a.sizes.split(",")]
    rows = []
    print(f"flashring.all_reduce Python-call overhead, {a.algo}, thread ranks, isa {fr.isa()}")
    print(f"{'ranks':>5} {'bytes':>10} {'iters':>6} {'C++ us':>10} {'Python us':>10} {'overhead us':>12} {'overhead %':>10} {'bits equal':>10}")
    for ranks in sorted({1, a.ranks}):
        for b in sizes:
            count = b // 4
            iters = max(3, min(2000, int(2e-1 / max(1e-6, count * 4 / 2e9))))  # ~0.2 s per loop
            cpp, py = measure(ranks, count, a.algo, iters, a.reps)
            over = py - cpp
            equal = same_bits(ranks, count, a.algo)
            print(f"{ranks:>5} {b:>10} {iters:>6} {cpp * 1e6:>10.2f} {py * 1e6:>10.2f} {over * 1e6:>12.2f} {100 * over / cpp:>9.2f}% {str(equal):>10}")
            for kind, t in (("cpp", cpp), ("python", py)):
                rows.append({"algo": f"{kind} {a.algo} r{ranks}", "bytes": b, "count": count, "ranks": ranks,
                             "transport": "thread", "time_us": t * 1e6, "speedup": cpp / t, "baseline": f"cpp {a.algo}",
                             "overhead_us": over * 1e6, "bits_equal": equal})  # fmt: skip
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
