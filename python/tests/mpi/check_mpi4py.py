"""The Python package over real MPI ranks (CTest: mpiexec -n 1..4 python check_mpi4py.py).

Each process checks that flashring.from_mpi4py gives the thread ranks' results bit for bit (every process
also runs the same all-reduces and sequence-parallel attention on thread ranks locally), that split / barrier / bytes_sent work, and that a
size mismatch across ranks raises on every rank within the deadline. Exits 77 (skip) without mpi4py or a
flashring built without MPI; 1 on a failed check, naming it.
"""

import sys
import time

import numpy as np

try:
    from mpi4py import MPI
except ImportError as e:
    print(f"skip: mpi4py is not installed ({e})")
    sys.exit(77)

import flashring as fr

try:
    from flashring import _mpi  # noqa: F401
except ImportError as e:
    print(f"skip: flashring was built without MPI ({e})")
    sys.exit(77)

world = MPI.COMM_WORLD
me, n = world.Get_rank(), world.Get_size()


def check(cond, what):
    if not cond:
        print(f"rank {me}: FAILED: {what}", flush=True)
        world.Abort(1)


def inputs(count, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, count)).astype(np.float32)


with fr.from_mpi4py(world) as comm:
    check(comm.rank == me and comm.size == n and comm.transport == "mpi", "rank / size / transport")
    for algo, count, kw in [("twostep-fp32", 1000, {}), ("flash-int4", 5000, {"spikes": 1}), ("oneshot-int8", 300, {}),
                            ("auto", 70000, {}), ("mpi", 999, {})]:  # fmt: skip
        x = inputs(count, count)
        mine = x[me].copy()
        stats = fr.all_reduce(mine, comm, algo=algo, **kw)
        if algo == "mpi":  # MPI's own sum (thread ranks have none): its order is MPI's; compare values
            check(np.allclose(mine, x.sum(0), rtol=1e-5, atol=1e-5), f"{algo}: MPI_Allreduce sum")
        else:
            threads = x.copy()
            fr.run_threads(n, lambda c: fr.all_reduce(threads[c.rank], c, algo=algo, **kw))
            check(np.array_equal(mine.view(np.uint32), threads[me].view(np.uint32)), f"{algo}: bits equal thread ranks")
        gathered = world.allgather(mine.tobytes())
        check(all(g == gathered[0] for g in gathered), f"{algo}: replicas identical")
        check(n == 1 or stats.wire_bytes > 0 or algo == "mpi", f"{algo}: stats")

    # TokenRing and the other schemes over MPI: the same bits as on thread ranks, lse included.
    rng = np.random.default_rng(11)
    S, H, KVH, D = 8 * n + 3, 4, 2, 16
    q, k, v = (rng.standard_normal((1, S, h, D)).astype(np.float32) for h in (H, KVH, KVH))
    for scheme in ("tokenring", "ring-kv", "ulysses", "allgather-kv"):
        shard = lambda x, r: np.ascontiguousarray(fr.zigzag_shard(x, r, n))  # noqa: E731
        out, lse = fr.sp_attention(shard(q, me), shard(k, me), shard(v, me), comm, scheme=scheme, return_lse=True)
        ref = fr.run_threads(n, lambda c: fr.sp_attention(shard(q, c.rank), shard(k, c.rank), shard(v, c.rank), c,
                                                          scheme=scheme, return_lse=True))  # fmt: skip
        check(np.array_equal(out.view(np.uint32), ref[me][0].view(np.uint32)), f"sp_attention {scheme}: out bits")
        check(np.array_equal(lse.view(np.uint32), ref[me][1].view(np.uint32)), f"sp_attention {scheme}: lse bits")

    comm.barrier()
    half = comm.split(me % 2, key=me)
    y = np.array([me], np.float32)
    fr.all_reduce(y, half, algo="twostep-fp32")
    check(float(y[0]) == sum(r for r in range(n) if r % 2 == me % 2), "split group sum")
    check(comm.bytes_sent > 0 or n == 1, "bytes_sent")

if n > 1:
    # A mismatched size raises on every rank (the communicator is then aborted; use a fresh one).
    comm = fr.from_mpi4py(world)
    comm.timeout = 30
    t0 = time.monotonic()
    raised = False
    try:
        fr.all_reduce(np.zeros(100 + (me == 1), np.float32), comm, algo="flash-int8")
    except fr.Error as e:
        raised = True
        msg = str(e)
    check(raised, "size mismatch raised")
    check(time.monotonic() - t0 < 20, "size mismatch raised within the deadline")
    comm.close()
    world.Barrier()

print(f"rank {me} of {n}: mpi4py checks passed", flush=True)
