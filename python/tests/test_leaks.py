"""No reference or memory leak after 10,000 calls of each binding family (refcounts, gc objects, tracemalloc)."""

import gc
import sys
import tracemalloc

import numpy as np

import flashring as fr


def assert_no_leak(fn, args, calls=10000):
    for _ in range(100):
        fn(*args)
    gc.collect()
    refs = [sys.getrefcount(a) for a in args]
    objs = len(gc.get_objects())
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    for _ in range(calls):
        fn(*args)
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in snap1.compare_to(snap0, "filename") if s.size_diff > 0)
    assert [sys.getrefcount(a) for a in args] == refs
    assert len(gc.get_objects()) - objs < 50
    assert grown < 64 * 1024, grown


def test_block_attention_and_merge():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 2, 16)).astype(np.float32)
    k = rng.standard_normal((1, 8, 2, 16)).astype(np.float32)
    assert_no_leak(lambda a, b: fr.block_attention(a, b, b, causal=True), (q, k))
    out, lse = fr.block_attention(q, k, k)
    out2, lse2 = fr.block_attention(q, k, k)
    assert_no_leak(lambda o, l: fr.merge_attention(o, l, out2, lse2), (out, lse))


def test_sp_attention_one_rank():
    c = fr.thread_world(1)[0]
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 8, 2, 16)).astype(np.float32)
    assert_no_leak(lambda x: fr.sp_attention(x, x, x, c, seq_len=8, return_lse=True), (q,))


def test_quantize_dequantize():
    x = np.random.default_rng(2).standard_normal(300).astype(np.float32)
    out = np.empty(300, np.float32)
    q = fr.quantize(x, bits=4)
    assert_no_leak(lambda a: fr.quantize(a, bits=4), (x,))
    assert_no_leak(lambda d, o: fr.dequantize(d, bits=4, out=o), (q, out))


def test_engine_tokenize_and_generate():
    import os
    import pathlib

    import pytest

    d = pathlib.Path(os.environ.get("FLASHRING_FIXTURE_DIR", pathlib.Path(__file__).resolve().parents[2] / "build" / "fixtures"))
    model = d / "tiny-quant.gguf"
    if not model.exists():
        pytest.skip(f"{model} is missing (written by tests/tools/make_tiny_models.py when gguf is installed)")
    with fr.Llama(str(model), tp=2) as llm:
        ids = llm.tokenize("hello world")
        assert_no_leak(lambda t: llm.tokenize(t), ("hello world",))
        assert_no_leak(lambda i: llm.detokenize(i), (ids,))
        assert_no_leak(lambda p: llm.generate(p, max_tokens=2), (ids,), calls=300)
