"""Dense reference for butterfly attention: the N x N group mask from the official formula."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnzoo.ops.softmax.naive import naive_softmax_attention

__all__ = ["butterfly_mask", "naive_butterfly_attention"]


def butterfly_mask(
    n: int, block_size: int, stage: int, *, float_stage_count: bool = False, max_seq_len: int | None = None
) -> Tensor:
    """``(N, N)`` bool: i and j share a butterfly group (spec DPBN §4.2, written out directly).

    The length (``max_seq_len`` when given, else N) is padded to a multiple of b, P;
    ``n_stage = ceil(log_b P)``, stride ``b ** (stage mod n_stage)`` capped to ``ceil(P / b)``; then
    ``i // (b s) == j // (b s)`` and ``i = j (mod s)``.
    """
    b = block_size
    padded = max(1, -(-(n if max_seq_len is None else max_seq_len) // b)) * b
    if float_stage_count:
        n_stage = max(1, math.ceil(math.log(padded) / math.log(b)))
    else:
        n_stage = next(t for t in range(1, 64) if b**t >= padded)
    s = b ** (stage % n_stage)
    if s * b > padded:
        s = -(-padded // b)
    i = torch.arange(n)
    return ((i[:, None] // (b * s)) == (i[None, :] // (b * s))) & ((i[:, None] - i[None, :]) % s == 0)


def naive_butterfly_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    block_size: int = 64,
    stage: int = 0,
    float_stage_count: bool = False,
    max_seq_len: int | None = None,
    scale: float | None = None,
) -> Tensor:
    """Dense O(N^2) butterfly attention with the signature of :func:`butterfly_attention` (tests only)."""
    allowed = butterfly_mask(
        q.shape[-2], block_size, stage, float_stage_count=float_stage_count, max_seq_len=max_seq_len
    ).to(q.device)
    return naive_softmax_attention(q, k, v, mask=mask, attn_mask=allowed[None, None], causal=causal, scale=scale)
