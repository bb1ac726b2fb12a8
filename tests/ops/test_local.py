"""local_attention (sparse engine) against the dense reference, plus exact limits."""

import pytest
import torch

from attnzoo.ops.local import LocalWindow, local_attention, naive_local_attention
from attnzoo.ops.softmax import naive_softmax_attention
from attnzoo.testing import assert_close, make_qkv, random_padding_mask

CASES_1D = [
    dict(mode="sliding", window_size=5),
    dict(mode="sliding", window_size=3, look_back=9, look_ahead=2),
    dict(mode="blockwise", window_size=8),
    dict(mode="blockwise", window_size=6, overlap_window=True),
]
CASES_2D = [
    ((6, 9), dict(mode="sliding", window_size=2)),
    ((8, 8), dict(mode="blockwise", window_size=4, overlap_window=True)),
    ((5, 7), dict(mode="blockwise", window_size=3)),
]


def _grads(out, inputs):
    weight = torch.sin(torch.arange(out.numel(), dtype=out.dtype)).view_as(out)
    return torch.autograd.grad((out * weight).sum(), inputs)


def _compare(q, k, v, table, **kw):
    inputs = (q, k, v) + ((table,) if table is not None else ())
    out = local_attention(q, k, v, rpe_table=table, **kw)
    kw.pop("executor", None)
    ref = naive_local_attention(q, k, v, rpe_table=table, **kw)
    assert_close("out", ref, out, 1e-10)
    for name, a, b in zip(("dq", "dk", "dv", "drpe"), _grads(ref, inputs), _grads(out, inputs), strict=False):
        assert_close(name, a, b, 1e-10)


# look-ahead with causal is rejected (see test_errors), so those pairs are left out
WINDOW_CAUSAL = [(kw, causal) for kw in CASES_1D for causal in (False, True) if not (causal and kw.get("look_ahead"))]


@pytest.mark.parametrize("n", [1, 7, 100, 131], ids=lambda n: f"N{n}")
@pytest.mark.parametrize(
    ("kw", "causal"),
    WINDOW_CAUSAL,
    ids=["-".join(f"{k}{v}" for k, v in kw.items()) + ("-causal" if c else "") for kw, c in WINDOW_CAUSAL],
)
@pytest.mark.parametrize("rpe", [False, True], ids=["norpe", "rpe"])
def test_matches_naive_1d(n, kw, causal, rpe):
    q, k, v = make_qkv(2, 3, n, 8, seed=n)
    mask = random_padding_mask(2, n, seed=n)
    window = LocalWindow.resolve(causal=causal, **kw)
    table = torch.randn(window.rpe_shape(3), dtype=torch.float64, requires_grad=True) if rpe else None
    _compare(q, k, v, table, mask=mask, causal=causal, **kw)


@pytest.mark.parametrize("grid_kw", CASES_2D, ids=lambda c: f"{c[0][0]}x{c[0][1]}-{c[1]['mode']}")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_matches_naive_2d(grid_kw, causal):
    grid, kw = grid_kw
    n = grid[0] * grid[1]
    q, k, v = make_qkv(2, 2, n, 8, seed=1)
    window = LocalWindow.resolve(grid=grid, causal=causal, **kw)
    table = torch.randn(window.rpe_shape(2), dtype=torch.float64, requires_grad=True)
    _compare(q, k, v, table, mask=random_padding_mask(2, n, seed=2), causal=causal, grid=grid, **kw)


@pytest.mark.parametrize("executor", ["gather", "gather-autograd", "dense"])
def test_executors_agree(executor):
    q, k, v = make_qkv(1, 2, 300, 16, seed=3)
    mask = random_padding_mask(1, 300, seed=3)
    _compare(q, k, v, None, mask=mask, window_size=20, executor=executor)


@pytest.mark.parametrize("mode", ["sliding", "blockwise"])
def test_window_covering_sequence_is_softmax(mode):
    q, k, v = make_qkv(2, 2, 37, 8, seed=4)
    mask = random_padding_mask(2, 37, seed=4)
    out = local_attention(q, k, v, mask=mask, window_size=64, mode=mode)
    assert_close("out", naive_softmax_attention(q, k, v, mask=mask), out, 1e-12)


def test_odd_length_with_block_64():
    q, k, v = make_qkv(1, 2, 1000, 8, seed=5)
    out = local_attention(q, k, v, window_size=30, block_size=64)
    assert_close("out", naive_local_attention(q, k, v, window_size=30), out, 1e-10)


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = make_qkv(2, 2, 20, 8, seed=6)
    mask = random_padding_mask(2, 20, seed=6, empty_row=True)
    out = local_attention(q, k, v, mask=mask, window_size=3, causal=True)
    assert torch.isfinite(out).all()
    assert out[1].abs().max() == 0
    (grad,) = torch.autograd.grad(out.sum(), q)
    assert torch.isfinite(grad).all()


def test_causal_leakage():
    q, k, v = make_qkv(1, 2, 50, 8, seed=7, requires_grad=False)
    out = local_attention(q, k, v, window_size=10, causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 30:] += 1.0
    v2[:, :, 30:] -= 2.0
    out2 = local_attention(q, k2, v2, window_size=10, causal=True)
    assert torch.equal(out[:, :, :30], out2[:, :, :30])
    assert not torch.allclose(out[:, :, 30:], out2[:, :, 30:])


def test_bf16_forward_finite():
    q, k, v = make_qkv(1, 2, 70, 16, dtype=torch.bfloat16, requires_grad=False)
    out = local_attention(q, k, v, window_size=8, mask=random_padding_mask(1, 70))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    ref = naive_local_attention(q.double(), k.double(), v.double(), window_size=8, mask=random_padding_mask(1, 70))
    assert (out.double() - ref).abs().max() < 0.05


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(window_size=0), "window_size must be >= 1"),
        (dict(window_size=-3), "window_size must be >= 1"),
        (dict(mode="diagonal"), "mode must be one of"),
        (dict(mode="blockwise", look_back=3), "look_back applies to 1D sliding"),
        (dict(causal=True, look_ahead=2), "cannot look ahead"),
        (dict(overlap_window=True), "overlap_window applies to mode='blockwise'"),
        (dict(grid=(5, 5)), "grid 5x5 has 25 cells"),
    ],
)
def test_errors(kw, match):
    q, k, v = make_qkv(1, 2, 10, 4)
    with pytest.raises(ValueError, match=match):
        local_attention(q, k, v, **kw)


def test_wrong_rpe_shape():
    q, k, v = make_qkv(1, 2, 10, 4)
    with pytest.raises(ValueError, match=r"rpe_table must have shape \(2, 9\)"):
        local_attention(q, k, v, window_size=4, rpe_table=torch.zeros(2, 8, dtype=torch.float64))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize(
    ("grid", "kw"),
    [(None, kw) for kw in CASES_1D] + CASES_2D,
    ids=["sl5", "sl3-9-2", "bw8", "bw6o", "2d-sl2", "2d-bw4o", "2d-bw3"],
)
def test_flops_count_the_reference_mask(grid, kw, causal):
    """``local_flops`` = 4 d x the allowed pairs of the dense reference's mask (padding-free, any N)."""
    from attnzoo.mechanisms.local import LocalOptions
    from attnzoo.ops.local import local_flops
    from attnzoo.ops.local.naive import _window_mask

    if causal and kw.get("look_ahead"):
        with pytest.raises(ValueError, match="cannot look ahead"):
            local_flops(45, 16, LocalOptions(**kw), causal)
        return
    n = 45 if grid is None else grid[0] * grid[1]
    sizes = {} if grid is None else dict(attn_2d=True, image_height=grid[0], image_width=grid[1])
    options = LocalOptions(**kw, **sizes)
    window = LocalWindow.resolve(**kw, grid=grid, causal=causal)
    allowed = _window_mask(window, n, torch.device("cpu"))
    if causal:
        allowed = allowed.tril()
    assert local_flops(n, 16, options, causal) == 4 * 16 * int(allowed.sum())


def test_flops_of_the_benchmark_window():
    """Sliding 256 each side at N = 16384: 513 keys per query less the edge triangles."""
    from attnzoo.mechanisms.local import LocalOptions
    from attnzoo.ops.local import local_flops

    n, w = 16384, 256
    entries = n * (2 * w + 1) - w * (w + 1)
    assert local_flops(n, 64, LocalOptions(window_size=w), False) == 4 * 64 * entries
    assert local_flops(n, 64, LocalOptions(window_size=w), True) == 4 * 64 * (n * (w + 1) - w * (w + 1) // 2)
