"""LongNet dilated attention through the sparse engine (the fast path)."""

from __future__ import annotations

from torch import Tensor

from attnzoo.ops.common import check_qkv
from attnzoo.ops.dilated.offsets import check_branches, head_offsets
from attnzoo.sparse import dilated_segments, sparse_attention

__all__ = ["dilated_attention"]


def dilated_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    segment_lengths: tuple[int, ...] = (2048, 4096, 8192),
    dilation_rates: tuple[int, ...] = (1, 2, 4),
    offset_rule: str = "torchscale",
    detach_mixing: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    executor: str = "auto",
) -> Tensor:
    """LongNet dilated attention (Ding et al. 2023; spec §10.2), mixture over (w_i, r_i).

    For each branch i and head h: cut the sequence into segments of w_i tokens (w_i clipped to N),
    keep every r_i-th token of each segment starting at the head's offset, attend densely among
    the kept tokens of a segment, scatter back. Branches are mixed per row by their softmax
    denominators: ``out = sum_i softmax_i(lse_i) * out_i`` (rows a branch skips have weight 0).
    Time O(N * d * sum_i w_i / r_i^2).

    Args:
        q, k, v: ``(B, H, N, d)``.
        mask: bool padding mask ``(B, N)``, True = real token. Padded keys are masked inside every
            segment (torchscale leaves zero-padded keys unmasked; we do not).
        causal: keys j <= i only (keep r_1 = 1 so every row sees itself).
        segment_lengths, dilation_rates: the (w_i, r_i) pairs.
        offset_rule: ``"torchscale"`` (official head blocks) or ``"paper"`` (j mod r).
        detach_mixing: stop gradients through the mixing weights, as torchscale does; the default
            keeps them (exact gradients of the dense formulation).
        dropout_p: attention dropout inside each branch.
        executor: see :func:`attnzoo.sparse.sparse_attention` (``flex`` needs CUDA here: the mixture
            needs the log-sum-exp, which compiled flex on CPU cannot return).

    Returns:
        ``(B, H, N, d)``; rows no branch covers (or that see no key) are 0.

    Reference: :func:`attnzoo.ops.dilated.naive_dilated_attention`.
    """
    check_qkv(q, k, v, cross=False)
    check_branches(segment_lengths, dilation_rates)
    heads, n = q.shape[1], q.shape[2]
    if q.numel() == 0 or v.numel() == 0:  # B, H or N is 0
        return v * 0
    patterns = [
        dilated_segments(n, segment, dilation, head_offsets(heads, dilation, offset_rule))
        for segment, dilation in zip(segment_lengths, dilation_rates, strict=True)
    ]
    out, _ = sparse_attention(
        q,
        k,
        v,
        patterns,
        mask=mask,
        causal=causal,
        scale=scale,
        dropout_p=dropout_p,
        executor=executor,
        detach_weights=detach_mixing,
        need_lse=False,
    )
    return out
