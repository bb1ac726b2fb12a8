"""softmax_attention (SDPA) and none_attention against dense references."""

import pytest
import torch

import attnzoo
from attnzoo.ops.none import none_attention
from attnzoo.ops.softmax import naive_softmax_attention, softmax_attention
from attnzoo.testing import assert_close, make_qkv, random_padding_mask


@pytest.mark.parametrize("n", [1, 7, 65])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_naive(n, causal, masked):
    q, k, v = make_qkv(2, 3, n, 8, seed=n)
    mask = random_padding_mask(2, n, seed=n) if masked else None
    out = softmax_attention(q, k, v, mask=mask, causal=causal)
    ref = naive_softmax_attention(q, k, v, mask=mask, causal=causal)
    assert_close("out", ref, out, 1e-10)
    for name, a, b in zip(
        "qkv",
        torch.autograd.grad(ref.pow(2).sum(), (q, k, v)),
        torch.autograd.grad(out.pow(2).sum(), (q, k, v)),
        strict=True,
    ):
        assert_close(f"d{name}", a, b, 1e-10)


def test_cross_attention_lengths():
    q = torch.randn(1, 2, 5, 8)
    k = v = torch.randn(1, 2, 9, 8)
    mask = torch.tensor([[True] * 6 + [False] * 3])
    assert_close("out", naive_softmax_attention(q, k, v, mask=mask), softmax_attention(q, k, v, mask=mask), 1e-5)


def test_fully_masked_rows_zero():
    q, k, v = make_qkv(2, 2, 6, 4)
    mask = random_padding_mask(2, 6, empty_row=True)
    out = softmax_attention(q, k, v, mask=mask)
    assert out[1].abs().max() == 0 and torch.isfinite(out).all()


def test_none_returns_masked_values():
    q, k, v = make_qkv(2, 2, 6, 4)
    mask = random_padding_mask(2, 6, seed=3)
    out = none_attention(q, k, v, mask=mask)
    assert torch.equal(out, v * mask[:, None, :, None])


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((2, 8, 4), (2, 8, 4), (2, 8, 4)), r"q must have shape \(B, H, N, d\)"),
        (((1, 2, 8, 4), (1, 3, 8, 4), (1, 3, 8, 4)), "must agree on"),
        (((1, 2, 8, 4), (1, 2, 8, 5), (1, 2, 8, 4)), "same head width"),
    ],
)
def test_bad_shapes(shapes, match):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        softmax_attention(q, k, v)


def test_bad_dtype_and_mask():
    q = torch.zeros(1, 2, 4, 4)
    with pytest.raises(TypeError, match="floating-point"):
        softmax_attention(q.long(), q.long(), q.long())
    with pytest.raises(ValueError, match=r"mask must have shape \(B, S\)"):
        softmax_attention(q, q, q, mask=torch.ones(1, 5, dtype=torch.bool))


def test_softmax_flops_count_both_matmuls():
    from attnzoo.mechanisms.softmax import SoftmaxOptions, softmax_flops

    assert softmax_flops(8, 4, SoftmaxOptions(), False) == 4 * 4 * 64  # q k^T and P v, 2 FLOPs per MAC
    assert softmax_flops(8, 4, SoftmaxOptions(), True) == 4 * 4 * 36  # 8 * 9 / 2 entries
    assert attnzoo.get_spec("softmax").flops is softmax_flops
