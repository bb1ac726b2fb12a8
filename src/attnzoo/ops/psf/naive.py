"""Dense reference for PSF-Attn: every chord factor written out as an N x N matrix, multiplied out."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["dense_chord_factor", "naive_psf_attention"]


def dense_chord_factor(values: Tensor, positions: list[int], n: int) -> Tensor:
    """``(..., N, N)`` factor with row ``positions[a]`` holding ``values[..., positions[a], j]`` at
    column ``positions[(a + o_j) mod len(positions)]``, o = (0, 1, 2, 4, ...) (duplicate links add up).

    Args:
        values: ``(..., N, J)`` row values (J = m + 1 links).
        positions: the real token positions, in order (the chord runs over these only).
    """
    out = values.new_zeros(*values.shape[:-2], n, n)
    count = len(positions)
    offsets = [0] + [2 ** (j - 1) for j in range(1, values.shape[-1])]
    for a, row in enumerate(positions):
        for j, off in enumerate(offsets):
            out[..., row, positions[(a + off) % count]] += values[..., row, j]
    return out


def naive_psf_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    factors: Tensor | None = None,
    num_factors: int | None = None,
    use_residuals: bool = True,
    mix_padding: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Dense O(m N^2 C) PSF-Attn with the signature of :func:`psf_attention` (tests only).

    Without ``factors`` the values of row i's links are a softmax over them of ``<q_i, k_j> * scale``,
    read from the dense score matrix.
    """
    if causal:
        raise ValueError("psf cannot be causal: chord links point forward and wrap around")
    b, _, n, _ = v.shape
    m = factors.shape[2] if factors is not None else num_factors or max(1, math.ceil(math.log2(max(n, 2))))
    s = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros_like(v)
    for batch in range(b):
        real = [i for i in range(n) if mask is None or mix_padding or bool(mask[batch, i])]
        if not real:
            continue
        if factors is None:
            scores = torch.einsum("hid,hjd->hij", q[batch], k[batch]) * s
            offsets = [0] + [2 ** (j - 1) for j in range(1, m + 1)]
            cols = [[real[(a + off) % len(real)] for a in range(len(real))] for off in offsets]
            values = q.new_zeros(q.shape[1], n, m + 1)
            for j, col in enumerate(cols):
                values[:, real, j] = scores[:, real, col]
            values = values.softmax(-1)
            mats = [dense_chord_factor(values, real, n)] * m
        else:
            mats = [dense_chord_factor(factors[batch, :, t], real, n) for t in range(m)]
        v0 = v[batch]
        h = v0
        for mat in mats:
            h = mat @ h + (v0 if use_residuals else 0)
        keep = torch.zeros(n, dtype=v.dtype, device=v.device)
        keep[real] = 1
        if mask is not None:
            keep = keep * mask[batch].to(v.dtype)
        out[batch] = h * keep[None, :, None]
    return out
