"""Dense reference for RA: explicit proposal means and random-feature weights in probability space."""

from __future__ import annotations

import torch
from torch import Tensor

from attnzoo.ops.common import check_padding_mask
from attnzoo.ops.ra.randomized import sample_key_index

__all__ = ["naive_ra_attention"]


def naive_ra_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    num_samples: int = 1,
    key_index: Tensor | None = None,
    noise: Tensor | None = None,
    seed: int = 0,
    compat: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Dense RA with the signature of :func:`attnzoo.ops.ra.ra_attention` (tests only).

    The key draw (when not given) is the same seeded draw as the fast path's (it is data, not math).
    """
    if causal:
        raise ValueError("ra cannot be causal")
    b, _, n, d = q.shape
    mask = check_padding_mask(mask, b, n, q.device)
    if b == 0 or n == 0:
        return v * 0
    s = d**-0.5 if scale is None else scale
    real = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
    keys = torch.ones_like(real) if compat else real
    weights = keys[:, None, None, :].to(q.dtype)  # (B, 1, 1, N)
    if num_samples == 0:
        mu = q + (weights.transpose(-1, -2) * k).sum(2, keepdim=True) / keys.sum(-1)[:, None, None, None]
    elif num_samples == -1:
        pi = torch.exp(s * torch.einsum("bhnd,bhmd->bhnm", q, k)) * weights
        mu = q + torch.einsum("bhnm,bhmd->bhnd", pi / pi.sum(-1, keepdim=True), k)
    else:
        if key_index is None:
            key_index = sample_key_index(q, k, None if compat else mask, s, torch.Generator().manual_seed(seed))
        onehot = torch.nn.functional.one_hot(key_index, n).to(q.dtype)
        mu = q + torch.einsum("bhnm,bhmd->bhnd", onehot, k)
    omega = mu if noise is None else mu + noise
    xi = torch.exp(s * torch.einsum("bhnd,bhmd->bhnm", omega, k) - s * 0.5 * (k * k).sum(-1)[:, :, None, :]) * weights
    return torch.einsum("bhnm,bhmd->bhnd", xi / xi.sum(-1, keepdim=True), v) * real[:, None, :, None]
