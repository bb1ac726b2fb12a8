"""Nystromformer's pieces: segment-mean landmarks over real tokens and the iterative pseudo-inverse."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["iterative_pinv", "segment_ids", "segment_means"]


def segment_ids(real: Tensor, num_landmarks: int) -> Tensor:
    """Landmark index of every token: ``(B, N)`` long, -1 for pads.

    The n real tokens of a sequence (in order, wherever they are) are cut into ``m`` contiguous
    segments as Nystromformer does: the first ``(floor(n/m) + 1) m - n`` segments hold ``floor(n/m)``
    tokens, the rest one more. Sequences with ``n < m`` get ids clamped into range (callers use exact
    attention for them).

    Args:
        real: ``(B, N)`` bool, True = real token.
        num_landmarks: m.
    """
    rank = real.long().cumsum(-1) - 1
    n = real.sum(-1, keepdim=True)
    per = (n // num_landmarks).clamp_min(1)
    short = ((per + 1) * num_landmarks - n).clamp(0, num_landmarks)
    boundary = short * per
    ids = torch.where(rank < boundary, rank // per, short + (rank - boundary) // (per + 1))
    return ids.clamp(0, num_landmarks - 1).masked_fill(~real, -1)


def segment_means(x: Tensor, ids: Tensor, num_landmarks: int) -> Tensor:
    """Mean of ``x: (B, H, N, d)`` over each segment of ``ids: (B, N)``: ``(B, H, m, d)`` (empty segments 0)."""
    onehot = (ids[:, None, :] == torch.arange(num_landmarks, device=ids.device)[None, :, None]).to(x.dtype)
    onehot = onehot / onehot.sum(-1, keepdim=True).clamp_min(1.0)  # (B, m, N)
    return torch.einsum("bmn,bhnd->bhmd", onehot, x)


def iterative_pinv(a: Tensor, iterations: int, *, global_init: bool = False) -> Tensor:
    """Moore-Penrose pseudo-inverse of ``a: (B, H, m, m)`` by Nystromformer's iteration.

    ``Z_0 = A^T / (||A||_1 ||A||_inf)`` per (batch, head) -- for row-stochastic A that is the max column
    sum; ``global_init`` takes one max over the whole batch (the official code, quirk N1). Then
    ``Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4``, ``iterations`` times.
    """
    col = a.sum(-2)
    norm = col.amax() if global_init else col.amax(-1)[..., None, None]
    z = a.transpose(-1, -2) / norm
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z
