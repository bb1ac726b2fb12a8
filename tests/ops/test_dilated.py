"""LongNet dilated attention against the dense multiplicity-mask reference (spec §10.2, §10.5)."""

import pytest
import torch

from attnzoo.ops.dilated import dilated_attention, head_offsets, naive_dilated_attention
from attnzoo.ops.dilated.naive import multiplicity
from attnzoo.ops.softmax import naive_softmax_attention
from attnzoo.testing import assert_close, make_qkv, random_padding_mask

BRANCHES = [
    dict(segment_lengths=(8, 16, 32), dilation_rates=(1, 2, 4)),
    dict(segment_lengths=(16, 40), dilation_rates=(1, 3), offset_rule="paper"),
    dict(segment_lengths=(12,), dilation_rates=(2,)),
]


@pytest.mark.parametrize("n", [1, 7, 64, 131], ids=lambda n: f"N{n}")
@pytest.mark.parametrize("heads", [3, 4], ids=lambda h: f"H{h}")
@pytest.mark.parametrize("kw", BRANCHES, ids=["w8-16-32", "w16-40-paper", "w12r2"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_matches_naive(n, heads, kw, causal):
    q, k, v = make_qkv(2, heads, n, 8, seed=n + heads)
    mask = random_padding_mask(2, n, seed=n)
    out = dilated_attention(q, k, v, mask=mask, causal=causal, **kw)
    ref = naive_dilated_attention(q, k, v, mask=mask, causal=causal, **kw)
    assert_close("out", ref, out, 1e-10)
    weight = torch.cos(torch.arange(out.numel(), dtype=out.dtype)).view_as(out)
    for name, a, b in zip(
        ("dq", "dk", "dv"),
        torch.autograd.grad((ref * weight).sum(), (q, k, v)),
        torch.autograd.grad((out * weight).sum(), (q, k, v)),
        strict=True,
    ):
        assert_close(name, a, b, 1e-10)


def test_single_dense_branch_is_softmax():
    q, k, v = make_qkv(2, 2, 50, 8)
    mask = random_padding_mask(2, 50)
    out = dilated_attention(q, k, v, mask=mask, causal=True, segment_lengths=(64,), dilation_rates=(1,))
    assert_close("out", naive_softmax_attention(q, k, v, mask=mask, causal=True), out, 1e-12)


def test_detached_mixing_same_forward_other_gradient():
    q, k, v = make_qkv(1, 2, 40, 8)
    kw = dict(segment_lengths=(8, 16), dilation_rates=(1, 2))
    exact = dilated_attention(q, k, v, **kw)
    detached = dilated_attention(q, k, v, detach_mixing=True, **kw)
    assert_close("out", exact, detached, 1e-14)
    g_exact = torch.autograd.grad(exact.pow(2).sum(), q)[0]
    g_detached = torch.autograd.grad(detached.pow(2).sum(), q)[0]
    assert (g_exact - g_detached).abs().max() > 1e-6


@pytest.mark.parametrize(
    ("heads", "r", "rule", "expected"),
    [
        (4, 2, "torchscale", (0, 0, 1, 1)),
        (4, 2, "paper", (0, 1, 0, 1)),
        (5, 2, "torchscale", (0, 0, 0, 1, 1)),
        (3, 4, "torchscale", (0, 1, 2)),
        (8, 1, "torchscale", (0,) * 8),
    ],
)
def test_head_offsets(heads, r, rule, expected):
    assert head_offsets(heads, r, rule) == expected


def test_multiplicity_counts_overlapping_branches():
    count = multiplicity(8, 1, (4, 8), (1, 1), "torchscale")
    assert count[0, 0, 1] == 2  # same 4-segment and same 8-segment
    assert count[0, 0, 5] == 1  # only the 8-segment
    assert count.max() == 2


def test_rows_outside_every_branch_are_zero():
    q, k, v = make_qkv(1, 1, 8, 4, requires_grad=False)
    out = dilated_attention(q, k, v, segment_lengths=(8,), dilation_rates=(2,))
    assert out[0, 0, 1::2].abs().max() == 0
    assert out[0, 0, 0::2].abs().min() > 0


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(segment_lengths=(8, 16), dilation_rates=(1,)), "equal length"),
        (dict(segment_lengths=(0,), dilation_rates=(1,)), "positive ints"),
        (dict(segment_lengths=(8,), dilation_rates=(1,), offset_rule="random"), "offset_rule must be one of"),
    ],
)
def test_errors(kw, match):
    q, k, v = make_qkv(1, 2, 10, 4)
    with pytest.raises(ValueError, match=match):
        dilated_attention(q, k, v, **kw)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("n", [7, 64, 131], ids=lambda n: f"N{n}")
@pytest.mark.parametrize("kw", BRANCHES, ids=["w8-16-32", "w16-40-paper", "w12r2"])
def test_flops_count_the_multiplicity_mask(kw, n, causal):
    """``dilated_flops`` = 4 d x the pairs of every branch, mean over heads when every offset has a head."""
    from attnzoo.mechanisms.dilated import DilatedOptions
    from attnzoo.ops.dilated import dilated_flops

    heads = 12  # a multiple of every rate: each offset is used by equally many heads under either rule
    count = multiplicity(n, heads, kw["segment_lengths"], kw["dilation_rates"], kw.get("offset_rule", "torchscale"))
    if causal:
        count = count.tril()
    expected = 4 * 8 * float(count.sum()) / heads
    assert dilated_flops(n, 8, DilatedOptions(**kw), causal) == pytest.approx(expected, rel=1e-12)


def test_flops_of_the_default_configuration():
    from attnzoo.mechanisms.dilated import DilatedOptions
    from attnzoo.ops.dilated import dilated_flops

    assert dilated_flops(16384, 64, DilatedOptions(), False) == 4 * 64 * (2048 + 1024 + 512) * 16384
