"""One decoding step: a new query against the few keys a mechanism's state keeps for it.

The same ``math`` kernel the engine runs on each block (softmax statistics in fp32 at least), so a
step computes exactly what the forward computes for that query's row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnzoo.sparse.kernels import KERNELS

__all__ = ["step_attention"]


def step_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    allowed: Tensor,
    bias: Tensor | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Softmax attention of the queries ``q`` over the keys ``allowed`` marks.

    Args:
        q: ``(B, H, M, d)`` (M = 1 when decoding).
        k, v: ``(B, H, S, d)``, ``(B, H, S, dv)``.
        allowed: bool, broadcastable to ``(B, H, M, S)``; True = the query sees that key.
        bias: additive float score bias broadcastable to ``(B, H, M, S)`` (e.g. relative positions).
        scale: default ``d ** -0.5``.
        dropout_p: attention dropout (pass 0 in eval).

    Returns:
        ``out (B, H, M, dv)`` (0 on rows that see no key) and ``lse (B, H, M)``, the log-sum-exp of
        the scores (``-inf`` on those rows), for merging partial attentions with
        :func:`attnzoo.sparse.merge_partials`.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = torch.promote_types(q.dtype, torch.float32)  # scores are summed in fp32 at least, as the engine does
    additive = torch.zeros((), dtype=dtype, device=q.device) if bias is None else bias.to(dtype)
    additive = additive.masked_fill(~allowed, float("-inf"))
    dropout = (dropout_p, int(torch.randint(0, 2**62, (1,)))) if dropout_p > 0.0 else None
    out, lse = KERNELS["math"].forward(q, k, v, additive, False, scale, dropout)
    seen = allowed.expand(*q.shape[:-1], k.shape[-2]).any(-1)
    return out, lse.masked_fill(~seen, float("-inf"))
