"""Token-by-token decoding of causal LongNet: per-branch caches of the current segment's sampled keys.

Branch i (segment w_i, dilation r_i) lets the token at position n, ``within = n mod w_i``, take
part for head h iff ``within mod r_i`` is the head's offset; it then sees the kept tokens of its
segment up to itself. So the next query only needs, per branch and head, the kept tokens of the
current segment: at most ``ceil(w_i / r_i)`` of them, in slot ``within // r_i``. Branches are
mixed by their log-sum-exp exactly as :func:`attnzoo.ops.dilated.dilated_attention` mixes them.
Clipping w_i to the sequence length (torchscale) changes nothing for a causal row: a segment
longer than the sequence is the whole sequence either way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.ops.dilated.offsets import head_offsets
from attnzoo.sparse import merge_partials
from attnzoo.sparse.step import step_attention

__all__ = ["SegmentCache", "segment_cache", "segment_step"]


@dataclass
class SegmentCache(DecodeState):
    """Every branch's kept keys of the current segment, branches side by side along the slot axis.

    Attributes:
        k, v: ``(B, H, S, d)`` with ``S = sum_i ceil(w_i / r_i)``; branch i owns slots
            ``sum_{j<i} ceil(w_j / r_j)`` onwards, the token at ``within`` in slot ``within // r_i``.
        valid: ``(B, H, S)`` bool, True where the slot holds a real token of the current segment.
    """

    k: Tensor
    v: Tensor
    valid: Tensor


@dataclass(frozen=True)
class _Branch:
    segment: int
    dilation: int
    offsets: Tensor  # (H,) long: the residue each head keeps
    slots: slice


def _branches(
    heads: int,
    segment_lengths: tuple[int, ...],
    dilation_rates: tuple[int, ...],
    offset_rule: str,
    device: torch.device,
) -> Iterator[_Branch]:
    """The branches with each head's kept residue and their slot ranges in a :class:`SegmentCache`."""
    start = 0
    for segment, dilation in zip(segment_lengths, dilation_rates, strict=True):
        size = math.ceil(segment / dilation)
        offsets = torch.tensor(head_offsets(heads, dilation, offset_rule), device=device)
        yield _Branch(segment, dilation, offsets, slice(start, start + size))
        start += size


def segment_cache(
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    *,
    segment_lengths: tuple[int, ...],
    dilation_rates: tuple[int, ...],
    offset_rule: str = "torchscale",
) -> SegmentCache:
    """The :class:`SegmentCache` after a prompt ``k, v: (B, H, T, d)`` with padding ``mask: (B, T) | None``."""
    batch, heads, length, width = k.shape
    branches = list(_branches(heads, segment_lengths, dilation_rates, offset_rule, k.device))
    total = branches[-1].slots.stop
    keys, values = k.new_zeros(batch, heads, total, width), v.new_zeros(batch, heads, total, v.shape[-1])
    valid = torch.zeros(batch, heads, total, dtype=torch.bool, device=k.device)
    if length == 0:
        return SegmentCache(0, keys, values, valid)
    real = torch.ones(batch, length, dtype=torch.bool, device=k.device) if mask is None else mask
    for branch in branches:
        u = torch.arange(branch.slots.stop - branch.slots.start, device=k.device)
        within = branch.offsets[:, None] + u * branch.dilation  # (H, slots)
        pos = length - length % branch.segment + within
        kept = (within < branch.segment) & (pos < length)
        pos = pos.clamp(max=length - 1)
        keys[:, :, branch.slots] = k.gather(2, pos[None, :, :, None].expand(batch, -1, -1, width))
        values[:, :, branch.slots] = v.gather(2, pos[None, :, :, None].expand(batch, -1, -1, v.shape[-1]))
        valid[:, :, branch.slots] = kept & real[:, pos]
    return SegmentCache(length, keys, values, valid)


def segment_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: SegmentCache,
    *,
    segment_lengths: tuple[int, ...],
    dilation_rates: tuple[int, ...],
    offset_rule: str = "torchscale",
    detach_mixing: bool = False,
    dropout_p: float = 0.0,
) -> tuple[Tensor, SegmentCache]:
    """Attend the real token at position ``state.length`` (``q, k, v: (B, H, 1, d)``) through every branch.

    Returns the output ``(B, H, 1, d)``, the forward's row for that position, and the new cache (a
    copy: ``state`` is left unchanged). Costs O(sum_i w_i / r_i * H * d).
    """
    position = state.length
    keys, values, valid = state.k.clone(), state.v.clone(), state.valid.clone()
    outs, lses = [], []
    for branch in _branches(q.shape[1], segment_lengths, dilation_rates, offset_rule, q.device):
        within = position % branch.segment
        if within == 0:  # a new segment starts: the previous one's tokens are out of reach
            valid[:, :, branch.slots] = False
        takes_part = branch.offsets == within % branch.dilation  # (H,) heads whose row this branch covers
        slot = branch.slots.start + within // branch.dilation
        keys[:, :, slot] = torch.where(takes_part[:, None], k[:, :, 0], keys[:, :, slot])
        values[:, :, slot] = torch.where(takes_part[:, None], v[:, :, 0], values[:, :, slot])
        valid[:, :, slot] |= takes_part
        allowed = (valid[:, :, branch.slots] & takes_part[:, None])[:, :, None, :]
        out, lse = step_attention(q, keys[:, :, branch.slots], values[:, :, branch.slots], allowed, dropout_p=dropout_p)
        outs.append(out)
        lses.append(lse)
    out, _ = merge_partials(outs, lses, detach_weights=detach_mixing)
    return out.to(v.dtype), SegmentCache(position + 1, keys, values, valid)
