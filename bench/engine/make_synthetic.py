#!/usr/bin/env python3
"""Writes a deterministic random-weight GGUF shaped like LLaMA-2-7B, for engine benchmarks at 7B scale.

    python3 bench/engine/make_synthetic.py --type q4_0      # -> ~/.cache/flashring/synthetic/llama2-7b-synthetic-q4_0.gguf
    python3 bench/engine/make_synthetic.py --type q4_k_m    # -> .../llama2-7b-synthetic-q4_k_m.gguf
    python3 bench/engine/make_synthetic.py --check FILE     # print the tensor types/shapes and weight statistics

Shape: LLaMA-2-7B (arch "llama"): 4096 dims, 32 layers, 32 heads (32 KV heads, head dim 128), 11008 FFN,
32000 vocab, rope base 10000, rms eps 1e-5, context 4096. Tensors are named as llama.cpp names them
(token_embd.weight, blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,ffn_gate,ffn_up,ffn_down}.weight,
output_norm.weight, output.weight) and written in llama.cpp's convert order.

Tensor types mimic what llama.cpp's llama-quantize assigns (llama_tensor_get_type_impl in src/llama-quant.cpp
of the llama.cpp vendored by llama-cpp-python 0.3.36) for a model with an untied output.weight and no imatrix:
  * 1-D tensors (the norms) are never quantized: F32 (tensor_allows_quantization).
  * output.weight: Q6_K for every ftype whose default type is not Q8_0 when ne[0] % QK_K == 0
    ("else if (new_type != GGML_TYPE_Q8_0) new_type = GGML_TYPE_Q6_K;" in the OUTPUT branch).
  * token_embd.weight keeps the ftype's default type (Q4_0 / Q4_K): the TOKEN_EMBD branch only changes the
    IQ*/TQ* ftypes.
  * --type q4_0 (LLAMA_FTYPE_MOSTLY_Q4_0 = 2): every other matrix Q4_0. The only Q4_0 special case, ffn_down
    -> Q4_1 in the first n_layer/8 layers, applies only with an imatrix, so it is not taken.
  * --type q4_k_m (LLAMA_FTYPE_MOSTLY_Q4_K_M = 15): every other matrix Q4_K, except attn_v and ffn_down in the
    layers picked by
        auto use_more_bits = [](int i_layer, int n_layers) -> bool {
            return i_layer < n_layers/8 || i_layer >= 7*n_layers/8 || (i_layer - n_layers/8)%3 == 2;
        };
    ("else if ((ftype == LLAMA_FTYPE_MOSTLY_Q4_K_M || ...) && use_more_bits(qs.i_attention_wv,
    qs.n_attention_wv)) new_type = GGML_TYPE_Q6_K;" for attn_v, "if (use_more_bits(i_layer, n_layer))
    new_type = GGML_TYPE_Q6_K;" for ffn_down), which are Q6_K. For 32 layers: 0-3, 6, 9, ..., 27, 28-31
    (16 layers).

The data is random block bytes, not quantized real weights: every block's codes (and Q4_K's packed 6-bit
scales/mins, Q6_K's int8 sub-block scales) are uniform random bytes, and the fp16 super-scales are drawn as
N(0, sigma^2) with sigma chosen so that the dequantized weights have an RMS of 1/sqrt(ne0) (ne0 = the input
dimension of the matrix): y = W x keeps the scale of x, so activations stay bounded through 32 layers
(norm weights are 1; Q4_K's dmin is 7.5 d, which centres its sub-blocks on average). Each tensor is drawn from
its own numpy Generator (PCG64) seeded from a hash of (--seed, tensor name): deterministic, and any one tensor
can be regenerated alone.

Tokenizer: llama.cpp and flashring's engine both need one (flashring reads a byte-level BPE, "gpt2"). It is
taken from --tokenizer-from (default: the default model, SmolLM2-135M-Instruct): its first 32000 tokens, only the
merges whose two parts and result are all among them, its token types, special-token ids (checked < 32000),
pre-tokenizer type and chat template.

Written tensor by tensor through gguf's GGUFWriter (add_tensor_info, then write_tensor_data per tensor), each
tensor filled in chunks of rows: peak memory is about one tensor (<= 110 MB) plus the tokenizer. The file is
written as FILE.tmp and renamed when complete; when FILE already exists with the expected size and the same
metadata bytes it is left alone (--force rewrites it).
"""
import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as QT
except ImportError:  # pragma: no cover
    sys.exit("make_synthetic: the PyPI package 'gguf' is needed (pip install gguf; scripts/install-deps.sh installs it)")

CACHE = Path(os.environ.get("FLASHRING_CACHE", Path.home() / ".cache" / "flashring"))
DEFAULT_TOKENIZER = CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT_DIR = CACHE / "synthetic"

# LLaMA-2-7B hyper-parameters.
N_EMBD, N_LAYER, N_HEAD, N_HEAD_KV, N_FF, N_VOCAB, N_CTX = 4096, 32, 32, 32, 11008, 32000, 4096
ROPE_BASE, RMS_EPS = 10000.0, 1e-5

FTYPES = {"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}

QK_K = 256
# Block layouts (ggml-common.h): elements per block, bytes per block.
BLOCK = {QT.Q4_0: (32, 18), QT.Q4_K: (QK_K, 144), QT.Q6_K: (QK_K, 210)}
# RMS of the dequantized weight per unit of d, for uniform random codes / sub-scales (E[(w/d)^2]^0.5):
#   Q4_0: w = d (q - 8), q in 0..15:                         E[(q-8)^2] = 21.5
#   Q4_K: w = d sc q - dmin m, dmin = 7.5 d, sc/m/q uniform: E[sc^2]E[q^2] - 15 E[sc]E[q]E[m] + 56.25 E[m^2]
#         = 1333.5*77.5 - 15*31.5*7.5*31.5 + 56.25*1333.5 = 66727.3
#   Q6_K: w = d sc (q - 32), sc int8, q in 0..63:            E[sc^2] E[(q-32)^2] = 5461.5 * 341.5
CODE_RMS = {QT.Q4_0: 21.5**0.5, QT.Q4_K: 66727.3**0.5, QT.Q6_K: (5461.5 * 341.5) ** 0.5}
Q4_K_DMIN_OVER_D = 7.5


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp src/llama-quant.cpp, llama_tensor_get_type_impl (same integer arithmetic)."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def tensor_plan(kind: str, n_layer: int):
    """[(name, numpy shape (rows, ne0), type)] in llama.cpp's convert order."""
    base = QT.Q4_0 if kind == "q4_0" else QT.Q4_K
    hd = N_EMBD // N_HEAD
    plan = [("token_embd.weight", (N_VOCAB, N_EMBD), base)]
    for i in range(n_layer):
        p = f"blk.{i}."
        more = kind == "q4_k_m" and use_more_bits(i, n_layer)
        plan += [
            (p + "attn_norm.weight", (N_EMBD,), QT.F32),
            (p + "attn_q.weight", (N_HEAD * hd, N_EMBD), base),
            (p + "attn_k.weight", (N_HEAD_KV * hd, N_EMBD), base),
            (p + "attn_v.weight", (N_HEAD_KV * hd, N_EMBD), QT.Q6_K if more else base),
            (p + "attn_output.weight", (N_EMBD, N_HEAD * hd), base),
            (p + "ffn_norm.weight", (N_EMBD,), QT.F32),
            (p + "ffn_gate.weight", (N_FF, N_EMBD), base),
            (p + "ffn_up.weight", (N_FF, N_EMBD), base),
            (p + "ffn_down.weight", (N_EMBD, N_FF), QT.Q6_K if more else base),
        ]
    plan += [("output_norm.weight", (N_EMBD,), QT.F32), ("output.weight", (N_VOCAB, N_EMBD), QT.Q6_K)]
    return plan


def nbytes_of(shape, qtype) -> int:
    if qtype == QT.F32:
        return 4 * int(np.prod(shape))
    epb, bpb = BLOCK[qtype]
    rows, ne0 = shape
    assert ne0 % epb == 0, (shape, qtype)
    return rows * (ne0 // epb) * bpb


def generator(seed: int, name: str) -> np.random.Generator:
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(h[:16], "little")))


def fill_blocks(rng: np.random.Generator, out: np.ndarray, qtype, sigma: float) -> None:
    """out: (n_blocks, bytes_per_block) uint8, filled in place: random codes, fp16 scales ~ N(0, sigma^2)."""
    n = out.shape[0]
    flat = out.reshape(-1)
    raw = rng.bit_generator.random_raw((flat.size + 7) // 8)  # uint64, fast
    flat[:] = raw.view(np.uint8)[: flat.size]
    del raw
    d = (rng.standard_normal(n, dtype=np.float32) * np.float32(sigma)).astype(np.float16)
    if qtype == QT.Q4_0:  # {fp16 d; uint8 qs[16]}
        out[:, 0:2] = d.view(np.uint8).reshape(n, 2)
    elif qtype == QT.Q4_K:  # {fp16 d; fp16 dmin; uint8 scales[12]; uint8 qs[128]}
        dmin = (d.astype(np.float32) * np.float32(Q4_K_DMIN_OVER_D)).astype(np.float16)
        out[:, 0:2] = d.view(np.uint8).reshape(n, 2)
        out[:, 2:4] = dmin.view(np.uint8).reshape(n, 2)
    elif qtype == QT.Q6_K:  # {uint8 ql[128]; uint8 qh[64]; int8 scales[16]; fp16 d}
        out[:, 208:210] = d.view(np.uint8).reshape(n, 2)
    else:
        raise ValueError(qtype)


def make_tensor(seed: int, name: str, shape, qtype, chunk_bytes: int = 16 << 20) -> np.ndarray:
    rng = generator(seed, name)
    if qtype == QT.F32:
        return np.ones(shape, dtype=np.float32)  # norm weights
    epb, bpb = BLOCK[qtype]
    rows, ne0 = shape
    blocks_per_row = ne0 // epb
    sigma = 1.0 / (CODE_RMS[qtype] * np.sqrt(ne0))
    data = np.empty((rows, blocks_per_row * bpb), dtype=np.uint8)
    step = max(1, chunk_bytes // data.shape[1])
    for r0 in range(0, rows, step):
        part = data[r0 : r0 + step].reshape(-1, bpb)
        fill_blocks(rng, part, qtype, sigma)
    return data


def load_tokenizer(path: Path, n_vocab: int) -> dict:
    if not path.is_file():
        sys.exit(f"make_synthetic: tokenizer source {path} not found (--tokenizer-from; `make deps` fetches the default)")
    r = gguf.GGUFReader(str(path))

    def field(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    model = field("tokenizer.ggml.model")
    if model != "gpt2":
        sys.exit(f"make_synthetic: {path}: tokenizer.ggml.model is {model!r}; a byte-level BPE ('gpt2') is needed")
    tokens = field("tokenizer.ggml.tokens")
    if len(tokens) < n_vocab:
        sys.exit(f"make_synthetic: {path} has {len(tokens)} tokens, fewer than {n_vocab}")
    tokens = tokens[:n_vocab]
    kept = set(tokens)
    types = field("tokenizer.ggml.token_type")
    merges = []
    for m in field("tokenizer.ggml.merges", []):
        pos = m.find(" ", 1)  # as llama.cpp splits a merge
        if pos < 0:
            continue
        a, b = m[:pos], m[pos + 1 :]
        if a in kept and b in kept and (a + b) in kept:
            merges.append(m)
    tok = {
        "pre": field("tokenizer.ggml.pre", "default"),
        "tokens": tokens,
        "types": None if types is None else [int(t) for t in types[:n_vocab]],
        "merges": merges,
        "add_bos": field("tokenizer.ggml.add_bos_token"),
        "add_space_prefix": field("tokenizer.ggml.add_space_prefix"),
        "chat_template": field("tokenizer.chat_template"),
        "ids": {},
    }
    for key in ("bos", "eos", "unknown", "padding", "eot", "eom", "sep", "cls", "mask"):
        v = field(f"tokenizer.ggml.{key}_token_id")
        if v is None:
            continue
        if not 0 <= int(v) < n_vocab:
            sys.exit(f"make_synthetic: {path}: tokenizer.ggml.{key}_token_id = {v} is not below {n_vocab}")
        tok["ids"][key] = int(v)
    return tok


def build_writer(path: Path, kind: str, n_layer: int, tok: dict, plan, tok_src: Path) -> gguf.GGUFWriter:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"LLaMA-2-7B-shaped synthetic (random weights) {kind.upper()}")
    w.add_description(f"random block bytes by bench/engine/make_synthetic.py; tokenizer from {tok_src.name}")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_vocab_size(N_VOCAB)
    w.add_file_type(int(FTYPES[kind]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    if tok["types"] is not None:
        w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    for key, v in tok["ids"].items():
        w.add_uint32(f"tokenizer.ggml.{key}_token_id", v)
    if tok["add_bos"] is not None:
        w.add_add_bos_token(bool(tok["add_bos"]))
    if tok["add_space_prefix"] is not None:
        w.add_add_space_prefix(bool(tok["add_space_prefix"]))
    if tok["chat_template"]:
        w.add_chat_template(tok["chat_template"])
    for name, shape, qtype in plan:
        if qtype == QT.F32:
            w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes_of(shape, qtype))
        else:
            rows, ne0 = shape
            epb, bpb = BLOCK[qtype]
            w.add_tensor_info(name, (rows, ne0 // epb * bpb), np.dtype(np.uint8), nbytes_of(shape, qtype),
                              raw_dtype=qtype)
    return w


def pad(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def generate(args) -> Path:
    out = Path(args.out) if args.out else Path(args.out_dir) / (
        f"llama2-7b-synthetic-{args.type}" + ("" if args.layers == N_LAYER else f"-{args.layers}l") + ".gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    tok_src = Path(args.tokenizer_from)
    tok = load_tokenizer(tok_src, N_VOCAB)
    plan = tensor_plan(args.type, args.layers)
    tmp = out.with_name(out.name + ".tmp")
    w = build_writer(tmp, args.type, args.layers, tok, plan, tok_src)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    fout.flush()
    meta_len = fout.tell()
    expected = pad(meta_len, w.data_alignment) + sum(pad(nbytes_of(s, q), w.data_alignment) for _, s, q in plan)
    if out.exists() and not args.force and out.stat().st_size == expected:
        with open(tmp, "rb") as f:
            meta = f.read(meta_len)
        with open(out, "rb") as f:
            same = f.read(meta_len) == meta
        if same:
            w.close()
            tmp.unlink()
            print(f"make_synthetic: {out} exists ({expected} bytes, same metadata): skipped")
            return out
    t0 = time.time()
    written = 0
    for i, (name, shape, qtype) in enumerate(plan):
        data = make_tensor(args.seed, name, shape, qtype)
        w.write_tensor_data(data)
        written += data.nbytes
        del data
        if sys.stderr.isatty() or i % 32 == 0 or i == len(plan) - 1:
            el = time.time() - t0
            print(f"\rmake_synthetic: {i + 1}/{len(plan)} tensors, {written / 1e9:.2f} GB, {el:.0f} s"
                  f" ({written / 1e6 / max(el, 1e-9):.0f} MB/s)", end="" if sys.stderr.isatty() else "\n",
                  file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    w.close()
    size = tmp.stat().st_size
    if size != expected:
        sys.exit(f"make_synthetic: {tmp} is {size} bytes, expected {expected}")
    os.replace(tmp, out)
    print(f"make_synthetic: wrote {out} ({size} bytes = {size / 2**30:.2f} GiB, {len(plan)} tensors, "
          f"{len(tok['merges'])} merges) in {time.time() - t0:.0f} s")
    return out


def check(path: str, rows: int = 8) -> None:
    """Tensor types/shapes summary and the dequantized RMS of a few rows against the 1/sqrt(ne0) target."""
    r = gguf.GGUFReader(path)
    f = r.fields
    print(f"{path}: {os.path.getsize(path)} bytes, {len(r.tensors)} tensors, "
          f"file_type {f['general.file_type'].contents()}, {len(f['tokenizer.ggml.tokens'].contents())} tokens, "
          f"{len(f['tokenizer.ggml.merges'].data)} merges, pre {f['tokenizer.ggml.pre'].contents()!r}")
    counts = {}
    for t in r.tensors:
        key = (t.name.split(".")[-2] if t.name.startswith("blk.") else t.name, t.tensor_type.name,
               tuple(int(x) for x in t.shape))
        counts[key] = counts.get(key, 0) + 1
    for (name, ty, shape), n in counts.items():
        print(f"  {n:3d} x {name:20s} {ty:5s} {list(shape)}")
    q6 = [t.name for t in r.tensors if t.tensor_type == QT.Q6_K and t.name.startswith("blk.")]
    if q6:
        layers = sorted({int(n.split(".")[1]) for n in q6})
        print(f"  Q6_K attn_v/ffn_down in layers {layers}")
    for t in r.tensors:
        if t.name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.1.attn_v.weight",
                      "blk.0.ffn_down.weight", "blk.4.ffn_down.weight", "output.weight"):
            data = np.asarray(t.data[:rows])
            w = gguf.quants.dequantize(data, t.tensor_type)
            ne0 = int(t.shape[0])
            print(f"  {t.name:24s} {t.tensor_type.name:5s} rms {np.sqrt(np.mean(w.astype(np.float64) ** 2)):.5f}"
                  f" (target {1 / np.sqrt(ne0):.5f}), finite {bool(np.isfinite(w).all())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--type", choices=sorted(FTYPES), default="q4_0", help="quantization preset (default q4_0)")
    ap.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR), help="output directory (default %(default)s)")
    ap.add_argument("--out", help="output file (default OUT_DIR/llama2-7b-synthetic-TYPE.gguf)")
    ap.add_argument("--tokenizer-from", default=str(DEFAULT_TOKENIZER),
                    help="GGUF whose byte-level BPE tokenizer is cut to 32000 tokens (default %(default)s)")
    ap.add_argument("--layers", type=int, default=N_LAYER,
                    help="number of layers (default 32; fewer for a small smoke-test file, named ...-Nl.gguf)")
    ap.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    ap.add_argument("--force", action="store_true", help="rewrite the file even when it is already there")
    ap.add_argument("--check", metavar="FILE", help="only summarize FILE (types, shapes, weight RMS) and exit")
    args = ap.parse_args()
    if args.check:
        check(args.check)
        return
    if args.layers < 1:
        ap.error("--layers must be >= 1")
    out = generate(args)
    check(str(out))


if __name__ == "__main__":
    main()
