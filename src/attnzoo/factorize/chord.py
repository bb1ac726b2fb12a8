"""The chord sparsity pattern of PSF's non-parametric experiment (official ``chord_mask_mat.m``).

Row ``i`` (0-based) of an ``(N, N)`` chord mask with base ``b`` holds ones at the columns
``(i + b^k) mod N`` for ``k = 0 .. L-1``, ``L = floor(log2(N) / log2(b))`` (computed in float64, as MATLAB
does), plus the diagonal. Options, as in the official function:

- ``symmetric``: also the columns ``(i - b^k) mod N``;
- ``self_loops=False``: no diagonal;
- ``random_order``: the chord columns go through one fixed permutation ``p`` (MATLAB's
  ``rng(0, 'twister'); randperm(N)``): row ``i`` holds ``p[(i +- b^k) mod N]``. The diagonal is *not*
  permuted (the official code sets ``M(i, i)`` after the permuted chords), so with this option some rows
  have one nonzero fewer, where ``i`` is one of its own permuted chords.

The factorisation keeps a mask in an index layout: ``index (N, K)`` column numbers and ``valid (N, K)``
(False marks padding of rows with fewer than ``K`` nonzeros; padded slots point at column ``i``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["chord_index", "chord_mask", "matlab_randperm"]

# MATLAB's rng(0, 'twister') seeds MT19937 with 5489 (its documented default state; ``rng default`` gives
# rand = 0.8147, 0.9058, ...), which is numpy's RandomState(5489); both draw doubles as genrand_res53.
_MATLAB_SEED_ZERO = 5489


def matlab_randperm(n: int) -> np.ndarray:
    """0-based ``randperm(n)`` of MATLAB right after ``rng(0, 'twister')``: shape ``(n,)`` int64.

    MATLAB's ``randperm(n)`` orders ``rand(1, n)`` (stable sort); its documented example after ``rng default``,
    ``randperm(6) = [6 3 5 1 2 4]``, is what this returns plus one.
    """
    draws = np.random.RandomState(_MATLAB_SEED_ZERO).random_sample(n)
    return np.argsort(draws, kind="stable")


def _offsets(n: int, base: int, symmetric: bool) -> list[int]:
    levels = math.floor(math.log2(n) / math.log2(base))
    forward = [base**k for k in range(levels)]
    return forward + [-o for o in forward] if symmetric else forward


def _check(n: int, base: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"chord mask: n must be an int >= 2, got {n!r}")
    if isinstance(base, bool) or not isinstance(base, int) or base < 2:
        raise ValueError(f"chord mask: base must be an int >= 2, got {base!r}")


def chord_mask(
    n: int, base: int = 2, symmetric: bool = False, self_loops: bool = True, random_order: bool = False
) -> torch.Tensor:
    """The official chord mask: bool ``(n, n)``, row ``i`` True at the columns of row ``i``.

    Args:
        n: matrix size ``N >= 2``.
        base: chord base ``b >= 2`` (offsets ``b^0 .. b^(L-1)``, ``L = floor(log2 N / log2 b)``).
        symmetric: add the offsets ``-b^k``.
        self_loops: set the diagonal.
        random_order: send the chord columns through :func:`matlab_randperm` (the diagonal is not permuted).

    Raises:
        ValueError: ``n`` or ``base`` not an int >= 2.
    """
    _check(n, base)
    rows = np.arange(n)[:, None]
    columns = (rows + np.asarray(_offsets(n, base, symmetric))[None, :]) % n
    if random_order:
        columns = matlab_randperm(n)[columns]
    mask = torch.zeros(n, n, dtype=torch.bool)
    if columns.shape[1]:
        mask[torch.from_numpy(np.broadcast_to(rows, columns.shape).copy()), torch.from_numpy(columns)] = True
    if self_loops:
        mask.fill_diagonal_(True)
    return mask


def chord_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The index layout of a square bool mask: ``(index (N, K) int64, valid (N, K) bool)``.

    Row ``i``'s True columns come first in increasing order; ``K`` is the largest row count; padded
    slots have ``valid`` False and point at column ``i``.

    Raises:
        ValueError: ``mask`` not a square 2-D bool tensor, or a row without any True entry.
    """
    if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"chord_index: expected a square 2-D bool mask, got {mask.dtype} {tuple(mask.shape)}")
    counts = mask.sum(1)
    if bool((counts == 0).any()):
        raise ValueError(f"chord_index: row {int((counts == 0).nonzero()[0])} of the mask has no nonzero")
    n, k = mask.shape[0], int(counts.max())
    # True columns first (stable sort of "not in mask"), keeps increasing column order inside each group
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :k]
    valid = torch.arange(k)[None, :] < counts[:, None]
    index = torch.where(valid, order, torch.arange(n)[:, None])
    return index, valid
