#!/usr/bin/env python3
"""Independent float64 numpy reference of llama.cpp's LLaMA forward pass on a GGUF file.

Reads the file with gguf.GGUFReader, dequantizes every weight with gguf.quants.dequantize and computes
in float64. Nothing here shares code with the C++ engine; it exists so the engine has an independent
figure to be compared with.

The forward pass, as llama.cpp's build_llama computes it (arch "llama"):

  x = token_embd[tokens]
  per layer:  h = rms_norm(x, attn_norm)
              q, k, v = h Wq^T, h Wk^T, h Wv^T          (GGUF dims {in, out} = numpy (out, in))
              q, k = rope_norm(q, pos), rope_norm(k, pos)
              x += attn_output(causal GQA softmax(q k^T / sqrt(head_dim)) v)
              h = rms_norm(x, ffn_norm)
              x += ffn_down(silu(ffn_gate h) * ffn_up h)
  logits = rms_norm(x, output_norm) (output.weight, or token_embd when the model ties them)^T

RoPE is llama.cpp's rope type NORM for arch llama (llama_model_rope_type in src/llama-model.cpp: "use
what we call a normal RoPE, operating on pairs of consecutive head values"): ggml's CPU rope rotates
(x[2i], x[2i+1]) by pos * base^(-2i/n_rot) (rotate_pairs(n_dims, 1, ...), theta_scale =
base^(-2/n_dims)); dims past n_rot are copied. The GGUF q/k rows are in that interleaved order because
convert_hf_to_gguf.py's LlamaModel.permute reorders HF's rotate-half rows (reshape(n_head, 2, d/2, in)
.swapaxes(1, 2)). GQA: query head h reads kv head h // (n_head / n_head_kv) (ggml mul_mat broadcast).

CLI:
  llama_reference.py MODEL --tokens 1,2,3 --out PREFIX     PREFIX.logits.f32 + PREFIX.json
  llama_reference.py MODEL --tokens 1,2,3 --greedy 16      greedy continuation (token ids)
  llama_reference.py MODEL --text "The capital of France is" --greedy 8
  llama_reference.py MODEL --perplexity FILE [--ctx 512] [--chunks 1]
MODEL may be "default": $FLASHRING_MODEL, else <dir>/SmolLM2-135M-Instruct.Q4_1.gguf with <dir> one of
$FLASHRING_MODEL_DIR, $XDG_CACHE_HOME/flashring/models, ~/.cache/flashring/models.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import dataclass

# One BLAS thread: the matrices here are small, and on a shared 2-core machine OpenBLAS's threads wait on
# each other (a 5x576 @ 576x1536 product took 48 ms with 2 threads against 2 ms with 1).
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

try:
    import numpy as np
    import gguf
    from gguf.quants import dequantize
    _IMPORT_ERROR = None
except Exception as _e:  # reported by main(); importers (make_tiny_models.py) check for themselves
    _IMPORT_ERROR = _e

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """The same search as include/flashring/model_path.h."""
    m = os.environ.get("FLASHRING_MODEL")
    if m:
        return m
    d = os.environ.get("FLASHRING_MODEL_DIR")
    if not d:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(cache, "flashring", "models")
    return os.path.join(d, DEFAULT_MODEL_FILE)


@dataclass
class Hparams:
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_rot: int
    rope_base: float
    eps: float
    n_vocab: int


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _scalar(v):
    # per-layer arrays (allowed by llama.cpp for head counts and n_ff) must be uniform here
    if isinstance(v, list):
        if len(set(v)) != 1:
            raise ValueError(f"per-layer hyperparameter arrays are not supported: {v}")
        return v[0]
    return v


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x * 1/sqrt(mean(x^2) + eps) * w, over the last axis (ggml_rms_norm then ggml_mul)."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_norm(x: np.ndarray, pos: np.ndarray, n_rot: int, base: float) -> np.ndarray:
    """llama.cpp rope type NORM on x of shape (n_tokens, n_heads, head_dim): rotates the adjacent pairs
    (x[2i], x[2i+1]), i < n_rot/2, by pos * base^(-2i/n_rot); dims >= n_rot are left as they are."""
    half = n_rot // 2
    inv_freq = np.power(float(base), -2.0 * np.arange(half, dtype=np.float64) / n_rot)
    ang = np.asarray(pos, dtype=np.float64)[:, None] * inv_freq[None, :]  # (n, half)
    cos = np.cos(ang)[:, None, :]
    sin = np.sin(ang)[:, None, :]
    x0 = x[..., 0:n_rot:2]
    x1 = x[..., 1:n_rot:2]
    out = np.array(x, dtype=np.float64, copy=True)
    out[..., 0:n_rot:2] = x0 * cos - x1 * sin
    out[..., 1:n_rot:2] = x0 * sin + x1 * cos
    return out


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def causal_gqa_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """q (n, H, d), k (n, Hkv, d), v (n, Hkv, dv) -> (n, H*dv); query i sees keys 0..i."""
    n, n_head, _ = q.shape
    n_head_kv = k.shape[1]
    group = n_head // n_head_kv
    kv_of = np.arange(n_head) // group
    kk = k[:, kv_of, :]
    vv = v[:, kv_of, :]
    s = np.einsum("qhd,khd->hqk", q, kk) * scale
    future = np.triu(np.ones((n, n), dtype=bool), k=1)
    s = np.where(future[None, :, :], -np.inf, s)
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    o = np.einsum("hqk,khd->qhd", p, vv)
    return o.reshape(n, n_head * v.shape[2])


class LlamaModel:
    """A GGUF LLaMA model held as float64 numpy weights (dequantized on first use, then cached)."""

    def __init__(self, path: str, cache_weights: bool = True):
        self.path = path
        self.reader = gguf.GGUFReader(path)
        r = self.reader
        arch = _field(r, "general.architecture")
        if arch != "llama":
            raise ValueError(f"{path}: general.architecture is {arch!r}, expected 'llama'")
        self.tensors = {t.name: t for t in r.tensors}
        n_embd = int(_field(r, f"{arch}.embedding_length"))
        n_head = int(_scalar(_field(r, f"{arch}.attention.head_count")))
        n_head_kv = int(_scalar(_field(r, f"{arch}.attention.head_count_kv", n_head)))
        head_dim_k = int(_field(r, f"{arch}.attention.key_length", n_embd // n_head))
        head_dim_v = int(_field(r, f"{arch}.attention.value_length", n_embd // n_head))
        tok = self.tensors["token_embd.weight"]
        self.hp = Hparams(
            arch=arch,
            n_layer=int(_field(r, f"{arch}.block_count")),
            n_embd=n_embd,
            n_ff=int(_scalar(_field(r, f"{arch}.feed_forward_length"))),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim_k=head_dim_k,
            head_dim_v=head_dim_v,
            n_rot=int(_field(r, f"{arch}.rope.dimension_count", head_dim_k)),
            rope_base=float(_field(r, f"{arch}.rope.freq_base", 10000.0)),
            eps=float(_field(r, f"{arch}.attention.layer_norm_rms_epsilon")),
            n_vocab=int(tok.shape[1]),
        )
        if n_head % n_head_kv != 0:
            raise ValueError(f"n_head {n_head} is not a multiple of n_head_kv {n_head_kv}")
        if int(tok.shape[0]) != n_embd:
            raise ValueError(f"token_embd.weight dims {list(tok.shape)} do not match n_embd {n_embd}")
        self.tied = "output.weight" not in self.tensors
        self._cache_weights = cache_weights
        self._w: dict[str, np.ndarray] = {}

    def weight(self, name: str) -> np.ndarray:
        """The tensor as float64 numpy, GGUF dims reversed: a matrix with GGUF dims {in, out} is (out, in)."""
        w = self._w.get(name)
        if w is not None:
            return w
        t = self.tensors[name]
        shape = tuple(int(d) for d in reversed(list(t.shape)))
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(shape)
        if self._cache_weights:
            self._w[name] = w
        return w

    def forward(self, tokens, last_only: bool = False) -> np.ndarray:
        """Logits (float64) at every position, shape (n_tokens, n_vocab); (1, n_vocab) if last_only."""
        hp = self.hp
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or len(tokens) == 0:
            raise ValueError("tokens must be a non-empty 1-D sequence")
        if tokens.min() < 0 or tokens.max() >= hp.n_vocab:
            raise ValueError(f"token ids must be in [0, {hp.n_vocab})")
        n = len(tokens)
        pos = np.arange(n)
        scale = 1.0 / np.sqrt(hp.head_dim_k)
        x = self.weight("token_embd.weight")[tokens]  # (n, n_embd)
        for il in range(hp.n_layer):
            p = f"blk.{il}."
            h = rms_norm(x, self.weight(p + "attn_norm.weight"), hp.eps)
            q = (h @ self.weight(p + "attn_q.weight").T).reshape(n, hp.n_head, hp.head_dim_k)
            k = (h @ self.weight(p + "attn_k.weight").T).reshape(n, hp.n_head_kv, hp.head_dim_k)
            v = (h @ self.weight(p + "attn_v.weight").T).reshape(n, hp.n_head_kv, hp.head_dim_v)
            q = rope_norm(q, pos, hp.n_rot, hp.rope_base)
            k = rope_norm(k, pos, hp.n_rot, hp.rope_base)
            a = causal_gqa_attention(q, k, v, scale)
            x = x + a @ self.weight(p + "attn_output.weight").T
            h = rms_norm(x, self.weight(p + "ffn_norm.weight"), hp.eps)
            g = h @ self.weight(p + "ffn_gate.weight").T
            u = h @ self.weight(p + "ffn_up.weight").T
            x = x + (silu(g) * u) @ self.weight(p + "ffn_down.weight").T
        if last_only:
            x = x[-1:]
        x = rms_norm(x, self.weight("output_norm.weight"), hp.eps)
        head = self.weight("token_embd.weight" if self.tied else "output.weight")
        return x @ head.T

    def greedy(self, tokens, n_predict: int):
        """Greedy continuation (recomputing the whole prefix each step). Returns (ids, margins), the margin
        being top1 - top2 logit at each step (how robust the argmax is to rounding)."""
        seq = list(int(t) for t in tokens)
        out, margins = [], []
        for _ in range(n_predict):
            logits = self.forward(seq, last_only=True)[0]
            top2 = np.argsort(logits)[-2:]
            nxt = int(top2[1])
            margins.append(float(logits[top2[1]] - logits[top2[0]]))
            out.append(nxt)
            seq.append(nxt)
        return out, margins

    def metadata(self, key: str, default=None):
        return _field(self.reader, key, default)


def write_logits(prefix: str, tokens, logits: np.ndarray, command: str, extra: dict | None = None) -> None:
    """PREFIX.logits.f32: raw little-endian float32 [n_tokens, n_vocab]; PREFIX.json describes it."""
    d = os.path.dirname(prefix)
    if d:
        os.makedirs(d, exist_ok=True)
    # written under temporary names, then renamed: a reader never sees a half-written fixture
    logits.astype("<f4").tofile(prefix + ".logits.f32.tmp")
    meta = {
        "tokens": [int(t) for t in tokens],
        "n_vocab": int(logits.shape[1]),
        "argmax": [int(i) for i in np.argmax(logits, axis=1)],
        "command": command,
    }
    if extra:
        meta.update(extra)
    with open(prefix + ".json.tmp", "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    os.replace(prefix + ".logits.f32.tmp", prefix + ".logits.f32")
    os.replace(prefix + ".json.tmp", prefix + ".json")


# ---------------------------------------------------------------- tokenization (optional, for --text)


def build_tokenizer(model: LlamaModel):
    """A byte-level BPE tokenizer built with the PyPI `tokenizers` package from the GGUF's own
    tokenizer.ggml.tokens / merges (model "gpt2"). Pre-tokenization: GPT-2's byte-level regex, preceded
    by single-digit splitting for pre "smollm" (as llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM and HF's
    SmolLM tokenizer.json do). Special (control) tokens are not parsed in text, as llama-perplexity's
    tokenization does not parse them either."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    kind = model.metadata("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"tokenizer.ggml.model {kind!r}: only byte-level BPE ('gpt2') is supported here")
    tokens = model.metadata("tokenizer.ggml.tokens")
    merges = model.metadata("tokenizer.ggml.merges")
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    pre = model.metadata("tokenizer.ggml.pre", "gpt2")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm",):
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("gpt2", "default"):
        tk.pre_tokenizer = byte_level
    else:
        raise ValueError(f"tokenizer.ggml.pre {pre!r} is not supported here")
    tk.decoder = decoders.ByteLevel()
    return tk


def tokenize(model: LlamaModel, text: str, add_bos: bool | None = None) -> list[int]:
    tk = build_tokenizer(model)
    ids = tk.encode(text, add_special_tokens=False).ids
    if add_bos is None:
        add_bos = bool(model.metadata("tokenizer.ggml.add_bos_token", False))
    if add_bos:
        ids = [int(model.metadata("tokenizer.ggml.bos_token_id"))] + ids
    return ids


def detokenize(model: LlamaModel, ids) -> str:
    return build_tokenizer(model).decode([int(i) for i in ids], skip_special_tokens=False)


# ---------------------------------------------------------------- perplexity, llama-perplexity's way


def perplexity(model: LlamaModel, tokens, n_ctx: int, n_chunks: int = -1):
    """llama-perplexity's perplexity(): chunks of n_ctx tokens; when the vocab adds BOS, the first token
    of each chunk is replaced by BOS; with first = n_ctx/2, the logits at positions first..n_ctx-2
    score the tokens at first+1..n_ctx-1 (n_ctx - 1 - first tokens a chunk, 255 for n_ctx 512).
    Returns (ppl, nll_mean, n_scored, per-chunk running ppl)."""
    tokens = list(tokens)
    n_chunk = len(tokens) // n_ctx
    if n_chunks >= 0:
        n_chunk = min(n_chunk, n_chunks)
    if n_chunk < 1:
        raise ValueError(f"need at least {n_ctx} tokens, have {len(tokens)}")
    add_bos = bool(model.metadata("tokenizer.ggml.add_bos_token", False))
    bos = model.metadata("tokenizer.ggml.bos_token_id")
    first = n_ctx // 2
    nll, count, running = 0.0, 0, []
    for c in range(n_chunk):
        chunk = tokens[c * n_ctx:(c + 1) * n_ctx]
        if add_bos:
            chunk[0] = int(bos)
        logits = model.forward(chunk)
        for i in range(first, n_ctx - 1):
            row = logits[i]
            m = row.max()
            lse = m + np.log(np.exp(row - m).sum())
            nll += lse - row[chunk[i + 1]]
            count += 1
        running.append(float(np.exp(nll / count)))
    return float(np.exp(nll / count)), nll / count, count, running


# ---------------------------------------------------------------- CLI


def _parse_ids(s: str) -> list[int]:
    return [int(t) for t in s.replace(" ", "").split(",") if t != ""]


def _outputs_fresh(prefix: str, inputs: list[str], tokens, model_path: str) -> bool:
    """PREFIX's outputs exist, are newer than every input file, and are for these tokens and model."""
    outs = [prefix + ".logits.f32", prefix + ".json"]
    if not all(os.path.exists(p) for p in outs):
        return False
    newest_in = max(os.path.getmtime(p) for p in inputs if os.path.exists(p))
    if min(os.path.getmtime(p) for p in outs) <= newest_in:
        return False
    try:
        with open(prefix + ".json") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return meta.get("tokens") == list(tokens) and meta.get("model_path") == os.path.abspath(model_path)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help='GGUF file, or "default" for the default model (see --help text)')
    ap.add_argument("--tokens", help="comma-separated token ids")
    ap.add_argument("--text", help="text to tokenize with the GGUF vocab (needs the PyPI `tokenizers`)")
    ap.add_argument("--out", help="write PREFIX.logits.f32 and PREFIX.json (logits at every position)")
    ap.add_argument("--greedy", type=int, default=0, metavar="N", help="print a greedy continuation of N tokens")
    ap.add_argument("--perplexity", metavar="FILE", help="llama-perplexity-style perplexity of FILE's text")
    ap.add_argument("--ctx", type=int, default=512, help="context size for --perplexity (default 512)")
    ap.add_argument("--chunks", type=int, default=1, help="chunks for --perplexity (default 1, -1 = all)")
    ap.add_argument("--skip-missing", action="store_true",
                    help="exit 0 with a message when MODEL, numpy or gguf is absent")
    ap.add_argument("--reuse", action="store_true",
                    help="with --out: do nothing when the outputs exist and are newer than this script and MODEL")
    args = ap.parse_args(argv)
    command = shlex.join(["python3", sys.argv[0]] + list(argv))

    if _IMPORT_ERROR is not None:
        why = f"{type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}"
        if args.skip_missing:
            print(f"llama_reference: skipped: {why}")
            return 0
        print(f"llama_reference: needs numpy and the PyPI gguf package: {why}", file=sys.stderr)
        return 2
    path = default_model_path() if args.model == "default" else args.model
    if not os.path.exists(path):
        if args.skip_missing:
            print(f"llama_reference: skipped: model {path} not found")
            return 0
        print(f"llama_reference: model {path} not found", file=sys.stderr)
        return 2
    if (args.out and args.reuse and args.tokens
            and _outputs_fresh(args.out, [path, os.path.abspath(__file__)], _parse_ids(args.tokens), path)):
        print(f"llama_reference: {args.out}.logits.f32 is up to date")
        return 0

    model = LlamaModel(path)
    hp = model.hp
    print(f"llama_reference: {path}: {hp.n_layer} layers, n_embd {hp.n_embd}, heads {hp.n_head}/{hp.n_head_kv}, "
          f"head_dim {hp.head_dim_k}, n_ff {hp.n_ff}, vocab {hp.n_vocab}, rope base {hp.rope_base:g}, "
          f"eps {hp.eps:g}, {'tied' if model.tied else 'separate'} output")

    tokens = None
    if args.tokens:
        tokens = _parse_ids(args.tokens)
    elif args.text is not None:
        tokens = tokenize(model, args.text)
        print(f"tokens: {','.join(str(t) for t in tokens)}")

    if args.out:
        if tokens is None:
            ap.error("--out needs --tokens or --text")
        logits = model.forward(tokens)
        write_logits(args.out, tokens, logits, command,
                     {"model": os.path.basename(path), "model_path": os.path.abspath(path)})
        print(f"wrote {args.out}.logits.f32 ({len(tokens)} x {hp.n_vocab}) and {args.out}.json; "
              f"argmax {[int(i) for i in np.argmax(logits, axis=1)]}")

    if args.greedy > 0:
        if tokens is None:
            ap.error("--greedy needs --tokens or --text")
        ids, margins = model.greedy(tokens, args.greedy)
        print(f"greedy: {','.join(str(t) for t in ids)}")
        print(f"min top1-top2 margin: {min(margins):.4f}")
        try:
            print(f"text: {detokenize(model, tokens)!r} + {detokenize(model, ids)!r}")
        except Exception as e:  # tokenizers absent or unsupported vocab: ids are the result
            print(f"(no detokenization: {e})")

    if args.perplexity:
        with open(args.perplexity, encoding="utf-8") as f:
            text = f.read()
        toks = tokenize(model, text)
        ppl, nll, count, running = perplexity(model, toks, args.ctx, args.chunks)
        print(f"perplexity: {len(toks)} tokens in {args.perplexity}; n_ctx {args.ctx}, "
              f"{len(running)} chunk(s), {count} scored tokens")
        print("running: " + ",".join(f"[{i + 1}]{p:.4f}" for i, p in enumerate(running)))
        print(f"PPL = {ppl:.4f} (mean NLL {nll:.6f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
