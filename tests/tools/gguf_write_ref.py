#!/usr/bin/env python3
"""Write a GGUF file with the PyPI `gguf` package's GGUFWriter, and a JSON of what it holds.

Usage: gguf_write_ref.py OUT_DIR

Writes OUT_DIR/ref.gguf (metadata of several value types, tensors F32/F16/BF16/Q8_0/Q4_0/Q4_1 quantized
with gguf.quants.quantize) and OUT_DIR/ref.json: the metadata (type name and value) and, per tensor, its
ggml dims (innermost first), type number, raw bytes (hex) and values as gguf.quants.dequantize gives them.
tests/unit/test_gguf.cc reads both and checks flashring's reader agrees: an independent writer for the
reader as a whole. Floats go through JSON as Python floats (doubles): float32 values survive exactly.
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf.quants import dequantize, quantize

T = gguf.GGMLQuantizationType


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "ref.gguf")
    w = gguf.GGUFWriter(path, "llama")
    meta = {"general.architecture": ["string", "llama"]}

    def add(key, kind, value, fn):
        fn(key, value)
        meta[key] = [kind, value]

    add("ref.u8", "uint8", 200, w.add_uint8)
    add("ref.i8", "int8", -100, w.add_int8)
    add("ref.u16", "uint16", 60000, w.add_uint16)
    add("ref.i16", "int16", -30000, w.add_int16)
    add("ref.u32", "uint32", 4000000000, w.add_uint32)
    add("ref.i32", "int32", -2000000000, w.add_int32)
    add("ref.u64", "uint64", 2**62 + 5, w.add_uint64)
    add("ref.i64", "int64", -(2**62) - 7, w.add_int64)
    add("ref.f32", "float32", float(np.float32(0.1)), w.add_float32)
    add("ref.f64", "float64", 0.1, w.add_float64)
    add("ref.bool", "bool", True, w.add_bool)
    add("ref.string", "string", "héllo, GGUF", w.add_string)
    add("ref.strings", "array:string", ["a", "", "ünï", "tokens"], w.add_array)
    add("ref.ints", "array:int32", [1, -2, 3, 2**31 - 1], w.add_array)
    add("ref.floats", "array:float32", [float(np.float32(x)) for x in (0.5, -1.25, 3.0e-5)], w.add_array)
    w.add_uint32("llama.block_count", 2)
    meta["llama.block_count"] = ["uint32", 2]

    rng = np.random.default_rng(1234)
    specs = [
        ("t.f32", T.F32, (3, 40)),
        ("t.f16", T.F16, (2, 24)),
        ("t.bf16", T.BF16, (5, 8)),
        ("t.q8_0", T.Q8_0, (4, 64)),
        ("t.q4_0", T.Q4_0, (3, 96)),
        ("t.q4_1", T.Q4_1, (2, 128)),
    ]
    tensors = []
    for name, qtype, shape in specs:  # numpy shape: outermost first
        x = rng.standard_normal(shape).astype(np.float32)
        if qtype == T.F32:
            raw = x
        elif qtype == T.F16:
            raw = x.astype(np.float16)
        else:
            raw = quantize(x, qtype)
        w.add_tensor(name, raw, raw_dtype=qtype)
        as_bytes = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
        values = dequantize(as_bytes, qtype).astype(np.float32).reshape(-1)
        tensors.append({
            "name": name,
            "dims": list(reversed(shape)),
            "type": int(qtype),
            "hex": as_bytes.tobytes().hex(),
            "values": [float(v) for v in values],
        })

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    with open(os.path.join(out_dir, "ref.json"), "w", encoding="utf-8") as f:
        json.dump({"version": 3, "metadata": meta, "tensors": tensors}, f, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
