"""Token-by-token decoding of causal butterfly attention: the tokens of the current span of b*s positions.

With stride s and span ``b s``, the token at position n shares a group with the earlier tokens of
its span whose position is n mod s; tokens of an earlier span are out of every later query's reach.
So the state is the current span's tokens so far (at most ``b s - 1``), and a step attends the new
query to the ones of its residue, at most b keys (itself included), as the forward's group does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.sparse.step import step_attention

__all__ = ["GroupCache", "group_cache", "group_step"]


@dataclass
class GroupCache(DecodeState):
    """The current span's tokens: ``k, v: (B, H, L, d)`` for positions ``length - L .. length - 1``
    and ``real: (B, L)`` (False = prompt padding), with ``L = length mod (b s)``."""

    k: Tensor
    v: Tensor
    real: Tensor


def group_cache(k: Tensor, v: Tensor, mask: Tensor | None, span: int) -> GroupCache:
    """The :class:`GroupCache` after a prompt ``k, v: (B, H, T, d)`` with padding ``mask: (B, T) | None``.

    ``span``: ``b s``, the block size times the stride.
    """
    length = k.shape[2]
    start = length - length % span
    real = torch.ones(k.shape[0], length, dtype=torch.bool, device=k.device) if mask is None else mask
    return GroupCache(length, k[:, :, start:].clone(), v[:, :, start:].clone(), real[:, start:].clone())


def group_step(
    q: Tensor, k: Tensor, v: Tensor, state: GroupCache, *, stride: int, span: int, dropout_p: float = 0.0
) -> tuple[Tensor, GroupCache]:
    """Attend the real token at position ``state.length`` (``q, k, v: (B, H, 1, d)``) to its causal group.

    Returns the output ``(B, H, 1, d)``, the forward's row for that position, and the new cache (a
    copy: ``state`` is left unchanged). Attention costs O(b * H * d); the copy O(b s H d).
    """
    position = state.length
    residue = position % stride  # the cache starts at a multiple of the stride
    ones = state.real.new_ones(q.shape[0], 1)
    keys = torch.cat([state.k[:, :, residue::stride], k], 2)
    values = torch.cat([state.v[:, :, residue::stride], v], 2)
    real = torch.cat([state.real[:, residue::stride], ones], 1)
    out, _ = step_attention(q, keys, values, real[:, None, None, :], dropout_p=dropout_p)
    if (position + 1) % span == 0:  # the span is complete: no later query sees any of it
        return out, GroupCache(position + 1, k[:, :, :0].clone(), v[:, :, :0].clone(), ones[:, :0].clone())
    cache = GroupCache(
        position + 1, torch.cat([state.k, k], 2), torch.cat([state.v, v], 2), torch.cat([state.real, ones], 1)
    )
    return out, cache
