"""The examples under examples/python run (small sizes), so they do not rot."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python"


def run(args, timeout=300, **kw):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def test_allreduce_compare():
    p = run([sys.executable, str(EXAMPLES / "allreduce_compare.py"), "--ranks", "3", "--mib", "0.25", "--iters", "1"])
    assert p.returncode == 0, p.stderr
    assert "flash-int4" in p.stdout and "twostep-fp32" in p.stdout


def test_mpi4py_example():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed")
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec is not on PATH")
    p = run([mpiexec, "-n", "2", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader,tcp",
             sys.executable, str(EXAMPLES / "mpi4py_allreduce.py"), "--mib", "0.25", "--iters", "1"])  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "mpi4py Allreduce" in p.stdout and "flashring flash-int4" in p.stdout


def test_generate_example():
    p = run([sys.executable, str(EXAMPLES / "generate.py"), "--help"])
    assert p.returncode == 0 and "--tp" in p.stdout, p.stderr
    import flashring

    model = flashring.default_model_path()
    if not os.path.isfile(model):
        pytest.skip(f"the default model is not installed ({model}; `make deps` fetches it)")
    p = run([sys.executable, str(EXAMPLES / "generate.py"), "-n", "8"])
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(" Paris"), p.stdout
    assert "8 generated" in p.stderr and "tp 2 x sp 1" in p.stderr


def test_tokenring_attention_example():
    p = run([sys.executable, str(EXAMPLES / "tokenring_attention.py"), "--ranks", "3", "--seq-len", "96",
             "--heads", "4", "--kv-heads", "2", "--head-dim", "16"])  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "max" in p.stdout.lower()
