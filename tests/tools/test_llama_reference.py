#!/usr/bin/env python3
"""Checks that the test tools are right (CTest: tools.llama_reference).

  * llama_reference.LlamaModel.forward (vectorized, weights read back from the GGUF) against a second,
    deliberately naive forward pass written here: per-position loops, an explicit causal mask, RoPE as
    an explicit 2x2 rotation of each adjacent pair, GQA by explicit head index, and the weights taken
    from the arrays make_tiny_models generated (not from the file): max |diff| <= 1e-9 on tiny-f32 and
    tiny-uneven;
  * RoPE at position 0 is the identity, rotation by pos*theta_i as a complex product, and
    <rope(q, m), rope(k, n)> depends only on m - n;
  * rope type NORM on convert_hf_to_gguf.py-permuted q rows equals HF's rotate-half RoPE on the
    original rows (the reason GGUF LLaMA models use NORM);
  * the GGUF round trip: every tensor of tiny-f32 read back by GGUFReader is bit-identical to what
    was written; tiny-quant's quantized tensors read back as the bytes gguf.quants.quantize gave;
  * the tokenizer metadata is a consistent byte-level BPE vocabulary.
Exit code 77 (CTest SKIP_RETURN_CODE) when numpy or gguf is missing.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile

try:
    import numpy as np
    import gguf  # noqa: F401
except Exception as e:
    print(f"test_llama_reference: skipped: {type(e).__name__}: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # noqa: E402
import make_tiny_models as mk  # noqa: E402

failures: list[str] = []


def check(cond: bool, what: str) -> None:
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        failures.append(what)


# ------------------------------------------------------------------ the naive forward pass


def naive_forward(ws: dict, v: dict, tokens: list[int]) -> np.ndarray:
    n_embd, hd, nh, nkv = v["n_embd"], v["head_dim"], v["n_head"], v["n_head_kv"]
    eps, base = v["eps"], v["rope_base"]
    W = {k: np.asarray(a, dtype=np.float64) for k, a in ws.items()}
    n = len(tokens)

    def rmsnorm(vec, w):
        ss = 0.0
        for t in vec:
            ss += t * t
        return np.array([vec[i] / math.sqrt(ss / len(vec) + eps) * w[i] for i in range(len(vec))])

    def matvec(m, vec):  # m is (out, in); one position at a time
        return m.dot(vec)

    def rope(vec, pos):  # one head: rotate (vec[2i], vec[2i+1]) by pos * base^(-2i/hd)
        out = vec.copy()
        for i in range(hd // 2):
            theta = pos * base ** (-2.0 * i / hd)
            c, s = math.cos(theta), math.sin(theta)
            a, b = vec[2 * i], vec[2 * i + 1]
            out[2 * i] = a * c - b * s
            out[2 * i + 1] = a * s + b * c
        return out

    x = [W["token_embd.weight"][t].copy() for t in tokens]
    for il in range(v["n_layer"]):
        p = f"blk.{il}."
        qs, ks, vs = [], [], []
        for pos in range(n):
            h = rmsnorm(x[pos], W[p + "attn_norm.weight"])
            q = matvec(W[p + "attn_q.weight"], h)
            k = matvec(W[p + "attn_k.weight"], h)
            val = matvec(W[p + "attn_v.weight"], h)
            qs.append([rope(q[hh * hd:(hh + 1) * hd], pos) for hh in range(nh)])
            ks.append([rope(k[hh * hd:(hh + 1) * hd], pos) for hh in range(nkv)])
            vs.append([val[hh * hd:(hh + 1) * hd] for hh in range(nkv)])
        new_x = []
        for pos in range(n):
            heads = []
            for hh in range(nh):
                kvh = hh * nkv // nh  # heads hh of a group of nh/nkv share one kv head
                assert kvh == hh // (nh // nkv)
                scores = []
                for j in range(n):
                    masked = j > pos
                    s = -math.inf if masked else float(np.dot(qs[pos][hh], ks[j][kvh])) / math.sqrt(hd)
                    scores.append(s)
                m = max(scores)
                e = [0.0 if s == -math.inf else math.exp(s - m) for s in scores]
                z = sum(e)
                o = np.zeros(hd)
                for j in range(n):
                    o += (e[j] / z) * vs[j][kvh]
                heads.append(o)
            attn = np.concatenate(heads)
            xr = x[pos] + matvec(W[p + "attn_output.weight"], attn)
            h = rmsnorm(xr, W[p + "ffn_norm.weight"])
            g = matvec(W[p + "ffn_gate.weight"], h)
            u = matvec(W[p + "ffn_up.weight"], h)
            act = np.array([gi / (1.0 + math.exp(-gi)) * ui for gi, ui in zip(g, u)])
            new_x.append(xr + matvec(W[p + "ffn_down.weight"], act))
        x = new_x
    head = W["output.weight"] if "output.weight" in W else W["token_embd.weight"]
    return np.array([matvec(head, rmsnorm(x[pos], W["output_norm.weight"])) for pos in range(n)])


# ------------------------------------------------------------------ RoPE facts


def check_rope() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 3, 16))
    check(np.array_equal(ref.rope_norm(x, np.array([0]), 16, 10000.0), x), "rope at position 0 is the identity")

    pos, base, d = 7, 10000.0, 16
    y = ref.rope_norm(x, np.array([pos]), d, base)
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * pos * base ** (-2.0 * np.arange(d // 2) / d))
    check(np.max(np.abs(y[..., 0::2] - z.real)) < 1e-12 and np.max(np.abs(y[..., 1::2] - z.imag)) < 1e-12,
          "rope rotates adjacent pairs (x[2i], x[2i+1]) by pos * base^(-2i/d)")

    # partial rotation: dims past n_rot are copied
    yp = ref.rope_norm(x, np.array([pos]), 8, base)
    check(np.array_equal(yp[..., 8:], x[..., 8:]), "rope with n_rot < head_dim leaves the tail alone")

    q, k = rng.standard_normal((1, 1, d)), rng.standard_normal((1, 1, d))
    dots = [float(np.sum(ref.rope_norm(q, np.array([m]), d, base) * ref.rope_norm(k, np.array([m - 3]), d, base)))
            for m in (3, 10, 50)]
    check(max(dots) - min(dots) < 1e-9, "<rope(q, m), rope(k, m-3)> does not depend on m")

    # HF rotate-half RoPE on the HF q rows == NORM RoPE on the rows as convert_hf_to_gguf permutes them
    n_head, hd, n_in = 3, 8, 12
    w_hf = rng.standard_normal((n_head * hd, n_in))
    w_gguf = w_hf.reshape(n_head, 2, hd // 2, n_in).swapaxes(1, 2).reshape(w_hf.shape)  # LlamaModel.permute
    xin = rng.standard_normal((5, n_in))
    posv = np.arange(5) * 11
    q_hf = (xin @ w_hf.T).reshape(5, n_head, hd)
    inv = base ** (-2.0 * np.arange(hd // 2) / hd)
    ang = posv[:, None, None] * np.concatenate([inv, inv])[None, None, :]
    rot_half = np.concatenate([-q_hf[..., hd // 2:], q_hf[..., :hd // 2]], axis=-1)
    q_hf_roped = q_hf * np.cos(ang) + rot_half * np.sin(ang)
    q_gguf_roped = ref.rope_norm((xin @ w_gguf.T).reshape(5, n_head, hd), posv, hd, base)
    # the permutation maps HF dim j*(hd/2)+i to GGUF dim 2i+j
    back = q_gguf_roped.reshape(5, n_head, hd // 2, 2).swapaxes(2, 3).reshape(5, n_head, hd)
    check(np.max(np.abs(back - q_hf_roped)) < 1e-12,
          "NORM rope on permuted q rows == HF rotate-half rope on the original rows")


# ------------------------------------------------------------------ GGUF round trip and tokenizer


def check_roundtrip(tmp: str) -> None:
    v = mk.VARIANTS["tiny-f32"]
    ws = mk.make_weights(v)
    path = os.path.join(tmp, "rt-f32.gguf")
    mk.write_gguf(path, "rt-f32", v, ws)
    r = gguf.GGUFReader(path)
    got = {t.name: t for t in r.tensors}
    check(set(got) == set(ws), "tiny-f32 holds exactly the tensors written (no output.weight: tied)")
    exact = all(got[k].tensor_type == gguf.GGMLQuantizationType.F32 and
                np.array_equal(np.asarray(got[k].data).reshape(a.shape), a) and
                [int(d) for d in got[k].shape] == list(reversed(a.shape)) for k, a in ws.items())
    check(exact, "tiny-f32 tensors read back bit-identical, GGUF dims {in, out} = numpy (out, in) reversed")
    m = ref.LlamaModel(path)
    check(all(np.array_equal(m.weight(k), a.astype(np.float64)) for k, a in ws.items()),
          "LlamaModel.weight returns the written values as (out, in)")

    tokens = ref._field(r, "tokenizer.ggml.tokens")
    merges = ref._field(r, "tokenizer.ggml.merges")
    types = ref._field(r, "tokenizer.ggml.token_type")
    ok = (len(tokens) == v["n_vocab"] == len(types) and tokens[mk.BOS_ID] == "<s>" and tokens[mk.EOS_ID] == "</s>"
          and types[mk.BOS_ID] == types[mk.EOS_ID] == 3 and sum(t != 1 for t in types) == 2
          and len(set(tokens)) == len(tokens) and tokens[:256] == mk.bytes_to_unicode()
          and tokens[256 + 2:] == [mm.replace(" ", "") for mm in merges]
          and ref._field(r, "tokenizer.ggml.model") == "gpt2" and ref._field(r, "tokenizer.ggml.add_bos_token") is True)
    check(ok, "tokenizer metadata: 256 byte tokens, <s> </s> control at 256/257, one merge per merged token")
    b2u = mk.bytes_to_unicode()
    check(sorted(b2u) == sorted(set(b2u)) and b2u[tokens.index("Ġ")] == "Ġ" and tokens.index("!") == 0
          and tokens.index("Ġ") == 220, "byte alphabet in GPT-2 order ('!' is 0, 'Ġ' (space) is 220)")

    vq = mk.VARIANTS["tiny-quant"]
    wq = mk.make_weights(vq)
    pq = os.path.join(tmp, "rt-quant.gguf")
    mk.write_gguf(pq, "rt-quant", vq, wq)
    rq = {t.name: t for t in gguf.GGUFReader(pq).tensors}
    same = True
    for k, a in wq.items():
        qt = mk.tensor_type(vq, k)
        t = rq[k]
        if t.tensor_type != qt:
            same = False
        elif qt == gguf.GGMLQuantizationType.F16:
            same &= np.array_equal(np.asarray(t.data).reshape(a.shape), a.astype(np.float16))
        elif qt != gguf.GGMLQuantizationType.F32:
            same &= np.array_equal(np.asarray(t.data), gguf.quants.quantize(a, qt).reshape(np.asarray(t.data).shape))
    check(same, "tiny-quant tensors have the intended types (Q8_0 embd, Q4_1/Q4_0, F16 output) and bytes")


# ------------------------------------------------------------------ main


def main() -> int:
    check_rope()
    with tempfile.TemporaryDirectory() as tmp:
        check_roundtrip(tmp)
        for name in ("tiny-f32", "tiny-uneven"):
            v = mk.VARIANTS[name]
            ws = mk.make_weights(v)
            path = os.path.join(tmp, name + ".gguf")
            mk.write_gguf(path, name, v, ws)
            tokens = mk.fixed_tokens(v["n_vocab"])
            fast = ref.LlamaModel(path).forward(tokens)
            slow = naive_forward(ws, v, tokens)
            diff = float(np.max(np.abs(fast - slow)))
            check(diff <= 1e-9, f"{name}: vectorized forward == naive forward (max |diff| {diff:.2e})")
            last = ref.LlamaModel(path).forward(tokens, last_only=True)
            check(np.array_equal(last[0], fast[-1]) or float(np.max(np.abs(last[0] - fast[-1]))) <= 1e-12,
                  f"{name}: last_only gives the last row")
            # causality: the logits of a prefix do not depend on what follows
            pre = ref.LlamaModel(path).forward(tokens[:10])
            check(float(np.max(np.abs(pre - fast[:10]))) <= 1e-10, f"{name}: logits of a prefix ignore later tokens")
    if failures:
        print(f"test_llama_reference: {len(failures)} check(s) failed")
        return 1
    print("test_llama_reference: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
