"""Dense reference: explicit scores, masked softmax, weighted sum. Slow on purpose, easy to check."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["naive_softmax_attention"]


def naive_softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """``softmax(s * q k^T + bias, masked) v`` with fully masked rows set to 0.

    Args:
        q: ``(B, H, N, d)``; k: ``(B, H, S, d)``; v: ``(B, H, S, dv)``.
        mask: ``(B, S)`` bool padding mask, True = real key.
        attn_mask: bool, broadcastable to ``(B, H, N, S)``, True = attend.
        causal: forbid j > i.
        scale: s, default ``d ** -0.5``.
        bias: additive scores, broadcastable to ``(B, H, N, S)``.

    Returns:
        ``(B, H, N, dv)``.
    """
    n, s_len = q.shape[-2], k.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bhnd,bhsd->bhns", q, k) * scale
    if bias is not None:
        scores = scores + bias
    allowed = torch.ones(n, s_len, dtype=torch.bool, device=q.device)[None, None]
    if causal:
        allowed = allowed & torch.ones(n, s_len, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    if attn_mask is not None:
        allowed = allowed & attn_mask
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhns,bhsd->bhnd", probs, v)
