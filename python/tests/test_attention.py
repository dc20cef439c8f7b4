"""flashring.attention: sp_attention against a float64 numpy reference for every scheme, layout, mask, head
grouping and rank count; block_attention against the C++ reference kernel and numpy; the lse merge; the
sharding helpers; dtypes; determinism; and every rejected input."""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest

import flashring
from flashring import _core

try:
    import torch

    _TORCH_ERR = None
except Exception as e:  # noqa: BLE001 - any import failure means "no torch here"
    torch = None
    _TORCH_ERR = f"{type(e).__name__}: {e}"


def need_torch():
    if torch is None:
        pytest.skip(f"torch not installed: {_TORCH_ERR}")


SCHEMES = ["tokenring", "ring-kv", "ulysses", "allgather-kv", "auto"]
LAYOUTS = ["zigzag", "contiguous"]


# ------------------------------------------------------------------------------------------------ reference
def ref_attention(q, k, v, causal=False, q_offset=0, k_offset=0, scale=None):
    """float64 attention: q [b, s, h, d], k/v [b, t, kvh, d] -> out [b, s, h, d], lse [b, h, s]."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    b, s, h, d = q.shape
    t, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    kr, vr = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    scores = np.einsum("bshd,bthd->bhst", q, kr) * scale
    if causal:
        qi = q_offset + np.arange(s)[:, None]
        kj = k_offset + np.arange(t)[None, :]
        scores = np.where(kj <= qi, scores, -np.inf)
    m = scores.max(axis=-1, keepdims=True) if t else np.full((b, h, s, 1), -np.inf)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(scores - m_safe)
    denom = p.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = np.where(denom > 0, np.log(denom) + m_safe, -np.inf)[..., 0]
        w = np.where(denom > 0, p / denom, 0.0)
    out = np.einsum("bhst,bthd->bshd", w, vr)
    return out, lse


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def qkv(b, s, h, kvh, d, seed=0):
    return rand((b, s, h, d), seed), rand((b, s, kvh, d), seed + 1), rand((b, s, kvh, d), seed + 2)


_ref_cache: dict = {}


def cached_ref(key, q, k, v, causal):
    if key not in _ref_cache:
        _ref_cache[key] = ref_attention(q, k, v, causal)
    return _ref_cache[key]


def run_sp(n, q, k, v, timeout=30, **kw):
    """sp_attention on n thread ranks of the full q, k, v; returns each rank's (out, lse, stats)."""
    layout = kw.get("layout", "zigzag")

    def body(comm):
        r = comm.rank
        ql, kl, vl = (flashring.zigzag_shard(x, r, n, layout=layout) for x in (q, k, v))
        return flashring.sp_attention(ql, kl, vl, comm, return_lse=True, return_stats=True, **kw)

    return flashring.run_threads(n, body, timeout=timeout)


# ------------------------------------------------------------------------------------- sp_attention: values
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_sp_attention_equals_numpy(n, scheme, layout, causal):
    for h, kvh in ((4, 4), (6, 2)):  # MHA, GQA
        for s in (2 * n + 1, 5 * n + 3):  # lengths that do not divide evenly
            q, k, v = qkv(2 if s % 2 else 1, s, h, kvh, 16, seed=s * 10 + h)
            out_ref, lse_ref = cached_ref((s, h, kvh, causal), q, k, v, causal)
            res = run_sp(n, q, k, v, causal=causal, scheme=scheme, layout=layout)
            outs = [o for o, _, _ in res]
            lses = [lse for _, lse, _ in res]
            for r, (o, lse, st) in enumerate(res):
                L = flashring.local_length(s, n, r, layout)
                assert o.shape == (q.shape[0], L, h, 16) and o.dtype == np.float32
                assert lse.shape == (q.shape[0], h, L) and lse.dtype == np.float32
                if scheme != "auto":
                    assert st.scheme == scheme
                else:
                    assert st.scheme in flashring.SCHEMES[1:]
            out = flashring.zigzag_unshard(outs, layout=layout)
            lse = flashring.zigzag_unshard(lses, dim=2, layout=layout)
            what = f"{scheme} n={n} s={s} h={h} kvh={kvh} {layout} causal={causal}"
            np.testing.assert_allclose(out, out_ref, rtol=0, atol=1e-5, err_msg=what)
            np.testing.assert_allclose(lse, lse_ref, rtol=0, atol=1e-5, err_msg=what)


def test_sp_attention_batch_scale_and_given_seq_len():
    q, k, v = qkv(2, 37, 4, 1, 32, seed=7)  # MQA
    out_ref, lse_ref = ref_attention(q, k, v, causal=True, scale=0.3)
    for scheme in SCHEMES[:4]:
        res = run_sp(3, q, k, v, scheme=scheme, softmax_scale=0.3, seq_len=37)
        np.testing.assert_allclose(flashring.zigzag_unshard([o for o, _, _ in res]), out_ref, atol=1e-5)
        np.testing.assert_allclose(flashring.zigzag_unshard([x for _, x, _ in res], dim=2), lse_ref, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sp_attention_with_ranks_holding_no_tokens(layout):
    q, k, v = qkv(1, 3, 4, 2, 8, seed=9)  # 3 tokens on 4 ranks: one rank's shard is empty
    out_ref, lse_ref = ref_attention(q, k, v, causal=True)
    for scheme in SCHEMES:
        res = run_sp(4, q, k, v, scheme=scheme, layout=layout)
        assert sorted(o.shape[1] for o, _, _ in res) == [0, 1, 1, 1]
        np.testing.assert_allclose(flashring.zigzag_unshard([o for o, _, _ in res], layout=layout), out_ref, atol=1e-5)
        lse = flashring.zigzag_unshard([x for _, x, _ in res], dim=2, layout=layout)
        np.testing.assert_allclose(lse, lse_ref, atol=1e-5)


def test_sp_attention_return_forms_and_stats():
    q, k, v = qkv(1, 24, 4, 2, 16, seed=3)

    def body(comm):
        ql, kl, vl = (flashring.zigzag_shard(x, comm.rank, comm.size) for x in (q, k, v))
        plain = flashring.sp_attention(ql, kl, vl, comm, scheme="tokenring")
        o, lse = flashring.sp_attention(ql, kl, vl, comm, scheme="tokenring", return_lse=True)
        o2, st = flashring.sp_attention(ql, kl, vl, comm, scheme="tokenring", return_stats=True)
        return plain, o, lse, o2, st

    for plain, o, lse, o2, st in flashring.run_threads(4, body):
        assert isinstance(plain, np.ndarray)
        assert np.array_equal(plain, o) and np.array_equal(plain, o2)  # lse does not change out's bits
        assert lse.shape == (1, 4, 6)
        assert isinstance(st, flashring.SpAttentionStats)
        assert st.scheme == "tokenring" and st.bytes_fwd > 0 and st.bytes_bwd > 0
        assert st.compute_s >= 0 and st.comm_s >= 0 and st.predicted_s > 0
        assert len(st.step_compute_s) == 4
        assert "tokenring" in repr(st)


def test_sp_attention_is_deterministic_across_calls_and_worlds():
    q, k, v = qkv(1, 41, 8, 2, 16, seed=11)
    for scheme in SCHEMES[:4]:
        for layout in LAYOUTS:

            def body(comm):
                ql, kl, vl = (flashring.zigzag_shard(x, comm.rank, comm.size, layout=layout) for x in (q, k, v))
                a = flashring.sp_attention(ql, kl, vl, comm, scheme=scheme, layout=layout, return_lse=True)
                b = flashring.sp_attention(ql, kl, vl, comm, scheme=scheme, layout=layout, return_lse=True)
                return a, b

            first = flashring.run_threads(4, body)
            again = flashring.run_threads(4, body)
            for (a, b), (c, _) in zip(first, again):
                for x, y, z in zip(a, b, c):
                    assert x.tobytes() == y.tobytes() == z.tobytes(), f"{scheme} {layout}"


def test_sp_attention_auto_follows_the_cost_model():
    q, k, v = qkv(1, 32, 4, 4, 16, seed=5)
    # Communication-bound (slow links): the model's choice is what runs.
    cm = flashring.CostModel(bandwidth_Bps=1e6, latency_s=1e-3, topology="star", kernel_flops=1e12)
    want = cm.choose(seq_len=32, heads=4, head_dim=16, ranks=2, kv_heads=4)

    def body(comm):
        ql, kl, vl = (flashring.zigzag_shard(x, comm.rank, 2) for x in (q, k, v))
        return flashring.sp_attention(ql, kl, vl, comm, cost_model=cm, return_stats=True)

    res = flashring.run_threads(2, body)
    for _, st in res:
        assert st.scheme == want
        assert st.predicted_s == pytest.approx(cm.predict(want, seq_len=32, heads=4, head_dim=16, ranks=2))
    out_ref, _ = ref_attention(q, k, v, causal=True)
    np.testing.assert_allclose(flashring.zigzag_unshard([o for o, _ in res]), out_ref, atol=1e-5)


# -------------------------------------------------------------------------------------------- sp: dtypes
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_sp_attention_torch_half_dtypes(dtype):
    need_torch()
    td = getattr(torch, dtype)
    q, k, v = (torch.from_numpy(x).to(td) for x in qkv(1, 21, 4, 2, 16, seed=2))
    # The reference sees the values the kernel sees: the rounded inputs, in float64.
    out_ref, lse_ref = ref_attention(*(x.float().numpy() for x in (q, k, v)), causal=True)
    for scheme in ("tokenring", "ulysses"):

        def body(comm):
            ql, kl, vl = (flashring.zigzag_shard(x, comm.rank, 3) for x in (q, k, v))
            return flashring.sp_attention(ql, kl, vl, comm, scheme=scheme, return_lse=True)

        res = flashring.run_threads(3, body)
        for o, lse in res:
            assert isinstance(o, torch.Tensor) and o.dtype == td
            assert isinstance(lse, torch.Tensor) and lse.dtype == torch.float32
        out = flashring.zigzag_unshard([o for o, _ in res]).float().numpy()
        lse = flashring.zigzag_unshard([x for _, x in res], dim=2).numpy()
        tol = 1e-2 if dtype == "bfloat16" else 2e-3  # the output's own rounding
        np.testing.assert_allclose(out, out_ref, atol=tol)
        np.testing.assert_allclose(lse, lse_ref, atol=1e-5)


def test_sp_attention_torch_float32_and_numpy_float16():
    q, k, v = qkv(1, 16, 2, 2, 8, seed=4)
    out_ref, _ = ref_attention(q, k, v, causal=False)
    qh, kh, vh = (x.astype(np.float16) for x in (q, k, v))
    ref16, _ = ref_attention(qh, kh, vh, causal=False)

    def body16(comm):
        ql, kl, vl = (flashring.zigzag_shard(x, comm.rank, 2) for x in (qh, kh, vh))
        return flashring.sp_attention(ql, kl, vl, comm, causal=False)

    outs = flashring.run_threads(2, body16)
    assert all(o.dtype == np.float16 for o in outs)
    np.testing.assert_allclose(flashring.zigzag_unshard(outs).astype(np.float64), ref16, atol=2e-3)
    if torch is None:
        return
    qt, kt, vt = (torch.from_numpy(x) for x in (q, k, v))

    def body(comm):
        ql, kl, vl = (flashring.zigzag_shard(x, comm.rank, 2) for x in (qt, kt, vt))
        return flashring.sp_attention(ql, kl, vl, comm, causal=False, scheme="ring-kv")

    outs = flashring.run_threads(2, body)
    assert all(isinstance(o, torch.Tensor) and o.dtype == torch.float32 for o in outs)
    np.testing.assert_allclose(flashring.zigzag_unshard(outs).numpy(), out_ref, atol=1e-5)


# ----------------------------------------------------------------------------------------- block attention
@pytest.mark.parametrize(
    "b,sq,sk,h,kvh,d,causal,qo,ko",
    [
        (1, 7, 9, 4, 4, 16, False, 0, 0),
        (2, 13, 5, 6, 2, 32, False, 0, 0),
        (1, 12, 12, 4, 1, 16, True, 0, 0),
        (2, 9, 20, 4, 2, 8, True, 11, 0),  # a block after a cached prefix
        (1, 6, 8, 2, 2, 16, True, 3, 5),  # rows 0..1 see no key: out 0, lse -inf
    ],
)
def test_block_attention_equals_reference_and_numpy(b, sq, sk, h, kvh, d, causal, qo, ko):
    q, k, v = rand((b, sq, h, d), 1), rand((b, sk, kvh, d), 2), rand((b, sk, kvh, d), 3)
    out, lse = flashring.block_attention(q, k, v, causal=causal, q_offset=qo, k_offset=ko)
    assert out.shape == q.shape and out.dtype == np.float32 and lse.shape == (b, h, sq) and lse.dtype == np.float32
    ro, rl = np.empty_like(q), np.empty((b, h, sq), np.float32)
    _core.block_attention_reference(q, k, v, ro, rl, causal, qo, ko, 0.0)
    no, nl = ref_attention(q, k, v, causal, qo, ko)
    np.testing.assert_allclose(out, ro, rtol=0, atol=1e-6)
    np.testing.assert_allclose(lse, rl, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out, no, rtol=0, atol=1e-5)
    np.testing.assert_allclose(lse, nl, rtol=0, atol=1e-5)
    if causal and qo + 1 < ko:
        assert np.all(np.isneginf(lse[:, :, : ko - qo])) and np.all(out[:, : ko - qo] == 0)


def test_block_attention_scale_empty_keys_and_half_dtypes():
    q, k, v = rand((1, 5, 2, 8), 4), rand((1, 6, 2, 8), 5), rand((1, 6, 2, 8), 6)
    out, lse = flashring.block_attention(q, k, v, softmax_scale=0.7)
    no, nl = ref_attention(q, k, v, scale=0.7)
    np.testing.assert_allclose(out, no, atol=1e-5)
    np.testing.assert_allclose(lse, nl, atol=1e-5)
    out, lse = flashring.block_attention(q, k[:, :0], v[:, :0])
    assert np.all(out == 0) and np.all(np.isneginf(lse))
    qh, kh, vh = (x.astype(np.float16) for x in (q, k, v))
    out, lse = flashring.block_attention(qh, kh, vh)
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float64), ref_attention(qh, kh, vh)[0], atol=2e-3)
    if torch is None:
        return
    tq, tk, tv = (torch.from_numpy(x).to(torch.bfloat16) for x in (q, k, v))
    out, lse = flashring.block_attention(tq, tk, tv, causal=True)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32 and lse.shape == (1, 2, 5)
    ro, rl = ref_attention(*(x.float().numpy() for x in (tq, tk, tv)), causal=True)
    np.testing.assert_allclose(out.float().numpy(), ro, atol=1e-2)
    np.testing.assert_allclose(lse.numpy(), rl, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_merge_of_two_halves_equals_the_whole(causal):
    b, s, h, kvh, d = 2, 10, 4, 2, 16
    q, k, v = rand((b, s, h, d), 7), rand((b, 17, kvh, d), 8), rand((b, 17, kvh, d), 9)
    qo = 7  # queries at 7..16 see keys 0..q
    c = np.ascontiguousarray
    ka, va, kb, vb = c(k[:, :9]), c(v[:, :9]), c(k[:, 9:]), c(v[:, 9:])
    whole, whole_lse = flashring.block_attention(q, k, v, causal=causal, q_offset=qo)
    oa, la = flashring.block_attention(q, ka, va, causal=causal, q_offset=qo)
    ob, lb = flashring.block_attention(q, kb, vb, causal=causal, q_offset=qo, k_offset=9)
    if causal:
        assert np.all(np.isneginf(lb[:, :, :2]))  # queries 7, 8 see none of keys 9..16
    flashring.merge_attention(oa, la, ob, lb)
    np.testing.assert_allclose(oa, whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(la, whole_lse, rtol=0, atol=1e-6)
    np.testing.assert_allclose(oa, ref_attention(q, k, v, causal, qo)[0], atol=1e-5)
    if torch is None:
        return
    ta, tla = (torch.from_numpy(x) for x in flashring.block_attention(q, ka, va, causal=causal, q_offset=qo))
    flashring.merge_attention(ta, tla, torch.from_numpy(ob), torch.from_numpy(lb))
    np.testing.assert_allclose(ta.numpy(), whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(tla.numpy(), whole_lse, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------- sharding
def test_zigzag_shard_layout_and_roundtrip():
    x = np.arange(8)[None, :, None, None].astype(np.float32)
    assert flashring.zigzag_shard(x, 0, 2)[0, :, 0, 0].tolist() == [0, 1, 6, 7]
    assert flashring.zigzag_shard(x, 1, 2)[0, :, 0, 0].tolist() == [2, 3, 4, 5]
    assert flashring.zigzag_shard(x, 1, 2, layout="contiguous")[0, :, 0, 0].tolist() == [4, 5, 6, 7]
    assert flashring.local_segments(8, 2, 0) == [(0, 2), (6, 2)]
    for s in (1, 5, 13, 29):
        for n in (1, 2, 3, 4, 8):
            for layout in LAYOUTS:
                full = rand((2, s, 3, 4), s)
                shards = [flashring.zigzag_shard(full, r, n, layout=layout) for r in range(n)]
                for r, sh in enumerate(shards):
                    assert sh.shape[1] == flashring.local_length(s, n, r, layout)
                    assert sh.flags.c_contiguous
                    rows = [a + i for a, m in flashring.local_segments(s, n, r, layout) for i in range(m)]
                    assert np.array_equal(sh, full[:, rows])
                assert np.array_equal(flashring.zigzag_unshard(shards, layout=layout), full)
                # another dimension
                t = np.ascontiguousarray(full.transpose(1, 0, 2, 3))
                sh0 = [flashring.zigzag_shard(t, r, n, dim=0, layout=layout) for r in range(n)]
                assert np.array_equal(flashring.zigzag_unshard(sh0, dim=0, layout=layout), t)


def test_zigzag_shard_torch():
    need_torch()
    full = torch.randn(1, 11, 2, 4, dtype=torch.bfloat16)
    shards = [flashring.zigzag_shard(full, r, 3) for r in range(3)]
    assert all(isinstance(s, torch.Tensor) and s.dtype == torch.bfloat16 and s.is_contiguous() for s in shards)
    assert torch.equal(flashring.zigzag_unshard(shards), full)
    rows = [a + i for a, n in flashring.local_segments(11, 3, 1) for i in range(n)]
    assert len(rows) == 4 and torch.equal(shards[1], full[:, rows])


def test_sharding_rejects_bad_arguments():
    x = np.zeros((1, 8, 2, 2), np.float32)
    with pytest.raises(flashring.InvalidArgument, match="rank"):
        flashring.zigzag_shard(x, 2, 2)
    with pytest.raises(flashring.InvalidArgument, match="world"):
        flashring.zigzag_shard(x, 0, 0)
    with pytest.raises(flashring.InvalidArgument, match="dim"):
        flashring.zigzag_shard(x, 0, 2, dim=4)
    with pytest.raises(flashring.InvalidArgument, match="layout"):
        flashring.zigzag_shard(x, 0, 2, layout="striped")
    with pytest.raises(flashring.InvalidArgument, match="x"):
        flashring.zigzag_shard([1, 2], 0, 2)
    c = np.ascontiguousarray
    assert flashring.zigzag_unshard([c(x[:, :3]), c(x[:, :4])]).shape == (1, 7, 2, 2)
    with pytest.raises(flashring.InvalidArgument, match=r"shards\[0\]: 4 tokens along dim 1"):
        flashring.zigzag_unshard([c(x[:, :4]), c(x[:, :3])])  # of 7 tokens, rank 0 holds 2 + 1
    with pytest.raises(flashring.InvalidArgument, match=r"shards\[1\]"):
        flashring.zigzag_unshard([x[:, :4], x[:, :4, :1]])
    with pytest.raises(flashring.InvalidArgument, match="shards"):
        flashring.zigzag_unshard([])


# ---------------------------------------------------------------------------------------------- cost model
def test_cost_model_params_json_predict_choose():
    cm = flashring.CostModel()
    p = cm.params
    assert set(p) == {"bandwidth_Bps", "latency_s", "topology", "kernel_flops"}
    assert p["topology"] == "star" and p["bandwidth_Bps"] > 0
    cm2 = flashring.CostModel(bandwidth_Bps=1.25e8, kernel_flops=1e12, topology="mesh")
    assert cm2.topology == "mesh" and cm2.bandwidth_Bps == 1.25e8
    back = flashring.CostModel.from_json(cm2.to_json())
    assert back == cm2 and json.loads(back.to_json())["kernel_flops"] == 1e12
    # The C++ cost-model test's case: TokenRing beats RingKV for MHA on a mesh, RingKV wins for GQA on a star.
    mha = dict(seq_len=8192, heads=32, kv_heads=32, head_dim=128, ranks=4)
    assert cm2.predict("tokenring", **mha) < cm2.predict("ring-kv", **mha)
    cm2.topology = "star"
    gqa = dict(mha, kv_heads=8)
    assert cm2.predict("ring-kv", **gqa) < cm2.predict("tokenring", **gqa)
    best = cm2.choose(**gqa)
    assert best in flashring.SCHEMES[1:]
    assert cm2.predict("auto", **gqa) == cm2.predict(best, **gqa)
    assert min(cm2.predict(s, **gqa) for s in flashring.SCHEMES[1:]) == cm2.predict(best, **gqa)
    assert isinstance(flashring.auto_choice(1 << 20, 4, link=cm2), str)  # all_reduce takes it as link=
    with pytest.raises(flashring.InvalidArgument, match="topology"):
        flashring.CostModel.from_json('{"bandwidth_Bps":1,"latency_s":0,"topology":"ring","kernel_flops":1}')
    with pytest.raises(flashring.InvalidArgument):
        flashring.CostModel.from_json("{}")
    with pytest.raises(flashring.InvalidArgument, match="bandwidth_Bps"):
        cm2.bandwidth_Bps = -1
    with pytest.raises(flashring.InvalidArgument, match="topology"):
        flashring.CostModel(topology="torus")
    with pytest.raises(flashring.InvalidArgument, match="scheme"):
        cm2.predict("ring", **gqa)


def test_cost_model_calibration_agrees_on_every_rank():
    models = flashring.run_threads(2, lambda c: flashring.CostModel.calibrate(c, topology="mesh"), timeout=30)
    assert models[0].to_json() == models[1].to_json()
    assert models[0].topology == "mesh" and models[0].kernel_flops > 1e7 and models[0].bandwidth_Bps > 0
    with pytest.raises(flashring.InvalidArgument, match="topology"):
        flashring.run_threads(1, lambda c: flashring.CostModel.calibrate(c, topology="ring"))


# --------------------------------------------------------------------------------------------- rejections
def _one_rank(fn):
    return flashring.run_threads(1, fn, timeout=5)[0]


def _sp1(q, k, v, **kw):
    return _one_rank(lambda c: flashring.sp_attention(q, k, v, c, **kw))


@pytest.mark.parametrize("api", ["sp", "block"])
def test_rejected_inputs(api):
    q, k, v = qkv(1, 8, 4, 2, 8)
    call = (lambda *a, **kw: _sp1(*a, **kw)) if api == "sp" else flashring.block_attention
    c = np.ascontiguousarray
    cases = [
        ((q.astype(np.float64), k, v), "q: dtype float64"),
        ((q, k.astype(np.int32), v), "k: dtype int32"),
        ((q, k, np.ones(v.shape, np.int64)), "v: dtype int64"),
        ((q.transpose(0, 2, 1, 3), k, v), "q: not C-contiguous"),
        ((q, k[:, :, :, ::2], v), "k: not C-contiguous"),
        ((q[0], k, v), "q: expected 4 dimensions"),
        ((q, k[0], v), "k: expected 4 dimensions"),
        ((q, k, c(v[:, :, :1])), "v: shape"),
        ((q, c(k[..., :4]), c(v[..., :4])), "k: head_dim"),
        ((c(q[:, :, :3]), k, v), "kv_heads 2 must divide q's heads 3"),
        ((np.concatenate([q, q]), k, v), "k: batch"),
        (([[1.0]], k, v), "q: expected a numpy array or a PyTorch tensor"),
    ]
    if api == "sp":
        cases.append(((q, c(k[:, :6]), c(v[:, :6])), "k: 6 local tokens"))
    for args, msg in cases:
        with pytest.raises(flashring.InvalidArgument, match=msg):
            call(*args)
    for bad in (0, -1.0, float("nan"), float("inf"), "x"):
        with pytest.raises(flashring.InvalidArgument, match="softmax_scale"):
            call(q, k, v, softmax_scale=bad)
    assert issubclass(flashring.InvalidArgument, ValueError)


def test_rejected_sp_options():
    q, k, v = qkv(1, 8, 4, 2, 8)
    with pytest.raises(flashring.InvalidArgument, match="scheme"):
        _sp1(q, k, v, scheme="ring")
    with pytest.raises(flashring.InvalidArgument, match="layout"):
        _sp1(q, k, v, layout="striped")
    with pytest.raises(flashring.InvalidArgument, match="seq_len"):
        _sp1(q, k, v, seq_len=0)
    with pytest.raises(flashring.InvalidArgument, match="q: 8 local tokens on rank 0"):
        _sp1(q, k, v, seq_len=9)
    with pytest.raises(flashring.InvalidArgument, match="cost_model"):
        _sp1(q, k, v, cost_model="fast")
    with pytest.raises(flashring.InvalidArgument, match="group"):
        flashring.sp_attention(q, k, v, "world")


def test_rejected_torch_inputs():
    need_torch()
    q, k, v = (torch.from_numpy(x) for x in qkv(1, 8, 4, 2, 8))
    qg = q.clone().requires_grad_(True)
    with pytest.raises(flashring.InvalidArgument, match=r"q: a tensor that requires grad"):
        flashring.block_attention(qg, k, v)
    with pytest.raises(flashring.InvalidArgument, match=r"v: a tensor that requires grad"):
        _sp1(q, k, v.clone().requires_grad_(True))
    with pytest.raises(flashring.InvalidArgument, match="q: not C-contiguous"):
        flashring.block_attention(q.transpose(1, 2), k, v)
    with pytest.raises(flashring.InvalidArgument, match="q: dtype float64"):
        flashring.block_attention(q.double(), k, v)
    with pytest.raises(flashring.InvalidArgument, match="k: dtype int32"):
        _sp1(q, k.int(), v)


def test_rejected_merge_inputs():
    o, l = flashring.block_attention(*qkv(1, 4, 2, 2, 8))
    ob, lb = o.copy(), l.copy()
    with pytest.raises(flashring.InvalidArgument, match="lse: must be float32"):
        flashring.merge_attention(o.astype(np.float16), l.astype(np.float16), ob, lb)
    with pytest.raises(flashring.InvalidArgument, match=r"lse: shape \(1, 4, 2\)"):
        flashring.merge_attention(o, np.ascontiguousarray(l.transpose(0, 2, 1)), ob, lb)
    with pytest.raises(flashring.InvalidArgument, match="out_b: shape"):
        flashring.merge_attention(o, l, ob[:, :2], lb)
    with pytest.raises(flashring.InvalidArgument, match="out: expected 4 dimensions"):
        flashring.merge_attention(o[0], l, ob, lb)
    ro = o.copy()
    ro.flags.writeable = False
    with pytest.raises(flashring.InvalidArgument, match="out: the array is read-only"):
        flashring.merge_attention(ro, l, ob, lb)
    with pytest.raises(flashring.InvalidArgument, match="same memory"):
        flashring.merge_attention(o, l, o, lb)


def test_mismatched_shapes_across_ranks_raise_on_every_rank():
    # Ranks disagree on the head count: the core's cross-rank shape check fails on every rank.
    q, k, v = qkv(1, 12, 4, 2, 8)
    for scheme in ("tokenring", "ulysses"):

        def body(comm):
            h = 4 if comm.rank != 1 else 2
            ql, kl, vl = (flashring.zigzag_shard(x[:, :, :h], comm.rank, 3) for x in (q, k, v))
            try:
                flashring.sp_attention(ql, kl, vl, comm, scheme=scheme)
            except flashring.Error as e:
                return e
            return None

        t0 = time.monotonic()
        errs = flashring.run_threads(3, body, timeout=5)
        assert time.monotonic() - t0 < 5
        # Every rank fails naming the values: InvalidArgument where the check completed, AbortedError (whose
        # message carries the first rank's reason) where a peer's abort arrived first.
        for r, e in enumerate(errs):
            assert isinstance(e, (flashring.InvalidArgument, flashring.AbortedError)), (scheme, r, e)
            assert re.search(r"\bheads=\d", str(e)) and "differs across ranks" in str(e), (scheme, r, e)
        assert any(isinstance(e, flashring.InvalidArgument) for e in errs)


def test_a_bad_argument_on_one_rank_fails_every_rank_at_once():
    q, k, v = qkv(1, 12, 4, 2, 8)

    def body(comm, bad):
        ql, kl, vl = (flashring.zigzag_shard(x, comm.rank, 3) for x in (q, k, v))
        if comm.rank == 2:
            ql = bad(ql)
        try:
            flashring.sp_attention(ql, kl, vl, comm)
        except flashring.Error as e:
            return e
        return None

    c = np.ascontiguousarray
    # Wrong on rank 2 alone: rank 2 raises InvalidArgument, the others AbortedError (or InvalidArgument).
    bads = [lambda x: x.astype(np.float64), lambda x: c(x[..., :4]), lambda x: x[:, ::-1]]
    if torch is not None:
        bads.append(lambda x: torch.from_numpy(x).requires_grad_(True))
    # One token short on rank 2: the derived seq_len is then wrong for every rank's layout, so whichever rank
    # checks first raises InvalidArgument and aborts the rest.
    bads.append(lambda x: c(x[:, :-1]))
    for i, bad in enumerate(bads):
        t0 = time.monotonic()
        errs = flashring.run_threads(3, body, bad, timeout=5)
        assert time.monotonic() - t0 < 4  # the others are aborted, not left to time out
        for e in errs:
            assert isinstance(e, flashring.Error), e
        if i < len(bads) - 1:
            assert isinstance(errs[2], flashring.InvalidArgument), errs[2]
        else:
            assert any(isinstance(e, flashring.InvalidArgument) and "local tokens" in str(e) for e in errs), errs


def test_lse_and_out_are_fresh_arrays_and_inputs_are_untouched():
    q, k, v = qkv(1, 9, 2, 2, 8, seed=21)
    keep = [x.copy() for x in (q, k, v)]
    out, lse = flashring.block_attention(q, k, v)
    assert not np.shares_memory(out, q)
    for a, b in zip((q, k, v), keep):
        assert np.array_equal(a, b)
    res = run_sp(2, q, k, v)
    for a, b in zip((q, k, v), keep):
        assert np.array_equal(a, b)
    assert res[0][0].flags.writeable and res[0][1].flags.c_contiguous


def test_two_level_schemes_over_emulated_nodes():
    fr = flashring
    # Ulysses inside each node, TokenRing / ring-KV across nodes (2 nodes x 2 ranks set on thread ranks).
    rng = np.random.default_rng(5)
    S, H, KVH, D = 37, 4, 2, 16
    q, k, v = (rng.standard_normal((1, S, h, D)).astype(np.float32) for h in (H, KVH, KVH))
    want, want_lse = fr.block_attention(q, k, v, causal=True)
    for scheme in ("ulysses+tokenring", "ulysses+ring-kv"):
        def fn(c):
            c.set_ranks_per_node(2)
            sh = lambda x: np.ascontiguousarray(fr.zigzag_shard(x, c.rank, c.size))  # noqa: E731
            return fr.sp_attention(sh(q), sh(k), sh(v), c, scheme=scheme, return_lse=True, return_stats=True)

        res = fr.run_threads(4, fn)
        out = fr.zigzag_unshard([r[0] for r in res])
        lse = fr.zigzag_unshard([r[1] for r in res], dim=2)
        assert np.abs(out - want).max() < 1e-5, scheme
        assert np.abs(lse - want_lse).max() < 1e-5, scheme
        assert res[0][2].scheme == scheme
