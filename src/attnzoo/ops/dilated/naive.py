"""Dense reference for LongNet: softmax with the multiplicity mask M (spec §10.2).

``O = softmax(s Q K^T + log M) V`` per head, where ``M[p, q]`` counts the branches in which key q is
in the same sparse segment as query p (log 0 = -inf). Written from the definition, independently
of the sparse engine.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnzoo.ops.dilated.offsets import check_branches, head_offsets
from attnzoo.ops.softmax.naive import naive_softmax_attention

__all__ = ["multiplicity", "naive_dilated_attention"]


def multiplicity(
    n: int, heads: int, segment_lengths: tuple[int, ...], dilation_rates: tuple[int, ...], offset_rule: str
) -> Tensor:
    """``(H, N, N)`` float: number of branches in which query p and key q share a sparse segment."""
    pos = torch.arange(n)
    count = torch.zeros(heads, n, n, dtype=torch.float64)
    for segment, dilation in zip(segment_lengths, dilation_rates, strict=True):
        w = min(segment, n)
        seg, within = pos // w, pos % w
        for h, offset in enumerate(head_offsets(heads, dilation, offset_rule)):
            kept = within % dilation == offset
            same = (seg[:, None] == seg[None, :]) & kept[:, None] & kept[None, :]
            count[h] += same.double()
    return count


def naive_dilated_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    segment_lengths: tuple[int, ...] = (2048, 4096, 8192),
    dilation_rates: tuple[int, ...] = (1, 2, 4),
    offset_rule: str = "torchscale",
    scale: float | None = None,
) -> Tensor:
    """Dense O(N^2) LongNet with the same signature as :func:`dilated_attention` (tests only)."""
    check_branches(segment_lengths, dilation_rates)
    count = multiplicity(q.shape[-2], q.shape[1], segment_lengths, dilation_rates, offset_rule).to(q.device, q.dtype)
    return naive_softmax_attention(
        q, k, v, mask=mask, attn_mask=(count > 0)[None], causal=causal, scale=scale, bias=count.log()[None]
    )
