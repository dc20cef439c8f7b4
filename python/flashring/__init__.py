"""flashring: TokenRing sequence-parallel attention and Flash Communication low-bit all-reduce for LLM inference.

Communicators: :func:`thread_world`, :func:`run_threads` (ranks as threads of this process), :func:`from_mpi4py`
(one rank per MPI process), :meth:`Communicator.split`, :func:`grid`.
Collectives: :func:`all_reduce`, :func:`all_reduce_with_error`, :func:`quantize`, :func:`dequantize`,
:func:`wire_bytes`.
Attention: :func:`sp_attention`, :func:`block_attention`, :func:`merge_attention`, :func:`zigzag_shard`,
:class:`CostModel`.
Engine: :class:`Llama`.

Arrays are numpy arrays or PyTorch CPU tensors: float32 without copies; float16 / bfloat16 converted (fp32
accumulation) and returned in their dtype. The GIL is released in every collective and kernel. Errors are
:class:`Error` subclasses carrying ``.rank``; :class:`InvalidArgument` is a ValueError, :class:`TimeoutError` a
TimeoutError.
"""

from . import _core
from ._core import AbortedError, Error, FormatError, InvalidArgument, TimeoutError, TransportError
from .collectives import (
    ALGORITHMS,
    AllreduceStats,
    all_reduce,
    all_reduce_with_error,
    auto_choice,
    dequantize,
    encoded_bytes,
    quantize,
    wire_bytes,
)
from .comm import Communicator, ThreadWorld, from_mpi4py, grid, run_threads, thread_world

__version__ = "0.1.0"


def isa() -> str:
    """The instruction set flashring's kernels run with here (FLASHRING_ISA overrides the CPU's best)."""
    return _core.isa()


__all__ = [
    "ALGORITHMS",
    "AbortedError",
    "AllreduceStats",
    "Communicator",
    "Error",
    "FormatError",
    "InvalidArgument",
    "ThreadWorld",
    "TimeoutError",
    "TransportError",
    "all_reduce",
    "all_reduce_with_error",
    "auto_choice",
    "dequantize",
    "encoded_bytes",
    "from_mpi4py",
    "grid",
    "isa",
    "quantize",
    "run_threads",
    "thread_world",
    "wire_bytes",
]

from . import attention as _attention  # noqa: E402
from . import engine as _engine  # noqa: E402
from .attention import *  # noqa: E402,F401,F403
from .engine import *  # noqa: E402,F401,F403

__all__ += _attention.__all__ + _engine.__all__
