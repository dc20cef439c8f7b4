#!/usr/bin/env python3
"""`flashring simulate` end to end (CTest cli.simulate): --paper rows with finite ratios, a --sweep whose JSON rows
add up (TTFT = compute + comm + quant) and keep the byte ratio of the codecs, --list-profiles, and errors that name
the bad value.

  test_cli_simulate.py FLASHRING_BINARY WORK_DIR
"""
import json, math, os, subprocess, sys

def main():
    exe, work = sys.argv[1:3]
    os.makedirs(work, exist_ok=True)

    def run(*args, ok=True):
        p = subprocess.run([exe, "simulate", *args], capture_output=True, text=True, timeout=120)
        if ok and p.returncode != 0:
            sys.exit(f"FAILED: simulate {' '.join(args)}\n{p.stdout}\n{p.stderr}")
        return p

    paper = os.path.join(work, "paper.json")
    out = run("--paper", "--json", paper).stdout
    if "figures within 25%" not in out or "MISS:" not in out:
        sys.exit("FAILED: --paper output:\n" + out)
    rows = json.load(open(paper))
    if len(rows) < 10 or not all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in rows):
        sys.exit(f"FAILED: paper rows {rows}")
    for r in rows:
        if r["reproduced"] != (0.75 <= r["ratio"] <= 1.25):
            sys.exit(f"FAILED: reproduced flag of {r}")

    sweep = os.path.join(work, "sweep.json")
    run("--profile", "l40x4-pcie", "-m", "llama-3-70b", "-b", "8", "-p", "1024", "--sweep", "--comms",
        "bf16,int4", "--link-scales", "1,2", "--json", sweep)
    rows = json.load(open(sweep))
    grids = {r["grid"] for r in rows}
    if grids != {"4x1", "2x2", "1x4"} or len(rows) != 12:
        sys.exit(f"FAILED: sweep grids {grids}, {len(rows)} rows")
    for r in rows:
        if abs(r["ttft_ms"] - (r["compute_ms"] + r["comm_ms"] + r["quant_ms"])) > 1e-6 * r["ttft_ms"]:
            sys.exit(f"FAILED: TTFT parts of {r}")
    by = {(r["grid"], r["comm"], r["link_scale"]): r for r in rows}
    bf, i4 = by[("4x1", "bf16", 1)], by[("4x1", "int4", 1)]
    if not 3.7 < bf["bytes_per_rank"] / i4["bytes_per_rank"] < 3.8 or not i4["speedup_vs_first"] > 1:
        sys.exit(f"FAILED: bf16 vs int4 rows {bf} {i4}")
    if not by[("4x1", "bf16", 2)]["comm_ms"] < bf["comm_ms"]:
        sys.exit("FAILED: faster links did not cut communication")

    out = run("--list-profiles").stdout
    for name in ("a10x4-pcie", "h100x8-ib400", "cpu-1gbe", "local"):
        if name not in out:
            sys.exit(f"FAILED: --list-profiles lacks {name}:\n{out}")
    p = run("--profile", "nope", ok=False)
    if p.returncode == 0 or "'nope'" not in p.stderr or "mi300xx8-xgmi" not in p.stderr:
        sys.exit(f"FAILED: unknown profile: rc {p.returncode}\n{p.stderr}")
    p = run("--profile", "a10x4-pcie", "--tp", "4", "--sp", "2", ok=False)
    if p.returncode == 0 or "8 ranks" not in p.stderr:
        sys.exit(f"FAILED: too many ranks: rc {p.returncode}\n{p.stderr}")
    p = run("-m", "llama-9", ok=False)
    if p.returncode == 0 or "llama-9" not in p.stderr or "llama-3-8b" not in p.stderr:
        sys.exit(f"FAILED: unknown model: rc {p.returncode}\n{p.stderr}")
    print(f"ok: {len(json.load(open(paper)))} paper figures, {len(rows)} sweep rows")
    return 0

if __name__ == "__main__":
    sys.exit(main())
