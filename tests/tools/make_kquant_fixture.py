#!/usr/bin/env python3
"""Writes K-quant blocks and the PyPI `gguf` package's dequantization of them (a test fixture).

  make_kquant_fixture.py OUTDIR

For each type T in Q4_K, Q5_K, Q6_K:
  OUTDIR/kquant.T.blocks   raw ggml blocks (random bytes; the fp16 d / dmin fields set to finite moderate
                           values, then a few blocks with extreme fields: fp16 max, subnormal, zero, -0,
                           negative, Inf and NaN scales, Q6_K 8-bit scales of -128 and 127)
  OUTDIR/kquant.T.f32      little-endian float32, 256 per block: gguf.quants.dequantize of those bytes
  OUTDIR/kquant.json       {"types": {T: {"n_blocks", "block_bytes"}}, "gguf_version", "command"}
tests/unit/test_qmatmul_kquants.cc compares flashring's dequantization with these values bit for bit
(NaN: NaN-ness only). Deterministic (fixed seed). Without numpy or gguf it prints
"make_kquant_fixture: skipped: <reason>" and exits 0 (the C++ test then skips with a message).
"""

from __future__ import annotations

import json
import os
import shlex
import sys

try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as QT
    from gguf.quants import dequantize
except Exception as e:  # ImportError, or a broken install
    print(f"make_kquant_fixture: skipped: {type(e).__name__}: {e}")
    sys.exit(0)

N_RANDOM = 48

# type -> (bytes per block, byte offsets of the fp16 fields: d first, dmin second if any)
TYPES = {
    "Q4_K": (QT.Q4_K, 144, (0, 2)),
    "Q5_K": (QT.Q5_K, 176, (0, 2)),
    "Q6_K": (QT.Q6_K, 210, (208,)),
}
Q6K_SCALES = 192  # offset of Q6_K's 16 int8 scales

# fp16 values of the extreme blocks' d (and dmin): each row one block.
EXTREMES = [
    (65504.0, 65504.0),     # fp16 max
    (-65504.0, 1.0),
    (2.0 ** -24, 2.0 ** -24),  # smallest subnormal
    (6.1e-5, 3.0e-6),       # smallest normal, a subnormal
    (0.0, 0.0),
    (-0.0, -0.5),
    (1.0, -0.0),
    (float("inf"), 0.25),
    (0.5, float("-inf")),
    (float("nan"), 0.125),
]


def set_half(blocks: np.ndarray, row: int, off: int, value: float) -> None:
    blocks[row, off:off + 2] = np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)


def make(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    qtype, nbytes, halves = TYPES[name]
    n = N_RANDOM + len(EXTREMES)
    blocks = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    for r in range(N_RANDOM):
        for off in halves:
            mag = 10.0 ** rng.uniform(-4.0, 0.0)
            set_half(blocks, r, off, mag if rng.random() < 0.8 else -mag)
    for k, vals in enumerate(EXTREMES):
        r = N_RANDOM + k
        for off, v in zip(halves, vals):
            set_half(blocks, r, off, v)
    if name == "Q6_K":
        # 8-bit scale extremes in a few blocks
        blocks[0, Q6K_SCALES:Q6K_SCALES + 16] = np.array([0x80, 0x7F] * 8, dtype=np.uint8)
        blocks[N_RANDOM, Q6K_SCALES:Q6K_SCALES + 16] = 0x80
        blocks[N_RANDOM + 1, Q6K_SCALES:Q6K_SCALES + 16] = 0x7F
    else:
        # all-ones scale bytes: every 6-bit scale and min 63
        blocks[0, 4:16] = 0xFF
        blocks[N_RANDOM, 4:16] = 0xFF
    with np.errstate(all="ignore"):
        values = dequantize(blocks.reshape(-1), qtype).astype("<f4").reshape(-1)
    assert values.size == n * 256, (name, values.size)
    return blocks, values


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20240611)
    try:
        from importlib.metadata import version
        gguf_version = version("gguf")
    except Exception:
        gguf_version = "unknown"
    index = {"types": {}, "gguf_version": gguf_version,
             "command": " ".join(shlex.quote(a) for a in sys.argv)}
    for name in TYPES:
        blocks, values = make(name, rng)
        blocks.tofile(os.path.join(out, f"kquant.{name}.blocks"))
        values.tofile(os.path.join(out, f"kquant.{name}.f32"))
        index["types"][name] = {"n_blocks": int(blocks.shape[0]), "block_bytes": int(blocks.shape[1])}
    with open(os.path.join(out, "kquant.json"), "w") as f:
        json.dump(index, f, indent=1)
    print(f"make_kquant_fixture: wrote {', '.join(TYPES)} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
