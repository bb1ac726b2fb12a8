"""Mask conversions. Polarity everywhere: bool True = takes part in attention (SDPA's convention)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["key_mask_bias", "padding_attn_mask", "rows_with_keys", "zero_masked_rows", "zero_padded_tokens"]


def key_mask_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive bias from a bool mask: 0 where True (attend), ``-inf`` where False.

    Args:
        mask: bool tensor of any shape, True = attend.
        dtype: floating dtype of the result.

    Returns:
        A tensor of ``mask``'s shape.
    """
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def zero_masked_rows(out: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the rows of ``out: (B, H, N, d)`` whose query is padding (``mask: (B, N)``, True = real).

    A fill, not a product with the mask: a NaN or inf in a padded row becomes 0 too.
    """
    if mask is None:
        return out
    return out.masked_fill(~mask[:, None, :, None], 0.0)


def zero_padded_tokens(x: Tensor, mask: Tensor | None) -> Tensor:
    """``x: (B, N, dim)`` with the rows of padded tokens (``mask: (B, N)`` False) set to 0.

    Applied to a module's input before its projections, so a padded token's content, NaN and inf
    included, reaches no real row through a ``0 * x`` anywhere downstream.
    """
    if mask is None:
        return x
    return x.masked_fill(~mask[:, :, None], 0.0)


def padding_attn_mask(mask: Tensor | None, query_len: int, *, causal: bool) -> Tensor | None:
    """SDPA-style bool ``attn_mask`` (True = attend) from a key padding mask and the causal flag.

    Args:
        mask: ``(B, S)`` bool, True = real key, or ``None``.
        query_len: N.
        causal: also forbid keys j > i (aligned at the start; requires N == S).

    Returns:
        ``(B, 1, N, S)`` / ``(1, 1, N, S)`` bool, or ``None`` when nothing is masked.
    """
    if mask is None and not causal:
        return None
    allowed = None if mask is None else mask[:, None, None, :]
    if causal:
        length = query_len if mask is None else mask.shape[-1]
        device = None if mask is None else mask.device
        tri = torch.ones(query_len, length, dtype=torch.bool, device=device).tril_()[None, None]
        allowed = tri if allowed is None else allowed & tri
    return allowed


def rows_with_keys(mask: Tensor, query_len: int, *, causal: bool) -> Tensor:
    """Which query rows see at least one real key: ``(B, 1, N, 1)`` bool, from ``mask: (B, S)``.

    Without ``causal`` a row is empty only when the whole key sequence is padding; with ``causal``
    row i is empty when keys 0..i are all padding.
    """
    seen = mask.cumsum(-1)[:, :query_len] > 0 if causal else mask.any(-1, keepdim=True).expand(-1, query_len)
    return seen[:, None, :, None]
