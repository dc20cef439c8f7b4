#!/usr/bin/env python3
"""Codec lab: perplexity of the default model when its tensor-parallel all-reduces go through a simulated
low-bit codec, in numpy (float32), so that codec ideas can be tried in minutes before any C++ is written.

It reuses the independent float64 reference forward of tests/tools/llama_reference.py, cut Megatron-style
into T tensor-parallel partials (heads 9 over TP4 = 3/2/2/2, ffn columns split evenly), and sums the
partials with a model of the Flash two-step all-reduce: slice j of every rank's partial is encoded
(reduce-scatter codec), rank j sums them in fp32 with its own exactly, re-encodes the sum (all-gather codec)
and everyone uses the decoded result. The codec model is group-wise asymmetric min/max (fp32 scale/zero, not
the engine's bf16 ones), with k spikes per group kept exactly, optional per-group randomized Hadamard
rotation and optional MSE-searched clipping. --error-feedback carries each rank's locally known
quantization error into its next all-reduce's partial (the engine's --error-feedback, found here first).

What it showed (4 windows of 512, TP4, exact 15.2325), for the record:
  int4 g128 s2 +11.1% (the engine: +11.7% on the whole text), + Hadamard +11.3%, + MSE clip +11.0%,
  + both +9.4%; int5 s2 +1.9%; int6 s2 +0.76%; int8 s0 +0.14%. Error feedback: int4 s2 +5.0%, int5 +1.0%,
  int4 s4 +1.7% (the engine, whole text: int4 s2 +5.8% TP3 / +4.0% TP4, int5 +0.9%, int4 s4 +2.0% / +3.2%).
  Per all-reduce SQNR of int4 s2 is ~19 dB (the uniform 4-bit floor for near-Gaussian data); 1% needs ~30.
  --flush 4 (one more all-reduce of the carried errors after the last layer): int4 s2 EF +3.6%; with --rotate
  --clip +0.42% (other windows +0.83%, TP3 -0.63%); s0 +1.18%, s4 +0.57%. Gaussian Lloyd-Max levels instead of
  the uniform grid (tried, not kept): +1.60% where the uniform grid gave +0.42%. The engine, whole text:
  int4 s2 + EF + flush + rotate + clip +0.81% TP3 / +1.41% TP4.

  Every run also prints the mean KL(exact || quantized) over the scored positions: deterministic for a setting
  and far less noisy than the perplexity ratio (on 4 windows settings with the same KL differ by +-0.7% in
  perplexity). With it (TP4, int4 g128 s2 rot clip EF flush, KL 0.0188): 3 spikes 0.0158, g64 0.0123, INT5
  0.0046; Gaussian Lloyd-Max levels scaled by the group's std, 8 scales searched, 0.0159 (-16%; on Gaussian
  data -10% MSE against uniform + clipping); per-channel weighting by the sensitivity of the block that reads
  the residual next (|gamma| x column norm, w ~ s^0.25 within [1/2, 2]) 0.0155, both 0.0143. Where the KL comes
  from (only the named layers quantized; an exact all-reduce delivers the carried errors): layer 0 alone 0.0078
  (its attention all-reduce 0.0052: there the all-reduce output is nearly all of the residual), layer 1 0.0016,
  2-9 0.0032, 10-19 0.0042, 20-27 0.0021, 28-29 0.0009. Hence refinement (--refine L,L: after each all-reduce
  of those layers, all-reduce the errors just made at once): layer 0 0.0120 (-36%), layers 0-1 0.0109, 0-3
  0.0102; TP3 0.0184 -> 0.0101. Built in the engine as --refine-layers N. The engine on 21930 tokens showed the
  KL and the perplexity ratio do not fall together: refine 1 KL -32%, perplexity +1.33% -> +1.24% (TP4).

  python3 bench/engine/codec_lab.py --bits 4 --spikes 2 [--rotate] [--clip] [--error-feedback [--flush 4]] [--tp 4]
      [--weight s|sv] [--weight-power P] [--weight-clamp C] [--refine L,L]
"""
import sys, os, time, argparse
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "tools"))
import numpy as np
import llama_reference as R

def hadamard(n):
    H = np.array([[1.0]])
    while H.shape[0] < n:
        H = np.block([[H, H], [H, -H]])
    return (H / np.sqrt(n)).astype(np.float32)

def lloyd_max_gaussian(levels, iters=300):
    """Reconstruction points of the MSE-optimal scalar quantizer with `levels` levels for N(0, 1)."""
    from math import erf, sqrt, pi, exp
    x = np.linspace(-2.5, 2.5, levels)
    pdf = lambda t: exp(-t * t / 2) / sqrt(2 * pi)
    cdf = lambda t: 0.5 * (1 + erf(t / sqrt(2)))
    for _ in range(iters):
        b = np.concatenate([[-np.inf], (x[1:] + x[:-1]) / 2, [np.inf]])
        x = np.array([(pdf(b[i]) - pdf(b[i + 1])) / max(cdf(b[i + 1]) - cdf(b[i]), 1e-300)
                      for i in range(levels)])
    return x

def best_per_group(v, candidates):
    """Per group (row) of v, the decoded candidate with the least squared error (the first one on ties)."""
    best = bd = None
    for d in candidates:
        err = ((d - v) ** 2).sum(1, keepdims=True)
        if best is None:
            best, bd = err, d
        else:
            m = err < best
            best = np.where(m, err, best); bd = np.where(m, d, bd)
    return bd

class Codec:
    def __init__(self, bits=4, g=128, spikes=0, rot=False, clip=None, seed=0, levels="uniform"):
        self.bits, self.g, self.k, self.rot, self.clip = bits, g, spikes, rot, clip
        self.levels = levels
        if levels == "gauss":
            self.lm = lloyd_max_gaussian(1 << bits).astype(np.float32)
        if rot:
            rng = np.random.default_rng(seed)
            self.H = hadamard(g) * rng.choice([-1.0, 1.0], size=g).astype(np.float32)[None, :]  # H diag(s)^T.. orthogonal
    def __call__(self, x):
        if self.bits is None:
            return x
        flat = x.reshape(-1).astype(np.float32)
        n = flat.size
        g = self.g
        pad = (-n) % g
        v = np.concatenate([flat, np.zeros(pad, np.float32)]).reshape(-1, g)
        out = np.empty_like(v)
        sp_idx = None
        if self.k:
            sp_idx = np.argpartition(-np.abs(v), self.k - 1, axis=1)[:, :self.k]
            sp_val = np.take_along_axis(v, sp_idx, 1).copy()
            v = v.copy()
            np.put_along_axis(v, sp_idx, 0.0, 1)
            # zeroed spikes: the real codec excludes them from min/max; emulate by replacing with group mean of rest
            if not self.rot:
                rest_mask = np.ones_like(v, bool); np.put_along_axis(rest_mask, sp_idx, False, 1)
                mn = np.where(rest_mask, v, np.inf).min(1, keepdims=True)
                fill = mn
                np.put_along_axis(v, sp_idx, np.broadcast_to(fill, sp_idx.shape), 1)
        if self.rot:
            v = v @ self.H.T
        L = (1 << self.bits) - 1
        lo = v.min(1, keepdims=True); hi = v.max(1, keepdims=True)
        if self.levels == "gauss":
            # Gaussian Lloyd-Max levels scaled by the group's standard deviation (times a searched factor)
            mu = v.mean(1, keepdims=True)
            sd = np.maximum(v.std(1, keepdims=True), 1e-30)
            mids = (self.lm[1:] + self.lm[:-1]) / 2
            def gauss(f):
                sc = sd * f
                q = np.searchsorted(mids, ((v - mu) / sc).ravel()).reshape(v.shape)
                return mu + sc * self.lm[q]
            d = best_per_group(v, map(gauss, self.clip or [1.0]))
        elif self.clip is not None:
            def clipped(c):
                mid = (lo + hi) / 2; half = (hi - lo) / 2 * c
                l2, h2 = mid - half, mid + half
                s = np.maximum((h2 - l2) / L, 1e-30)
                return np.clip(np.round((v - l2) / s), 0, L) * s + l2
            d = best_per_group(v, map(clipped, self.clip))
        else:
            s = np.maximum((hi - lo) / L, 1e-30)
            q = np.clip(np.round((v - lo) / s), 0, L)
            d = q * s + lo
        if self.rot:
            d = d @ self.H
        if self.k:
            np.put_along_axis(d, sp_idx, sp_val, 1)
        return d.reshape(-1)[:n].reshape(x.shape)

def flash_allreduce(parts, c1, c2, with_error=False):
    """parts: list of T arrays (n, e). Two-step: slice j owned by rank j. With with_error, also returns each
    rank's locally known error (what it meant to contribute minus what the others decoded): the RS errors of
    the slices it sent, plus the AG error of the slice it owns."""
    T = len(parts)
    shape = parts[0].shape
    flat = [p.reshape(-1) for p in parts]
    M = flat[0].size
    bounds = np.linspace(0, M, T + 1).astype(int)
    out = np.empty(M, np.float32)
    err = [np.zeros(M, np.float32) for _ in range(T)] if with_error else None
    for j in range(T):
        a, b = bounds[j], bounds[j + 1]
        acc = np.zeros(b - a, np.float32)
        for r in range(T):
            sl = flat[r][a:b]
            if r == j:
                acc += sl
            else:
                d = c1(sl)
                acc += d
                if with_error:
                    err[r][a:b] += sl - d
        q = c2(acc)
        if with_error:
            err[j][a:b] += acc - q
        out[a:b] = q
    if with_error:
        return out.reshape(shape), [e.reshape(shape) for e in err]
    return out.reshape(shape)

def split(n, t):
    base, rem = divmod(n, t)
    return [base + (1 if i < rem else 0) for i in range(t)]

def sensitivity(m, site):
    """Per-channel sensitivity of the sub-block that reads the residual after all-reduce `site` (an
    (layer, 'attn'|'mlp') pair, or 'out'): |gamma_c| of its RMSNorm times the L2 norm of column c of the
    weights that read the normalized vector. With error feedback an all-reduce's error sits in the residual
    only until the next all-reduce compensates it, so only that one reader sees it."""
    W = lambda name: m.w32[name]
    if site == "out":
        g, Ws = W("output_norm.weight"), [W("token_embd.weight")]
    else:
        il, kind = site
        if kind == "attn":
            p = f"blk.{il}."
            g, Ws = W(p + "ffn_norm.weight"), [W(p + "ffn_gate.weight"), W(p + "ffn_up.weight")]
        elif il + 1 < m.hp.n_layer:
            p = f"blk.{il + 1}."
            g, Ws = W(p + "attn_norm.weight"), [W(p + n) for n in ("attn_q.weight", "attn_k.weight", "attn_v.weight")]
        else:
            g, Ws = W("output_norm.weight"), [W("token_embd.weight")]
    col = np.sqrt(sum((w.astype(np.float64) ** 2).sum(0) for w in Ws))
    return np.abs(g.astype(np.float64)) * col

def forward(m, tokens, T, c1, c2, layers_q=None, stats=None, error_feedback=False, flush=None, weights=None,
            refine=()):
    """Logits of `tokens`; layers_q(layer, 'attn'|'mlp') picks which all-reduces are quantized (None: all);
    error_feedback carries each rank's known error into its next partial."""
    hp = m.hp
    n = len(tokens)
    pos = np.arange(n)
    scale = 1.0 / np.sqrt(hp.head_dim_k)
    W = lambda name: m.w32[name]
    x = W("token_embd.weight")[tokens]
    hs = split(hp.n_head, T); hoff = np.cumsum([0] + hs)
    fs = split(hp.n_ff, T); foff = np.cumsum([0] + fs)
    dh = hp.head_dim_v
    carry = [np.zeros((n, hp.n_embd), np.float32) for _ in range(T)]

    def reduce(il, kind, parts):
        w = None if weights is None else weights[(il, kind)]
        if layers_q is not None and not layers_q(il, kind):
            # an exact all-reduce delivers the carried errors too (dropping them would leave them in the
            # residual until the next quantized all-reduce or the flush)
            y = sum(parts) + sum(carry)
            for cr in carry:
                cr[:] = 0
        elif error_feedback:
            parts = [pt + cr for pt, cr in zip(parts, carry)]
            if w is None:
                y, carry[:] = flash_allreduce(parts, c1, c2, with_error=True)
            else:
                y, e = flash_allreduce([pt * w for pt in parts], c1, c2, with_error=True)
                y = y / w
                carry[:] = [ei / w for ei in e]
        elif w is not None:
            y = flash_allreduce([pt * w for pt in parts], c1, c2) / w
        else:
            y = flash_allreduce(parts, c1, c2)
        if error_feedback and (il, kind) in refine:
            # refinement: all-reduce the errors just made right away, so that the block that reads this
            # residual sees one quantization of the error instead of the error
            r, carry[:] = flash_allreduce(carry, c1, c2, with_error=True)
            y = y + r
        if stats is not None:
            stats.append((il, kind, parts, sum(parts), y))
        return y

    for il in range(hp.n_layer):
        p = f"blk.{il}."
        h = R.rms_norm(x, W(p + "attn_norm.weight"), hp.eps)
        q = (h @ W(p + "attn_q.weight").T).reshape(n, hp.n_head, hp.head_dim_k)
        k = (h @ W(p + "attn_k.weight").T).reshape(n, hp.n_head_kv, hp.head_dim_k)
        v = (h @ W(p + "attn_v.weight").T).reshape(n, hp.n_head_kv, dh)
        q = R.rope_norm(q, pos, hp.n_rot, hp.rope_base).astype(np.float32)
        k = R.rope_norm(k, pos, hp.n_rot, hp.rope_base).astype(np.float32)
        a = R.causal_gqa_attention(q, k, v, scale).astype(np.float32)
        Wo = W(p + "attn_output.weight")
        parts = [a[:, hoff[r]*dh:hoff[r+1]*dh] @ Wo[:, hoff[r]*dh:hoff[r+1]*dh].T for r in range(T)]
        x = x + reduce(il, "attn", parts)
        h = R.rms_norm(x, W(p + "ffn_norm.weight"), hp.eps)
        g = h @ W(p + "ffn_gate.weight").T
        u = h @ W(p + "ffn_up.weight").T
        act = (R.silu(g) * u).astype(np.float32)
        Wd = W(p + "ffn_down.weight")
        parts = [act[:, foff[r]:foff[r+1]] @ Wd[:, foff[r]:foff[r+1]].T for r in range(T)]
        x = x + reduce(il, "mlp", parts)
    if error_feedback and flush is not None:
        # one more all-reduce, of the carried errors only, so that the last all-reduce's error is also fixed
        if weights is None:
            x = x + flash_allreduce(carry, flush, flush)
        else:
            w = weights["out"]
            x = x + flash_allreduce([cr * w for cr in carry], flush, flush) / w
    x = R.rms_norm(x, W("output_norm.weight"), hp.eps)
    return x @ W("token_embd.weight").T

def make_weights(m, mode, power=0.5, calib=None, clamp=None):
    """Per-channel pre-scaling w of each all-reduce site: the codec sees w * x and the result is divided by
    w, so channel c's quantization noise becomes (white noise) / w_c. mode 's': w^2 ~ s (sensitivity);
    'sv': w^2 ~ s / sqrt(v), v the channel's mean square in the exact all-reduce sums of `calib`."""
    sites = [(il, k) for il in range(m.hp.n_layer) for k in ("attn", "mlp")] + ["out"]
    v = {}
    if mode == "sv":
        st = []
        ex = Codec(bits=None)
        forward(m, calib, 1, ex, ex, stats=st)
        for il, kind, _parts, exact, _y in st:
            v[(il, kind)] = (exact.astype(np.float64) ** 2).mean(0) + 1e-12
        v["out"] = v[(m.hp.n_layer - 1, "mlp")]
    out = {}
    for site in sites:
        s = sensitivity(m, site) + 1e-6
        w2 = s ** (2 * power) if mode == "s" else s / np.sqrt(v[site])
        w = np.sqrt(w2)
        w = w / np.exp(np.log(w).mean())
        if clamp:
            w = np.clip(w, 1 / clamp, clamp)
        out[site] = w.astype(np.float32)
    return out

def load():
    m = R.LlamaModel(R.default_model_path())
    m.w32 = {}
    for name in m.tensors:
        m.w32[name] = m.weight(name).astype(np.float32)
    m._w.clear()
    return m

def tokens_of(m):
    text = open("/usr/share/common-licenses/GPL-3").read()
    return R.tokenize(m, text)

def ppl(m, toks, T, c1, c2, chunks, ctx=512, layers_q=None, error_feedback=False, flush=None, weights=None,
        ref=None, refine=()):
    """Perplexity over `chunks`; with ref (a dict filled by the exact run) also the mean KL(exact || this)
    over the scored positions, a much less noisy measure of the damage than the perplexity ratio."""
    bos = int(m.metadata("tokenizer.ggml.bos_token_id"))
    add_bos = bool(m.metadata("tokenizer.ggml.add_bos_token", False))
    first = ctx // 2
    nll, cnt, kl = 0.0, 0, 0.0
    for c in chunks:
        ch = list(toks[c*ctx:(c+1)*ctx])
        if add_bos: ch[0] = bos
        lg = forward(m, np.array(ch), T, c1, c2, layers_q, error_feedback=error_feedback,
                     flush=flush, weights=weights, refine=refine).astype(np.float64)
        rows = lg[first:ctx-1]
        mx = rows.max(1)
        lse = mx + np.log(np.exp(rows - mx[:, None]).sum(1))
        logp = rows - lse[:, None]
        if ref is not None:
            if c not in ref:
                ref[c] = logp
            else:
                kl += float((np.exp(ref[c]) * (ref[c] - logp)).sum())
        nll += float((lse - rows[np.arange(len(rows)), ch[first+1:ctx]]).sum()); cnt += len(rows)
    if ref is not None:
        ppl.kl = kl / cnt
    return float(np.exp(nll / cnt))

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, default=4, help="codec bits (both stages); 0 = exact")
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--spikes", type=int, default=2)
    ap.add_argument("--rotate", action="store_true", help="randomized Hadamard rotation per group")
    ap.add_argument("--clip", action="store_true", help="per-group MSE-searched clipping of the range")
    ap.add_argument("--levels", choices=["uniform", "gauss"], default="uniform",
                    help="gauss: Gaussian Lloyd-Max levels scaled by each group's std (with --clip: 8 scales "
                         "searched) instead of the uniform min/max grid")
    ap.add_argument("--error-feedback", action="store_true")
    ap.add_argument("--flush", type=int, default=None, metavar="BITS",
                    help="with --error-feedback: after the last layer, all-reduce the carried errors with a "
                         "BITS-bit codec (0 = exact) and add them to the residual")
    ap.add_argument("--exact-layers", default="", metavar="L,L,...",
                    help="layers whose two all-reduces stay exact (fp32), to see where the loss sits")
    ap.add_argument("--weight", choices=["s", "sv"], default=None,
                    help="pre-scale each all-reduce per channel by the sensitivity of the block that reads it "
                         "(s: w^2 ~ s; sv: w^2 ~ s/sqrt(v), v from a calibration window, see make_weights)")
    ap.add_argument("--weight-power", type=float, default=0.5, help="with --weight s: w ~ s^POWER")
    ap.add_argument("--weight-clamp", type=float, default=None, help="keep w within [1/C, C]")
    ap.add_argument("--refine", default="", metavar="L,L,...",
                    help="with --error-feedback: layers whose all-reduces are each followed at once by an "
                         "all-reduce of the errors just made (the engine's --refine-layers)")
    ap.add_argument("--tp", type=int, default=4)
    ap.add_argument("--chunks", default="0,4,8,12", help="windows of 512 of GPL-3 to score")
    ap.add_argument("--sqnr", action="store_true",
                    help="only print the SNR of every all-reduce output on the first window (median, min)")
    a = ap.parse_args()
    m = load()
    toks = tokens_of(m)
    if a.sqnr:
        c = Codec(a.bits, a.group, a.spikes, rot=a.rotate)
        ch = list(toks[0:512])
        ch[0] = int(m.metadata("tokenizer.ggml.bos_token_id"))
        ex = Codec(bits=None)
        st = []
        forward(m, np.array(ch), a.tp, ex, ex, stats=st)
        db = []
        for _il, _kind, parts, exact, _y in st:
            y = flash_allreduce(parts, c, c)
            e = exact.astype(np.float64)
            db.append(10 * np.log10(float((e ** 2).sum()) / float(((y - e) ** 2).sum())))
        print(f"int{a.bits} g{a.group} s{a.spikes}: SNR of the {len(db)} all-reduce outputs: median "
              f"{np.median(db):.1f} dB, min {min(db):.1f} dB")
        return
    chunks = [int(c) for c in a.chunks.split(",")]
    ex = Codec(bits=None)
    t = time.time()
    ref = {}
    base = ppl(m, toks, a.tp, ex, ex, chunks, ref=ref)
    print(f"exact {base:.4f} ({time.time() - t:.1f} s)", flush=True)
    if a.bits == 0:
        return
    gauss_scales = [0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2]
    c = Codec(a.bits, a.group, a.spikes, rot=a.rotate, levels=a.levels,
              clip=(gauss_scales if a.levels == "gauss" else [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7]) if a.clip
              else None)
    t = time.time()
    fl = None
    if a.flush is not None:
        fl = Codec(bits=None) if a.flush == 0 else Codec(a.flush, a.group, a.spikes)
    exact_layers = {int(v) for v in a.exact_layers.split(",") if v}
    layers_q = (lambda il, _kind: il not in exact_layers) if exact_layers else None
    weights = None
    if a.weight:
        calib = list(toks[13*512:14*512])
        calib[0] = int(m.metadata("tokenizer.ggml.bos_token_id"))
        weights = make_weights(m, a.weight, a.weight_power, np.array(calib), a.weight_clamp)
    refine = {(int(v), k) for v in a.refine.split(",") if v for k in ("attn", "mlp")}
    p = ppl(m, toks, a.tp, c, c, chunks, layers_q=layers_q, error_feedback=a.error_feedback, flush=fl,
            weights=weights, ref=ref, refine=refine)
    print(f"int{a.bits} g{a.group} s{a.spikes}{' rot' if a.rotate else ''}{' clip' if a.clip else ''}"
          f"{' EF' if a.error_feedback else ''}{'' if fl is None else f' flush{a.flush}'}{f' exact L{a.exact_layers}' if exact_layers else ''}{f' weight {a.weight}' if a.weight else ''}{f' refine {a.refine}' if refine else ''}: {p:.4f} ({100 * (p / base - 1):+.2f}%, KL {ppl.kl:.5f}, {time.time() - t:.1f} s)")


if __name__ == "__main__":
    main()
