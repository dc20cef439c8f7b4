"""Shared fixtures of the Python package's tests.

Run by CTest (tests/CMakeLists.txt) with PYTHONPATH=<build>/python and these variables:
  FLASHRING_CLI           the flashring command-line tool of the same build
  FLASHRING_PY_REFERENCE  tests/python/allreduce_reference.cc: the C++ API's all-reduce on given inputs
  FLASHRING_FIXTURE_DIR   the tiny GGUF models the C++ tests use
By hand: cd python/tests && PYTHONPATH=../../build/python ../../.venv/bin/python -m pytest -q
"""

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _build_file(var: str, rel: str):
    p = os.environ.get(var)
    if p:
        return pathlib.Path(p)
    guess = ROOT / "build" / rel
    return guess if guess.exists() else None


@pytest.fixture(scope="session")
def cli_path():
    p = _build_file("FLASHRING_CLI", "bin/flashring")
    if p is None or not p.exists():
        pytest.skip("the flashring CLI was not found (set FLASHRING_CLI)")
    return p


@pytest.fixture(scope="session")
def reference_path():
    p = _build_file("FLASHRING_PY_REFERENCE", "bin/flashring_py_reference")
    if p is None or not p.exists():
        pytest.skip("flashring_py_reference was not found (set FLASHRING_PY_REFERENCE; built with the Python package)")
    return p


def torch_or_skip():
    try:
        import torch
    except Exception as e:  # ImportError, or a torch whose native libraries do not load
        pytest.skip(f"torch is not usable here ({type(e).__name__}: {e}); pip install torch to run this test")
    return torch
