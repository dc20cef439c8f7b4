#!/usr/bin/env python3
"""flashring's all-reduce next to MPI_Allreduce from an mpi4py program.

    mpiexec -n 4 python examples/python/mpi4py_allreduce.py [--mib 16]

flashring.from_mpi4py duplicates the mpi4py communicator (collective), so flashring's messages never meet the
program's own. Each rank sums activation-like data with mpi4py's Allreduce and with flashring's exact and
low-bit all-reduces, and rank 0 prints the times and errors. For real links between the ranks run it across
machines, or on bench/netem's emulated ones:
    bench/netem/run.sh --ranks 4 --rate 1gbit --topology star -- python examples/python/mpi4py_allreduce.py
"""

import argparse
import time

import numpy as np
from mpi4py import MPI

import flashring as fr


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=float, default=16, help="message size in MiB of fp32 (default 16)")
    ap.add_argument("--iters", type=int, default=5, help="timed calls per algorithm (median)")
    a = ap.parse_args()
    world = MPI.COMM_WORLD
    me, n = world.Get_rank(), world.Get_size()
    count = int(a.mib * (1 << 20)) // 4
    rng = np.random.default_rng(me)
    x0 = rng.standard_normal(count).astype(np.float32)
    exact = np.empty_like(x0, dtype=np.float64)
    world.Allreduce(x0.astype(np.float64), exact, op=MPI.SUM)
    scale = np.abs(exact).max()

    def timed(run):
        times = []
        for _ in range(a.iters):
            x = x0.copy()
            world.Barrier()
            t0 = time.perf_counter()
            run(x)
            times.append(world.allreduce(time.perf_counter() - t0, op=MPI.MAX))
        return float(np.median(times)), float(np.abs(x - exact).max() / scale)

    rows = []
    t, e = timed(lambda x: world.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM))
    rows.append(("mpi4py Allreduce", t, e))
    with fr.from_mpi4py(world) as comm:
        for algo in ("twostep-fp32", "flash-int8", "flash-int4"):
            t, e = timed(lambda x: fr.all_reduce(x, comm, algo=algo))
            rows.append((f"flashring {algo}", t, e))
    if me == 0:
        print(f"{n} MPI ranks, {a.mib:g} MiB of fp32 per rank")
        print(f"{'all-reduce':<24} {'median ms':>10} {'vs mpi4py':>10} {'max rel err':>12}")
        for name, t, e in rows:
            print(f"{name:<24} {t * 1e3:>10.2f} {rows[0][1] / t:>9.2f}x {e:>12.2e}")


if __name__ == "__main__":
    main()
