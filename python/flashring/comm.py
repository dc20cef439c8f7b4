"""Communicators: thread ranks in this process, MPI through mpi4py, splits and TP x SP grids."""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any, Callable, List, Optional, Sequence, Tuple

from . import _core

__all__ = ["Communicator", "ThreadWorld", "thread_world", "run_threads", "from_mpi4py", "grid"]


class Communicator:
    """A group of ranks that flashring's collectives, attention and engine run over.

    Made by :func:`thread_world` / :func:`run_threads` (ranks as threads of this process), :func:`from_mpi4py`
    (one rank per MPI process) or :meth:`split`. Every collective is called by every rank of the group in the
    same order. Every wait has a deadline (:attr:`timeout`, default 120 s or ``FLASHRING_TIMEOUT_MS``); a
    failure on one rank aborts the communicator so the others raise :class:`flashring.AbortedError` instead
    of hanging. Ctrl-C during a wait on the main thread raises KeyboardInterrupt within about 0.1 s and aborts
    the communicator.

    Usable as a context manager: ``with flashring.from_mpi4py(MPI.COMM_WORLD) as comm: ...`` closes it at the
    end (for MPI, closing frees the duplicated communicator: call it on every rank, like MPI_Comm_free).
    """

    __slots__ = ("_h", "_parent", "__weakref__")

    def __init__(self, handle: "_core.Comm", parent: Optional["Communicator"] = None):
        self._h = handle
        self._parent = parent

    @property
    def rank(self) -> int:
        """This rank's index in the group, 0..size-1."""
        return self._h.rank

    @property
    def size(self) -> int:
        """Number of ranks in the group."""
        return self._h.size

    @property
    def transport(self) -> str:
        """'thread' or 'mpi' (a split reports its parent's)."""
        return self._h.transport

    @property
    def timeout(self) -> float:
        """Seconds every wait of every collective may take before raising flashring.TimeoutError."""
        return self._h.timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._h.timeout = float(seconds)

    @property
    def bytes_sent(self) -> int:
        """Payload bytes this rank has sent since creation or :meth:`reset_bytes_sent`."""
        return self._h.bytes_sent

    def reset_bytes_sent(self) -> None:
        """Restart the :attr:`bytes_sent` count."""
        self._h.reset_bytes_sent()

    @property
    def node_ids(self) -> List[int]:
        """The node of every rank (equal ids: same host), numbered from 0 in order of each node's lowest rank.
        Thread ranks: all 0; MPI: measured (shared-memory split) unless FLASHRING_RANKS_PER_NODE is set."""
        return list(self._h.node_ids)

    def set_node_ids(self, ids: Sequence[int]) -> None:
        """Override the node layout (same list on every rank), e.g. to emulate several nodes."""
        self._h.set_node_ids([int(i) for i in ids])

    def set_ranks_per_node(self, k: int) -> None:
        """Consecutive blocks of `k` ranks form the nodes (same on every rank)."""
        self._h.set_ranks_per_node(int(k))

    @property
    def aborted(self) -> bool:
        """True once any rank aborted the communicator."""
        return self._h.aborted

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._h.closed

    def barrier(self) -> None:
        """Returns once every rank has called it (collective)."""
        self._h.barrier()

    def abort(self, reason: str) -> None:
        """Fail every pending and future wait on every rank with AbortedError(reason)."""
        self._h.abort(str(reason))

    def split(self, color: int, key: int = 0) -> "Communicator":
        """MPI_Comm_split: ranks passing equal `color` form one group, ordered by (key, rank). Collective."""
        return Communicator(self._h.split(int(color), int(key)), parent=self)

    def close(self) -> None:
        """Release this handle; for MPI, free the duplicated communicator (collective, like MPI_Comm_free)."""
        self._h.close()

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._h.closed:
            return "<flashring.Communicator (closed)>"
        return f"<flashring.Communicator {self.transport} rank {self.rank} of {self.size}>"


class ThreadWorld:
    """N ranks as threads of this process (the embedded transport). ``world[r]`` is rank r's communicator;
    run each rank's calls on its own thread (see :func:`run_threads`)."""

    def __init__(self, n: int):
        if not isinstance(n, int) or n < 1:
            raise _core.InvalidArgument(f"thread_world: n must be a positive int, got {n!r}")
        self._w = _core.ThreadWorldCore(n)
        self._comms = [Communicator(self._w.comm(r)) for r in range(n)]

    @property
    def size(self) -> int:
        return self._w.size

    def __len__(self) -> int:
        return self._w.size

    def __getitem__(self, r: int) -> Communicator:
        return self._comms[r]

    def __iter__(self):
        return iter(self._comms)

    def abort(self, reason: str) -> None:
        """Abort every rank's communicator."""
        self._w.abort(str(reason))


def thread_world(n: int) -> ThreadWorld:
    """A world of `n` thread ranks; ``world[r]`` is the communicator of rank r."""
    return ThreadWorld(n)


def run_threads(n: int, fn: Callable[..., Any], *args: Any, timeout: Optional[float] = None) -> List[Any]:
    """Runs ``fn(comm, *args)`` on `n` threads, one per rank of a new thread world, and returns the results
    in rank order.

    The first exception aborts the world (the other ranks' waits then raise AbortedError at once) and is
    re-raised after every thread has ended, with ``.rank`` set to the rank that raised it (the root cause:
    an exception other than AbortedError is preferred). `timeout` sets every rank's communicator timeout.
    Ctrl-C aborts the world and raises KeyboardInterrupt.
    """
    world = ThreadWorld(n)
    if timeout is not None:
        for c in world:
            c.timeout = timeout
    results: List[Any] = [None] * n
    errors: List[Optional[BaseException]] = [None] * n
    lock = threading.Lock()
    first: List[Optional[int]] = [None]

    def body(r: int) -> None:
        try:
            results[r] = fn(world[r], *args)
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            errors[r] = e
            with lock:
                if first[0] is None:
                    first[0] = r
            try:
                world.abort(f"rank {r} raised {type(e).__name__}: {e}")
            except Exception:  # pragma: no cover - aborting an aborted world is harmless
                pass

    threads = [threading.Thread(target=body, args=(r,), name=f"flashring-rank-{r}", daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.1)
    except KeyboardInterrupt:
        world.abort("KeyboardInterrupt")
        for t in threads:
            t.join()
        raise
    failed = [r for r in range(n) if errors[r] is not None]
    if failed:
        aborted = _core.AbortedError
        root = next((r for r in failed if not isinstance(errors[r], aborted)), first[0] if first[0] is not None else failed[0])
        e = errors[root]
        try:
            e.rank = root  # type: ignore[union-attr]
        except AttributeError:
            pass
        if sys.version_info >= (3, 11):
            e.add_note(f"(raised on rank {root} of {n} thread ranks)")  # type: ignore[union-attr]
        raise e  # type: ignore[misc]
    return results


_live_mpi: "weakref.WeakSet[Communicator]" = weakref.WeakSet()
_atexit_registered = False


def _close_mpi_comms() -> None:
    # Before mpi4py finalizes MPI (its own exit hook runs after Python's atexit handlers).
    for c in list(_live_mpi):
        try:
            c.close()
        except Exception:
            pass


def from_mpi4py(comm: Any) -> Communicator:
    """A flashring communicator over an mpi4py communicator (collective: it duplicates `comm`, so flashring's
    messages never meet the application's). One rank per process; requires flashring built with MPI
    (flashring._mpi) and mpi4py built against the same MPI library. Close it (or use ``with``) on every rank."""
    global _atexit_registered
    try:
        from mpi4py import MPI  # noqa: F401
    except ImportError as e:
        raise ImportError("flashring.from_mpi4py needs mpi4py (pip install mpi4py)") from e
    try:
        from . import _mpi
    except ImportError as e:
        raise ImportError(f"this flashring was built without MPI support (flashring._mpi: {e})") from e
    if not isinstance(comm, MPI.Comm):
        raise _core.InvalidArgument(f"from_mpi4py: expected an mpi4py.MPI.Comm, got {type(comm).__name__}")
    c = Communicator(_mpi.comm_from_address(MPI._addressof(comm)))
    _live_mpi.add(c)
    if not _atexit_registered:
        import atexit

        atexit.register(_close_mpi_comms)
        _atexit_registered = True
    return c


def grid(comm: Communicator, tp: int, sp: int) -> Tuple[Communicator, Communicator]:
    """Splits `comm` (size tp * sp) into this rank's tensor-parallel group and sequence-parallel group, as the
    engine lays out its ranks: rank = sp_rank * tp + tp_rank. Returns (tp_comm, sp_comm). Collective."""
    if tp < 1 or sp < 1 or tp * sp != comm.size:
        raise _core.InvalidArgument(f"grid: tp * sp = {tp} * {sp} must equal the communicator's size {comm.size}")
    sp_rank, tp_rank = divmod(comm.rank, tp)
    tp_comm = comm.split(sp_rank, tp_rank)
    sp_comm = comm.split(tp_rank, sp_rank)
    return tp_comm, sp_comm


def _handle(group: Any, what: str = "group") -> "_core.Comm":
    if isinstance(group, Communicator):
        return group._h
    raise _core.InvalidArgument(f"{what}: expected a flashring.Communicator, got {type(group).__name__}")
