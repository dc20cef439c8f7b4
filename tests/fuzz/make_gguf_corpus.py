#!/usr/bin/env python3
"""Writes the seed inputs of corpus/gguf/ (small valid and corrupt GGUF images), with struct only.

Usage: make_gguf_corpus.py OUT_DIR. Crashers the fuzzer finds are added to corpus/gguf/ by hand (named
crash-*), next to these seeds; rerunning this script only rewrites the seed-*.gguf files.
"""
import os
import struct
import sys


def s(x: bytes) -> bytes:
    return struct.pack("<Q", len(x)) + x


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return s(key.encode()) + struct.pack("<I", vtype) + payload


def image(kvs, tensors, version=3, align=32, counts=None):
    out = b"GGUF" + struct.pack("<I", version)
    tc, kc = counts if counts else (len(tensors), len(kvs))
    out += struct.pack("<QQ", tc, kc) + b"".join(kvs)
    offsets, nxt = [], 0
    for name, dims, ttype, data, off in tensors:
        o = nxt if off is None else off
        offsets.append(o)
        nxt = (o + len(data) + align - 1) // align * align
    for (name, dims, ttype, data, off), o in zip(tensors, offsets):
        out += s(name.encode()) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ttype, o)
    if tensors:
        start = (len(out) + align - 1) // align * align
        body = bytearray(max(o + len(t[3]) for t, o in zip(tensors, offsets)))
        for t, o in zip(tensors, offsets):
            body[o:o + len(t[3])] = t[3]
        out += b"\0" * (start - len(out)) + bytes(body)
    return out


def all_kvs():
    return [
        kv("general.architecture", 8, s(b"llama")),
        kv("u8", 0, struct.pack("<B", 7)), kv("i8", 1, struct.pack("<b", -7)),
        kv("u16", 2, struct.pack("<H", 700)), kv("i16", 3, struct.pack("<h", -700)),
        kv("u32", 4, struct.pack("<I", 70000)), kv("i32", 5, struct.pack("<i", -70000)),
        kv("f32", 6, struct.pack("<f", 1.5)), kv("bool", 7, b"\x01"),
        kv("u64", 10, struct.pack("<Q", 2**40)), kv("i64", 11, struct.pack("<q", -2**40)),
        kv("f64", 12, struct.pack("<d", 0.25)),
        kv("toks", 9, struct.pack("<IQ", 8, 3) + s(b"<s>") + s(b"") + s(b"ab")),
        kv("ints", 9, struct.pack("<IQ", 5, 2) + struct.pack("<ii", 1, -1)),
        kv("flts", 9, struct.pack("<IQ", 6, 2) + struct.pack("<ff", 0.5, 2.0)),
        kv("bools", 9, struct.pack("<IQ", 7, 2) + b"\x00\x01"),
    ]


def tensors():
    half = struct.pack("<e", 0.5)
    return [
        ("f32", [4, 2], 0, struct.pack("<8f", *range(8)), None),
        ("f16", [8], 1, half * 8, None),
        ("bf16", [8], 30, b"\x80\x3f" * 8, None),
        ("q8_0", [32, 2], 8, (half + bytes(range(32))) * 2, None),
        ("q4_0", [32], 2, half + bytes(range(16)), None),
        ("q4_1", [64], 3, (half + half + bytes(range(16, 32))) * 2, None),
        ("q4_k", [256], 12, b"\x11" * 144, None),
    ]


def main() -> int:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    seeds = {
        "valid_v3": image(all_kvs(), tensors()),
        "valid_v2": image(all_kvs()[:4], tensors()[:3], version=2),
        "valid_align64": image([kv("general.alignment", 4, struct.pack("<I", 64))], tensors()[3:], align=64),
        "empty_v3": image([], []),
        "truncated": image(all_kvs(), tensors())[:150],
        "bad_magic": b"GGUG" + image([], [])[4:],
        "version1": b"GGUF" + struct.pack("<III", 1, 0, 0),
        "huge_counts": image([], [], counts=(2**60, 2**60)),
        "nested_array": image([kv("n", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 4, 0))], []),
        "overlap": image([], [("a", [64], 0, bytes(256), 0), ("b", [8], 0, bytes(32), 32)]),
        "misaligned": image([], [("a", [8], 0, bytes(32), 8)]),
        "dims_overflow": image([], [("a", [2**32, 2**32], 0, b"", None)]),
        "bad_alignment": image([kv("general.alignment", 4, struct.pack("<I", 48))], tensors()[:1]),
        "dup_key": image([kv("k", 0, b"\x01"), kv("k", 0, b"\x02")], []),
    }
    for name, data in seeds.items():
        with open(os.path.join(out, f"seed-{name}.gguf"), "wb") as f:
            f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
