"""Each pattern's layout against an independent dense definition; BlockLayout helpers."""

import pytest
import torch

from attnzoo.ops.dilated.naive import multiplicity
from attnzoo.ops.dilated.offsets import head_offsets
from attnzoo.sparse import BlockLayout, SparsePattern, blockwise_window, dilated_segments, sliding_window, window_2d


def _dense_sliding(n, before, after):
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (j >= i - before) & (j <= i + after)


@pytest.mark.parametrize("n", [1, 5, 64, 200])
@pytest.mark.parametrize(("before", "after", "bs"), [(3, 3, 16), (40, 0, 16), (0, 70, 32), (5, 1, None)])
def test_sliding_window_to_dense(n, before, after, bs):
    pattern = sliding_window(n, before, after, bs)
    assert torch.equal(pattern.to_dense()[0], _dense_sliding(n, before, after))
    assert torch.equal(pattern.to_dense(causal=True)[0], _dense_sliding(n, before, 0))


@pytest.mark.parametrize(("n", "w", "e"), [(10, 4, 0), (50, 8, 4), (33, 5, 2)])
def test_blockwise_window_to_dense(n, w, e):
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    start = (i // w) * w
    expected = (j >= start - e) & (j < start + w + e)
    assert torch.equal(blockwise_window(n, w, e, 16).to_dense()[0], expected)


def test_window_2d_sliding_to_dense():
    h, w = 7, 10
    pattern = window_2d(h, w, 4, 4, 2, 1, True)
    y, x = torch.arange(h * w) // w, torch.arange(h * w) % w
    expected = ((y[:, None] - y[None]).abs() <= 2) & ((x[:, None] - x[None]).abs() <= 1)
    assert torch.equal(pattern.to_dense()[0], expected)
    # every token is in exactly one slot
    pos = pattern.positions[0]
    assert sorted(pos[pos >= 0].tolist()) == list(range(h * w))


def test_dilated_segments_to_dense():
    pattern = dilated_segments(10, 4, 2, (0, 1))
    dense = pattern.to_dense()
    # head 0 keeps 0, 2 | 4, 6 | 8 ; head 1 keeps 1, 3 | 5, 7 | 9
    assert dense[0, 0].nonzero().flatten().tolist() == [0, 2]
    assert dense[0, 8].nonzero().flatten().tolist() == [8]
    assert dense[1, 5].nonzero().flatten().tolist() == [5, 7]
    assert not dense[0, 1].any()


def test_layout_density_and_repr():
    layout = sliding_window(512, 64, 64, 64).layout
    assert layout.num_blocks == 8 and layout.max_visits == 3
    assert layout.density() == pytest.approx((8 * 3 - 2) / 64)
    text = repr(layout)
    assert "##." in text and "density=0.344" in text


def test_layout_shape_validation():
    with pytest.raises(ValueError, match=r"kv_indices and kv_valid must both be \(Hp, nB, K\)"):
        BlockLayout(4, torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 3, dtype=torch.bool))


@pytest.mark.parametrize(
    ("n", "heads", "segments", "rates"),
    [(37, 4, (8, 16), (1, 2)), (64, 8, (16, 32, 64), (1, 2, 4)), (50, 3, (50,), (3,))],
)
def test_dilated_to_dense_counts_equal_longnet_multiplicity(n, heads, segments, rates):
    """The union of the branches' N x N masks counts each pair as often as LongNet's branches allow it."""
    count = sum(
        dilated_segments(n, w, r, head_offsets(heads, r, "torchscale")).to_dense().long()
        for w, r in zip(segments, rates, strict=True)
    )
    assert torch.equal(count, multiplicity(n, heads, segments, rates, "torchscale").long())


def test_to_dense_of_a_token_in_two_slots():
    """A hand-built order may put one token in several slots: its pairs are the union over those slots."""
    layout = BlockLayout(2, torch.tensor([[[0], [1]]]), torch.ones(1, 2, 1, dtype=torch.bool))
    pattern = SparsePattern("dup", layout, None, torch.tensor([[0, 1, 1, 2]]), 3)
    expected = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)  # blocks {0, 1} and {1, 2}
    assert torch.equal(pattern.to_dense()[0], expected)
    assert torch.equal(pattern.to_dense(causal=True)[0], expected.tril())
