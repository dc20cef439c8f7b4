"""Attention: sequence-parallel attention (TokenRing and the baselines), block attention, the lse merge,
sharding helpers and the cost model that picks a scheme.

Conventions are flash-attention's:

* q, out: ``[batch, seq, heads, head_dim]`` ("BSHD"); k, v: ``[batch, seq, kv_heads, head_dim]`` with
  ``heads % kv_heads == 0`` (GQA / MQA: query head h reads KV head ``h // (heads // kv_heads)``).
* lse (``return_lse=True``; flash-attention's ``softmax_lse``): ``[batch, heads, seq]`` float32, the natural
  log of each row's softmax denominator with the scale applied (``-inf`` for a row that sees no key).
* ``softmax_scale=None`` means ``1 / sqrt(head_dim)``.
* causal masking is by global position: query i sees key j iff j <= i (for :func:`block_attention`, the
  positions are ``q_offset + i`` and ``k_offset + j``).

Arrays are C-contiguous CPU numpy arrays or PyTorch tensors, float32 (read in place), or float16 / bfloat16
(converted to fp32, fp32 accumulation); results come back as the same kind (numpy / torch) and dtype as q,
lse always float32. Tensors that require grad are rejected (there is no backward pass): pass ``.detach()``.
Every rejected argument raises :class:`flashring.InvalidArgument` (a ValueError) naming the argument.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._arrays import _torch_tensor, check_inplace, check_input, empty_like
from .comm import Communicator, _handle

__all__ = [
    "SCHEMES",
    "LAYOUTS",
    "CostModel",
    "SpAttentionStats",
    "block_attention",
    "local_length",
    "local_segments",
    "merge_attention",
    "sp_attention",
    "zigzag_shard",
    "zigzag_unshard",
]

InvalidArgument = _core.InvalidArgument
SpAttentionStats = _core.SpAttentionStats

#: Names accepted by ``scheme=`` (flashring/sp_attention.h).
SCHEMES = ("auto", "tokenring", "ring-kv", "ulysses", "allgather-kv", "ulysses+tokenring", "ulysses+ring-kv")
#: Names accepted by ``layout=``: zigzag (rank r holds chunks r and 2N-1-r of 2N, balancing causal work)
#: or contiguous (rank r holds part r of N).
LAYOUTS = ("zigzag", "contiguous")


def _scheme(scheme: str) -> str:
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise InvalidArgument(f"scheme: {scheme!r} is not one of {', '.join(SCHEMES)}")
    return scheme


def _layout(layout: str) -> str:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise InvalidArgument(f"layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
    return layout


def _scale(softmax_scale: Optional[float]) -> float:
    if softmax_scale is None:
        return 0.0  # the core's "1 / sqrt(head_dim)"
    try:
        s = float(softmax_scale)
    except (TypeError, ValueError):
        raise InvalidArgument(f"softmax_scale: expected a number or None, got {type(softmax_scale).__name__}") from None
    if not (s > 0 and math.isfinite(s)):
        raise InvalidArgument(f"softmax_scale: must be a positive finite number (or None), got {softmax_scale!r}")
    return s


def _shape(x) -> Tuple[int, ...]:
    return tuple(int(n) for n in x.shape)


def sp_attention(
    q,
    k,
    v,
    group: Communicator,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
    scheme: str = "auto",
    layout: str = "zigzag",
    return_lse: bool = False,
    seq_len: Optional[int] = None,
    cost_model: Optional["CostModel"] = None,
    return_stats: bool = False,
):
    """Exact attention of this rank's queries over the whole sequence, sharded across the ranks of `group`
    (collective: every rank of the group calls it with its own shard, the same shapes and options).

    q: ``[batch, local_len, heads, head_dim]``; k, v: ``[batch, local_len, kv_heads, head_dim]``: this rank's
    shard of the global sequence under `layout` (make it with :func:`zigzag_shard`; :func:`local_segments`
    says which global positions it holds). The result equals single-device attention over the gathered
    sequence, restricted to this rank's rows (within 1e-5 in fp32), whatever the scheme; it is
    deterministic (the same call gives the same bits).

    scheme: "tokenring" (Q travels, K/V stay; arXiv 2412.20501), "ring-kv" (ring attention), "ulysses"
    (all-to-all to head shards), "allgather-kv", or "auto" (the cost model picks per call: `cost_model`, a
    calibrated :class:`CostModel`, else a default uncalibrated one).

    seq_len: the global length; None sums the ranks' local lengths (one small collective). Each rank's
    local length must be what `layout` gives it (``local_length(seq_len, group.size, group.rank)``).

    Returns out (q's shape, kind and dtype), or ``(out, lse)`` with ``return_lse=True`` (lse
    ``[batch, heads, local_len]`` float32, flash-attention's layout), with the :class:`SpAttentionStats`
    (scheme that ran, compute / comm seconds, bytes, the cost model's prediction) appended when
    ``return_stats=True``.

    Raises InvalidArgument on every rank when shapes or options differ across ranks; an argument that fails
    the checks on one rank only raises InvalidArgument there and aborts the communicator, so that the other
    ranks raise :class:`flashring.AbortedError` at once instead of waiting for the timeout.
    """
    h = group._h if type(group) is Communicator else _handle(group)
    try:
        q = check_input(q, "q")
        k = check_input(k, "k")
        v = check_input(v, "v")
        _scheme(scheme)
        _layout(layout)
        scale = _scale(softmax_scale)
        model = None
        if cost_model is not None:
            if not isinstance(cost_model, CostModel):
                raise InvalidArgument(f"cost_model: expected a flashring.CostModel, got {type(cost_model).__name__}")
            model = cost_model._m
        qs = _shape(q)
        if len(qs) != 4:
            raise InvalidArgument(f"q: expected 4 dimensions [batch, seq, heads, head_dim], got shape {qs}")
        if seq_len is None:
            seq_len = int(round(h.allreduce_sum(float(qs[1]))))
        elif not isinstance(seq_len, (int, np.integer)) or isinstance(seq_len, bool) or seq_len < 1:
            raise InvalidArgument(f"seq_len: expected a positive int or None, got {seq_len!r}")
        out = empty_like(q, qs)
        lse = empty_like(q, (qs[0], qs[2], qs[1]), "float32") if return_lse else None
        stats = _core.sp_attention(h, q, k, v, out, lse, int(seq_len), bool(causal), scale, scheme, layout, model)
    except _core.AbortedError:
        raise
    except BaseException as e:
        # A failure on this rank alone would leave the others waiting in the collective: abort them.
        try:
            if not h.closed and not h.aborted:
                h.abort(f"sp_attention failed on rank {h.rank}: {type(e).__name__}: {e}")
        except Exception:  # pragma: no cover - aborting is best effort
            pass
        raise
    result: Tuple[Any, ...] = (out,)
    if return_lse:
        result += (lse,)
    if return_stats:
        result += (stats,)
    return result[0] if len(result) == 1 else result


def block_attention(q, k, v, causal: bool = False, q_offset: int = 0, k_offset: int = 0,
                    softmax_scale: Optional[float] = None) -> Tuple[Any, Any]:  # fmt: skip
    """Exact attention of q ``[batch, seq_q, heads, head_dim]`` over k, v ``[batch, seq_k, kv_heads,
    head_dim]`` on this thread (the block kernel the schemes are built from; flashring/attention.h).

    causal: query i (global position ``q_offset + i``) sees key j (position ``k_offset + j``) iff
    ``k_offset + j <= q_offset + i``; a row that sees no key gets out 0 and lse -inf.

    Returns ``(out, lse)``: out of q's shape, kind and dtype; lse ``[batch, heads, seq_q]`` float32
    (flash-attention's layout). Partial results over disjoint key blocks combine with
    :func:`merge_attention`.
    """
    q = check_input(q, "q")
    k = check_input(k, "k")
    v = check_input(v, "v")
    scale = _scale(softmax_scale)
    qs = _shape(q)
    if len(qs) != 4:
        raise InvalidArgument(f"q: expected 4 dimensions [batch, seq_q, heads, head_dim], got shape {qs}")
    for name, off in (("q_offset", q_offset), ("k_offset", k_offset)):
        if not isinstance(off, (int, np.integer)) or isinstance(off, bool):
            raise InvalidArgument(f"{name}: expected an int, got {off!r}")
    out = empty_like(q, qs)
    lse = empty_like(q, (qs[0], qs[2], qs[1]), "float32")
    _core.block_attention(q, k, v, out, lse, bool(causal), int(q_offset), int(k_offset), scale)
    return out, lse


def merge_attention(out, lse, out_b, lse_b) -> None:
    """Merges a second partial result ``(out_b, lse_b)`` into ``(out, lse)``, in place, by log-sum-exp:
    for attention over disjoint key sets A and B, merging B's result into A's gives attention over A and B.

    out, out_b: ``[batch, seq, heads, head_dim]`` (out written in its dtype); lse, lse_b:
    ``[batch, heads, seq]`` float32, as :func:`block_attention` and :func:`sp_attention` return them
    (flash-attention's layout). A row whose lse_b is -inf keeps (out, lse); a row whose lse is -inf takes
    (out_b, lse_b).
    """
    out = check_inplace(out, "out")
    lse = check_inplace(lse, "lse")
    out_b = check_input(out_b, "out_b")
    lse_b = check_input(lse_b, "lse_b")
    _core.merge_attention(out, lse, out_b, lse_b)


def local_length(seq_len: int, world: int, rank: int, layout: str = "zigzag") -> int:
    """Tokens rank `rank` of `world` holds of a `seq_len`-token sequence under `layout`."""
    return int(_core.local_length(int(seq_len), int(world), int(rank), _layout(layout)))


def local_segments(seq_len: int, world: int, rank: int, layout: str = "zigzag") -> List[Tuple[int, int]]:
    """The ``(global_offset, length)`` segments of the sequence that rank `rank` holds, in the order they are
    concatenated in its shard (zigzag: chunks r and 2N-1-r of 2N; contiguous: part r of N; lengths that do
    not divide evenly give parts differing by at most one token)."""
    return [(int(a), int(n)) for a, n in _core.local_segments(int(seq_len), int(world), int(rank), _layout(layout))]


def _check_dim(x, dim: int, name: str) -> int:
    nd = len(x.shape)
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or not -nd <= dim < nd:
        raise InvalidArgument(f"dim: {dim!r} is out of range for {name} with {nd} dimensions")
    return int(dim) % nd


def _array_input(x, name: str):
    if type(x) is np.ndarray or _torch_tensor(x) or isinstance(x, np.ndarray):
        return x
    raise InvalidArgument(f"{name}: expected a numpy array or a PyTorch tensor, got {type(x).__name__}")


def zigzag_shard(x, rank: int, world: int, dim: int = 1, layout: str = "zigzag"):
    """Rank `rank`'s shard of the full sequence `x` along `dim` (default 1: BSHD's sequence axis), as
    :func:`sp_attention` expects it: for zigzag, chunks ``rank`` and ``2 * world - 1 - rank`` of ``2 * world``
    concatenated; for ``layout="contiguous"``, part ``rank`` of ``world``. Uneven lengths are cut exactly as
    the C++ core cuts them (:func:`local_segments`). Returns a new C-contiguous array / tensor of x's kind
    and dtype."""
    x = _array_input(x, "x")
    d = _check_dim(x, dim, "x")
    if not isinstance(world, (int, np.integer)) or world < 1:
        raise InvalidArgument(f"world: expected a positive int, got {world!r}")
    if not isinstance(rank, (int, np.integer)) or not 0 <= rank < world:
        raise InvalidArgument(f"rank: {rank!r} is not in [0, {world})")
    segs = local_segments(int(x.shape[d]), int(world), int(rank), layout)
    pre = (slice(None),) * d
    parts = [x[pre + (slice(a, a + n),)] for a, n in segs]
    if _torch_tensor(x):
        import torch

        return torch.cat(parts, dim=d).contiguous()
    return np.ascontiguousarray(np.concatenate(parts, axis=d))


def zigzag_unshard(shards: Sequence[Any], dim: int = 1, layout: str = "zigzag"):
    """The inverse of :func:`zigzag_shard`: every rank's shard, in rank order, back into the full sequence
    along `dim` (the global length is the sum of the shards' lengths). Each shard's length must be what
    `layout` gives its rank. Returns a new array / tensor of the shards' kind and dtype."""
    if isinstance(shards, (np.ndarray,)) or _torch_tensor(shards) or len(shards) == 0:
        raise InvalidArgument("shards: expected a non-empty list of every rank's shard, in rank order")
    shards = [_array_input(s, f"shards[{r}]") for r, s in enumerate(shards)]
    world = len(shards)
    d = _check_dim(shards[0], dim, "shards[0]")
    base = _shape(shards[0])
    for r, s in enumerate(shards):
        sh = _shape(s)
        if len(sh) != len(base) or sh[:d] + sh[d + 1 :] != base[:d] + base[d + 1 :]:
            raise InvalidArgument(f"shards[{r}]: shape {sh} does not match shards[0]'s {base} outside dim {d}")
    total = sum(int(s.shape[d]) for s in shards)
    pieces: List[Tuple[int, Any]] = []
    for r, s in enumerate(shards):
        segs = local_segments(total, world, r, layout)
        want = sum(n for _, n in segs)
        if int(s.shape[d]) != want:
            raise InvalidArgument(
                f"shards[{r}]: {int(s.shape[d])} tokens along dim {d}, but the {layout} layout of {total} tokens "
                f"over {world} ranks gives rank {r} {want}"
            )
        row = 0
        pre = (slice(None),) * d
        for a, n in segs:
            if n > 0:
                pieces.append((a, s[pre + (slice(row, row + n),)]))
            row += n
    pieces.sort(key=lambda p: p[0])
    parts = [p for _, p in pieces]
    if _torch_tensor(shards[0]):
        import torch

        if not parts:
            return shards[0].new_empty(base[:d] + (0,) + base[d + 1 :])
        return torch.cat(parts, dim=d).contiguous()
    if not parts:
        return np.empty(base[:d] + (0,) + base[d + 1 :], dtype=shards[0].dtype)
    return np.ascontiguousarray(np.concatenate(parts, axis=d))


class CostModel:
    """Cost model of the sequence-parallel schemes (flashring/costmodel.h): link bandwidth and latency, the
    topology ("star": one uplink per rank, like PCIe or a switch; "mesh": a link per pair, like NVLink) and
    the block kernel's FLOP/s. ``scheme="auto"`` asks it which scheme to run.

    ``CostModel()`` has default (uncalibrated) parameters; keyword arguments set them
    (``CostModel(bandwidth_Bps=25e9, topology="mesh")``); :meth:`calibrate` measures them on a
    communicator; :meth:`to_json` / :meth:`from_json` cache them.
    """

    __slots__ = ("_m",)

    _PARAMS = ("bandwidth_Bps", "latency_s", "topology", "kernel_flops")

    def __init__(self, bandwidth_Bps: Optional[float] = None, latency_s: Optional[float] = None,
                 topology: Optional[str] = None, kernel_flops: Optional[float] = None):  # fmt: skip
        self._m = _core.CostModel()
        for name, value in (("bandwidth_Bps", bandwidth_Bps), ("latency_s", latency_s), ("topology", topology),
                            ("kernel_flops", kernel_flops)):  # fmt: skip
            if value is not None:
                setattr(self._m, name, value if name == "topology" else float(value))

    @classmethod
    def _wrap(cls, m: "_core.CostModel") -> "CostModel":
        c = cls.__new__(cls)
        c._m = m
        return c

    @classmethod
    def calibrate(cls, comm: Communicator, topology: Optional[str] = None) -> "CostModel":
        """Measures link bandwidth and latency, the topology (unless given: "star" or "mesh") and the kernel
        speed on `comm`. Collective: every rank calls it; every rank gets the same model."""
        if topology is not None and topology not in ("star", "mesh"):
            raise InvalidArgument(f"topology: {topology!r} is not 'star', 'mesh' or None")
        return cls._wrap(_core.CostModel.calibrate(_handle(comm, "comm"), topology or ""))

    def to_json(self) -> str:
        """The parameters as a JSON object (what :meth:`from_json` reads)."""
        return self._m.to_json()

    @classmethod
    def from_json(cls, s: str) -> "CostModel":
        """A model from :meth:`to_json`'s output; InvalidArgument if a field is missing or out of range."""
        if not isinstance(s, str):
            raise InvalidArgument(f"from_json: expected a str, got {type(s).__name__}")
        return cls._wrap(_core.CostModel.from_json(s))

    @property
    def params(self) -> Dict[str, Union[float, str]]:
        """``{"bandwidth_Bps", "latency_s", "topology", "kernel_flops"}`` (a copy; set the properties of the
        same names to change them)."""
        return {n: getattr(self._m, n) for n in self._PARAMS}

    @property
    def bandwidth_Bps(self) -> float:
        """One direction of one link, bytes per second."""
        return self._m.bandwidth_Bps

    @bandwidth_Bps.setter
    def bandwidth_Bps(self, x: float) -> None:
        self._m.bandwidth_Bps = float(x)

    @property
    def latency_s(self) -> float:
        """Seconds per message."""
        return self._m.latency_s

    @latency_s.setter
    def latency_s(self, x: float) -> None:
        self._m.latency_s = float(x)

    @property
    def topology(self) -> str:
        """"star" or "mesh"."""
        return self._m.topology

    @topology.setter
    def topology(self, t: str) -> None:
        self._m.topology = str(t)

    @property
    def kernel_flops(self) -> float:
        """Block attention FLOP/s of one rank."""
        return self._m.kernel_flops

    @kernel_flops.setter
    def kernel_flops(self, x: float) -> None:
        self._m.kernel_flops = float(x)

    def predict(self, scheme: str, seq_len: int, heads: int, head_dim: int, ranks: int, kv_heads: Optional[int] = None,
                batch: int = 1, causal: bool = True, layout: str = "zigzag") -> float:  # fmt: skip
        """Predicted seconds of one :func:`sp_attention` call with `scheme` ("auto": the one :meth:`choose`
        picks) on `ranks` ranks for a global sequence of `seq_len` tokens (kv_heads None: heads)."""
        kvh = heads if kv_heads is None else kv_heads
        return self._m.predict(_scheme(scheme), int(batch), int(seq_len), int(heads), int(kvh), int(head_dim),
                               int(ranks), bool(causal), _layout(layout))  # fmt: skip

    def choose(self, seq_len: int, heads: int, head_dim: int, ranks: int, kv_heads: Optional[int] = None,
               batch: int = 1, causal: bool = True, layout: str = "zigzag") -> str:  # fmt: skip
        """The scheme with the lowest :meth:`predict`ion (what ``scheme="auto"`` runs)."""
        kvh = heads if kv_heads is None else kv_heads
        return self._m.choose(int(batch), int(seq_len), int(heads), int(kvh), int(head_dim), int(ranks),
                              bool(causal), _layout(layout))  # fmt: skip

    # By value (the parameters), so that all_reduce(..., link=model) caches its options per parameter set.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, CostModel) and json.loads(self.to_json()) == json.loads(other.to_json())

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        p = self.params
        return (f"CostModel(bandwidth_Bps={p['bandwidth_Bps']:.4g}, latency_s={p['latency_s']:.3g}, "
                f"topology={p['topology']!r}, kernel_flops={p['kernel_flops']:.4g})")  # fmt: skip
