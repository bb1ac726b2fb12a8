"""``linformer``: fast path vs dense reference, identity limit, max length, sharing, errors."""

import pytest
import torch

import attnzoo
from attnzoo.ops.linformer import linformer_attention, naive_linformer_attention
from attnzoo.testing import assert_beats_trivial, assert_close, clustered_qkv, make_qkv

F64 = torch.float64


@pytest.mark.parametrize("shared", ["kv", "headwise", "headwise-kv", "none"])
def test_matches_naive(shared):
    q, k, v = make_qkv(2, 3, 29, 8, seed=1)
    gen = torch.Generator().manual_seed(0)
    heads = 1 if shared.startswith("headwise") else 3  # one E for all heads: one GEMM over their columns
    e = torch.randn(heads, 6, 40, generator=gen, dtype=F64).requires_grad_()
    f = None if shared.endswith("kv") else torch.randn(heads, 6, 40, generator=gen, dtype=F64).requires_grad_()
    mask = torch.arange(29)[None] < torch.tensor([[29], [17]])
    out = linformer_attention(q, k, v, mask=mask, e_proj=e, f_proj=f)
    ref = naive_linformer_attention(q, k, v, mask=mask, e_proj=e, f_proj=f)
    assert_close("out", ref, out, 1e-12)
    inputs = (q, k, v, e) if f is None else (q, k, v, e, f)
    for g, g_ref in zip(torch.autograd.grad(out.sum(), inputs), torch.autograd.grad(ref.sum(), inputs), strict=True):
        assert_close("grad", g_ref, g, 1e-10)


def test_identity_projection_is_exact_softmax():
    q, k, v = make_qkv(2, 2, 24, 8, seed=2, requires_grad=False)
    eye = torch.eye(24, dtype=F64)[None]
    out = linformer_attention(q, k, v, e_proj=eye)
    assert_close("identity", attnzoo.functional.softmax(q, k, v), out, 1e-12)
    # a longer max_length uses the first N columns: identity on the leading block is still exact
    assert_close("first columns", out, linformer_attention(q, k, v, e_proj=torch.eye(24, 40, dtype=F64)[None]), 1e-12)


def test_errors():
    q, k, v = make_qkv(1, 2, 10, 4, requires_grad=False)
    with pytest.raises(ValueError, match="linformer cannot be causal"):
        linformer_attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match="sequence length 10 exceeds its maximum length 8"):
        linformer_attention(q, k, v, e_proj=torch.randn(2, 4, 8, dtype=F64))
    module = attnzoo.build("linformer", 8, 2, proj_dim=4, max_length=8)
    with pytest.raises(ValueError, match="sequence length 9 exceeds its maximum length 8"):
        module(torch.randn(1, 9, 8))
    with pytest.raises(ValueError, match="cannot be causal"):
        attnzoo.build("linformer", 8, 2, causal=True)
    with pytest.raises(ValueError, match="sharing must be one of"):
        attnzoo.build("linformer", 8, 2, sharing="layer")


@pytest.mark.parametrize(
    ("sharing", "shapes"),
    [
        ("none", {"e_proj": (2, 4, 16), "f_proj": (2, 4, 16)}),
        ("kv", {"e_proj": (2, 4, 16)}),
        ("headwise", {"e_proj": (1, 4, 16), "f_proj": (1, 4, 16)}),
        ("headwise-kv", {"e_proj": (1, 4, 16)}),
    ],
)
def test_sharing_parameters_are_trained(sharing, shapes):
    module = attnzoo.build("linformer", 8, 2, proj_dim=4, max_length=16, sharing=sharing)
    own = {n: tuple(p.shape) for n, p in module.named_parameters() if n.endswith("_proj")}
    assert own == shapes
    module(torch.randn(2, 12, 8)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert module.e_proj.grad[..., 12:].abs().max() == 0  # columns past N are unused


def test_approximation_regression_n1024():
    """With E = F = segment means (k = 64 rows, each averaging 16 consecutive tokens) on clustered fp32 input
    (:func:`attnzoo.testing.clustered_qkv`, d = 64, H = 2): relative error vs exact softmax measured 0.0144;
    uniform attention 0.832, zero 1. (An untrained random E is no approximation of softmax: 2.374 on
    q, k ~ N(0, 1/4), worse than predicting 0.)"""
    q, k, v = clustered_qkv(1, 2, 1024, 64, dtype=torch.float32)
    means = torch.eye(64).repeat_interleave(16, dim=1).expand(2, 64, 1024) / 16  # (H, k, N)
    exact = attnzoo.functional.softmax(q, k, v)
    err = assert_beats_trivial("linformer", linformer_attention(q, k, v, e_proj=means), exact, v, factor=0.05)
    assert 0.012 < err < 0.017, err
