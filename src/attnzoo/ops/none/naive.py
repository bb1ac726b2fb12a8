"""Dense reference of the ``none`` baseline: an explicit identity attention matrix applied to V."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["naive_none_attention"]


def naive_none_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False
) -> Tensor:
    """``A v`` with ``A = I`` (each query attends to itself only), written out as an ``(N, N)`` matrix.

    Args:
        q, k: ``(B, H, N, d)`` (unused: the pattern ignores them).
        v: ``(B, H, N, dv)``.
        mask: ``(B, N)`` bool, True = real token; padded query rows give 0.
        causal: the identity is lower-triangular already, so it changes nothing.

    Returns:
        ``(B, H, N, dv)``.
    """
    n = v.shape[-2]
    weights = torch.eye(n, dtype=v.dtype, device=v.device)
    if causal:
        weights = weights.tril()
    weights = weights.expand(v.shape[0], v.shape[1], n, n)
    if mask is not None:
        weights = weights * (mask[:, None, :, None] & mask[:, None, None, :]).to(v.dtype)
    return torch.einsum("bhns,bhsd->bhnd", weights, v)
