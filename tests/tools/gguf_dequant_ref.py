#!/usr/bin/env python3
"""Dequantize one tensor of a GGUF file with the PyPI `gguf` package and write its floats.

Usage: gguf_dequant_ref.py MODEL.gguf TENSOR_NAME OUT.f32

OUT.f32 gets the tensor's values as little-endian float32 in ggml order (dims[0] innermost), computed by
gguf-py's own reader (GGUFReader) and dequantizer (gguf.quants.dequantize): an implementation independent
of flashring's, for tests/unit/test_gguf.cc to compare against.
"""
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    path, name, out = sys.argv[1:]
    reader = GGUFReader(path)
    for t in reader.tensors:
        if t.name == name:
            values = dequantize(t.data, t.tensor_type).astype("<f4").reshape(-1)
            if values.size != int(np.prod(t.shape)):
                print(f"{name}: {values.size} values, expected {int(np.prod(t.shape))}", file=sys.stderr)
                return 1
            values.tofile(out)
            return 0
    print(f"{name}: no such tensor in {path}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
