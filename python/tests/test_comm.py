"""Communicators: thread worlds, run_threads, split / grid, timeouts, aborts, Ctrl-C, exceptions."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import flashring as fr


def test_thread_world_ranks_and_sizes():
    w = fr.thread_world(3)
    assert len(w) == 3
    assert [c.rank for c in w] == [0, 1, 2]
    assert all(c.size == 3 and c.transport == "thread" for c in w)
    assert "rank 1 of 3" in repr(w[1])


def test_run_threads_returns_results_in_rank_order():
    assert fr.run_threads(4, lambda c, k: c.rank * k, 10) == [0, 10, 20, 30]


def test_run_threads_reraises_root_cause_with_rank():
    def fn(c):
        if c.rank == 2:
            raise KeyError("boom on two")
        c.barrier()  # the others wait here until the abort reaches them

    t0 = time.monotonic()
    with pytest.raises(KeyError, match="boom on two") as info:
        fr.run_threads(4, fn, timeout=30)
    assert info.value.rank == 2
    assert time.monotonic() - t0 < 10  # the abort ended the other ranks' waits, not the 30 s timeout


def test_barrier_and_bytes_sent():
    def fn(c):
        c.reset_bytes_sent()
        c.barrier()
        return c.bytes_sent

    sent = fr.run_threads(3, fn)
    assert all(s > 0 for s in sent)


def test_timeout_raises_flashring_timeout_error():
    w = fr.thread_world(2)
    c = w[0]
    c.timeout = 0.2
    assert c.timeout == pytest.approx(0.2)
    x = np.ones(16, np.float32)
    t0 = time.monotonic()
    with pytest.raises(fr.TimeoutError) as info:  # rank 1 never joins
        fr.all_reduce(x, c, algo="twostep-fp32")
    assert isinstance(info.value, TimeoutError)  # the builtin, too
    assert info.value.rank == 0
    assert time.monotonic() - t0 < 5


def test_abort_reaches_every_rank():
    w = fr.thread_world(2)
    out = {}

    def rank1():
        try:
            w[1].barrier()
        except fr.AbortedError as e:
            out["err"] = e

    t = threading.Thread(target=rank1)
    t.start()
    time.sleep(0.1)
    w[0].abort("stop now")
    t.join(10)
    assert not t.is_alive()
    assert "stop now" in str(out["err"])
    assert w[0].aborted and w[1].aborted


def test_split_and_grid():
    def fn(c):
        even = c.split(c.rank % 2, key=-c.rank)  # reversed order inside each group
        tp, sp = fr.grid(c, tp=2, sp=3)
        x = np.array([c.rank], np.float32)
        fr.all_reduce(x, even, algo="twostep-fp32")
        y = np.array([c.rank], np.float32)
        fr.all_reduce(y, tp, algo="twostep-fp32")
        return even.rank, even.size, float(x[0]), tp.rank, sp.rank, float(y[0])

    res = fr.run_threads(6, fn)
    # even group {0, 2, 4} ordered by key -rank: 4, 2, 0
    assert [r[0] for r in res] == [2, 2, 1, 1, 0, 0]
    assert [r[2] for r in res] == [6, 9, 6, 9, 6, 9]
    # grid: rank = sp_rank * tp + tp_rank
    assert [(r[3], r[4]) for r in res] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert [r[5] for r in res] == [1, 1, 5, 5, 9, 9]


def test_grid_rejects_bad_shape():
    with pytest.raises(fr.InvalidArgument, match="tp \\* sp"):
        fr.run_threads(4, lambda c: fr.grid(c, 3, 1))


def test_closed_communicator_raises():
    w = fr.thread_world(1)
    c = w[0]
    with c:
        assert c.size == 1
    assert c.closed
    with pytest.raises(fr.InvalidArgument, match="closed"):
        c.barrier()


def test_bad_arguments():
    with pytest.raises(fr.InvalidArgument):
        fr.thread_world(0)
    with pytest.raises(fr.InvalidArgument, match="timeout"):
        fr.thread_world(1)[0].timeout = -1
    assert issubclass(fr.InvalidArgument, ValueError)
    assert issubclass(fr.TimeoutError, TimeoutError)
    assert issubclass(fr.FormatError, fr.InvalidArgument)


def test_ctrl_c_ends_a_blocked_wait_within_a_second(tmp_path):
    # A child process blocks in a collective whose peer never comes; SIGINT must end it with KeyboardInterrupt
    # promptly (the interrupt check runs about every 0.1 s), not at the 60 s timeout. The bound is loose (5 s) because CI
    # machines run this under load; what it tells apart is 0.1 s from 60 s.
    script = tmp_path / "block.py"
    script.write_text(textwrap.dedent("""
        import signal, sys, time, numpy as np, flashring as fr
        # Python leaves SIGINT ignored when it starts ignored (a background job of a non-interactive shell, as some
        # CI runners start tests): install the handler that raises KeyboardInterrupt, which is what is under test.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        w = fr.thread_world(2)
        w[0].timeout = 60
        print("ready", flush=True)
        try:
            fr.all_reduce(np.ones(8, np.float32), w[0], algo="twostep-fp32")
        except KeyboardInterrupt:
            print("interrupted", w[0].aborted, flush=True)
            sys.exit(3)
    """))
    env = dict(os.environ)
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=30)
    finally:
        p.kill()
    elapsed = time.monotonic() - t0
    assert p.returncode == 3, out
    assert "interrupted True" in out  # and the communicator was aborted, so peers end too
    assert elapsed < 5.0, elapsed
