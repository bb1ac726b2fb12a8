"""FLOP floor of local attention: the score entries its window allows, as dense matmul work.

Every allowed (query, key) pair costs one multiply-add of width d in ``Q K^T`` and one in ``P V``:
``flops = 4 * d * entries`` per (batch, head), forward, matmuls only (softmax and masks excluded).
``entries`` is counted exactly from the window geometry with O(N) integer arithmetic (no N x N mask):

* sliding 1D: query i sees keys ``max(0, i - before) .. min(N - 1, i + after)`` (after = 0 when causal);
* blockwise 1D: block ``s = w * floor(i / w)``, keys ``s - e .. s + w + e - 1`` clipped (and <= i when causal);
* 2D (row-major grid): a row interval times a column interval; when causal (raster order), the rows above the
  query's times the columns, plus the columns up to the query's in its own row.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from attnzoo.ops.local.window import LocalWindow

__all__ = ["local_entries", "local_flops"]


def _count(lo: Tensor, hi: Tensor) -> Tensor:
    return (hi - lo + 1).clamp_min(0)


def local_entries(n: int, window: LocalWindow, *, causal: bool = False) -> int:
    """Number of (query, key) pairs ``window`` allows over ``n`` tokens (its ``grid`` must hold n cells in 2D).

    Args:
        n: sequence length N.
        window: the resolved geometry.
        causal: keys j <= i only (raster order on a grid).
    """
    i = torch.arange(n, dtype=torch.long)
    w, e = window.size, window.extension
    if window.grid is None:
        if window.mode == "sliding":
            after = 0 if causal else window.after
            return int(_count((i - window.before).clamp_min(0), (i + after).clamp_max(n - 1)).sum())
        start = i - i % w
        hi = (start + w + e - 1).clamp_max(n - 1)
        return int(_count((start - e).clamp_min(0), torch.minimum(hi, i) if causal else hi).sum())
    height, width = window.grid
    y, x = i // width, i % width
    if window.mode == "sliding":
        (r0, r1), (c0, c1) = (y - w, y + w), (x - w, x + w)
    else:
        top, left = y - y % w, x - x % w
        (r0, r1), (c0, c1) = (top - e, top + w + e - 1), (left - e, left + w + e - 1)
    r0, r1, c0, c1 = r0.clamp_min(0), r1.clamp_max(height - 1), c0.clamp_min(0), c1.clamp_max(width - 1)
    cols = _count(c0, c1)
    if not causal:
        return int((_count(r0, r1) * cols).sum())
    return int((_count(r0, y - 1) * cols + _count(c0, torch.minimum(c1, x))).sum())


def local_flops(n: int, d: int, options: Any, causal: bool) -> float:
    """Forward matmul FLOPs of ``local`` per (batch, head): ``4 * d * allowed entries``.

    Args:
        n: sequence length N.
        d: head width.
        options: a :class:`attnzoo.mechanisms.local.LocalOptions` (its window, and the grid when ``attn_2d``:
            ``image_height x image_width``, or a square ``sqrt(N) x sqrt(N)``).
        causal: keys j <= i only.

    Raises:
        ValueError: ``attn_2d`` with a non-square N and no image size.
    """
    window = options.window(causal=causal)
    if options.attn_2d:
        grid = (options.image_height, options.image_width)
        if options.image_height is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"attn_2d with N={n} tokens: N is not square; set image_height and image_width")
            grid = (side, side)
        window = LocalWindow(window.mode, window.size, window.before, window.after, window.extension, grid)
    return 4.0 * d * local_entries(n, window, causal=causal)
