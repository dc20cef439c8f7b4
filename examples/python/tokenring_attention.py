"""TokenRing sequence-parallel attention on 4 thread ranks against single-device attention.

Each rank holds a zigzag shard of the sequence (flashring.zigzag_shard); flashring.sp_attention runs TokenRing
(queries travel around the ring, K/V stay, partial results go straight back to their owner) and the shards
are gathered back (flashring.zigzag_unshard) and compared with torch.nn.functional.scaled_dot_product_attention
over the whole sequence when PyTorch is installed, else with a float64 numpy reference.

    python examples/python/tokenring_attention.py [--seq-len 2048] [--heads 8] [--kv-heads 8] [--head-dim 64]

flashring must be importable: installed (pip install .) or built (PYTHONPATH=build/python); a build tree at
./build is found by itself.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

try:
    import flashring
except ImportError:
    build = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "python")
    if not os.path.isdir(os.path.join(build, "flashring")):
        sys.exit("flashring is not importable: pip install . or build it (FLASHRING_BUILD_PYTHON=ON) and set "
                 "PYTHONPATH=build/python")  # fmt: skip
    sys.path.insert(0, os.path.abspath(build))
    import flashring

try:
    import torch
    import torch.nn.functional as F
except Exception as e:  # noqa: BLE001 - any failure to import means "no torch"
    torch = None  # type: ignore[assignment]
    torch_error = f"{type(e).__name__}: {e}"


def numpy_attention(q, k, v, causal):
    """float64 reference, BSHD in and out."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("bshd,bthd->bhst", q, k) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[1]
        s = np.where(np.tril(np.ones((n, n), dtype=bool)), s, -np.inf)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhst,bthd->bshd", p, v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=None, help="GQA: fewer KV heads (default: heads)")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--full", action="store_true", help="non-causal attention (default: causal)")
    ap.add_argument("--scheme", default="tokenring", choices=flashring.SCHEMES)
    ap.add_argument("--numpy", action="store_true", help="compare with the numpy reference even with torch")
    args = ap.parse_args()
    causal = not args.full
    n, b, s, h, d = args.ranks, args.batch, args.seq_len, args.heads, args.head_dim
    kvh = args.kv_heads or h

    rng = np.random.default_rng(0)
    q = rng.standard_normal((b, s, h, d), dtype=np.float32)
    k = rng.standard_normal((b, s, kvh, d), dtype=np.float32)
    v = rng.standard_normal((b, s, kvh, d), dtype=np.float32)
    shards = [[flashring.zigzag_shard(x, r, n) for x in (q, k, v)] for r in range(n)]

    def rank(comm):
        ql, kl, vl = shards[comm.rank]
        flashring.sp_attention(ql, kl, vl, comm, causal=causal, scheme=args.scheme)  # warm-up
        comm.barrier()
        t0 = time.perf_counter()
        out, lse, stats = flashring.sp_attention(ql, kl, vl, comm, causal=causal, scheme=args.scheme,
                                                 return_lse=True, return_stats=True)  # fmt: skip
        comm.barrier()
        return out, lse, stats, time.perf_counter() - t0

    res = flashring.run_threads(n, rank)
    out = flashring.zigzag_unshard([r[0] for r in res])
    sp_s = max(r[3] for r in res)
    st = res[0][2]
    print(f"flashring {args.scheme} sp_attention: {n} thread ranks, batch {b}, {s} tokens, {h} heads "
          f"({kvh} KV heads), head_dim {d}, {'causal' if causal else 'full'}, isa {flashring.isa()}")  # fmt: skip
    print(f"  {sp_s * 1e3:9.2f} ms  (rank 0: compute {st.compute_s * 1e3:.2f} ms, waiting {st.comm_s * 1e3:.2f} ms, "
          f"sent {st.bytes_fwd / 2**20:.2f} MiB forward, {st.bytes_bwd / 2**20:.2f} MiB back)")  # fmt: skip

    if torch is not None and not args.numpy:
        tq, tk, tv = (torch.from_numpy(x).transpose(1, 2) for x in (q, k, v))  # BSHD -> BHSD
        if kvh != h:
            tk, tv = tk.repeat_interleave(h // kvh, dim=1), tv.repeat_interleave(h // kvh, dim=1)
        F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)  # warm-up
        t0 = time.perf_counter()
        ref = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal).transpose(1, 2).numpy()
        ref_s = time.perf_counter() - t0
        what = f"torch.nn.functional.scaled_dot_product_attention ({torch.get_num_threads()} threads)"
    else:
        if torch is None:
            print(f"  (torch is not installed: {torch_error}; comparing with a float64 numpy reference)")
        t0 = time.perf_counter()
        ref = numpy_attention(q, k, v, causal)
        ref_s = time.perf_counter() - t0
        what = "numpy float64 reference"
    err = float(np.abs(out.astype(np.float64) - ref).max())
    print(f"{what} on the gathered sequence:")
    print(f"  {ref_s * 1e3:9.2f} ms")
    print(f"max |flashring - reference| = {err:.3e}")
    if not err < 1e-4:
        sys.exit(f"error {err:.3e} is larger than expected")


if __name__ == "__main__":
    main()
