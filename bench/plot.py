#!/usr/bin/env python3
"""Turn flashring benchmark JSON into PNG plots.

    python3 bench/plot.py RESULTS.json [MORE.json ...] [--out DIR]

All-reduce JSON (rows with "algo"): latency vs message size and speed-up over the baseline vs size, one
line per algorithm (and per link label/transport when several files are given).
Attention JSON (rows with "scheme"): time vs sequence length (one panel per GQA ratio) and time vs GQA
ratio (one panel per sequence length), one line per scheme, predicted times dashed.
TTFT JSON (`flashring bench ttft`, rows with "bench": "ttft"): stacked compute / quantization /
communication bars per grid and codec, TTFT and speed-up over the grid's first codec written on top.
Simulate JSON (`flashring simulate --json`, rows with "bench": "simulate"): predicted compute / quantization /
communication bars per grid and codec, one panel per link-rate scale, TTFT and speed-up over the grid's first codec
on top (`--paper --json` rows, "bench": "simulate-paper": model / published ratio per figure, the +-25% band shaded).
Simulate-check JSON (`bench/simulate_check.sh --json`, rows with "bench": "simulate_check"): predicted / measured
per configuration, the +-15% band shaded.
Perplexity JSON (`flashring perplexity --json`, one object per file, or arrays of them): perplexity vs
group size, one line per (codec, TP degree), exact communication as a horizontal line.
"""
import argparse
import json
import os
import sys


def load(paths):
    rows = []
    for p in paths:
        with open(p) as f:
            data = json.load(f)
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            sys.exit(f"plot.py: {p}: expected a JSON object or an array of rows")
        label = os.path.splitext(os.path.basename(p))[0]
        for r in data:
            r.setdefault("_file", label)
            rows.append(r)
    return rows


def fmt_size(b):
    for unit, div in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if b >= div:
            return f"{b / div:g}{unit}"
    return str(b)


def plot_allreduce(rows, out, multi):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for r in rows:
        key = r["algo"] + (f" [{r['_file']}]" if multi else "")
        series.setdefault(key, []).append(r)
    baseline = rows[0].get("baseline", "")
    fig1, ax1 = plt.subplots(figsize=(8, 5))
    fig2, ax2 = plt.subplots(figsize=(8, 5))
    for key, rs in sorted(series.items()):
        rs.sort(key=lambda r: r["bytes"])
        xs = [r["bytes"] for r in rs]
        ax1.plot(xs, [r["time_us"] for r in rs], marker="o", label=key)
        ax2.plot(xs, [r.get("speedup", 0) for r in rs], marker="o", label=key)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("message size (bytes of fp32)")
        ticks = sorted({r["bytes"] for r in rows})
        ax.set_xticks(ticks)
        ax.set_xticklabels([fmt_size(t) for t in ticks], rotation=45)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    r0 = rows[0]
    title = f"all-reduce, {r0.get('ranks')} ranks, {r0.get('transport')}" + (f", {r0['link']}" if r0.get("link") else "")
    ax1.set_yscale("log")
    ax1.set_ylabel("time (us, median)")
    ax1.set_title(title)
    ax2.set_ylabel(f"speed-up over {baseline}")
    ax2.axhline(1.0, color="gray", lw=0.8)
    ax2.set_title(title)
    paths = [os.path.join(out, "allreduce_latency.png"), os.path.join(out, "allreduce_speedup.png")]
    fig1.tight_layout()
    fig1.savefig(paths[0], dpi=110)
    fig2.tight_layout()
    fig2.savefig(paths[1], dpi=110)
    return paths


def plot_attention(rows, out, multi):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def label(r):
        name = r["scheme"] if r["scheme"] != "auto" else f"auto ({r.get('ran', '?')})"
        return name + (f" [{r['_file']}]" if multi else "")

    def scheme_key(r):
        return r["scheme"] + (f" [{r['_file']}]" if multi else "")

    r0 = rows[0]
    title = (f"attention, {r0.get('ranks')} ranks, {r0.get('transport')}, H={r0.get('heads')} d={r0.get('head_dim')}"
             + (", causal" if r0.get("causal") else "") + f", {r0.get('layout')}"
             + (f", {r0['link']}" if r0.get("link") else ""))
    paths = []
    for xkey, group_key, xlabel, fname in (
        ("seq", "kv_heads", "sequence length", "attention_vs_seq.png"),
        ("gqa", "seq", "GQA ratio (heads / kv_heads)", "attention_vs_gqa.png"),
    ):
        for r in rows:
            r["gqa"] = r["heads"] // max(1, r["kv_heads"])
        groups = sorted({r[group_key] for r in rows})
        fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
        for ax, gv in zip(axes[0], groups):
            series = {}
            for r in rows:
                if r[group_key] == gv:
                    series.setdefault(scheme_key(r), []).append(r)
            for key, rs in sorted(series.items()):
                rs.sort(key=lambda r: r[xkey])
                xs = [r[xkey] for r in rs]
                line, = ax.plot(xs, [r["time_us"] / 1e3 for r in rs], marker="o", label=key)
                if any(r.get("predicted_us", 0) > 0 for r in rs) and rs[0]["scheme"] != "auto":
                    ax.plot(xs, [r.get("predicted_us", 0) / 1e3 for r in rs], ls="--", color=line.get_color(), alpha=0.6)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("time (ms, median; dashed: cost model)")
            ax.set_title(f"{group_key} = {gv}", fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
            if xkey == "seq":
                ax.set_xscale("log", base=2)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = os.path.join(out, fname)
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def plot_ttft(rows, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = sorted({r.get("_file", "") for r in rows})
    paths = []
    for link in links:
        rs = [r for r in rows if r.get("_file", "") == link]
        labels = [f"{r['grid']}\n{r['comm']}" for r in rs]
        comp = [r["compute_ms"] / 1e3 for r in rs]
        quant = [r["quant_ms"] / 1e3 for r in rs]
        comm = [r["comm_ms"] / 1e3 for r in rs]
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rs) + 2), 4.5))
        x = range(len(rs))
        ax.bar(x, comp, label="compute")
        ax.bar(x, quant, bottom=comp, label="quantization")
        ax.bar(x, comm, bottom=[a + b for a, b in zip(comp, quant)], label="communication (waiting)")
        for i, r in enumerate(rs):
            ax.text(i, r["ttft_ms"] / 1e3, f"{r['ttft_ms'] / 1e3:.2f}s\n{r['speedup_vs_first']:.2f}x",
                    ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("seconds (mean over ranks; label: TTFT of the slowest rank)")
        ax.set_title(f"TTFT, {rs[0]['prompt_tokens']}-token prompt, {rs[0]['transport']} ({link})", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out, f"ttft_{link}.png")
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def plot_simulate(rows, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key in sorted({(r["profile"], r["model"], r["prompt_tokens"], r["batch"]) for r in rows}):
        profile, model, prompt, batch = key
        rs_all = [r for r in rows if (r["profile"], r["model"], r["prompt_tokens"], r["batch"]) == key]
        scales = sorted({r.get("link_scale", 1) for r in rs_all})
        fig, axes = plt.subplots(1, len(scales), figsize=(max(6, 0.8 * len(rs_all) / len(scales) + 2) * len(scales), 4.8),
                                 squeeze=False)
        for ax, sc in zip(axes[0], scales):
            rs = [r for r in rs_all if r.get("link_scale", 1) == sc]
            x = list(range(len(rs)))
            comp = [r["compute_ms"] for r in rs]
            quant = [r["quant_ms"] for r in rs]
            comm = [r["comm_ms"] for r in rs]
            ax.bar(x, comp, label="compute")
            ax.bar(x, quant, bottom=comp, label="quantization")
            ax.bar(x, comm, bottom=[a + b for a, b in zip(comp, quant)], label="communication")
            for i, r in enumerate(rs):
                ax.text(i, r["ttft_ms"], f"{r['ttft_ms']:.0f}\n{r['speedup_vs_first']:.2f}x" + ("" if r["fits"] else "\n!mem"),
                        ha="center", va="bottom", fontsize=7)
            ax.set_xticks(x)
            ax.set_xticklabels([f"{r['grid']}\n{r['comm']}" for r in rs], fontsize=7)
            ax.set_ylabel("predicted ms (label: TTFT, speed-up over the grid's first codec)")
            ax.set_title(f"links x{sc:g}", fontsize=9)
            ax.legend(fontsize=7)
        fig.suptitle(f"flashring simulate: {model} on {profile}, batch {batch}, {prompt}-token prompt", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out, f"simulate_{profile}_{model}_{prompt}.png".replace("/", "_"))
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def plot_simulate_paper(rows, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    y = list(range(len(rows)))
    ax.axvspan(0.75, 1.25, color="green", alpha=0.12, label="+-25%")
    ax.barh(y, [r["ratio"] for r in rows], color=["tab:green" if r["reproduced"] else "tab:red" for r in rows])
    ax.axvline(1.0, color="gray", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([r["figure"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("model / published")
    ax.set_title("flashring simulate --paper", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "simulate_paper.png")
    fig.savefig(path, dpi=110)
    return [path]


def plot_simulate_check(rows, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("predicted_ms") and r.get("measured_ms")]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    y = list(range(len(rows)))
    ratio = [r["predicted_ms"] / r["measured_ms"] for r in rows]
    ax.axvspan(0.85, 1.15, color="green", alpha=0.12, label="+-15%")
    ax.barh(y, ratio, color=["tab:green" if abs(x - 1) <= 0.15 else "tab:red" for x in ratio])
    ax.axvline(1.0, color="gray", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([r["config"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("predicted / measured")
    ax.set_title("bench/simulate_check.sh: flashring simulate against measurement", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "simulate_check.png")
    fig.savefig(path, dpi=110)
    return [path]


def plot_ppl(rows, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    exact = [r for r in rows if r["comm"] in ("exact", "twostep-fp32")]
    gmin = min((r["group_size"] for r in rows if r not in exact), default=32)
    for tp in sorted({r["tp"] for r in rows}):
        for e in [r for r in exact if r["tp"] == tp]:
            ax.axhline(e["ppl"], linestyle=":", color="gray")
            ax.text(gmin, e["ppl"], f" exact, tp {tp}", va="bottom", fontsize=8, color="gray")
        for comm in sorted({r["comm"] for r in rows} - {"exact", "twostep-fp32"}):
            def key(r):
                return (r.get("spikes", 0), bool(r.get("error_feedback", False)),
                        bool(r.get("rotate", False)) and bool(r.get("clip", False)), int(r.get("refine_layers", 0)))
            for spikes, ef, rc, rf in sorted({key(r) for r in rows}):
                pts = sorted((r["group_size"], r["ppl"]) for r in rows
                             if r["tp"] == tp and r["comm"] == comm and key(r) == (spikes, ef, rc, rf))
                if pts:
                    lab = (f"{comm}, tp {tp}" + (f", {spikes} spikes/group" if spikes else "")
                           + (", error feedback" if ef else "") + (", rotate+clip" if rc else "")
                           + (f", refine {rf}" if rf else ""))
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lab)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("group size")
    ax.set_ylabel("perplexity")
    ax.set_title("Perplexity vs quantization group size of the TP all-reduce", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "perplexity_vs_group.png")
    fig.savefig(path, dpi=110)
    return [path]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="benchmark JSON files written with --json")
    ap.add_argument("--out", default=None, help="output directory (default: next to the first JSON file)")
    a = ap.parse_args()
    rows = load(a.json)
    if not rows:
        sys.exit("plot.py: no rows in the input")
    out = a.out or os.path.dirname(os.path.abspath(a.json[0]))
    os.makedirs(out, exist_ok=True)
    if all("algo" in r for r in rows):
        paths = plot_allreduce(rows, out, len(a.json) > 1)
    elif all("scheme" in r for r in rows):
        paths = plot_attention(rows, out, len(a.json) > 1)
    elif all(r.get("bench") == "ttft" for r in rows):
        paths = plot_ttft(rows, out)
    elif all(r.get("bench") == "simulate" for r in rows):
        paths = plot_simulate(rows, out)
    elif all(r.get("bench") == "simulate-paper" for r in rows):
        paths = plot_simulate_paper(rows, out)
    elif all(r.get("bench") == "simulate_check" for r in rows):
        paths = plot_simulate_check(rows, out)
    elif all("ppl" in r for r in rows):
        paths = plot_ppl(rows, out)
    else:
        sys.exit("plot.py: unknown row type (expected all-reduce rows with 'algo' or attention rows with 'scheme')")
    for p in paths:
        print(p)


if __name__ == "__main__":
    main()
