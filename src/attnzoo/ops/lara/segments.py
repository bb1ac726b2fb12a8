"""Landmark segments: which tokens each landmark (LARA) or chunk (EVA) summarises, and their means.

A :class:`Segments` assigns every token to at most ``K`` of ``C`` segments (``K > 1`` only when
segments overlap, as EVA's official chunks widened by the window extension do). The reductions
(:func:`segment_mean`, :func:`segment_softmax`) are scatter-adds over these ids: O(K N d) time and
memory, no ``C x N`` matrix.

Shape legend: K memberships per token, C segments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Segments",
    "nystrom_split",
    "real_token_segments",
    "segment_mean",
    "segment_softmax",
    "strided_segments",
]


@dataclass(frozen=True)
class Segments:
    """Token-to-segment assignment.

    Attributes:
        ids: ``(B, K, N)`` long, the segment of each token in membership k (any value where not a member).
        member: ``(B, K, N)`` bool, token n belongs to segment ``ids[b, k, n]``.
        count: C, the number of segments.
        denom: ``(B, C)`` mean denominators, or ``None`` for the number of members (masked mean).
        size: r when every token belongs to exactly one segment and segment c is tokens ``[c r, c r + r)``
            (the reductions then run on a ``(C, r)`` reshape instead of scatters), else ``None``.
    """

    ids: Tensor
    member: Tensor
    count: int
    denom: Tensor | None = None
    size: int | None = None

    def nonempty(self) -> Tensor:
        """``(B, C)`` bool: the segment has at least one member."""
        b = self.ids.shape[0]
        hits = torch.zeros(b, self.count, device=self.ids.device)
        flat_ids = self.ids.reshape(b, -1)
        return hits.scatter_add_(1, flat_ids, self.member.reshape(b, -1).to(hits.dtype)) > 0


def nystrom_split(rank: Tensor, length: Tensor, count: Tensor) -> Tensor:
    """Segment id of the token at ``rank`` when ``length`` tokens are cut into ``count`` contiguous segments.

    Nystromformer's split (efficient-attention LARA, spec §5 step 2): ``length // count`` tokens per
    segment, the last ``length % count`` segments one token longer. All arguments broadcast (long).
    """
    count = count.clamp(min=1)
    base = (length // count).clamp(min=1)
    short = (base + 1) * count - length  # segments of ``base`` tokens, the rest have base + 1
    short = torch.where(length % count == 0, count, short)
    boundary = short * base
    return torch.where(rank < boundary, rank // base, short + (rank - boundary) // (base + 1))


def real_token_segments(mask: Tensor | None, batch: int, n: int, num: int, device: torch.device) -> Segments:
    """Each row's real tokens cut into ``min(num, n_real)`` contiguous segments (by rank among real tokens).

    Padding changes nothing: a padded row has the segments of its real tokens alone. Segments
    ``>= min(num, n_real)`` of a row are empty.

    Args:
        mask: ``(B, N)`` bool, True = real token, or ``None``.
        num: the number of landmarks L; the tensors have ``C = min(L, N)`` segments.
    """
    count = max(1, min(num, n))
    if mask is None:
        rank = torch.arange(n, device=device).expand(batch, n)
        length = torch.full((batch, 1), n, device=device)
        member = torch.ones(batch, n, dtype=torch.bool, device=device)
    else:
        rank = mask.long().cumsum(-1) - 1
        length = mask.long().sum(-1, keepdim=True)
        member = mask
    ids = nystrom_split(rank.clamp(min=0), length, length.clamp(max=num)).clamp(0, count - 1)
    uniform = n // count if mask is None and n % count == 0 else None
    return Segments(ids[:, None], member[:, None], count, size=uniform)


def strided_segments(
    n: int,
    size: int,
    extension: int,
    batch: int,
    device: torch.device,
    grid: tuple[int, int] | None = None,
    *,
    padded_len: int | None = None,
    count_slots: bool = True,
) -> Segments:
    """Position-based chunks of ``size`` tokens (``size x size`` tiles on a ``grid``) widened by ``extension``.

    efficient-attention EVA's chunks (spec §6 step 4): chunk c covers ``[c r - e, (c+1) r + e)`` and every
    one has ``r + 2e`` (2D: ``(r + 2e)^2``) slots, out-of-range slots counted in the mean (``denom``).
    Tokens past the last whole chunk belong to none (their core), as in the official partition.

    Args:
        n: sequence length N (``height * width`` on a grid).
        size: r; extension: e.
        padded_len: 1D: the chunks tile this length (>= N; official: N rounded up to the window).
        count_slots: divide means by the slot count and keep whole tiles only (official); False = divide
            by the real members, and partial 2D tiles at the edges are chunks too.
    """
    reach = -(-extension // size) if extension else 0
    offsets = torch.arange(-reach, reach + 1, device=device)
    if grid is None:
        count = max(1, (padded_len or n) // size)
        pos = torch.arange(n, device=device)
        ids = (pos // size)[None] + offsets[:, None]  # (K, N)
        member = (ids >= 0) & (ids < count) & (pos >= ids * size - extension) & (pos < (ids + 1) * size + extension)
        denom = float(size + 2 * extension)
    else:
        height, width = grid
        if count_slots:  # official: whole tiles only
            rows, cols = height // size, width // size
        else:  # partial tiles at the bottom and right edges
            rows, cols = -(-height // size), -(-width // size)
        count = max(1, rows * cols)
        pos = torch.arange(n, device=device)
        y, x = pos // width, pos % width
        cy = (y // size)[None, None] + offsets[:, None, None]  # (K, 1, N)
        cx = (x // size)[None, None] + offsets[None, :, None]  # (1, K, N)
        ok_y = (cy >= 0) & (cy < rows) & (y >= cy * size - extension) & (y < (cy + 1) * size + extension)
        ok_x = (cx >= 0) & (cx < cols) & (x >= cx * size - extension) & (x < (cx + 1) * size + extension)
        member = (ok_y & ok_x).reshape(-1, n)
        ids = (cy * cols + cx).reshape(-1, n)
        denom = float((size + 2 * extension) ** 2)
    ids = torch.where(member, ids, torch.zeros_like(ids))
    k = ids.shape[0]
    full = torch.full((batch, count), denom, device=device)
    ids, member = ids[None].expand(batch, k, n), member[None].expand(batch, k, n)
    tiled = grid is None and extension == 0 and count * size == n  # chunk c is exactly [c r, (c+1) r)
    return Segments(ids, member, count, full if count_slots else None, size=size if tiled else None)


def _scatter(values: Tensor, seg: Segments) -> Tensor:
    """``sum over k, n`` of ``values[b, h, k, n, :]`` into ``(B, H, C, d)`` at ``seg.ids``."""
    b, h, k, n, d = values.shape
    out = values.new_zeros(b, h, seg.count, d)
    index = seg.ids[:, None, :, :, None].expand(b, h, k, n, d).reshape(b, h, k * n, d)
    return out.scatter_add_(2, index, values.reshape(b, h, k * n, d))


def segment_mean(x: Tensor, seg: Segments, mask: Tensor | None = None) -> Tensor:
    """Mean of ``x: (B, H, N, d)`` over each segment's members (and real tokens) -> ``(B, H, C, d)``.

    With ``seg.denom`` the sum is divided by it (members outside ``mask`` are then counted as zeros);
    otherwise by the number of real members (empty segments give 0).
    """
    if seg.size is not None and mask is None:
        b, h, _, d = x.shape
        return x.reshape(b, h, seg.count, seg.size, d).mean(3)
    member = seg.member if mask is None else seg.member & mask[:, None]
    weights = member[:, None, :, :, None].to(x.dtype)  # (B, 1, K, N, 1)
    sums = _scatter(x[:, :, None] * weights, seg)
    if seg.denom is not None:
        return sums / seg.denom[:, None, :, None].to(x.dtype)
    counts = _scatter(weights.expand(-1, 1, -1, -1, 1), seg)  # (B, 1, C, 1)
    return sums / counts.clamp(min=1)


def segment_softmax(logits: Tensor, v: Tensor, seg: Segments, mask: Tensor | None = None) -> Tensor:
    """Per segment c: ``sum_j softmax_j(logits) v_j`` over its members -> ``(B, H, C, dv)``.

    Args:
        logits: ``(B, H, K, N)``, the score of token n in the segment it joins in membership k.
        v: ``(B, H, N, dv)``.
        mask: ``(B, N)`` bool, True = real token; other tokens take no part. Empty segments give 0.
    """
    b, h, k, n = logits.shape
    if seg.size is not None and mask is None:
        probs = torch.softmax(logits.reshape(b, h, seg.count, 1, seg.size), dim=-1)
        return (probs @ v.reshape(b, h, seg.count, seg.size, -1)).squeeze(3)
    member = seg.member if mask is None else seg.member & mask[:, None]
    keep = member[:, None].expand(b, h, k, n)
    index = seg.ids[:, None].expand(b, h, k, n).reshape(b, h, k * n)
    with torch.no_grad():
        filled = logits.masked_fill(~keep, float("-inf")).reshape(b, h, k * n)
        peak = logits.new_full((b, h, seg.count), float("-inf")).scatter_reduce_(2, index, filled, "amax")
        peak = peak.nan_to_num(0.0, neginf=0.0)
    shifted = logits - peak.gather(2, index).view(b, h, k, n)
    weights = torch.exp(shifted.masked_fill(~keep, float("-inf")))  # (B, H, K, N)
    total = logits.new_zeros(b, h, seg.count).scatter_add_(2, index, weights.reshape(b, h, k * n))
    sums = _scatter(weights[..., None] * v[:, :, None], seg)
    return sums / total.clamp(min=torch.finfo(total.dtype).tiny)[..., None]
