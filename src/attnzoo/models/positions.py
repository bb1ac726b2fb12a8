"""Position encodings: sinusoidal or learned, over a 1D sequence or a 2D image grid, and their resizing.

``make_positions(kind, length, dim, grid)`` returns a module mapping ``x: (B, N, dim)`` to
``x + p[:N]``. ``resize_table`` interpolates a learned table to a new length (1D, linear) or grid
(2D, nearest-neighbour repetition as in the Path-X curriculum of Solving-LRA-PathX, spec
diffuser-psf-butterfly-nystrom §4.4, or bilinear).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["POSITION_KINDS", "LearnedPositions", "NoPositions", "SinusoidalPositions", "make_positions", "resize_table"]

POSITION_KINDS = ("learned", "sinusoidal", "learned2d", "sinusoidal2d", "none")


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """The Transformer's fixed table ``(length, dim)``: sin on even channels, cos on odd ones."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.float()


def sinusoidal_table_2d(height: int, width: int, dim: int) -> Tensor:
    """2D fixed table ``(height*width, dim)``: half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"2D sinusoidal positions need dim divisible by 4, got {dim}")
    rows = sinusoidal_table(height, dim // 2)[:, None, :].expand(height, width, dim // 2)
    cols = sinusoidal_table(width, dim // 2)[None, :, :].expand(height, width, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(height * width, dim)


def check_span(start: int, n: int, length: int) -> None:
    """Raise ``ValueError`` unless positions ``start .. start + n - 1`` fit a table of ``length`` rows."""
    if start + n > length:
        if start:
            raise ValueError(f"positions {start}..{start + n - 1} are past the end of the position table ({length})")
        raise ValueError(f"sequence of {n} tokens is longer than the position table ({length})")


class SinusoidalPositions(nn.Module):
    """Adds a fixed (not trained) 1D or 2D sinusoidal table: ``(B, N, dim) -> (B, N, dim)``."""

    def __init__(self, length: int, dim: int, grid: tuple[int, int] | None = None) -> None:
        super().__init__()
        table = sinusoidal_table_2d(*grid, dim) if grid else sinusoidal_table(length, dim)
        self.register_buffer("table", table, persistent=False)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        """``x + table[start : start + N]`` (``start`` > 0 when decoding token by token)."""
        check_span(start, x.shape[1], self.table.shape[0])
        return x + self.table[start : start + x.shape[1]].to(x.dtype)


class LearnedPositions(nn.Module):
    """Adds a learned table ``weight: (length, dim)`` initialised N(0, 0.02); ``grid`` marks a 2D layout."""

    def __init__(self, length: int, dim: int, grid: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.grid = grid
        self.weight = nn.Parameter(torch.empty(length, dim))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        """``x + weight[start : start + N]`` (``start`` > 0 when decoding token by token)."""
        check_span(start, x.shape[1], self.weight.shape[0])
        return x + self.weight[start : start + x.shape[1]].to(x.dtype)


class NoPositions(nn.Module):
    """``positions: none``: returns ``x`` unchanged (no table, so no length limit)."""

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        return x


def make_positions(kind: str, length: int, dim: int, grid: tuple[int, int] | None = None) -> nn.Module:
    """Position module of ``kind`` (one of ``POSITION_KINDS``) for ``length`` tokens of width ``dim``.

    ``grid = (H, W)`` with ``H*W == length`` is required by the 2D kinds.
    """
    if kind not in POSITION_KINDS:
        raise ValueError(f"positions must be one of {', '.join(POSITION_KINDS)}; got {kind!r}")
    if kind == "none":
        return NoPositions()
    if kind.endswith("2d"):
        if grid is None or grid[0] * grid[1] != length:
            raise ValueError(f"{kind} positions need an image grid (H, W) with H*W = {length}; got {grid}")
    else:
        grid = None
    return LearnedPositions(length, dim, grid) if kind.startswith("learned") else SinusoidalPositions(length, dim, grid)


def resize_table(
    table: Tensor,
    length: int,
    *,
    grid: tuple[int, int] | None = None,
    old_grid: tuple[int, int] | None = None,
    mode: str = "nearest",
) -> Tensor:
    """Interpolate a learned position table ``(L_old, dim)`` to ``(length, dim)``.

    With ``grid`` and ``old_grid`` the table is resized as an image ``(H, W, dim)`` with ``mode``
    (``"nearest"`` repeats each position over a patch, as the Path-X curriculum does; or ``"bilinear"``);
    otherwise linearly along the sequence.
    """
    if table.shape[0] == length:
        return table.clone()
    dim = table.shape[1]
    if grid is not None and old_grid is not None:
        image = table.float().reshape(1, *old_grid, dim).permute(0, 3, 1, 2)  # (1, dim, H, W)
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        out = F.interpolate(image, size=grid, mode=mode, **kwargs)
        return out.permute(0, 2, 3, 1).reshape(length, dim).to(table.dtype)
    seq = table.float().t()[None]  # (1, dim, L_old)
    return F.interpolate(seq, size=length, mode="linear", align_corners=True)[0].t().to(table.dtype)
