#!/usr/bin/env python3
"""Reference token ids for flashring's tokenizer tests, from an independent implementation.

The tokenizer is Hugging Face's `tokenizers` (Rust) built from the GGUF file's own vocabulary and merges
(read with the `gguf` package), configured to mirror llama.cpp's "smollm" pre-tokenizer:

    BPE(vocab, merges)
    pre_tokenizer = Sequence([Split(Regex(r"\\p{N}"), "isolated"), ByteLevel(add_prefix_space=False, use_regex=True)])
    decoder       = ByteLevel()
    + every control (3) / user-defined (4) token added as a special token

so no tokenizer.json is needed. Token ids are printed as JSON:

    {"reference": ..., "model": ..., "pre": ..., "command": ...,
     "cases": [{"name", "text", "ids", "decodes_back"}, ...]}

Inputs (repeatable, kept in order):
    --strings FILE          a JSON list of strings, or of {"name": ..., "text": ...} objects
    --text-file FILE[:N]    one case holding the file's text (its first N bytes, cut back to a whole
                            UTF-8 character, when :N is given)
Other options:
    --out PATH              write the JSON there instead of stdout
    --time-file FILE        also time encoding FILE (best of 5) and report it under "timing"

Exit status 3 (with a message) when `tokenizers` or `gguf` cannot be imported, so callers can skip.
"""
import argparse
import json
import os
import sys
import time


def cut_utf8(data: bytes, n: int) -> bytes:
    data = data[:n]
    # Drop a trailing partial character: back up over continuation bytes to the lead byte.
    i = len(data)
    while i > 0 and (data[i - 1] & 0xC0) == 0x80:
        i -= 1
    if i > 0 and data[i - 1] >= 0xC0:
        lead = data[i - 1]
        need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if len(data) - (i - 1) < need:
            data = data[: i - 1]
    return data


def sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_tokenizer(model_path: str):
    import gguf
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    reader = gguf.GGUFReader(model_path)

    def field(name, default=None):
        f = reader.fields.get(name)
        return default if f is None else f.contents()

    model = field("tokenizer.ggml.model")
    if model != "gpt2":
        raise SystemExit(f"tokenizer_reference: {model_path}: tokenizer.ggml.model is {model!r}, not 'gpt2'")
    pre = field("tokenizer.ggml.pre", "default")
    if pre not in ("smollm", "starcoder", "refact"):
        raise SystemExit(f"tokenizer_reference: pre-tokenizer {pre!r} is not mirrored here (only smollm-style)")
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = field("tokenizer.ggml.merges", [])

    vocab = {}
    for i, t in enumerate(tokens):
        vocab[t] = i  # last duplicate wins, as in llama.cpp
    pairs = []
    for m in merges:
        sp = m.find(" ", 1)
        pairs.append((m[:sp], m[sp + 1 :]))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty in (3, 4)]
    tok.add_special_tokens(specials)
    return tok, pre


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--strings", action="append", default=[], dest="inputs", type=lambda s: ("strings", s))
    ap.add_argument("--text-file", action="append", default=[], dest="inputs", type=lambda s: ("text", s))
    ap.add_argument("--out")
    ap.add_argument("--time-file")
    args = ap.parse_args()

    try:
        import gguf  # noqa: F401
        import tokenizers
    except Exception as e:  # ImportError, or numpy failing inside gguf
        print(f"tokenizer_reference: cannot import tokenizers/gguf: {e}", file=sys.stderr)
        return 3

    tok, pre = build_tokenizer(args.model)

    cases = []
    for kind, spec in args.inputs:
        if kind == "strings":
            with open(spec, encoding="utf-8") as f:
                for i, item in enumerate(json.load(f)):
                    if isinstance(item, str):
                        item = {"name": f"{os.path.basename(spec)}[{i}]", "text": item}
                    cases.append({"name": item["name"], "text": item["text"]})
        else:
            path, _, n = spec.partition(":")
            with open(path, "rb") as f:
                data = f.read()
            if n:
                data = cut_utf8(data, int(n))
            name = os.path.basename(path) + (f" (first {len(data)} bytes)" if n else "")
            cases.append({"name": name, "text": data.decode("utf-8")})

    for c in cases:
        c["ids"] = tok.encode(c["text"], add_special_tokens=False).ids
        # False when the text holds a byte that has no token (dropped by `tokenizers`, as by llama.cpp).
        c["decodes_back"] = tok.decode(c["ids"], skip_special_tokens=False) == c["text"]

    import importlib.metadata as md

    result = {
        "reference": f"tokenizers {tokenizers.__version__} (BPE + Split(\\p{{N}}, isolated) + ByteLevel), "
        f"gguf {md.version('gguf')}",
        "model": os.path.basename(args.model),
        "model_sha256": sha256(args.model),
        "pre": pre,
        "command": "python3 tests/tools/tokenizer_reference.py " + " ".join(
            a if a != args.model else "<model>" for a in sys.argv[1:]
        ),
        "cases": cases,
    }
    if args.time_file:
        with open(args.time_file, encoding="utf-8") as f:
            text = f.read()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            tok.encode(text, add_special_tokens=False)
            best = min(best, time.perf_counter() - t0)
        nbytes = len(text.encode("utf-8"))
        result["timing"] = {"file": args.time_file, "bytes": nbytes, "seconds": best, "MB_per_s": nbytes / best / 1e6}

    # One line per case keeps the checked-in fixture readable and its diffs small.
    head = {k: v for k, v in result.items() if k != "cases"}
    lines = [json.dumps(c, ensure_ascii=False) for c in cases]
    out = json.dumps(head, ensure_ascii=False, indent=1)[:-2] + ',\n "cases": [\n  ' + ",\n  ".join(lines) + "\n ]\n}"
    json.loads(out)  # still one JSON document
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(out + "\n")
    else:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
