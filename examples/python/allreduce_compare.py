#!/usr/bin/env python3
"""Compare flashring's all-reduce algorithms on thread ranks: time, bytes on the wire and error vs the exact sum.

    python examples/python/allreduce_compare.py [--ranks 4] [--mib 16]

Every rank holds activation-like data (normal, with rare large outliers, as LLaMA's residual stream has);
each algorithm sums it in place, like torch.distributed.all_reduce. The exact two-step fp32 all-reduce is
the baseline. On one machine the ranks share memory, so times here mostly show codec cost; on real links
(or bench/netem's emulated ones) the low-bit codecs win by their bytes.
"""

import argparse
import time

import numpy as np

import flashring as fr

ALGOS = ["twostep-fp32", "twostep-bf16", "flash-int8", "flash-int6", "flash-int4", "flash-int4-int8"]


def activations(rank, count):
    rng = np.random.default_rng(rank)
    x = rng.standard_normal(count).astype(np.float32)
    x[rng.integers(0, count, count // 1000)] *= 40
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=4, help="thread ranks (default 4)")
    ap.add_argument("--mib", type=float, default=16, help="message size in MiB of fp32 (default 16)")
    ap.add_argument("--iters", type=int, default=5, help="timed calls per algorithm (median)")
    a = ap.parse_args()
    count = int(a.mib * (1 << 20)) // 4
    inputs = [activations(r, count) for r in range(a.ranks)]
    exact = np.sum([x.astype(np.float64) for x in inputs], axis=0)
    scale = np.abs(exact).max()
    print(f"{a.ranks} thread ranks, {a.mib:g} MiB of fp32 per rank, isa {fr.isa()}")
    print(f"{'algorithm':<18} {'median ms':>10} {'wire MiB/rank':>14} {'max rel err':>12}")
    base = None
    for algo in ALGOS:
        def fn(comm):
            times, stats = [], None
            for _ in range(a.iters):
                x = inputs[comm.rank].copy()
                comm.barrier()
                t0 = time.perf_counter()
                stats = fr.all_reduce(x, comm, algo=algo)
                times.append(time.perf_counter() - t0)
            return x, float(np.median(times)), stats

        results = fr.run_threads(a.ranks, fn)
        out, t, stats = results[0]
        assert all(np.array_equal(out, r[0]) for r in results), "replicas differ"
        err = float(np.abs(out - exact).max() / scale)
        base = base or t
        print(f"{algo:<18} {t * 1e3:>10.2f} {stats.wire_bytes / (1 << 20):>14.2f} {err:>12.2e}")


if __name__ == "__main__":
    main()
