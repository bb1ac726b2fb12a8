"""Token-by-token decoding of causal LongNet: per-branch caches of the current segment's sampled keys.

Branch i (segment w_i, dilation r_i) lets the token at position n, ``within = n mod w_i``, take
part for head h iff ``within mod r_i`` is the head's offset; it then sees the kept tokens of its
segment up to itself. So the next query only needs, per branch and head, the kept tokens of the
current segment: at most ``ceil(w_i / r_i)`` of them, in slot ``within // r_i``. Clipping w_i to the
sequence length (torchscale) changes nothing for a causal row: a segment longer than the sequence is
the whole sequence either way.

The forward mixes branches by their log-sum-exp, ``out = sum_i exp(lse_i) out_i / sum_i exp(lse_i)``,
which is one softmax over the branches' keys side by side (a key two branches share counts twice,
spec §10.2). A step computes that one softmax over all slots at once: the same value in a handful of
tensor ops whatever the number of branches.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.ops.dilated.offsets import head_offsets
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
class _Slots:
    """Per slot of a :class:`SegmentCache`: its branch's ``segment`` w and ``dilation`` r and its ``index``
    u in the branch, all ``(S,)`` long; ``offset (H, S)``: the residue each head keeps in that branch."""

    segment: Tensor
    dilation: Tensor
    index: Tensor
    offset: Tensor


@functools.lru_cache(maxsize=16)
def _slots(
    heads: int,
    segment_lengths: tuple[int, ...],
    dilation_rates: tuple[int, ...],
    offset_rule: str,
    device: torch.device,
) -> _Slots:
    segment, dilation, index, offset = [], [], [], []
    for w, r in zip(segment_lengths, dilation_rates, strict=True):
        size = math.ceil(w / r)
        segment.append(torch.full((size,), w))
        dilation.append(torch.full((size,), r))
        index.append(torch.arange(size))
        offset.append(torch.tensor(head_offsets(heads, r, offset_rule))[:, None].expand(heads, size))
    return _Slots(*(torch.cat(part, -1).to(device) for part in (segment, dilation, index, offset)))


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
    batch, heads, length, _ = k.shape
    slots = _slots(heads, tuple(segment_lengths), tuple(dilation_rates), offset_rule, k.device)
    within = slots.offset + slots.index * slots.dilation  # (H, S): where each slot's token sits in its segment
    pos = length - length % slots.segment + within
    kept = (within < slots.segment) & (pos < length)
    if length == 0:
        shape = (batch, heads, kept.shape[-1])
        empty = torch.zeros(shape, dtype=torch.bool, device=k.device)
        return SegmentCache(0, k.new_zeros(*shape, k.shape[-1]), v.new_zeros(*shape, v.shape[-1]), empty)
    real = torch.ones(batch, length, dtype=torch.bool, device=k.device) if mask is None else mask
    pos = pos.clamp(max=length - 1)
    gather = [t.gather(2, pos[None, :, :, None].expand(batch, -1, -1, t.shape[-1])) for t in (k, v)]
    return SegmentCache(length, *gather, kept & real[:, pos])


def segment_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: SegmentCache,
    *,
    segment_lengths: tuple[int, ...],
    dilation_rates: tuple[int, ...],
    offset_rule: str = "torchscale",
    dropout_p: float = 0.0,
) -> tuple[Tensor, SegmentCache]:
    """Attend the real token at position ``state.length`` (``q, k, v: (B, H, 1, d)``) through every branch.

    Returns the output ``(B, H, 1, d)``, the forward's row for that position, and the new cache (new
    tensors: ``state`` is left unchanged). Costs O(sum_i w_i / r_i * H * d). ``detach_mixing`` has no
    counterpart here: it changes only the gradients of the training forward, not its values.
    """
    slots = _slots(q.shape[1], tuple(segment_lengths), tuple(dilation_rates), offset_rule, q.device)
    within = state.length % slots.segment  # (S,)
    takes_part = within % slots.dilation == slots.offset  # (H, S): heads whose row each branch covers
    write = takes_part & (slots.index == within // slots.dilation)  # the new token's slot per branch
    valid = (state.valid & (within != 0)) | write  # within == 0: a new segment starts, the old is out of reach
    branches = list(zip(segment_lengths, dilation_rates, strict=True))
    starts = itertools.accumulate((math.ceil(w / r) for w, r in branches), initial=0)
    written = [start + state.length % w // r for start, (w, r) in zip(starts, branches, strict=False)]
    index = torch.tensor(written, device=q.device)  # (branches,): one slot per branch takes the new token
    keys, values = state.k.clone(), state.v.clone()
    for cache, new in ((keys, k), (values, v)):
        cache[:, :, index] = torch.where(write[:, index, None], new, cache[:, :, index])
    out, _ = step_attention(q, keys, values, (valid & takes_part)[:, :, None, :], dropout_p=dropout_p)
    return out, SegmentCache(state.length + 1, keys, values, valid)
