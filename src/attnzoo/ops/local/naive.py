"""Dense reference for local attention: the N x N window mask and bias written straight from the definitions."""

from __future__ import annotations

import torch
from torch import Tensor

from attnzoo.ops.local.window import LocalWindow
from attnzoo.ops.softmax.naive import naive_softmax_attention

__all__ = ["naive_local_attention"]


def _coords(n: int, grid: tuple[int, int] | None, device: torch.device) -> tuple[Tensor, Tensor]:
    idx = torch.arange(n, device=device)
    if grid is None:
        return idx, torch.zeros_like(idx)
    return idx // grid[1], idx % grid[1]


def _window_mask(window: LocalWindow, n: int, device: torch.device) -> Tensor:
    """``(N, N)`` bool: query i may attend key j."""
    y, x = _coords(n, window.grid, device)
    qy, qx, ky, kx = y[:, None], x[:, None], y[None, :], x[None, :]
    w, e = window.size, window.extension
    if window.grid is None:
        if window.mode == "sliding":
            return (ky >= qy - window.before) & (ky <= qy + window.after)
        block_start = qy - qy % w
        return (ky >= block_start - e) & (ky < block_start + w + e)
    if window.mode == "sliding":
        return ((ky - qy).abs() <= w) & ((kx - qx).abs() <= w)
    top, left = qy - qy % w, qx - qx % w
    return (ky >= top - e) & (ky < top + w + e) & (kx >= left - e) & (kx < left + w + e)


def _window_bias(window: LocalWindow, table: Tensor, n: int) -> Tensor:
    """``(H, N, N)`` relative-position bias (entries outside the window are never used)."""
    y, x = _coords(n, window.grid, table.device)
    qy, qx, ky, kx = y[:, None], x[:, None], y[None, :], x[None, :]
    w, e = window.size, window.extension
    if window.grid is None and window.mode == "blockwise":
        i_in_block = qy % w
        j_in_ext = (ky - (qy - qy % w) + e).clamp(0, w + 2 * e - 1)
        return table[:, i_in_block.expand(n, n), j_in_ext]
    if window.grid is None:
        span = window.before + window.after
        return table[:, (ky - qy + window.before).clamp(0, span)]
    if window.mode == "blockwise":
        # efficient-attention's index over (query, key) coordinates relative to the query tile
        rel_qy, rel_qx = qy % w, qx % w
        rel_ky, rel_kx = ky - (qy - qy % w), kx - (qx - qx % w)
        index = (rel_qy - rel_ky + w + e - 1) * (w + 2 * e) + (rel_qx - rel_kx + w + e - 1)
        return table[index.clamp(0, table.shape[0] - 1)].permute(2, 0, 1)
    return table[:, (ky - qy + w).clamp(0, 2 * w), (kx - qx + w).clamp(0, 2 * w)]


def naive_local_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    window_size: int = 64,
    mode: str = "sliding",
    look_back: int | None = None,
    look_ahead: int | None = None,
    overlap_window: bool = False,
    grid: tuple[int, int] | None = None,
    rpe_table: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Dense O(N^2) local attention with the same signature as :func:`local_attention` (tests only)."""
    window = LocalWindow.resolve(
        mode=mode,
        window_size=window_size,
        look_back=look_back,
        look_ahead=look_ahead,
        overlap_window=overlap_window,
        grid=grid,
        causal=causal,
    )
    n = q.shape[-2]
    bias = None if rpe_table is None else _window_bias(window, rpe_table, n)[None]
    allowed = _window_mask(window, n, q.device)[None, None]
    return naive_softmax_attention(q, k, v, mask=mask, attn_mask=allowed, causal=causal, scale=scale, bias=bias)
