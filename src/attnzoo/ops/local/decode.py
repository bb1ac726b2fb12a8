"""Token-by-token decoding of causal 1D local attention: a rolling cache of the keys a window still needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.ops.local.sparse import rpe_score_mod
from attnzoo.ops.local.window import LocalWindow
from attnzoo.sparse.step import step_attention

__all__ = ["WindowCache", "window_cache", "window_step"]


@dataclass
class WindowCache(DecodeState):
    """The last tokens the next query's window can see: ``k, v: (B, H, L, d)``, ``real: (B, L)``.

    The cache holds positions ``length - L .. length - 1`` in order (False in ``real`` = prompt
    padding). L never exceeds ``before`` (sliding) or ``w - 1 + e`` (blockwise), whatever the length.
    """

    k: Tensor
    v: Tensor
    real: Tensor


def _kept(window: LocalWindow, position: int) -> int:
    """How many tokens before ``position`` a causal query at ``position`` may see (at most)."""
    if window.grid is not None:
        raise ValueError("2D local windows have no token-by-token decoding (the grid is fixed by the whole input)")
    if window.mode == "sliding":
        return window.before
    return position % window.size + window.extension


def _trim(window: LocalWindow, k: Tensor, v: Tensor, real: Tensor, length: int) -> WindowCache:
    """A cache of the last tokens of ``k, v: (B, H, L, d)`` (ending at ``length - 1``) the next query needs."""
    keep = min(_kept(window, length), k.shape[2])
    start = k.shape[2] - keep
    return WindowCache(length, k[:, :, start:].clone(), v[:, :, start:].clone(), real[:, start:].clone())


def window_cache(window: LocalWindow, k: Tensor, v: Tensor, mask: Tensor | None) -> WindowCache:
    """The :class:`WindowCache` after a prompt ``k, v: (B, H, T, d)`` with padding ``mask: (B, T) | None``.

    Raises:
        ValueError: a 2D window.
    """
    real = torch.ones(k.shape[0], k.shape[2], dtype=torch.bool, device=k.device) if mask is None else mask
    return _trim(window, k, v, real, k.shape[2])


def window_step(
    window: LocalWindow,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: WindowCache,
    *,
    rpe_table: Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[Tensor, WindowCache]:
    """Attend the real token at position ``state.length`` (``q, k, v: (B, H, 1, d)``) to its causal window.

    Returns the output ``(B, H, 1, d)``, exactly the forward's row for that position, and the new
    cache (a copy: ``state`` is left unchanged). Costs O(window * H * d).
    """
    position = state.length
    keys = torch.cat([state.k, k], 2)
    values = torch.cat([state.v, v], 2)
    real = torch.cat([state.real, state.real.new_ones(state.real.shape[0], 1)], 1)
    bias = None
    if rpe_table is not None:
        heads = torch.arange(q.shape[1], device=q.device)[:, None, None]
        kv_pos = torch.arange(position + 1 - keys.shape[2], position + 1, device=q.device)
        bias = rpe_score_mod(window, rpe_table)(heads, torch.tensor(position, device=q.device), kv_pos)
    out, _ = step_attention(q, keys, values, real[:, None, None, :], bias, dropout_p=dropout_p)
    return out, _trim(window, keys, values, real, position + 1)
