#!/usr/bin/env python3
"""`flashring perplexity --kl-divergence` and `--refine-layers` end to end on a tiny fixture model (CTest
cli.perplexity): the paired figures are consistent with the plain perplexities of separate runs, exact
communication compares equal to itself, and refinement costs bytes only with a low-bit all-reduce.

  test_cli_perplexity.py FLASHRING_BINARY FIXTURE_DIR WORK_DIR
"""
import json, math, os, subprocess, sys

def main():
    exe, fixtures, work = sys.argv[1:4]
    model = os.path.join(fixtures, "tiny-uneven.gguf")
    if not os.path.exists(model):
        print(f"skipped: {model} is missing (fixtures.models did not run)")
        return 77
    os.makedirs(work, exist_ok=True)
    text = os.path.join(work, "text.txt")
    with open(text, "w") as f:
        f.write("The quick brown fox jumps over the lazy dog. " * 40)

    def run(name, *flags):
        out = os.path.join(work, name + ".json")
        cmd = [exe, "perplexity", "-m", model, "-f", text, "-c", "32", "--chunks", "4", "--tp", "2",
               "--json", out, *flags]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            sys.exit(f"FAILED: {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
        with open(out) as f:
            return json.load(f), p.stdout

    def near(a, b, rel, what):
        if not abs(a - b) <= rel * max(abs(a), abs(b)):
            sys.exit(f"FAILED: {what}: {a!r} vs {b!r}")

    exact, _ = run("exact", "--comm", "exact")
    exact_kl, out = run("exact_kl", "--comm", "exact", "--kl-divergence")
    if "KL divergence against exact communication" not in out:
        sys.exit("FAILED: no KL report in:\n" + out)
    near(exact_kl["ppl"], exact["ppl"], 1e-5, "exact ppl from the logits vs from score()")
    if not (exact_kl["kl_divergence"] == 0 and exact_kl["ln_ppl_ratio"] == 0 and exact_kl["same_top1"] == 1):
        sys.exit(f"FAILED: exact against itself: {exact_kl}")

    q, _ = run("int4", "--comm", "int4", "--spikes", "1")
    q_kl, _ = run("int4_kl", "--comm", "int4", "--spikes", "1", "--kl-divergence")
    near(q_kl["ppl"], q["ppl"], 1e-5, "int4 ppl with and without --kl-divergence")
    near(q_kl["exact_ppl"], exact["ppl"], 1e-5, "the exact passes of --kl-divergence vs an exact run")
    near(q_kl["exact_ppl"] * math.exp(q_kl["ln_ppl_ratio"]), q_kl["ppl"], 1e-9, "exact ppl x exp(ln ratio)")
    if not (q_kl["kl_divergence"] > 0 and q_kl["ln_ppl_ratio_err"] > 0 and 0 <= q_kl["same_top1"] <= 1):
        sys.exit(f"FAILED: int4 KL figures: {q_kl}")
    # The same all-reduces; score() also gathers two floats per scored row, which the logits path does not.
    near(q_kl["wire_bytes"], q["wire_bytes"], 0.02, "wire bytes with and without --kl-divergence (the exact "
         "passes must not count)")

    # Refinement: two more all-reduces per refined layer on every window, none with exact communication.
    ef, _ = run("int4_ef", "--comm", "int4", "--spikes", "1", "--error-feedback")
    ref, _ = run("int4_ef_r1", "--comm", "int4", "--spikes", "1", "--error-feedback", "--refine-layers", "1")
    ex_r, _ = run("exact_r1", "--comm", "exact", "--refine-layers", "1")
    if ref["refine_layers"] != 1 or not ref["wire_bytes"] > ef["wire_bytes"]:
        sys.exit(f"FAILED: refinement bytes {ref['wire_bytes']} vs {ef['wire_bytes']}")
    if ex_r["wire_bytes"] != exact["wire_bytes"] or ex_r["ppl"] != exact["ppl"]:
        sys.exit("FAILED: refinement changed an exact run")
    print(f"ok: exact {exact['ppl']:.4f}, int4 {q['ppl']:.4f} (KL {q_kl['kl_divergence']:.5f}, "
          f"ln ratio {q_kl['ln_ppl_ratio']:+.5f} +/- {q_kl['ln_ppl_ratio_err']:.5f}), int4+EF {ef['ppl']:.4f}, "
          f"+refine 1 {ref['ppl']:.4f}; wire {ef['wire_bytes']:.0f} -> {ref['wire_bytes']:.0f} bytes")
    return 0

if __name__ == "__main__":
    sys.exit(main())
