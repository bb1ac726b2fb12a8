"""Nystromformer's pieces: segment-mean landmarks over real tokens and the iterative pseudo-inverse."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["add_segment_means_grad", "iterative_pinv", "segment_ids", "segment_means"]


def _segment_ends(real: Tensor, num_landmarks: int) -> Tensor:
    """Cumulative real-token count at the end of each segment: ``(B, m)`` (Nystromformer's split)."""
    n = real.sum(-1, keepdim=True)
    per = n // num_landmarks
    short = (per + 1) * num_landmarks - n  # segments of `per` tokens come first
    j = torch.arange(1, num_landmarks + 1, device=real.device)
    return j * per + (j - short).clamp_min(0)


def segment_ids(real: Tensor, num_landmarks: int) -> Tensor:
    """Landmark index of every token: ``(B, N)`` long, -1 for pads.

    The n real tokens of a sequence (in order, wherever they are) are cut into ``m`` contiguous
    segments as Nystromformer does: the first ``(floor(n/m) + 1) m - n`` segments hold ``floor(n/m)``
    tokens, the rest one more (with n < m: m - n empty segments, then n of one token).

    Args:
        real: ``(B, N)`` bool, True = real token.
        num_landmarks: m.
    """
    rank = real.long().cumsum(-1)  # 1-based rank of each real token
    ids = torch.searchsorted(_segment_ends(real, num_landmarks), rank, side="left")
    return ids.masked_fill(~real, -1)


def _contiguous_segment_means(x: Tensor, num_landmarks: int) -> Tensor:
    """:func:`segment_means` when every token is real: two reshaped means (N >= m)."""
    n, m = x.shape[-2], num_landmarks
    per = n // m
    short = (per + 1) * m - n  # segments of `per` tokens, then m - short of `per + 1`
    parts = [x[..., : short * per, :].unflatten(-2, (short, per)).mean(-2)] if short else []
    if short < m:
        parts.append(x[..., short * per :, :].unflatten(-2, (m - short, per + 1)).mean(-2))
    return torch.cat(parts, dim=-2) if len(parts) > 1 else parts[0]


def segment_means(x: Tensor, real: Tensor | None, num_landmarks: int) -> Tensor:
    """Mean of ``x: (B, H, N, d)`` over the real tokens of each segment (see :func:`segment_ids`): ``(B, H, m, d)``.

    ``real=None``: every token is real (then N >= m is required), computed by reshaped means.
    Otherwise from one prefix sum over the sequence (differences at the segment ends), so it costs
    O(N d) rather than a (m x N) averaging product; empty segments give 0.
    """
    if real is None:
        if x.shape[-2] < num_landmarks:
            raise ValueError(f"without a mask, segment means need N >= num_landmarks; got N={x.shape[-2]}")
        return _contiguous_segment_means(x, num_landmarks)
    b, h, _, d = x.shape
    ends = _segment_ends(real, num_landmarks)  # (B, m) cumulative counts
    csum = torch.cat([x.new_zeros(b, h, 1, d), (x * real[:, None, :, None].to(x.dtype)).cumsum(-2)], dim=-2)
    # position (in csum, shifted by one) of the last token of each segment; 0 for an empty prefix
    pos = torch.searchsorted(real.long().cumsum(-1), ends, side="left") + 1
    pos = torch.where(ends > 0, pos, 0)
    totals = csum.gather(2, pos[:, None, :, None].expand(b, h, -1, d))
    sums = totals - torch.cat([totals.new_zeros(b, h, 1, d), totals[:, :, :-1]], dim=2)
    counts = (ends - torch.cat([ends.new_zeros(b, 1), ends[:, :-1]], dim=1)).clamp_min(1)
    return sums / counts[:, None, :, None].to(x.dtype)


def add_segment_means_grad(base: Tensor, grad: Tensor, real: Tensor | None, out: Tensor) -> Tensor:
    """``out = base + J^T grad``, J the Jacobian of :func:`segment_means` ``(x, real, m)``: each token gets
    its segment's gradient over the segment's real-token count (pads get none). One pass, written into ``out``.

    Args:
        base: ``(B, H, N, d)``; grad: ``(B, H, m, d)``, the gradient of the landmarks; real: ``(B, N)`` bool or None
            (every token real); out: ``(B, H, N, d)``, any strides (it may be ``base``).

    Returns:
        ``out``.
    """
    n, m = base.shape[-2], grad.shape[-2]
    if real is None:  # contiguous segments of `per` tokens, then of `per + 1`: broadcast adds on split views
        per = n // m
        short = (per + 1) * m - n
        for tokens, segments, size in (
            (slice(0, short * per), slice(0, short), per),
            (slice(short * per, n), slice(short, m), per + 1),
        ):
            count = segments.stop - segments.start
            if count:
                part_base, part_out = (t[..., tokens, :].unflatten(-2, (count, size)) for t in (base, out))
                torch.add(part_base, (grad[..., segments, :] / size)[..., None, :], out=part_out)
        return out
    ends = _segment_ends(real, m)
    counts = (ends - torch.cat([ends.new_zeros(ends.shape[0], 1), ends[:, :-1]], dim=1)).clamp_min(1)
    scaled = torch.cat(
        [grad / counts[:, None, :, None].to(grad.dtype), grad.new_zeros(*grad.shape[:2], 1, grad.shape[-1])], 2
    )
    ids = segment_ids(real, m).masked_fill(~real, m)  # pads read the zero row
    spread = scaled.gather(2, ids[:, None, :, None].expand(-1, base.shape[1], -1, base.shape[-1]))
    return torch.add(base, spread, out=out)


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
