"""Local attention through the sparse engine (the fast path)."""

from __future__ import annotations

from torch import Tensor

from attnzoo.ops.common import check_qkv
from attnzoo.ops.local.window import LocalWindow
from attnzoo.sparse import SparsePattern, blockwise_window, sliding_window, sparse_attention, window_2d
from attnzoo.sparse.plan import ScoreMod

__all__ = ["LocalWindow", "local_attention", "local_pattern", "rpe_score_mod"]


def local_pattern(window: LocalWindow, seq_len: int, block_size: int | None = None) -> SparsePattern:
    """The :class:`SparsePattern` of ``window`` over ``seq_len`` tokens.

    Raises:
        ValueError: a 2D grid whose area is not ``seq_len``.
    """
    if window.grid is None:
        if window.mode == "sliding":
            return sliding_window(seq_len, window.before, window.after, block_size)
        return blockwise_window(seq_len, window.size, window.extension, block_size)
    height, width = window.grid
    if height * width != seq_len:
        raise ValueError(f"grid {height}x{width} has {height * width} cells but the sequence has N={seq_len}")
    if window.mode == "sliding":
        tile = max(1, min(16, window.size))
        return window_2d(height, width, tile, tile, window.size, window.size, True)
    return window_2d(height, width, window.size, window.size, window.extension, window.extension, False)


def rpe_score_mod(window: LocalWindow, table: Tensor) -> ScoreMod:
    """Additive relative-position bias ``bias(h, q_pos, kv_pos)`` read from ``table`` (see ``rpe_shape``)."""
    w, e = window.size, window.extension
    if window.grid is None and window.mode == "blockwise":

        def blockwise_1d(h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            start = (q // w) * w
            return table[h, q - start, (kv - start + e).clamp(0, w + 2 * e - 1)]

        return blockwise_1d
    if window.grid is None:

        def sliding_1d(h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            offset = (kv - q + window.before).clamp(0, window.before + window.after)
            return table[h, offset]

        return sliding_1d
    width = window.grid[1]
    if window.mode == "blockwise":

        def blockwise_2d(h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            qy, qx, ky, kx = q // width, q % width, kv // width, kv % width
            top, left = (qy // w) * w, (qx // w) * w
            dy = (qy - top) - (ky - top) + w + e - 1
            dx = (qx - left) - (kx - left) + w + e - 1
            index = (dy * (w + 2 * e) + dx).clamp(0, table.shape[0] - 1)
            return table[index, h]

        return blockwise_2d

    def sliding_2d(h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        dy = (kv // width - q // width + w).clamp(0, 2 * w)
        dx = (kv % width - q % width + w).clamp(0, 2 * w)
        return table[h, dy, dx]

    return sliding_2d


def local_attention(
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
    dropout_p: float = 0.0,
    executor: str = "auto",
    block_size: int | None = None,
) -> Tensor:
    """Softmax attention inside a local window, run block-sparse.

    * ``mode="sliding"``: query i attends keys ``i - look_back .. i + look_ahead`` (both default to
      ``window_size``; look-ahead is 0 when ``causal``). On a ``grid`` (H, W): keys within
      ``window_size`` rows and columns.
    * ``mode="blockwise"`` (efficient-attention's ``local``): tokens are cut into blocks of
      ``window_size`` (tiles of ``window_size x window_size`` on a grid); a block attends itself,
      widened by e = ``max(1, w // 2)`` tokens on every side with ``overlap_window``.

    Lengths that do not fill whole blocks or tiles are handled (missing keys are masked).
    Time O(N * window * d), memory O(N * d) (plus one chunk).

    Args:
        q, k, v: ``(B, H, N, d)``.
        mask: bool padding mask ``(B, N)``, True = real token.
        causal: keys j <= i only (raster order on a grid).
        rpe_table: learned relative-position bias, shape ``LocalWindow.rpe_shape(H)``; None = no bias.
        grid: ``(height, width)`` with ``height * width == N`` for 2D windows.
        executor, block_size: see :func:`attnzoo.sparse.sparse_attention`.

    Returns:
        ``(B, H, N, d)``; rows with no visible key are 0.

    Raises:
        ValueError: invalid window options, a grid that does not match N, a wrong rpe table shape,
            ``block_size`` with a ``grid`` (2D windows run on tiles of the window's own size).

    Reference: :func:`attnzoo.ops.local.naive_local_attention`.
    """
    check_qkv(q, k, v, cross=False)
    window = LocalWindow.resolve(
        mode=mode,
        window_size=window_size,
        look_back=look_back,
        look_ahead=look_ahead,
        overlap_window=overlap_window,
        grid=grid,
        causal=causal,
    )
    if grid is not None and block_size is not None:
        raise ValueError("block_size applies to 1D windows only; 2D windows run on tiles sized by window_size")
    pattern = local_pattern(window, q.shape[-2], block_size)
    score_mod = None
    if rpe_table is not None:
        expected = window.rpe_shape(q.shape[1])
        if tuple(rpe_table.shape) != expected:
            raise ValueError(f"rpe_table must have shape {expected} for this window, got {tuple(rpe_table.shape)}")
        score_mod = rpe_score_mod(window, rpe_table)
    out, _ = sparse_attention(
        q,
        k,
        v,
        pattern,
        mask=mask,
        causal=causal,
        scale=scale,
        dropout_p=dropout_p,
        executor=executor,
        score_mod=score_mod,
        need_lse=False,
    )
    return out
