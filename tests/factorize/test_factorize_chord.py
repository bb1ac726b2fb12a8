"""The chord mask against the official ``non-parametric/chord_mask_mat.m`` (SparseFactorization d8ade2e).

``expected_mask`` restates the official function's semantics row by row (1-based MATLAB columns
``1 + mod((i-1) +- b.^(0:L-1), N)``, optionally through ``ind = randperm(N)``, then ``M(i, i) = 1`` unpermuted);
the small cases are written out by hand from the .m file.
"""

import math

import numpy as np
import pytest
import torch

from attnzoo.factorize import chord_index, chord_mask, matlab_randperm


def expected_mask(n: int, b: int, symmetric: bool, self_loops: bool, random_order: bool) -> torch.Tensor:
    levels = math.floor(math.log2(n) / math.log2(b))
    perm = [int(p) + 1 for p in matlab_randperm(n)] if random_order else list(range(1, n + 1))
    out = torch.zeros(n, n, dtype=torch.bool)
    for i in range(1, n + 1):  # MATLAB's 1-based rows and columns
        signs = (1, -1) if symmetric else (1,)
        cols = {perm[(i - 1 + s * b**k) % n] for s in signs for k in range(levels)}
        if self_loops:
            cols.add(i)
        for c in cols:
            out[i - 1, c - 1] = True
    return out


def rows(mask: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(r).flatten().tolist()) for r in mask]


def test_matlab_randperm_matches_the_documented_outputs():
    # MathWorks: after `rng default` (= rng(0, "twister")) rand gives 0.8147 0.9058 0.1270; randperm(6) = 6 3 5 1 2 4
    np.testing.assert_allclose(np.random.RandomState(5489).random_sample(3), [0.8147, 0.9058, 0.1270], atol=5e-5)
    assert (matlab_randperm(6) + 1).tolist() == [6, 3, 5, 1, 2, 4]


def test_hand_checked_n5():
    # N = 5, b = 2: L = floor(log2 5) = 2, offsets 1 and 2
    assert rows(chord_mask(5)) == [{0, 1, 2}, {1, 2, 3}, {2, 3, 4}, {3, 4, 0}, {4, 0, 1}]
    assert rows(chord_mask(5, self_loops=False)) == [{1, 2}, {2, 3}, {3, 4}, {4, 0}, {0, 1}]
    assert rows(chord_mask(5, symmetric=True)) == [set(range(5))] * 5
    # b = 3: L = floor(log2 5 / log2 3) = 1, offset 1 only
    assert rows(chord_mask(5, base=3)) == [{0, 1}, {1, 2}, {2, 3}, {3, 4}, {4, 0}]
    # random order: randperm(5) = [3 5 1 2 4] (0-based [2 4 0 1 3]); row i gets p[i+1], p[i+2] and i itself
    assert (matlab_randperm(5) + 1).tolist() == [3, 5, 1, 2, 4]
    assert rows(chord_mask(5, random_order=True)) == [{4, 0}, {0, 1}, {1, 3, 2}, {3, 2}, {2, 4}]


def test_n16_symmetric_merges_plus_and_minus_eight():
    mask = chord_mask(16, symmetric=True)
    assert mask.sum(1).tolist() == [8] * 16  # +-1, +-2, +-4, 8 (= -8), self
    assert rows(mask)[0] == {0, 1, 2, 4, 8, 12, 14, 15}


@pytest.mark.parametrize("n", [5, 16, 100, 257])
@pytest.mark.parametrize("b", [2, 3])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("self_loops", [True, False])
@pytest.mark.parametrize("random_order", [False, True])
def test_chord_mask_matches_official_semantics(n, b, symmetric, self_loops, random_order):
    mask = chord_mask(n, b, symmetric, self_loops, random_order)
    assert mask.dtype == torch.bool and mask.shape == (n, n)
    assert torch.equal(mask, expected_mask(n, b, symmetric, self_loops, random_order))
    levels = {(5, 2): 2, (16, 2): 4, (100, 2): 6, (257, 2): 8, (5, 3): 1, (16, 3): 2, (100, 3): 4, (257, 3): 5}[n, b]
    if not random_order:  # every row has the same number of distinct offsets
        offsets = {b**k % n for k in range(levels)} | ({-(b**k) % n for k in range(levels)} if symmetric else set())
        assert mask.sum(1).tolist() == [len(offsets | ({0} if self_loops else set()))] * n


def test_chord_index_layout_round_trips_and_pads():
    mask = chord_mask(16, random_order=True)
    index, valid = chord_index(mask)
    counts = mask.sum(1)
    assert index.shape == valid.shape == (16, int(counts.max()))
    assert int(counts.min()) < int(counts.max())  # random order drops the self link on some rows: padding exists
    rebuilt = torch.zeros(16, 16, dtype=torch.bool)
    rebuilt[torch.arange(16)[:, None].expand_as(index)[valid], index[valid]] = True
    assert torch.equal(rebuilt, mask)
    assert torch.equal(valid.sum(1), counts)
    pad_rows = torch.nonzero(~valid)[:, 0]
    assert torch.equal(index[~valid], pad_rows)  # padded slots point at the row's own column


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match=r"n must be an int >= 2, got 1"):
        chord_mask(1)
    with pytest.raises(ValueError, match=r"base must be an int >= 2, got 1"):
        chord_mask(8, base=1)
    empty = torch.eye(3, dtype=torch.bool)
    empty[1, 1] = False
    with pytest.raises(ValueError, match=r"row 1 of the mask has no nonzero"):
        chord_index(empty)
    with pytest.raises(ValueError, match=r"square 2-D bool mask"):
        chord_index(torch.ones(2, 3, dtype=torch.bool))
