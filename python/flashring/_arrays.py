"""Argument checks shared by the public functions (numpy arrays and PyTorch CPU tensors).

The C++ side checks device, dtype and contiguity itself (naming the argument); what it cannot see through
DLPack is checked here first: PyTorch's ``requires_grad`` and read-only numpy arrays given as in-place
arguments. numpy arrays take the fast path: one type check.
"""

from __future__ import annotations

import numpy as np

from . import _core

InvalidArgument = _core.InvalidArgument

_NUMPY = np.ndarray


def _torch_tensor(x) -> bool:
    return type(x).__module__.startswith("torch")


def check_input(x, name: str):
    """Returns x when the C++ core can read it (numpy array or CPU tensor), else raises InvalidArgument."""
    if type(x) is _NUMPY:
        return x
    if _torch_tensor(x):
        if x.requires_grad:
            raise InvalidArgument(f"{name}: a tensor that requires grad; pass {name}.detach()")
        if x.device.type != "cpu":
            raise InvalidArgument(
                f"{name}: a {x.device.type} tensor; this flashring was built for CPU memory only (use .cpu())"
            )
        return x
    if isinstance(x, _NUMPY):
        return x
    raise InvalidArgument(f"{name}: expected a numpy array or a PyTorch tensor, got {type(x).__name__}")


def check_inplace(x, name: str):
    """As check_input, for arguments written in place (never a converted copy: the caller's memory)."""
    if type(x) is _NUMPY:
        if not x.flags.writeable:
            raise InvalidArgument(f"{name}: the array is read-only, and it is written in place")
        return x
    x = check_input(x, name)
    if isinstance(x, _NUMPY) and not x.flags.writeable:
        raise InvalidArgument(f"{name}: the array is read-only, and it is written in place")
    return x


def empty_like(x, shape, dtype=None):
    """An uninitialised array of `shape` of x's kind (numpy or torch) and dtype (or `dtype`: 'float32')."""
    if _torch_tensor(x):
        import torch

        return torch.empty(shape, dtype=torch.float32 if dtype == "float32" else x.dtype)
    return np.empty(shape, dtype=np.float32 if dtype == "float32" else x.dtype)
