#!/usr/bin/env python3
"""Writes tiny random LLaMA GGUF models and their float64 reference outputs (test fixtures).

  make_tiny_models.py OUTDIR

For each variant NAME (tiny-f32, tiny-quant, tiny-uneven, tiny-mha, tiny-q5, tiny-kquant):
  OUTDIR/NAME.gguf          arch "llama", byte-level BPE ("gpt2") tokenizer metadata
  OUTDIR/NAME.logits.f32    raw little-endian float32 [37, n_vocab]: logits at every position of the
                            fixed 37-token sequence, from llama_reference.py's float64 forward pass on the
                            GGUF as written (so quantized weights are what the reference sees)
  OUTDIR/NAME.json          {"tokens", "n_vocab", "argmax", "command", "hparams", "tensor_types"}
  OUTDIR/NAME.greedy.json   {"prompt": first 9 tokens, "continuation": 16 greedy ids, "margins": top1-top2
                            logit at each step, "min_margin", "tokens": prompt + continuation}
Everything is deterministic (fixed seeds). Without numpy or gguf it prints
"make_tiny_models: skipped: <reason>" and exits 0 (the C++ tests then skip with a message).
"""

from __future__ import annotations

import json
import os
import shlex
import sys

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as QT
    from gguf.quants import quantize
except Exception as e:  # ImportError, or a broken install
    print(f"make_tiny_models: skipped: {type(e).__name__}: {e}")
    sys.exit(0)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # noqa: E402

N_TOKENS = 37
N_PROMPT = 9
N_PREDICT = 16
BOS_ID = 256
EOS_ID = 257

# name -> shape and storage types. "types" maps a tensor role to its GGML type; roles: embd, attn_q,
# attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down (others: "default"); output: the type of a
# separate output.weight, None = tied to token_embd.
#
# Scales: token_embd ~ N(0, 1); matrices ~ N(0, 1/in), so every matmul input (RMS-normed) and output is
# O(1); attn_output and ffn_down are multiplied by "gain" and output.weight by "out_gain". Without the
# gain a tied head just echoes the input token (the token's own embedding dominates the residual stream:
# 97-100% of argmaxes were the input token and greedy decoding repeated one token); out_gain gives the
# separate head logits of std ~8 like the tied ones. The seeds were picked (out of 40) for greedy
# continuations with at least 4 distinct tokens and a large smallest top1-top2 margin (greedy.json's
# min_margin: 0.7..1.0), so that a float32 engine reproduces them without near-ties.
VARIANTS = {
    "tiny-f32": dict(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=96, n_vocab=300,
                     rope_base=10000.0, eps=1e-5, default=QT.F32, types={}, output=None,
                     gain=6.0, out_gain=1.0, seed=24),
    "tiny-quant": dict(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=96, n_vocab=300,
                       rope_base=10000.0, eps=1e-5, default=QT.Q4_1,
                       types={"embd": QT.Q8_0, "attn_v": QT.Q4_0}, output=QT.F16,
                       gain=3.0, out_gain=8.0, seed=14),
    "tiny-uneven": dict(n_layer=3, n_embd=96, n_head=6, n_head_kv=2, head_dim=16, n_ff=160, n_vocab=300,
                        rope_base=500000.0, eps=1e-5, default=QT.F32, types={}, output=None,
                        gain=6.0, out_gain=1.0, seed=0),
    "tiny-mha": dict(n_layer=2, n_embd=128, n_head=4, n_head_kv=4, head_dim=32, n_ff=256, n_vocab=300,
                     rope_base=10000.0, eps=1e-5, default=QT.F16, types={"embd": QT.F16}, output=None,
                     gain=6.0, out_gain=1.0, seed=1),
    # The other 32-value types the engine runs: Q5_0 / Q5_1 / Q8_0 / BF16 (quantized by gguf).
    "tiny-q5": dict(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=96, n_vocab=300,
                    rope_base=10000.0, eps=1e-5, default=QT.Q5_0,
                    types={"embd": QT.BF16, "attn_v": QT.Q5_1, "ffn_down": QT.Q8_0, "attn_output": QT.Q5_1},
                    output=QT.Q5_1, gain=3.0, out_gain=8.0, seed=0),
    # K-quants as Q4_K_M files mix them (rows of 256). gguf cannot quantize K-quants, so their blocks are
    # crafted: random codes and sub-block scales, the fp16 super-block scales set so that the dequantized
    # weights have the RMS of the float weights (craft_kquant). With 4 heads of 64 the row-parallel
    # slices of TP >= 2 do not fall on 256-value blocks: the loader's f32 repacking runs.
    "tiny-kquant": dict(n_layer=2, n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_ff=512, n_vocab=300,
                        rope_base=10000.0, eps=1e-5, default=QT.Q4_K,
                        types={"embd": QT.Q6_K, "attn_v": QT.Q6_K, "ffn_down": QT.Q5_K}, output=QT.Q6_K,
                        gain=3.0, out_gain=8.0, seed=13),
    # A type the engine does not run (Q2_K, random blocks) in one matrix: loading must fail naming it.
    "tiny-badtype": dict(n_layer=1, n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_ff=256, n_vocab=300,
                         rope_base=10000.0, eps=1e-5, default=QT.F16, types={"attn_q": QT.Q2_K}, output=None,
                         gain=3.0, out_gain=1.0, seed=0),
}

KQUANTS = (QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q2_K)


def craft_kquant(a: np.ndarray, qtype, rng) -> np.ndarray:
    """Random K-quant blocks for a (rows, cols) weight whose dequantized RMS matches a's: uniform random bytes,
    then every block's fp16 d (and dmin) set from a's RMS (dmin so that the mean is about 0)."""
    from gguf.quants import dequantize
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = a.shape
    nb = rows * cols // block
    raw = rng.integers(0, 256, size=(nb, nbytes), dtype=np.uint8)
    d_off = 208 if qtype == QT.Q6_K else 0  # Q6_K: ql, qh, scales, then d; Q4_K/Q5_K: d, dmin first
    mean_code = {QT.Q4_K: 7.5, QT.Q5_K: 15.5}.get(qtype, 0.0)
    if qtype == QT.Q2_K:
        return raw.reshape(rows, -1)  # only for a file that must be refused

    def set_scales(d):
        raw[:, d_off:d_off + 2] = np.frombuffer(np.full(nb, d, np.float16).tobytes(), np.uint8).reshape(nb, 2)
        if qtype != QT.Q6_K:
            dm = np.full(nb, d * mean_code, np.float16)
            raw[:, 2:4] = np.frombuffer(dm.tobytes(), np.uint8).reshape(nb, 2)

    set_scales(1.0)
    unit = np.asarray(dequantize(raw.reshape(rows, -1), qtype), dtype=np.float64)
    target = float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))
    set_scales(target / max(float(np.std(unit)), 1e-30))
    return raw.reshape(rows, -1)

# Merged tokens after the 256 byte tokens and <s> </s>, each with the merge that makes it (in rank order);
# both halves of every merge are tokens defined before it.
MERGES = [
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("r", "e"),
    ("Ġ", "s"), ("a", "t"), ("e", "n"), ("Ġ", "o"), ("Ġ", "w"), ("n", "d"), ("Ġa", "nd"), ("i", "s"),
    ("Ġ", "i"), ("e", "s"), ("o", "r"), ("Ġ", "c"), ("i", "t"), ("Ġ", "f"), ("Ġ", "p"), ("a", "n"),
    ("Ġ", "b"), ("Ġo", "f"), ("in", "g"), ("Ġ", "m"), ("o", "u"), ("a", "l"), ("Ġ", "d"), ("Ġt", "o"),
    ("Ġi", "n"), ("l", "l"), ("e", "d"), ("Ġ", "h"), ("Ġt", "h"), ("a", "r"), ("l", "e"), ("a", "s"),
    ("Ġi", "s"), ("o", "m"), ("Ġ", "l"), ("i", "c"), ("Ġ", "y"), ("Ġy", "ou"), ("Ġ", "n"), ("Ġ", "e"),
]


def bytes_to_unicode() -> list[str]:
    """GPT-2's byte-alphabet characters in bytes_to_unicode() order (GPT-2's vocab ids 0..255): the
    printable bytes '!'..'~', '¡'..'¬', '®'..'ÿ' as themselves, then the other bytes (0..32, 127..160,
    173) as chr(256 + n); so byte b has token id order.index(b), e.g. ' ' is 'Ġ' with id 220."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]  # in bytes_to_unicode order: bs[i] -> chr(cs[i])


def vocabulary(n_vocab: int):
    tokens = bytes_to_unicode()  # ids 0..255
    assert len(tokens) == 256 and BOS_ID == 256 and EOS_ID == 257
    tokens += ["<s>", "</s>"]
    known = set(tokens)
    merges = []
    for a, b in MERGES:
        if len(tokens) >= n_vocab:
            break
        assert a in known and b in known, (a, b)
        tokens.append(a + b)
        known.add(a + b)
        merges.append(f"{a} {b}")
    assert len(tokens) == n_vocab, f"{len(tokens)} tokens for n_vocab {n_vocab}: add merges"
    types = [gguf.TokenType.NORMAL] * n_vocab
    types[BOS_ID] = types[EOS_ID] = gguf.TokenType.CONTROL
    return tokens, types, merges


def role_type(v: dict, role: str):
    return v["types"].get(role, v["default"])


def add_matrix(w: gguf.GGUFWriter, name: str, a: np.ndarray, qtype, rng=None) -> None:
    """a is numpy (rows=out, cols=in): GGUF dims {in, out}."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if qtype in KQUANTS:
        w.add_tensor(name, craft_kquant(a, qtype, rng), raw_dtype=qtype)
    elif qtype == QT.F32:
        w.add_tensor(name, a)
    elif qtype == QT.F16:
        w.add_tensor(name, a.astype(np.float16))
    else:
        w.add_tensor(name, quantize(a, qtype), raw_dtype=qtype)


def make_weights(v: dict) -> dict[str, np.ndarray]:
    """Random float32 weights, numpy (out, in): N(0, 1/in) (times the gains, see VARIANTS), norms ~ 1."""
    rng = np.random.default_rng(1000 + v["seed"])
    e, hd, ff = v["n_embd"], v["head_dim"], v["n_ff"]
    nq, nkv = v["n_head"] * hd, v["n_head_kv"] * hd

    def mat(out, inp, gain=1.0):
        return (rng.standard_normal((out, inp)) * (gain / np.sqrt(inp))).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    ws = {"token_embd.weight": rng.standard_normal((v["n_vocab"], e)).astype(np.float32)}
    for il in range(v["n_layer"]):
        p = f"blk.{il}."
        ws[p + "attn_norm.weight"] = norm(e)
        ws[p + "attn_q.weight"] = mat(nq, e)
        ws[p + "attn_k.weight"] = mat(nkv, e)
        ws[p + "attn_v.weight"] = mat(nkv, e)
        ws[p + "attn_output.weight"] = mat(e, nq, v["gain"])
        ws[p + "ffn_norm.weight"] = norm(e)
        ws[p + "ffn_gate.weight"] = mat(ff, e)
        ws[p + "ffn_up.weight"] = mat(ff, e)
        ws[p + "ffn_down.weight"] = mat(e, ff, v["gain"])
    ws["output_norm.weight"] = norm(e)
    if v["output"] is not None:
        ws["output.weight"] = mat(v["n_vocab"], e, v["out_gain"])
    return ws


def tensor_type(v: dict, name: str):
    if name.endswith("norm.weight"):
        return QT.F32
    if name == "token_embd.weight":
        return role_type(v, "embd")
    if name == "output.weight":
        return v["output"]
    return role_type(v, name.split(".")[2])


def write_gguf(path: str, name: str, v: dict, ws: dict[str, np.ndarray]) -> None:
    tokens, types, merges = vocabulary(v["n_vocab"])
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_context_length(256)
    w.add_block_count(v["n_layer"])
    w.add_embedding_length(v["n_embd"])
    w.add_feed_forward_length(v["n_ff"])
    w.add_head_count(v["n_head"])
    w.add_head_count_kv(v["n_head_kv"])
    if v["head_dim"] != v["n_embd"] // v["n_head"]:
        w.add_key_length(v["head_dim"])
        w.add_value_length(v["head_dim"])
    w.add_rope_dimension_count(v["head_dim"])
    w.add_rope_freq_base(v["rope_base"])
    w.add_layer_norm_rms_eps(v["eps"])
    w.add_vocab_size(v["n_vocab"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    krng = np.random.default_rng(5000 + v["seed"])
    for tname, a in ws.items():
        add_matrix(w, tname, a, tensor_type(v, tname), krng)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def fixed_tokens(n_vocab: int) -> list[int]:
    rng = np.random.default_rng(7)
    return [BOS_ID] + [int(t) for t in rng.integers(0, n_vocab, N_TOKENS - 1)]


def make_variant(outdir: str, name: str, v: dict, command: str) -> None:
    path = os.path.join(outdir, name + ".gguf")
    tmp = path + ".tmp"
    ws = make_weights(v)
    write_gguf(tmp, name, v, ws)
    os.replace(tmp, path)

    model = ref.LlamaModel(path)
    hp = model.hp
    assert (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv, hp.head_dim_k, hp.n_ff, hp.n_vocab) == (
        v["n_layer"], v["n_embd"], v["n_head"], v["n_head_kv"], v["head_dim"], v["n_ff"], v["n_vocab"])
    tokens = fixed_tokens(hp.n_vocab)
    logits = model.forward(tokens)
    extra = {
        "model": name + ".gguf",
        "hparams": {k: getattr(hp, k) for k in hp.__dataclass_fields__},
        "tied_output": model.tied,
        "tensor_types": {t.name: t.tensor_type.name for t in model.reader.tensors},
    }
    ref.write_logits(os.path.join(outdir, name), tokens, logits, command, extra)

    prompt = tokens[:N_PROMPT]
    cont, margins = model.greedy(prompt, N_PREDICT)
    greedy_path = os.path.join(outdir, name + ".greedy.json")
    with open(greedy_path + ".tmp", "w") as f:
        json.dump({"prompt": prompt, "n_predict": N_PREDICT, "continuation": cont,
                   "tokens": prompt + cont, "margins": margins, "min_margin": min(margins),
                   "command": command}, f, indent=1)
        f.write("\n")
    os.replace(greedy_path + ".tmp", greedy_path)
    print(f"make_tiny_models: {name}: {path}, argmax[:8] {np.argmax(logits, axis=1)[:8].tolist()}, "
          f"greedy {cont}, min margin {min(margins):.3f}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: make_tiny_models.py OUTDIR", file=sys.stderr)
        return 2
    outdir = argv[0]
    os.makedirs(outdir, exist_ok=True)
    command = shlex.join(["python3", sys.argv[0]] + argv)
    for name, v in VARIANTS.items():
        make_variant(outdir, name, v, command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
