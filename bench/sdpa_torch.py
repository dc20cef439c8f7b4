#!/usr/bin/env python3
"""PyTorch CPU scaled_dot_product_attention (fp32) on the shapes of bench/kernels/bench_attention.cc.

The baseline for flashring's block attention kernel: same shapes, same FLOP count (4 * q * kv * heads *
head_dim, or 4 * visible pairs * heads * head_dim for causal: q (q + 1) / 2 pairs on the diagonal), at
torch.set_num_threads(1) and (2). Tensors are made in flashring's BSHD layout and passed as transposed
views [B, H, S, D] (what a caller holding BSHD data would do, no copy); --contiguous passes contiguous
BHSD tensors instead. GQA uses enable_gqa=True (no KV replication, like the kernel).

Prints per shape and thread count: the best and median wall time per call, median process CPU time, and
GFLOP/s from the best wall time.

With --ours PATH/TO/flashring_kernel_bench it also runs flashring's kernel (BM_Attention, impl 0 = the
default AVX2 micro-kernels, one thread) on each shape, alternating with SDPA for --rounds rounds, and
prints both best times and the speed-up: on a shared machine only such interleaved best-of-N numbers
compare fairly.

PyTorch is a benchmark-only dependency: pip install torch (the PyPI wheel works on CPU).

    python3 bench/sdpa_torch.py [--threads 1,2] [--iters 5] [--contiguous] [--json out.json]
    python3 bench/sdpa_torch.py --threads 1 --ours build/bin/flashring_kernel_bench --rounds 3
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.stderr.write(
        "sdpa_torch.py: PyTorch is not installed. It is only needed for this baseline benchmark:\n"
        "    pip install torch\n"
        "(the default PyPI wheel runs on CPU; no GPU is needed).\n")
    sys.exit(2)

# (q_len, kv_len, heads, kv_heads, head_dim, causal): as kShapes in bench/kernels/bench_attention.cc.
SHAPES = [
    (1024, 1024, 32, 32, 128, False),
    (1024, 1024, 32, 32, 128, True),
    (512, 512, 32, 32, 128, False),
    (512, 512, 32, 32, 128, True),
    (1024, 1024, 32, 8, 128, False),
    (1024, 1024, 32, 8, 128, True),
    (1024, 1024, 32, 32, 64, False),
]


def flops(q, kv, h, d, causal):
    pairs = sum(min(i + 1, kv) for i in range(q)) if causal else q * kv
    return 4.0 * pairs * h * d


def make(q, kv, h, hkv, d, contiguous):
    g = torch.Generator().manual_seed(42)
    qt = torch.randn(1, q, h, d, generator=g, dtype=torch.float32)
    kt = torch.randn(1, kv, hkv, d, generator=g, dtype=torch.float32)
    vt = torch.randn(1, kv, hkv, d, generator=g, dtype=torch.float32)
    qt, kt, vt = (x.transpose(1, 2) for x in (qt, kt, vt))  # [B, H, S, D] views of BSHD storage
    if contiguous:
        qt, kt, vt = (x.contiguous() for x in (qt, kt, vt))
    return qt, kt, vt


def run(shape, threads, iters, contiguous):
    q, kv, h, hkv, d, causal = shape
    torch.set_num_threads(threads)
    qt, kt, vt = make(q, kv, h, hkv, d, contiguous)
    kwargs = {"is_causal": causal}
    if hkv != h:
        kwargs["enable_gqa"] = True
    with torch.inference_mode():
        F.scaled_dot_product_attention(qt, kt, vt, **kwargs)  # warm-up
        walls, cpus = [], []
        for _ in range(iters):
            w0, c0 = time.perf_counter(), time.process_time()
            F.scaled_dot_product_attention(qt, kt, vt, **kwargs)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    return {
        "q": q, "kv": kv, "heads": h, "kv_heads": hkv, "head_dim": d, "causal": causal, "threads": threads,
        "layout": "BHSD" if contiguous else "BSHD-view", "best_ms": min(walls) * 1e3,
        "median_ms": statistics.median(walls) * 1e3, "cpu_ms": statistics.median(cpus) * 1e3,
        "gflops": flops(q, kv, h, d, causal) / min(walls) / 1e9,
    }


def run_ours(binary, shape, repetitions):
    """Best wall time (ms) of flashring's BM_Attention (impl 0) on one shape, from `repetitions` runs."""
    q, kv, h, hkv, d, causal = shape
    name = f"BM_Attention/impl:0/q:{q}/kv:{kv}/h:{h}/hkv:{hkv}/d:{d}/causal:{int(causal)}/"
    cmd = [binary, f"--benchmark_filter=^{name}", "--benchmark_format=json", "--benchmark_min_time=0.01",
           f"--benchmark_repetitions={repetitions}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    runs = [b for b in json.loads(out)["benchmarks"] if b.get("run_type") == "iteration"]
    if not runs:
        sys.exit(f"sdpa_torch.py: {binary} has no benchmark {name}")
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    return min(b["real_time"] * scale[b["time_unit"]] for b in runs)


def print_row(r):
    print(f"{r['q']:>5} {r['kv']:>5} {r['heads']:>3} {r['kv_heads']:>3} {r['head_dim']:>4} "
          f"{str(r['causal']):>6} {r['threads']:>3} {r['best_ms']:>9.1f} {r['median_ms']:>9.1f} {r['cpu_ms']:>9.1f} "
          f"{r['gflops']:>8.1f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    ap.add_argument("--iters", type=int, default=5, help="timed calls per shape and round (best and median reported)")
    ap.add_argument("--contiguous", action="store_true", help="contiguous BHSD tensors instead of BSHD views")
    ap.add_argument("--shape", action="append", default=[],
                    help="q,kv,heads,kv_heads,head_dim,causal (repeatable; default: the kernel benchmark's shapes)")
    ap.add_argument("--ours", help="path to flashring_kernel_bench: also time flashring's kernel, interleaved")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds with --ours (best kept)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    shapes = SHAPES
    if args.shape:
        shapes = []
        for s in args.shape:
            f = [int(x) for x in s.split(",")]
            if len(f) != 6:
                ap.error("--shape needs q,kv,heads,kv_heads,head_dim,causal")
            shapes.append((f[0], f[1], f[2], f[3], f[4], bool(f[5])))
    torch.set_num_interop_threads(1)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"layout {'BHSD contiguous' if args.contiguous else 'BSHD transposed views'}, fp32")
    results = []
    if args.ours:
        # Interleaved rounds: SDPA at each thread count, then ours, shape by shape; keep the best of each.
        best = {}
        for rnd in range(args.rounds):
            for shape in shapes:
                for threads in (int(t) for t in args.threads.split(",")):
                    r = run(shape, threads, args.iters, args.contiguous)
                    key = (shape, threads)
                    if key not in best or r["best_ms"] < best[key]["best_ms"]:
                        best[key] = r
                ours = run_ours(args.ours, shape, args.iters)
                key = (shape, "ours")
                best[key] = min(best.get(key, ours), ours)
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        print(f"{'q':>5} {'kv':>5} {'h':>3} {'hkv':>3} {'d':>4} {'causal':>6} "
              + "".join(f"{'sdpa@' + t + ' ms':>13}" for t in args.threads.split(","))
              + f"{'ours@1 ms':>11}{'ours GFLOP/s':>14}"
              + "".join(f"{'vs sdpa@' + t:>11}" for t in args.threads.split(",")))
        for shape in shapes:
            q, kv, h, hkv, d, causal = shape
            ours = best[(shape, "ours")]
            line = f"{q:>5} {kv:>5} {h:>3} {hkv:>3} {d:>4} {str(causal):>6} "
            sdpa = [best[(shape, int(t))] for t in args.threads.split(",")]
            line += "".join(f"{r['best_ms']:>13.1f}" for r in sdpa)
            line += f"{ours:>11.1f}{flops(q, kv, h, d, causal) / ours / 1e6:>14.1f}"
            line += "".join(f"{r['best_ms'] / ours:>10.2f}x" for r in sdpa)
            print(line)
            for r in sdpa:
                results.append(dict(r, ours_best_ms=ours))
    else:
        print(f"{'q':>5} {'kv':>5} {'h':>3} {'hkv':>3} {'d':>4} {'causal':>6} {'thr':>3} "
              f"{'best ms':>9} {'median ms':>9} {'cpu ms':>9} {'GFLOP/s':>8}")
        for threads in (int(t) for t in args.threads.split(",")):
            for shape in shapes:
                r = run(shape, threads, args.iters, args.contiguous)
                results.append(r)
                print_row(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
