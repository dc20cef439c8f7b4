"""All-reduce (exact and Flash Communication low-bit), the group-wise codecs and their wire sizes."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _core
from ._arrays import check_inplace, check_input
from .comm import Communicator, _handle

__all__ = [
    "ALGORITHMS",
    "AllreduceStats",
    "all_reduce",
    "all_reduce_with_error",
    "quantize",
    "dequantize",
    "encoded_bytes",
    "wire_bytes",
    "auto_choice",
]

AllreduceStats = _core.AllreduceStats

#: Names accepted by ``algo=`` (flashring/allreduce.h): exact (ring / two-step / one-shot, fp32 or bf16
#: payload), the transport's own (mpi), the Flash Communication codecs and Auto.
ALGORITHMS = (
    "auto", "ring-fp32", "ring-bf16", "twostep-fp32", "twostep-bf16", "mpi",
    "flash-int8", "flash-int6", "flash-int5", "flash-int4", "flash-int4-int8", "flash-int8-int4",
    "oneshot-fp32", "oneshot-bf16", "oneshot-int8", "oneshot-int6", "oneshot-int5", "oneshot-int4",
)  # fmt: skip

_options_cache: Dict[Tuple, "_core.AllreduceOptions"] = {}


def _options(algo: str, group_size: int, spikes: int, symmetric: bool, rotate: bool, clip: bool,
             extra: Dict[str, Any]) -> "_core.AllreduceOptions":  # fmt: skip
    key = (algo, group_size, spikes, symmetric, rotate, clip, tuple(sorted(extra.items())) if extra else ())
    o = _options_cache.get(key)
    if o is not None:
        return o
    if not isinstance(algo, str) or (algo not in ALGORITHMS and not algo.startswith("hier-")):
        raise _core.InvalidArgument(
            f"algo: {algo!r} is not one of {', '.join(ALGORITHMS)}, or hier-<intra>-[oneshot-]<inter>"
        )
    o = _core.AllreduceOptions.from_name(algo, int(group_size), int(spikes), bool(symmetric), bool(rotate), bool(clip))
    for k, v in extra.items():
        if k == "link":  # (latency_s, bandwidth_Bps, mesh) or a CostModel
            if hasattr(v, "params"):
                p = v.params
                o.set_link(p["latency_s"], p["bandwidth_Bps"], p["topology"] == "mesh")
            else:
                lat, bw, mesh = v
                o.set_link(float(lat), float(bw), bool(mesh))
        elif k in ("chunk_elems", "auto_threshold_bytes", "oneshot_threshold_bytes", "ranks_per_node"):
            if int(v) < 0:
                raise _core.InvalidArgument(f"{k}: must be >= 0, got {v}")
            setattr(o, k, int(v))
        elif k in ("check_sizes", "native_blocking"):
            setattr(o, k, bool(v))
        else:
            raise TypeError(f"all_reduce() got an unexpected keyword argument {k!r}")
    if len(_options_cache) > 256:
        _options_cache.clear()
    _options_cache[key] = o
    return o


def all_reduce(x, group: Communicator, algo: str = "auto", group_size: int = 128, spikes: int = 0,
               symmetric: bool = False, rotate: bool = False, clip: bool = False, **options: Any) -> AllreduceStats:  # fmt: skip
    """Sums `x` over the ranks of `group`, in place (like ``torch.distributed.all_reduce``), and returns what it
    did (:class:`AllreduceStats`: the algorithm that ran, wire bytes, codec and wait seconds).

    x: a C-contiguous CPU numpy array or PyTorch tensor, float32 (used in place, no copy), or float16 /
    bfloat16 (converted to fp32, reduced with fp32 accumulation, written back in its dtype). Every rank
    passes the same number of elements (a mismatch raises InvalidArgument on every rank). Every algorithm
    leaves bitwise-identical results on every rank.

    algo: one of :data:`ALGORITHMS`, or "hier-<intra>-<inter>" / "hier-<intra>-oneshot-<inter>" (the
    hierarchical all-reduce over nodes: intra and inter each fp32, bf16, int8, int6, int5 or int4). "auto":
    exact below 1 MiB (one-shot or two-step), Flash INT8 above (hierarchical when the group spans several
    nodes: :attr:`Communicator.node_ids`, or ranks_per_node=).
    group_size, spikes, symmetric, rotate, clip: the low-bit codec (flashring/quant.h).
    Further options: chunk_elems, auto_threshold_bytes, oneshot_threshold_bytes, ranks_per_node, link=(latency_s,
    bandwidth_Bps, mesh) or a CostModel, check_sizes, native_blocking.
    """
    h = group._h if type(group) is Communicator else _handle(group)
    o = _options(algo, group_size, spikes, symmetric, rotate, clip, options)
    return _core.all_reduce(h, check_inplace(x, "x"), o)


def all_reduce_with_error(x, error, group: Communicator, algo: str = "auto", group_size: int = 128, spikes: int = 0,
                          symmetric: bool = False, rotate: bool = False, clip: bool = False,
                          **options: Any) -> AllreduceStats:  # fmt: skip
    """all_reduce() that also writes into `error` (float32, as many elements as x) the quantization error this
    rank knows of, for error feedback: summed over the ranks it is the exact fp32 sum minus the result, so
    adding it to this rank's next input into the same accumulator cancels this all-reduce's error there."""
    o = _options(algo, group_size, spikes, symmetric, rotate, clip, options)
    return _core.all_reduce_with_error(_handle(group), check_inplace(x, "x"), check_inplace(error, "error"), o)


def _config(bits: int, group_size: int, symmetric: bool, spikes: int, rotate: bool, clip: bool) -> "_core.QuantConfig":
    c = _core.QuantConfig()
    c.bits, c.group_size, c.symmetric, c.spikes, c.rotate, c.clip = int(bits), int(group_size), bool(symmetric), int(spikes), bool(rotate), bool(clip)  # fmt: skip
    c.validate()
    return c


def encoded_bytes(n: int, bits: int = 8, group_size: int = 128, symmetric: bool = False, spikes: int = 0,
                  rotate: bool = False, clip: bool = False) -> int:  # fmt: skip
    """Bytes of `n` values encoded with this codec (metadata and spike sections included)."""
    return _config(bits, group_size, symmetric, spikes, rotate, clip).encoded_bytes(int(n))


def quantize(x, bits: int = 8, group_size: int = 128, symmetric: bool = False, spikes: int = 0,
             rotate: bool = False, clip: bool = False) -> np.ndarray:  # fmt: skip
    """Encodes `x` (flattened; float32/float16/bfloat16) with the group-wise codec; returns the wire bytes as a
    numpy uint8 array (the layout pinned in flashring/quant.h, identical to what the all-reduce sends)."""
    c = _config(bits, group_size, symmetric, spikes, rotate, clip)
    x = check_input(x, "x")
    n = int(np.prod(x.shape)) if len(x.shape) else 1
    out = np.empty(c.encoded_bytes(n), dtype=np.uint8)
    _core.quantize(x, c, out)
    return out


def dequantize(data, n: Optional[int] = None, bits: int = 8, group_size: int = 128, symmetric: bool = False,
               spikes: int = 0, rotate: bool = False, clip: bool = False, out=None):  # fmt: skip
    """Decodes `n` values from `data` (uint8 bytes from :func:`quantize`) into a new float32 array, or into
    `out` (float32/float16/bfloat16, written in place; its size gives n)."""
    c = _config(bits, group_size, symmetric, spikes, rotate, clip)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise _core.InvalidArgument("data: expected a numpy uint8 array (the bytes quantize() returned)")
    if out is None:
        if n is None:
            raise _core.InvalidArgument("dequantize: pass n (the number of values) or out")
        out = np.empty(int(n), dtype=np.float32)
    else:
        out = check_inplace(out, "out")
        if n is not None and int(n) != int(np.prod(out.shape)):
            raise _core.InvalidArgument(f"n: {n}, but out has {int(np.prod(out.shape))} elements")
    _core.dequantize(np.ascontiguousarray(data), c, out)
    return out


def wire_bytes(count: int, ranks: int, algo: str = "auto", group_size: int = 128, spikes: int = 0,
               symmetric: bool = False, rotate: bool = False, clip: bool = False, **options: Any) -> int:  # fmt: skip
    """Bytes one rank sends for an all-reduce of `count` fp32 values on `ranks` ranks with these options."""
    return _options(algo, group_size, spikes, symmetric, rotate, clip, options).wire_bytes(int(count), int(ranks))


def auto_choice(count: int, ranks: int, algo: str = "auto", **options: Any) -> str:
    """The algorithm all_reduce() runs for `count` floats on `ranks` ranks ("auto" resolved)."""
    return _options(algo, 128, 0, False, False, False, options).auto_choice(int(count), int(ranks))
