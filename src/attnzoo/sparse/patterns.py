"""Sparse attention patterns, described once and run by :mod:`attnzoo.sparse.engine`.

Each builder returns a :class:`SparsePattern` for a sequence of N tokens: a block layout (which key
blocks each query block visits), an element predicate on original positions and, where the pattern
is block-local in another token order, that order. Builders are pure and cached per argument tuple.

Shape legend: N tokens, L = padded slots, bs = block size, Hp = 1 or H pattern heads.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from attnzoo.sparse.layout import BlockLayout, SparsePattern

__all__ = ["band_layout", "blockwise_window", "dilated_segments", "sliding_window", "window_2d"]


def band_layout(num_blocks: int, lower: Tensor, upper: Tensor, block_size: int) -> BlockLayout:
    """Layout where query block i visits key blocks ``lower[i] .. upper[i]`` (inclusive, clipped).

    Args:
        num_blocks: nB.
        lower, upper: ``(nB,)`` long tensors of first/last visited key block per query block.
    """
    lower = lower.clamp(0, num_blocks - 1)
    upper = upper.clamp(0, num_blocks - 1)
    visits = int((upper - lower).max().item()) + 1
    idx = lower[:, None] + torch.arange(visits)[None, :]
    valid = idx <= upper[:, None]
    return BlockLayout(block_size, idx.clamp_max(num_blocks - 1)[None], valid[None])


def _default_block(seq_len: int, span: int, widest: int = 256) -> int:
    """A block size for a band of ``span`` keys: 64, 128 or ``widest`` as the band widens (measured on CPU:
    wider bands run faster with bigger blocks on the gather path), never much larger than the sequence.
    Sliding windows pass ``widest=128``: their band path has no per-block mask cost, so smaller blocks
    (fewer computed scores outside the window) win there (docs/engine.md)."""
    size = 64 if span <= 96 else 128 if span <= 384 else widest
    return max(16, min(size, 1 << max(4, math.ceil(math.log2(max(seq_len, 1))))))


@functools.lru_cache(maxsize=64)
def sliding_window(seq_len: int, before: int, after: int, block_size: int | None = None) -> SparsePattern:
    """Sliding window: query i attends keys j with ``i - before <= j <= i + after``.

    Args:
        seq_len: N.
        before, after: look-back and look-ahead in tokens (>= 0); ``after = 0`` with the engine's
            causal flag gives causal sliding-window attention.
        block_size: engine block size (default 64 or 128 by window, see ``_default_block``).
    """
    bs = block_size or _default_block(seq_len, before + after + 1, widest=128)
    nb = max(1, math.ceil(seq_len / bs))
    first = torch.arange(nb) * bs
    lower = (first - before).div(bs, rounding_mode="floor")
    upper = (first + bs - 1 + after).div(bs, rounding_mode="floor")

    def mask_mod(h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return (kv >= q - before) & (kv <= q + after)

    layout = band_layout(nb, lower, upper, bs)
    name = f"sliding_window(before={before}, after={after})"
    return SparsePattern(name, layout, mask_mod, None, seq_len, band=(before, after))


@functools.lru_cache(maxsize=64)
def blockwise_window(seq_len: int, window: int, extension: int = 0, block_size: int | None = None) -> SparsePattern:
    """efficient-attention's blockwise local attention (1D).

    Query block t (tokens ``[t*w, t*w + w)``) attends keys ``[t*w - e, t*w + w + e)``: non-sliding
    blocks of width ``window`` w, widened by ``extension`` e on each side (``overlap_window``).
    """
    bs = block_size or _default_block(seq_len, window + 2 * extension)
    nb = max(1, math.ceil(seq_len / bs))
    first = torch.arange(nb) * bs
    last = first + bs - 1
    lower = ((first // window) * window - extension).div(bs, rounding_mode="floor")
    upper = ((last // window) * window + window + extension - 1).div(bs, rounding_mode="floor")

    def mask_mod(h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        start = (q // window) * window
        return (kv >= start - extension) & (kv < start + window + extension)

    layout = band_layout(nb, lower, upper, bs)
    groups = (window, 1) if extension == 0 and seq_len % window == 0 else None  # disjoint windows of w tokens
    return SparsePattern(f"blockwise_window(w={window}, e={extension})", layout, mask_mod, None, seq_len, groups=groups)


@functools.lru_cache(maxsize=64)
def window_2d(
    height: int, width: int, tile_h: int, tile_w: int, reach_h: int, reach_w: int, sliding: bool
) -> SparsePattern:
    """2D local attention over a row-major ``height x width`` token grid, run in tile order.

    Tokens are regrouped into ``tile_h x tile_w`` tiles (one engine block per tile), so each query
    tile visits only the tiles its window touches.

    * ``sliding=False`` (efficient-attention's ``attn_2d``): query tile (a, b) attends keys in rows
      ``[a*tile_h - reach_h, (a+1)*tile_h + reach_h)`` and columns likewise (reach = the overlap e).
    * ``sliding=True``: query (y, x) attends keys with ``|y' - y| <= reach_h`` and ``|x' - x| <= reach_w``.

    Grid sizes that are not multiples of the tile are handled with empty slots.
    """
    th, tw = math.ceil(height / tile_h), math.ceil(width / tile_w)
    ty, tx = torch.meshgrid(torch.arange(th), torch.arange(tw), indexing="ij")
    iy, ix = torch.meshgrid(torch.arange(tile_h), torch.arange(tile_w), indexing="ij")
    y = (ty.reshape(-1, 1) * tile_h + iy.reshape(1, -1)).reshape(-1)  # slot -> row
    x = (tx.reshape(-1, 1) * tile_w + ix.reshape(1, -1)).reshape(-1)  # slot -> column
    positions = torch.where((y < height) & (x < width), y * width + x, -1)
    # Tiles touched by each query tile's window (same reach for both window kinds at tile level).
    span_h = math.ceil(reach_h / tile_h)
    span_w = math.ceil(reach_w / tile_w)
    dy, dx = torch.meshgrid(torch.arange(-span_h, span_h + 1), torch.arange(-span_w, span_w + 1), indexing="ij")
    ny, nx = ty.reshape(-1, 1) + dy.reshape(1, -1), tx.reshape(-1, 1) + dx.reshape(1, -1)
    valid = (ny >= 0) & (ny < th) & (nx >= 0) & (nx < tw)
    idx = ny.clamp(0, th - 1) * tw + nx.clamp(0, tw - 1)
    layout = BlockLayout(tile_h * tile_w, idx[None], valid[None])

    def mask_mod(h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        qy, qx, ky, kx = q // width, q % width, kv // width, kv % width
        if sliding:
            return ((ky - qy).abs() <= reach_h) & ((kx - qx).abs() <= reach_w)
        top, left = (qy // tile_h) * tile_h, (qx // tile_w) * tile_w
        rows = (ky >= top - reach_h) & (ky < top + tile_h + reach_h)
        return rows & (kx >= left - reach_w) & (kx < left + tile_w + reach_w)

    kind = "sliding" if sliding else "blockwise"
    name = f"window_2d({height}x{width}, tile={tile_h}x{tile_w}, reach={reach_h}x{reach_w}, {kind})"
    return SparsePattern(name, layout, mask_mod, positions[None], height * width)


@functools.lru_cache(maxsize=64)
def dilated_segments(seq_len: int, segment: int, dilation: int, offsets: tuple[int, ...]) -> SparsePattern:
    """One LongNet (segment w, dilation r) branch: per head, every r-th token of each segment.

    Head h keeps tokens ``t*w + offsets[h] + u*r`` (u = 0 .. ceil(w/r) - 1) of segment t and
    attends densely among the kept tokens of the same segment. Each segment's kept tokens form one
    engine block of ``ceil(w/r)`` slots (slots past the sequence are empty), so the layout is
    block-diagonal. Tokens a head does not keep get no output from this branch.

    Args:
        seq_len: N.
        segment: w (clipped to N, as torchscale does).
        dilation: r.
        offsets: per-head offset in ``[0, r)``, length H.
    """
    w = min(segment, seq_len)
    per_seg = math.ceil(w / dilation)
    n_seg = math.ceil(seq_len / w)
    offs = torch.tensor(offsets)[:, None, None]
    seg = torch.arange(n_seg)[None, :, None]
    u = torch.arange(per_seg)[None, None, :]
    within = offs + u * dilation
    pos = seg * w + within
    pos = torch.where((within < w) & (pos < seq_len), pos, -1).reshape(len(offsets), -1)
    blocks = torch.arange(n_seg)[None, :, None]
    layout = BlockLayout(per_seg, blocks, torch.ones_like(blocks, dtype=torch.bool))
    name = f"dilated_segments(w={w}, r={dilation})"
    return SparsePattern(name, layout, None, pos, seq_len)
