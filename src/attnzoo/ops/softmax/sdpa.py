"""Exact softmax attention through ``F.scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv, padding_attn_mask, rows_with_keys

__all__ = ["softmax_attention"]


def softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    attn_mask: Tensor | None = None,
) -> Tensor:
    """Exact scaled-dot-product attention with a key padding mask; fully masked rows give 0.

    Computes ``softmax(s * q k^T + bias) v`` over the keys a query may see (real keys, those
    ``attn_mask`` allows, and j <= i when ``causal``). O(N*S*d) time; memory O(N*d) with SDPA's
    fused kernels (plus the mask when ``attn_mask`` is given).

    Args:
        q: queries, ``(B, H, N, d)``.
        k: keys, ``(B, H, S, d)``.
        v: values, ``(B, H, S, dv)``.
        mask: bool padding mask ``(B, S)``, True = real key. Default: None.
        causal: query i sees keys j <= i (needs N == S). Default: False.
        scale: s, default ``d ** -0.5``.
        dropout_p: dropout on the attention probabilities (pass 0 in eval).
        attn_mask: SDPA's mask, broadcastable to ``(B, H, N, S)``: bool (True = attend) or an additive
            float mask of q's dtype; combined with ``mask`` and ``causal``. Default: None.

    Returns:
        ``(B, H, N, dv)``.

    Raises:
        ValueError / TypeError: bad shapes, dtypes or mask (see :func:`check_qkv`).

    Reference: :func:`attnzoo.ops.softmax.naive_softmax_attention`.
    """
    check_qkv(q, k, v)
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal attention needs N == S, got N={q.shape[-2]}, S={k.shape[-2]}")
    mask = check_padding_mask(mask, q.shape[0], k.shape[-2], q.device, axis="S")
    if attn_mask is not None:
        return _masked_attention(
            q, k, v, attn_mask, padding_attn_mask(mask, q.shape[-2], causal=causal), scale, dropout_p
        )
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)
    allowed = padding_attn_mask(mask, q.shape[-2], causal=causal)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p, scale=scale)
    # SDPA kernels differ on rows with no visible key (0 or NaN): make them 0 everywhere.
    return out.masked_fill(~rows_with_keys(mask, q.shape[-2], causal=causal), 0.0)


def _masked_attention(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor, keep: Tensor | None, scale: float | None, dropout_p: float
) -> Tensor:
    """SDPA with ``attn_mask`` (bool or additive float) restricted to ``keep`` (bool, or None); rows left
    with no key give 0. Shapes as :func:`softmax_attention`."""
    if attn_mask.dtype == torch.bool:
        allowed = attn_mask if keep is None else attn_mask & keep
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p, scale=scale)
        return out.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    if attn_mask.dtype != q.dtype:
        raise TypeError(f"a float attn_mask must have the inputs' dtype {q.dtype}, got {attn_mask.dtype}")
    bias = attn_mask if keep is None else attn_mask.masked_fill(~keep, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    return out.masked_fill(torch.isneginf(bias).all(-1, keepdim=True), 0.0)
