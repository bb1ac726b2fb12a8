"""EVA's chunk partition, the chunks each query already sees exactly, and the T5 relative-position buckets."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnzoo.ops.lara.segments import Segments, real_token_segments, strided_segments

__all__ = ["contained_chunks", "eva_segments", "t5_bucket", "t5_num_buckets"]


def eva_segments(
    mask: Tensor | None,
    batch: int,
    n: int,
    *,
    window_size: int,
    num_landmarks: int,
    extension: int,
    grid: tuple[int, int] | None,
    compat: bool,
    device: torch.device,
) -> Segments:
    """The chunks whose summaries EVA attends to (spec §6 step 4).

    * default 1D: each row's real tokens in ``min(L, n_real)`` contiguous chunks (padding changes nothing);
    * default 2D: ``r x r`` tiles, ``r = floor(sqrt(N / L))`` (partial tiles at the edges), masked means;
    * ``compat`` (official): 1D chunks of ``r = floor(N' / L)`` over ``N' = ceil(N / w) w``, 2D whole
      ``r x r`` tiles, both widened by the window extension e, means over all ``r + 2e`` slots
      (``r`` is at least 1 where the official code divides by zero).
    """
    if grid is None and not compat:
        return real_token_segments(mask, batch, n, num_landmarks, device)
    if grid is None:
        padded = -(-n // window_size) * window_size
        size = max(1, padded // num_landmarks)
        return strided_segments(n, size, extension, batch, device, padded_len=padded)
    size = max(1, math.isqrt(n // num_landmarks))
    return strided_segments(n, size, extension if compat else 0, batch, device, grid, count_slots=compat)


def contained_chunks(
    seg: Segments, mask: Tensor | None, window_size: int, extension: int, grid: tuple[int, int] | None
) -> Tensor:
    """``(B, N, C)`` bool: every real member of chunk c lies in query i's local key block (or tile).

    Such a chunk is already attended exactly, so EVA (without ``compat``) leaves its summary out.
    """
    b, k, n = seg.ids.shape
    pos = torch.arange(n, device=seg.ids.device)
    width = 1 if grid is None else grid[1]
    member = seg.member if mask is None else seg.member & mask[:, None]
    index = seg.ids.reshape(b, k * n)
    inside = torch.ones(b, n, seg.count, dtype=torch.bool, device=pos.device)
    for coord in (pos // width, pos % width) if grid is not None else (pos,):
        values = coord.expand(b, k, n)
        big = torch.full_like(values, n)
        lo = big.new_full((b, seg.count), n).scatter_reduce(
            1, index, torch.where(member, values, big).reshape(b, -1), "amin"
        )
        hi = big.new_full((b, seg.count), -1).scatter_reduce(
            1, index, torch.where(member, values, -1).reshape(b, -1), "amax"
        )
        start = (coord // window_size) * window_size
        inside &= (lo[:, None, :] >= (start - extension)[None, :, None]) & (
            hi[:, None, :] < (start + window_size + extension)[None, :, None]
        )
    return inside


def t5_num_buckets(window_size: int, extension: int) -> int:
    """efficient-attention's T5 table size: ``max(min((w + e) // 2, 64), 16)`` (spec §6.1)."""
    return max(min((window_size + extension) // 2, 64), 16)


def t5_bucket(rel: Tensor, num_buckets: int, max_distance: int, bidirectional: bool) -> Tensor:
    """T5 bucket of relative position ``rel = key - query`` (spec §6.1; long tensor, any shape)."""
    n = -rel
    if bidirectional:
        num_buckets //= 2
        base = (n < 0).long() * num_buckets
        n = n.abs()
    else:
        base = torch.zeros_like(n)
        n = n.clamp(min=0)
    exact = num_buckets // 2
    far = exact + (torch.log(n.clamp(min=1).double() / exact) / math.log(max_distance / exact) * (num_buckets - exact))
    far = far.nan_to_num(0.0, posinf=num_buckets, neginf=0.0).long().clamp(0, num_buckets - 1)  # far past the window
    return base + torch.where(n < exact, n, far)
